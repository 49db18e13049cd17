#!/bin/bash
# usage: run.sh REPO OUTDIR [EXTRA]: the three held-out eval commands of docs/clicks.md, then the whole shared set
cd $1; O=$2; mkdir -p $O
T=/tmp/os18/mricron/usr/share/mricron/templates
M="--model litemedsam --methods persam persam_f persam_box --threads 1 $3"
export OMP_NUM_THREADS=1
P=.venv/bin/python
{ echo "## $1 $(git rev-parse --short HEAD 2>/dev/null)"; uptime; } >> $O/load.txt
/usr/bin/time -f "%U user %e wall" $P experiments/oneshot_eval.py $M --volume $T/ch2.nii.gz --label $T/aal.nii.gz --label-values 91-116 --name cerebellum_colin27 --out $O/cerebellum_colin27.csv > $O/cerebellum.log 2>&1
uptime >> $O/load.txt
/usr/bin/time -f "%U user %e wall" $P experiments/oneshot_eval.py $M --volume $T/ch2.nii.gz --label $T/aal.nii.gz --fill --name brain_colin27 --out $O/brain_colin27.csv > $O/brain_colin27.log 2>&1
uptime >> $O/load.txt
/usr/bin/time -f "%U user %e wall" $P experiments/oneshot_eval.py $M --volume weights/devdata/click_model/mni152/axial_image.nii.gz --label weights/devdata/click_model/mni152/axial_label.nii.gz --label-values 1-3 --name brain_mni152 --out $O/brain_mni152.csv > $O/brain_mni152.log 2>&1
uptime >> $O/load.txt
/usr/bin/time -f "%U user %e wall" $P experiments/oneshot_eval.py $3 --out $O/shared.csv > $O/shared.log 2>&1
uptime >> $O/load.txt
echo done >> $O/load.txt

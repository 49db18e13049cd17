cd /work/main
export MEDSEG_SHARED=/work/shared
while [ ! -f /tmp/fill18/anchor_done ]; do sleep 10; done
.venv/bin/python experiments/eval_propagation.py --embeddings /tmp/emb16_int8 --mricron /tmp/s16/mricron --parts rules \
  --rules "default, stride 2" "mask+box, guard 0.5, stride 2" "mask+box, guard 0.8, stride 2" "mask+box, guard 0.9, stride 2" \
  --backend onnx-int8-conv --out /tmp/fill18/guard_int8.csv > /tmp/fill18/guard_int8.log 2>&1
echo done > /tmp/fill18/guard_done

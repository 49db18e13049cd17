cd /work/main
export MEDSEG_SHARED=/work/shared
while [ ! -f /tmp/fill18/guard_done ]; do sleep 10; done
for b in onnx-int8-conv torch; do
  e=/tmp/emb16_int8; [ $b = torch ] && e=/tmp/emb16_torch
  .venv/bin/python experiments/eval_propagation.py --embeddings $e --mricron /tmp/s16/mricron --parts fillgap \
    --backend $b --anchor-rule backend --out /tmp/fill18/gap_${b}.csv > /tmp/fill18/gap_${b}.log 2>&1
done
echo done > /tmp/fill18/gap_done

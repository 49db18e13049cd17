cd /work/main
export MEDSEG_SHARED=/work/shared
for b in onnx-int8-conv torch; do
  e=/tmp/emb16_int8; [ $b = torch ] && e=/tmp/emb16_torch
  .venv/bin/python experiments/eval_propagation.py --embeddings $e --mricron /tmp/s16/mricron --parts fill \
    --backend $b --anchor-rule backend --out /tmp/fill18/fill_${b}.csv > /tmp/fill18/fill_${b}.log 2>&1
done
echo done > /tmp/fill18/done

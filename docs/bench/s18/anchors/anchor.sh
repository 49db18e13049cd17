cd /work/main
export MEDSEG_SHARED=/work/shared
for b in onnx-int8-conv torch; do
  e=/tmp/emb16_int8; [ $b = torch ] && e=/tmp/emb16_torch
  for w in error dice; do
    .venv/bin/python experiments/eval_propagation.py --embeddings $e --mricron /tmp/s16/mricron --parts anchor \
      --rules "backend default" --backend $b --anchor-rule backend --worst $w --out /tmp/fill18/anchor_${b}_$w.csv \
      > /tmp/fill18/anchor_${b}_$w.log 2>&1
  done
done
echo done > /tmp/fill18/anchor_done

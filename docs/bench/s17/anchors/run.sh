cd /work/main
export MEDSEG_SHARED=/work/shared
for b in onnx-int8-conv torch; do
  e=/tmp/emb16_int8; [ $b = torch ] && e=/tmp/emb16_torch
  for w in dice error; do
    .venv/bin/python experiments/eval_propagation.py --embeddings $e --mricron /tmp/s16/mricron --parts anchor fill \
      --rules "backend default" --backend $b --anchor-rule backend --worst $w --out /tmp/prop17/anchor_${b}_$w.csv \
      > /tmp/prop17/anchor_${b}_$w.log 2>&1
  done
done
echo done > /tmp/prop17/done

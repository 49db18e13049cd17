#!/usr/bin/env bash
# One GPU session's runs, in the order the device calls make them (the `device` tool: one machine, 30 s warm
# between calls, 64 MiB carried a call, 10 minutes a command). Each stage writes its log and JSON under $OUT.
#
# (make gpu-bundle first; the tracked tree is ~30 MiB, so a call carries at most ~34 MiB)
#   call 1, carry .devwheels/a .gpu/lmA:   bash benchmarks/device_session.sh install
#   call 2, carry .devwheels/s:            bash benchmarks/device_session.sh install
#   call 3, carry .gpu/lmB .gpu/shared:    bash benchmarks/device_session.sh weights gpu-test propagation
#   call 4 (nothing to carry):             bash benchmarks/device_session.sh sam throughput
#
# Stages: install, weights, gpu-test, propagation, profile, coldstart, sam, throughput, saturated, sessions, routing,
# routing-propagation (-speed, -dice), clickbench, chunk, browser, prop3d (-torch-fp16, -torch), prop3d-speed,
# train-click, suggest.
# docs/testing.md and docs/benchmarks.md quote the commands each stage runs.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
export PYTHONPATH="/tmp/site:$PWD" MEDSEG_WEIGHTS=/tmp/w GRADIO_ANALYTICS_ENABLED=False
[ -d .gpu/shared/data ] && export MEDSEG_SHARED="$PWD/.gpu/shared"
[ -d /tmp/shared/data ] && export MEDSEG_SHARED=/tmp/shared

stage() {
  case "$1" in
    install)
      # whichever parts this call carried (make gpu-bundle: .devwheels/a with .gpu/lmA, then .devwheels/s); the
      # halves of the weights wait in /tmp/parts for the weights stage
      shopt -s nullglob; for p in .devwheels/*/; do bash benchmarks/device_install.sh "${p%/}"; done; shopt -u nullglob
      mkdir -p /tmp/parts; cp .gpu/lm[AB]/lmpart* /tmp/parts/ 2>/dev/null
      nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
      python3 -c "import torch, triton; print(torch.__version__, triton.__version__, torch.cuda.get_device_name(0))" ;;
    weights)
      # the tracked tree and .gpu/lm.pth.xz no longer fit one call's 64 MiB together: its two halves (split -b) may
      # come in two calls and be joined in /tmp/parts/lm.pth.xz first
      local xzw=.gpu/lm.pth.xz
      if [ ! -f "$xzw" ]; then
        mkdir -p /tmp/parts; cp .gpu/lm[AB]/lmpart* /tmp/parts/ 2>/dev/null
        cat /tmp/parts/lmpart00 /tmp/parts/lmpart01 > /tmp/parts/lm.pth.xz || return 1; xzw=/tmp/parts/lm.pth.xz
      fi
      mkdir -p /tmp/w && xz -T0 -dc "$xzw" > /tmp/w/lite_medsam.pth && cp -r weights/click_model /tmp/w/
      sha256sum /tmp/w/lite_medsam.pth ;;
    gpu-test)
      # the shared data stays in /tmp for the later calls (a carried path is replaced call by call)
      [ -d .gpu/shared/data ] && { rm -rf /tmp/shared; cp -r .gpu/shared /tmp/shared; export MEDSEG_SHARED=/tmp/shared; }
      timeout 420 bash scripts/gpu_test.sh 2>&1 | tail -60 ;;
    propagation)
      local p=benchmarks/bench_propagation.py
      timeout 60 python3 benchmarks/encode_breakdown.py --batches 32 64 --json > "$OUT/encode_breakdown.jsonl"
      timeout 90 python3 benchmarks/encode_breakdown.py --batches 32 64 --graph-batches 1 2 4 8 16 32 64 --json \
        > "$OUT/encode_breakdown_graphs.jsonl"
      timeout 60 python3 $p --device cuda --backend torch-fp16 --batch 32 --json > "$OUT/prop_default.json"
      timeout 90 python3 $p --device cuda --backend torch-fp16 --batch 32 --graph-batches 1 2 4 8 16 32 64 --json \
        > "$OUT/prop_graphs.json"
      timeout 120 python3 $p --device cuda --backend torch-fp16 --batch 32 --graph-batches 1 2 4 8 16 32 64 \
        --slices 40 --warmup 0 --dice-check --json > "$OUT/prop_graphs_dice.json"
      tail -n 3 "$OUT"/encode_breakdown*.jsonl "$OUT"/prop_*.json ;;
    profile)
      # cold and warm runs of one process, then cProfile of the encode and the walk (stderr)
      timeout 120 python3 benchmarks/bench_propagation.py --device cuda --backend torch-fp16 --batch 32 --runs 3 --json \
        > "$OUT/prop_runs.json"
      timeout 120 python3 benchmarks/bench_propagation.py --device cuda --backend torch-fp16 --batch 32 --profile --json \
        > "$OUT/prop_profile.json" 2> "$OUT/prop_profile.txt"
      cat "$OUT/prop_runs.json" "$OUT/prop_profile.json" ;;
    coldstart)
      # the first propagation of a process: 300 slices (a short last batch of 12), 320 (none), 300 padded, and the
      # allocator's expandable segments; each a fresh process, two runs
      local p=benchmarks/bench_propagation.py a="--device cuda --backend torch-fp16 --batch 32 --runs 2 --json"
      timeout 90 python3 $p $a --no-pad-short-batches > "$OUT/cold_300.json"
      timeout 90 python3 $p $a --no-pad-short-batches --slices 320 > "$OUT/cold_320.json"
      timeout 90 python3 $p $a --pad-short-batches > "$OUT/cold_300_pad.json"
      PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True timeout 90 python3 $p $a --no-pad-short-batches \
        > "$OUT/cold_300_expandable.json"
      timeout 150 python3 $p --device cuda --backend torch-fp16 --batch 32 --pad-short-batches --slices 40 --warmup 0 \
        --dice-check --json > "$OUT/cold_pad_dice.json"
      for f in "$OUT"/cold_*.json; do echo "$f"; python3 -c "import json,sys; d=json.load(open(sys.argv[1])); print(d.get('runs'), d.get('dice3d'))" "$f"; done ;;
    sam)
      timeout 240 python3 benchmarks/bench_sam_resize.py --device cuda --configs fp32,graphs --rounds 3 \
        --out "$OUT/sam_e2e.jsonl" 2>&1 | tail -12 ;;
    throughput)
      # issue 22's 1700 slices/s, Dice measured through the compiled path at the timed batch, and the official
      # code's encoder timed in the same process (carry .gpu/bisect_cases.npz and .gpu/official)
      python3 benchmarks/bisect_compiled_path.py run --cases .gpu/bisect_cases.npz --batch "${BATCH:-512}" --repeat 10 \
        --configs "${CONFIGS:-fp32-eager,official,fp16-triton-tanh-cdt}" --json "$OUT/bisect_b${BATCH:-512}.jsonl" 2>&1 | tail -6 ;;
    saturated)
      # issue 22's 10x: 20 sessions clicking without pause (--think 0) on encoded slices, one at a time (window 0)
      # against batched (window 4 ms), interleaved twice; then the paced run (0.3 s) for the p95 on this host
      local b=benchmarks/bench_sessions.py
      for r in 1 2; do
        timeout 120 python3 $b --device cuda --sessions 20 --seconds 20 --think 0 --preencode --windows 0,4 \
          --out "$OUT/saturated_r$r.jsonl" | tail -2
      done
      timeout 120 python3 $b --device cuda --sessions 20 --seconds 30 --windows 4 --out "$OUT/sessions20_w4.jsonl" | tail -2 ;;
    sessions)
      # issue 22's 20-session server: the figure, then where the interpreter's time goes (py-spy, threads holding
      # the GIL, collapsed stacks; .devwheels/prof installed with the install stage)
      local b=benchmarks/bench_sessions.py
      timeout 120 python3 $b --device cuda --sessions 20 --seconds 30 --windows 4 --out "$OUT/sessions20_w4.jsonl" | tail -2
      [ -x /tmp/site/bin/py-spy ] && timeout 150 /tmp/site/bin/py-spy record --gil --rate 250 --format raw \
        -o "$OUT/sessions20_gil.txt" -- python3 $b --device cuda --sessions 20 --seconds 30 --windows 4 \
        --out "$OUT/sessions20_w4_pyspy.jsonl" 2>&1 | tail -3 ;;
    routing)
      stage routing-paced; R=2 stage routing-paced; stage routing-saturated ;;
    routing-paced)
      # issue 22, ModelRunner.batches_decodes: window 0 (one at a time), window 4 (encodes batched, prompts straight to
      # the graphs) and window 4 with the old routing (every prompt through the decode batcher), interleaved; round $R
      timeout 200 python3 benchmarks/bench_sessions.py --device cuda --sessions 20 --seconds 20 --windows 0,4 \
        --legacy-decode-routing --out "$OUT/routing_paced_r${R:-1}.jsonl" | cut -c1-300 ;;
    routing-saturated)
      timeout 200 python3 benchmarks/bench_sessions.py --device cuda --sessions 20 --seconds 20 --think 0 --preencode \
        --windows 0,4 --legacy-decode-routing --out "$OUT/routing_saturated.jsonl" | cut -c1-300 ;;
    routing-propagation)
      stage routing-propagation-speed; stage routing-propagation-dice ;;
    routing-propagation-speed)
      # the walk on torch-fp16: refiner prompts one graph replay each (now) against one eager batch (before), twice
      for r in 1 2; do for f in "" --batch-refiner-eagerly; do
        timeout 60 python3 benchmarks/bench_propagation.py --device cuda --backend torch-fp16 --batch 32 $f --json
      done; done > "$OUT/routing_propagation.jsonl"
      cut -c1-400 "$OUT/routing_propagation.jsonl" ;;
    routing-propagation-dice)
      [ -n "${MEDSEG_SHARED:-}" ] && for f in "" --batch-refiner-eagerly; do
        timeout 90 python3 benchmarks/bench_propagation.py --device cuda --backend torch-fp16 --batch 32 --slices 40 \
          --warmup 0 --dice-check $f --json
      done > "$OUT/routing_propagation_dice.jsonl"
      cut -c1-400 "$OUT/routing_propagation_dice.jsonl" ;;
    clickbench)
      # issue 18's click latency with the click model against the base model (medseg bench click_ms), interleaved twice
      for r in 1 2; do for m in litemedsam litemedsam-base; do
        timeout 150 python3 -m app.cli bench --model $m --device cuda --backends torch,torch-fp16 --batches 1 --json \
          > "$OUT/click_bench_${m}_$r.json"; echo "$m $r"; tail -c 600 "$OUT/click_bench_${m}_$r.json"; echo
      done; done ;;
    chunk)
      # issue 19's click in one browser on the GPU: benchmarks/pack_browser.sh's Chromium + Gradio pack, too big
      # for one call, arrives as .browser/c0, c1, ... one a call; each waits in /tmp until the browser stage
      for f in .browser/c[0-9]*; do cp "$f" /tmp/pack.$(basename "$f"); done; ls -la /tmp/pack.c* ;;
    browser)
      for f in .browser/c[0-9]*; do cp "$f" /tmp/pack.$(basename "$f"); done
      local sums=$PWD/.browser/sha256
      cat $(ls /tmp/pack.c* | sort -V) > /tmp/pack.tar.xz && (cd /tmp && sha256sum -c "$sums") || return 1
      rm -rf /tmp/pack && mkdir -p /tmp/pack && tar -xJf /tmp/pack.tar.xz -C /tmp/pack
      mkdir -p /tmp/site app/viewer/static && cp -r /tmp/pack/site/. /tmp/site/ && cp -r /tmp/pack/viewer_static/. app/viewer/static/
      rm -rf /tmp/chr && mv /tmp/pack/chr /tmp/chr && chmod +x /tmp/site/playwright/driver/node
      LD_LIBRARY_PATH=/tmp/chr/lib ldd /tmp/chr/chromium/chromium | grep "not found"
      /tmp/chr/chromium.sh --headless --no-sandbox --disable-gpu --dump-dom \
        'data:text/html,<canvas id=c></canvas><script>document.body.append("webgl2="+!!c.getContext("webgl2"))</script>' 2>/dev/null
      for r in $(seq "${RUNS:-2}"); do
        MEDSEG_CHROMIUM=/tmp/chr/chromium.sh timeout 240 python3 benchmarks/ui_latency.py --device cuda --clicks 60 \
          --trace "$OUT/ui_trace_gpu_r$r.jsonl" --json "$OUT/ui_latency_gpu_r$r.json" 2>&1 | tail -40
      done ;;
    prop3d)
      stage prop3d-torch-fp16; stage prop3d-torch ;;
    prop3d-torch-fp16|prop3d-torch)
      # issue 21: the 3D Dice of the GPU default (torch-fp16, 32 slices an encode batch) against fp32 torch on the
      # same GPU: the box rule with stride 1 and 2, and the guard rule with stride 2 (torch's default since session 13,
      # app/propagation_defaults.py; torch-fp16 keeps the box rule until this measures it: on the calibration set it
      # must win, on the held-out slab not lose, as on the CPU); carry .gpu/shared and .gpu/mricron (held-out slab)
      [ -d .gpu/shared/data ] && { rm -rf /tmp/shared; cp -r .gpu/shared /tmp/shared; export MEDSEG_SHARED=/tmp/shared; }
      local b=${1#prop3d-}
      timeout 140 python3 experiments/eval_propagation.py --device cuda --backend $b --encode-batch 32 --parts rules \
        --rules "default, stride 1" "default, stride 2" "mask+box, guard 0.7, stride 2" --mricron .gpu/mricron \
        --out "$OUT/prop3d_$b.csv" 2>&1 | tail -25 ;;
    train-click)
      # issue 18: the shipped click model's training (session 16, run B: docs/clicks.md), its held-out evaluation at
      # the end; carry .c16 (weights/devdata/click_model's train_inia19.npz, eval_slices.npz, sources.json) after the
      # install and weights stages; writes $OUT/cm (7 files), never weights/click_model
      PYTHONUNBUFFERED=1 python3 scripts/train_click_model.py --data .c16 --out "$OUT/cm" --checkpoint /tmp/w/lite_medsam.pth \
        --device cuda --minutes 7.6 --steps 6000 --batch-size 32 --workers 14 --seed 0 --no-point-route \
        --one-error-share 0.5 --monotone-weight 1 2>&1 | grep -v '"kind"' | tail -30 ;;
    suggest)
      # issue 18's "where to click next" with the click model shipped in session 16: the suggestion against the
      # simulated error-region click, 5 clicks after the box, on the shared set and the two held-out manifests;
      # carry .gpu/shared and weights/devdata/click_model/{mni152,colin27_other}
      [ -d .gpu/shared/data ] && { rm -rf /tmp/shared; cp -r .gpu/shared /tmp/shared; export MEDSEG_SHARED=/tmp/shared; }
      for m in "$MEDSEG_SHARED/data/manifest.csv" weights/devdata/click_model/mni152/manifest.csv \
               weights/devdata/click_model/colin27_other/manifest.csv; do
        n=$(basename "$(dirname "$m")")
        timeout 200 python3 experiments/eval_click_suggestion.py "$m" --clicks 5 --device cuda --output "$OUT/suggest_$n.json" \
          2>&1 | tail -12
      done ;;
    prop3d-speed)
      # issue 21: the 300-slice walk (encodes included, from an empty cache) on torch-fp16, stride 2, the guard rule
      # against the box rule, interleaved twice, two timed runs each (the first may pay for allocations)
      for r in 1 2; do for rule in box guard; do
        timeout 50 python3 benchmarks/bench_propagation.py --device cuda --backend torch-fp16 --batch 32 --stride 2 \
          --rule $rule --runs 2 --json
      done; done > "$OUT/prop3d_speed.jsonl"
      cut -c1-600 "$OUT/prop3d_speed.jsonl" ;;
    *) echo "device_session: unknown stage $1" >&2; return 2 ;;
  esac
}

for s in "$@"; do
  echo "=== $s $(date -u +%H:%M:%S)"
  stage "$s" 2>&1 | tee "$OUT/$s.log"
done

#!/usr/bin/env bash
# `make gpu-test`: the GPU tests (pytest -m gpu) on the GPU machine, from the checkout alone.
#
# That machine's python3 has torch, Triton and pytest but not the study readers; it cannot download.
# Here (the dev machine), once:   make gpu-bundle   (= .devwheels/ and .gpu/, both git-ignored)
# Device calls (each carries at most ~34 MiB beside the ~30 MiB tree; docs/testing.md):
#   1, carry .devwheels/a .gpu/lmA:  bash benchmarks/device_session.sh install
#   2, carry .devwheels/s:           bash benchmarks/device_session.sh install
#   3, carry .gpu/lmB .gpu/shared:   bash benchmarks/device_session.sh weights gpu-test
# /tmp/site (call 1) stays while the machine is warm. docs/testing.md has the details.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${GPU_PY:-python3}
export PYTHONPATH="/tmp/site:$PWD${PYTHONPATH:+:$PYTHONPATH}"
if ! "$PY" -c "import SimpleITK, monai, nibabel, pydicom, segment_anything" 2>/dev/null; then
  for p in .devwheels/a .devwheels/s; do if [ -d "$p" ]; then bash benchmarks/device_install.sh "$p"; fi; done
  "$PY" -c "import SimpleITK, monai, nibabel, pydicom, segment_anything" 2>/dev/null || {
    echo "gpu-test: SimpleITK/MONAI/nibabel/pydicom/segment-anything are missing: carry .devwheels/a and .devwheels/s" \
         "in earlier calls (benchmarks/device_session.sh install, see docs/testing.md)" >&2
    exit 2; }
fi
# weights and shared data: .gpu/ (make gpu-bundle) when carried, else the usual places
[ -f .gpu/weights/lite_medsam.pth ] && export MEDSEG_WEIGHTS="$PWD/.gpu/weights"
[ -d .gpu/shared/data ] && export MEDSEG_SHARED="$PWD/.gpu/shared"
weights="${MEDSEG_WEIGHTS:-$PWD/weights}/lite_medsam.pth"
[ -f "$weights" ] || { echo "gpu-test: $weights is missing (carry .gpu, see docs/testing.md)" >&2; exit 2; }
"$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'gpu-test: torch sees no CUDA GPU')"
"$PY" - <<'PY'
import torch, triton
print(f"gpu-test: {torch.cuda.get_device_name(0)}, torch {torch.__version__}, triton {triton.__version__}")
PY
export GRADIO_ANALYTICS_ENABLED=False MEDSEG_TEST_THREADS=${MEDSEG_TEST_THREADS:-4}
# -m gpu: the CUDA-graph replays, the Triton kernels in bf16 (attention, MBConv/PatchMerging, tanh GELU),
# pinned host inputs, PIL's resize on CUDA, and the compiled fast path end to end with its Dice check (issue 22's rule)
exec "$PY" -m pytest -p no:cacheprovider -m gpu -v -rA "$@" \
  tests/runtime/test_cuda_graphs.py tests/runtime/test_triton_attention.py tests/runtime/test_triton_convs.py tests/runtime/test_fast_paths.py \
  tests/models/test_litemedsam_host_inputs.py tests/models/test_pil_resize.py tests/runtime/test_compiled_path_dice.py

#!/usr/bin/env bash
# Install one part of .devwheels/ (benchmarks/prepare_device_env.py) into /tmp/site on the GPU machine.
# Usage: bash benchmarks/device_install.sh .devwheels/a     (then: export PYTHONPATH=/tmp/site:$PWD)
set -euo pipefail
part=${1:?usage: device_install.sh PART_DIR}
mkdir -p /tmp/site
for f in "$part"/*.tar.xz; do
  [ -e "$f" ] && tar -xJf "$f" -C /tmp/site
done
shopt -s nullglob
wheels=("$part"/*.whl)
if [ ${#wheels[@]} -gt 0 ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site "${wheels[@]}"
fi
# zip extraction drops the executable bits: Ray starts gcs_server, raylet, ... from ray/core
[ -d /tmp/site/ray/core ] && find /tmp/site/ray/core -type f -exec chmod a+x {} +
# Ray's console scripts are not installed by an unpacked wheel; `ray.init` starts its binaries itself.
PYTHONPATH=/tmp/site python3 - <<'EOF'
import importlib
for name in ("SimpleITK", "monai", "nibabel", "pydicom", "segment_anything", "ray", "jsonschema"):
    try:
        importlib.import_module(name)
        print("ok", name)
    except Exception as e:  # report, do not fail: each part brings only some of them
        print("missing", name, type(e).__name__)
EOF

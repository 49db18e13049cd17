"""Record the state-dict key list of the OFFICIAL TinySAM model (xinghaochen/TinySAM ``build_sam_vit_t``).

Usage: ``python -m tests.models.tinysam_keys /path/to/TinySAM [COMMIT]`` (a checkout or an export of
github.com/xinghaochen/TinySAM; the JSON here was written from commit 11589bc1d98c16cff046c31d5ad4cd90a30f0897). The official model definition imports
three timm helpers that are unused at inference (``DropPath`` with rate 0, ``to_2tuple``,
``trunc_normal_``, ``register_model``); timm is not installed here, so trivial stand-ins are registered
in ``sys.modules`` first (no effect on names or shapes). The JSON lists ``[key, shape, dtype]`` in
``state_dict()`` order; ``tests/models/test_tinysam.py`` checks our TinyViT build against it.
"""

from __future__ import annotations

import json
import subprocess
import sys
import types
from pathlib import Path

OUT = Path(__file__).with_name("tinysam_state_dict.json")


def _stub_timm() -> None:
    import torch.nn as nn

    class DropPath(nn.Identity):
        def __init__(self, drop_prob=None):
            super().__init__()
            self.drop_prob = drop_prob

    timm = types.ModuleType("timm")
    models = types.ModuleType("timm.models")
    layers = types.ModuleType("timm.models.layers")
    registry = types.ModuleType("timm.models.registry")
    layers.DropPath = DropPath
    layers.to_2tuple = lambda x: tuple(x) if isinstance(x, (tuple, list)) else (x, x)
    layers.trunc_normal_ = nn.init.trunc_normal_
    registry.register_model = lambda f: f
    sys.modules.update({"timm": timm, "timm.models": models, "timm.models.layers": layers, "timm.models.registry": registry})


def main(argv: list[str]) -> int:
    repo = Path(argv[0]).resolve()
    out = OUT
    _stub_timm()
    sys.path.insert(0, str(repo))
    from tinysam.build_sam import build_sam_vit_t

    model = build_sam_vit_t(checkpoint=None)
    commit = argv[1] if len(argv) > 1 else subprocess.run(
        ["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    record = {
        "source": f"github.com/xinghaochen/TinySAM @ {commit or 'unknown'}",
        "build": "tinysam.build_sam.build_sam_vit_t(checkpoint=None)",
        "state_dict": [[k, list(v.shape), str(v.dtype).removeprefix("torch.")] for k, v in model.state_dict().items()],
    }
    rows = ",\n".join(json.dumps(row) for row in record["state_dict"])
    head = {k: v for k, v in record.items() if k != "state_dict"}
    out.write_text(json.dumps(head)[:-1] + ', "state_dict": [\n' + rows + "\n]}\n")
    print(f"{out}: {len(record['state_dict'])} keys")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

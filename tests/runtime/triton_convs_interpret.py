"""CPU checks of runtime/triton_convs.py through the Triton interpreter, the named cases in one run.

Run by tests/runtime/test_triton_convs.py in a subprocess with TRITON_INTERPRET=1, which must be set before
the kernels are decorated (other tests import triton first). fp32 only: the interpreter's bf16 is
not trustworthy. Prints one JSON line per case, ``{"case": ..., "max_abs": ..., ...}``, or ``{"case": ...,
"error": ...}`` for a case that raised (the others still run: each test reads its own case's line).

    TRITON_INTERPRET=1 python tests/runtime/triton_convs_interpret.py mbconv [encoder ...]
"""

from __future__ import annotations

import copy
import json
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from runtime.conv_forms import decompose_convs, fuse_batchnorm  # noqa: E402
from runtime.fast import use_tanh_gelu  # noqa: E402
from models.tiny_vit import MBConv, PatchMerging, TinyViT, TinyViTConfig  # noqa: E402
from runtime.triton_convs import FusedMBConv, FusedPatchMerging, use_triton_convs  # noqa: E402

WEIGHTS = ROOT / "weights" / "lite_medsam.pth"


def folded(block: torch.nn.Module, prefix: str) -> tuple[torch.nn.Module, str]:
    """``block`` with LiteMedSAM's weights under ``prefix`` (random BN statistics without the file), folded."""
    torch.manual_seed(0)
    if WEIGHTS.is_file():
        state = torch.load(WEIGHTS, map_location="cpu", weights_only=True)
        block.load_state_dict({k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)})
        source = "lite_medsam.pth"
    else:
        randomize_bn(block)
        source = "random"
    block.eval()
    fuse_batchnorm(block)
    return block, source


def randomize_bn(module: torch.nn.Module) -> None:
    """BatchNorm statistics away from the identity, so that folding matters."""
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.2)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.normal_(1, 0.3)
                m.bias.normal_(0, 0.2)


def channels_last(*shape: int) -> torch.Tensor:
    return torch.randn(*shape).contiguous(memory_format=torch.channels_last)


def case_mbconv() -> dict:
    """Stage-0 MBConv (64 -> 256 -> 64), 20 x 20: not a multiple of the 4 x 16 tile."""
    ref, source = folded(MBConv(64, 4.0), "image_encoder.layers.0.blocks.0.")
    x = channels_last(1, 64, 20, 20)
    fused = FusedMBConv(ref)
    y, want = fused(x), ref(x)
    return {"source": source, "max_abs": (y - want).abs().max().item(), "scale": want.abs().max().item(),
            "shape_ok": y.shape == want.shape, "channels_last": y.is_contiguous(memory_format=torch.channels_last)}


def case_patch_merging() -> dict:
    """PatchMerging 0 (64 -> 128, stride 2) on an NCHW input and on 19 x 19 tokens (odd size)."""
    ref, source = folded(PatchMerging(256, 64, 128, 2), "image_encoder.layers.0.downsample.")
    fused = FusedPatchMerging(ref)
    x = channels_last(1, 64, 20, 20)
    y4, want4 = fused(x), ref(x)
    ref.resolution = fused.resolution = 19
    tokens = torch.randn(1, 19 * 19, 64)
    y3, want3 = fused(tokens), ref(tokens)
    return {"source": source, "max_abs": max((y4 - want4).abs().max().item(), (y3 - want3).abs().max().item()),
            "scale": want4.abs().max().item(), "shape_ok": y4.shape == want4.shape and y3.shape == want3.shape}


def case_patch_merging_stride1() -> dict:
    """The last PatchMerging (160 -> 320, stride 1): more output channels than one program's block."""
    ref, source = folded(PatchMerging(9, 160, 320, 1), "image_encoder.layers.2.downsample.")
    fused = FusedPatchMerging(ref)
    tokens = torch.randn(1, 9 * 9, 160)
    y, want = fused(tokens), ref(tokens)
    return {"source": source, "max_abs": (y - want).abs().max().item(), "scale": want.abs().max().item(),
            "shape_ok": y.shape == want.shape}


def case_encoder() -> dict:
    """A small folded TinyViT with all blocks swapped, eager and under torch.compile (aot_eager: the
    custom ops' fake shapes), against the folded and the folded + decomposed original."""
    torch.manual_seed(0)
    cfg = TinyViTConfig(img_size=16, embed_dims=(16, 32, 48, 64), num_heads=(1, 2, 3, 4), out_chans=16)
    ref = TinyViT(cfg)
    randomize_bn(ref)
    ref.eval()
    fuse_batchnorm(ref)
    fused = copy.deepcopy(ref)
    count = use_triton_convs(fused)
    decomposed = copy.deepcopy(ref)
    decompose_convs(decomposed)
    count_after_decompose = use_triton_convs(decomposed)
    x = channels_last(1, 3, 16, 16)
    with torch.inference_mode():
        want = ref(x)
        y_dec = decomposed(x)
        y_compiled = torch.compile(fused, backend="aot_eager", fullgraph=True)(x)
    diff = max((a - want).abs().max().item() for a in (y_dec, y_compiled))
    return {"count": count, "count_after_decompose": count_after_decompose, "max_abs": diff,
            "scale": want.abs().max().item(), "shape_ok": y_compiled.shape == want.shape}


def stage0_blocks(size: int) -> tuple:
    """(block, its state-dict prefix in lite_medsam.pth, fused class) for MBConv 0 and PatchMerging 0 at ``size``."""
    return ((MBConv(64, 4.0), "image_encoder.layers.0.blocks.0.", FusedMBConv),
            (PatchMerging(size, 64, 128, 2), "image_encoder.layers.0.downsample.", FusedPatchMerging))


def case_half() -> dict:
    """fp16 (the interpreter's bf16 is garbage; fp16 takes the same non-IEEE dot and casts): MBConv and
    PatchMerging 0 against fp32, next to the original blocks run in fp16."""
    out = {"fused_err": 0.0, "original_err": 0.0, "scale": 0.0, "shape_ok": True}
    x = channels_last(1, 64, 12, 12)
    for block, prefix, make in stage0_blocks(12):
        ref, out["source"] = folded(block, prefix)
        want = ref(x)
        half = copy.deepcopy(ref).half()
        got = make(half)(x.half())
        out["shape_ok"] &= got.dtype == torch.float16 and got.shape == want.shape
        out["fused_err"] = max(out["fused_err"], (got.float() - want).abs().max().item())
        out["original_err"] = max(out["original_err"], (half(x.half()).float() - want).abs().max().item())
        out["scale"] = max(out["scale"], want.abs().max().item())
    out["max_abs"] = out["fused_err"]
    return out


def case_tanh_gelu() -> dict:
    """fast_gelu (the interpreter's exp form of the tanh GELU) on MBConv and PatchMerging 0, fp32, against
    the folded originals with every GELU set to nn.GELU(approximate="tanh"); and how far the erf
    originals are (the tanh form must be a different function, not a no-op)."""
    out = {"max_abs": 0.0, "erf_vs_tanh": 0.0, "scale": 0.0, "shape_ok": True}
    x = channels_last(1, 64, 20, 20)
    for block, prefix, make in stage0_blocks(20):
        ref, out["source"] = folded(block, prefix)
        erf = ref(x)
        fused = make(ref)
        fused.fast_gelu = True
        use_tanh_gelu(ref)
        want, got = ref(x), fused(x)
        out["shape_ok"] &= got.shape == want.shape
        out["max_abs"] = max(out["max_abs"], (got - want).abs().max().item())
        out["erf_vs_tanh"] = max(out["erf_vs_tanh"], (erf - want).abs().max().item())
        out["scale"] = max(out["scale"], want.abs().max().item())
    return out


CASES = {"mbconv": case_mbconv, "tanh_gelu": case_tanh_gelu, "patch_merging": case_patch_merging,
         "patch_merging_stride1": case_patch_merging_stride1, "encoder": case_encoder, "half": case_half}

if __name__ == "__main__":
    import traceback

    torch.set_num_threads(1)
    for name in sys.argv[1:]:
        try:
            with torch.no_grad():
                line = {"case": name, **CASES[name]()}
        except Exception:  # noqa: BLE001 - reported as this case's result, the next case still runs
            line = {"case": name, "error": traceback.format_exc()[-3000:]}
        print(json.dumps(line), flush=True)

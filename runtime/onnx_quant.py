"""int8 ONNX Runtime encoder for the CPU: the linear layers of the attention stages in int8.

What was measured (docs/benchmarks.md, CPU section) decided the recipe:
* int8 pays off only in the MatMuls with weights (qkv, proj, fc1, fc2 of TinyViT stages 1-3):
  dynamic quantization (int8 per-channel weights, uint8 activations with a per-tensor range taken at
  run time, fused into ``DynamicQuantizeMatMul``) cut them 2-4x. Calibrated QDQ (static) on the
  same nodes was slower (the QuantizeLinear/DequantizeLinear passes) and moved the embedding more;
  static int8 on stage 0's convolutions was slower than fp32 (QDQ splits the fused GELU and adds
  passes over 256 x 256 x 256 tensors); 8-bit ``MatMulNBits`` was slower too.
* Quantizing every MatMul (attention products included, per-tensor weights) moved the embedding
  by 23 % (relative L2) and mean Dice by -0.019; the 40 weight MatMuls by 7.8 % and -0.0039. The per-group error
  adds in quadrature; fc2 of stages 2 and 3 (GELU outputs, long-tailed) cost the most, so the
  default recipe leaves them in fp32.

A recipe names the quantized nodes by patterns of the exported node names; its name is part of
the cached file's name, so a change of recipe never reuses a stale file. Static recipes calibrate
on bundled sample slices (``samples/``) that are NOT in the shared evaluation manifest
(``CALIBRATION_SLICES``); dynamic ones need no data. No network, no file outside the project.
"""

from __future__ import annotations

import logging
import re
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from models.segmenter import Segmenter

SAMPLES = Path(__file__).resolve().parent.parent / "samples"

# (study under samples/, slice indices). The manifest uses Colin27 slab slices 1, 4, 7, 11, 13,
# 17, 19, 20, 24, 30 and CT slab slices 1, 9, 17, 24, 32; the bundled CT series is slab slices
# 12..23, so its index 5 (= slab 17) is left out.
CALIBRATION_SLICES: tuple[tuple[str, tuple[int, ...]], ...] = (
    ("colin27/mr_t1_colin27_slabA_image.nii.gz", (2, 5, 9, 15, 22, 26, 28)),
    ("ct_head_0051_series", (0, 3, 7, 10)),
)


@dataclass(frozen=True)
class QuantRecipe:
    """Which encoder nodes get int8 (regexes on the exported node names) and how."""

    name: str
    include: tuple[str, ...]
    exclude: tuple[str, ...] = ()
    op_types: tuple[str, ...] = ("Conv", "MatMul")
    per_channel: bool = True
    dynamic: bool = False  # activation ranges computed per call (no calibration) instead of calibrated
    # Conv nodes (regexes) of a dynamic recipe that get calibrated QDQ int8 first: ORT runs them as
    # QLinearConv, where its dynamic ConvInteger was slower than fp32 (docs/benchmarks.md, issue 21)
    calibrated_convs: tuple[str, ...] = ()

    def nodes(self, model) -> list[str]:
        """Names of the nodes of ``model`` (an onnx ModelProto) this recipe quantizes (its own op types)."""
        return _weight_nodes(model, self.op_types, self.include, self.exclude)

    def conv_nodes(self, model) -> list[str]:
        """Names of the Conv nodes of ``model`` quantized with calibrated QDQ (``calibrated_convs``)."""
        return _weight_nodes(model, ("Conv",), self.calibrated_convs) if self.calibrated_convs else []


def _weight_nodes(model, op_types: tuple[str, ...], include: tuple[str, ...], exclude: tuple[str, ...] = ()) -> list[str]:
    """Nodes of ``op_types`` with an initializer weight whose name matches ``include`` and not ``exclude``."""
    weights = {i.name for i in model.graph.initializer}
    chosen = []
    for node in model.graph.node:
        if node.op_type not in op_types or len(node.input) < 2 or node.input[1] not in weights:
            continue  # activation x activation MatMuls (attention scores) stay fp32
        if any(re.search(p, node.name) for p in include) and not any(re.search(p, node.name) for p in exclude):
            chosen.append(node.name)
    return chosen


_LINEAR = (r"/attn/qkv/", r"/attn/proj/", r"/mlp/fc1/", r"/mlp/fc2/")
_LINEAR_FAST = (r"/attn/[qkv]/", r"/attn/proj/", r"/mlp/fc1/", r"/mlp/fc2/")  # runtime/onnx_fast_export.py's names
RECIPES: dict[str, QuantRecipe] = {
    r.name: r
    for r in (
        # every weight MatMul of the three attention stages (qkv, proj, fc1, fc2: 40 nodes)
        QuantRecipe("linear-dynamic", include=_LINEAR, op_types=("MatMul",), dynamic=True),
        # the same without fc2 of stages 2 and 3, the two most sensitive groups (their input is a
        # GELU output with a long tail, badly served by one per-tensor activation range)
        QuantRecipe(
            "linear-but-deep-fc2-dynamic",
            include=(r"/attn/qkv/", r"/attn/proj/", r"/mlp/fc1/", r"layers\.1/.*/mlp/fc2/"),
            op_types=("MatMul",),
            dynamic=True,
        ),
        # the least sensitive, most profitable groups only
        QuantRecipe(
            "qkv-fc1-dynamic",
            include=(r"layers\.[123]/.*/attn/qkv/", r"layers\.[13]/.*/mlp/fc1/"),
            op_types=("MatMul",),
            dynamic=True,
        ),
        # calibrated QDQ on the same 40 nodes: measured slower and less accurate than dynamic
        QuantRecipe("linear-static", include=_LINEAR, op_types=("MatMul",)),
        # the same layers in runtime/onnx_fast_export.py's encoder, where qkv is three MatMuls (q, k, v:
        # 60 nodes, the numbers of the 40 above: each of q, k, v quantizes the same input)
        QuantRecipe(
            "linear-fast-dynamic",
            include=_LINEAR_FAST,
            op_types=("MatMul",),
            dynamic=True,
        ),
        # the same, and the neck's 3x3 conv (256 -> 256 at 64 x 64, 2.4 GMAC; its input a LayerNorm output)
        # as a calibrated QLinearConv. Stage 0's and the downsampling convs were tried too: their inputs
        # (the residual stream) moved the embedding by 22-72 % (relative L2) in int8 (docs/benchmarks.md, issue 21).
        QuantRecipe(
            "linear-fast-dynamic-neck-qdq",
            include=_LINEAR_FAST,
            op_types=("MatMul",),
            dynamic=True,
            calibrated_convs=(r"/neck\.2/Conv$",),
        ),
    )
}
DEFAULT_RECIPE = "linear-but-deep-fc2-dynamic"

# ``--backend`` names of the int8 encoders -> their recipe. ``onnx-int8`` keeps the most Dice margin;
# ``onnx-int8-all`` quantizes all 40 weight MatMuls: faster at 2 threads, mean box Dice -0.004 on the
# shared slices (the issue allows 0.005; docs/benchmarks.md, CPU section). ``onnx-int8-fast``: the same
# layers in int8, quantized from the rewritten encoder of runtime/onnx_fast_export.py (fewer nodes);
# ``onnx-int8-conv``: onnx-int8-fast with the neck's 3x3 conv in calibrated int8 too (issue 21).
BACKEND_RECIPES: dict[str, str] = {
    "onnx-int8": DEFAULT_RECIPE,
    "onnx-int8-all": "linear-dynamic",
    "onnx-int8-fast": "linear-fast-dynamic",
    "onnx-int8-conv": "linear-fast-dynamic-neck-qdq",
}
# backends whose int8 encoder is quantized from ``encoder-fast.onnx`` instead of ``encoder.onnx``
FAST_EXPORT_BACKENDS = frozenset({"onnx-int8-fast", "onnx-int8-conv"})
# backends whose decoders (the base one and the click model's refiner) run the exports of
# ``runtime.onnx_decoder_export``: the int8 ones, which are chosen for speed. The decoders are fp32 whatever the
# encoder's recipe, and their masks are the torch modules' (0 pixels differ on the 42 shared slices); without them
# a click-model click ran the torch refiner: 55-63 ms against ~29 ms on 2 cores (session 9, where the rule then picked
# ``onnx-int8-all``). ``onnx`` keeps ``decoder.onnx``, the plain export of the parity tests.
FAST_DECODER_BACKENDS = frozenset(BACKEND_RECIPES)


def int8_dot_saturates() -> bool:
    """Whether this CPU's u8 x s8 dot products may saturate, so weights must be quantized as uint8.

    Without VNNI (AVX512-VNNI, AVX-VNNI) or AMX, x86 multiplies u8 activations by s8 weights with
    ``vpmaddubsw``, which adds two products into int16: 255 * 127 * 2 overflows it (ONNX Runtime's
    quantization docs warn of it). Measured on an AVX2-only AMD EPYC, onnx-int8 on the 5 test slices,
    relative L2 of the embedding from fp32: s8 weights 0.16-0.23 (saturated); 7-bit s8 weights
    (``reduce_range``) 0.079-0.081; u8 weights (u8 x u8 widens to int16 first, no saturation)
    0.047-0.055, as s8 weights on a VNNI Xeon (0.048-0.059). Other architectures do not saturate.
    """
    import platform

    if platform.machine().lower() not in ("x86_64", "amd64"):
        return False
    try:
        flags = next(
            (line.split(":", 1)[1].split() for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags")),
            [],
        )
    except OSError:
        return True  # unknown x86: the safe choice costs a little precision, never a saturated sum
    return not {"avx512_vnni", "avx_vnni", "amx_int8"} & set(flags)


def calibration_inputs(base: Segmenter, slices=CALIBRATION_SLICES) -> list[np.ndarray]:
    """Preprocessed (1, 3, S, S) float32 encoder inputs for the calibration slices."""
    from data.readers import read_study
    from data.windowing import default_window, slice_to_rgb

    out = []
    for study, indices in slices:
        volume = read_study(SAMPLES / study)
        window = default_window(volume)
        for k in indices:
            if not 0 <= k < volume.num_slices:
                raise ValueError(f"calibration slice {k} is out of range for {SAMPLES / study} ({volume.num_slices} slices)")
            out.append(base.preprocess(slice_to_rgb(volume, k, window)).cpu().numpy().astype(np.float32))
    return out


class _Reader:
    """onnxruntime.quantization CalibrationDataReader over a list of inputs."""

    def __init__(self, inputs: list[np.ndarray]):
        self._it = iter([{"image": x} for x in inputs])

    def get_next(self):
        return next(self._it, None)


def quantize_encoder(
    fp32_encoder: str | Path,
    out_path: str | Path,
    inputs: list[np.ndarray],
    recipe: QuantRecipe,
    u8_weights: bool = False,
) -> Path:
    """Write an int8 copy of ``fp32_encoder`` (runtime.onnx_export) to ``out_path``: QDQ nodes when
    the recipe is static (calibrated on ``inputs``), fused dynamic-quantized MatMuls when dynamic.
    ``u8_weights`` quantizes weights as uint8 instead of int8 (see :func:`int8_dot_saturates`)."""
    import tempfile

    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.quantization.shape_inference import quant_pre_process

    out_path = Path(out_path)
    with tempfile.TemporaryDirectory(dir=out_path.parent) as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        # On a graph with static shapes ORT's pre-optimization turns MatMul + Add into Gemm, which
        # dynamic quantization skips: the static fast export (runtime/onnx_fast_export.py) goes unoptimized.
        quant_pre_process(
            str(fp32_encoder), str(prepared), skip_optimization=_static_batch(fp32_encoder), skip_symbolic_shape=False
        )
        model = onnx.load(str(prepared), load_external_data=False)
        nodes, convs = recipe.nodes(model), recipe.conv_nodes(model)
        if not nodes or (recipe.calibrated_convs and not convs):
            raise ValueError(f"quantization recipe {recipe.name!r} matches no node of {fp32_encoder}")
        if convs:  # calibrated QDQ convs first; the dynamic pass below leaves their QDQ nodes alone
            with_convs = Path(tmp) / "convs.onnx"
            _quantize_static(prepared, with_convs, inputs, convs, ("Conv",), recipe.per_channel, u8_weights)
            prepared = with_convs
        if recipe.dynamic:
            with _expected_qdq_warning_dropped():
                quantize_dynamic(
                    str(prepared),
                    str(out_path),
                    op_types_to_quantize=list(recipe.op_types),
                    nodes_to_quantize=nodes,
                    per_channel=recipe.per_channel,
                    weight_type=QuantType.QUInt8 if u8_weights else QuantType.QInt8,
                )
            return out_path
        _quantize_static(prepared, out_path, inputs, nodes, recipe.op_types, recipe.per_channel, u8_weights)
    return out_path


class _DropAlreadyQuantized(logging.Filter):
    """Drops ORT's "Please check if the model is already quantized" root-logger warning, which the dynamic pass
    prints whenever the graph holds QDQ nodes: here they are the calibrated convs this module put there on
    purpose, and the warning reached the user's terminal on the first `medseg` run as if something were wrong."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "already quantized" not in record.getMessage()


@contextmanager
def _expected_qdq_warning_dropped():
    """Only that one message, only during the call; every other warning still reaches the user."""
    drop = _DropAlreadyQuantized()
    logging.getLogger().addFilter(drop)
    try:
        yield
    finally:
        logging.getLogger().removeFilter(drop)


def _quantize_static(
    src: Path, out: Path, inputs: list[np.ndarray], nodes: list[str], op_types: tuple[str, ...], per_channel: bool,
    u8_weights: bool,
) -> None:
    """Calibrated (MinMax on ``inputs``) QDQ int8 for ``nodes`` of ``src``, written to ``out``."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    if not inputs:
        raise ValueError("calibrated int8 needs calibration inputs")
    quantize_static(
        str(src),
        str(out),
        _Reader(inputs),
        quant_format=QuantFormat.QDQ,
        op_types_to_quantize=list(op_types),
        nodes_to_quantize=nodes,
        per_channel=per_channel,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QUInt8 if u8_weights else QuantType.QInt8,
        calibrate_method=CalibrationMethod.MinMax,
        extra_options={"CalibTensorRangeSymmetric": False},
    )


def _static_batch(path: str | Path) -> bool:
    """Whether the encoder's input has a fixed batch size (runtime/onnx_fast_export.py) or a dynamic one."""
    import onnx

    dim = onnx.load(str(path), load_external_data=False).graph.input[0].type.tensor_type.shape.dim[0]
    return dim.HasField("dim_value")


def int8_file_name(fp32_encoder: str | Path, recipe: str, u8_weights: bool) -> str:
    """``<encoder stem>-int8-<recipe>[-u8w].onnx``: recipe and weight type in the name, so a file built for
    one kind of CPU (see :func:`int8_dot_saturates`) or one recipe is never taken for another."""
    if recipe not in RECIPES:
        raise ValueError(f"unknown int8 recipe {recipe!r}; known: {', '.join(sorted(RECIPES))}")
    return f"{Path(fp32_encoder).stem}-int8-{recipe}{'-u8w' if u8_weights else ''}.onnx"


def build_int8_encoder(
    base: Segmenter, fp32_encoder: str | Path, out_path: str | Path, recipe: str, u8_weights: bool
) -> Path:
    """Quantize ``fp32_encoder`` with ``recipe`` into ``out_path`` (cached by ``runtime.export_cache``)."""
    spec = RECIPES[recipe]
    inputs = [] if spec.dynamic and not spec.calibrated_convs else calibration_inputs(base)
    return quantize_encoder(fp32_encoder, out_path, inputs, spec, u8_weights=u8_weights)

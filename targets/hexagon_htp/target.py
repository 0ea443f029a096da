"""The Hexagon HTP target descriptor: device table, capabilities, default pipeline.

Device variants are rows of :data:`DEVICES`, not code. Sources for the numbers: Qualcomm's
published SoC pairings (8 Gen 2 = v73, 8 Gen 3 = v75, 8 Elite = v79, 8 Elite Gen 5 = v81),
VTCM of about 8 MB on the recent parts, phone DRAM bandwidth of about 65-85 GB/s (see
``../shared/QNN_NOTES.md``). The MAC rates are the HTP's int8 tensor throughput scaled so that
ResNet-50 W8A8 lands near the published AI Hub latencies; they are a relative cost signal for
placement, not a datasheet.

Capabilities: :data:`HTP_OPS` lists the ONNX ops the QNN EP maps to HTP kernels in QDQ form
(checked against the EP: ``Erf`` is absent, so an erf-GELU must be fused into ``Gelu`` first).
A node is refused, with a :class:`~targets.base.Reason`, when its op is not listed, when a
tensor has a dynamic shape (``dynamic-shape``) or more than :data:`MAX_RANK` dimensions
(``rank``), when an attribute value is one the EP refuses (``attribute``,
:func:`attribute_refusal`), when a Softmax row cannot be held in VTCM
(``too-large-for-vtcm``, :func:`vtcm_refusal`), or when it is not quantized and the build is
not fp16. Every refusal below was observed on this machine (ORT 1.32 + onnxruntime-qnn 2.7.0,
QAIRT 2.51, ``htp_arch=75``): a one-op QDQ model (made by ORT's ``quantize_static``) compiled
with CPU fallback allowed left the node outside the context, or failed to finalize; the
neighbouring accepted variants were checked the same way.
"""

from __future__ import annotations

from dataclasses import dataclass

from compiler.ir import Node
from targets.base import SUPPORTED, DeviceSpec, Reason, Support

__all__ = ["DEVICES", "HTP_OPS", "HtpTarget", "supports", "default_pipeline", "SOC_ARCH",
           "MAX_RANK", "attribute_refusal", "vtcm_refusal"]

_GB = 1e9

#: One row per HTP generation: ``(arch, VTCM MB, clock Hz, a8w8 MACs/cycle, DRAM GB/s, SoCs)``.
#:
#: Sources and calibration (``targets/cost.py`` is the model; ``benchmarks/cost.py`` measures
#: it against the anchors):
#:
#: - SoC pairings and VTCM (~8 MB; 4 MB on v68) and phone DRAM bandwidth (65-85 GB/s) from
#:   ``QNN_NOTES.md``. Per-row bandwidths are unchanged; the LPDDR peaks of the SoCs are 67.2
#:   (8 Gen 2, LPDDR5X-4200 x 64 bit; the row says 64), 76.8 (8 Gen 3, LPDDR5X-4800) and
#:   84.8 GB/s (8 Elite, LPDDR5X-5300); the v68/v69/v81 values are unverified.
#: - Clocks: nominal HTP clocks of the row's SoC generation; unpublished by Qualcomm, so only
#:   the product ``macs_per_cycle * clock_hz`` (effective MAC/s) carries meaning.
#: - ``a8w8`` MACs/cycle: *effective* rates fitted so that ResNet-50 W8A8 (224x224, after
#:   edgec's canonicalize+fuse) lands on the Qualcomm AI Hub latencies in ``QNN_NOTES.md``:
#:   0.90 / 0.69 / 0.53 ms on 8 Gen 2 (v73) / 8 Gen 3 (v75) / 8 Elite (v79), i.e. 6.5 / 9.4 /
#:   15.1 TMAC/s. Under the same cost model, the earlier values (4096 / 4096 / 6144 with a 2 us
#:   op overhead) predicted 1.15 / 1.06 / 0.79 ms.
#:   v68, v69 and v81 have no published anchor here: they keep their old ratio to the nearest
#:   anchored arch (v68/v69 x 1.33 like v73, v81 x 1.76 like v79), i.e. they are guesses.
#: - ``a16w8`` = a8w8 / 3 and ``fp16`` = a8w8 / 3: fitted so ResNet-50's predicted slowdown
#:   falls in the published ranges (W8A16 1.7-2.2x, FP16 2.2-2.5x W8A8; fp16 also moves 16-bit
#:   weights). ``a16w16`` = a16w8 / 2 has no anchor (assumed: 16-bit weights double the passes).
#: - ``op_overhead_s`` = 1000 cycles at the row's clock: the per-op floor seen in HTP simulator
#:   profiles (QAIRT 2.51) of ops on a few hundred elements (Reshape 449-798, Transpose 688,
#:   HardSigmoid 1487-1654 cycles; the simulator's cycle counts do not change with the arch).
#: - ``graph_overhead_s`` = 50 us per graph execution (the CPU->DSP call); an order-of-magnitude
#:   assumption with no measurement behind it. It is part of the ResNet-50 fit: changing it
#:   moves the fitted MAC rates.
DEVICES: dict[str, DeviceSpec] = {
    arch: DeviceSpec(name=f"htp-v{arch}", arch=arch, vtcm_bytes=vtcm << 20, clock_hz=clock,
                     macs_per_cycle={"a8w8": macs, "a16w8": macs / 3, "a16w16": macs / 6,
                                     "fp16": macs / 3},
                     dram_bytes_per_s=bw * _GB, op_overhead_s=1000 / clock,
                     graph_overhead_s=50e-6, socs=socs)
    for arch, vtcm, clock, macs, bw, socs in (
        ("68", 4, 1.0e9, 2720, 44, ("sm8350",)),
        ("69", 8, 1.1e9, 2720, 51, ("sm8450",)),
        ("73", 8, 1.2e9, 5430, 64, ("sm8550", "snapdragon-8-gen-2")),
        ("75", 8, 1.3e9, 7260, 77, ("sm8650", "snapdragon-8-gen-3")),
        ("79", 8, 1.4e9, 10820, 85, ("sm8750", "snapdragon-8-elite")),
        ("81", 8, 1.5e9, 14430, 90, ("snapdragon-8-elite-gen-5",)),
    )
}

#: SoC names users know -> HTP arch
SOC_ARCH: dict[str, str] = {soc: arch for arch, d in DEVICES.items() for soc in d.socs}

#: ONNX ops the QNN EP runs on the HTP (in QDQ form).
HTP_OPS = frozenset({
    "Abs", "Add", "ArgMax", "ArgMin", "AveragePool", "BatchNormalization", "Cast", "Ceil",
    "Clip", "Concat", "Conv", "ConvTranspose", "Cos", "DepthToSpace", "Div", "Elu", "Equal",
    "Exp", "Expand", "Flatten", "Floor", "Gather", "Gelu", "Gemm", "GlobalAveragePool",
    "GlobalMaxPool", "Greater", "GreaterOrEqual", "HardSigmoid", "HardSwish",
    "InstanceNormalization", "LayerNormalization", "LeakyRelu", "Less", "LessOrEqual", "Log",
    "LogSoftmax", "LpNormalization", "MatMul", "Max", "MaxPool", "Min", "Mul", "Neg", "Not",
    "Pad", "Pow", "PRelu", "ReduceMax", "ReduceMean", "ReduceMin", "ReduceProd", "ReduceSum",
    "Relu", "Reshape", "Resize", "Round", "Sigmoid", "Sign", "Sin", "Slice", "Softmax",
    "SpaceToDepth", "Split", "Sqrt", "Squeeze", "Sub", "Tanh", "Tile", "TopK", "Transpose",
    "Unsqueeze", "Where", "Reciprocal", "Identity",
})

#: ops that only move or index data: fine without an encoding of their own
_LAYOUT = frozenset({"Reshape", "Transpose", "Flatten", "Squeeze", "Unsqueeze", "Identity",
                     "Gather", "Slice", "Split", "Concat", "Expand", "Tile", "Cast"})


#: Most dimensions a tensor may have on the HTP. Rank 6 was refused by the EP for Add,
#: Transpose and Softmax (the node stays outside the context); a Reshape to rank 6 inside an
#: otherwise supported graph was accepted by the EP and then failed HTP finalization
#: (QNN_COMMON_ERROR_MEM_ALLOC). Rank 5 (Add, Transpose, 3-D Conv) builds.
MAX_RANK = 5

#: bytes a Softmax / LogSoftmax row element takes in VTCM (32-bit intermediates), and the
#: fraction of VTCM a row may take; see :func:`vtcm_refusal`
_SOFTMAX_ROW_ELEMENT_BYTES = 4
_SOFTMAX_ROW_VTCM_FRACTION = 0.5


def _text(v: object) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


def _ints(v: object) -> list[int]:
    if v is None:
        return []
    if isinstance(v, (list, tuple)):
        return [int(x) for x in v]
    return [int(v)]  # type: ignore[call-overload]


def attribute_refusal(node: Node) -> str | None:
    """Why the QNN EP refuses ``node`` for an attribute value, or None. Observed refusals (the
    accepted neighbours in parentheses):

    - ``ConvTranspose`` and ``MaxPool`` with a dilation other than 1 (``Conv`` with dilation 2
      and every ``auto_pad`` of Conv/ConvTranspose build);
    - ``Pad`` with ``mode="wrap"`` (constant, reflect and edge build);
    - ``Resize`` with ``antialias=1``; ``Resize`` nearest with ``asymmetric`` coordinates and
      ``nearest_mode`` ``round_prefer_floor`` (the default) or ``ceil`` (``floor``, torch's
      nearest, and ``round_prefer_ceil`` build; so do the other coordinate modes, linear and
      cubic, and non-integer scales);
    - ``LpNormalization`` with ``p=1`` (the EP takes p=2, though an 8-bit p=2 then failed
      HTP finalization with QNN_COMMON_ERROR_MEM_ALLOC: a finalize failure, which the
      emitter's split handles, not a capability refusal).
    """
    op = node.op
    if op in ("ConvTranspose", "MaxPool"):
        dil = _ints(node.attr("dilations"))
        if any(d != 1 for d in dil):
            return f"{op} with dilations={dil}: the HTP kernel takes dilation 1 only"
    elif op == "Pad":
        mode = _text(node.attr("mode", "constant"))
        if mode == "wrap":
            return "Pad mode 'wrap' (circular padding) has no HTP kernel"
    elif op == "Resize":
        if int(node.attr("antialias", 0) or 0):  # type: ignore[arg-type]
            return "Resize with antialias=1 has no HTP kernel"
        mode = _text(node.attr("mode", "nearest"))
        ctm = _text(node.attr("coordinate_transformation_mode", "half_pixel"))
        nearest = _text(node.attr("nearest_mode", "round_prefer_floor"))
        if mode == "nearest" and ctm == "asymmetric" and nearest in ("round_prefer_floor",
                                                                      "ceil"):
            return (f"Resize nearest with asymmetric coordinates and nearest_mode={nearest!r}: "
                    "the HTP rounds asymmetric nearest with 'floor' only")
    elif op == "LpNormalization":
        p = int(node.attr("p", 2) or 2)  # type: ignore[arg-type]
        if p != 2:
            return f"LpNormalization with p={p}: the HTP kernel is the L2 norm only"
    return None


def vtcm_refusal(node: Node, vtcm_bytes: int) -> str | None:
    """Why ``node`` cannot be held in VTCM on the HTP, or None.

    A ``Softmax``/``LogSoftmax`` row (the elements along ``axis``) must be resident in VTCM.
    Observed on v75 (8 MB VTCM), rows of shape ``[1, n]``: n = 1 Mi builds at 8 and at 16 bits;
    n = 1.5 Mi (16-bit) and n = 2, 3, 4, 5, 6, 10, 16 Mi (8-bit) fail HTP finalization with
    QNN_COMMON_ERROR_MEM_ALLOC. The limit follows the element count, not the encoded bytes,
    which fits 32-bit intermediates: a row is refused when ``4 * n`` bytes exceed half of
    VTCM (4 MB of 8 builds, 6 MB fails). The rule is approximate: on v68 (4 MB VTCM in the
    table) rows of 512 Ki and 1 Mi build while 768 Ki fails, so the simulator's limit is not
    a clean function of the row size; the rule refuses 768 Ki and 1 Mi there. Other big
    tensors are tiled and stream from DRAM: a 47 MB 16-bit Gather table, a 16 MB MatMul
    weight and 16 MB element-wise activations all build on v75.
    """
    if node.op not in ("Softmax", "LogSoftmax") or not node.inputs or node.inputs[0] is None:
        return None
    x = node.inputs[0]
    shape = x.shape
    if shape is None or not shape or not all(isinstance(d, int) for d in shape):
        return None
    axis = int(node.attr("axis", -1) or 0)  # type: ignore[arg-type]
    axis = axis + len(shape) if axis < 0 else axis
    if not 0 <= axis < len(shape):
        return None
    dim = shape[axis]
    if not isinstance(dim, int):
        return None
    n = dim
    need = n * _SOFTMAX_ROW_ELEMENT_BYTES
    limit = int(vtcm_bytes * _SOFTMAX_ROW_VTCM_FRACTION)
    if need > limit:
        return (f"{node.op} row of {n} elements (axis {axis} of %{x.name}) needs "
                f"{need / 2**20:.1f} MB of VTCM at 32-bit intermediates; at most "
                f"{limit / 2**20:.0f} MB (half of the {vtcm_bytes >> 20} MB VTCM) fits")
    return None


def supports(node: Node, *, fp16: bool = False, vtcm_bytes: int = 8 << 20) -> Support:
    """Whether the HTP takes ``node`` (in the build's precision), with the reason if not;
    ``vtcm_bytes``: the device's VTCM (:attr:`DeviceSpec.vtcm_bytes`)."""
    if node.domain not in ("", "ai.onnx"):
        return Support(False, Reason.OP_UNSUPPORTED,
                       f"{node.qualified_op} is not an ONNX op the QNN EP knows")
    if node.op not in HTP_OPS:
        return Support(False, Reason.OP_UNSUPPORTED, f"the HTP has no kernel for {node.op}")
    for v in node.outputs:
        if v is not None and v.shape is not None and not all(isinstance(d, int)
                                                            for d in v.shape):
            return Support(False, Reason.DYNAMIC_SHAPE,
                           f"output %{v.name} has a dynamic shape {v.type}")
    for t in (*node.inputs, *node.outputs):
        if t is not None and t.shape is not None and len(t.shape) > MAX_RANK:
            return Support(False, Reason.RANK,
                           f"%{t.name} has rank {len(t.shape)}; the HTP takes at most "
                           f"{MAX_RANK} dimensions")
    why = attribute_refusal(node)
    if why is not None:
        return Support(False, Reason.ATTRIBUTE, why)
    why = vtcm_refusal(node, vtcm_bytes)
    if why is not None:
        return Support(False, Reason.TOO_LARGE_FOR_VTCM, why)
    if not fp16 and node.op not in _LAYOUT:
        floats = [v for v in node.outputs if v is not None and v.dtype.is_float]
        if floats and all(v.encoding is None for v in floats):
            consumers_quantized = any(
                u.outputs and any(o is not None and o.encoding is not None for o in u.outputs)
                for v in floats for u in v.consumers())
            if not consumers_quantized:
                return Support(False, Reason.DTYPE_UNSUPPORTED,
                               "left in float (not quantized) and the build is not fp16")
    return SUPPORTED


def default_pipeline(precision: str, method: str = "mse") -> str:
    """The pass pipeline ``compile()`` runs for the HTP at ``precision``."""
    if precision in ("fp16", "fp32"):
        return "canonicalize,fuse,lower-group-norm,canonicalize"
    # 16-bit activations: a LayerNorm over exactly 16 rows feeding a Gemm miscomputes on the
    # HTP (passes/lower_layer_norm.py); written as reductions it agrees
    lower = ",lower-layer-norm{rows=16}" if precision in ("w8a16", "w4a16") else ""
    # w8a8: the auto policy keeps LayerNorms at 16 bits, and the HTP's 16-bit LayerNorm op over
    # a batch of token rows ([2, 65, 32]) costs 2-8x its written-out form (ViT: 15-30 M -> 6.7 M
    # simulator cycles for -0.9 dB). At w8a16 the written form costs the ViT 1.7 dB (46.5 ->
    # 44.8), which seq-mse{rounding=gptq} wins back, but that pass took all-MiniLM-L6-v2's
    # compile from ~10 to ~60 s: both stay opt-in there (README, "What each piece buys")
    if precision == "w8a8":
        lower += ",lower-layer-norm{min_outer_dims=2}"
    # output-aware weight scales at w4a16 (passes/quant/seqmse.py): ResNet +1.7 dB, ViT +1.5
    seq = "seq-mse{weighting=none}," if precision == "w4a16" else ""
    # w8a8: linear layers read an 8-bit SmoothQuant-scaled copy of a norm's output that has
    # channel outliers, while the auto policy keeps the output itself at 16 bits for the
    # residual (all-MiniLM-L6-v2, norms at 5-23x channel max/median: 1.32x -> 1.16x plain
    # w8a8's cycles, cosine 0.9961 -> 0.9956); the zoo's norms (1.6-2.9x) are left alone
    smooth = "smooth-quant{split=true,min_ratio=4}," if precision == "w8a8" else ""
    return (f"canonicalize,fuse,lower-group-norm{lower},canonicalize,{smooth}"
            f"calibrate{{method={method}}},{seq}quantize{{scheme={precision}}}")


@dataclass(frozen=True)
class HtpTarget:
    """``htp-<arch>``: the device row, the quantization rules, capabilities, emit."""

    arch: str

    @property
    def name(self) -> str:
        """``htp-v75`` etc."""
        return f"htp-v{self.arch}"

    @property
    def device(self) -> DeviceSpec:
        """This arch's row of :data:`DEVICES`."""
        return DEVICES[self.arch]

    @property
    def quant_rules(self) -> object:
        """The HTP's :class:`~passes.quant.rules.QuantRules`."""
        from targets.hexagon_htp.rules import HTP_QUANT_RULES

        return HTP_QUANT_RULES

    def supports(self, node: Node, *, fp16: bool = False) -> Support:
        """See :func:`supports` (with this device's VTCM)."""
        return supports(node, fp16=fp16, vtcm_bytes=self.device.vtcm_bytes)

    def default_pipeline(self, precision: str) -> str:
        """See :func:`default_pipeline`."""
        return default_pipeline(precision)

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
tensor has a dynamic shape, or when it is not quantized and the build is not fp16.
"""

from __future__ import annotations

from dataclasses import dataclass

from compiler.ir import Node
from targets.base import SUPPORTED, DeviceSpec, Reason, Support

__all__ = ["DEVICES", "HTP_OPS", "HtpTarget", "supports", "default_pipeline", "SOC_ARCH"]

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


def supports(node: Node, *, fp16: bool = False) -> Support:
    """Whether the HTP takes ``node`` (in the build's precision), with the reason if not."""
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
    return (f"canonicalize,fuse,lower-group-norm{lower},canonicalize,"
            f"calibrate{{method={method}}},quantize{{scheme={precision}}}")


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
        """See :func:`supports`."""
        return supports(node, fp16=fp16)

    def default_pipeline(self, precision: str) -> str:
        """See :func:`default_pipeline`."""
        return default_pipeline(precision)

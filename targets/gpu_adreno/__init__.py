"""The ``gpu-adreno`` target: an Adreno 740/750-class GPU, as a capability and cost descriptor.

GPU partitions cannot run on this machine (the onnxruntime-qnn wheel ships ``libQnnGpu.so``,
but no Adreno, see ``QNN_NOTES.md``), so this target has capabilities and a cost model only:
the placement pass can weigh it, ``compile()`` cannot emit for it.

Capabilities (a decision, documented here): the GPU runs **float** graphs only (fp16 compute,
fp32 or fp16 tensors). Nodes whose tensors carry integer quantization encodings are refused
with ``dtype-unsupported``: QNN's GPU backend is a float backend, and running a W8A8 graph there
would mean dequantizing it, which is a different model than the one the user quantized. The op
set is the HTP's (:data:`targets.hexagon_htp.target.HTP_OPS`), an approximation: it is not
checked against ``libQnnGpu.so``, which cannot run here. Dynamic shapes are refused.

Cost numbers (:data:`GPU_DEVICE`), all peak figures, **uncalibrated** (no published per-model
GPU latencies in ``QNN_NOTES.md``, no device here):

- ``macs_per_cycle`` ``fp32`` 1536, ``fp16`` 3072 at ``clock_hz`` 0.9 GHz: Qualcomm does not
  publish ALU counts; third-party spec tables list the Adreno 740 (8 Gen 2, ~0.68 GHz) and 750
  (8 Gen 3, ~0.9 GHz) with 1536 FP32 lanes, fp16 at twice the rate: 2.8 TFLOPS fp32 and 5.5
  TFLOPS fp16 peak (FMA = 2 FLOPs) for the 750.
- ``dram_bytes_per_s`` 76.8 GB/s: the 8 Gen 3's LPDDR5X-4800 x 64 bit (the GPU can draw most of
  the SoC's bandwidth).
- ``vtcm_bytes`` 0: on-chip reuse (GMEM, L2) is not modelled: every tensor goes to DRAM.
- ``op_overhead_s`` 5 us per kernel and ``graph_overhead_s`` 100 us per partition (enqueue,
  flush and the CPU<->GPU synchronisation): order-of-magnitude assumptions, not measured.
"""

from __future__ import annotations

from dataclasses import dataclass

from compiler.errors import TargetError
from compiler.ir import Node
from targets.base import SUPPORTED, DeviceSpec, Reason, Support

__all__ = ["GpuTarget", "GPU_DEVICE", "supports"]

#: the Adreno 750-class cost-model numbers (sources in the module docstring)
GPU_DEVICE = DeviceSpec(
    name="gpu-adreno", arch="adreno-750", vtcm_bytes=0, clock_hz=0.9e9,
    macs_per_cycle={"fp32": 1536, "fp16": 3072}, dram_bytes_per_s=76.8e9,
    op_overhead_s=5e-6, graph_overhead_s=100e-6,
    socs=("snapdragon-8-gen-2", "snapdragon-8-gen-3"),
)


def supports(node: Node) -> Support:
    """Whether the GPU takes ``node``: an HTP-listed ONNX op, static shapes, no integer
    quantization encodings."""
    from targets.hexagon_htp.target import HTP_OPS

    if node.domain not in ("", "ai.onnx") or node.op not in HTP_OPS:
        return Support(False, Reason.OP_UNSUPPORTED,
                       f"{node.qualified_op} is not in the GPU descriptor's op set")
    for v in (*node.inputs, *node.outputs):
        if v is None:
            continue
        if v.encoding is not None:
            return Support(False, Reason.DTYPE_UNSUPPORTED,
                           f"%{v.name} is quantized to {v.encoding.bits} bits; the GPU runs "
                           "float graphs only")
    for v in node.outputs:
        if v is not None and v.shape is not None and not all(isinstance(d, int)
                                                            for d in v.shape):
            return Support(False, Reason.DYNAMIC_SHAPE,
                           f"output %{v.name} has a dynamic shape {v.type}")
    return SUPPORTED


@dataclass(frozen=True)
class GpuTarget:
    """``gpu-adreno``: capabilities and cost numbers of an Adreno 740/750-class GPU."""

    name: str = "gpu-adreno"

    @property
    def device(self) -> DeviceSpec:
        """The cost-model numbers (:data:`GPU_DEVICE`)."""
        return GPU_DEVICE

    @property
    def arch(self) -> str:
        """Emission needs an arch; the GPU has none here: raises :class:`TargetError` so that
        ``compile(target="gpu-adreno")`` fails with a reason instead of an AttributeError."""
        raise TargetError("gpu-adreno is a capability and cost descriptor only: edgec cannot "
                          "emit or run GPU artifacts on this machine; use it in estimate() or "
                          "placement")

    def supports(self, node: Node, *, fp16: bool = False) -> Support:
        """See :func:`supports` (``fp16`` is accepted for interface parity: the GPU is always
        a float device)."""
        return supports(node)

    def default_pipeline(self, precision: str) -> str:
        """Canonicalize and fuse; the GPU takes float graphs, so no quantization."""
        return "canonicalize,fuse,lower-group-norm,canonicalize"

    @property
    def quant_rules(self) -> object:
        """Generic rules (unused: the GPU is not quantized)."""
        from passes.quant.rules import QuantRules

        return QuantRules()

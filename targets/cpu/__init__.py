"""The ``cpu`` target: the reference. It runs every node through ONNX Runtime's CPU EP and is
the numerical oracle every pass is checked against; emitting for it writes the (QDQ) ONNX
model as is.

Cost model (:data:`CPU_DEVICE`, used by ``targets/cost.py``): one big phone core running ORT's
CPU EP, a Cortex-X4 at 3.3 GHz as in the Snapdragon 8 Gen 3 (its prime core; the 8 Elite's
Oryon core has the same 4 x 128-bit vector pipes at up to 4.32 GHz). Sources:

- ``clock_hz`` 3.3 GHz: the 8 Gen 3 prime core's clock (Qualcomm's launch specification).
- ``macs_per_cycle``: peak of 4 x 128-bit NEON pipes (Arm Cortex-X4 software optimization
  guide): ``fp32`` 4 x 4 FMA lanes = 16; ``fp16`` 32; ``a8w8`` 64 (SDOT: 16 int8 MACs per
  128-bit instruction, the kernel ORT's MLAS uses for QLinearConv/QGemm). ORT's CPU EP has no
  16-bit integer kernels: ``a16w8``/``a16w16`` QDQ graphs dequantize to float, so they run at the
  ``fp32`` rate. These are peaks, not derated: there is no phone here to calibrate against, so
  expect real latencies above the prediction.
- ``dram_bytes_per_s`` 38.4 GB/s: half the 8 Gen 3's LPDDR5X-4800 x 64-bit peak (76.8 GB/s);
  one core cannot draw the whole memory system (an assumption, not a measurement).
- ``vtcm_bytes`` (on-chip memory, here the core's private L2) 2 MB: the Cortex-X4's L2 as
  configured in the 8 Gen 3; activation working sets that fit are not charged DRAM time.
- ``op_overhead_s`` 0.34 us and ``graph_overhead_s`` 7 us: measured on this machine (ORT 1.32
  CPU EP, one thread, x86-64): a 201-Relu chain on 8 floats minus a 1-Relu graph, per node; and
  a 1-node ``run()``. A phone core dispatches at the same order of magnitude.
"""

from __future__ import annotations

from dataclasses import dataclass

from compiler.ir import Node
from targets.base import SUPPORTED, DeviceSpec, Support

__all__ = ["CpuTarget", "CPU_DEVICE"]

#: the reference CPU's cost-model numbers (sources in the module docstring)
CPU_DEVICE = DeviceSpec(
    name="cpu", arch="cortex-x4", vtcm_bytes=2 << 20, clock_hz=3.3e9,
    macs_per_cycle={"fp32": 16, "fp16": 32, "a8w8": 64, "a16w8": 16, "a16w16": 16},
    dram_bytes_per_s=38.4e9, op_overhead_s=0.34e-6, graph_overhead_s=7e-6,
    socs=("snapdragon-8-gen-3",),
)


@dataclass(frozen=True)
class CpuTarget:
    """The CPU reference target: supports everything."""

    name: str = "cpu"

    @property
    def device(self) -> DeviceSpec:
        """The reference CPU's cost-model numbers (:data:`CPU_DEVICE`)."""
        return CPU_DEVICE

    def supports(self, node: Node, *, fp16: bool = False) -> Support:
        """Every node runs on the CPU reference."""
        return SUPPORTED

    def default_pipeline(self, precision: str) -> str:
        """Canonicalize and fuse; quantize only when asked for."""
        if precision in ("fp16", "fp32"):
            return "canonicalize,fuse,canonicalize"
        return (f"canonicalize,fuse,canonicalize,calibrate,quantize{{scheme={precision}}}")

    @property
    def quant_rules(self) -> object:
        """Generic rules (the CPU runs any QDQ)."""
        from passes.quant.rules import QuantRules

        return QuantRules()

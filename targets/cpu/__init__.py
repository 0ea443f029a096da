"""The ``cpu`` target: the reference. It runs every node through ONNX Runtime's CPU EP and is
the numerical oracle every pass is checked against; emitting for it writes the (QDQ) ONNX
model as is."""

from __future__ import annotations

from dataclasses import dataclass

from compiler.ir import Node
from targets.base import SUPPORTED, Support

__all__ = ["CpuTarget"]


@dataclass(frozen=True)
class CpuTarget:
    """The CPU reference target: supports everything."""

    name: str = "cpu"

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

"""The target descriptor schema every target fills.

A target is data plus a few functions: capabilities (with a reason code when a node is not
supported), quantization rules, a cost model, a default pipeline, and ``emit``. Device variants
(``htp-v68`` ... ``htp-v81``) differ in a table row, not in code.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import TYPE_CHECKING

from passes.quant.rules import QuantRules

if TYPE_CHECKING:
    from compiler.ir import Node

__all__ = ["Reason", "Support", "QuantRules", "DeviceSpec", "SUPPORTED"]


class Reason(enum.Enum):
    """Why a target does not take a node (stable codes for reports and the CLI)."""

    OK = "ok"
    OP_UNSUPPORTED = "op-unsupported"
    DTYPE_UNSUPPORTED = "dtype-unsupported"
    TOO_LARGE_FOR_VTCM = "too-large-for-vtcm"
    DYNAMIC_SHAPE = "dynamic-shape"
    RANK = "rank"
    ATTRIBUTE = "attribute"
    FINALIZE_FAILED = "finalize-failed"
    USER_PIN = "user-pin"


@dataclass(frozen=True)
class Support:
    """A capability verdict: ``ok`` plus, when refused, a reason code and a sentence."""

    ok: bool
    reason: Reason = Reason.OK
    detail: str = ""

    def __bool__(self) -> bool:
        return self.ok


SUPPORTED = Support(True)


@dataclass(frozen=True)
class DeviceSpec:
    """Numbers of one device variant, each documented where the table is defined."""

    name: str
    arch: str
    vtcm_bytes: int
    clock_hz: float
    macs_per_cycle: dict[str, float]  # by precision key: "a8w8", "a16w8", "a16w16", "fp16"
    dram_bytes_per_s: float
    op_overhead_s: float
    graph_overhead_s: float
    socs: tuple[str, ...] = ()

    def supports(self, node: Node) -> Support:  # pragma: no cover - overridden by targets
        """Capability of the device for ``node``."""
        return SUPPORTED

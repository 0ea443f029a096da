"""Targets: ``htp-v68`` ... ``htp-v81`` (Hexagon NPU, through QNN), ``cpu`` (the reference) and
``gpu-adreno`` (a capability and cost descriptor only).

:func:`get_target` turns a name (or a SoC name users know, such as ``snapdragon-8-gen-3``) into
a target object; anything else is refused with a ``TargetError`` that lists the valid names
(the QNN EP itself would silently build for its default arch).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from compiler.errors import TargetError

__all__ = ["get_target", "target_context", "target_names"]


def target_names() -> list[str]:
    """Every valid target name."""
    from targets.hexagon_htp.target import DEVICES, SOC_ARCH

    return ["cpu", "gpu-adreno", *(f"htp-v{a}" for a in DEVICES), *sorted(SOC_ARCH)]


def get_target(name: str) -> Any:
    """The target called ``name``."""
    from targets.hexagon_htp.target import DEVICES, SOC_ARCH, HtpTarget

    key = str(name).strip().lower()
    if key == "cpu":
        from targets.cpu import CpuTarget

        return CpuTarget()
    if key == "gpu-adreno":
        from targets.gpu_adreno import GpuTarget

        return GpuTarget()
    if key in SOC_ARCH:
        return HtpTarget(SOC_ARCH[key])
    if key.startswith("htp-v") and key[5:] in DEVICES:
        return HtpTarget(key[5:])
    raise TargetError(f"unknown target {name!r}; valid targets: {', '.join(target_names())}")


def target_context(target: Any, *, overrides: Mapping[str, str] | None = None,
                   **kw: Any) -> Any:
    """A :class:`~compiler.passes.PassContext` for running a pipeline for ``target`` (a name or
    a target object): its name, its quantization rules and the quantization ``overrides``;
    ``kw`` sets the other fields (``calibration``, ``progress``, ``bisect_limit``...). Every
    entry point (``compile()``, ``edgec opt``, ``edgec drift``) builds its context here, so
    they run a target's passes alike."""
    from compiler.passes import PassContext

    tgt = get_target(target) if isinstance(target, str) else target
    return PassContext(target=tgt.name, options={"quant_rules": tgt.quant_rules,
                                                 "quant_overrides": dict(overrides or {})},
                       **kw)

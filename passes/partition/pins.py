"""User placement pins: ``{"layers.0.*": "cpu", "op:Softmax": "htp", "node:conv1": "cpu"}``.

A pattern is a module-path glob matched against ``node.meta["src"]`` (the same rule as the
quantizer's precision overrides: ``layers.0.*`` matches ``layers.0.conv`` and, through a
trailing ``.``, ``layers.0`` itself), ``op:<Op>`` or ``node:<name>``. A value names a target of
the placement: a full name (``htp-v75``, ``cpu``, ``gpu-adreno``) or a family (``htp``, ``npu``,
``gpu``). The first matching pattern, in the mapping's order, wins.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Mapping, Sequence

from compiler.errors import TargetError
from compiler.ir import Node

__all__ = ["matches", "resolve_target", "pin_of"]

_FAMILIES = {"npu": "htp", "htp": "htp", "dsp": "htp", "cpu": "cpu", "gpu": "gpu"}


def matches(pattern: str, node: Node, name: str | None = None) -> bool:
    """Whether pin ``pattern`` selects ``node`` (``name``: the node's name in reports, for an
    unnamed node, see :func:`targets.cost.node_names`)."""
    if pattern.startswith("op:"):
        return node.op == pattern[3:]
    if pattern.startswith("node:"):
        return (node.name or name) == pattern[5:]
    src = str(node.meta.get("src", ""))
    return bool(src) and (fnmatch.fnmatchcase(src, pattern)
                          or fnmatch.fnmatchcase(src + ".", pattern))


def resolve_target(value: str, targets: Sequence[str], pattern: str) -> str:
    """The target of ``targets`` a pin value names; ``TargetError`` when it names none."""
    key = str(value).strip().lower()
    if key in targets:
        return key
    family = _FAMILIES.get(key)
    if family is not None:
        for t in targets:
            if t.split("-", 1)[0] == family:
                return t
    raise TargetError(f"placement pin {pattern!r} -> {value!r}: not one of the targets of "
                      f"this placement ({', '.join(targets)})")


def pin_of(node: Node, pins: Mapping[str, str], targets: Sequence[str],
           name: str | None = None) -> tuple[str, str] | None:
    """``(target, pattern)`` of the first pin that selects ``node``, or None."""
    for pattern, value in pins.items():
        if matches(pattern, node, name):
            return resolve_target(value, targets, pattern), pattern
    return None

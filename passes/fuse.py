"""``fuse``: rewrite operator chains into the fused operators a target runs as one kernel.

A fusion is a :class:`~compiler.rewrite.Rule` registered with :func:`register_fusion` at a
``level`` (1 = always safe, 2 = aggressive), one rule set per file in ``passes/fusions/``.
``fuse{level=N}``:

1. raises the default-domain opset to 20 when it is older (``passes/fusions/opset.py``: the
   fused ops are recent ONNX ops);
2. applies the rules of level N and below to a fixpoint;
3. marks units (attention, SiLU, RMSNorm) in ``meta["unit"]`` (``passes/fusions/units.py``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

from compiler.ir import Graph
from compiler.passes import Pass, PassContext, PassResult, option
from compiler.rewrite import Rule, RuleSet, apply_rules

__all__ = ["Fuse", "FUSIONS", "register_fusion"]

#: Fusion rules by level.
FUSIONS: dict[int, RuleSet] = {1: RuleSet("fusion-1"), 2: RuleSet("fusion-2")}


def register_fusion(rule: Rule, level: Literal[1, 2] = 1) -> Rule:
    """Add ``rule`` to the fusions of ``level``."""
    return FUSIONS[level].add(rule)


@dataclass(frozen=True)
class Fuse(Pass):
    """Apply the fusion rules of ``level`` and below to a fixpoint."""

    name: ClassVar[str] = "fuse"
    summary: ClassVar[str] = "Fuse operator chains into single kernels"
    level: Literal[0, 1, 2] = option(1, "0 = off, 1 = safe fusions, 2 = also aggressive ones")

    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        """Apply the rules."""
        import passes.fusions  # noqa: F401  (registers the rule sets)
        from passes.fusions.opset import upgrade_opset
        from passes.fusions.units import annotate_units

        rules = RuleSet(f"fusion<={self.level}",
                        [r for lvl in sorted(FUSIONS) if lvl <= self.level for r in FUSIONS[lvl]])
        if not len(rules):
            return PassResult(False)
        stats = upgrade_opset(graph, ctx)
        stats.update(apply_rules(graph, rules, ctx))
        before = {id(n): n.meta.get("unit") for n in graph.nodes}
        units = annotate_units(graph)
        marked = any(n.meta.get("unit") != before.get(id(n)) for n in graph.nodes)
        stats.update({f"units.{k}": v for k, v in units.items()})
        return PassResult(bool(stats) and (marked or any(
            not k.startswith("units.") for k in stats)), dict(stats))

"""``fuse``: rewrite operator chains into the fused operators a target runs as one kernel.

The rule set is empty until the target work fills it: a fusion is a
:class:`~compiler.rewrite.Rule` registered with :func:`register_fusion` at a ``level``
(1 = always safe, 2 = aggressive). ``fuse{level=N}`` applies the rules of level N and below.
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

        rules = RuleSet(f"fusion<={self.level}",
                        [r for lvl in sorted(FUSIONS) if lvl <= self.level for r in FUSIONS[lvl]])
        if not len(rules):
            return PassResult(False)
        stats = apply_rules(graph, rules, ctx)
        return PassResult(bool(stats), dict(stats))

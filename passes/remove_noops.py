"""``remove-noops``: remove nodes whose output equals an input (the ``NOOP_FOLDS`` table)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from compiler.ir import Graph
from compiler.passes import Pass, PassContext, PassResult, option
from compiler.rewrite import NOOP_FOLDS, apply_rules

__all__ = ["RemoveNoops"]


@dataclass(frozen=True)
class RemoveNoops(Pass):
    """Identity, inference Dropout, Cast to the same type, Reshape/Flatten/Squeeze/Expand/Tile
    to the same shape, single-input Concat, identity Transposes and Transpose pairs that
    cancel. Shape-based rules need known shapes: run ``infer-shapes`` first."""

    name: ClassVar[str] = "remove-noops"
    summary: ClassVar[str] = "Remove nodes that return an input unchanged"
    max_rounds: int = option(10, "sweeps over the graph before giving up on a fixpoint")

    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        """Apply ``NOOP_FOLDS`` to a fixpoint."""
        stats = apply_rules(graph, NOOP_FOLDS, ctx, max_rounds=self.max_rounds)
        return PassResult(bool(stats), dict(stats))

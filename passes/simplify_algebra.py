"""``simplify-algebra``: algebraic identities and compositions (the ``ALGEBRAIC_FOLDS``
table): ``x*1``, ``x+0``, ``-(-x)``, ``Transpose(Transpose(x))``, ``Reshape(Reshape(x))``..."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from compiler.ir import Graph
from compiler.passes import Pass, PassContext, PassResult, option
from compiler.rewrite import ALGEBRAIC_FOLDS, apply_rules

__all__ = ["SimplifyAlgebra"]


@dataclass(frozen=True)
class SimplifyAlgebra(Pass):
    """Apply the algebraic folds. Every rule keeps values bit-exact except ``x + 0`` and
    ``x - 0`` on ``-0.0``: the sum is ``+0.0``, the fold keeps ``-0.0`` (equal as numbers)."""

    name: ClassVar[str] = "simplify-algebra"
    summary: ClassVar[str] = "Fold algebraic identities (x*1, x+0, transpose/reshape chains)"
    max_rounds: int = option(10, "sweeps over the graph before giving up on a fixpoint")

    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        """Apply ``ALGEBRAIC_FOLDS`` to a fixpoint."""
        stats = apply_rules(graph, ALGEBRAIC_FOLDS, ctx, max_rounds=self.max_rounds)
        return PassResult(bool(stats), dict(stats))

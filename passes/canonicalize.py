"""``canonicalize``: the cleanup pipeline every target runs first.

Shape inference, no-op removal, algebraic simplification, constant folding, common
subexpression elimination, dead code elimination and a topological sort, repeated until
nothing changes (at most ``max_rounds`` times). Each sub-pass is also a pass of its own.

No-ops and algebra come before folding so that, e.g., a Transpose pair on a weight cancels
instead of being evaluated; folding in turn exposes no-ops for the next round.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from compiler.passes import Pass, PipelinePass, option
from passes.eliminate_common_subexpressions import EliminateCommonSubexpressions
from passes.eliminate_dead_code import EliminateDeadCode
from passes.fold_constants import FoldConstants
from passes.infer_shapes import InferShapes
from passes.remove_noops import RemoveNoops
from passes.simplify_algebra import SimplifyAlgebra
from passes.sort_topologically import SortTopologically

__all__ = ["Canonicalize"]


@dataclass(frozen=True)
class Canonicalize(PipelinePass):
    """infer-shapes, remove-noops, simplify-algebra, fold-constants,
    eliminate-common-subexpressions, eliminate-dead-code, sort-topologically; repeated."""

    name: ClassVar[str] = "canonicalize"
    summary: ClassVar[str] = "Shapes, no-ops, algebra, constant folding, CSE, DCE, sort; repeated"
    max_bytes: int = option(FoldConstants.max_bytes, "fold-constants: refuse larger results")
    max_rounds: int = option(4, "repeat the sub-pipeline at most this often")

    def passes(self) -> list[Pass]:
        """The sub-pipeline."""
        return [InferShapes(), RemoveNoops(), SimplifyAlgebra(),
                FoldConstants(max_bytes=self.max_bytes), EliminateCommonSubexpressions(),
                EliminateDeadCode(), SortTopologically()]

    def rounds(self) -> int:
        """``max_rounds``."""
        return self.max_rounds

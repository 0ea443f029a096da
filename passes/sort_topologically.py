"""``sort-topologically``: put the nodes in a dependency order, keeping the current order
wherever it is already valid."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from compiler.ir import Graph, topological_order
from compiler.passes import Pass, PassContext, PassResult

__all__ = ["SortTopologically"]


@dataclass(frozen=True)
class SortTopologically(Pass):
    """Stable topological sort (reordering is not a rewrite: no node or value changes)."""

    name: ClassVar[str] = "sort-topologically"
    summary: ClassVar[str] = "Order nodes by dependencies, stably"

    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        """Sort; ``VerifyError`` names a node on a cycle."""
        before = list(graph.nodes)
        order = topological_order(graph)
        if all(a is b for a, b in zip(before, order)):
            return PassResult(False)
        graph.sort()
        moved = sum(a is not b for a, b in zip(before, order))
        return PassResult(True, {"moved": moved})

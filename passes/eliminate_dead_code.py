"""``eliminate-dead-code``: remove nodes and constants that no graph output depends on."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from compiler.ir import Graph
from compiler.passes import Pass, PassContext, PassResult
from compiler.rewrite import Rewriter

__all__ = ["EliminateDeadCode"]


@dataclass(frozen=True)
class EliminateDeadCode(Pass):
    """Remove nodes whose outputs are all unused, then unused constants. ONNX operators have
    no side effects, so an unused node is dead; a reverse sweep removes whole dead chains."""

    name: ClassVar[str] = "eliminate-dead-code"
    summary: ClassVar[str] = "Remove nodes and constants nothing reads"

    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        """Remove dead nodes (last first) and dead constants; one rewrite each."""
        nodes = constants = 0
        for node in reversed(graph.nodes):
            if any(o.uses or o.is_output for o in node.outputs):
                continue
            if not ctx.may_rewrite():
                break
            rw = Rewriter(graph, ctx, rule="dead-node", root=node)
            rw.erase(node)
            rw.finish()  # also drops the constants only this node read
            nodes += 1
        for v in list(graph.constants.values()):
            if v.uses or v.is_output or graph.constants.get(v.name) is not v:
                continue
            if not ctx.may_rewrite():
                break
            rw = Rewriter(graph, ctx, rule="dead-constant")
            rw.erase_const(v)
            rw.finish()
            constants += 1
        return PassResult(bool(nodes or constants), {"nodes": nodes, "constants": constants})

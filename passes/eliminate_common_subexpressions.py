"""``eliminate-common-subexpressions``: merge equal constants and equal nodes."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from compiler.ir import Graph, Node, QuantEncoding, Value
from compiler.passes import Pass, PassContext, PassResult
from compiler.rewrite import Rewriter

__all__ = ["EliminateCommonSubexpressions"]

#: Ops that draw random numbers: two of them are not the same computation.
RANDOM_OPS = frozenset({"RandomNormal", "RandomNormalLike", "RandomUniform",
                        "RandomUniformLike", "Multinomial", "Bernoulli"})


def _freeze(x: Any) -> Any:
    """A hashable key for an attribute value (floats by bits, so NaN equals NaN)."""
    if isinstance(x, np.ndarray):
        return ("nd", str(x.dtype), x.shape, x.tobytes())
    if isinstance(x, (list, tuple)):
        return tuple(_freeze(v) for v in x)
    if isinstance(x, float):
        return ("f", x.hex())
    return x


def _encoding_key(enc: QuantEncoding | None) -> Any:
    if enc is None:
        return None
    return (enc.bits, enc.signed, enc.scale.tobytes(), enc.scale.shape, enc.zero_point.tobytes(),
            enc.axis, enc.block_size)


def _const_key(v: Value) -> Any:
    return (v.dtype, v.type.shape, v.digest, _encoding_key(v.encoding))


def _node_key(n: Node) -> Any:
    return (n.domain, n.op, tuple(id(v) if v is not None else None for v in n.inputs),
            tuple(sorted((k, _freeze(a)) for k, a in n.attrs.items())), n.placement,
            tuple((o.type, _encoding_key(o.encoding)) for o in n.outputs))


@dataclass(frozen=True)
class EliminateCommonSubexpressions(Pass):
    """Constants with the same content (dtype, shape, content hash, encoding) become one;
    then nodes with the same op, inputs, attributes, placement and output types become one.
    One forward sweep suffices: merging rewires later nodes before they are looked at."""

    name: ClassVar[str] = "eliminate-common-subexpressions"
    summary: ClassVar[str] = "Merge duplicate constants and duplicate nodes"

    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        """Merge later duplicates into the first occurrence."""
        merged_consts = merged_nodes = 0
        seen: dict[Any, Value] = {}
        for v in list(graph.constants.values()):
            first = seen.setdefault(_const_key(v), v)
            if first is v or v.is_output:
                continue
            if not ctx.may_rewrite():
                return PassResult(bool(merged_consts), {"constants": merged_consts})
            rw = Rewriter(graph, ctx, rule="duplicate-constant")
            rw.replace(v, first)
            rw.erase_const(v)
            rw.finish()
            merged_consts += 1
        nodes: dict[Any, Node] = {}
        for n in graph.nodes:
            if n.op in RANDOM_OPS or not n.outputs:
                continue
            first_node = nodes.setdefault(_node_key(n), n)
            if first_node is n or sum(o.is_output for o in (*n.outputs, *first_node.outputs)) > 1:
                continue  # two graph outputs must stay two values
            if not ctx.may_rewrite():
                break
            rw = Rewriter(graph, ctx, rule="duplicate-node", root=n)
            rw.replace_root(first_node.outputs)
            rw.finish()
            merged_nodes += 1
        return PassResult(bool(merged_consts or merged_nodes),
                          {"constants": merged_consts, "nodes": merged_nodes})

"""``fold-constants``: evaluate nodes whose inputs are all constants, on the CPU reference.

Evaluation runs the foldable nodes, all at once, on ONNX Runtime (the same reference every
pass is checked against), so a folded constant is exactly what the unfolded graph computes --
NaN and Inf included. ``Shape``/``Size`` fold without evaluation when the dimensions they
return are static (``Shape(x) {start=1}`` of ``f32[batch,8]`` is ``[8]``).

Results larger than ``max_bytes`` are refused (noted in ``ctx.log``, counted in the
``refused`` statistic) unless they are no larger than the constant data they are computed
from: folding must not blow a model up (``Expand``, ``ConstantOfShape``, ``Tile``), while
folding a weight's ``Transpose`` costs nothing.

Not folded: random ops, quantized tensors (an encoding is the target's business), edgec ops
the reference cannot run, and constants known only by hash.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from compiler.errors import EdgecError
from compiler.ir import EDGEC_DOMAIN, Graph, Node, Value
from compiler.ir.core import UnresolvedConst
from compiler.ir.verify import edgec_op
from compiler.passes import Pass, PassContext, PassResult, option
from compiler.rewrite import Rewriter

__all__ = ["FoldConstants"]

RANDOM_OPS = frozenset({"RandomNormal", "RandomNormalLike", "RandomUniform",
                        "RandomUniformLike", "Multinomial", "Bernoulli"})


def _can_evaluate(n: Node) -> bool:
    if n.op in RANDOM_OPS or not n.outputs:
        return False
    if n.domain == EDGEC_DOMAIN:
        sch = edgec_op(n.op)
        if sch is None or sch.lower is None:
            return False
    if any(o.encoding is not None for o in n.outputs):
        return False
    return any(_used(o) for o in n.outputs)


def _used(v: Value) -> bool:
    return bool(v.uses) or v.is_output


def _const_input(v: Value | None) -> bool:
    return v is None or (v.is_const and v.encoding is None
                         and not isinstance(v.const_source, UnresolvedConst))


def _fits(v: Value, shape: tuple[int, ...]) -> bool:
    """True when an array of ``shape`` can stand for ``v`` (its known dims agree)."""
    if v.shape is None:
        return True
    return len(v.shape) == len(shape) and all(
        not isinstance(d, int) or d == s for d, s in zip(v.shape, shape))


def _static_shape(n: Node) -> np.ndarray | None:
    """The value of ``Shape(x)``/``Size(x)`` when ``x``'s shape is static."""
    x = n.input(0)
    if x is None or x.shape is None:
        return None
    # Python slicing clamps like ONNX's Shape-15 start/end.
    dims = list(x.shape) if n.op == "Size" else list(x.shape)[n.attr("start", 0):n.attr("end")]
    if not all(isinstance(d, int) for d in dims):
        return None
    static = [int(d) for d in dims]  # type: ignore[arg-type]
    if n.op == "Size":
        return np.array(int(np.prod(static)), dtype=np.int64)
    return np.array(static, dtype=np.int64)


@dataclass(frozen=True)
class FoldConstants(Pass):
    """Replace the outputs of constant computations by constants."""

    name: ClassVar[str] = "fold-constants"
    summary: ClassVar[str] = "Evaluate nodes whose inputs are all constants (on the reference)"
    needs_finite_weights: ClassVar[bool] = True
    max_bytes: int = option(1 << 24, "refuse folded results larger than this (unless they are "
                            "no larger than their constant inputs)")

    def _too_big(self, nbytes: int, n: Node) -> bool:
        inputs = sum(v.type.nbytes or 0 for v in n.inputs if v is not None and v.is_const)
        return nbytes > self.max_bytes and nbytes > inputs

    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        """Fold static ``Shape``/``Size``, then evaluate and fold every constant computation."""
        folded = refused = 0
        for n in graph.nodes:
            if n.domain == "" and n.op in ("Shape", "Size") and _used(n.outputs[0]):
                value = _static_shape(n)
                if value is not None:
                    if not ctx.may_rewrite():
                        return PassResult(bool(folded), {"folded": folded})
                    self._replace(graph, ctx, n, [value])
                    folded += 1
        # Foldable nodes, in order: every input constant or computed by an earlier one.
        computed: set[int] = set()
        todo: list[Node] = []
        for n in graph.nodes:
            if not _can_evaluate(n):
                continue
            if not all(_const_input(v) or id(v) in computed for v in n.inputs):
                continue
            sizes = [o.type.nbytes for o in n.outputs]
            if any(s is not None and self._too_big(s, n) for s in sizes):
                ctx.note(f"refused to fold {n.label()}: result of {max(s or 0 for s in sizes)} "
                         f"bytes exceeds max_bytes={self.max_bytes}")
                refused += 1
                continue
            todo.append(n)
            computed.update(id(o) for o in n.outputs)
        if not todo:
            return PassResult(bool(folded), {"folded": folded, "refused": refused})
        results = self._evaluate(graph, todo, ctx)
        for n in todo:
            arrays = [results.get(o.name) for o in n.outputs]
            if all(a is None for a in arrays):
                continue
            big = [a for a in arrays if a is not None and self._too_big(a.nbytes, n)]
            if big:
                ctx.note(f"refused to fold {n.label()}: result of {big[0].nbytes} bytes "
                         f"exceeds max_bytes={self.max_bytes}")
                refused += 1
                continue
            if not ctx.may_rewrite():
                break
            if self._replace(graph, ctx, n, arrays):
                folded += 1
        # Computations whose results were refused may have lost their last reader.
        for n in reversed(todo):
            if n in graph.nodes and not any(_used(o) for o in n.outputs):
                if not ctx.may_rewrite():
                    break
                rw = Rewriter(graph, ctx, rule="fold-dead", root=n)
                rw.erase(n)
                rw.finish()
        return PassResult(bool(folded), {"folded": folded, "refused": refused})

    @staticmethod
    def _replace(graph: Graph, ctx: PassContext, n: Node,
                 arrays: list[np.ndarray | None]) -> bool:
        rw = Rewriter(graph, ctx, rule="fold", root=n)
        values: list[Value | None] = []
        for o, a in zip(n.outputs, arrays):
            if a is None or not _used(o):
                values.append(None)
                continue
            if a.dtype != o.dtype.numpy or not _fits(o, a.shape):
                ctx.note(f"not folding {n.label()}: %{o.name} is {o.type} but evaluates to "
                         f"{a.dtype}{list(a.shape)}; run infer-shapes first")
                rw.rollback()
                return False
            values.append(rw.const(a, o.name, o.dtype))
        if not rw.replace_root(values):
            rw.rollback()
            return False
        rw.finish()
        return True

    @staticmethod
    def _evaluate(graph: Graph, todo: list[Node], ctx: PassContext) -> dict[str, np.ndarray]:
        """Run ``todo`` on the reference: all together, else one by one (skipping failures)."""
        try:
            return _run(todo)
        except EdgecError:
            pass
        out: dict[str, np.ndarray] = {}
        for n in todo:
            if not all(_const_input(v) or (v is not None and v.name in out) for v in n.inputs):
                continue
            try:
                out.update(_run([n], out))
            except EdgecError as e:
                ctx.note(f"could not evaluate {n.label()}: {str(e).splitlines()[0]}")
        return out


def _run(nodes: list[Node], known: dict[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
    """Evaluate ``nodes`` (in order) on a graph of their own; ``known`` gives input values
    computed before."""
    from compiler.reference import ReferenceRunner

    known = known or {}
    g = Graph("fold", nodes[0].graph.opset if nodes[0].graph is not None else None)
    vals: dict[int, Value] = {}
    for n in nodes:
        ins: list[Value | None] = []
        for v in n.inputs:
            if v is None:
                ins.append(None)
            elif id(v) not in vals:
                data = v.const if v.is_const else known[v.name]
                vals[id(v)] = g.add_const(v.name, np.asarray(data), v.dtype)
                ins.append(vals[id(v)])
            else:
                ins.append(vals[id(v)])
        new = Node(n.op, ins, [Value(o.name, o.type) for o in n.outputs], n.attrs,
                   domain=n.domain)
        g.insert(new)
        for o, no in zip(n.outputs, new.outputs):
            vals[id(o)] = no
    g.outputs = [vals[id(o)] for n in nodes for o in n.outputs if _used(o)]
    runner = ReferenceRunner(g, qdq=False)
    return runner.run({})

"""``lower-group-norm``: rewrite InstanceNormalization / GroupNormalization into plain ops.

PyTorch's GroupNorm exports as Reshape -> InstanceNormalization -> Reshape -> Mul -> Add, and
that form fails HTP finalization with ``QNN_COMMON_ERROR_MEM_ALLOC`` at every precision (see
``../shared/QNN_NOTES.md``). The same computation written as reductions,
``(x - mean) / sqrt(var + eps) * scale + bias`` with ``ReduceMean`` over the normalized axes,
finalizes. The rewrite is exact up to float rounding (checked against the CPU reference).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from compiler.ir import Graph, Value
from compiler.passes import Pass, PassContext, PassResult
from compiler.rewrite import Match, Pat, Rewriter, Rule, apply_rules

__all__ = ["LowerGroupNorm", "LOWER_INSTANCE_NORM", "normalize"]


def _check(m: Match) -> str | None:
    x = m["x"]
    if x.type.rank is None or x.type.rank < 3:
        return "input rank unknown or below 3"
    for k in ("scale", "bias"):
        if not m[k].is_const:
            return f"InstanceNormalization {k} is not a constant"
    return None


def normalize(rw: Rewriter, x: Value, axes: list[int], eps: float) -> Value:
    """``(x - mean) / sqrt(var + eps)`` over ``axes`` as reductions."""
    ax = rw.const(np.array(axes, np.int64), "axes")
    mean = rw.op("ReduceMean", [x, ax], {"keepdims": 1})
    d = rw.op("Sub", [x, mean])
    var = rw.op("ReduceMean", [rw.op("Mul", [d, d]), ax], {"keepdims": 1})
    std = rw.op("Sqrt", [rw.op("Add", [var, rw.const(np.array(eps, np.float32), "eps")])])
    return rw.op("Div", [d, std])


def _rewrite(m: Match, rw: Rewriter) -> Value:
    x = m["x"]
    rank = x.type.rank
    assert rank is not None
    eps = float(m.root.attr("epsilon", 1e-5))
    y = normalize(rw, x, list(range(2, rank)), eps)
    shape = (-1,) + (1,) * (rank - 2)
    scale = np.asarray(m.const("scale"), np.float32).reshape(shape)
    bias = np.asarray(m.const("bias"), np.float32).reshape(shape)
    if not np.all(scale == 1.0):
        y = rw.op("Mul", [y, rw.const(scale, "in_scale")])
    if not np.all(bias == 0.0):
        y = rw.op("Add", [y, rw.const(bias, "in_bias")])
    return y


LOWER_INSTANCE_NORM = Rule(
    "lower-instance-norm", Pat("InstanceNormalization", "x", "scale", "bias"), _rewrite,
    _check, doc="InstanceNormalization -> ReduceMean/Sub/Mul/Sqrt/Div (+ affine)")


@dataclass(frozen=True)
class LowerGroupNorm(Pass):
    """Lower Instance/GroupNorm to reductions the HTP finalizes."""

    name: ClassVar[str] = "lower-group-norm"
    summary: ClassVar[str] = "Rewrite InstanceNorm/GroupNorm into reductions the HTP finalizes"

    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        """Apply the lowering everywhere it matches."""
        # the reductions it writes take their axes as an input (opset 18+)
        from passes.fusions.opset import upgrade_opset

        upgraded = upgrade_opset(graph, ctx, triggers=frozenset({"InstanceNormalization"}))
        counts = apply_rules(graph, [LOWER_INSTANCE_NORM], ctx)
        counts.update(upgraded)
        return PassResult(bool(counts), dict(counts))

"""``lower-layer-norm{rows=N}``: rewrite LayerNormalization into reductions (the HTP workaround
for a LayerNorm over exactly ``N`` rows feeding a FullyConnected).

On the HTP simulator (QAIRT 2.51, v75, 16-bit activations) ``LayerNormalization`` over a
tensor of exactly 16 rows (the product of the non-normalized dims) followed by a Gemm computes
the Gemm wrong: -0.9 dB against the CPU reference for ``[16, 64]``, ``[1, 16, 64]`` and the
real all-MiniLM-L6-v2 at 16 tokens, while 1, 8, 15, 17, 32, 64 or 65 rows agree at 70 dB, as
do the LayerNorm and the Gemm each alone. Written as ``(x - mean) / sqrt(var + eps) * scale +
bias`` (the same reductions as ``lower-group-norm``) it agrees. ``rows=0`` lowers every
LayerNorm. Exact up to float rounding (checked against the CPU reference).

``min_outer_dims=2`` lowers only LayerNorms with two or more dims above 1 before the normalized
axis (a batch of token rows, ``[2, 65, 32]``): there the HTP's LayerNorm op with 16-bit
activations costs 2-8x the written-out form (zoo ViT at w8a8: 15-30 M -> 6.7 M simulator
cycles, 26.7 -> 25.8 dB), while over one such dim (``[1, 16, 64]``) the op is the faster one.
The HTP target's w8a8 pipeline uses it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from compiler.ir import Graph, Value
from compiler.passes import Pass, PassContext, PassResult, option
from compiler.rewrite import Match, Pat, Rewriter, Rule, apply_rules
from passes.lower_group_norm import normalize

__all__ = ["LowerLayerNorm", "layer_norm_rows"]


def layer_norm_rows(m: Match) -> int | None:
    """Rows of the matched LayerNorm: the product of the dims before ``axis``."""
    raw = m["x"].shape
    if raw is None or not all(isinstance(d, int) for d in raw):
        return None
    shape = [int(d) for d in raw]  # type: ignore[arg-type]
    axis = int(m.root.attr("axis", -1)) % len(shape)  # type: ignore[arg-type]
    return int(np.prod(shape[:axis])) if axis else 1


def outer_dims(m: Match) -> int | None:
    """How many dims before the matched LayerNorm's ``axis`` exceed 1 (``[2, 65, 32]`` over
    the last axis: 2; ``[1, 16, 64]``: 1)."""
    raw = m["x"].shape
    if raw is None or not all(isinstance(d, int) for d in raw):
        return None
    axis = int(m.root.attr("axis", -1)) % len(raw)  # type: ignore[arg-type]
    return sum(1 for d in raw[:axis] if isinstance(d, int) and d > 1)


def _rule(rows: int, min_outer_dims: int = 0) -> Rule:
    def check(m: Match) -> str | None:
        for i, v in enumerate(m.root.inputs[1:3], 1):
            if v is not None and (not v.is_const or v.const is None):
                return f"LayerNorm input {i} is not a constant"
        have = layer_norm_rows(m)
        if have is None:
            return "the input has no static shape"
        if rows and have != rows:
            return f"{have} rows, not {rows}"
        outer = outer_dims(m)
        if min_outer_dims and (outer or 0) < min_outer_dims:
            return f"{outer} dim(s) above 1 before the normalized axis, not {min_outer_dims}"
        return None

    def rewrite(m: Match, rw: Rewriter) -> Value:
        x = m["x"]
        rank = len(x.shape or ())
        axis = int(m.root.attr("axis", -1)) % rank  # type: ignore[arg-type]
        eps = float(m.root.attr("epsilon", 1e-5))  # type: ignore[arg-type]
        y = normalize(rw, x, list(range(axis, rank)), eps)
        y = rw.op("Mul", [y, rw.const(np.asarray(m.const("scale"), np.float32), "ln_scale")])
        bias = m.root.inputs[2] if len(m.root.inputs) > 2 else None
        if bias is not None and bias.const is not None:
            y = rw.op("Add", [y, rw.const(np.asarray(bias.const, np.float32), "ln_bias")])
        return y

    return Rule("lower-layer-norm", Pat("LayerNormalization", "x", "scale", ...), rewrite,
                check, doc="LayerNormalization -> ReduceMean/Sub/Mul/Sqrt/Div (+ affine)")


@dataclass(frozen=True)
class LowerLayerNorm(Pass):
    """Lower LayerNormalization (of ``rows`` rows, or all) into reductions."""

    name: ClassVar[str] = "lower-layer-norm"
    summary: ClassVar[str] = "Rewrite LayerNormalization into reductions (HTP 16-row workaround)"
    rows: int = option(0, "lower only LayerNorms over exactly this many rows (0 = all)")
    min_outer_dims: int = option(0, "lower only LayerNorms with at least this many dims above "
                                 "1 before the normalized axis (0 = any)")

    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        """Apply the lowering where it matches."""
        # the reductions it writes take their axes as an input (opset 18+)
        from passes.fusions.opset import upgrade_opset

        upgraded = upgrade_opset(graph, ctx, triggers=frozenset({"LayerNormalization"}))
        counts = apply_rules(graph, [_rule(self.rows, self.min_outer_dims)], ctx)
        counts.update(upgraded)
        return PassResult(bool(counts), dict(counts))

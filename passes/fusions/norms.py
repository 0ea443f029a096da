"""Written-out normalizations.

- LayerNorm ``(x - mean(x)) / sqrt(mean((x - mean(x))²) + eps) · γ + β`` over trailing axes
  -> ``LayerNormalization`` (γ and β optional; ``Div`` or ``Mul`` by ``Reciprocal``; ``Pow 2``
  or ``d·d``). The HTP runs it as one kernel at 16-bit precision inside; written out, each of
  its eight ops is a separate requantization.
- RMSNorm ``x / sqrt(mean(x²) + eps) · γ`` is recognised and rewritten into one canonical
  form (``x · Reciprocal(Sqrt(ReduceMean(x·x) + eps)) · γ``) whose last node carries
  ``meta["fused"] = "RMSNormalization"``: ONNX has no RMSNorm before opset 23 and the QNN EP
  does not map one, so the HTP runs the parts, and the quantizer's automatic policy treats the
  unit like a LayerNorm (16-bit input and output under ``w8a8``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from compiler.ir import Node, Value
from compiler.rewrite import Match, Rewriter
from passes.fuse import register_fusion
from passes.fusions.forms import Product, factors, form_rule, match, producer, scalar

__all__ = ["LAYER_NORM", "RMS_NORM"]


def _axes(reduce: Node, rank: int) -> tuple[int, ...] | None:
    """The normalized axes of a keepdims ReduceMean, as a trailing run, or None."""
    if reduce.attr("keepdims", 1) != 1:
        return None
    if "axes" in reduce.attrs:
        raw = reduce.attrs["axes"]
    elif len(reduce.inputs) > 1 and reduce.inputs[1] is not None:
        arr = reduce.inputs[1].const
        if arr is None:
            return None
        raw = arr.reshape(-1).tolist()
    else:
        return None
    axes = tuple(sorted(int(a) % rank for a in raw))  # type: ignore[union-attr]
    if not axes or axes != tuple(range(rank - len(axes), rank)):
        return None
    return axes


def _rsqrt(p: Product) -> tuple[Value, Node, list[Node]] | str:
    """The product as ``d / sqrt(v + eps)``: d, the Add (v + eps), and the Sqrt/Reciprocal."""
    terms = p.terms
    if len(terms) != 2:
        return "not a product of a value and 1/sqrt(..)"
    for (d, ed), (s, es) in ((terms[0], terms[1]), (terms[1], terms[0])):
        if ed != 1:
            continue
        nodes: list[Node] = []
        if es == 1:
            rec = producer(s, "Reciprocal")
            if rec is None:
                continue
            nodes.append(rec)
            s = rec.inputs[0]  # type: ignore[assignment]
        elif es != -1:
            continue
        sq = producer(s, "Sqrt")
        add = producer(sq.inputs[0], "Add") if sq is not None else None
        if sq is None or add is None:
            continue
        return d, add, [*nodes, sq, add]
    return "no 1/sqrt(variance + eps) factor"


def _variance(add: Node) -> tuple[Value, float, Node, Node, Node | None] | str:
    """``add = ReduceMean(d²) + eps``: d, eps, the ReduceMean, the square, None."""
    a, b = add.inputs
    if scalar(a) is not None:
        a, b = b, a
    eps = scalar(b)
    var = producer(a, "ReduceMean")
    if eps is None or var is None:
        return "the variance is not ReduceMean(..) + eps"
    sq = producer(var.inputs[0], ("Pow", "Mul"))
    if sq is None:
        return "the variance is not the mean of a square"
    d0, d1 = sq.inputs
    if sq.op == "Pow" and scalar(d1) == 2.0 and d0 is not None:
        return d0, eps, var, sq, None
    if sq.op == "Mul" and d0 is d1 and d0 is not None:
        return d0, eps, var, sq, None
    return "the variance is not the mean of a square"


def _affine(root: Node) -> tuple[Value, np.ndarray | None, list[Node]] | str:
    """Split ``y + β`` off the root: the product value, β, and the Add node if any."""
    if root.op == "Add":
        a, b = root.inputs
        if a is not None and a.is_const:
            a, b = b, a
        if a is None or b is None or not b.is_const or b.const is None:
            return "not a product plus a constant"
        return a, b.const, [root]
    out = root.outputs[0]
    if len(out.uses) == 1 and not out.is_output:
        user = out.uses[0][0]
        if user.op in ("Add", "Mul") and any(v is not None and v.is_const and v is not out
                                             for v in user.inputs):
            return f"the affine {user.op} after it ({user.label()}) is the root"
    return out, None, []


def _param(arr: np.ndarray | None, coef: float, shape: tuple[int, ...], dtype: np.dtype,
           fill: float) -> np.ndarray | None:
    """γ or β as an array of the normalized shape, or None when it does not broadcast so."""
    if arr is None:
        return np.full(shape, fill * coef if fill else 0.0, dtype)
    a = np.asarray(arr, dtype=np.float64) * coef
    while a.ndim > len(shape) and a.shape[0] == 1:
        a = a[0]
    if a.ndim > len(shape):
        return None
    try:
        return np.ascontiguousarray(np.broadcast_to(a, shape)).astype(dtype)
    except ValueError:
        return None


def _static(v: Value) -> tuple[int, ...] | None:
    shape = v.shape
    if shape is None or not all(isinstance(d, int) for d in shape):
        return None
    return tuple(int(d) for d in shape)  # type: ignore[arg-type]


def _analyze_layer_norm(root: Node) -> _Form | str:
    got = _affine(root)
    if isinstance(got, str):
        return got
    y, beta, extra = got
    p = factors(y, root=not extra)
    if p is None:
        return "not a product"
    split = _rsqrt(p)
    if isinstance(split, str):
        return split
    d, add, rs_nodes = split
    var = _variance(add)
    if isinstance(var, str):
        return var
    d2, eps, rm2, sq, _ = var
    sub = producer(d, "Sub")
    if d2 is not d or sub is None:
        return "the variance is not of the centred input"
    x, mean = sub.inputs
    rm1 = producer(mean, "ReduceMean")
    if x is None or rm1 is None or rm1.inputs[0] is not x:
        return "the centred value is not x - ReduceMean(x)"
    shape = _static(x)
    if shape is None:
        return "the input has no static shape"
    axes, axes2 = _axes(rm1, len(shape)), _axes(rm2, len(shape))
    if axes is None or axes != axes2:
        return "the means are not over the same trailing axes"
    norm = shape[axes[0]:]
    dt = x.dtype.numpy
    gamma = _param(p.const, p.coef, norm, dt, 1.0)
    b = _param(beta, 1.0, norm, dt, 0.0)
    if gamma is None or b is None:
        return "the scale or shift does not broadcast over the normalized axes only"
    return _Form(match(root, [*extra, *p.nodes, *rs_nodes, rm2, sq, sub, rm1], x=x),
                 gamma, b, axes, eps)


@dataclass
class _Form:
    """A matched normalization and its parameters (recomputed at rewrite: matching is pure)."""

    match: Match
    gamma: np.ndarray | None
    beta: np.ndarray | None
    axes: tuple[int, ...]
    eps: float


def _matcher(analyze: Callable[[Node], _Form | str]) -> Callable[[Node], Match | str]:
    def run(root: Node) -> Match | str:
        got = analyze(root)
        return got if isinstance(got, str) else got.match
    return run


def _form(analyze: Callable[[Node], _Form | str], root: Node) -> _Form:
    got = analyze(root)
    assert not isinstance(got, str), got
    return got


def _layer_norm(m: Match, rw: Rewriter) -> Value:
    f = _form(_analyze_layer_norm, m.root)
    x = m["x"]
    gamma, beta, axis, eps = f.gamma, f.beta, f.axes[0] - len(x.shape or ()), f.eps
    assert gamma is not None and beta is not None
    return rw.op("LayerNormalization",
                 [x, rw.const(gamma, "ln_scale"), rw.const(beta, "ln_bias")],
                 {"axis": axis, "epsilon": eps}, type=m.root.outputs[0].type)


def _analyze_rms_norm(root: Node) -> _Form | str:
    if root.meta.get("rule") == "rms-norm":
        return "already in canonical form"
    got = _affine(root)
    if isinstance(got, str) or got[1] is not None:
        return "an RMSNorm ends in a product" if not isinstance(got, str) else got
    p = factors(root.outputs[0])
    if p is None:
        return "not a product"
    split = _rsqrt(p)
    if isinstance(split, str):
        return split
    x, add, rs_nodes = split
    var = _variance(add)
    if isinstance(var, str):
        return var
    x2, eps, rm, sq, _ = var
    if x2 is not x:
        return "the mean square is not of the normalized value"
    shape = _static(x)
    axes = _axes(rm, len(shape)) if shape is not None else None
    if shape is None or axes is None:
        return "the mean is not over trailing axes of a static shape"
    gamma = None if p.const is None and p.coef == 1.0 else _param(
        p.const, p.coef, shape[axes[0]:], x.dtype.numpy, 1.0)
    if p.const is not None and gamma is None:
        return "the scale does not broadcast over the normalized axes only"
    return _Form(match(root, [*p.nodes, *rs_nodes, rm, sq], x=x), gamma, None, axes, eps)


def _rms_norm(m: Match, rw: Rewriter) -> Value:
    f = _form(_analyze_rms_norm, m.root)
    gamma, axes, eps = f.gamma, f.axes, f.eps
    x = m["x"]
    t = x.type
    rank = len(t.shape or ())
    red = t.with_shape(tuple(1 if i in axes else d for i, d in enumerate(t.shape or ())))
    sq = rw.op("Mul", [x, x], type=t)
    mean = rw.op("ReduceMean", [sq, rw.const(np.array([a - rank for a in axes], np.int64),
                                                "axes")], {"keepdims": 1}, type=red)
    var = rw.op("Add", [mean, rw.const(np.array(eps, x.dtype.numpy), "eps")], type=red)
    inv = rw.op("Reciprocal", [rw.op("Sqrt", [var], type=red)], type=red)
    y = rw.op("Mul", [x, inv], type=t)
    if gamma is not None:
        y = rw.op("Mul", [y, rw.const(gamma, "rms_scale")], type=m.root.outputs[0].type)
    assert y.producer is not None
    y.producer.meta["fused"] = "RMSNormalization"
    return y


LAYER_NORM = register_fusion(form_rule(
    "layer-norm", ("Add", "Mul", "Div"), _matcher(_analyze_layer_norm), _layer_norm,
    "(x-mean)/sqrt(var+eps)·γ+β over trailing axes -> LayerNormalization"))
RMS_NORM = register_fusion(form_rule(
    "rms-norm", ("Mul", "Div"), _matcher(_analyze_rms_norm), _rms_norm,
    "x/sqrt(mean(x²)+eps)·γ -> canonical RMSNorm (meta fused=RMSNormalization)"))

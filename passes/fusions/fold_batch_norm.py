"""Fold inference BatchNormalization into the Conv, Gemm or MatMul that feeds it.

``BN(y) = (y - mean) * g + beta`` with ``g = gamma / sqrt(var + eps)`` is affine per channel,
so ``BN(Conv(x, W, b)) = Conv(x, W * g, (b - mean) * g + beta)`` (``g`` along W's output
axis); likewise for Gemm (output channels on axis 1 of its 2-D output) and for MatMul with a
constant 2-D weight (becoming a Gemm with that bias is left to the MatMul+Add rule; here the
weight is scaled and an Add of the folded bias follows). The producer must feed only the BN,
and every BN parameter must be a constant.
"""

from __future__ import annotations

import numpy as np

from compiler.ir import Value
from compiler.rewrite import Match, Pat, Rewriter, Rule
from passes.fuse import register_fusion

__all__ = ["FOLD_BN_CONV", "FOLD_BN_GEMM", "FOLD_BN_MATMUL"]


def _bn_check(m: Match) -> str | None:
    bn = m.root
    if len([o for o in bn.outputs if o is not None and o.uses]) > 1:
        return "training-mode BatchNormalization (running statistics are used)"
    if bn.attr("training_mode", 0):
        return "training-mode BatchNormalization"
    for k in ("gamma", "beta", "mean", "var"):
        if not m[k].is_const:
            return f"BatchNormalization {k} is not a constant"
    return None


def _gain(m: Match) -> tuple[np.ndarray, np.ndarray]:
    eps = float(m.root.attr("epsilon", 1e-5))
    g = m.const("gamma").astype(np.float64) / np.sqrt(m.const("var").astype(np.float64) + eps)
    return g, m.const("beta").astype(np.float64) - m.const("mean").astype(np.float64) * g


def _bn(producer: Pat) -> Pat:
    return Pat("BatchNormalization", producer, "gamma", "beta", "mean", "var")


def _conv_check(m: Match) -> str | None:
    why = _bn_check(m)
    if why:
        return why
    if not m["w"].is_const:
        return "the Conv weight is not a constant"
    conv = m.node("conv")
    if len(conv.inputs) > 2 and conv.inputs[2] is not None and not conv.inputs[2].is_const:
        return "the Conv bias is not a constant"
    return None


def _conv_rewrite(m: Match, rw: Rewriter) -> Value:
    conv = m.node("conv")
    g, shift = _gain(m)
    w = m.const("w")
    wf = (w.astype(np.float64) * g.reshape((-1,) + (1,) * (w.ndim - 1))).astype(w.dtype)
    bias = conv.inputs[2] if len(conv.inputs) > 2 else None
    b0 = bias.const if bias is not None and bias.const is not None else np.zeros(w.shape[0],
                                                                                 w.dtype)
    bf = (b0.astype(np.float64) * g + shift).astype(w.dtype)
    return rw.op("Conv", [m["x"], rw.const(wf, f"{m['w'].name}_bn"),
                          rw.const(bf, f"{conv.outputs[0].name}_bias_bn")],
                 dict(conv.attrs), type=m.root.outputs[0].type)


FOLD_BN_CONV = register_fusion(Rule(
    "fold-batch-norm-conv", _bn(Pat("Conv", "x", "w", ..., name="conv")), _conv_rewrite,
    _conv_check, exclusive=True, doc="BatchNormalization after Conv -> Conv"))


def _gemm_check(m: Match) -> str | None:
    why = _bn_check(m)
    if why:
        return why
    gemm = m.node("gemm")
    if not m["w"].is_const:
        return "the Gemm weight is not a constant"
    if gemm.attr("transA", 0):
        return "Gemm with transA"
    if len(gemm.inputs) > 2 and gemm.inputs[2] is not None:
        b = gemm.inputs[2]
        if not b.is_const or b.const is None or b.const.ndim != 1:
            return "the Gemm bias is not a constant vector"
    return None


def _gemm_rewrite(m: Match, rw: Rewriter) -> Value:
    gemm = m.node("gemm")
    g, shift = _gain(m)
    w = m.const("w")
    alpha = float(gemm.attr("alpha", 1.0))
    beta = float(gemm.attr("beta", 1.0))
    # output channel n uses W[n, :] with transB, else W[:, n]
    wf = w.astype(np.float64) * (g[:, None] if gemm.attr("transB", 0) else g[None, :])
    bias = gemm.inputs[2] if len(gemm.inputs) > 2 else None
    b0 = (bias.const.astype(np.float64) * beta
          if bias is not None and bias.const is not None else np.zeros(g.shape))
    bf = b0 * g + shift
    attrs = {k: v for k, v in gemm.attrs.items() if k not in ("beta",)}
    attrs["alpha"] = alpha
    if alpha == 1.0:
        attrs.pop("alpha")
    return rw.op("Gemm", [m["x"], rw.const(wf.astype(w.dtype), f"{m['w'].name}_bn"),
                          rw.const(bf.astype(w.dtype), f"{gemm.outputs[0].name}_bias_bn")],
                 attrs, type=m.root.outputs[0].type)


FOLD_BN_GEMM = register_fusion(Rule(
    "fold-batch-norm-gemm", _bn(Pat("Gemm", "x", "w", ..., name="gemm")), _gemm_rewrite,
    _gemm_check, exclusive=True, doc="BatchNormalization after Gemm -> Gemm"))


def _matmul_check(m: Match) -> str | None:
    why = _bn_check(m)
    if why:
        return why
    if not m["w"].is_const or m["w"].const is None or m["w"].const.ndim != 2:
        return "the MatMul weight is not a constant matrix"
    y = m.node("mm").outputs[0]
    if y.type.rank != 2:
        return "BatchNormalization over a MatMul output of rank other than 2"
    return None


def _matmul_rewrite(m: Match, rw: Rewriter) -> Value:
    g, shift = _gain(m)
    w = m.const("w")
    wf = (w.astype(np.float64) * g[None, :]).astype(w.dtype)
    return rw.op("Gemm", [m["x"], rw.const(wf, f"{m['w'].name}_bn"),
                          rw.const(shift.astype(w.dtype), "bias_bn")], {},
                 type=m.root.outputs[0].type)


FOLD_BN_MATMUL = register_fusion(Rule(
    "fold-batch-norm-matmul", _bn(Pat("MatMul", "x", "w", name="mm")), _matmul_rewrite,
    _matmul_check, exclusive=True, doc="BatchNormalization after a 2-D MatMul -> Gemm"))

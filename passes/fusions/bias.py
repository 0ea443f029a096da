"""A constant Add after Conv or Gemm becomes the op's own bias.

``Conv(x, W[, b]) + c`` with ``c`` broadcasting over the output channels only (``[C]`` after
dropping leading ones and trailing spatial ones: ``[1, C, 1, 1]``) -> ``Conv(x, W, b + c)``;
``Gemm(x, W[, C]) + c`` with ``c`` of shape ``[N]`` or ``[1, N]`` -> ``Gemm`` with the sum as
``C``. On the HTP the bias is an int32 operand of the kernel at scale ``s_x·s_w``; left apart
it is a second, lossy 8/16-bit requantization. (MatMul + Add is ``matmul_to_gemm``.) Exact
in float up to rounding.
"""

from __future__ import annotations

import numpy as np

from compiler.ir import Value
from compiler.rewrite import Const, Match, Pat, Rewriter, Rule
from passes.fuse import register_fusion

__all__ = ["CONV_BIAS", "GEMM_BIAS"]


def _channels(m: Match) -> int | None:
    shape = m.root.outputs[0].shape
    if shape is None or len(shape) < 2 or not isinstance(shape[1], int):
        return None
    return int(shape[1])


def _conv_vector(m: Match) -> np.ndarray | None:
    c = m.const("c")
    ch = _channels(m)
    out_rank = len(m.root.outputs[0].shape or ())
    if ch is None or c.ndim > out_rank:
        return None
    full = (1,) * (out_rank - c.ndim) + c.shape
    if full[0] != 1 or full[1] not in (1, ch) or any(d != 1 for d in full[2:]):
        return None
    return np.broadcast_to(c.reshape(-1) if c.size > 1 else c.reshape(1), (ch,))


def _gemm_vector(m: Match) -> np.ndarray | None:
    c = m.const("c")
    n = _channels(m)
    if n is None or c.ndim > 2 or (c.ndim == 2 and c.shape[0] != 1):
        return None
    if c.size not in (1, n):
        return None
    return np.broadcast_to(c.reshape(-1), (n,))


def _check(vector):  # type: ignore[no-untyped-def]
    def check(m: Match) -> str | None:
        op = m.node("op")
        if op.op == "Gemm" and (op.attr("beta", 1.0) != 1.0 or (
                len(op.inputs) > 2 and op.inputs[2] is not None and (
                    not op.inputs[2].is_const or op.inputs[2].const is None
                    or op.inputs[2].const.ndim > 1))):
            return "the Gemm's C is not a constant vector at beta=1"
        if op.op == "Conv" and len(op.inputs) > 2 and op.inputs[2] is not None and (
                not op.inputs[2].is_const):
            return "the Conv bias is not a constant"
        return None if vector(m) is not None else (
            "the Add operand does not broadcast over the output channels only")
    return check


def _fold(vector):  # type: ignore[no-untyped-def]
    def rewrite(m: Match, rw: Rewriter) -> Value:
        op = m.node("op")
        add = np.asarray(vector(m), np.float64)
        old = op.inputs[2] if len(op.inputs) > 2 else None
        base = old.const if old is not None and old.const is not None else 0.0
        w = op.inputs[1]
        assert w is not None
        dt = m.root.outputs[0].dtype.numpy
        bias = rw.const((np.asarray(base, np.float64) + add).astype(dt), "bias")
        return rw.op(op.op, [op.inputs[0], w, bias], op.attrs, type=m.root.outputs[0].type)
    return rewrite


CONV_BIAS = register_fusion(Rule(
    "conv-add-bias", Pat("Add", Pat("Conv", "x", "w", ..., name="op"), Const("c")),
    _fold(_conv_vector), _check(_conv_vector), exclusive=True,
    doc="Conv(x, W, b) + per-channel const -> Conv with the summed bias"))
GEMM_BIAS = register_fusion(Rule(
    "gemm-add-bias", Pat("Add", Pat("Gemm", "x", "w", ..., name="op"), Const("c")),
    _fold(_gemm_vector), _check(_gemm_vector), exclusive=True,
    doc="Gemm(x, W[, C]) + const row vector -> Gemm with C summed"))

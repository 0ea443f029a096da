"""MatMul with a constant 2-D weight (and a constant bias Add after it) becomes Gemm.

``MatMul(x, W) [+ b]`` with ``W: [K, N]`` is written ``Gemm(x2, W^T, b, transB=1)`` on
``x2 = Reshape(x, [-1, K])`` and reshaped back when ``x`` has more than two dimensions. The
HTP runs Gemm as its FullyConnected kernel with per-output-channel weights and an int32 bias;
a MatMul with per-channel weights and 16-bit activations came out wrong on the HTP simulator
(QAIRT 2.51: an all-MiniLM-L6-v2 projection agreed with the CPU QDQ reference at -0.4 dB as a
MatMul and at 69.8 dB as per-tensor), and a bias Add left apart is a second, lossy
requantization. Exact in float. Needs static shapes.
"""

from __future__ import annotations

import numpy as np

from compiler.ir import TensorType, Value
from compiler.rewrite import Match, Pat, Rewriter, Rule
from passes.fuse import register_fusion

__all__ = ["MATMUL_ADD_TO_GEMM", "MATMUL_TO_GEMM"]


def _check(m: Match) -> str | None:
    w = m["w"]
    if not w.is_const or w.const is None or w.const.ndim != 2:
        return "the MatMul weight is not a constant matrix"
    x = m["x"]
    shape = x.shape
    if shape is None or len(shape) < 2 or not all(isinstance(d, int) for d in shape):
        return "the MatMul input has no static shape of rank >= 2"
    if "b" in m.values:
        b = m["b"]
        if not b.is_const or b.const is None or b.const.size != w.const.shape[1]:
            return "the Add operand is not a constant bias of the output width"
        if b.const.ndim > 1 and any(d != 1 for d in b.const.shape[:-1]):
            return "the Add operand broadcasts over more than the last axis"
    return None


def _gemm(m: Match, rw: Rewriter, bias: np.ndarray | None) -> Value:
    x, w = m["x"], m.const("w")
    shape = [int(d) for d in x.shape]  # type: ignore[union-attr, arg-type]
    k, n = w.shape
    inputs = [x, rw.const(np.ascontiguousarray(w.T), f"{m['w'].name}_t")]
    if bias is not None:
        inputs.append(rw.const(bias.reshape(n).astype(w.dtype), "gemm_bias"))
    out_t = m.root.outputs[0].type
    if len(shape) == 2:
        return rw.op("Gemm", inputs, {"transB": 1}, type=out_t)
    rows = int(np.prod(shape[:-1]))
    x2 = rw.op("Reshape", [x, rw.const(np.array([rows, k], np.int64), "shape")],
               type=TensorType(x.dtype, (rows, k)))
    inputs[0] = x2
    y2 = rw.op("Gemm", inputs, {"transB": 1}, type=TensorType(x.dtype, (rows, n)))
    return rw.op("Reshape", [y2, rw.const(np.array([*shape[:-1], n], np.int64), "shape")],
                 type=out_t)


MATMUL_ADD_TO_GEMM = register_fusion(Rule(
    "matmul-add-to-gemm", Pat("Add", Pat("MatMul", "x", "w", name="mm"), "b"),
    lambda m, rw: _gemm(m, rw, m.const("b")), _check, exclusive=True,
    doc="MatMul(x, const W) + const b -> Gemm (with reshapes for rank > 2)"))

def _check_alone(m: Match) -> str | None:
    """``matmul-to-gemm`` leaves a MatMul whose only consumer is a bias Add to
    ``matmul-add-to-gemm`` (rules visit nodes in order, so the MatMul comes first)."""
    out = m.root.outputs[0]
    if len(out.uses) == 1 and not out.is_output:
        user = out.uses[0][0]
        if user.op == "Add" and MATMUL_ADD_TO_GEMM.match(user) is not None:
            return f"its bias Add {user.label()} fuses with it (matmul-add-to-gemm)"
    return _check(m)


MATMUL_TO_GEMM = register_fusion(Rule(
    "matmul-to-gemm", Pat("MatMul", "x", "w"), lambda m, rw: _gemm(m, rw, None), _check_alone,
    doc="MatMul(x, const W) -> Gemm (with reshapes for rank > 2)"))

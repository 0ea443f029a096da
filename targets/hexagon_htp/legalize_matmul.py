"""Hand the QNN EP a 16 x 16-bit MatMul of two activations in the form the HTP computes at 16 bits.

For a MatMul whose two inputs are both dynamic ``uint16`` tensors (attention's ``Q·Kᵀ`` and
``P·V`` at ``w8a16``), the QNN EP inserts a ``Convert`` of the second input to ``uint8``
(``onnxruntime/core/providers/qnn/builder/opbuilder/matmul_op_builder.cc``): the HTP then
multiplies at 8 bits, and on the simulator (QAIRT 2.51, v75) such a MatMul agrees with the CPU
reference at 42 dB instead of 76. The HTP rejects ``uint16 x int16`` with an offset (QNN
op validation error 3110) and accepts ``uint16 x int16`` with zero point 0.

So the quantizer gives that second input a symmetric ``uint16`` encoding (zero point 32768,
``QuantRules.symmetric_matmul_rhs``), and :func:`sign_matmul_rhs` re-expresses it as ``int16``
with the same scale and zero point 0 (``DQ(u16) -> Q(s16) -> DQ(s16)``, which the EP fuses
into one QNN ``Convert``). Every ``uint16`` value ``q`` becomes ``q - 32768``: exact. A second
input whose zero point is not mid-scale (not quantized by those rules) is left alone.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from targets.hexagon_htp.legalize import _Names

__all__ = ["sign_matmul_rhs"]

_Q, _DQ = "QuantizeLinear", "DequantizeLinear"
_MID = 1 << 15


def sign_matmul_rhs(model: onnx.ModelProto) -> list[str]:
    """Rewrite ``model`` (QDQ ONNX, in place) so that the second input of every MatMul between
    two dynamic ``uint16`` tensors with a mid-scale zero point reaches it as ``int16`` with zero
    point 0; returns the names of the MatMuls changed. Deterministic."""
    g = model.graph
    inits = {t.name: t for t in g.initializer}
    producer = {o: n for n in g.node for o in n.output}
    tensors = _Names(set(inits) | {i.name for i in g.input} | set(producer))
    nodes = _Names({n.name for n in g.node if n.name})

    def u16_dq(t: str) -> onnx.NodeProto | None:
        d = producer.get(t)
        if d is None or d.op_type != _DQ or d.input[0] in inits or len(d.input) < 3:
            return None
        s, z = inits.get(d.input[1]), inits.get(d.input[2])
        if s is None or z is None or z.data_type != TensorProto.UINT16:
            return None
        if numpy_helper.to_array(s).size != 1 or numpy_helper.to_array(z).size != 1:
            return None
        return d

    changed: list[str] = []
    ordered: list[onnx.NodeProto] = []
    for n in g.node:
        if n.op_type == "MatMul" and n.domain in ("", "ai.onnx") and len(n.input) == 2:
            a, b = u16_dq(n.input[0]), u16_dq(n.input[1])
            if a is not None and b is not None and int(
                    numpy_helper.to_array(inits[b.input[2]]).reshape(-1)[0]) == _MID:
                base = n.input[1]
                zp = tensors.fresh(f"{base}_s16_zero_point")
                g.initializer.append(numpy_helper.from_array(np.asarray(0, np.int16), zp))
                real, q16, s16 = (tensors.fresh(f"{base}_{k}") for k in ("u16", "s16_q", "s16"))
                # a DQ of its own: the EP fuses DQ -> Q into a Convert only when that Q is the
                # DQ's only reader
                ordered += [
                    helper.make_node(_DQ, list(b.input), [real], name=nodes.fresh(f"{real}_dq")),
                    helper.make_node(_Q, [real, b.input[1], zp], [q16],
                                     name=nodes.fresh(f"{q16}_q")),
                    helper.make_node(_DQ, [q16, b.input[1], zp], [s16],
                                     name=nodes.fresh(f"{s16}_dq")),
                ]
                n.input[1] = s16
                changed.append(n.name or n.output[0])
        ordered.append(n)
    if not changed:
        return changed
    # DQs whose readers were all rewired are dead (the EP would run them as float ops)
    read = {i for n in ordered for i in n.input if i} | {o.name for o in g.output}
    live = [n for n in ordered if not (n.op_type == _DQ and n.output[0] not in read)]
    del g.node[:]
    g.node.extend(live)
    return changed

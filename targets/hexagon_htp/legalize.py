"""Put a quantized graph into the QDQ form the QNN EP turns into integer HTP kernels.

The QNN EP builds an integer HTP op from a *node unit*: a node with a DequantizeLinear on each
quantized input and a QuantizeLinear on each output. It forms the unit only when the widths
follow ONNX Runtime's QDQ selector rules (``onnxruntime/core/optimizer/qdq_transformer/
selectors_actions/qdq_selectors.cc``): the activation inputs and the output of an elementwise,
normalization, pooling or MatMul/Gemm/Conv node must have the *same* integer type, and the bias
of Conv, Gemm and LayerNormalization must be int32. A node that breaks a
rule is not refused: with CPU fallback off the EP runs it on the HTP **in float**, with a
standalone Dequantize before it and a Quantize after it. On the HTP simulator (QAIRT 2.51, v75)
that costs 10-100x the integer op: in a 2-block ViT at w8a8 (16-bit LayerNorm outputs and
softmax probabilities under the automatic precision policy) the float Gemms, LayerNorms and
the dequantized attention scores took 45 of its 49 M cycles.

edgec's encodings are per tensor, so a node may read an 8-bit tensor and write a 16-bit one
(a Softmax whose probabilities are kept at 16 bits) or the reverse (a Gemm reading a 16-bit
LayerNorm output). This module makes such nodes legal without giving up the precision the
quantizer chose:

- :func:`legalize_graph` (IR): a LayerNormalization bias gets an int32 encoding with
  ``scale = input scale * gamma scale`` (the form ORT's quantizer writes), and a uint16 gamma
  becomes int16, both from their float values.
- :func:`legalize_qdq` (the exported QDQ ONNX): a node whose activation inputs and outputs mix
  8 and 16 bits runs at 16 bits. A narrower input is converted losslessly
  (``DQ8 -> Q16 -> DQ16``, which the EP fuses into one QNN ``Convert``; the 16-bit encoding
  is the 8-bit one with ``scale / 256`` and ``zero point * 256``, so every 8-bit value is
  exact); a narrower quantized constant operand is rewritten at 16 bits the same way; a
  narrower output is produced at 16 bits over the same range and converted to its 8-bit
  encoding after the node (``Q16 -> DQ16 -> Q8``). Only the extra rounding of that last step
  differs from the IR's semantics (at most one 8-bit step at exact ties).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from compiler.ir import Graph, QuantEncoding

__all__ = ["legalize_graph", "legalize_qdq", "QdqLegalization", "MIXED_OK_INPUTS"]

_Q = "QuantizeLinear"
_DQ = "DequantizeLinear"

#: (op -> input slots) whose width may differ from the output's: weights, biases, norm
#: parameters, indices and conditions (the selectors check only the other slots)
MIXED_OK_INPUTS: dict[str, frozenset[int]] = {
    "Conv": frozenset({1, 2}),
    "ConvTranspose": frozenset({1, 2}),
    "Gemm": frozenset({1, 2}),
    "MatMul": frozenset({1}),
    "LayerNormalization": frozenset({1, 2}),
    "InstanceNormalization": frozenset({1, 2}),
    "BatchNormalization": frozenset({1, 2, 3, 4}),
    "Gather": frozenset({1}),
    "GatherElements": frozenset({1}),
    "Where": frozenset({0}),
    "Resize": frozenset({1, 2, 3}),
}

#: ops the EP never builds a unit for; left alone
_SKIP = frozenset({_Q, _DQ, "EPContext"})

#: unsigned activation types by width, and the factor between them
_UNSIGNED: dict[int, int] = {int(TensorProto.UINT8): 8, int(TensorProto.UINT16): 16}
_STEP = 256  # 2 ** (16 - 8)

_BIASED = frozenset({"Conv", "ConvTranspose", "Gemm"})



def legalize_graph(graph: Graph) -> list[str]:
    """Give each quantized LayerNormalization the parameter encodings the HTP's LayerNorm
    kernel takes; returns the names of the constants changed.

    Found on the HTP simulator (QAIRT 2.51, v75) by compiling single LayerNorms: the bias must
    be int32 (else the EP runs the node in float) and is given ``scale = input scale * gamma
    scale``, zero point 0, as ORT's quantizer writes it; gamma may be uint8 (any zero point)
    under 8- or 16-bit activations, or int16 under 16-bit ones, but uint16 gamma is rejected
    (QNN error 3110), so a uint16 gamma becomes symmetric int16 (15 bits over ``[-max|g|,
    max|g|]``). Both are re-quantized from the float constants. Nodes whose input or gamma is
    per-channel, or whose constants are shared, are left alone."""
    changed: list[str] = []
    for n in graph.nodes:
        if n.op != "LayerNormalization" or len(n.inputs) < 3:
            continue
        x, gamma, beta = n.inputs[0], n.inputs[1], n.inputs[2]
        if x is None or gamma is None or beta is None:
            continue
        xe, ge, be = x.encoding, gamma.encoding, beta.encoding
        if xe is None or ge is None or be is None or xe.signed or xe.bits not in (8, 16):
            continue
        if xe.axis is not None or ge.axis is not None or xe.block_size or ge.block_size:
            continue
        if not (gamma.is_const and beta.is_const) or gamma.const is None or beta.const is None:
            continue
        if len(gamma.uses) != 1 or len(beta.uses) != 1:
            continue
        g = np.asarray(gamma.const, np.float64)
        b = np.asarray(beta.const, np.float64)
        if not (np.all(np.isfinite(g)) and np.all(np.isfinite(b))):
            continue
        if ge.bits == 8 and not ge.signed:
            new_ge = ge
        elif xe.bits == 16 and np.max(np.abs(g), initial=0.0) > 0:
            new_ge = QuantEncoding(bits=16, signed=True,
                                   scale=np.asarray(np.max(np.abs(g)) / 32767, np.float32))
        else:
            continue
        scale = float(xe.scale) * float(new_ge.scale)
        if not (scale > 0 and np.isfinite(scale)):
            continue
        if np.max(np.abs(b), initial=0.0) / scale >= 2.0 ** 31 - 1:
            continue  # the int32 grid cannot hold this bias
        if new_ge is not ge:
            gamma.encoding = new_ge
            changed.append(gamma.name)
        if be.bits != 32 or not np.isclose(float(be.scale), scale, rtol=1e-6):
            beta.encoding = QuantEncoding(bits=32, signed=True,
                                          scale=np.asarray(scale, np.float32))
            changed.append(beta.name)
    return changed


@dataclass
class QdqLegalization:
    """What :func:`legalize_qdq` did: nodes widened to 16 bits, converts inserted
    (``(tensor, from bits, to bits)``) and constants re-expressed at 16 bits."""

    widened: list[str] = field(default_factory=list)
    converts: list[tuple[str, int, int]] = field(default_factory=list)
    constants: list[str] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)

    def as_dict(self) -> dict[str, object]:
        """A JSON-serialisable summary."""
        return {"widened_nodes": list(self.widened),
                "converts": [{"tensor": t, "from_bits": a, "to_bits": b}
                             for t, a, b in self.converts],
                "constants_widened": list(self.constants),
                "skipped": [{"node": n, "reason": r} for n, r in self.skipped]}


class _Names:
    """Fresh names that collide with nothing in the model."""

    def __init__(self, used: set[str]) -> None:
        self.used = used

    def fresh(self, base: str) -> str:
        name, i = base, 1
        while name in self.used:
            name, i = f"{base}_{i}", i + 1
        self.used.add(name)
        return name


def legalize_qdq(model: onnx.ModelProto) -> tuple[onnx.ModelProto, QdqLegalization]:
    """Return a copy of QDQ ``model`` in which no node mixes 8- and 16-bit activations (see the
    module docstring), and what was changed. Deterministic: names and order follow the
    input."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    return out, _Legalizer(out.graph).run()


@dataclass
class _Operand:
    """A quantized operand of a node: an input read through ``dq`` (``slot`` >= 0) or an
    output ``tensor`` quantized by ``q`` (``slot`` == -1), and its width."""

    slot: int
    node: onnx.NodeProto  # the DQ of an input, the Q of an output
    bits: int
    const: bool = False
    tensor: str = ""
    writer: onnx.NodeProto | None = None  # the node writing ``tensor`` (an absorbed Relu)


class _Legalizer:
    def __init__(self, g: onnx.GraphProto) -> None:
        self.g = g
        self.inits = {t.name: t for t in g.initializer}
        self.producer: dict[str, onnx.NodeProto] = {}
        self.consumers: dict[str, list[onnx.NodeProto]] = defaultdict(list)
        for n in g.node:
            for o in n.output:
                self.producer[o] = n
            for i in n.input:
                if i:
                    self.consumers[i].append(n)
        self.graph_outputs = {o.name for o in g.output}
        used = {t.name for t in g.initializer} | {i.name for i in g.input}
        self.names = _Names(used | {o for n in g.node for o in n.output})
        self.node_names = _Names({n.name for n in g.node if n.name})
        self.report = QdqLegalization()
        self.new_inits: list[TensorProto] = []
        self.before: dict[int, list[onnx.NodeProto]] = defaultdict(list)
        self.after: dict[int, list[onnx.NodeProto]] = defaultdict(list)

    # -- reading -----------------------------------------------------------------------------
    def _bits(self, q_or_dq: onnx.NodeProto) -> int | None:
        """Width of an unsigned 8/16-bit Q/DQ (from its zero point), else None."""
        if len(q_or_dq.input) < 3 or not q_or_dq.input[2]:
            return 8  # no zero point: uint8
        zp = self.inits.get(q_or_dq.input[2])
        return None if zp is None else _UNSIGNED.get(int(zp.data_type))

    def _params(self, q_or_dq: onnx.NodeProto) -> tuple[np.ndarray, np.ndarray] | None:
        """Scalar scale and zero point of a per-tensor Q/DQ with constant parameters."""
        if len(q_or_dq.input) < 3:
            return None
        s, z = self.inits.get(q_or_dq.input[1]), self.inits.get(q_or_dq.input[2])
        if s is None or z is None:
            return None
        sa, za = numpy_helper.to_array(s), numpy_helper.to_array(z)
        return (sa, za) if sa.size == 1 and za.size == 1 else None

    def _operands(self, n: onnx.NodeProto) -> tuple[list[_Operand], str]:
        """The operands whose widths must agree, or a reason the node cannot be legalized."""
        ops: list[_Operand] = []
        exempt = MIXED_OK_INPUTS.get(n.op_type, frozenset())
        for slot, t in enumerate(n.input):
            d = self.producer.get(t) if t and slot not in exempt else None
            if d is None or d.op_type != _DQ:
                continue
            const = d.input[0] in self.inits
            if not const:
                q = self.producer.get(d.input[0])
                if q is None or q.op_type != _Q:
                    continue
            bits = self._bits(d)
            if bits is None:
                return ops, f"input {t} is not an unsigned 8- or 16-bit tensor"
            ops.append(_Operand(slot, d, bits, const))
        for o in n.output:
            writer, tensor = n, o
            users = self.consumers.get(o, [])
            # Conv/Gemm/MatMul -> Relu/Clip -> Q: the EP folds the activation into the unit
            if (len(users) == 1 and users[0].op_type in ("Relu", "Clip")
                    and o not in self.graph_outputs):
                writer, tensor = users[0], users[0].output[0]
                users = self.consumers.get(tensor, [])
            if len(users) != 1 or users[0].op_type != _Q or tensor in self.graph_outputs:
                continue
            bits = self._bits(users[0])
            if bits is None:
                return ops, f"output {tensor} is not an unsigned 8- or 16-bit tensor"
            ops.append(_Operand(-1, users[0], bits, tensor=tensor, writer=writer))
        return ops, ""

    # -- writing -----------------------------------------------------------------------------
    def _param_inits(self, base: str, scale: np.ndarray, zp: np.ndarray) -> tuple[str, str]:
        s_name = self.names.fresh(f"{base}_scale")
        z_name = self.names.fresh(f"{base}_zero_point")
        self.new_inits.append(numpy_helper.from_array(scale, s_name))
        self.new_inits.append(numpy_helper.from_array(zp.astype(np.uint16), z_name))
        return s_name, z_name

    def _node(self, op: str, ins: list[str], out: str, **attrs: Any) -> onnx.NodeProto:
        return helper.make_node(op, ins, [out], name=self.node_names.fresh(f"{out}_{op}"),
                                **attrs)

    @staticmethod
    def _wide(params: tuple[np.ndarray, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        # the 8-bit grid inside a 16-bit one: q16 = 256 * q8 represents the same real value
        s, z = params
        return (s / _STEP).astype(s.dtype), z.astype(np.int64) * _STEP

    def _widen_input(self, idx: int, n: onnx.NodeProto, op: _Operand) -> None:
        d = op.node
        params = self._params(d)
        assert params is not None
        s16, z16 = self._wide(params)
        base = n.input[op.slot]
        if op.const:
            q = numpy_helper.to_array(self.inits[d.input[0]]).astype(np.uint16) * _STEP
            qn = self.names.fresh(f"{d.input[0]}_u16")
            self.new_inits.append(numpy_helper.from_array(q.astype(np.uint16), qn))
            sn, zn = self._param_inits(qn, s16, z16)
            wide = self.names.fresh(f"{base}_u16")
            self.before[idx].append(self._node(_DQ, [qn, sn, zn], wide))
            self.report.constants.append(d.input[0])
        else:
            # A DQ of its own: the EP fuses DQ -> Q into one Convert only when that Q is the
            # DQ's only reader.
            dq8 = self.names.fresh(f"{base}_u8")
            q16 = self.names.fresh(f"{base}_u16_q")
            wide = self.names.fresh(f"{base}_u16")
            sn, zn = self._param_inits(wide, s16, z16)
            self.before[idx].extend([self._node(_DQ, list(d.input), dq8),
                                     self._node(_Q, [dq8, sn, zn], q16),
                                     self._node(_DQ, [q16, sn, zn], wide)])
            self.report.converts.append((base, 8, 16))
        n.input[op.slot] = wide

    def _rescale_bias(self, idx: int, n: onnx.NodeProto) -> None:
        """Follow a Conv/Gemm input scale that became 256x finer in its int32 bias."""
        d = self.producer.get(n.input[2]) if len(n.input) > 2 and n.input[2] else None
        if d is None or d.op_type != _DQ or d.input[0] not in self.inits:
            return
        q = numpy_helper.to_array(self.inits[d.input[0]]).astype(np.int64) * _STEP
        qn = self.names.fresh(f"{d.input[0]}_fine")
        self.new_inits.append(numpy_helper.from_array(q.astype(np.int32), qn))
        s = numpy_helper.to_array(self.inits[d.input[1]])
        sn = self.names.fresh(f"{d.input[1]}_fine")
        self.new_inits.append(numpy_helper.from_array((s / _STEP).astype(s.dtype), sn))
        ins = [qn, sn] + ([d.input[2]] if len(d.input) > 2 and d.input[2] else [])
        wide = self.names.fresh(f"{n.input[2]}_fine")
        attrs: dict[str, Any] = {a.name: helper.get_attribute_value(a) for a in d.attribute}
        self.before[idx].append(self._node(_DQ, ins, wide, **attrs))
        self.report.constants.append(d.input[0])
        n.input[2] = wide

    def _bias_fits(self, n: onnx.NodeProto) -> bool:
        d = self.producer.get(n.input[2]) if len(n.input) > 2 and n.input[2] else None
        if d is None or d.op_type != _DQ or d.input[0] not in self.inits:
            return True
        q = numpy_helper.to_array(self.inits[d.input[0]]).astype(np.int64)
        return bool(np.abs(q).max(initial=0) * _STEP < 2 ** 31)

    def _widen_output(self, idx: int, op: _Operand) -> None:
        """``writer -> Q8`` becomes ``writer -> Q16 -> DQ16 -> Q8`` over the same range."""
        q8, writer = op.node, op.writer
        assert writer is not None
        params = self._params(q8)
        assert params is not None
        s16, z16 = self._wide(params)
        wide = self.names.fresh(f"{op.tensor}_u16")
        q16 = self.names.fresh(f"{op.tensor}_u16_q")
        dq16 = self.names.fresh(f"{op.tensor}_u16_dq")
        sn, zn = self._param_inits(wide, s16, z16)
        writer.output[list(writer.output).index(op.tensor)] = wide
        self.after[idx].extend([self._node(_Q, [wide, sn, zn], q16),
                                self._node(_DQ, [q16, sn, zn], dq16)])
        q8.input[0] = dq16
        self.report.converts.append((op.tensor, 16, 8))

    # -- the pass ----------------------------------------------------------------------------
    def run(self) -> QdqLegalization:
        nodes = list(self.g.node)
        index = {id(n): i for i, n in enumerate(nodes)}
        for idx, n in enumerate(nodes):
            if n.op_type in _SKIP or n.domain not in ("", "ai.onnx"):
                continue
            ops, bad = self._operands(n)
            if len({op.bits for op in ops}) <= 1 and not bad:
                continue
            label = n.name or f"{n.op_type}({n.output[0] if n.output else ''})"
            if bad:
                self.report.skipped.append((label, bad))
                continue
            narrow = [op for op in ops if op.bits == 8]
            if any(self._params(op.node) is None for op in narrow):
                self.report.skipped.append((label, "an 8-bit operand is not per-tensor"))
                continue
            widen_x = any(op.slot == 0 for op in narrow) and n.op_type in _BIASED
            if widen_x and not self._bias_fits(n):
                self.report.skipped.append((label, "its int32 bias would overflow on the "
                                                   "16-bit input grid"))
                continue
            self.report.widened.append(label)
            for op in narrow:
                if op.slot >= 0:
                    self._widen_input(idx, n, op)
                else:
                    assert op.writer is not None
                    self._widen_output(index[id(op.writer)], op)
            if widen_x:
                self._rescale_bias(idx, n)
        if not self.report.widened:
            return self.report
        ordered: list[onnx.NodeProto] = []
        for idx, n in enumerate(nodes):
            ordered.extend(self.before.get(idx, ()))
            ordered.append(n)
            ordered.extend(self.after.get(idx, ()))
        # DQs whose readers were all rewired are dead: the EP would run a dead activation DQ
        # as a float Dequantize, and refuse a dead per-channel weight DQ
        while True:
            read = {i for n in ordered for i in n.input if i} | self.graph_outputs
            live = [n for n in ordered if not (n.op_type == _DQ and n.output[0] not in read)]
            if len(live) == len(ordered):
                break
            ordered = live
        read = {i for n in ordered for i in n.input if i} | self.graph_outputs
        kept = [t for t in self.g.initializer if t.name in read]
        del self.g.node[:]
        self.g.node.extend(ordered)
        del self.g.initializer[:]
        self.g.initializer.extend(kept + [t for t in self.new_inits if t.name in read])
        return self.report

"""IR to ONNX, and saving ONNX models safely.

``to_onnx`` turns any IR state into a ``ModelProto`` that ONNX Runtime runs:

- **Encodings become Q/DQ.** A constant ``%w`` with an encoding is written as the integer
  initializer ``w_quantized`` (+ ``w_scale``, ``w_zero_point``) and a ``DequantizeLinear``
  whose output is named ``w``; a 32-bit encoding gives the int32 bias form. An activation
  ``%a`` with an encoding gets ``QuantizeLinear`` then ``DequantizeLinear`` right after its
  producer and every consumer reads the DQ output. Names are chosen so that import folds the
  pairs back to the same IR (a fixed point after one round trip): the producer keeps ``a`` and
  the DQ output is ``a_dequantized`` -- except when ``a`` is a graph output (or an output asked
  for by the reference), where the DQ output is ``a`` and the producer writes ``a_float``, so
  the name ``a`` always denotes the value as the IR means it. Per-channel (``axis``) needs
  opset 13; per-block, 4-bit and 16-bit need opset 21; float16 scales need 19. The opset is
  bumped (through ``onnx.version_converter``) when the graph's is lower.
- **Determinism.** Names, node order and initializer order follow the IR; nothing depends on
  time, hashing order or memory addresses, so identical IR gives byte-identical output.
- **edgec ops** are lowered with their registered ``EdgecOpSchema.lower`` when
  ``lower_edgec=True``; otherwise they are written in the ``edgec`` domain.
- ``keep_placement=True`` writes ``edgec.placement`` and ``edgec.src`` into each node's
  ``metadata_props`` (the importer reads them back).

``save_onnx`` writes atomically (a temp file in the target folder, then ``os.replace``) and
never outside the folder of ``path``. Models whose tensors exceed ``external_threshold`` (by
default 256 MiB, so that export streams tensors instead of building the whole model in memory;
above the 2 GB protobuf limit it is a must) put initializers of at least
``min_external_bytes`` into ``<name>.onnx.data`` beside the model, each at a 4 KiB-aligned
offset, in initializer order.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import IO, Any

import numpy as np
import onnx
import onnx.version_converter
from onnx import ModelProto, NodeProto, TensorProto, ValueInfoProto, helper, numpy_helper

from compiler.errors import EmitError
from compiler.fileio import default_mode
from compiler.frontends.onnx_import import DTYPE_TO_ONNX
from compiler.ir import EDGEC_DOMAIN, DType, Graph, Node, QuantEncoding, TensorType, Value
from compiler.ir.core import UnresolvedConst
from compiler.ir.verify import edgec_op, op_schema

__all__ = [
    "to_onnx",
    "save_onnx",
    "qdq_opset",
    "EXTERNAL_DATA_THRESHOLD",
    "DEFAULT_EXTERNAL_BYTES",
    "MIN_EXTERNAL_BYTES",
    "EXTERNAL_ALIGNMENT",
]

#: protobuf's 2 GB limit, minus room for the graph itself: above this, external data is a must.
EXTERNAL_DATA_THRESHOLD = (1 << 31) - (64 << 20)
#: Total tensor bytes above which ``save_onnx`` uses external data by default. Well under the
#: hard limit: an embedded model is built and serialized whole in memory (about 6x its weights
#: at the peak, measured on a 650 MB encoder), while external data streams tensor by tensor.
DEFAULT_EXTERNAL_BYTES = 256 << 20
#: Smaller tensors stay inside the model even when external data is used.
MIN_EXTERNAL_BYTES = 1024
#: Offsets in the data file are multiples of this (page size: mmap-friendly).
EXTERNAL_ALIGNMENT = 4096

_TensorSink = Callable[[str, np.ndarray, DType], TensorProto]


def _np_for_onnx(arr: np.ndarray, dtype: DType) -> np.ndarray:
    import ml_dtypes

    if dtype is DType.I4:
        return np.asarray(arr).astype(ml_dtypes.int4)
    if dtype is DType.U4:
        return np.asarray(arr).astype(ml_dtypes.uint4)
    return np.asarray(arr, dtype=dtype.numpy)


def _storage_dtype(enc: QuantEncoding) -> np.dtype:
    """The narrowest numpy integer type that holds ``enc``'s integers exactly."""
    if enc.bits <= 8:
        return np.dtype(np.int8 if enc.signed else np.uint8)
    if enc.bits <= 16:
        return np.dtype(np.int16 if enc.signed else np.uint16)
    return np.dtype(np.int32 if enc.signed else np.uint32)


def _embed(name: str, arr: np.ndarray, dtype: DType) -> TensorProto:
    return numpy_helper.from_array(_np_for_onnx(arr, dtype), name)


def _value_info(name: str, t: TensorType) -> ValueInfoProto:
    shape: list[int | str | None] | None = None
    if t.shape is not None:
        shape = [d for d in t.shape]
    return helper.make_tensor_value_info(name, DTYPE_TO_ONNX[t.dtype], shape)


def qdq_opset(enc: QuantEncoding, value_dtype: DType = DType.F32) -> int:
    """The lowest default-domain opset whose Q/DQ express ``enc`` on a ``value_dtype`` tensor."""
    need = 13 if enc.axis is not None else 10
    if enc.block_size is not None or enc.bits in (4, 16):
        need = max(need, 21)
    if value_dtype is not DType.F32:
        need = max(need, 19)
    return need


class _Names:
    """Deterministic fresh names that avoid every name already in use."""

    def __init__(self, used: set[str]) -> None:
        self.used = set(used)

    def fresh(self, hint: str) -> str:
        if hint not in self.used:
            self.used.add(hint)
            return hint
        k = 1
        while f"{hint}_{k}" in self.used:
            k += 1
        name = f"{hint}_{k}"
        self.used.add(name)
        return name


def _lowered(graph: Graph, keep: Sequence[str]) -> tuple[Graph, dict[str, Value]]:
    """A copy of ``graph`` with every edgec op that has a lowering lowered.

    Returns the graph and, for each name in ``keep``, the value that stands for it afterwards
    (a lowering replaces its node's outputs; graph outputs keep their names).
    """
    todo = [n for n in graph.nodes if n.domain == EDGEC_DOMAIN]
    if not any((s := edgec_op(n.op)) is not None and s.lower is not None for n in todo):
        vm = graph.value_map()
        return graph, {k: vm[k] for k in keep if k in vm}
    g = graph.copy()
    vm = g.value_map()
    tracked = [vm[k] for k in keep if k in vm]
    outs = list(g.outputs)
    # Listing the kept values as outputs makes the lowerings' replace_all_uses_with reroute
    # them, so they can be found afterwards.
    g.outputs = outs + tracked
    for n in list(g.nodes):
        if n.domain == EDGEC_DOMAIN:
            sch = edgec_op(n.op)
            if sch is not None and sch.lower is not None:
                sch.lower(g, n)
    after = list(g.outputs)
    for old, new in zip(outs + tracked, after):
        # The old value is dead; its replacement inherits the name unless it has a meaning of
        # its own (an input, a constant, another output).
        if (new is not old and new.producer is not None and not new.is_input
                and old.producer is not None and old.producer not in g.nodes
                and sum(o is new for o in after) == 1):
            new.name = old.name
    g.outputs = after[: len(outs)]
    return g, {k: v for k, v in zip([k for k in keep if k in vm], after[len(outs):])}


def _attribute(node: Node, key: str, value: Any, version: int | None) -> onnx.AttributeProto:
    atype: int | None = None
    if node.domain != EDGEC_DOMAIN and version is not None:
        sch: Any = op_schema(node.op, node.domain, version)
        if sch is not None and key in sch.attributes:
            atype = int(sch.attributes[key].type.value)
    if atype is None and isinstance(value, (list, tuple)) and not value:
        atype = onnx.AttributeProto.INTS
    A = onnx.AttributeProto
    if atype == A.FLOAT:
        value = float(value)
    elif atype == A.INT:
        value = int(value)
    elif atype == A.FLOATS:
        value = [float(x) for x in value]
    elif atype == A.INTS:
        value = [int(x) for x in value]
    if isinstance(value, np.ndarray):
        t = numpy_helper.from_array(value)
        return helper.make_attribute(key, t)
    try:
        return helper.make_attribute(key, value, attr_type=atype)
    except (TypeError, ValueError) as e:
        raise EmitError(f"{node.label()}: attribute {key!r}={value!r} cannot be written: "
                        f"{e}") from None


class _Exporter:
    def __init__(self, graph: Graph, *, opset: int | None = None, materialize_qdq: bool = True,
                 keep_placement: bool = False, lower_edgec: bool = False,
                 extra_outputs: Sequence[str] = (), sink: _TensorSink = _embed) -> None:
        self.source_output_names = [v.name for v in graph.outputs]
        #: IR name (graph outputs and extra outputs) -> ONNX output name, after ``run``.
        self.output_names: dict[str, str] = {}
        if lower_edgec:
            self.graph, self.extra_map = _lowered(graph, extra_outputs)
        else:
            self.graph = graph
            vm = graph.value_map()
            self.extra_map = {k: vm[k] for k in extra_outputs if k in vm}
        self.opset = opset
        self.qdq = materialize_qdq
        self.keep_placement = keep_placement
        self.extra_outputs = list(extra_outputs)
        self.sink = sink
        self.nodes: list[NodeProto] = []
        self.inits: list[TensorProto] = []
        self.node_names = _Names({n.name for n in self.graph.nodes if n.name})
        self.names = _Names({v.name for v in self.graph.values()})
        self.need = 1

    # -- helpers -----------------------------------------------------------------------------
    def _enc(self, v: Value) -> QuantEncoding | None:
        return v.encoding if self.qdq else None

    def _require(self, v: Value, enc: QuantEncoding) -> None:
        if not v.dtype.is_float:
            raise EmitError(f"value %{v.name} is {v.dtype.value} but carries a quantization "
                            "encoding; only float tensors can be quantized")
        self.need = max(self.need, qdq_opset(enc, v.dtype))

    def _qparams(self, v: Value, enc: QuantEncoding) -> tuple[str, str]:
        s = self.names.fresh(f"{v.name}_scale")
        z = self.names.fresh(f"{v.name}_zero_point")
        scale = enc.scale.astype(v.dtype.numpy)
        zp = np.broadcast_to(enc.zero_point, enc.scale.shape)
        self.inits.append(_embed(s, scale, v.dtype))
        self.inits.append(_embed(z, np.ascontiguousarray(zp), enc.dtype))
        return s, z

    @staticmethod
    def _qattrs(enc: QuantEncoding) -> dict[str, Any]:
        attrs: dict[str, Any] = {}
        if enc.axis is not None:
            attrs["axis"] = enc.axis
        if enc.block_size is not None:
            attrs["block_size"] = enc.block_size
        return attrs

    def _qdq_pair(self, v: Value, enc: QuantEncoding, src: str, dst: str) -> None:
        if enc.bits == 32:
            raise EmitError(f"value %{v.name}: a 32-bit encoding is only possible on constants "
                            "(QuantizeLinear has no int32 output)")
        s, z = self._qparams(v, enc)
        qn = self.names.fresh(f"{v.name}_quantized")
        attrs = self._qattrs(enc)
        self.nodes.append(helper.make_node(
            "QuantizeLinear", [src, s, z], [qn],
            name=self.node_names.fresh(f"{v.name}_QuantizeLinear"), **attrs))
        self.nodes.append(helper.make_node(
            "DequantizeLinear", [qn, s, z], [dst],
            name=self.node_names.fresh(f"{v.name}_DequantizeLinear"), **attrs))

    def _const_data(self, v: Value) -> np.ndarray:
        src = v.const_source
        if isinstance(src, UnresolvedConst):
            raise EmitError(f"constant %{v.name} is known only by hash #{src.digest}; its data "
                            "is needed to export")
        arr = v.const
        if arr is None:
            raise EmitError(f"%{v.name} is registered as a constant but has no data")
        return arr

    def _quantized_const(self, v: Value, enc: QuantEncoding) -> np.ndarray:
        cached = v.meta.get("_qdata")
        src = v.const_source
        # The integers the importer saw are exact; reuse them while the constant and its
        # encoding are the very objects they were read with.
        if (isinstance(cached, tuple) and len(cached) == 3 and cached[0] is src
                and cached[1] == enc):
            return np.asarray(cached[2])
        data = self._const_data(v)
        q = enc.quantize(np.asarray(data, dtype=np.float32))
        # Kept the same way for the next export of this graph state (the HTP model, then the
        # reference of the same graph: quantizing every weight is most of an export's time),
        # in the encoding's own integer width. Encodings are immutable and constants are never
        # written in place, so ``src`` and ``enc`` still being these objects means ``q`` holds.
        small = np.asarray(q).astype(_storage_dtype(enc))
        small.flags.writeable = False
        v.meta["_qdata"] = (src, enc, small)
        return q

    # -- main --------------------------------------------------------------------------------
    def run(self) -> ModelProto:
        g = self.graph
        source_opset = g.opset.get("", 17)
        exposed: dict[int, Value] = {id(v): v for v in g.outputs}
        extra: list[Value] = []
        for name in self.extra_outputs:
            v = self.extra_map.get(name)
            if v is None:
                raise EmitError(f"extra output %{name} is not a value of graph {g.name}")
            if id(v) not in exposed:
                exposed[id(v)] = v
                extra.append(v)
        read: dict[int, str] = {}

        for v in g.constants.values():
            enc = self._enc(v)
            if enc is None:
                self.inits.append(self.sink(v.name, self._const_data(v), v.dtype))
            else:
                self._require(v, enc)
                q = self._quantized_const(v, enc)
                qn = self.names.fresh(f"{v.name}_quantized")
                self.inits.append(self.sink(qn, q, enc.dtype))
                s, z = self._qparams(v, enc)
                self.nodes.append(helper.make_node(
                    "DequantizeLinear", [qn, s, z], [v.name],
                    name=self.node_names.fresh(f"{v.name}_DequantizeLinear"),
                    **self._qattrs(enc)))
            read[id(v)] = v.name

        inputs: list[ValueInfoProto] = []
        for v in g.inputs:
            inputs.append(_value_info(v.name, v.type))
            enc = self._enc(v)
            read[id(v)] = v.name
            if enc is not None:
                self._require(v, enc)
                dq = self.names.fresh(f"{v.name}_dequantized")
                self._qdq_pair(v, enc, v.name, dq)
                read[id(v)] = dq

        value_info: list[ValueInfoProto] = []
        for n in g.nodes:
            outs: list[str] = []
            pending: list[tuple[Value, QuantEncoding, str, str]] = []
            for o in n.outputs:
                enc = self._enc(o)
                if enc is None:
                    outs.append(o.name)
                    read[id(o)] = o.name
                else:
                    self._require(o, enc)
                    if id(o) in exposed:
                        raw, final = self.names.fresh(f"{o.name}_float"), o.name
                        if o.type.shape is not None:
                            value_info.append(_value_info(raw, o.type))
                    else:
                        raw, final = o.name, self.names.fresh(f"{o.name}_dequantized")
                    outs.append(raw)
                    read[id(o)] = final
                    pending.append((o, enc, raw, final))
                if id(o) not in exposed and o.type.shape is not None:
                    value_info.append(_value_info(o.name, o.type))
            ins = ["" if i is None else read[id(i)] for i in n.inputs]
            while ins and not ins[-1]:
                ins.pop()
            self.nodes.append(self._node(n, ins, outs))
            for o, enc, raw, final in pending:
                self._qdq_pair(o, enc, raw, final)

        out_values = {id(v): v for v in [*g.outputs, *extra]}.values()
        outputs = [_value_info(read[id(v)], v.type) for v in out_values]
        for name, v in zip(self.source_output_names, g.outputs):
            self.output_names[name] = read[id(v)]
        for name in self.extra_outputs:
            self.output_names.setdefault(name, read[id(self.extra_map[name])])
        target = self.opset if self.opset is not None else source_opset
        if self.need > target:
            if self.opset is not None:
                raise EmitError(f"the graph's quantization encodings need opset {self.need}, "
                                f"but opset {self.opset} was asked for")
            target = self.need
        gp = helper.make_graph(self.nodes, g.name, inputs, outputs, self.inits,
                               value_info=value_info)
        gp.doc_string = str(g.meta.get("graph_doc_string", ""))
        model = self._model(gp, source_opset)
        if target != source_opset:
            model = _convert(model, target)
            # The converter adds its own inferred value_info and keeps the old IR version.
            del model.graph.value_info[:]
            model.graph.value_info.extend(value_info)
            self._set_ir_version(model)
        return model

    def _node(self, n: Node, ins: list[str], outs: list[str]) -> NodeProto:
        version = self.graph.opset.get(n.domain) if n.domain != EDGEC_DOMAIN else None
        if n.domain not in ("", EDGEC_DOMAIN) and version is None:
            raise EmitError(f"{n.label()}: domain {n.domain!r} is not in the graph's opsets")
        node = NodeProto()
        node.op_type = n.op
        node.domain = n.domain
        if n.name:
            node.name = n.name
        node.input.extend(ins)
        node.output.extend(outs)
        node.attribute.extend(_attribute(n, k, n.attrs[k], version) for k in sorted(n.attrs))
        if self.keep_placement:
            props = {}
            if n.placement:
                props["edgec.placement"] = n.placement
            if n.src:
                props["edgec.src"] = n.src
            for k, val in props.items():
                e = node.metadata_props.add()
                e.key, e.value = k, val
        return node

    def _set_ir_version(self, model: ModelProto) -> None:
        model.ir_version = helper.find_min_ir_version_for(list(model.opset_import),
                                                          ignore_unknown=True)
        if self.keep_placement:
            model.ir_version = max(model.ir_version, 10)  # node metadata_props

    def _model(self, gp: onnx.GraphProto, source_opset: int) -> ModelProto:
        g = self.graph
        domains = {n.domain for n in g.nodes} - {""}
        opsets = [helper.make_opsetid("", source_opset)]
        for dom in sorted(domains):
            opsets.append(helper.make_opsetid(dom, g.opset.get(dom, 1)))
        model = helper.make_model(gp, opset_imports=opsets)
        self._set_ir_version(model)
        meta = g.meta
        model.producer_name = str(meta.get("producer_name", "edgec"))
        model.producer_version = str(meta.get("producer_version", ""))
        model.domain = str(meta.get("domain", ""))
        model.doc_string = str(meta.get("doc_string", ""))
        props = meta.get("metadata_props")
        if isinstance(props, Mapping) and props:
            helper.set_model_props(model, {str(k): str(v) for k, v in props.items()})
        return model


_STUB_LOCATION = "__edgec_converter_stub__"


def _convert(model: ModelProto, target: int) -> ModelProto:
    """``version_converter`` without pushing the weights through it (they are stubbed out)."""
    saved: dict[str, bytes] = {}
    for t in model.graph.initializer:
        if t.data_location != TensorProto.EXTERNAL and len(t.raw_data) > MIN_EXTERNAL_BYTES:
            saved[t.name] = t.raw_data
            t.ClearField("raw_data")
            t.data_location = TensorProto.EXTERNAL
            e = t.external_data.add()
            e.key, e.value = "location", _STUB_LOCATION
    try:
        out = onnx.version_converter.convert_version(model, target)
    except Exception as e:  # the converter raises plain RuntimeErrors
        raise EmitError(f"cannot convert the exported model from opset "
                        f"{model.opset_import[0].version} to {target}: {e}") from None
    finally:
        _restore(model, saved)
    _restore(out, saved)
    return out


def _restore(model: ModelProto, saved: dict[str, bytes]) -> None:
    for t in model.graph.initializer:
        if t.name in saved and any(e.value == _STUB_LOCATION for e in t.external_data):
            del t.external_data[:]
            t.data_location = TensorProto.DEFAULT
            t.raw_data = saved[t.name]


def to_onnx(
    graph: Graph,
    *,
    opset: int | None = None,
    materialize_qdq: bool = True,
    keep_placement: bool = False,
    lower_edgec: bool = False,
    extra_outputs: Sequence[str] = (),
) -> onnx.ModelProto:
    """Export ``graph`` as an ONNX model (see the module doc for the Q/DQ and naming rules).

    ``opset`` forces the default-domain opset (converted with ``onnx.version_converter``);
    ``materialize_qdq=False`` ignores encodings (the float model); ``keep_placement`` writes
    placement and provenance into node ``metadata_props``; ``lower_edgec`` lowers edgec ops
    that have a registered lowering; ``extra_outputs`` names further values to expose as
    graph outputs (used by the CPU reference). All tensors are embedded; use
    :func:`save_onnx` for models over 2 GB.
    """
    return _Exporter(graph, opset=opset, materialize_qdq=materialize_qdq,
                     keep_placement=keep_placement, lower_edgec=lower_edgec,
                     extra_outputs=extra_outputs).run()


# ---------------------------------------------------------------------------------------------
# saving


class _ExternalSink:
    """Writes large tensors into the open data file; returns TensorProtos pointing at them."""

    def __init__(self, f: IO[bytes], location: str, min_bytes: int) -> None:
        self.f = f
        self.location = location
        self.min_bytes = min_bytes
        self.offset = 0

    def put(self, t: TensorProto) -> TensorProto:
        if t.data_location == TensorProto.EXTERNAL:
            raise EmitError(f"tensor '{t.name}' refers to external data that was never "
                            "loaded; load the model with its data before saving it elsewhere")
        if t.HasField("raw_data"):
            raw = t.raw_data
        else:
            raw = numpy_helper.from_array(numpy_helper.to_array(t)).raw_data
        if len(raw) < self.min_bytes:
            return t
        pad = -self.offset % EXTERNAL_ALIGNMENT
        if pad:
            self.f.write(b"\0" * pad)
            self.offset += pad
        self.f.write(raw)
        out = TensorProto()
        out.name = t.name
        out.data_type = t.data_type
        out.dims.extend(t.dims)
        out.data_location = TensorProto.EXTERNAL
        for k, v in (("location", self.location), ("offset", str(self.offset)),
                     ("length", str(len(raw)))):
            e = out.external_data.add()
            e.key, e.value = k, v
        self.offset += len(raw)
        return out

    def __call__(self, name: str, arr: np.ndarray, dtype: DType) -> TensorProto:
        return self.put(_embed(name, arr, dtype))


def _tensor_bytes(model: ModelProto) -> int:
    total = 0
    for t in model.graph.initializer:
        if t.HasField("raw_data"):
            total += len(t.raw_data)
        else:
            total += t.ByteSize()
    return total


class _TempFile:
    """A temp file in the target folder that becomes ``name`` only on ``commit``."""

    def __init__(self, folder: Path, name: str) -> None:
        self.target = folder / name
        fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=folder)
        self.tmp = Path(tmp)
        self.file: IO[bytes] = os.fdopen(fd, "wb")

    def close(self) -> None:
        if not self.file.closed:
            self.file.flush()
            os.fsync(self.file.fileno())
            self.file.close()

    def commit(self) -> None:
        self.close()
        os.chmod(self.tmp, default_mode())
        # os.replace swaps the directory entry: a symlink at the target is replaced, never
        # followed, so nothing outside the folder is written.
        os.replace(self.tmp, self.target)

    def discard(self) -> None:
        with contextlib.suppress(OSError):
            self.file.close()
        with contextlib.suppress(OSError):
            os.unlink(self.tmp)


def save_onnx(
    graph_or_model: Graph | ModelProto,
    path: str | os.PathLike[str],
    *,
    external_data: bool | None = None,
    external_threshold: int = DEFAULT_EXTERNAL_BYTES,
    min_external_bytes: int = MIN_EXTERNAL_BYTES,
    **export_options: Any,
) -> Path:
    """Write a graph (exported with ``to_onnx(**export_options)``) or a model to ``path``.

    ``external_data=None`` decides by size: tensors totalling more than ``external_threshold``
    bytes go to ``<name>.data`` beside the model (``model.onnx`` -> ``model.onnx.data``);
    ``True``/``False`` force it. Files are written atomically and only inside the folder of
    ``path``; output is byte-identical for identical input. Returns the model path.
    """
    return _save(graph_or_model, path, external_data=external_data,
                 external_threshold=external_threshold, min_external_bytes=min_external_bytes,
                 **export_options)[0]


def _save(
    graph_or_model: Graph | ModelProto,
    path: str | os.PathLike[str],
    *,
    external_data: bool | None,
    external_threshold: int,
    min_external_bytes: int,
    **export_options: Any,
) -> tuple[Path, dict[str, str]]:
    """``save_onnx``, also returning the exporter's IR-name -> ONNX-output-name map."""
    path = Path(path)
    folder = path.parent.resolve()
    name = path.name
    if not name or name in (".", ".."):
        raise EmitError(f"{path}: not a file name")
    if not folder.is_dir():
        raise EmitError(f"{path}: folder {folder} does not exist")
    data_name = f"{name}.data"
    names: dict[str, str] = {}
    temps: list[_TempFile] = []
    try:
        if isinstance(graph_or_model, Graph):
            g = graph_or_model
            if external_data is None:
                external_data = g.weight_bytes() > external_threshold
            sink: _TensorSink = _embed
            if external_data:
                temps.append(_TempFile(folder, data_name))
                sink = _ExternalSink(temps[0].file, data_name, min_external_bytes)
            exporter = _Exporter(g, sink=sink, **export_options)
            model = exporter.run()
            names = exporter.output_names
        elif isinstance(graph_or_model, ModelProto):
            if export_options:
                raise TypeError(f"export options {sorted(export_options)} apply to graphs only")
            model = graph_or_model
            if external_data is None:
                external_data = _tensor_bytes(model) > external_threshold
            if external_data:
                copy = ModelProto()
                copy.CopyFrom(model)
                temps.append(_TempFile(folder, data_name))
                ext = _ExternalSink(temps[0].file, data_name, min_external_bytes)
                new = [ext.put(t) for t in copy.graph.initializer]
                del copy.graph.initializer[:]
                copy.graph.initializer.extend(new)
                model = copy
        else:
            raise TypeError(f"save_onnx takes a Graph or onnx.ModelProto, not "
                            f"{type(graph_or_model)}")
        try:
            blob = model.SerializeToString(deterministic=True)
        except Exception as e:  # protobuf refuses messages over 2 GB
            raise EmitError(f"{path}: the model cannot be serialized ({e}); use "
                            "external_data=True") from None
        temps.append(_TempFile(folder, name))
        temps[-1].file.write(blob)
        # Data first: a model file never points at data that is not there yet.
        for t in temps:
            t.commit()
    except BaseException:
        for t in temps:
            t.discard()
        raise
    return folder / name, names

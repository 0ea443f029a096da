"""ONNX to IR.

``load_onnx`` reads a file, bytes or a ``ModelProto`` and returns a verified
:class:`~compiler.ir.Graph`. What it does to a real, messy model:

- **Opsets.** Default-domain opsets 13 up to the newest the installed ``onnx`` knows
  (:data:`MAX_OPSET`; the ONNX Runtime in this environment runs all of them) are taken as they
  are. Older ones (1..12) go through ``onnx.version_converter`` to opset 17. Anything newer than
  :data:`MAX_OPSET` is refused with :class:`~compiler.errors.ModelLoadError` naming the opset.
- **Domains.** The default domain, ``ai.onnx.ml`` and registered ``edgec`` ops are accepted.
  ``com.microsoft`` is accepted only for ``QuantizeLinear``/``DequantizeLinear`` (ORT's quantizer
  writes them for 16-bit and 4-bit types on older opsets), and only where they fold into
  encodings: the IR's operator vocabulary is ONNX's, so any other contrib op is an
  :class:`~compiler.errors.UnsupportedOpError` naming the node and op. ``If``/``Loop``/``Scan``
  (and any graph-valued attribute) are refused the same way. Model-local functions are inlined.
- **Initializers listed as graph inputs** (IR version 3, the classic model zoo) are constants,
  not inputs: a deployment compiler folds weights, and ORT would otherwise let callers
  override them.
- **External data** is validated before a byte is read: the location must be relative, stay
  inside the model's folder, pass through no symlink, name a regular file, and
  ``offset``/``length`` must fit in it and match the tensor's size. Such constants become
  :class:`~compiler.ir.ExternalArray` (memory-mapped on first use). Embedded raw data becomes a
  read-only ``np.frombuffer`` view (no second copy).
- **Types** come from ``onnx.shape_inference`` run on a skeleton of the model (large
  initializers replaced by typed inputs, so models of any size infer quickly and never hit the
  2 GB protobuf limit). Symbolic dims keep their ``dim_param`` names; unknown dims are None.
- **Q/DQ folding** (:func:`fold_qdq`): ``x -> QuantizeLinear -> DequantizeLinear -> y``
  becomes the float value ``x`` carrying a :class:`~compiler.ir.QuantEncoding` (consumers of
  ``y`` read ``x``); a constant integer weight ``w_q -> DequantizeLinear`` becomes a *float*
  constant holding the dequantized values and carrying the encoding. The value's meaning is
  always "what the consumers see": ``dequantize(quantize(value))``. The original integers are
  kept in ``value.meta["_qdata"]`` so that export writes them back bit-exactly while the
  constant is unchanged. Q/DQ pairs that cannot fold without changing numerics (the float
  tensor is also read unquantized, it is a graph output, scales are not constants...) stay
  as ordinary nodes.
- **Provenance**: ``node.name`` is the ONNX node name; ``meta["src"]`` the module path derived
  from torch's ``pkg.torch.onnx.name_scopes`` metadata or a ``/layers.0/conv/Conv``-style
  name (``layers.0.conv``), else the node name. ``graph.meta`` keeps producer name/version,
  doc string, model domain and ``metadata_props``.
- **Structure**: nodes are sorted topologically; cycles, tensors read but never defined and
  graph outputs that nothing produces are :class:`~compiler.errors.ModelLoadError` naming the
  node or tensor. ``graph.verify()`` runs last and its ``VerifyError`` is let out.

NaN/Inf weights are not an import error; :func:`check_finite` raises ``NumericsError`` naming
the constant for callers that need real values.
"""

from __future__ import annotations

import ast
import hashlib
import os
import re
import stat
from collections.abc import Iterable
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any

import numpy as np
import onnx
import onnx.inliner
import onnx.numpy_helper
import onnx.shape_inference
import onnx.version_converter
from onnx import AttributeProto, ModelProto, NodeProto, TensorProto, TypeProto

from compiler.errors import (
    ExternalDataError,
    ModelLoadError,
    UnsupportedOpError,
)
from compiler.ir import (
    EDGEC_DOMAIN,
    DType,
    ExternalArray,
    Graph,
    Node,
    QuantEncoding,
    TensorType,
    Value,
)
from compiler.ir.verify import check_finite, edgec_op, op_schema

__all__ = [
    "load_onnx",
    "check_finite",
    "fold_qdq",
    "ONNX_TO_DTYPE",
    "DTYPE_TO_ONNX",
    "MIN_OPSET",
    "MAX_OPSET",
    "CONVERT_TO_OPSET",
]

#: Oldest default-domain opset taken without conversion.
MIN_OPSET = 13
#: Newest default-domain opset accepted: what the installed onnx knows (ORT here runs it).
MAX_OPSET = onnx.defs.onnx_opset_version()
#: Older models are converted to this opset.
CONVERT_TO_OPSET = 17

ONNX_TO_DTYPE: dict[int, DType] = {
    TensorProto.FLOAT: DType.F32, TensorProto.FLOAT16: DType.F16,
    TensorProto.BFLOAT16: DType.BF16, TensorProto.DOUBLE: DType.F64,
    TensorProto.INT4: DType.I4, TensorProto.UINT4: DType.U4, TensorProto.INT8: DType.I8,
    TensorProto.UINT8: DType.U8, TensorProto.INT16: DType.I16, TensorProto.UINT16: DType.U16,
    TensorProto.INT32: DType.I32, TensorProto.UINT32: DType.U32, TensorProto.INT64: DType.I64,
    TensorProto.UINT64: DType.U64, TensorProto.BOOL: DType.BOOL,
}
DTYPE_TO_ONNX: dict[DType, int] = {v: k for k, v in ONNX_TO_DTYPE.items()}

_TYPE_STR: dict[str, DType] = {
    "float": DType.F32, "float16": DType.F16, "bfloat16": DType.BF16, "double": DType.F64,
    "int4": DType.I4, "uint4": DType.U4, "int8": DType.I8, "uint8": DType.U8,
    "int16": DType.I16, "uint16": DType.U16, "int32": DType.I32, "uint32": DType.U32,
    "int64": DType.I64, "uint64": DType.U64, "bool": DType.BOOL,
}

_CONTROL_FLOW = frozenset({"If", "Loop", "Scan"})
_QDQ_DOMAINS = ("", "com.microsoft")
_QUANT_INT = frozenset({DType.I4, DType.U4, DType.I8, DType.U8, DType.I16, DType.U16,
                        DType.I32})
# Initializers up to this size keep their data in the shape-inference skeleton (shape
# tensors need it for data propagation); larger ones become typed inputs.
_SKELETON_KEEP_BYTES = 64 * 1024
_DIM_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


# ---------------------------------------------------------------------------------------------
# reading


def load_onnx(
    model: str | os.PathLike[str] | ModelProto | bytes,
    *,
    allow_external_data: bool = True,
    base_dir: str | os.PathLike[str] | None = None,
) -> Graph:
    """Import an ONNX model (path, serialized bytes or ``ModelProto``) as a verified IR graph.

    ``allow_external_data=False`` refuses models whose tensors live in side files.
    ``base_dir`` is the folder external data is resolved against for a model given as bytes or
    a ``ModelProto`` (a model given by path uses its own folder). The input proto is never
    modified. Errors name the file (for paths), the node, op or tensor concerned.
    """
    label, proto, base = _read(model, base_dir)
    try:
        return _Importer(proto, base, allow_external_data).run()
    except ModelLoadError as e:
        if label and label not in str(e):
            raise type(e)(f"{label}: {e}") from e
        raise


def _read(
    model: str | os.PathLike[str] | ModelProto | bytes, base_dir: str | os.PathLike[str] | None
) -> tuple[str, ModelProto, Path | None]:
    base = Path(base_dir).resolve() if base_dir is not None else None
    if isinstance(model, ModelProto):
        label, proto = "", model
    elif isinstance(model, (bytes, bytearray, memoryview)):
        label = "<bytes>"
        proto = ModelProto()
        try:
            proto.ParseFromString(bytes(model))
        except Exception as e:  # protobuf raises DecodeError (and RuntimeError on some builds)
            raise ModelLoadError(f"{label}: not a valid ONNX protobuf: {e}") from None
    elif isinstance(model, (str, os.PathLike)):
        path = Path(model)
        label = str(path)
        if not path.exists():
            raise ModelLoadError(f"{path}: no such file")
        if not path.is_file():
            raise ModelLoadError(f"{path}: not a regular file")
        try:
            proto = onnx.load(str(path), load_external_data=False)
        except OSError as e:
            raise ModelLoadError(f"{path}: cannot read: {e}") from None
        except Exception as e:  # a DecodeError for truncated or random bytes
            raise ModelLoadError(
                f"{path}: not a valid ONNX protobuf ({type(e).__name__}: {e})"
            ) from None
        if base is None:
            base = path.resolve().parent
    else:
        raise TypeError(f"load_onnx takes a path, bytes or onnx.ModelProto, not {type(model)}")
    # Random bytes and empty files can parse as an (almost) empty message.
    if proto.ir_version <= 0 or not proto.HasField("graph"):
        raise ModelLoadError(f"{label or '<ModelProto>'}: not an ONNX model (no ir_version or "
                             "no graph; empty, truncated or not a model file)")
    return label, proto, base


# ---------------------------------------------------------------------------------------------
# small helpers


def _node_label(node: NodeProto, index: int) -> str:
    op = f"{node.domain}.{node.op_type}" if node.domain else node.op_type
    name = f"'{node.name}'" if node.name else f"#{index}"
    return f"node {name} ({op})"


def _parse_type_str(ts: str) -> DType | None:
    m = re.fullmatch(r"tensor\((\w+)\)", ts)
    return _TYPE_STR.get(m.group(1)) if m else None


def _dim_name(name: str) -> str:
    # The IR text needs identifier-like symbols; torch writes expressions ("2*s0 + 1").
    if _DIM_NAME.match(name):
        return name
    clean = re.sub(r"[^A-Za-z0-9_]", "_", name).strip("_") or "d"
    if not _DIM_NAME.match(clean):
        clean = "d_" + clean
    return f"{clean}_{hashlib.sha1(name.encode()).hexdigest()[:6]}"


def _tensor_type(tp: TypeProto, what: str) -> TensorType | None:
    """IR type of an ONNX TypeProto; None when the element type is unknown."""
    kind = tp.WhichOneof("value")
    if kind is None:
        return None
    if kind != "tensor_type":
        raise UnsupportedOpError(f"{what} has a non-tensor type ({kind}); edgec handles tensors "
                                 "only")
    tt = tp.tensor_type
    if tt.elem_type == TensorProto.UNDEFINED:
        return None
    dt = ONNX_TO_DTYPE.get(tt.elem_type)
    if dt is None:
        raise UnsupportedOpError(
            f"{what} has element type {TensorProto.DataType.Name(tt.elem_type)}, which edgec "
            "does not support")
    if not tt.HasField("shape"):
        return TensorType(dt, None)
    dims: list[int | str | None] = []
    for d in tt.shape.dim:
        if d.HasField("dim_value") and d.dim_value >= 0:
            dims.append(int(d.dim_value))
        elif d.HasField("dim_param") and d.dim_param:
            dims.append(_dim_name(d.dim_param))
        else:
            dims.append(None)
    return TensorType(dt, tuple(dims))


def _unpack4(packed: np.ndarray, n: int, signed: bool) -> np.ndarray:
    """Two 4-bit values per byte, low nibble first, to one int8/uint8 per element."""
    b = np.asarray(packed, dtype=np.uint8).reshape(-1)
    out = np.empty(b.size * 2, dtype=np.uint8)
    out[0::2] = b & 0x0F
    out[1::2] = b >> 4
    out = out[:n]
    if signed:
        return ((out.astype(np.int8) << 4) >> 4).astype(np.int8)
    return out


def _readonly(arr: np.ndarray) -> np.ndarray:
    if arr.flags.writeable:
        arr.setflags(write=False)
    return arr


def _expected_nbytes(dt: DType, n: int) -> int:
    return (n * dt.bits + 7) // 8


# ---------------------------------------------------------------------------------------------
# tensors and external data


def _safe_external_path(base: Path, location: str, tensor: str) -> Path:
    """Resolve ``location`` inside ``base`` without following anything out of it."""
    where = f"tensor '{tensor}': external data location '{location}'"
    if not location or "\x00" in location:
        raise ExternalDataError(f"{where} is empty or malformed")
    if (os.path.isabs(location) or location.startswith(("/", "\\"))
            or PureWindowsPath(location).drive):
        raise ExternalDataError(f"{where} is an absolute path; it must be relative to the "
                                f"model folder {base}")
    cur, depth = base, 0
    for part in PurePosixPath(location).parts:
        if part == ".":
            continue
        if part == "..":
            if depth == 0:
                raise ExternalDataError(f"{where} resolves outside the model folder {base}")
            cur, depth = cur.parent, depth - 1
            continue
        cur, depth = cur / part, depth + 1
        # Every component is checked, so ``..`` after it cannot escape either.
        if cur.is_symlink():
            raise ExternalDataError(f"{where} goes through a symlink ({cur}); refused")
    if depth == 0:
        raise ExternalDataError(f"{where} names the model folder itself")
    try:
        st = cur.stat()
    except OSError:
        raise ExternalDataError(f"{where}: file {cur} does not exist") from None
    if not stat.S_ISREG(st.st_mode):
        raise ExternalDataError(f"{where}: {cur} is not a regular file")
    return cur


def _parse_nonneg(text: str, key: str, tensor: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise ExternalDataError(f"tensor '{tensor}': external data {key} {text!r} is not an "
                                "integer") from None
    if v < 0:
        raise ExternalDataError(f"tensor '{tensor}': external data {key} {v} is negative")
    return v


class _TensorReader:
    def __init__(self, base: Path | None, allow_external: bool) -> None:
        self.base = base
        self.allow_external = allow_external

    def dtype_of(self, t: TensorProto, what: str) -> DType:
        dt = ONNX_TO_DTYPE.get(t.data_type)
        if dt is None:
            name = TensorProto.DataType.Name(t.data_type) if t.data_type in \
                TensorProto.DataType.values() else str(t.data_type)
            raise UnsupportedOpError(f"{what} has element type {name}, which edgec does not "
                                     "support")
        return dt

    def read(self, t: TensorProto, what: str) -> np.ndarray | ExternalArray:
        """A tensor's data: zero-copy view, ExternalArray, or (int4, typed fields) a copy."""
        dt = self.dtype_of(t, what)
        dims = tuple(int(d) for d in t.dims)
        if any(d < 0 for d in dims):
            raise ModelLoadError(f"{what} has negative dimensions {list(dims)}")
        n = int(np.prod(dims, dtype=np.int64)) if dims else 1
        if t.data_location == TensorProto.EXTERNAL:
            return self._external(t, dt, dims, n)
        if n == 0:
            return _readonly(np.zeros(dims, dtype=dt.numpy))
        if t.HasField("raw_data"):
            raw = t.raw_data
            need = _expected_nbytes(dt, n)
            if len(raw) != need:
                raise ModelLoadError(f"{what} has {len(raw)} bytes of raw data, but "
                                     f"{dt.value}{list(dims)} needs {need}")
            if dt in (DType.I4, DType.U4):
                arr = _unpack4(np.frombuffer(raw, dtype=np.uint8), n, dt is DType.I4)
                return _readonly(arr.reshape(dims))
            return _readonly(np.frombuffer(raw, dtype=dt.numpy).reshape(dims))
        try:
            arr = onnx.numpy_helper.to_array(t)
        except Exception as e:  # inconsistent typed fields
            raise ModelLoadError(f"{what}: cannot decode its data: {e}") from None
        return _readonly(np.asarray(arr).astype(dt.numpy, copy=False).reshape(dims))

    def _external(self, t: TensorProto, dt: DType, dims: tuple[int, ...],
                  n: int) -> np.ndarray | ExternalArray:
        info = {e.key: e.value for e in t.external_data}
        location = info.get("location", "")
        if not self.allow_external:
            raise ExternalDataError(f"tensor '{t.name}' is stored in external data "
                                    f"('{location}') but allow_external_data=False")
        if self.base is None:
            raise ExternalDataError(f"tensor '{t.name}': external data '{location}' of a model "
                                    "given in memory needs base_dir")
        path = _safe_external_path(self.base, location, t.name)
        size = path.stat().st_size
        offset = _parse_nonneg(info.get("offset", "0"), "offset", t.name)
        length = (_parse_nonneg(info["length"], "length", t.name) if "length" in info
                  else max(size - offset, 0))
        if offset + length > size:
            raise ExternalDataError(
                f"tensor '{t.name}': external data offset {offset} + length {length} does not "
                f"fit in '{location}' ({size} bytes)")
        need = _expected_nbytes(dt, n)
        if length != need:
            raise ExternalDataError(
                f"tensor '{t.name}': external data in '{location}' has length {length}, but "
                f"{dt.value}{list(dims)} needs {need} bytes")
        if dt in (DType.I4, DType.U4):
            packed = ExternalArray(path, offset, length, DType.U8, (length,)).load()
            return _readonly(_unpack4(packed, n, dt is DType.I4).reshape(dims))
        return ExternalArray(path, offset, length, dt, dims)


# ---------------------------------------------------------------------------------------------
# provenance


def _merge_scopes(scopes: Iterable[str]) -> str:
    """Join scope segments into one module path, overlapping what they repeat.

    torch writes each segment qualified from its parent's attribute name
    (``/layers/layers.0/Conv``, ``/layers.0/mlp/mlp.0/Gemm``) or from the root
    (``name_scopes``: ``layers``, ``layers.0``, ``layers.0.att``); a plain relative child is
    appended. All of them give ``layers.0``, ``layers.0.mlp.0``, ``layers.0.att``.
    """
    acc: list[str] = []
    for seg in scopes:
        parts = [p for p in seg.split(".") if p]
        if not parts:
            continue
        k = min(len(acc), len(parts))
        while k and acc[len(acc) - k:] != parts[:k]:
            k -= 1
        acc = acc + parts[k:]
    return ".".join(acc)


def _provenance(node: NodeProto, props: dict[str, str]) -> str:
    if "edgec.src" in props:
        return props["edgec.src"]
    scopes = props.get("pkg.torch.onnx.name_scopes")
    if scopes:
        try:
            items = ast.literal_eval(scopes)
        except (ValueError, SyntaxError):
            items = None
        if isinstance(items, list) and items:
            # The last scope is the fx node itself (conv2d, linear ...), not a module.
            return _merge_scopes(str(s) for s in items[:-1])
    name = node.name
    if name.startswith("/"):
        return _merge_scopes(name.strip("/").split("/")[:-1])
    return name


# ---------------------------------------------------------------------------------------------
# the importer


class _Importer:
    def __init__(self, proto: ModelProto, base: Path | None, allow_external: bool) -> None:
        self.proto = proto
        self.reader = _TensorReader(base, allow_external)

    # -- opsets ------------------------------------------------------------------------------
    def _opsets(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for o in self.proto.opset_import:
            dom = "" if o.domain in ("", "ai.onnx") else o.domain
            out[dom] = int(o.version)
        return out

    def _normalize_opset(self) -> None:
        opsets = self._opsets()
        v = opsets.get("")
        if v is None:
            uses_default = any(n.domain in ("", "ai.onnx") for n in self.proto.graph.node)
            if uses_default:
                raise ModelLoadError("the model uses default-domain ops but imports no opset "
                                     "for the default ONNX domain")
            return
        if v > MAX_OPSET or v < 1:
            raise ModelLoadError(f"default-domain opset {v} is not supported (edgec takes "
                                 f"opsets {MIN_OPSET}..{MAX_OPSET} and converts 1..12)")
        if v < MIN_OPSET:
            try:
                self.proto = onnx.version_converter.convert_version(self.proto, CONVERT_TO_OPSET)
            except Exception as e:  # the converter raises plain RuntimeErrors
                raise ModelLoadError(f"cannot convert opset {v} to opset {CONVERT_TO_OPSET}: "
                                     f"{e}") from None
        ml = opsets.get("ai.onnx.ml")
        max_ml = onnx.helper.VERSION_TABLE[-1][3]
        if ml is not None and not 1 <= ml <= max_ml:
            raise ModelLoadError(f"ai.onnx.ml opset {ml} is not supported (1..{max_ml})")

    # -- checks ------------------------------------------------------------------------------
    def _check_op(self, node: NodeProto, index: int, opsets: dict[str, int]) -> str:
        domain = "" if node.domain in ("", "ai.onnx") else node.domain
        label = _node_label(node, index)
        op = node.op_type
        if op in _CONTROL_FLOW and domain == "":
            raise UnsupportedOpError(f"{label}: control flow op {op} is not supported")
        for a in node.attribute:
            if a.type in (AttributeProto.GRAPH, AttributeProto.GRAPHS):
                raise UnsupportedOpError(f"{label}: op {op} has a subgraph attribute "
                                         f"'{a.name}'; subgraphs are not supported")
        if domain in ("", "ai.onnx.ml"):
            version = opsets.get(domain)
            if version is None:
                raise ModelLoadError(f"{label}: domain '{domain or 'ai.onnx'}' is not imported")
            if op_schema(op, domain, version) is None:
                raise UnsupportedOpError(f"{label}: unknown op {op} in domain "
                                         f"'{domain or 'ai.onnx'}' at opset {version}")
        elif domain == "com.microsoft":
            if op not in ("QuantizeLinear", "DequantizeLinear"):
                raise UnsupportedOpError(f"{label}: contrib op com.microsoft.{op} is not "
                                         "supported (edgec's vocabulary is standard ONNX)")
        elif domain == EDGEC_DOMAIN:
            if edgec_op(op) is None:
                raise UnsupportedOpError(f"{label}: unknown op edgec.{op}")
        else:
            raise UnsupportedOpError(f"{label}: op {op} of unknown domain '{domain}' is not "
                                     "supported")
        return domain

    # -- attributes --------------------------------------------------------------------------
    def _attr(self, a: AttributeProto, label: str) -> Any:
        where = f"{label}: attribute '{a.name}'"
        if a.ref_attr_name:
            raise UnsupportedOpError(f"{where} refers to a function attribute")
        t = a.type
        try:
            if t == AttributeProto.INT:
                return int(a.i)
            if t == AttributeProto.FLOAT:
                return float(a.f)
            if t == AttributeProto.STRING:
                return a.s.decode("utf-8")
            if t == AttributeProto.INTS:
                return [int(x) for x in a.ints]
            if t == AttributeProto.FLOATS:
                return [float(x) for x in a.floats]
            if t == AttributeProto.STRINGS:
                return [s.decode("utf-8") for s in a.strings]
        except UnicodeDecodeError:
            raise UnsupportedOpError(f"{where} is not UTF-8 text") from None
        if t == AttributeProto.TENSOR:
            data = self.reader.read(a.t, where)
            return np.asarray(data.load() if isinstance(data, ExternalArray) else data)
        kind = AttributeProto.AttributeType.Name(t) if t in \
            AttributeProto.AttributeType.values() else str(t)
        raise UnsupportedOpError(f"{where} has type {kind}, which edgec does not support")

    def _constant_node_value(self, node: NodeProto, label: str) -> np.ndarray:
        if len(node.attribute) != 1:
            raise ModelLoadError(f"{label}: a Constant needs exactly one value attribute")
        a = node.attribute[0]
        if a.name == "value":
            data = self.reader.read(a.t, f"{label}: value")
            return np.asarray(data.load() if isinstance(data, ExternalArray) else data)
        if a.name == "value_float":
            return np.array(a.f, dtype=np.float32)
        if a.name == "value_floats":
            return np.array(list(a.floats), dtype=np.float32)
        if a.name == "value_int":
            return np.array(a.i, dtype=np.int64)
        if a.name == "value_ints":
            return np.array(list(a.ints), dtype=np.int64)
        raise UnsupportedOpError(f"{label}: Constant attribute '{a.name}' (strings, sparse "
                                 "tensors) is not supported")

    # -- shape inference ---------------------------------------------------------------------
    def _infer(self, order: list[NodeProto], const_nodes: list[NodeProto]) -> dict[str, TypeProto]:
        gp = self.proto.graph
        sk = ModelProto()
        sk.ir_version = max(self.proto.ir_version, 4)
        sk.opset_import.extend(self.proto.opset_import)
        g = sk.graph
        g.name = gp.name
        inits = {t.name for t in gp.initializer}
        g.input.extend(i for i in gp.input if i.name not in inits)
        for t in gp.initializer:
            small = t.data_location != TensorProto.EXTERNAL and t.ByteSize() <= _SKELETON_KEEP_BYTES
            if small:
                g.initializer.append(t)
            else:
                g.input.append(onnx.helper.make_tensor_value_info(t.name, t.data_type,
                                                                  list(t.dims)))
        g.node.extend(const_nodes)
        for n in order:
            g.node.append(n)
            if n.domain == "com.microsoft" and n.op_type in ("QuantizeLinear",
                                                             "DequantizeLinear"):
                # Inference does not know the contrib twins; the standard ops type the same.
                g.node[-1].domain = ""
        g.output.extend(gp.output)
        g.value_info.extend(gp.value_info)
        try:
            inferred = onnx.shape_inference.infer_shapes(sk, strict_mode=False, data_prop=True)
        except Exception:  # inference is best effort; declared types and guesses remain
            inferred = sk
        types: dict[str, TypeProto] = {}
        for vi in list(inferred.graph.value_info) + list(inferred.graph.output):
            if vi.type.WhichOneof("value") is not None:
                types[vi.name] = vi.type
        return types

    # -- main --------------------------------------------------------------------------------
    def run(self) -> Graph:
        self._normalize_opset()
        if len(self.proto.functions):
            try:
                self.proto = onnx.inliner.inline_local_functions(self.proto)
            except Exception as e:  # inliner raises on malformed functions
                raise ModelLoadError(f"cannot inline model-local functions: {e}") from None
        proto = self.proto
        gp = proto.graph
        opsets = self._opsets()
        if len(gp.sparse_initializer):
            raise UnsupportedOpError(f"sparse initializer '{gp.sparse_initializer[0].values.name}'"
                                     " is not supported")

        graph = Graph(gp.name or "main", opset={"": opsets.get("", CONVERT_TO_OPSET)})
        graph.meta.update(self._model_meta())
        values: dict[str, Value] = {}

        def define(v: Value, what: str) -> None:
            if v.name in values:
                raise ModelLoadError(f"tensor '{v.name}' is defined twice ({what})")
            values[v.name] = v

        # Constants: initializers (also those listed as inputs, see the module doc).
        for t in gp.initializer:
            if t.name in values:
                raise ModelLoadError(f"tensor '{t.name}' is defined twice (two initializers)")
            data = self.reader.read(t, f"initializer '{t.name}'")
            dt = ONNX_TO_DTYPE[t.data_type]
            v = graph.add_const(t.name, data, dt)
            if v.name != t.name:  # a name the graph had already claimed
                raise ModelLoadError(f"tensor '{t.name}' is defined twice")
            values[t.name] = v
        for vi in gp.input:
            if vi.name in values and vi.name in graph.constants:
                continue
            t = _tensor_type(vi.type, f"graph input '{vi.name}'")
            if t is None:
                raise ModelLoadError(f"graph input '{vi.name}' has no element type")
            define(graph.add_input(vi.name, t), "graph input")

        # Node outputs first, so that files out of topological order still resolve.
        const_nodes: list[NodeProto] = []
        pending: list[tuple[int, NodeProto, str, list[Value]]] = []
        for idx, n in enumerate(gp.node):
            label = _node_label(n, idx)
            domain = "" if n.domain in ("", "ai.onnx") else n.domain
            if n.op_type == "Constant" and domain == "":
                if len(n.output) != 1 or not n.output[0]:
                    raise ModelLoadError(f"{label}: a Constant has exactly one output")
                arr = self._constant_node_value(n, label)
                src = _provenance(n, {p.key: p.value for p in n.metadata_props})
                meta = {"src": src} if src else None
                name = n.output[0]
                if name in values:
                    raise ModelLoadError(f"tensor '{name}' is defined twice ({label})")
                v = graph.add_const(name, _readonly(arr), meta=meta)
                if v.name != name:
                    raise ModelLoadError(f"tensor '{name}' is defined twice ({label})")
                values[name] = v
                const_nodes.append(n)
                continue
            domain = self._check_op(n, idx, opsets)
            outs = list(n.output)
            while outs and not outs[-1]:
                outs.pop()
            made: list[Value] = []
            for k, oname in enumerate(outs):
                if not oname:  # an omitted output in the middle still needs a value
                    oname = graph.fresh_name(f"{n.name or n.op_type}_unused{k}")
                v = Value(oname, TensorType(DType.F32, None))
                v.graph = graph  # claimed below, so that node names never steal it
                graph._names.add(oname)
                define(v, label)
                made.append(v)
            pending.append((idx, n, domain, made))

        nodes: list[tuple[Node, NodeProto]] = []
        for idx, n, domain, made in pending:
            label = _node_label(n, idx)
            ins: list[Value | None] = []
            for iname in n.input:
                if not iname:
                    ins.append(None)
                    continue
                src_v = values.get(iname)
                if src_v is None:
                    raise ModelLoadError(f"{label} reads tensor '{iname}', which no node, input "
                                         "or initializer defines")
                ins.append(src_v)
            while ins and ins[-1] is None:
                ins.pop()
            attrs = {a.name: self._attr(a, label) for a in n.attribute}
            props = {p.key: p.value for p in n.metadata_props}
            meta = {"src": _provenance(n, props)}
            node = Node(n.op_type, ins, made, attrs, domain=domain, name=n.name,
                        placement=props.get("edgec.placement") or None, meta=meta)
            graph.insert(node)
            if node.name != n.name:
                # The IR shares one namespace between nodes and values (ONNX does not) and
                # renamed a clashing node; keep what the file called it.
                node.meta["onnx_name"] = n.name
            nodes.append((node, n))

        outputs: list[Value] = []
        for vi in gp.output:
            out_v = values.get(vi.name)
            if out_v is None:
                raise ModelLoadError(f"graph output '{vi.name}' is not produced by any node, "
                                     "input or initializer")
            outputs.append(out_v)
        graph.outputs = outputs

        self._sort(graph)

        # Types: inference on the sorted skeleton; declared output types as fallback.
        proto_of = {id(node): n for node, n in nodes}
        order = [proto_of[id(node)] for node in graph.nodes]
        types = self._infer(order, const_nodes)
        for vi in gp.output:
            if vi.name not in types and vi.type.WhichOneof("value") is not None:
                types[vi.name] = vi.type
        for node in graph.nodes:
            for k, o in enumerate(node.outputs):
                tp = types.get(o.name)
                t = _tensor_type(tp, f"tensor '{o.name}'") if tp is not None else None
                if t is None:
                    t = TensorType(_guess_dtype(graph, node, k), None)
                o.type = t

        fold_qdq(graph)
        for node in graph.nodes:
            if node.domain == "com.microsoft":
                raise UnsupportedOpError(
                    f"{node.label()}: com.microsoft.{node.op} does not fold into a "
                    "quantization encoding, and contrib ops are not supported otherwise")
        used = {n.domain for n in graph.nodes}
        for dom in sorted(used - {""}):
            graph.opset[dom] = opsets.get(dom, 1)
        graph.verify()
        return graph

    def _model_meta(self) -> dict[str, Any]:
        p = self.proto
        meta: dict[str, Any] = {}
        for key in ("producer_name", "producer_version", "domain", "doc_string"):
            val = getattr(p, key)
            if val:
                meta[key] = str(val)
        if p.graph.doc_string:
            meta["graph_doc_string"] = str(p.graph.doc_string)
        if len(p.metadata_props):
            meta["metadata_props"] = {str(e.key): str(e.value) for e in p.metadata_props}
        return meta

    @staticmethod
    def _sort(graph: Graph) -> None:
        from compiler.errors import VerifyError

        try:
            graph.sort()
        except VerifyError as e:
            raise ModelLoadError(f"the graph has a {e}") from None


def _guess_dtype(graph: Graph, node: Node, k: int) -> DType:
    """Output dtype when inference could not tell: from the op schema's type constraints."""
    first = next((v for v in node.inputs if v is not None), None)
    fallback = first.dtype if first is not None else DType.F32
    if node.op in ("QuantizeLinear", "DequantizeLinear") and node.domain in _QDQ_DOMAINS:
        # Also for the com.microsoft twins, which shape inference does not know.
        s, z = node.input(1), node.input(2)
        if node.op == "DequantizeLinear":
            return s.dtype if s is not None else DType.F32
        if z is not None:
            return z.dtype
        return ONNX_TO_DTYPE.get(int(node.attr("output_dtype", 0) or 0), DType.U8)
    if node.domain not in ("", "ai.onnx.ml"):
        return fallback
    sch: Any = op_schema(node.op, node.domain, graph.opset.get(node.domain, MAX_OPSET))
    if sch is None or not sch.outputs:
        return fallback
    ts = sch.outputs[min(k, len(sch.outputs) - 1)].type_str
    fixed = _parse_type_str(ts)
    if fixed is not None:
        return fixed
    for j, f in enumerate(sch.inputs):
        if f.type_str == ts:
            for i in range(j, len(node.inputs) if j == len(sch.inputs) - 1 else j + 1):
                v = node.input(i)
                if v is not None:
                    return v.dtype
    for c in sch.type_constraints:
        if c.type_param_str == ts and len(c.allowed_type_strs) == 1:
            return _parse_type_str(c.allowed_type_strs[0]) or fallback
    return fallback


# ---------------------------------------------------------------------------------------------
# Q/DQ folding


def _qdq_encoding(node: Node) -> QuantEncoding | None:
    """The encoding a QuantizeLinear/DequantizeLinear node applies, or None if not foldable."""
    x, s, z = node.input(0), node.input(1), node.input(2)
    if x is None or s is None or not s.is_const or (z is not None and not z.is_const):
        return None
    if node.op == "QuantizeLinear":
        if z is not None:
            qdt = z.dtype
        else:
            qdt = ONNX_TO_DTYPE.get(int(node.attr("output_dtype", 0) or TensorProto.UINT8),
                                    DType.F32)
    else:
        qdt = x.dtype
        if z is not None and z.dtype is not qdt:
            return None
    if qdt not in _QUANT_INT:
        return None
    scale = np.asarray(s.const, dtype=np.float32)
    zp = (np.asarray(z.const).astype(np.int64) if z is not None
          else np.zeros(scale.shape, dtype=np.int64))
    block = int(node.attr("block_size", 0) or 0)
    axis = int(node.attr("axis", 1))
    rank = x.type.rank
    try:
        if block > 0:
            if rank is None or not -rank <= axis < rank or zp.shape != scale.shape:
                return None
            return QuantEncoding(qdt.bits, qdt.is_signed, scale, zp, axis % rank, block)
        if scale.size == 1:
            if zp.size != 1:
                return None
            return QuantEncoding(qdt.bits, qdt.is_signed, scale.reshape(()), zp.reshape(()))
        if scale.ndim != 1 or zp.shape not in (scale.shape, ()):
            return None
        if rank is not None:
            if not -rank <= axis < rank:
                return None
            axis %= rank
            dim = x.shape[axis] if x.shape is not None else None
            if isinstance(dim, int) and dim != scale.size:
                return None
        return QuantEncoding(qdt.bits, qdt.is_signed, scale, zp, axis)
    except ValueError:  # zero/NaN scales, out-of-range zero points: leave the nodes explicit
        return None


def _is_qdq(node: Node, op: str) -> bool:
    return node.op == op and node.domain in _QDQ_DOMAINS


def _drop_if_unused(graph: Graph, vals: Iterable[Value | None]) -> None:
    for v in vals:
        if v is not None and v.is_const and not v.uses and not v.is_output \
                and graph.constants.get(v.name) is v:
            graph.remove_const(v)


def _rename(graph: Graph, v: Value, name: str) -> None:
    if v.name == name:
        return
    if graph.constants.get(v.name) is v:
        graph.constants = {(name if k == v.name else k): c for k, c in graph.constants.items()}
    v.name = name
    graph._names.add(name)


def fold_qdq(graph: Graph) -> int:
    """Fold QuantizeLinear/DequantizeLinear pairs into encodings; returns how many folded.

    - ``x -> Q -> DQ(s) -> y``: ``x`` (float) gets the encoding and every reader of ``y`` reads
      ``x``. It folds only when that changes nothing: every reader of ``x`` is such a Q with
      the same encoding, ``x`` is not a graph output, and the DQs match the Q. When ``y`` is a
      graph output, ``x`` takes its name so the model's interface keeps its names.
    - ``w_q (constant int) -> DQ -> y``: a new float constant holds ``dequantize(w_q)`` with
      the encoding (named like the weight: ``conv.weight_quantized`` gives ``conv.weight``
      when that name is free, else ``y``); ``meta["_qdata"]`` keeps ``(float array, encoding,
      w_q)`` so export writes the same integers back.
    """
    folded = 0
    for node in list(graph.nodes):
        if node.graph is not graph or node not in graph.nodes:
            continue
        if _is_qdq(node, "QuantizeLinear"):
            folded += _fold_activation(graph, node)
        elif _is_qdq(node, "DequantizeLinear"):
            folded += _fold_weight(graph, node)
    return folded


def _fold_activation(graph: Graph, q: Node) -> int:
    enc = _qdq_encoding(q)
    x, qo = q.input(0), q.outputs[0]
    if enc is None or x is None or not x.dtype.is_float or x.is_output or qo.is_output:
        return 0
    if x.encoding is not None and x.encoding != enc:
        return 0
    for u, i in x.uses:
        if u is not q and not (_is_qdq(u, "QuantizeLinear") and i == 0
                               and _qdq_encoding(u) == enc):
            return 0
    dqs = [u for u, _ in qo.uses]
    if not dqs:
        return 0
    for u, i in qo.uses:
        if not _is_qdq(u, "DequantizeLinear") or i != 0 or _qdq_encoding(u) != enc:
            return 0
        if u.outputs[0].dtype is not x.dtype:
            return 0
    outs = [d.outputs[0] for d in dqs if d.outputs[0].is_output]
    if len(outs) > 1 or (outs and x.is_input):
        return 0
    params = [v for n in (q, *dqs) for v in n.inputs[1:]]
    x.encoding = enc
    for d in dict.fromkeys(dqs):
        y = d.outputs[0]
        if x.shape is None and y.shape is not None:  # Q/DQ keep shapes; take what is known
            x.type = x.type.with_shape(y.shape)
        y.replace_all_uses_with(x)
        graph.remove_node(d)
    graph.remove_node(q)
    if outs:
        _rename(graph, x, outs[0].name)
    _drop_if_unused(graph, params)
    return 1


def _fold_weight(graph: Graph, dq: Node) -> int:
    w, y = dq.input(0), dq.outputs[0]
    if w is None or not w.is_const or not y.dtype.is_float:
        return 0
    enc = _qdq_encoding(dq)
    if enc is None:
        return 0
    q = np.asarray(w.const)
    data = _readonly(enc.dequantize(q).astype(y.dtype.numpy, copy=False))
    name = y.name
    if not y.is_output and w.name.endswith("_quantized"):
        stem = w.name[: -len("_quantized")]
        if stem and stem not in graph._names:
            name = stem
    c = Value(name, TensorType(y.dtype, tuple(int(d) for d in q.shape)), const=data,
              encoding=enc, meta={"_qdata": (data, enc, q)})
    c.graph = graph
    graph._names.add(name)
    params = list(dq.inputs)
    y.replace_all_uses_with(c)
    graph.remove_node(dq)
    graph.constants[name] = c
    _drop_if_unused(graph, params)
    return 1

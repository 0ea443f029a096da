"""The IR text form (printer). ``compiler.ir.parser.parse`` reads it back exactly.

::

    graph block(%x: f32[1,3,8,8]) -> (%y) opset(ai.onnx=17) {
      %w = const f32[4,3,3,3] #sha:0c1d2e3f4a5b6c7d {src="conv"}
      %b = const f32[4] = [0.0, 0.5, 1.0, 1.5]
      %c = Conv(%x, %w, %b) {pads=[1,1,1,1]} : f32[1,4,8,8] @htp {name="conv", src="conv"}
      %y = Relu(%c) : f32[1,4,8,8] !u8{scale=0.0213, zp=0} @htp
    }

- a type is ``dtype[dims]``; ``?`` is an unknown dim, a name is a symbol, ``[*]`` unknown rank;
- ``!`` introduces a quantization encoding;
- constants show shape and content hash; ``inline_limit`` inlines those with few elements;
- ``@target`` is the placement; the trailing ``{...}`` is provenance metadata (``name`` is the
  node's name); keys and attributes are printed sorted, so the text is canonical.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

import numpy as np

from compiler.ir.core import Graph, Node, UnresolvedConst, Value
from compiler.ir.encoding import QuantEncoding
from compiler.ir.types import DType, TensorType

__all__ = ["print_graph", "type_str", "encoding_str", "name_str", "format_float", "attr_str"]

_BARE = re.compile(r"^(?:[A-Za-z_][A-Za-z0-9_.\-/]*|\d+)$")


def name_str(name: str) -> str:
    """A value or graph name, quoted (JSON string) unless it is a plain identifier."""
    return name if _BARE.match(name) else json.dumps(name)


def format_float(x: float, dtype: DType = DType.F32) -> str:
    """Shortest text that reads back to the same value at ``dtype`` precision."""
    x = float(x)
    if math.isnan(x):
        return "nan"
    if math.isinf(x):
        return "inf" if x > 0 else "-inf"
    if dtype is DType.F64:
        s = repr(x)
    elif dtype is DType.F16:
        s = str(np.float16(x))
    else:
        s = str(np.float32(x))
    if not any(c in s for c in ".eEn"):
        s += ".0"
    return s


def type_str(t: TensorType) -> str:
    """``f32[1,3,?,n]``."""
    return str(t)


def _array_items(arr: np.ndarray, dtype: DType) -> str:
    flat = np.asarray(arr).reshape(-1)
    if dtype.is_float:
        fd = DType.F64 if dtype is DType.F64 else DType.F16 if dtype is DType.F16 else DType.F32
        items = [format_float(float(x), fd) for x in flat]
    elif dtype is DType.BOOL:
        items = ["true" if bool(x) else "false" for x in flat]
    else:
        items = [str(int(x)) for x in flat]
    return "[" + ", ".join(items) + "]"


def encoding_str(enc: QuantEncoding, inline_limit: int | None = None) -> str:
    """``u8{scale=0.02, zp=128}``, with ``axis``/``block`` for per-channel/per-block."""
    del inline_limit  # encodings are always printed in full: they are small metadata

    def arr(a: np.ndarray, dt: DType) -> str:
        if a.ndim == 0:
            return format_float(float(a)) if dt.is_float else str(int(a))
        shape = "" if a.ndim == 1 else "<" + ",".join(str(d) for d in a.shape) + ">"
        return shape + _array_items(a, dt)

    parts = [f"scale={arr(enc.scale, DType.F32)}", f"zp={arr(enc.zero_point, DType.I64)}"]
    if enc.axis is not None:
        parts.append(f"axis={enc.axis}")
    if enc.block_size is not None:
        parts.append(f"block={enc.block_size}")
    return f"{enc.dtype.value}{{{', '.join(parts)}}}"


def _meta_str(meta: dict[str, Any], name: str = "") -> str:
    items: list[tuple[str, Any]] = []
    if name:
        items.append(("name", name))
    for k in sorted(meta):
        if k.startswith("_") or k == "name":
            continue
        items.append((k, meta[k]))
    if not items:
        return ""
    body = ", ".join(f"{k}={json.dumps(v, sort_keys=True, default=str)}" for k, v in items)
    return " {" + body + "}"


def attr_str(v: Any) -> str:
    """One attribute value in IR text."""
    if isinstance(v, bool):
        return str(int(v))
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return format_float(v)
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, np.ndarray):
        dt = DType.from_numpy(v.dtype)
        return f"tensor<{dt.value}[{','.join(str(d) for d in v.shape)}]>{_array_items(v, dt)}"
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(attr_str(x) for x in v) + "]"
    raise TypeError(f"cannot print attribute value {v!r}")


def _value_type(v: Value) -> str:
    s = type_str(v.type)
    if v.encoding is not None:
        s += " !" + encoding_str(v.encoding)
    return s


def _const_line(v: Value, inline_limit: int) -> str:
    src = v.const_source
    n = v.type.numel or 0
    if not isinstance(src, UnresolvedConst) and n <= inline_limit:
        body = " = " + _array_items(np.asarray(v.const), v.dtype)
    else:
        body = f" #sha:{v.digest}"
    return f"%{name_str(v.name)} = const {_value_type(v)}{body}{_meta_str(v.meta)}"


def _node_line(n: Node) -> str:
    outs = ", ".join(f"%{name_str(o.name)}" for o in n.outputs)
    ins = ", ".join("_" if i is None else f"%{name_str(i.name)}" for i in n.inputs)
    op = f"{n.domain}.{n.op}" if n.domain else n.op
    s = f"{outs} = {op}({ins})"
    if n.attrs:
        s += " {" + ", ".join(f"{k}={attr_str(n.attrs[k])}" for k in sorted(n.attrs)) + "}"
    s += " : " + ", ".join(_value_type(o) for o in n.outputs)
    if n.placement:
        s += f" @{n.placement}"
    return s + _meta_str(n.meta, n.name)


def print_graph(graph: Graph, *, inline_limit: int = 1) -> str:
    """The canonical text of ``graph``. Constants with at most ``inline_limit`` elements are
    printed in full, larger ones by content hash."""
    ins = ", ".join(f"%{name_str(v.name)}: {_value_type(v)}" for v in graph.inputs)
    outs = ", ".join(f"%{name_str(v.name)}" for v in graph.outputs)
    opset = ", ".join(f"{d or 'ai.onnx'}={ver}" for d, ver in sorted(graph.opset.items()))
    lines = [f"graph {name_str(graph.name)}({ins}) -> ({outs}) opset({opset}) {{"]
    if graph.meta:
        lines.append("  meta" + _meta_str(graph.meta))
    for v in graph.constants.values():
        lines.append("  " + _const_line(v, inline_limit))
    for n in graph.nodes:
        lines.append("  " + _node_line(n))
    lines.append("}")
    return "\n".join(lines) + "\n"

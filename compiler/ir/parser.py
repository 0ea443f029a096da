"""Parser of the IR text form written by :mod:`compiler.ir.printer`.

``parse(print_graph(g))`` rebuilds ``g``; ``print_graph(parse(text)) == text`` for canonical
text. Constants printed by hash come back as :class:`~compiler.ir.core.UnresolvedConst` unless
their data is given in ``constants`` (keyed by value name or by hash).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

import numpy as np

from compiler.errors import ParseError
from compiler.ir.core import EDGEC_DOMAIN, Graph, Node, UnresolvedConst, Value
from compiler.ir.encoding import QuantEncoding
from compiler.ir.types import DType, TensorType

__all__ = ["parse"]

_TOKEN = re.compile(
    r"""
    (?P<ws>[ \t\r\n]+|//[^\n]*)
  | (?P<str>"(?:[^"\\]|\\.)*")
  | (?P<sha>\#sha:[0-9a-f]+)
  | (?P<arrow>->)
  | (?P<num>[-+]?(?:\d+\.\d*(?:[eE][-+]?\d+)?|\d+[eE][-+]?\d+
        |\.\d+(?:[eE][-+]?\d+)?|\d+)(?![A-Za-z_]))
  | (?P<word>[-+]?[A-Za-z_][A-Za-z0-9_.\-/]*)
  | (?P<punct>[%()\[\]{}<>=,:!@_?*])
    """,
    re.VERBOSE,
)


class _Tokens:
    def __init__(self, text: str) -> None:
        self.toks: list[tuple[str, str, int]] = []
        pos, line = 0, 1
        while pos < len(text):
            m = _TOKEN.match(text, pos)
            if m is None:
                raise ParseError(f"line {line}: unexpected character {text[pos]!r}")
            kind = m.lastgroup or ""
            val = m.group()
            if kind != "ws":
                if kind == "word" and val == "_":
                    kind = "punct"
                self.toks.append((kind, val, line))
            line += val.count("\n")
            pos = m.end()
        self.i = 0

    @property
    def line(self) -> int:
        return self.toks[min(self.i, len(self.toks) - 1)][2] if self.toks else 1

    def peek(self, k: int = 0) -> tuple[str, str]:
        j = self.i + k
        if j >= len(self.toks):
            return ("eof", "")
        return self.toks[j][0], self.toks[j][1]

    def next(self) -> tuple[str, str]:
        t = self.peek()
        if t[0] == "eof":
            raise ParseError(f"line {self.line}: unexpected end of text")
        self.i += 1
        return t

    def error(self, msg: str) -> ParseError:
        kind, val = self.peek()
        got = "end of text" if kind == "eof" else repr(val)
        return ParseError(f"line {self.line}: {msg}, got {got}")

    def expect(self, val: str) -> None:
        if self.peek()[1] != val:
            raise self.error(f"expected {val!r}")
        self.i += 1

    def accept(self, val: str) -> bool:
        if self.peek()[1] == val and self.peek()[0] in ("punct", "arrow", "word"):
            self.i += 1
            return True
        return False

    def name(self) -> str:
        kind, val = self.next()
        if kind == "str":
            return str(json.loads(val))
        if kind in ("word", "num") or (kind == "punct" and val == "_"):
            return val
        self.i -= 1
        raise self.error("expected a name")


def _float(tok: str) -> float:
    return float(tok)


class _Parser:
    def __init__(self, text: str, constants: Mapping[str, np.ndarray] | None) -> None:
        self.t = _Tokens(text)
        self.constants = constants or {}
        self.values: dict[str, Value] = {}
        self.graph = Graph()

    # -- pieces ------------------------------------------------------------------------------
    def value_ref(self) -> Value:
        self.t.expect("%")
        line = self.t.line
        name = self.t.name()
        v = self.values.get(name)
        if v is None:
            raise ParseError(f"line {line}: use of undefined value %{name}")
        return v

    def def_name(self) -> str:
        self.t.expect("%")
        line = self.t.line
        name = self.t.name()
        if name in self.values:
            raise ParseError(f"line {line}: value %{name} is defined twice")
        return name

    def dtype(self) -> DType:
        _, val = self.t.next()
        try:
            return DType.parse(val)
        except ValueError:
            self.t.i -= 1
            raise self.t.error("expected an element type") from None

    def type(self) -> TensorType:
        dt = self.dtype()
        self.t.expect("[")
        if self.t.accept("*"):
            self.t.expect("]")
            return TensorType(dt, None)
        dims: list[int | str | None] = []
        while not self.t.accept("]"):
            if dims:
                self.t.expect(",")
            kind, val = self.t.next()
            if val == "?":
                dims.append(None)
            elif kind == "num" and val.isdigit():
                dims.append(int(val))
            elif kind == "word":
                dims.append(val)
            else:
                self.t.i -= 1
                raise self.t.error("expected a dimension")
        return TensorType(dt, tuple(dims))

    def scalar(self, dt: DType) -> Any:
        kind, val = self.t.next()
        if dt is DType.BOOL:
            if val not in ("true", "false"):
                self.t.i -= 1
                raise self.t.error("expected true or false")
            return val == "true"
        if dt.is_float:
            if kind == "num" or val in ("nan", "inf", "-inf"):
                return _float(val)
        elif kind == "num" and re.fullmatch(r"[-+]?\d+", val):
            return int(val)
        self.t.i -= 1
        raise self.t.error(f"expected a {dt.value} number")

    def number_list(self, dt: DType) -> list[Any]:
        self.t.expect("[")
        items: list[Any] = []
        while not self.t.accept("]"):
            if items:
                self.t.expect(",")
            items.append(self.scalar(dt))
        return items

    def enc_array(self, dt: DType) -> np.ndarray:
        shape: list[Any] | None = None
        if self.t.accept("<"):
            shape = []
            while not self.t.accept(">"):
                if shape:
                    self.t.expect(",")
                shape.append(int(self.t.next()[1]))
        if self.t.peek()[1] == "[":
            arr = np.array(self.number_list(dt), dtype=dt.numpy)
            return arr.reshape(shape) if shape is not None else arr
        return np.array(self.scalar(dt), dtype=dt.numpy)

    def encoding(self) -> QuantEncoding:
        dt = self.dtype()
        self.t.expect("{")
        fields: dict[str, Any] = {}
        while not self.t.accept("}"):
            if fields:
                self.t.expect(",")
            key = self.t.name()
            self.t.expect("=")
            if key == "scale":
                fields[key] = self.enc_array(DType.F32)
            elif key == "zp":
                fields[key] = self.enc_array(DType.I64)
            elif key in ("axis", "block"):
                fields[key] = self.scalar(DType.I64)
            else:
                raise self.t.error(f"unknown encoding field {key!r}")
        if not dt.is_int or dt.bits not in (4, 8, 16, 32):
            raise self.t.error(f"{dt.value} is not a quantized type")
        try:
            return QuantEncoding(dt.bits, dt.is_signed, fields.get("scale", 1.0),
                                 fields.get("zp", 0), fields.get("axis"), fields.get("block"))
        except ValueError as e:
            raise ParseError(f"line {self.t.line}: bad encoding: {e}") from None

    def typed(self) -> tuple[TensorType, QuantEncoding | None]:
        t = self.type()
        enc = self.encoding() if self.t.accept("!") else None
        return t, enc

    def json_value(self) -> Any:
        # Metadata values are JSON; collect the raw tokens of one JSON value.
        kind, val = self.t.next()
        if kind == "str":
            return json.loads(val)
        if kind == "num":
            return json.loads(val)
        if val in ("true", "false", "null"):
            return json.loads(val)
        if val in ("[", "{"):
            close = "]" if val == "[" else "}"
            out: Any = [] if val == "[" else {}
            first = True
            while not self.t.accept(close):
                if not first:
                    self.t.expect(",")
                first = False
                if isinstance(out, list):
                    out.append(self.json_value())
                else:
                    k = self.t.name()
                    self.t.expect(":")
                    out[k] = self.json_value()
            return out
        self.t.i -= 1
        raise self.t.error("expected a metadata value")

    def meta(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if not self.t.accept("{"):
            return out
        while not self.t.accept("}"):
            if out:
                self.t.expect(",")
            key = self.t.name()
            self.t.expect("=")
            out[key] = self.json_value()
        return out

    def attr_value(self) -> Any:
        kind, val = self.t.peek()
        if kind == "str":
            self.t.next()
            return json.loads(val)
        if kind == "num" or val in ("nan", "inf", "-inf"):
            self.t.next()
            if re.fullmatch(r"[-+]?\d+", val):
                return int(val)
            return float(np.float32(val))
        if val == "tensor":
            self.t.next()
            self.t.expect("<")
            tt = self.type()
            self.t.expect(">")
            numbers = self.number_list(tt.dtype)
            shape = tuple(d for d in (tt.shape or ()) if isinstance(d, int))
            return np.array(numbers, dtype=tt.dtype.numpy).reshape(shape)
        if val == "[":
            self.t.next()
            items: list[Any] = []
            while not self.t.accept("]"):
                if items:
                    self.t.expect(",")
                items.append(self.attr_value())
            if any(isinstance(x, float) for x in items):
                items = [float(np.float32(x)) for x in items]
            return items
        raise self.t.error("expected an attribute value")

    # -- statements --------------------------------------------------------------------------
    def header(self) -> None:
        t = self.t
        if t.peek()[1] != "graph":
            raise t.error("expected 'graph'")
        t.next()
        self.graph.name = t.name()
        t.expect("(")
        while not t.accept(")"):
            if self.graph.inputs:
                t.expect(",")
            name = self.def_name()
            t.expect(":")
            ty, enc = self.typed()
            v = self.graph.add_input(name, ty, enc)
            self.values[name] = v
        t.expect("->")
        t.expect("(")
        self.out_names: list[tuple[str, int]] = []
        while not t.accept(")"):
            if self.out_names:
                t.expect(",")
            t.expect("%")
            self.out_names.append((t.name(), t.line))
        opset: dict[str, int] = {}
        if t.accept("opset"):
            t.expect("(")
            while not t.accept(")"):
                if opset:
                    t.expect(",")
                dom = t.name()
                t.expect("=")
                opset["" if dom == "ai.onnx" else dom] = int(t.next()[1])
        self.graph.opset = opset or {"": 17}
        t.expect("{")

    def const_stmt(self, name: str) -> None:
        ty, enc = self.typed()
        if ty.shape is None or not all(isinstance(d, int) for d in ty.shape):
            raise self.t.error(f"constant %{name} needs a static shape")
        shape = tuple(int(d) for d in ty.shape)  # type: ignore[arg-type]
        kind, val = self.t.peek()
        data: np.ndarray | UnresolvedConst
        if kind == "sha":
            self.t.next()
            digest = val[len("#sha:"):]
            given = self.constants.get(name, self.constants.get(digest))
            if given is not None:
                data = np.asarray(given)
            else:
                data = UnresolvedConst(digest, ty.dtype, shape)
        elif self.t.accept("="):
            items = self.number_list(ty.dtype)
            n = int(np.prod(shape)) if shape else 1
            if len(items) != n:
                raise ParseError(f"line {self.t.line}: constant %{name} has {len(items)} "
                                 f"values for shape {list(shape)}")
            data = np.array(items, dtype=ty.dtype.numpy).reshape(shape)
        else:
            raise self.t.error("expected '#sha:' or '=' after the constant's type")
        meta = self.meta()
        v = self.graph.add_const(name, data, ty.dtype, encoding=enc, meta=meta)
        self.values[name] = v

    def node_stmt(self, names: list[str]) -> None:
        t = self.t
        line = t.line
        opname = t.name()
        domain, _, op = opname.rpartition(".")
        t.expect("(")
        ins: list[Value | None] = []
        while not t.accept(")"):
            if ins:
                t.expect(",")
            if t.accept("_"):
                ins.append(None)
            else:
                ins.append(self.value_ref())
        attrs: dict[str, Any] = {}
        if t.peek()[1] == "{":
            t.next()
            while not t.accept("}"):
                if attrs:
                    t.expect(",")
                k = t.name()
                t.expect("=")
                attrs[k] = self.attr_value()
        t.expect(":")
        outs: list[Value] = []
        for i, nm in enumerate(names):
            if i:
                t.expect(",")
            ty, enc = self.typed()
            outs.append(Value(nm, ty, encoding=enc))
        placement = None
        if t.accept("@"):
            placement = t.name()
        meta = self.meta()
        node_name = str(meta.pop("name", ""))
        if domain == "" and op != opname:
            raise ParseError(f"line {line}: bad op name {opname!r}")
        node = Node(op, ins, outs, attrs, domain=domain, name=node_name, placement=placement,
                    meta=meta)
        self.graph.insert(node)
        for o in outs:
            self.values[o.name] = o

    def body(self) -> None:
        t = self.t
        while not t.accept("}"):
            if t.peek()[1] == "meta":
                t.next()
                self.graph.meta = self.meta()
                continue
            names = [self.def_name()]
            while t.accept(","):
                names.append(self.def_name())
            t.expect("=")
            if t.peek() == ("word", "const"):
                t.next()
                if len(names) != 1:
                    raise t.error("a constant defines one value")
                self.const_stmt(names[0])
            else:
                self.node_stmt(names)
        if t.peek()[0] != "eof":
            raise t.error("expected end of text after the graph")
        for name, line in self.out_names:
            v = self.values.get(name)
            if v is None:
                raise ParseError(f"line {line}: graph output %{name} is never defined")
            self.graph.outputs.append(v)

    def parse(self) -> Graph:
        self.header()
        self.body()
        if EDGEC_DOMAIN in {n.domain for n in self.graph.nodes}:
            self.graph.opset.setdefault(EDGEC_DOMAIN, 1)
        return self.graph


def parse(text: str, constants: Mapping[str, np.ndarray] | None = None) -> Graph:
    """Parse IR text into a ``Graph``. Raises ``ParseError`` with the line on bad text.

    ``constants`` supplies data for constants printed by hash (keyed by value name or hash).
    The result is not verified: call ``graph.verify()`` for semantic checks.
    """
    return _Parser(text, constants).parse()

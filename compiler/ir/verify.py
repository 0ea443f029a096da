"""The IR verifier: every structural, type and attribute invariant, each error naming the node.

Operator schemas for the ONNX vocabulary come from ``onnx.defs`` (the C++ schema registry, no
protobuf), looked up lazily so that the IR itself stays free of ONNX model handling. edgec's
own operators register a small schema with :func:`register_edgec_op`.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from compiler.errors import NumericsError, VerifyError
from compiler.ir.core import EDGEC_DOMAIN, Graph, Node, Value
from compiler.ir.types import Dim, DType, Shape

__all__ = ["verify", "topological_order", "register_edgec_op", "EdgecOpSchema", "op_schema",
           "broadcast_shapes", "check_finite"]


@dataclass(frozen=True)
class EdgecOpSchema:
    """Schema of an ``edgec``-domain op: input/output arity, attributes, and a reference.

    ``reference`` documents how the CPU reference runs it (the ONNX lowering function that
    ``compiler.reference`` applies); ``attrs`` maps attribute names to python types.
    """

    name: str
    min_inputs: int
    max_inputs: int
    num_outputs: int
    attrs: dict[str, type]
    doc: str
    lower: Callable[[Graph, Node], None] | None = None


_EDGEC_OPS: dict[str, EdgecOpSchema] = {}


def register_edgec_op(schema: EdgecOpSchema) -> EdgecOpSchema:
    """Register (or replace) the schema of an ``edgec``-domain op."""
    _EDGEC_OPS[schema.name] = schema
    return schema


def edgec_op(name: str) -> EdgecOpSchema | None:
    """The registered schema of ``edgec.<name>``."""
    return _EDGEC_OPS.get(name)


@functools.lru_cache(maxsize=4096)
def op_schema(op: str, domain: str, version: int) -> object | None:
    """The ``onnx.defs.OpSchema`` of ``domain.op`` at opset ``version``, or None."""
    import onnx.defs

    try:
        return onnx.defs.get_schema(op, version, domain)
    except Exception:  # onnx raises SchemaError (a RuntimeError subclass) when unknown
        return None


def topological_order(graph: Graph) -> list[Node]:
    """Nodes in a dependency order, stable with respect to the current order.

    Raises ``VerifyError`` naming a node on a cycle.
    """
    nodes = list(graph.nodes)
    index = {id(n): i for i, n in enumerate(nodes)}
    indeg = [0] * len(nodes)
    succ: list[list[int]] = [[] for _ in nodes]
    for i, n in enumerate(nodes):
        preds = set()
        for v in n.inputs:
            if v is not None and v.producer is not None and id(v.producer) in index:
                preds.add(index[id(v.producer)])
        for p in preds:
            succ[p].append(i)
            indeg[i] += 1
    import heapq

    ready = [i for i in range(len(nodes)) if indeg[i] == 0]
    heapq.heapify(ready)
    out: list[Node] = []
    while ready:
        i = heapq.heappop(ready)
        out.append(nodes[i])
        for s in succ[i]:
            indeg[s] -= 1
            if indeg[s] == 0:
                heapq.heappush(ready, s)
    if len(out) != len(nodes):
        # A stuck node may merely sit downstream of a cycle; every stuck node has a stuck
        # predecessor, so walking predecessors must revisit a node, and that one is on it.
        stuck = next(i for i in range(len(nodes)) if indeg[i] > 0)
        seen: set[int] = set()
        while stuck not in seen:
            seen.add(stuck)
            stuck = next(index[id(v.producer)] for v in nodes[stuck].inputs
                         if v is not None and v.producer is not None
                         and id(v.producer) in index and indeg[index[id(v.producer)]] > 0)
        raise VerifyError(f"cycle through node {nodes[stuck].label()}")
    return out


def broadcast_shapes(a: Shape, b: Shape) -> Shape | None:
    """Numpy-style broadcast of two shapes with symbolic dims; None when incompatible."""
    out: list[Dim] = []
    for i in range(max(len(a), len(b))):
        x = a[len(a) - 1 - i] if i < len(a) else 1
        y = b[len(b) - 1 - i] if i < len(b) else 1
        if x == 1:
            out.append(y)
        elif y == 1 or x == y:
            out.append(x)
        elif isinstance(x, int) and isinstance(y, int):
            return None
        else:
            out.append(x if isinstance(x, int) else y if isinstance(y, int) else x)
    return tuple(reversed(out))


_BROADCAST_OPS = {"Add", "Sub", "Mul", "Div", "Pow", "Max", "Min", "Equal", "Less", "Greater",
                  "LessOrEqual", "GreaterOrEqual", "And", "Or", "Xor", "Where", "PRelu", "Mod"}

# attribute python types against onnx AttrType names
_ATTR_KINDS: dict[str, tuple[type, ...]] = {
    "INT": (int,), "FLOAT": (float, int), "STRING": (str,), "INTS": (list,),
    "FLOATS": (list,), "STRINGS": (list,), "TENSOR": (np.ndarray,),
}


def _fail(node: Node | None, msg: str) -> VerifyError:
    where = f"node {node.label()}" if node is not None else "graph"
    return VerifyError(f"{where}: {msg}")


def verify(graph: Graph) -> None:
    """Check SSA, order, uses, outputs, op schemas, attributes, types and shapes."""
    defined: dict[str, Value] = {}

    def define(v: Value, node: Node | None) -> None:
        if v.name in defined:
            raise _fail(node, f"value %{v.name} is defined twice")
        defined[v.name] = v

    for gi in graph.inputs:
        if gi.producer is not None:
            raise _fail(None, f"graph input %{gi.name} has a producer")
        define(gi, None)
    for name, c in graph.constants.items():
        if name != c.name:
            raise _fail(None, f"constant registered as {name!r} is named %{c.name}")
        if not c.is_const:
            raise _fail(None, f"%{c.name} is registered as a constant but has no data")
        define(c, None)

    all_nodes = list(graph.nodes)
    node_set = {id(n) for n in all_nodes}
    position = {id(n): i for i, n in enumerate(all_nodes)}
    for n in all_nodes:
        for i, v in enumerate(n.inputs):
            if v is None:
                continue
            if v.producer is not None and id(v.producer) in node_set:
                if position[id(v.producer)] >= position[id(n)]:
                    topological_order(graph)  # raises with the cycle when there is one
                    raise _fail(n, f"input %{v.name} is defined by a later node "
                                   f"{v.producer.label()} (nodes out of topological order)")
            elif defined.get(v.name) is not v:
                raise _fail(n, f"input {i} uses %{v.name}, which is not defined in the graph")
            if not any(u is n and j == i for u, j in v.uses):
                raise _fail(n, f"use list of %{v.name} misses input {i}")
        for k, o in enumerate(n.outputs):
            if o.producer is not n or o.index != k:
                raise _fail(n, f"output %{o.name} does not point back at its producer")
            define(o, n)
    for v in defined.values():
        for u, j in v.uses:
            if id(u) not in node_set or u.input(j) is not v:
                raise _fail(None, f"%{v.name} lists a use by {u.label()} that does not exist")
    seen_out = set()
    for o in graph.outputs:
        if defined.get(o.name) is not o:
            raise _fail(None, f"graph output %{o.name} is not produced by any node, input or "
                              "constant of the graph")
        seen_out.add(o.name)
    for v in defined.values():
        if v.encoding is not None:
            _check_encoding(v)
    for n in all_nodes:
        _check_node(graph, n)


def _check_encoding(v: Value) -> None:
    enc = v.encoding
    assert enc is not None
    if enc.axis is None:
        return
    rank = v.type.rank
    if rank is None:
        return
    if not -rank <= enc.axis < rank:
        raise VerifyError(f"value %{v.name}: encoding axis {enc.axis} out of range for rank {rank}")
    if enc.block_size is None and v.shape is not None:
        d = v.shape[enc.axis]
        if isinstance(d, int) and enc.scale.shape != (d,):
            raise VerifyError(f"value %{v.name}: per-channel encoding has {enc.scale.size} scales "
                              f"for {d} channels on axis {enc.axis}")


def _check_node(graph: Graph, n: Node) -> None:
    if n.domain == EDGEC_DOMAIN:
        sch = _EDGEC_OPS.get(n.op)
        if sch is None:
            raise _fail(n, f"unknown op {n.qualified_op}")
        _check_arity(n, sch.min_inputs, sch.max_inputs, sch.num_outputs, sch.num_outputs)
        for k, val in n.attrs.items():
            want = sch.attrs.get(k)
            if want is None:
                raise _fail(n, f"unknown attribute {k!r}")
            if not isinstance(val, want):
                raise _fail(n, f"attribute {k!r} must be {want.__name__}, got {val!r}")
        return
    version = graph.opset.get(n.domain)
    if version is None:
        raise _fail(n, f"domain {n.domain!r} is not imported by the graph")
    onnx_sch: Any = op_schema(n.op, n.domain, version)
    if onnx_sch is None:
        raise _fail(n, f"unknown op {n.qualified_op} at opset {version}")
    _check_arity(n, onnx_sch.min_input, onnx_sch.max_input, onnx_sch.min_output,
                 onnx_sch.max_output)
    _check_attrs(n, onnx_sch)
    _check_types(n, onnx_sch)
    _check_shapes(n)


def _check_arity(n: Node, lo: int, hi: int, olo: int, ohi: int) -> None:
    ni = len(n.inputs)
    while ni and n.inputs[ni - 1] is None:
        ni -= 1
    if not lo <= ni <= hi:
        raise _fail(n, f"takes {lo}..{hi} inputs, has {ni}")
    if not olo <= len(n.outputs) <= ohi:
        raise _fail(n, f"has {len(n.outputs)} outputs, expected {olo}..{ohi}")


def _check_attrs(n: Node, sch: object) -> None:
    attrs = sch.attributes  # type: ignore[attr-defined]
    for k, val in n.attrs.items():
        a = attrs.get(k)
        if a is None:
            raise _fail(n, f"unknown attribute {k!r}")
        if a.type.name in ("GRAPH", "GRAPHS"):
            continue
        kinds = _ATTR_KINDS.get(a.type.name)
        if kinds is not None and (not isinstance(val, kinds) or isinstance(val, bool)):
            raise _fail(n, f"attribute {k!r} must be {a.type.name.lower()}, got {val!r}")
        if a.type.name in ("INTS", "FLOATS", "STRINGS"):
            elem: Any = {
                "INTS": int, "FLOATS": (float, int), "STRINGS": str
            }[a.type.name]
            if not all(isinstance(x, elem) and not isinstance(x, bool) for x in val):
                raise _fail(n, f"attribute {k!r} must be {a.type.name.lower()}, got {val!r}")
    for k, a in attrs.items():
        if a.required and k not in n.attrs:
            raise _fail(n, f"missing required attribute {k!r}")


def _check_types(n: Node, sch: object) -> None:
    formal_in = sch.inputs  # type: ignore[attr-defined]
    formal_out = sch.outputs  # type: ignore[attr-defined]
    bound: dict[str, tuple[DType, str]] = {}

    def bind(type_str: str, v: Value | None, what: str) -> None:
        if v is None or type_str.startswith("tensor(") or type_str.startswith("seq"):
            return
        prev = bound.get(type_str)
        if prev is None:
            bound[type_str] = (v.dtype, what)
        elif prev[0] is not v.dtype:
            raise _fail(n, f"{what} %{v.name} is {v.dtype.value} but {prev[1]} is "
                           f"{prev[0].value} (both are type {type_str})")

    for i, v in enumerate(n.inputs):
        if not formal_in:
            break
        f = formal_in[min(i, len(formal_in) - 1)]
        bind(f.type_str, v, f"input {i}")
    for i, v in enumerate(n.outputs):
        if not formal_out:
            break
        f = formal_out[min(i, len(formal_out) - 1)]
        bind(f.type_str, v, f"output {i}")


def _check_shapes(n: Node) -> None:
    op = n.op
    if op in _BROADCAST_OPS:
        shapes = [v.shape for v in n.inputs if v is not None]
        if all(s is not None for s in shapes) and shapes:
            acc: Shape | None = shapes[0]
            for s in shapes[1:]:
                acc = broadcast_shapes(acc, s) if acc is not None else None  # type: ignore[arg-type]
                if acc is None:
                    dims = " and ".join(str(list(x)) for x in shapes)  # type: ignore[arg-type]
                    raise _fail(n, f"input shapes {dims} do not broadcast")
    elif op == "MatMul":
        a, b = n.inputs[0], n.inputs[1]
        if a and b and a.shape and b.shape and len(a.shape) >= 1 and len(b.shape) >= 1:
            k1 = a.shape[-1]
            k2 = b.shape[-2] if len(b.shape) >= 2 else b.shape[0]
            if isinstance(k1, int) and isinstance(k2, int) and k1 != k2:
                raise _fail(n, f"inner dimensions differ: {list(a.shape)} @ {list(b.shape)}")
    elif op == "Conv":
        x, w = n.inputs[0], n.inputs[1]
        if x and w and x.shape and w.shape and len(x.shape) >= 2 and len(w.shape) >= 2:
            c, wc = x.shape[1], w.shape[1]
            g = n.attrs.get("group", 1)
            if isinstance(c, int) and isinstance(wc, int) and c != wc * g:
                raise _fail(n, f"input has {c} channels but weight expects {wc} x group {g}")


def check_finite(graph: Graph, *, chunk: int = 1 << 22, allow_inf: bool = False) -> None:
    """Raise ``NumericsError`` naming the first constant (or tensor attribute) with NaN/Inf
    (NaN only with ``allow_inf``: an infinite mask constant is legitimate, a NaN never is).

    Large constants are scanned in chunks so that memory-mapped weights are not copied whole.
    """

    def scan(arr: np.ndarray, what: str) -> None:
        flat = np.asarray(arr).reshape(-1)
        for start in range(0, flat.size, chunk):
            part = flat[start:start + chunk].astype(np.float32, copy=False)
            ok = ~np.isnan(part) if allow_inf else np.isfinite(part)
            if not ok.all():
                bad = int(np.argmin(ok))
                count = int(part.size - ok.sum())
                raise NumericsError(
                    f"{what} has non-finite values ({count} in elements {start}.."
                    f"{start + part.size - 1}; first at flat index {start + bad}: "
                    f"{float(part[bad])})")

    for v in graph.constants.values():
        if v.dtype.is_float:
            scan(v.const, f"constant %{v.name}")  # type: ignore[arg-type]
    for n in graph.nodes:
        for k, a in n.attrs.items():
            if isinstance(a, np.ndarray) and np.issubdtype(a.dtype, np.floating):
                scan(a, f"attribute '{k}' of {n.label()}")

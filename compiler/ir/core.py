"""The IR core: ``Value``, ``Node`` and ``Graph``.

These classes know nothing of ONNX protobuf, torch or QNN. The operator vocabulary is ONNX's
(domain ``""``) so that the CPU reference can run any state; edgec's own operators live in the
``edgec`` domain.

Invariants the mutation API keeps (and ``verify`` checks):
- every value has exactly one definition: a graph input, a constant, or one node output;
- ``value.uses`` lists every ``(node, input_index)`` that reads it, in insertion order;
- the node list can be mutated while it is iterated (see :class:`NodeList`).
"""

from __future__ import annotations

import hashlib
import itertools
import mmap
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from compiler.ir.encoding import QuantEncoding
from compiler.ir.types import DType, Shape, TensorType

__all__ = [
    "Value",
    "Node",
    "Graph",
    "NodeList",
    "ExternalArray",
    "UnresolvedConst",
    "AttrValue",
    "EDGEC_DOMAIN",
    "const_hash",
]

EDGEC_DOMAIN = "edgec"

AttrValue = Any  # int | float | str | list[int] | list[float] | list[str] | np.ndarray


@dataclass(frozen=True)
class ExternalArray:
    """A constant whose bytes live in a file, memory-mapped on first use.

    The location has been validated by whoever built it (the ONNX frontend refuses paths that
    leave the model folder, absolute paths, symlinks and out-of-range offsets); ``load`` maps
    only ``[offset, offset + length)`` read-only, so nothing is copied.
    """

    path: Path
    offset: int
    length: int
    dtype: DType
    shape: tuple[int, ...]

    def load(self) -> np.ndarray:
        """Map the bytes and return a read-only array of ``shape`` (no copy)."""
        np_dtype = self.dtype.numpy
        if self.length == 0:
            return np.zeros(self.shape, dtype=np_dtype)
        with open(self.path, "rb") as f:
            page = mmap.ALLOCATIONGRANULARITY
            start = (self.offset // page) * page
            mm = mmap.mmap(f.fileno(), self.length + self.offset - start, access=mmap.ACCESS_READ,
                           offset=start)
        arr = np.frombuffer(mm, dtype=np_dtype, count=self.length // np_dtype.itemsize,
                            offset=self.offset - start)
        return arr.reshape(self.shape)


@dataclass(frozen=True)
class UnresolvedConst:
    """A constant known only by its content hash (parsed from IR text without its data)."""

    digest: str
    dtype: DType
    shape: tuple[int, ...]


def const_hash(arr: np.ndarray) -> str:
    """Content hash of a constant: 16 hex digits of sha256 over dtype, shape and bytes."""
    h = hashlib.sha256()
    h.update(str(arr.dtype).encode())
    h.update(repr(tuple(arr.shape)).encode())
    h.update(np.ascontiguousarray(arr).tobytes())
    return h.hexdigest()[:16]


class Value:
    """One SSA value: a graph input, a constant, or one output of one node."""

    __slots__ = (
        "__weakref__",
        "_const",
        "_digest",
        "encoding",
        "graph",
        "index",
        "meta",
        "name",
        "producer",
        "type",
        "uses",
    )

    def __init__(
        self,
        name: str,
        type: TensorType,
        *,
        const: np.ndarray | ExternalArray | UnresolvedConst | None = None,
        encoding: QuantEncoding | None = None,
        meta: dict[str, Any] | None = None,
    ) -> None:
        self.name = name
        self.type = type
        self.producer: Node | None = None
        self.index = 0
        self.uses: list[tuple[Node, int]] = []
        self._const = const
        self._digest: str | None = None
        self.encoding = encoding
        self.meta: dict[str, Any] = dict(meta or {})
        self.graph: Graph | None = None

    # -- constants ---------------------------------------------------------------------------
    @property
    def is_const(self) -> bool:
        """True for constant (initializer) values."""
        return self._const is not None

    @property
    def const(self) -> np.ndarray | None:
        """The constant's data (memory-mapped on first access for external data)."""
        c = self._const
        if c is None or isinstance(c, np.ndarray):
            return c
        if isinstance(c, ExternalArray):
            arr = c.load()
            self._const = arr
            return arr
        raise ValueError(f"constant %{self.name} is known only by hash #{c.digest}: its data "
                         "was not given to the parser")

    @const.setter
    def const(self, arr: np.ndarray | None) -> None:
        self._const = arr
        self._digest = None

    @property
    def const_source(self) -> np.ndarray | ExternalArray | UnresolvedConst | None:
        """The constant without loading it."""
        return self._const

    @property
    def digest(self) -> str:
        """Content hash of the constant (cached)."""
        if self._digest is None:
            c = self._const
            if isinstance(c, UnresolvedConst):
                self._digest = c.digest
            else:
                arr = self.const
                if arr is None:
                    raise ValueError(f"%{self.name} is not a constant")
                self._digest = const_hash(arr)
        return self._digest

    # -- structure ---------------------------------------------------------------------------
    @property
    def is_input(self) -> bool:
        """True when this value is one of its graph's inputs."""
        return self.graph is not None and self in self.graph.inputs

    @property
    def is_output(self) -> bool:
        """True when this value is one of its graph's outputs."""
        return self.graph is not None and any(o is self for o in self.graph.outputs)

    @property
    def dtype(self) -> DType:
        """Shortcut for ``type.dtype``."""
        return self.type.dtype

    @property
    def shape(self) -> Shape | None:
        """Shortcut for ``type.shape``."""
        return self.type.shape

    def consumers(self) -> list[Node]:
        """Distinct nodes that read this value, in use order."""
        seen: dict[int, Node] = {}
        for n, _ in self.uses:
            seen.setdefault(id(n), n)
        return list(seen.values())

    def replace_all_uses_with(self, new: Value) -> None:
        """Make every reader of this value (and graph outputs) read ``new`` instead."""
        if new is self:
            return
        for node, i in list(self.uses):
            node.set_input(i, new)
        g = self.graph
        if g is not None:
            g.outputs = [new if o is self else o for o in g.outputs]

    def __repr__(self) -> str:
        return f"%{self.name}: {self.type}"


class Node:
    """One operation. ``inputs`` may hold ``None`` for omitted optional inputs."""

    __slots__ = (
        "__weakref__",
        "_erased",
        "_inputs",
        "_next",
        "_prev",
        "attrs",
        "domain",
        "graph",
        "meta",
        "name",
        "op",
        "outputs",
        "placement",
    )

    def __init__(
        self,
        op: str,
        inputs: Sequence[Value | None],
        outputs: Sequence[Value],
        attrs: dict[str, AttrValue] | None = None,
        *,
        domain: str = "",
        name: str = "",
        placement: str | None = None,
        meta: dict[str, Any] | None = None,
    ) -> None:
        self.op = op
        self.domain = domain
        self._inputs: list[Value | None] = []
        self.outputs: list[Value] = []
        self.attrs: dict[str, AttrValue] = dict(attrs or {})
        self.placement = placement
        self.meta: dict[str, Any] = dict(meta or {})
        self.name = name
        self.graph: Graph | None = None
        self._prev: Node | None = None
        self._next: Node | None = None
        self._erased = False
        for v in inputs:
            self._append_input(v)
        for i, out in enumerate(outputs):
            if out.producer is not None:
                raise ValueError(f"value %{out.name} already has a producer")
            out.producer = self
            out.index = i
            self.outputs.append(out)

    @property
    def inputs(self) -> tuple[Value | None, ...]:
        """Input values (read-only view; mutate with ``set_input``/``set_inputs``)."""
        return tuple(self._inputs)

    @property
    def qualified_op(self) -> str:
        """``domain.op`` or just ``op`` in the default domain."""
        return f"{self.domain}.{self.op}" if self.domain else self.op

    def _append_input(self, v: Value | None) -> None:
        i = len(self._inputs)
        self._inputs.append(v)
        if v is not None:
            v.uses.append((self, i))

    def _drop_use(self, i: int) -> None:
        v = self._inputs[i]
        if v is not None:
            for k, (n, j) in enumerate(v.uses):
                if n is self and j == i:
                    del v.uses[k]
                    break

    def set_input(self, i: int, v: Value | None) -> None:
        """Replace input ``i`` keeping use lists right."""
        self._drop_use(i)
        self._inputs[i] = v
        if v is not None:
            v.uses.append((self, i))

    def set_inputs(self, values: Sequence[Value | None]) -> None:
        """Replace all inputs."""
        for i in range(len(self._inputs)):
            self._drop_use(i)
        self._inputs = []
        for v in values:
            self._append_input(v)

    def input(self, i: int) -> Value | None:
        """Input ``i`` or None when omitted or out of range."""
        return self._inputs[i] if i < len(self._inputs) else None

    def attr(self, name: str, default: AttrValue = None) -> AttrValue:
        """Attribute ``name`` or ``default``."""
        return self.attrs.get(name, default)

    @property
    def src(self) -> str:
        """Source module path (provenance), or ``""``."""
        return str(self.meta.get("src", ""))

    def label(self) -> str:
        """A short human name for errors: ``Conv 'conv1' (%y)``."""
        outs = ", ".join(f"%{o.name}" for o in self.outputs)
        nm = f" '{self.name}'" if self.name else ""
        return f"{self.qualified_op}{nm} ({outs})"

    def __repr__(self) -> str:
        return f"<Node {self.label()}>"


class NodeList:
    """An ordered set of nodes that stays correct while it is mutated during iteration.

    A doubly linked list: removing a node marks it erased and keeps its forward link, so an
    iterator standing on it continues with the next live node; nodes inserted after the
    iterator's position are visited.
    """

    __slots__ = ("_head", "_len", "_tail")

    def __init__(self) -> None:
        self._head: Node | None = None
        self._tail: Node | None = None
        self._len = 0

    def __len__(self) -> int:
        return self._len

    def __iter__(self) -> Iterator[Node]:
        n = self._head
        while n is not None:
            if not n._erased:
                yield n
            n = n._next

    def __reversed__(self) -> Iterator[Node]:
        n = self._tail
        while n is not None:
            if not n._erased:
                yield n
            n = n._prev

    def __contains__(self, node: object) -> bool:
        return isinstance(node, Node) and node.graph is not None and not node._erased

    def _link_after(self, node: Node, anchor: Node | None) -> None:
        node._erased = False
        if anchor is None:  # at the front
            node._prev, node._next = None, self._head
            if self._head is not None:
                self._head._prev = node
            self._head = node
            if self._tail is None:
                self._tail = node
        else:
            node._prev, node._next = anchor, anchor._next
            if anchor._next is not None:
                anchor._next._prev = node
            else:
                self._tail = node
            anchor._next = node
        self._len += 1

    def append(self, node: Node) -> None:
        """Add at the end."""
        self._link_after(node, self._tail)

    def insert_after(self, anchor: Node, node: Node) -> None:
        """Insert ``node`` right after ``anchor``."""
        self._link_after(node, anchor)

    def insert_before(self, anchor: Node, node: Node) -> None:
        """Insert ``node`` right before ``anchor``."""
        self._link_after(node, anchor._prev)

    def remove(self, node: Node) -> None:
        """Unlink ``node``; its forward link stays so that live iterators go on."""
        if node._prev is not None:
            node._prev._next = node._next
        else:
            self._head = node._next
        if node._next is not None:
            node._next._prev = node._prev
        else:
            self._tail = node._prev
        node._erased = True
        self._len -= 1

    def clear(self) -> None:
        """Remove every node."""
        for n in list(self):
            self.remove(n)


class Graph:
    """A function: inputs, constants, nodes in a valid order, outputs.

    ``opset`` maps ONNX domains to versions (the vocabulary's semantics); ``meta`` holds
    model-level metadata (producer, doc string) that export carries through.
    """

    def __init__(self, name: str = "main", opset: dict[str, int] | None = None) -> None:
        self.name = name
        self.inputs: list[Value] = []
        self.outputs: list[Value] = []
        self.constants: dict[str, Value] = {}
        self.nodes = NodeList()
        self.opset: dict[str, int] = dict(opset or {"": 17})
        self.meta: dict[str, Any] = {}
        self._names: set[str] = set()
        self._counter = itertools.count()

    # -- names -------------------------------------------------------------------------------
    def fresh_name(self, hint: str = "v") -> str:
        """A value or node name not yet used in this graph, derived from ``hint``."""
        hint = hint or "v"
        if hint not in self._names:
            self._names.add(hint)
            return hint
        while True:
            cand = f"{hint}_{next(self._counter)}"
            if cand not in self._names:
                self._names.add(cand)
                return cand

    def _claim(self, v: Value) -> None:
        if v.name in self._names and v.graph is not self:
            v.name = self.fresh_name(v.name)
        else:
            self._names.add(v.name)
        v.graph = self

    # -- building ----------------------------------------------------------------------------
    def add_input(
        self, name: str, type: TensorType, encoding: QuantEncoding | None = None
    ) -> Value:
        """Append a graph input."""
        v = Value(name, type, encoding=encoding)
        self._claim(v)
        self.inputs.append(v)
        return v

    def add_const(
        self,
        name: str,
        data: np.ndarray | ExternalArray | UnresolvedConst,
        dtype: DType | None = None,
        *,
        encoding: QuantEncoding | None = None,
        meta: dict[str, Any] | None = None,
    ) -> Value:
        """Add a constant. ``dtype`` overrides the numpy-derived type (int4, bf16 ...)."""
        if isinstance(data, np.ndarray):
            t = TensorType(dtype or DType.from_numpy(data.dtype), tuple(int(d) for d in data.shape))
        else:
            t = TensorType(dtype or data.dtype, tuple(data.shape))
        v = Value(name, t, const=data, encoding=encoding, meta=meta)
        self._claim(v)
        self.constants[v.name] = v
        return v

    def const(self, data: Any, name: str = "c", dtype: DType | None = None) -> Value:
        """Add a constant from any array-like (convenience for passes)."""
        arr = np.asarray(data)
        if dtype is not None:
            arr = arr.astype(dtype.numpy)
        return self.add_const(self.fresh_name(name), arr, dtype)

    def make_node(
        self,
        op: str,
        inputs: Sequence[Value | None],
        attrs: dict[str, AttrValue] | None = None,
        *,
        outputs: Sequence[str] | int = 1,
        types: Sequence[TensorType | None] | None = None,
        domain: str = "",
        name: str = "",
        placement: str | None = None,
        meta: dict[str, Any] | None = None,
        before: Node | None = None,
        after: Node | None = None,
    ) -> Node:
        """Create a node with fresh output values and insert it (at the end by default).

        ``outputs`` is a count or a list of name hints; ``types`` gives output types (an
        unknown type defaults to the first input's dtype with unknown shape).
        """
        hints = [name or op.lower()] * outputs if isinstance(outputs, int) else list(outputs)
        outs: list[Value] = []
        for i, hint in enumerate(hints):
            t = types[i] if types is not None and i < len(types) else None
            if t is None:
                first = next((x for x in inputs if x is not None), None)
                t = TensorType(first.dtype if first is not None else DType.F32, None)
            v = Value(self.fresh_name(hint), t)
            v.graph = self  # its fresh name is already claimed
            outs.append(v)
        node = Node(op, inputs, outs, attrs, domain=domain, name=name, placement=placement,
                    meta=meta)
        self.insert(node, before=before, after=after)
        return node

    def insert(self, node: Node, *, before: Node | None = None, after: Node | None = None) -> Node:
        """Insert an existing detached node (at the end, or before/after an anchor)."""
        if node.graph is not None and node in self.nodes:
            raise ValueError(f"{node.label()} is already in the graph")
        node.graph = self
        for out in node.outputs:
            self._claim(out)
        if node.name:
            if node.name in self._names and node.name not in {o.name for o in node.outputs}:
                node.name = self.fresh_name(node.name)
            else:
                self._names.add(node.name)
        if before is not None:
            self.nodes.insert_before(before, node)
        elif after is not None:
            self.nodes.insert_after(after, node)
        else:
            self.nodes.append(node)
        return node

    def remove_node(self, node: Node, *, force: bool = False) -> None:
        """Remove ``node``. Its outputs must be unused unless ``force``."""
        if not force:
            for o in node.outputs:
                if o.uses or o.is_output:
                    raise ValueError(f"cannot remove {node.label()}: %{o.name} is still used")
        for i in range(len(node._inputs)):
            node._drop_use(i)
        self.nodes.remove(node)

    def remove_const(self, v: Value) -> None:
        """Remove an unused constant."""
        if v.uses or v.is_output:
            raise ValueError(f"cannot remove constant %{v.name}: still used")
        self.constants.pop(v.name, None)

    def replace_node(self, old: Node, new_outputs: Sequence[Value]) -> None:
        """Route every use of ``old``'s outputs to ``new_outputs`` and remove ``old``."""
        for o, n in zip(old.outputs, new_outputs, strict=True):
            o.replace_all_uses_with(n)
        self.remove_node(old)

    # -- queries -----------------------------------------------------------------------------
    def values(self) -> Iterator[Value]:
        """Every value: inputs, constants, then node outputs in order."""
        yield from self.inputs
        yield from self.constants.values()
        for n in self.nodes:
            yield from n.outputs

    def value_map(self) -> dict[str, Value]:
        """Name to value, for every value."""
        return {v.name: v for v in self.values()}

    def find_node(self, name: str) -> Node | None:
        """The node with this name, or the node producing a value of this name."""
        for n in self.nodes:
            if n.name == name or any(o.name == name for o in n.outputs):
                return n
        return None

    def __iter__(self) -> Iterator[Node]:
        return iter(self.nodes)

    def __len__(self) -> int:
        return len(self.nodes)

    def op_counts(self) -> dict[str, int]:
        """How many nodes of each op, sorted by op name."""
        counts: dict[str, int] = {}
        for n in self.nodes:
            counts[n.qualified_op] = counts.get(n.qualified_op, 0) + 1
        return dict(sorted(counts.items()))

    def weight_bytes(self) -> int:
        """Bytes of constant data (at each constant's element width)."""
        total = 0
        for v in self.constants.values():
            nb = v.type.nbytes
            total += nb or 0
        return total

    # -- maintenance -------------------------------------------------------------------------
    def sort(self) -> None:
        """Re-order nodes topologically; stable (keeps the current order where it is valid).

        Raises ``ValueError`` naming a node on a cycle.
        """
        from compiler.ir.verify import topological_order

        order = topological_order(self)
        self.nodes = NodeList()
        for n in order:
            n._erased = False
            self.nodes.append(n)

    def remove_unused_constants(self) -> int:
        """Drop constants nothing reads; returns how many."""
        dead = [v for v in self.constants.values() if not v.uses and not v.is_output]
        for v in dead:
            del self.constants[v.name]
        return len(dead)

    def verify(self) -> None:
        """Check every invariant; raise ``VerifyError`` naming the node or value."""
        from compiler.ir.verify import verify

        verify(self)

    def copy(self) -> Graph:
        """A deep structural copy. Constant arrays are shared (they are never mutated)."""
        g = Graph(self.name, self.opset)
        g.meta = dict(self.meta)
        m: dict[int, Value] = {}

        def clone(v: Value) -> Value:
            nv = Value(v.name, v.type, const=v._const, encoding=v.encoding, meta=v.meta)
            nv._digest = v._digest
            nv.graph = g
            g._names.add(nv.name)
            m[id(v)] = nv
            return nv

        for v in self.inputs:
            g.inputs.append(clone(v))
        for k, v in self.constants.items():
            g.constants[k] = clone(v)
        for n in self.nodes:
            outs = [clone(o) for o in n.outputs]
            ins = [None if i is None else m[id(i)] for i in n._inputs]
            nn = Node(n.op, ins, outs, _copy_attrs(n.attrs), domain=n.domain, name=n.name,
                      placement=n.placement, meta=n.meta)
            nn.graph = g
            if n.name:
                g._names.add(n.name)
            g.nodes.append(nn)
        g.outputs = [m[id(o)] for o in self.outputs]
        return g

    def __str__(self) -> str:
        from compiler.ir.printer import print_graph

        return print_graph(self)

    def __repr__(self) -> str:
        return f"<Graph {self.name}: {len(self.nodes)} nodes>"


def _copy_attrs(attrs: dict[str, AttrValue]) -> dict[str, AttrValue]:
    return {k: (list(v) if isinstance(v, list) else v) for k, v in attrs.items()}

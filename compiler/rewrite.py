"""The pattern rewriter: every graph mutation a pass makes goes through it.

A :class:`Rule` is a pattern, an optional ``check`` that returns the reason it does not apply,
and a ``rewrite`` that builds the replacement with a :class:`Rewriter`. A fusion is ~10 lines::

    conv_relu = Rule(
        "conv-relu",
        Pat("Relu", Pat("Conv", "x", "w", ..., name="conv")),
        check=lambda m: None if m.node("conv").attr("group", 1) == 1 else "grouped conv",
        rewrite=lambda m, rw: rw.op("edgec.ConvRelu", m.node("conv").inputs,
                                    m.node("conv").attrs),
        exclusive=True,  # the Conv's output must feed only the Relu
    )

Patterns: ``Pat(op, *inputs, name=, attrs=)`` matches a node (``op`` is ``"Mul"``,
``"edgec.Foo"``, a tuple of those, or ``"*"``); an input is a sub-``Pat`` (matched against the
input's producer), a capture name (``"x"``; the same name twice must be the same value; ``"_"``
matches anything), :class:`Const` (a constant, optionally with every element equal to a
value), or ``...`` as the last input (any further inputs). Binary commutative ops also match
with their two inputs swapped.

The :class:`Rewriter` inserts new nodes right before the matched root, stamps them with
provenance (``meta["pass"]``, ``meta["rule"]``, the root's ``meta["src"]`` and placement),
reroutes uses, lets a new value take over the name of the value it replaces (graph outputs keep
their names), removes matched nodes that became dead and the constants only they read, and
records the rewrite in ``ctx.trace``. :func:`apply_rules` runs a rule set to a fixpoint and
honours ``ctx.bisect_limit``.

At the end: the one-line tables ``NOOP_FOLDS`` and ``ALGEBRAIC_FOLDS``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from types import EllipsisType
from typing import Any, Union

import numpy as np

from compiler.errors import EdgecError
from compiler.ir import Graph, Node, TensorType, Value
from compiler.ir.core import UnresolvedConst
from compiler.ir.types import Dim
from compiler.passes import PassContext

__all__ = [
    "Pat",
    "Const",
    "Match",
    "Rule",
    "RuleSet",
    "Rewriter",
    "RewriteRecord",
    "RewriteError",
    "apply_rules",
    "exclusive_reason",
    "fold",
    "same_type",
    "node_id",
    "NOOP_FOLDS",
    "ALGEBRAIC_FOLDS",
]

#: Binary ops whose two inputs may be swapped when matching.
COMMUTATIVE = frozenset({"Add", "Mul", "Max", "Min", "And", "Or", "Xor", "Equal", "Sum", "Mean"})


class RewriteError(EdgecError):
    """A rule built a wrong replacement (e.g. of another type); names the rule and values."""


class _Refused(Exception):
    """The rewrite cannot be applied as built (internal: the rule is simply not applied)."""


def node_id(node: Node) -> str:
    """How traces name a node: its name, else ``%`` and its first output."""
    if node.name:
        return node.name
    return f"%{node.outputs[0].name}" if node.outputs else node.op


# ---------------------------------------------------------------------------------------------
# patterns


class Const:
    """Pattern input: a constant, captured as ``name`` when given; with ``value``, every
    element must equal it."""

    __slots__ = ("name", "value")

    def __init__(self, name: str = "", value: float | None = None) -> None:
        self.name = name
        self.value = value

    def __repr__(self) -> str:
        return f"Const({self.name!r}, value={self.value!r})"


PatInput = Union["Pat", Const, str, EllipsisType]


class Pat:
    """Pattern of one node: op (or ops, or ``"*"``), input patterns, optional capture ``name``
    and required attribute values ``attrs``."""

    __slots__ = ("attrs", "inputs", "name", "ops")

    def __init__(self, op: str | Sequence[str], *inputs: PatInput, name: str = "",
                 attrs: Mapping[str, Any] | None = None) -> None:
        self.ops: tuple[str, ...] = (op,) if isinstance(op, str) else tuple(op)
        for i, p in enumerate(inputs):
            if p is Ellipsis and i != len(inputs) - 1:
                raise ValueError("... must be the last input of a pattern")
        self.inputs = inputs
        self.name = name
        self.attrs = dict(attrs or {})

    def accepts(self, qualified_op: str) -> bool:
        """True when a node with this ``domain.op`` can be the pattern's root."""
        return "*" in self.ops or qualified_op in self.ops

    def __repr__(self) -> str:
        op = self.ops[0] if len(self.ops) == 1 else "|".join(self.ops)
        return f"Pat({op}, {', '.join(repr(i) for i in self.inputs)})"


@dataclass
class Match:
    """A successful match: the root, every matched node (root first), captured values and
    captured (named) nodes."""

    root: Node
    nodes: list[Node]
    values: dict[str, Value]
    named: dict[str, Node]

    def __getitem__(self, name: str) -> Value:
        return self.values[name]

    def node(self, name: str) -> Node:
        """The node captured as ``name``."""
        return self.named[name]

    def const(self, name: str) -> np.ndarray:
        """The data of the constant captured as ``name``."""
        arr = self.values[name].const
        if arr is None:
            raise KeyError(f"%{self.values[name].name} is not a constant")
        return arr


@dataclass
class _State:
    values: dict[str, Value] = field(default_factory=dict)
    named: dict[str, Node] = field(default_factory=dict)
    nodes: list[Node] = field(default_factory=list)

    def copy(self) -> _State:
        return _State(dict(self.values), dict(self.named), list(self.nodes))


def _bind(st: _State, name: str, v: Value, where: str) -> str | None:
    prev = st.values.get(name)
    if prev is not None and prev is not v:
        return f"'{name}' is %{prev.name} but {where} is %{v.name}"
    st.values[name] = v
    return None


def _match_input(p: PatInput, v: Value | None, node: Node, i: int, st: _State) -> str | None:
    where = f"input {i} of {node.label()}"
    if v is None:
        return f"{where} is omitted"
    if isinstance(p, str):
        return None if p == "_" else _bind(st, p, v, where)
    if isinstance(p, Const):
        if not v.is_const:
            return f"{where} (%{v.name}) is not a constant"
        if p.value is not None:
            if isinstance(v.const_source, UnresolvedConst):
                return f"{where} (%{v.name}) has no data"
            arr = v.const
            if arr is None or arr.size == 0 or not bool(np.all(arr == p.value)):
                return f"{where} (%{v.name}) is not the constant {p.value}"
        return _bind(st, p.name, v, where) if p.name else None
    if isinstance(p, Pat):
        prod = v.producer
        if prod is None:
            return f"{where} (%{v.name}) is not produced by a node"
        return _match_node(p, prod, st)
    raise TypeError(f"bad pattern input {p!r}")


def _match_node(pat: Pat, node: Node, st: _State) -> str | None:
    if not pat.accepts(node.qualified_op):
        want = " or ".join(pat.ops)
        return f"{node.label()} is not {want}"
    for k, want in pat.attrs.items():
        have = node.attrs.get(k)
        if have != want:
            return f"{node.label()} has {k}={have!r}, not {want!r}"
    inputs = list(node.inputs)
    while inputs and inputs[-1] is None:
        inputs.pop()
    pats = list(pat.inputs)
    rest = bool(pats) and pats[-1] is Ellipsis
    if rest:
        pats.pop()
    if len(inputs) < len(pats) or (not rest and len(inputs) > len(pats)):
        return f"{node.label()} has {len(inputs)} inputs, the pattern {len(pats)}"
    st.nodes.append(node)
    if pat.name:
        st.named[pat.name] = node
    orders = [pats]
    if node.op in COMMUTATIVE and len(pats) == 2 and len(inputs) == 2:
        orders.append([pats[1], pats[0]])
    first: str | None = None
    for order in orders:
        trial = st.copy()
        reason = None
        for i, (p, v) in enumerate(zip(order, inputs)):
            reason = _match_input(p, v, node, i, trial)
            if reason is not None:
                break
        if reason is None:
            st.values, st.named, st.nodes = trial.values, trial.named, trial.nodes
            return None
        first = first or reason
    return first


# ---------------------------------------------------------------------------------------------
# rules


RewriteFn = Callable[[Match, "Rewriter"], Union[Value, Sequence[Union[Value, None]]]]
CheckFn = Callable[[Match], Union[str, None]]


def exclusive_reason(nodes: Sequence[Node]) -> str | None:
    """Why the matched ``nodes`` (root first) are not exclusive: a non-root output that is a
    graph output or is used outside the match. None when they are."""
    inside = {id(n) for n in nodes}
    for n in nodes[1:]:
        for o in n.outputs:
            if o.is_output:
                return f"%{o.name} of {n.label()} is a graph output"
            for u, _ in o.uses:
                if id(u) not in inside:
                    return f"%{o.name} of {n.label()} is also used by {u.label()}"
    return None


@dataclass(frozen=True)
class Rule:
    """A rewrite rule: ``pattern``, an optional ``check`` (returns why the rule does not apply,
    or None), and ``rewrite`` (returns the values that replace the root's outputs: one value
    for the first output, or one per output with None for unused ones).

    ``exclusive=True`` requires the matched non-root nodes to be used only inside the match (a
    fusion must not duplicate work another consumer still needs).
    """

    name: str
    pattern: Pat
    rewrite: RewriteFn
    check: CheckFn | None = None
    exclusive: bool = False
    doc: str = ""

    def try_match(self, node: Node) -> Match | str:
        """The match, or the reason the rule does not apply at ``node``."""
        st = _State()
        reason = _match_node(self.pattern, node, st)
        if reason is not None:
            return reason
        nodes = list({id(n): n for n in st.nodes}.values())
        return self.accept(Match(node, nodes, st.values, st.named), self.exclusive)

    def accept(self, m: Match, exclusive: bool) -> Match | str:
        """``m``, or why it is refused: a non-exclusive match (when ``exclusive``), or the
        reason ``check`` gives."""
        if exclusive:
            reason = exclusive_reason(m.nodes)
            if reason:
                return reason
        if self.check is not None:
            reason = self.check(m)
            if reason:
                return reason
        return m

    def match(self, node: Node) -> Match | None:
        """The match at ``node``, or None."""
        m = self.try_match(node)
        return m if isinstance(m, Match) else None

    def explain(self, node: Node) -> str:
        """``"applies"`` or why the rule does not apply at ``node``."""
        m = self.try_match(node)
        return "applies" if isinstance(m, Match) else m


class RuleSet:
    """An ordered, named group of rules with unique names."""

    def __init__(self, name: str, rules: Iterable[Rule] = ()) -> None:
        self.name = name
        self.rules: list[Rule] = []
        self._by_op: dict[str, list[Rule]] = {}
        for r in rules:
            self.add(r)

    def add(self, rule: Rule) -> Rule:
        """Append ``rule`` (names must be unique in the set)."""
        if any(r.name == rule.name for r in self.rules):
            raise ValueError(f"rule set {self.name!r} already has a rule {rule.name!r}")
        self.rules.append(rule)
        self._by_op.clear()
        return rule

    def for_op(self, qualified_op: str) -> list[Rule]:
        """Rules whose root pattern accepts ``qualified_op``, in order."""
        got = self._by_op.get(qualified_op)
        if got is None:
            got = [r for r in self.rules if r.pattern.accepts(qualified_op)]
            self._by_op[qualified_op] = got
        return got

    def explain(self, node: Node) -> dict[str, str]:
        """For every rule, ``"applies"`` or why it does not apply at ``node``."""
        return {r.name: r.explain(node) for r in self.rules}

    def __iter__(self) -> Iterator[Rule]:
        return iter(self.rules)

    def __len__(self) -> int:
        return len(self.rules)


# ---------------------------------------------------------------------------------------------
# the rewriter


@dataclass(frozen=True)
class RewriteRecord:
    """One applied rewrite, for the visualizer: ``index`` is its number in the whole run (what
    ``bisect_limit`` counts); nodes are named by :func:`node_id`, constants by ``%name``."""

    index: int
    pass_name: str
    rule: str
    root: str
    created: tuple[str, ...]
    removed: tuple[str, ...]


def _rename(graph: Graph, v: Value, name: str) -> None:
    if v.is_const and graph.constants.get(v.name) is v:
        graph.constants = {(name if k == v.name else k): c for k, c in graph.constants.items()}
    v.name = name


def _merge_types(old: TensorType, new: TensorType) -> TensorType | None:
    """The more precise of two compatible types (None when they conflict)."""
    if old.dtype is not new.dtype:
        return None
    if old.shape is None or new.shape is None:
        return old if new.shape is None else new
    if len(old.shape) != len(new.shape):
        return None
    dims: list[Dim] = []
    for a, b in zip(old.shape, new.shape):
        if isinstance(a, int) and isinstance(b, int) and a != b:
            return None
        if isinstance(a, int):  # a number beats a symbol, a symbol beats unknown
            dims.append(a)
        elif isinstance(b, int) or a is None:
            dims.append(b)
        else:
            dims.append(a)
    return TensorType(old.dtype, tuple(dims))


class Rewriter:
    """Builds and applies one rewrite of ``root`` (or, without a root, of loose values).

    Build with :meth:`op`, :meth:`node`, :meth:`const`; mutate with :meth:`replace_root`,
    :meth:`replace`, :meth:`erase`, :meth:`erase_const`; then :meth:`finish` removes what died
    and records the rewrite (``rollback`` undoes the building instead).
    """

    def __init__(self, graph: Graph, ctx: PassContext | None = None, *, rule: str,
                 root: Node | None = None, matched: Sequence[Node] = ()) -> None:
        self.graph = graph
        self.ctx = ctx
        self.rule = rule
        self.root = root
        nodes = ([root] if root is not None else []) + list(matched)
        self.matched: list[Node] = list({id(n): n for n in nodes}.values())
        self.created: list[Node] = []
        self.created_consts: list[Value] = []
        self.removed: list[str] = []
        self._fresh: set[int] = set()
        self._ids = {id(n): node_id(n) for n in self.matched}
        self._maybe_dead_consts: list[Value] = []
        self._changed = False

    # -- building ----------------------------------------------------------------------------
    def node(self, op: str, inputs: Sequence[Value | None], attrs: Mapping[str, Any] | None = None,
             *, outputs: int | Sequence[str] = 1, types: Sequence[TensorType | None] | None = None,
             name: str = "") -> Node:
        """Create a node (``op`` may be ``domain.Op``) right before the root, with provenance."""
        domain, _, opname = op.rpartition(".")
        if domain and domain not in self.graph.opset:
            self.graph.opset[domain] = 1
        meta: dict[str, Any] = {}
        if self.ctx is not None and self.ctx.pass_name:
            meta["pass"] = self.ctx.pass_name
        meta["rule"] = self.rule
        if self.root is not None and self.root.src:
            meta["src"] = self.root.src
        placement = self.root.placement if self.root is not None else None
        before = self.root if self.root is not None and self.root in self.graph.nodes else None
        n = self.graph.make_node(opname, list(inputs), dict(attrs or {}), outputs=outputs,
                                 types=types, domain=domain, name=name, placement=placement,
                                 meta=meta, before=before)
        self.created.append(n)
        self._fresh.update(id(o) for o in n.outputs)
        return n

    def op(self, op: str, inputs: Sequence[Value | None], attrs: Mapping[str, Any] | None = None,
           *, type: TensorType | None = None, name: str = "") -> Value:
        """Create a one-output node and return its output (see :meth:`node`)."""
        return self.node(op, inputs, attrs, types=[type], name=name).outputs[0]

    def const(self, data: Any, name: str = "c", dtype: Any = None) -> Value:
        """Add a constant."""
        v = self.graph.const(data, name, dtype)
        self.created_consts.append(v)
        self._fresh.add(id(v))
        return v

    # -- mutating ----------------------------------------------------------------------------
    def _why_not(self, old: Value, new: Value | None) -> str | None:
        if new is None:
            if old.uses or old.is_output:
                return f"%{old.name} is still used and has no replacement"
            return None
        if old.is_output and (new.is_input or new.is_output):
            return (f"graph output %{old.name} would be replaced by %{new.name}, which is "
                    f"a graph {'input' if new.is_input else 'output'} itself")
        return None

    def _retype(self, old: Value, new: Value) -> None:
        fresh = id(new) in self._fresh
        if fresh and new.type.shape is None and new.dtype is not old.dtype:
            new.type = old.type  # the dtype of an untyped new node was a guess
        merged = _merge_types(old.type, new.type)
        if merged is None:
            raise RewriteError(f"rule {self.rule!r}: %{new.name} ({new.type}) cannot replace "
                               f"%{old.name} ({old.type})")
        if fresh:
            new.type = merged
            if new.encoding is None:
                new.encoding = old.encoding

    def replace(self, old: Value, new: Value) -> None:
        """Make every use of ``old`` (and the graph output) read ``new``.

        A value made by this rewriter, or one that becomes a graph output, takes over ``old``'s
        name (``old`` gets a fresh one), so graph outputs keep their names.
        """
        if new is old:
            return
        reason = self._why_not(old, new)
        if reason:
            raise _Refused(reason)
        self._retype(old, new)
        if old.is_output or id(new) in self._fresh:
            name = old.name
            _rename(self.graph, old, self.graph.fresh_name(name))
            _rename(self.graph, new, name)
        old.replace_all_uses_with(new)
        self._changed = True

    def replace_root(self, new: Value | Sequence[Value | None]) -> bool:
        """Replace the root's outputs: ``new`` is a value for the first output (the others
        must be unused) or one value (or None) per output. Returns False when ``new`` is the
        root's own outputs."""
        root = self.root
        if root is None:
            raise RewriteError(f"rule {self.rule!r}: replace_root needs a root")
        values = ([new] + [None] * (len(root.outputs) - 1) if isinstance(new, Value)
                  else list(new))
        if len(values) != len(root.outputs):
            raise RewriteError(f"rule {self.rule!r}: {len(values)} replacements for the "
                               f"{len(root.outputs)} outputs of {root.label()}")
        pairs = [(o, v) for o, v in zip(root.outputs, values) if v is not o]
        for o, v in pairs:
            reason = self._why_not(o, v)
            if reason:
                raise _Refused(reason)
        replaced = False
        for o, v in pairs:
            if v is not None:
                self.replace(o, v)
                replaced = True
        return replaced

    def _note_inputs(self, n: Node) -> None:
        self._maybe_dead_consts.extend(v for v in n.inputs if v is not None and v.is_const)

    def erase(self, node: Node) -> None:
        """Remove a node none of whose outputs is used."""
        if any(o.uses or o.is_output for o in node.outputs):
            raise RewriteError(f"rule {self.rule!r}: cannot erase {node.label()}: its outputs "
                               "are used")
        self._ids.setdefault(id(node), node_id(node))
        self._note_inputs(node)
        self.graph.remove_node(node)
        self.removed.append(self._ids[id(node)])
        self._changed = True

    def erase_const(self, v: Value) -> None:
        """Remove an unused constant."""
        self.graph.remove_const(v)
        self.removed.append(f"%{v.name}")
        self._changed = True

    def rollback(self) -> None:
        """Remove everything this rewriter built (before any replacement was made)."""
        for n in reversed(self.created):
            if n in self.graph.nodes:
                self.graph.remove_node(n, force=True)
        for v in self.created_consts:
            if self.graph.constants.get(v.name) is v:
                del self.graph.constants[v.name]
        self.created.clear()
        self.created_consts.clear()

    def finish(self) -> RewriteRecord | None:
        """Remove matched and created nodes that died, then constants they alone read; count
        and trace the rewrite. Returns the record (None when nothing changed)."""
        dead = True
        while dead:
            dead = False
            for n in self.matched + self.created:
                if n in self.graph.nodes and not any(o.uses or o.is_output for o in n.outputs):
                    self.erase(n)
                    dead = True
        for v in self._maybe_dead_consts + self.created_consts:
            if self.graph.constants.get(v.name) is v and not v.uses and not v.is_output:
                self.erase_const(v)
        if not self._changed:
            return None
        created = [node_id(n) for n in self.created if n in self.graph.nodes]
        created += [f"%{v.name}" for v in self.created_consts
                    if self.graph.constants.get(v.name) is v]
        root = self._ids.get(id(self.root), "") if self.root is not None else ""
        if self.ctx is None:
            return RewriteRecord(0, "", self.rule, root, tuple(created), tuple(self.removed))
        self.ctx.rewrites += 1
        rec = RewriteRecord(self.ctx.rewrites, self.ctx.pass_name, self.rule, root,
                            tuple(created), tuple(self.removed))
        self.ctx.trace.append(rec)
        return rec


# ---------------------------------------------------------------------------------------------
# applying rules


def apply_rules(graph: Graph, rules: RuleSet | Iterable[Rule], ctx: PassContext | None = None,
                *, max_rounds: int = 10) -> dict[str, int]:
    """Apply ``rules`` until none fires (at most ``max_rounds`` sweeps over the nodes, in graph
    order, rules in set order). Returns how often each rule fired (rules that fired only).

    Stops as soon as ``ctx.bisect_limit`` rewrites have been applied in the whole run.
    """
    ctx = ctx if ctx is not None else PassContext()
    rs = rules if isinstance(rules, RuleSet) else RuleSet("rules", rules)
    counts: dict[str, int] = {}
    refused: set[tuple[str, int]] = set()
    for _ in range(max_rounds):
        changed = False
        for node in graph.nodes:
            for rule in rs.for_op(node.qualified_op):
                if node not in graph.nodes:
                    break
                m = rule.match(node)
                if m is None:
                    continue
                if not ctx.may_rewrite():
                    return counts
                rw = Rewriter(graph, ctx, rule=rule.name, root=node, matched=m.nodes)
                try:
                    applied = rw.replace_root(rule.rewrite(m, rw))
                except _Refused as e:
                    rw.rollback()
                    if (rule.name, id(node)) not in refused:
                        refused.add((rule.name, id(node)))
                        ctx.note(f"rule {rule.name!r} not applied at {node_id(node)}: {e}")
                    continue
                if not applied:
                    rw.rollback()
                    continue
                rw.finish()
                counts[rule.name] = counts.get(rule.name, 0) + 1
                changed = True
                break
        if not changed:
            break
    else:
        ctx.note(f"rule set {rs.name!r} still rewriting after {max_rounds} rounds")
    return counts


# ---------------------------------------------------------------------------------------------
# one-line folds


def same_type(new: Value, old: Value) -> str | None:
    """None when ``new`` has exactly ``old``'s dtype and fully known shape, else why not."""
    if new.dtype is not old.dtype:
        return f"%{new.name} is {new.dtype.value} but %{old.name} is {old.dtype.value}"
    for v in (new, old):
        if v.shape is None or any(d is None for d in v.shape):
            return f"shape of %{v.name} is not known"
    if new.shape != old.shape:
        return f"%{new.name} is {new.type} but %{old.name} is {old.type}"
    return None


def fold(name: str, pattern: Pat, result: str | RewriteFn, check: CheckFn | None = None) -> Rule:
    """A one-line rule. With ``result`` a capture name, the root's first output is replaced by
    that value, which must have the same type (so ``x * 1`` never drops a broadcast)."""
    if not isinstance(result, str):
        return Rule(name, pattern, result, check)
    capture = result

    def type_check(m: Match) -> str | None:
        return (check(m) if check else None) or same_type(m[capture], m.root.outputs[0])

    return Rule(name, pattern, lambda m, rw: m[capture], type_check)


def _perm(node: Node) -> list[int] | None:
    perm = node.attr("perm")
    if perm is not None:
        return [int(p) for p in perm]
    x = node.input(0)
    rank = x.type.rank if x is not None else None
    return None if rank is None else list(reversed(range(rank)))


def _composed_perm(m: Match) -> list[int] | None:
    inner, outer = _perm(m.node("t1")), _perm(m.root)
    return None if inner is None or outer is None else [inner[i] for i in outer]


def _is_identity_perm(perm: list[int] | None) -> str | None:
    if perm is None:
        return "the rank is not known"
    return None if perm == list(range(len(perm))) else f"perm {perm} moves axes"


def _inference_dropout(m: Match) -> str | None:
    mode = m.root.input(2)
    if mode is None or (mode.is_const and not bool(np.any(mode.const))):
        return None
    return f"training_mode %{mode.name} is not a constant false"


def _reshape_keeps_dims(m: Match) -> str | None:
    if m.root.attr("allowzero", 0) == 0 and bool(np.any(m.const("s2") == 0)):
        return f"shape %{m['s2'].name} copies dims (0) of the intermediate"
    return None


def _reshape_to_own_shape(m: Match) -> str | None:
    x, shape = m["x"], m.const("s").tolist()
    if x.shape is None or len(x.shape) != len(shape) or shape.count(-1) > 1:
        return f"shape {shape} does not have the rank of %{x.name}"
    copy_zero = m.root.attr("allowzero", 0) == 0
    for i, (d, s) in enumerate(zip(x.shape, shape)):
        # -1 infers the one dim left over, which is d when every other dim is kept.
        if not (s == d or (s == 0 and copy_zero) or s == -1):
            return f"dim {i} of %{x.name} is {d if d is not None else '?'}, the shape says {s}"
    return None


def _last_relu(m: Match, rw: Rewriter) -> Value:
    return m.node("inner").outputs[0]


def _one_transpose(m: Match, rw: Rewriter) -> Value:
    return rw.op("Transpose", [m["x"]], {"perm": _composed_perm(m)})


def _one_reshape(m: Match, rw: Rewriter) -> Value:
    return rw.op("Reshape", [m["x"], m["s2"]], m.root.attrs)


T2 = Pat("Transpose", Pat("Transpose", "x", name="t1"))  # Transpose(Transpose(x))
ONE, ZERO = Const(value=1), Const(value=0)

#: Nodes that compute nothing: their output is one of their inputs. A capture name as the
#: result means "that value, if it has exactly the root's type" (see ``fold``).
NOOP_FOLDS = RuleSet("noop", [
    fold("identity", Pat("Identity", "x"), "x"),  # Identity(x) -> x
    fold("dropout", Pat("Dropout", "x", ...), "x", _inference_dropout),  # Dropout, inference
    fold("cast-same-type", Pat("Cast", "x"), "x"),  # Cast(x: T, to=T) -> x
    fold("reshape-same-shape", Pat("Reshape", "x", "_"), "x"),  # Reshape to x's own type
    # Reshape(x: [b,4], [-1,4]) -> x, read from the shape constant (the type may say [?,4])
    Rule("reshape-to-own-shape", Pat("Reshape", "x", Const("s")), lambda m, rw: m["x"],
         _reshape_to_own_shape),
    fold("flatten-same-shape", Pat("Flatten", "x"), "x"),  # Flatten of a 2-D x -> x
    fold("squeeze-same-shape", Pat("Squeeze", "x", ...), "x"),  # Squeeze of no axis -> x
    fold("expand-same-shape", Pat("Expand", "x", "_"), "x"),  # Expand(x) to x's shape -> x
    fold("tile-same-shape", Pat("Tile", "x", "_"), "x"),  # Tile(x, ones) -> x
    fold("concat-single", Pat("Concat", "x"), "x"),  # Concat(x) -> x
    fold("transpose-identity", Pat("Transpose", "x"), "x",
         lambda m: _is_identity_perm(_perm(m.root))),  # Transpose(x, perm=0..n-1) -> x
    fold("transpose-inverse-pair", T2, "x",
         lambda m: _is_identity_perm(_composed_perm(m))),  # T(T(x, p), inverse(p)) -> x
])

#: Algebraic identities and compositions.
ALGEBRAIC_FOLDS = RuleSet("algebraic", [
    fold("mul-one", Pat("Mul", "x", ONE), "x"),  # x * 1 -> x  (and 1 * x)
    fold("add-zero", Pat("Add", "x", ZERO), "x"),  # x + 0 -> x  (and 0 + x)
    fold("sub-zero", Pat("Sub", "x", ZERO), "x"),  # x - 0 -> x
    fold("div-one", Pat("Div", "x", ONE), "x"),  # x / 1 -> x
    fold("pow-one", Pat("Pow", "x", ONE), "x"),  # x ** 1 -> x
    fold("neg-neg", Pat("Neg", Pat("Neg", "x")), "x"),  # -(-x) -> x
    fold("relu-relu", Pat("Relu", Pat("Relu", "x", name="inner")), _last_relu),  # relu∘relu
    fold("transpose-transpose", T2, _one_transpose,
         lambda m: None if _composed_perm(m) else "a rank is not known"),  # T(T(x,p),q): 1 T
    fold("reshape-reshape", Pat("Reshape", Pat("Reshape", "x", "_"), Const("s2")),
         _one_reshape, _reshape_keeps_dims),  # R(R(x, s1), s2) -> R(x, s2)
])

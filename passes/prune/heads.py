"""Attention heads for ``prune{method=head}``: find them, score them, drop whole heads.

An *attention unit* is found from its ``Softmax``:

- the scores ``MatMul(q, k)`` before it (through scalar or broadcast ``Div``/``Mul``/``Add``/
  ``Sub``, e.g. the ``1/sqrt(d)`` scale or an additive mask) and the context
  ``MatMul(softmax, v)`` after it, all with the head axis at 1 (``[B, H, T, *]``);
- each of ``q``, ``k``, ``v`` traced back through ``Transpose`` (the head axis followed through
  the permutation) to the ``Reshape`` that splits heads (``[B, T, H*d] -> [B, T, H, d]``), then
  through shape-only ``Reshape`` (``[B*T, C] <-> [B, T, C]``) and a ``Split`` on the channel
  axis (a fused QKV projection) to the projection that makes it: a ``Gemm`` (``transA=0``) or
  ``MatMul`` with a constant 2-D weight (separate Q/K/V projections work the same way);
- the context traced forward through ``Transpose`` and the ``Reshape`` that merges heads
  (``[B, T, H, d] -> [B, T, H*d]``), shape-only reshapes, to the output projection, a
  ``Gemm``/``MatMul`` with a constant weight.

Every tensor on the way must have that one use, and a fused projection's ``Split`` must feed
only this unit; otherwise the unit is reported as blocked with the reason. Dropping head ``h``
removes its rows from the Q/K/V projections (weights and biases), its columns from the output
projection, and shrinks every tensor of the unit on its head or channel axis (``Reshape``
shapes and ``Split`` sizes are rewritten as new constants, since a shape constant is often
shared by several blocks). Heads are independent up to the output projection, so the pruned
graph equals the original with head ``h``'s context zeroed before the output projection (the
masked reference the tests compute).

Importance of a head: ``l1``/``l2``, the norms of its rows of the Q, K and V projections and of
its columns of the output projection (each part normalized by its mean over heads, summed); or
``activation``, the mean squared norm of the head's contribution to the output projection,
``||ctx_h W_o[h]||^2``, on the calibration data.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from compiler.ir import Graph, Node, TensorType, Value
from compiler.passes import PassContext
from passes.lowrank.common import ShapeRewriter

__all__ = ["AttentionUnit", "find_attention", "head_scores", "apply_heads", "heads_keep_mask"]

_ELEMENTWISE = frozenset({"Div", "Mul", "Add", "Sub"})
_PASS = frozenset({"Dropout", "Identity", "Cast"})


class _Blocked(Exception):
    """Why a unit cannot be head-pruned."""


@dataclass
class AttentionUnit:
    """One attention block's heads and every tensor and constant they touch."""

    softmax: Node
    heads: int
    #: projection nodes (Q/K/V) -> list of (channel offset, head dim) slots in their output
    sources: dict[int, tuple[Node, list[tuple[int, int]]]] = field(default_factory=dict)
    #: the output projection and the head dim of the context
    out_proj: Node | None = None
    ctx_dim: int = 0
    context: Value | None = None  # [B, H, T, dv], the head axis at 1
    #: tensors on a head axis: (value, axis)
    head_values: list[tuple[Value, int]] = field(default_factory=list)
    #: tensors on a channel axis (last): value -> slots (offset, head dim)
    chan_values: dict[int, tuple[Value, list[tuple[int, int]]]] = field(default_factory=dict)
    #: constants on a head axis to slice: (node, input index, axis of the constant)
    head_consts: list[tuple[Node, int, int]] = field(default_factory=list)
    splits: list[Node] = field(default_factory=list)
    reshapes: list[Node] = field(default_factory=list)
    blocked: str | None = None

    @property
    def name(self) -> str:
        """How reports name the unit: its source module, else its softmax's output."""
        return self.softmax.src or f"%{self.softmax.outputs[0].name}"

    def projections(self) -> list[Node]:
        """The Q/K/V projection nodes (one for a fused QKV)."""
        return [n for n, _ in self.sources.values()]


def _static(v: Value | None) -> tuple[int, ...] | None:
    if v is None or v.shape is None or any(not isinstance(d, int) for d in v.shape):
        return None
    return tuple(int(d) for d in v.shape)  # type: ignore[arg-type]


def _one_use(v: Value, what: str) -> Node:
    if v.is_output or len(v.uses) != 1:
        raise _Blocked(f"%{v.name} ({what}) has {len(v.uses)} uses")
    return v.uses[0][0]


def _const_weight(n: Node) -> np.ndarray | None:
    w = n.input(1)
    if w is None or not w.is_const or w.const is None or w.const.ndim != 2 or len(w.uses) != 1:
        return None
    if n.op == "Gemm" and n.attr("transA", 0):
        return None
    return w.const


def _out_axis(n: Node) -> int:
    """Axis of the output channels in the weight of a Gemm/MatMul."""
    return 0 if n.op == "Gemm" and n.attr("transB", 0) else 1


def _side_const(n: Node, traced: Value, axis: int, heads: int, unit: AttentionUnit) -> None:
    """Check the other operand of an elementwise op on a head-axis tensor."""
    idx = 0 if n.input(0) is traced else 1
    other = n.input(1 - idx)
    rank = len(_static(traced) or ())
    if other is None or other.shape is None:
        raise _Blocked(f"{n.label()}: unknown operand shape")
    pos = axis - (rank - len(other.shape))
    dim = other.shape[pos] if 0 <= pos < len(other.shape) else 1
    if dim == 1:
        return
    if dim == heads and other.is_const and other.const is not None and len(other.uses) == 1:
        unit.head_consts.append((n, 1 - idx, pos))
        return
    raise _Blocked(f"{n.label()} mixes the heads with %{other.name}")


def _back_channels(v: Value, slots: list[tuple[int, int]], unit: AttentionUnit) -> None:
    """Follow a ``[..., C]`` tensor whose channels ``slots`` are heads back to its projection."""
    while True:
        prev = unit.chan_values.get(id(v))
        unit.chan_values[id(v)] = (v, (prev[1] if prev else []) + slots)
        node = v.producer
        if node is None:
            raise _Blocked(f"%{v.name} is not made by a projection")
        if node.op in ("Gemm", "MatMul"):
            if _const_weight(node) is None or _static(node.outputs[0]) is None:
                raise _Blocked(f"{node.label()} has no constant 2-D weight of its own")
            old = unit.sources.get(id(node))
            unit.sources[id(node)] = (node, (old[1] if old else []) + slots)
            return
        if node.op == "Reshape":
            x = node.input(0)
            xs, ys = _static(x), _static(v)
            if x is None or xs is None or ys is None or xs[-1] != ys[-1]:
                raise _Blocked(f"{node.label()} moves the channel axis")
            _one_use(x, "a projection output")
            unit.reshapes.append(node)
            v = x
            continue
        if node.op == "Split":
            x = node.input(0)
            xs = _static(x)
            axis = int(node.attr("axis", 0))  # type: ignore[arg-type]
            if x is None or xs is None or axis not in (-1, len(xs) - 1):
                raise _Blocked(f"{node.label()} splits another axis than the channels")
            sizes = [(_static(o) or (0,))[-1] for o in node.outputs]
            off = sum(sizes[:v.index])
            _one_use(x, "a fused projection output")
            if node not in unit.splits:
                unit.splits.append(node)
            slots = [(off + o, d) for o, d in slots]
            v = x
            continue
        raise _Blocked(f"{node.label()} ({node.op}) is between the heads and their projection")


def _back_heads(v: Value, axis: int, unit: AttentionUnit) -> int:
    """Follow a head-axis tensor (``axis``) back to its projection; returns the head dim."""
    while True:
        unit.head_values.append((v, axis))
        node = v.producer
        if node is None:
            raise _Blocked(f"%{v.name} is not made by a projection")
        x = node.input(0)
        if node.op == "Transpose" and x is not None:
            perm = [int(i) for i in node.attr("perm")]  # type: ignore[union-attr]
            _one_use(x, "a head tensor")
            v, axis = x, perm[axis]
            continue
        if node.op in _ELEMENTWISE and len(node.inputs) == 2:
            a, b = node.input(0), node.input(1)
            traced = a if a is not None and not a.is_const else b
            if traced is None or _static(traced) != _static(v):
                raise _Blocked(f"{node.label()} broadcasts the head tensor")
            _side_const(node, traced, axis, unit.heads, unit)
            _one_use(traced, "a head tensor")
            v = traced
            continue
        if node.op == "Reshape" and x is not None:
            xs, ys = _static(x), _static(v)
            if xs is None or ys is None or axis != len(ys) - 2 or \
                    xs[-1] != ys[-2] * ys[-1] or math.prod(xs[:-1]) != math.prod(ys[:-2]):
                raise _Blocked(f"{node.label()} is not a [.., H*d] -> [.., H, d] head split")
            _one_use(x, "a projection output")
            unit.reshapes.append(node)
            d = ys[-1]
            _back_channels(x, [(0, d)], unit)
            return d
        raise _Blocked(f"{node.label()} ({node.op}) is between the heads and their projection")


def _forward_context(v: Value, axis: int, unit: AttentionUnit) -> None:
    """Follow the context ``[B, H, T, dv]`` to the output projection."""
    while True:
        node = _one_use(v, "the attention context")
        out = node.outputs[0]
        if node.op == "Transpose":
            perm = [int(i) for i in node.attr("perm")]  # type: ignore[union-attr]
            axis = perm.index(axis)
            unit.head_values.append((out, axis))
            v = out
            continue
        if node.op == "Reshape":
            xs, ys = _static(v), _static(out)
            if xs is None or ys is None or axis != len(xs) - 2 or \
                    ys[-1] != xs[-2] * xs[-1] or math.prod(ys[:-1]) != math.prod(xs[:-2]):
                raise _Blocked(f"{node.label()} is not a [.., H, d] -> [.., H*d] head merge")
            unit.reshapes.append(node)
            unit.ctx_dim = xs[-1]
            break
        raise _Blocked(f"{node.label()} ({node.op}) is between the context and the output "
                       "projection")
    v = out
    while True:
        unit.chan_values[id(v)] = (v, [(0, unit.ctx_dim)])
        node = _one_use(v, "the merged context")
        if node.op == "Reshape":
            xs, ys = _static(v), _static(node.outputs[0])
            if xs is None or ys is None or xs[-1] != ys[-1]:
                raise _Blocked(f"{node.label()} moves the channel axis")
            unit.reshapes.append(node)
            v = node.outputs[0]
            continue
        if node.op in ("Gemm", "MatMul") and node.input(0) is v and \
                _const_weight(node) is not None:
            unit.out_proj = node
            return
        raise _Blocked(f"{node.label()} ({node.op}) is not an output projection with a "
                       "constant weight")


def _unit(sm: Node) -> AttentionUnit:
    s = _static(sm.outputs[0])
    unit = AttentionUnit(sm, 0)
    if s is None or len(s) != 4:
        unit.blocked = f"{sm.label()}: scores are not [B, H, T, S]"
        return unit
    unit.heads = s[1]
    try:
        ax = int(sm.attr("axis", -1))  # type: ignore[arg-type]
        if ax in (1, -3):
            raise _Blocked(f"{sm.label()} normalizes over the heads")
        unit.head_values.append((sm.outputs[0], 1))
        # back to the scores MatMul
        first = sm.input(0)
        if first is None:
            raise _Blocked(f"{sm.label()} has no input")
        v: Value = first
        _one_use(v, "the scores")
        while True:
            node = v.producer
            if node is None:
                raise _Blocked(f"%{v.name} is not made by a scores MatMul")
            unit.head_values.append((v, 1))
            if node.op == "MatMul":
                scores = node
                break
            if node.op in _ELEMENTWISE and len(node.inputs) == 2:
                a, b = node.input(0), node.input(1)
                traced = a if a is not None and a.producer is not None and \
                    _static(a) == s else b
                if traced is None or _static(traced) != s:
                    raise _Blocked(f"{node.label()} broadcasts the scores")
                _side_const(node, traced, 1, unit.heads, unit)
                _one_use(traced, "the scores")
                v = traced
                continue
            x0 = node.input(0)
            if node.op in _PASS and x0 is not None:
                _one_use(x0, "the scores")
                v = x0
                continue
            raise _Blocked(f"{node.label()} ({node.op}) is between the scores and the softmax")
        # forward to the context MatMul
        v = sm.outputs[0]
        while True:
            node = _one_use(v, "the attention weights")
            if node.op in _PASS:
                v = node.outputs[0]
                unit.head_values.append((v, 1))
                continue
            break
        if node.op != "MatMul" or node.input(0) is not v:
            raise _Blocked(f"{node.label()} ({node.op}) is not the context MatMul")
        ctx_mm = node
        q, k, vv = scores.input(0), scores.input(1), ctx_mm.input(1)
        if q is None or k is None or vv is None:
            raise _Blocked(f"{scores.label()}: missing operand")
        for t in (q, k, vv):
            st = _static(t)
            if st is None or len(st) != 4 or st[1] != unit.heads:
                raise _Blocked(f"%{t.name} is not [B, H, *, *] with {unit.heads} heads "
                               "(grouped-query attention is not head-pruned)")
            _one_use(t, "a head tensor")
        dq = _back_heads(q, 1, unit)
        dk = _back_heads(k, 1, unit)
        dv = _back_heads(vv, 1, unit)
        if dq != dk:
            raise _Blocked(f"{scores.label()}: q and k head dims differ")
        unit.context = ctx_mm.outputs[0]
        unit.head_values.append((unit.context, 1))
        _forward_context(unit.context, 1, unit)
        if unit.ctx_dim != dv:
            raise _Blocked(f"{ctx_mm.label()}: the context head dim differs from v's")
        for sp in unit.splits:  # a fused projection must feed this unit alone
            for o in sp.outputs:
                if id(o) not in unit.chan_values:
                    raise _Blocked(f"{sp.label()}: %{o.name} goes elsewhere")
        for n, slots in unit.sources.values():
            width = (_static(n.outputs[0]) or (0,))[-1]
            if sum(d for _, d in slots) * unit.heads != width:
                raise _Blocked(f"{n.label()}: only part of its output is heads")
    except _Blocked as e:
        unit.blocked = str(e)
    return unit


def find_attention(graph: Graph) -> list[AttentionUnit]:
    """Every ``Softmax``-based attention unit of ``graph`` (blocked ones carry the reason)."""
    return [_unit(n) for n in graph.nodes if n.op == "Softmax"]


def _chan_mask(width: int, slots: Sequence[tuple[int, int]], keep: np.ndarray) -> np.ndarray:
    """The channel mask of a tensor whose ``slots`` (offset, head dim) hold the heads."""
    m = np.ones(width, bool)
    for off, d in slots:
        m[off:off + d * keep.size] = np.repeat(keep, d)
    return m


def head_scores(unit: AttentionUnit, importance: str,
                context: Sequence[np.ndarray] | None = None) -> np.ndarray:
    """Per-head importance (see the module docstring)."""
    h = unit.heads
    assert unit.out_proj is not None
    wo = np.asarray(unit.out_proj.input(1).const, np.float64)  # type: ignore[union-attr]
    # the output projection's rows per input channel: [H*dv, out]
    wo_in = wo.T if unit.out_proj.op == "Gemm" and unit.out_proj.attr("transB", 0) else wo
    wo_h = wo_in.reshape(h, unit.ctx_dim, -1)
    if importance == "activation" and context:
        total = np.zeros(h)
        for c in context:  # [B, H, T, dv]
            c64 = np.asarray(c, np.float64)
            contrib = np.einsum("bhtd,hdo->bhto", c64, wo_h)
            total += np.mean(np.sum(contrib ** 2, axis=-1), axis=(0, 2))
        return total / max(len(context), 1)
    parts = []
    for n, slots in unit.sources.values():
        w = np.asarray(n.input(1).const, np.float64)  # type: ignore[union-attr]
        rows = w.T if _out_axis(n) == 1 else w  # [out channels, in]
        for off, d in slots:
            blk = rows[off:off + d * h].reshape(h, -1)
            parts.append(np.abs(blk).sum(1) if importance != "l2" else
                         np.sqrt((blk ** 2).sum(1)))
    blk = wo_h.reshape(h, -1)
    parts.append(np.abs(blk).sum(1) if importance != "l2" else np.sqrt((blk ** 2).sum(1)))
    total = np.zeros(h)
    for p in parts:
        mean = float(np.mean(p))
        total += p / mean if mean > 0 else p
    return total


def heads_keep_mask(scores: np.ndarray, drop: int) -> np.ndarray:
    """Keep all but the ``drop`` lowest-scoring heads (ties: the later head goes first)."""
    keep = np.ones(scores.size, bool)
    if drop > 0:
        order = np.argsort(scores, kind="stable")
        keep[order[:drop]] = False
    return keep


def apply_heads(graph: Graph, ctx: PassContext | None, unit: AttentionUnit,
                keep: np.ndarray) -> bool:
    """Drop the heads of ``unit`` where ``keep`` is False (see the module docstring)."""
    if keep.all():
        return False
    if not keep.any():
        raise ValueError(f"attention {unit.name} would lose every head")
    assert unit.out_proj is not None
    hk = int(keep.sum())
    rw = ShapeRewriter(graph, ctx, rule="prune-heads", root=unit.softmax)

    def slice_const(node: Node, i: int, axis: int, m: np.ndarray) -> None:
        v = node.input(i)
        assert v is not None and v.const is not None
        arr = np.ascontiguousarray(np.compress(m, v.const, axis=axis))
        rw.set_input(node, i, rw.const(arr, v.name))

    for n, slots in unit.sources.values():
        width = (_static(n.outputs[0]) or (0,))[-1]
        m = _chan_mask(width, [(off, d) for off, d in slots], keep)
        slice_const(n, 1, _out_axis(n), m)
        b = n.input(2) if n.op == "Gemm" and len(n.inputs) > 2 else None
        if b is not None and b.const is not None and b.const.shape[-1] == width:
            slice_const(n, 2, b.const.ndim - 1, m)
    op = unit.out_proj
    mo = _chan_mask(unit.heads * unit.ctx_dim, [(0, unit.ctx_dim)], keep)
    slice_const(op, 1, 1 - _out_axis(op), mo)
    for n, i, axis in unit.head_consts:
        slice_const(n, i, axis, keep)
    for v, axis in unit.head_values:
        shape = list(v.shape or ())
        shape[axis] = hk
        rw.set_type(v, TensorType(v.dtype, tuple(shape)))
    for v, slots in unit.chan_values.values():
        shape = list(v.shape or ())
        width = int(shape[-1])  # type: ignore[arg-type]
        shape[-1] = int(_chan_mask(width, slots, keep).sum())
        rw.set_type(v, TensorType(v.dtype, tuple(shape)))
    for n in {id(r): r for r in unit.reshapes}.values():  # shared shape constants: new ones
        sv = n.input(1)
        assert sv is not None
        rw.set_input(n, 1, rw.const(np.asarray(n.outputs[0].shape, np.int64),
                                    sv.name if sv.name else "shape"))
    for sp in unit.splits:
        sizes = np.asarray([(o.shape or (0,))[-1] for o in sp.outputs], np.int64)
        if len(sp.inputs) > 1 and sp.input(1) is not None:
            rw.set_input(sp, 1, rw.const(sizes, sp.input(1).name))  # type: ignore[union-attr]
        elif sp.attr("split") is not None:
            rw.set_attr(sp, "split", [int(s) for s in sizes])
    rw.finish()
    return True


def context_values(units: Sequence[AttentionUnit]) -> list[str]:
    """Names of the contexts of ``units`` (for activation importance)."""
    return [u.context.name for u in units if u.context is not None]


def unit_macs(unit: AttentionUnit) -> int:
    """MACs of the unit's projections, attention matmuls included (for the report)."""
    from targets.cost import node_macs

    nodes = unit.projections() + ([unit.out_proj] if unit.out_proj is not None else [])
    return sum(node_macs(n) for n in nodes)


def keep_for(units: Sequence[AttentionUnit], sparsity: float, importance: str,
             contexts: Mapping[str, Sequence[np.ndarray]] | None = None
             ) -> dict[int, np.ndarray]:
    """Keep-masks (by unit index) dropping ``round(H * sparsity)`` heads of every unit."""
    out: dict[int, np.ndarray] = {}
    for i, u in enumerate(units):
        drop = min(math.floor(u.heads * sparsity + 0.5), u.heads - 1)
        if drop <= 0:
            continue
        ctxv = (contexts or {}).get(u.context.name) if u.context is not None else None
        out[i] = heads_keep_mask(head_scores(u, importance, ctxv), drop)
    return out

"""Channel groups for structured pruning: which output channels can be dropped together.

A *source* is a layer whose output channels are free to choose: an ungrouped ``Conv``, a
``Gemm`` (``transA=0``) or a ``MatMul`` with a constant 2-D weight, each with a weight no other
node reads. Its output is followed, in graph order, through ops that keep channel ``c`` in
channel ``c`` (activations, pools, batch norm, depthwise convs, per-channel constants), and a
tensor's channel axis is described as a list of *segments* ``(group, length)``:

- a binary op (``Add``, ``Mul`` ...) of two traced tensors ties their groups together
  (a residual: the same channels must be dropped on every branch) -- union-find;
- a ``Reshape`` that keeps the channel axis last (``[B*T, C] <-> [B, T, C]`` around a
  ``Gemm``) passes them on, its shape constant rewritten;
- ``Concat`` on the channel axis concatenates the segments (an untraced input is a fixed
  segment);
- a ``Conv``/``Gemm``/``MatMul`` reading a traced tensor as its data input is a *terminal*: its
  weight loses the matching input channels;
- anything else (a graph output, a reshape, an op that mixes channels) *blocks* the groups it
  sees: they are left alone, and the plan says why.

:func:`plan_channels` builds the groups, :func:`apply_channels` shrinks every constant and
tensor of the chosen groups at once (a :class:`~passes.lowrank.common.ShapeRewriter` rewrite).
Dropping channel ``c`` of a group is exactly the original network with channel ``c`` of every
tensor in the group replaced by zero *at the terminals* (the "masked reference").
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from compiler.ir import Graph, Node, TensorType, Value
from compiler.passes import PassContext
from passes.lowrank.common import ShapeRewriter

__all__ = ["ChannelGroup", "ChannelPlan", "plan_channels", "apply_channels", "weight_axes",
           "PASS_THROUGH"]

#: ops whose output channel ``c`` depends only on input channel ``c`` (input 0)
PASS_THROUGH = frozenset({
    "Relu", "Clip", "Sigmoid", "HardSwish", "HardSigmoid", "LeakyRelu", "Tanh", "Gelu", "Erf",
    "Identity", "Dropout", "MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool",
    "Neg", "Abs", "Elu", "Selu", "Softplus", "Mish", "PRelu",
})
_BINARY = frozenset({"Add", "Sub", "Mul", "Div", "Max", "Min"})
_REDUCE = frozenset({"ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin"})

Segs = list[tuple[int | None, int]]


@dataclass
class ChannelGroup:
    """Output channels that are pruned together: ``channels`` wide, produced by ``sources``
    (residual groups have several), read by ``terminals``."""

    gid: int
    channels: int
    sources: list[Node] = field(default_factory=list)
    terminals: list[Node] = field(default_factory=list)
    blocked: str | None = None

    def names(self) -> list[str]:
        """The sources' layer names."""
        return [n.name or n.outputs[0].name for n in self.sources]


@dataclass
class ChannelPlan:
    """The groups of a graph and the channel layout of every traced tensor."""

    groups: list[ChannelGroup]
    layouts: dict[int, tuple[Value, int, Segs]]  # id(value) -> (value, channel axis, segments)
    parent: dict[int, int]
    #: constants to slice: (node, input index, axis of the constant, id of the traced value)
    slices: list[tuple[Node, int, int, int]] = field(default_factory=list)
    depthwise: list[Node] = field(default_factory=list)
    #: reshapes that keep the channel axis last: (node, id of the traced input)
    reshapes: list[tuple[Node, int]] = field(default_factory=list)

    def find(self, g: int) -> int:
        """The representative group of ``g`` (after unions)."""
        while self.parent[g] != g:
            self.parent[g] = self.parent[self.parent[g]]
            g = self.parent[g]
        return g

    def prunable(self) -> list[ChannelGroup]:
        """Representative groups that are not blocked, in graph order."""
        return [g for g in self.groups if self.find(g.gid) == g.gid and g.blocked is None]

    def blocked(self) -> list[ChannelGroup]:
        """Representative groups that are blocked (with ``blocked`` the reason)."""
        return [g for g in self.groups if self.find(g.gid) == g.gid and g.blocked is not None]

    def macs(self, g: ChannelGroup) -> int:
        """MACs of the layers a group's channels feed or come from."""
        from targets.cost import node_macs

        nodes = {id(n): n for n in g.sources + g.terminals}
        return sum(node_macs(n) for n in nodes.values())


def weight_axes(node: Node) -> tuple[int, int]:
    """``(output axis, input axis)`` of the weight of a Conv / Gemm / MatMul."""
    if node.op == "Conv":
        return 0, 1
    if node.op == "Gemm" and node.attr("transB", 0):
        return 0, 1
    return 1, 0


def _const1(v: Value | None) -> bool:
    return v is not None and v.is_const and v.const is not None and len(v.uses) == 1


def _static(v: Value | None) -> tuple[int, ...] | None:
    if v is None or v.shape is None:
        return None
    dims = [d for d in v.shape if isinstance(d, int)]
    return tuple(dims) if len(dims) == len(v.shape) else None


def _is_source(n: Node) -> bool:
    if n.op not in ("Conv", "Gemm", "MatMul") or not n.outputs:
        return False
    w = n.input(1)
    if not _const1(w) or _static(n.outputs[0]) is None:
        return False
    assert w is not None and w.const is not None
    if n.op == "Conv":
        return int(n.attr("group", 1)) == 1 and w.const.ndim >= 3  # type: ignore[arg-type]
    if n.op == "Gemm":
        return not n.attr("transA", 0) and w.const.ndim == 2
    return w.const.ndim == 2


def _terminal_axis_ok(n: Node, axis: int, rank: int) -> bool:
    if n.op == "Conv":
        return axis == 1
    if n.op == "Gemm":
        return axis == 1 and rank == 2
    return axis == rank - 1


def _is_depthwise(n: Node, channels: int) -> bool:
    w = n.input(1)
    return (n.op == "Conv" and _const1(w) and w is not None and w.const is not None
            and int(n.attr("group", 1)) == channels == w.const.shape[0]  # type: ignore[arg-type]
            and w.const.shape[1] == 1)


def _axes_of(n: Node) -> list[int] | None:
    axes = n.attr("axes")
    if axes is None and len(n.inputs) > 1:
        a = n.input(1)
        if a is None or not a.is_const or a.const is None:
            return None
        axes = a.const.tolist()
    return None if axes is None else [int(x) for x in axes]  # type: ignore[union-attr]


def plan_channels(graph: Graph) -> ChannelPlan:
    """Trace every source's channels through the graph (see the module docstring)."""
    plan = ChannelPlan([], {}, {})
    groups = plan.groups

    def block(segs: Segs, why: str) -> None:
        for g, _ in segs:
            if g is not None:
                grp = groups[plan.find(g)]
                grp.blocked = grp.blocked or why

    def union(a: int, b: int) -> None:
        ra, rb = plan.find(a), plan.find(b)
        if ra == rb:
            return
        lo, hi = min(ra, rb), max(ra, rb)
        plan.parent[hi] = lo
        ga, gb = groups[lo], groups[hi]
        ga.sources += gb.sources
        ga.terminals += gb.terminals
        ga.blocked = ga.blocked or gb.blocked

    def layout(v: Value | None) -> tuple[Value, int, Segs] | None:
        return None if v is None else plan.layouts.get(id(v))

    def setl(v: Value, axis: int, segs: Segs) -> None:
        plan.layouts[id(v)] = (v, axis, segs)

    for n in graph.nodes:
        traced = [(i, lay) for i, v in enumerate(n.inputs) if (lay := layout(v)) is not None]
        label = n.label()
        out = n.outputs[0] if n.outputs else None
        if n.op in ("Conv", "Gemm", "MatMul"):
            x = layout(n.input(0))
            others = [lay for i, lay in traced if i != 0]
            for lay in others:
                block(lay[2], f"{label} reads the channels as a weight")
            if x is not None:
                _, axis, segs = x
                total = sum(k for _, k in segs)
                shape = _static(x[0])
                if n.op == "Conv" and int(n.attr("group", 1)) != 1:  # type: ignore[arg-type]
                    if _is_depthwise(n, total) and out is not None and _static(out) is not None:
                        b = n.input(2) if len(n.inputs) > 2 else None
                        if b is not None and not _const1(b):
                            block(segs, f"{label}: the bias is shared")
                            continue
                        plan.depthwise.append(n)
                        setl(out, 1, list(segs))
                        continue
                    block(segs, f"{label} is a grouped convolution")
                elif shape is None or not _terminal_axis_ok(n, axis, len(shape)) or \
                        not _const1(n.input(1)):
                    block(segs, f"{label} reads the channels on another axis or shares its "
                                "weight")
                else:
                    for g, _ in segs:
                        if g is not None:
                            grp = groups[plan.find(g)]
                            if n not in grp.terminals:
                                grp.terminals.append(n)
            if _is_source(n) and out is not None:
                shape_o = _static(out)
                assert shape_o is not None
                axis_o = 1 if n.op == "Conv" else len(shape_o) - 1
                b = n.input(2) if len(n.inputs) > 2 else None
                gid = len(groups)
                grp = ChannelGroup(gid, shape_o[axis_o], [n])
                plan.parent[gid] = gid
                groups.append(grp)
                if b is not None and not _const1(b):
                    grp.blocked = f"{label}: the bias is shared"
                setl(out, axis_o, [(gid, shape_o[axis_o])])
            continue
        if not traced:
            continue
        if n.op in PASS_THROUGH and len(traced) == 1 and traced[0][0] == 0 and out is not None:
            _, axis, segs = traced[0][1]
            if n.op == "PRelu":
                s = n.input(1)
                if s is None or not s.is_const or s.const is None or s.const.size != 1:
                    block(segs, f"{label} has per-channel slopes")
                    continue
            setl(out, axis, list(segs))
            continue
        if n.op == "BatchNormalization" and traced[0][0] == 0 and len(traced) == 1 and \
                out is not None:
            _, axis, segs = traced[0][1]
            params = [(i, n.input(i)) for i in range(1, 5)]
            if axis != 1 or not all(_const1(p) for _, p in params):
                block(segs, f"{label}: shared or non-constant statistics")
                continue
            for i, _ in params:
                plan.slices.append((n, i, 0, id(n.input(0))))
            setl(out, axis, list(segs))
            continue
        if n.op in _BINARY and out is not None and len(n.inputs) == 2:
            la, lb = layout(n.input(0)), layout(n.input(1))
            if la is not None and lb is not None:
                if la[1] != lb[1] or [k for _, k in la[2]] != [k for _, k in lb[2]]:
                    block(la[2] + lb[2], f"{label} combines tensors of different channel layouts")
                    continue
                ok = True
                for (ga, _), (gb, _) in zip(la[2], lb[2]):
                    if ga is not None and gb is not None:
                        union(ga, gb)
                    elif ga is not None or gb is not None:
                        block([(ga, 0), (gb, 0)], f"{label} adds a fixed tensor to the channels")
                        ok = False
                if ok:
                    setl(out, la[1], [(g, k) for g, k in la[2]])
                else:
                    block(la[2] + lb[2], f"{label} adds a fixed tensor to the channels")
                continue
            idx, lay = traced[0]
            other = n.input(1 - idx)
            _, axis, segs = lay
            total = sum(k for _, k in segs)
            rank = len(_static(lay[0]) or ())
            oshape = other.shape if other is not None else None
            if other is None or oshape is None:
                block(segs, f"{label}: unknown operand shape")
                continue
            pos = axis - (rank - len(oshape))  # right-aligned broadcasting
            dim = oshape[pos] if 0 <= pos < len(oshape) else 1
            if dim == 1:
                setl(out, axis, list(segs))
            elif dim == total and _const1(other):
                plan.slices.append((n, 1 - idx, pos, id(lay[0])))
                setl(out, axis, list(segs))
            else:
                block(segs, f"{label} mixes the channels with %{other.name}")
            continue
        if n.op == "Concat" and out is not None:
            cat_axes = {lay[1] for _, lay in traced}
            rank = len(_static(out) or ())
            cat_axis = int(n.attr("axis", 0))  # type: ignore[arg-type]
            cat_axis = cat_axis + rank if cat_axis < 0 else cat_axis
            all_segs = [s for _, lay in traced for s in lay[2]]
            if len(cat_axes) != 1 or cat_axis not in cat_axes:
                block(all_segs, f"{label} concatenates on another axis")
                continue
            segs_out: Segs = []
            for v in n.inputs:
                lay_v = layout(v)
                if lay_v is not None:
                    segs_out += lay_v[2]
                else:
                    shp = _static(v)
                    if shp is None:
                        segs_out = []
                        break
                    segs_out.append((None, shp[cat_axis]))
            if not segs_out:
                block(all_segs, f"{label}: unknown input shape")
                continue
            setl(out, cat_axis, segs_out)
            continue
        if n.op in _REDUCE and len(traced) == 1 and traced[0][0] == 0 and out is not None:
            _, axis, segs = traced[0][1]
            rank = len(_static(traced[0][1][0]) or ())
            axes = _axes_of(n)
            if axes is None or not rank:
                block(segs, f"{label} reduces over unknown axes")
                continue
            axes = [a + rank if a < 0 else a for a in axes]
            if axis in axes:
                block(segs, f"{label} reduces over the channels")
                continue
            keep = int(n.attr("keepdims", 1))  # type: ignore[arg-type]
            setl(out, axis if keep else axis - sum(1 for a in axes if a < axis), list(segs))
            continue
        if n.op == "Reshape" and len(traced) == 1 and traced[0][0] == 0 and out is not None:
            # [B*T, C] <-> [B, T, C] around a Gemm: the channel axis stays last
            xv, axis, segs = traced[0][1]
            ishape, oshape, sv = _static(xv), _static(out), n.input(1)
            if ishape is not None and oshape is not None and axis == len(ishape) - 1 and \
                    oshape[-1] == ishape[-1] and sv is not None and sv.is_const and \
                    sv.const is not None and sv.const.ndim == 1 and sv.const.size and \
                    int(sv.const[-1]) in (ishape[-1], -1, 0):
                plan.reshapes.append((n, id(xv)))
                setl(out, len(oshape) - 1, list(segs))
                continue
            block(segs, f"{label} moves the channel axis")
            continue
        if n.op == "Flatten" and len(traced) == 1 and out is not None:
            _, axis, segs = traced[0][1]
            shp = _static(traced[0][1][0])
            if int(n.attr("axis", 1)) == 1 and axis == 1 and shp is not None and \
                    math.prod(shp[2:]) == 1:  # type: ignore[arg-type]
                setl(out, 1, list(segs))
                continue
            block(segs, f"{label} flattens the channels with other axes")
            continue
        for _, lay in traced:
            block(lay[2], f"{label} ({n.op}) is not channel-wise")
    for v in graph.outputs:
        lay = layout(v)
        if lay is not None:
            block(lay[2], f"%{v.name} is a graph output")
    return plan


def _mask(plan: ChannelPlan, segs: Segs, keep: dict[int, np.ndarray]) -> np.ndarray:
    parts = []
    for g, k in segs:
        m = keep.get(plan.find(g)) if g is not None else None
        parts.append(m if m is not None else np.ones(k, bool))
    return np.concatenate(parts) if parts else np.ones(0, bool)


def apply_channels(graph: Graph, ctx: PassContext | None, plan: ChannelPlan,
                   keep: dict[int, np.ndarray]) -> bool:
    """Shrink the groups in ``keep`` (representative gid -> boolean mask of kept channels)
    and everything their channels touch. Returns whether anything changed."""
    keep = {g: m for g, m in keep.items() if not bool(m.all())}
    if not keep:
        return False
    for gid, km in keep.items():
        if not km.any():
            raise ValueError(f"channel group {gid} would lose every channel")
    masks: dict[int, np.ndarray] = {}
    for vid, (_, _, segs) in plan.layouts.items():
        if any(g is not None and plan.find(g) in keep for g, _ in segs):
            masks[vid] = _mask(plan, segs, keep)
    rw = ShapeRewriter(graph, ctx, rule="prune-channels")

    def slice_const(node: Node, i: int, cuts: list[tuple[int, np.ndarray]]) -> None:
        v = node.input(i)
        assert v is not None and v.const is not None
        arr = v.const
        for axis, m in cuts:
            if arr.shape[axis] == m.size:
                arr = np.compress(m, arr, axis=axis)
        rw.set_input(node, i, rw.const(np.ascontiguousarray(arr), v.name))

    touched: set[int] = set()
    for g in plan.groups:
        for n in g.sources + g.terminals:
            if id(n) in touched:
                continue
            out_m = masks.get(id(n.outputs[0])) if _is_source(n) else None
            x = n.input(0)
            in_m = masks.get(id(x)) if x is not None else None
            if out_m is None and in_m is None:
                continue
            touched.add(id(n))
            oax, iax = weight_axes(n)
            cuts = []
            if out_m is not None:
                cuts.append((oax, out_m))
            if in_m is not None:
                cuts.append((iax, in_m))
            slice_const(n, 1, cuts)
            b = n.input(2) if len(n.inputs) > 2 else None
            if out_m is not None and b is not None and b.const is not None and \
                    b.const.ndim >= 1 and b.const.shape[-1] == out_m.size:
                slice_const(n, 2, [(b.const.ndim - 1, out_m)])
    for n in plan.depthwise:
        dm = masks.get(id(n.outputs[0]))
        if dm is None:
            continue
        slice_const(n, 1, [(0, dm)])
        b = n.input(2) if len(n.inputs) > 2 else None
        if b is not None and b.const is not None:
            slice_const(n, 2, [(0, dm)])
        rw.set_attr(n, "group", int(dm.sum()))
    for n, i, axis, vid in plan.slices:
        sm = masks.get(vid)
        if sm is not None:
            slice_const(n, i, [(axis, sm)])
    for n, vid in plan.reshapes:
        rm = masks.get(vid)
        sv = n.input(1)
        if rm is None or sv is None or sv.const is None:
            continue
        shape_c = sv.const.copy()
        if int(shape_c[-1]) == rm.size:
            shape_c[-1] = int(rm.sum())
            rw.set_input(n, 1, rw.const(shape_c, sv.name))
    for vid, vm in masks.items():
        v, axis, _ = plan.layouts[vid]
        shape = list(v.shape or ())
        shape[axis] = int(vm.sum())
        rw.set_type(v, TensorType(v.dtype, tuple(shape)))
    rw.finish()
    return True


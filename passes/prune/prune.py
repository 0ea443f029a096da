"""``prune``: weight pruning, unstructured (``magnitude``), semi-structured (``nm``) or
structured (``channel``, ``head``).

- ``method=magnitude``: in every Conv/Gemm/MatMul weight, zero the ``sparsity`` fraction of
  weights with the smallest score (``|w|``; with ``importance=activation``, ``|w| * ||x_j||``,
  the input channel's calibration norm, as Wanda does).
- ``method=nm``: keep the ``n`` highest-scoring weights of every ``m`` consecutive ones along
  the reduction axis (2:4 is ``n=2,m=4``).

  Both leave every tensor its shape. **The HTP gains no speed from them**: its HMX/HVX kernels
  are dense and have no sparse path, so a zero costs what any weight costs; they only make the
  weights compress better (and 2:4 is what sparse tensor cores elsewhere accelerate). The report
  says so for every layer.
- ``method=channel``: structured filter pruning that really shrinks tensors. Output channels
  are grouped by :func:`~passes.prune.channels.plan_channels` (a conv -> [batchnorm] -> conv
  chain, linear -> linear, through depthwise convs, residual groups that must drop the same
  channels on every branch, concats); each group drops its ``sparsity`` fraction of channels
  with the lowest importance (``l1``/``l2`` norm of the sources' filters, or ``activation``:
  ``mean|x_c| * ||W[:, c]||`` summed over the consumers, on the calibration data), and every
  consumer loses the matching input channels. ``allocation=sensitivity`` measures, on the CPU
  reference with the calibration data, how much each group alone costs at the target sparsity,
  and prunes the robust groups harder and the sensitive ones less, keeping the MAC-weighted
  mean at ``sparsity``.

- ``method=head``: whole attention heads (:mod:`passes.prune.heads`): each ``Softmax``
  attention block is traced back to its Q/K/V projections (fused through a ``Split`` or
  separate) and forward to its output projection; the ``sparsity`` fraction of its heads with
  the lowest importance (``l1``/``l2`` norms of the head's projection rows and output columns,
  or ``activation``: the head's contribution to the output projection on the calibration data)
  is removed from every tensor and weight of the block. The result equals the original with
  those heads' contexts zeroed.

``sparsity=0`` changes nothing; ``sparsity=1`` (or ``n=0``), and a ``layers=``/``sparsities=``
name that matches no node, are refused with a :class:`~passes.lowrank.common.CompressionError`
naming the node or the name. ``ctx.report["compression"]`` gets one row per layer (or channel
group, or attention block): what was done, why, and the measured error (``weight_error`` of a
sparsified weight, ``alone_sqnr_db`` of a group or block pruned alone, ``model_sqnr_db`` of the
whole pass, on the calibration data).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import numpy as np

from compiler.ir import Graph, Node
from compiler.passes import Pass, PassContext, PassResult, option
from compiler.rewrite import Rewriter
from passes.lowrank.common import (
    CompressionError,
    calibration_feeds,
    check_layer_names,
    collect,
    layer_name,
    output_sqnr_db,
    reference_outputs,
    report_entry,
    rows_from,
    summarize,
)
from passes.prune.channels import ChannelGroup, ChannelPlan, apply_channels, plan_channels
from passes.prune.heads import (
    AttentionUnit,
    apply_heads,
    context_values,
    find_attention,
    keep_for,
    unit_macs,
)

__all__ = ["Prune", "NO_SPEEDUP", "channel_keep_masks", "parse_sparsities"]

#: what the report says about unstructured and N:M sparsity on the HTP
NO_SPEEDUP = ("no speed-up on the HTP: its kernels are dense, zeros cost what any weight "
              "costs; sparsity only helps a compressed artifact")

Importance = Literal["l1", "l2", "activation"]

#: up to this many channel groups or attention blocks, each row gets the model's output SQNR
#: with that group alone pruned (one CPU-reference run each)
MAX_ALONE = 32


def _key(n: Node) -> str:
    return n.name or n.outputs[0].name


def parse_sparsities(items: Sequence[str]) -> dict[str, float]:
    """``("conv2d:0.5",)`` as ``{"conv2d": 0.5}`` (``CompressionError`` when malformed)."""
    out: dict[str, float] = {}
    for item in items:
        name, sep, num = item.rpartition(":")
        try:
            out[name] = float(num)
        except ValueError:
            sep = ""
        if not sep or not name:
            raise CompressionError(f"prune: sparsities entry {item!r} is not 'layer:fraction'")
    return out


def _weight_layers(graph: Graph, layers: set[str]) -> list[Node]:
    out = []
    for n in graph.nodes:
        if n.op not in ("Conv", "Gemm", "MatMul") or not n.outputs:
            continue
        w = n.input(1)
        if w is None or not w.is_const or w.const is None or w.const.ndim < 2:
            continue
        if layers and _key(n) not in layers and n.src not in layers:
            continue
        out.append(n)
    return out


def _as_rows(node: Node, w: np.ndarray) -> tuple[np.ndarray, tuple[int, ...], list[int]]:
    """``w`` as ``[outputs, reduction]`` rows, with how to undo it."""
    from passes.prune.channels import weight_axes

    oax, _ = weight_axes(node)
    perm = [oax] + [i for i in range(w.ndim) if i != oax]
    t = np.transpose(w, perm)
    return t.reshape(t.shape[0], -1), t.shape, perm


def _from_rows(rows: np.ndarray, shape: tuple[int, ...], perm: list[int]) -> np.ndarray:
    inv = np.argsort(perm)
    return np.transpose(rows.reshape(shape), inv)


def _input_scale(node: Node, w: np.ndarray, xs: Sequence[np.ndarray]) -> np.ndarray | None:
    """Per-reduction-element input norms (Wanda's ``||x_j||``), in the row layout."""
    if not xs:
        return None
    if node.op == "Conv":
        norms = np.sqrt(np.mean([np.mean(np.asarray(x, np.float64) ** 2, axis=(0, 2, 3))
                                 for x in xs], axis=0))
        return np.repeat(norms, int(np.prod(w.shape[2:])))
    k = xs[0].shape[-1]
    flat = np.concatenate([np.asarray(x, np.float64).reshape(-1, k) for x in xs])
    return np.sqrt(np.mean(flat ** 2, axis=0))


def channel_keep_masks(plan: ChannelPlan, sparsity: Mapping[int, float], importance: Importance,
                       acts: Mapping[str, Sequence[np.ndarray]] | None = None,
                       multiple: int = 1) -> dict[int, np.ndarray]:
    """Kept-channel masks of the groups in ``sparsity`` (gid -> fraction to drop)."""
    out: dict[int, np.ndarray] = {}
    for g in plan.prunable():
        s = sparsity.get(g.gid, 0.0)
        if s <= 0.0:
            continue
        score = _group_scores(g, importance, acts, plan)
        drop = math.floor(g.channels * s + 0.5)
        keep_n = g.channels - drop
        if multiple > 1:
            keep_n = min(g.channels, int(math.ceil(keep_n / multiple) * multiple))
        keep_n = max(keep_n, 1)
        if keep_n >= g.channels:
            continue
        order = np.argsort(-score, kind="stable")
        mask = np.zeros(g.channels, bool)
        mask[order[:keep_n]] = True
        out[g.gid] = mask
    return out


def _group_scores(g: ChannelGroup, importance: Importance,
                  acts: Mapping[str, Sequence[np.ndarray]] | None,
                  plan: ChannelPlan | None = None) -> np.ndarray:
    """Per-channel importance of a group, each contribution normalized by its mean and summed
    (residual groups weigh their branches alike).

    ``l1``/``l2``: the norms of the sources' filters. ``activation``: for every consumer
    (terminal), ``mean|x_c| * ||W[:, c]||`` -- how much channel ``c`` adds to the consumer's
    output on the calibration data (Wanda's score, per channel) -- where ``x`` is the tensor the
    consumer reads, so activations, residual sums and concats are all seen as they are used.
    """
    from passes.prune.channels import weight_axes

    total = np.zeros(g.channels)
    if importance == "activation" and acts and plan is not None:
        for t in g.terminals:
            x = t.input(0)
            lay = plan.layouts.get(id(x)) if x is not None else None
            if x is None or lay is None or x.name not in acts:
                continue
            _, axis, segs = lay
            xs = acts[x.name]
            red = tuple(i for i in range(xs[0].ndim) if i != axis)
            xmean = np.mean([np.mean(np.abs(np.asarray(a, np.float64)), axis=red)
                             for a in xs], axis=0)
            w = t.input(1).const  # type: ignore[union-attr]
            assert w is not None
            _, iax = weight_axes(t)
            wt = np.moveaxis(np.asarray(w, np.float64), iax, 0).reshape(w.shape[iax], -1)
            col = np.sqrt((wt ** 2).sum(axis=1))
            if t.op == "Conv" and col.size != xmean.size:
                continue
            off = 0
            for gid, k in segs:
                if gid is not None and plan.find(gid) == g.gid and k == g.channels:
                    sc = xmean[off:off + k] * col[off:off + k]
                    mean = float(np.mean(sc))
                    total += sc / mean if mean > 0 else sc
                off += k
        if total.any():
            return total
    for n in g.sources:
        w = n.input(1).const  # type: ignore[union-attr]
        assert w is not None
        oax, _ = weight_axes(n)
        t2 = np.moveaxis(np.asarray(w, np.float64), oax, 0).reshape(w.shape[oax], -1)
        sc = np.abs(t2).sum(axis=1) if importance != "l2" else np.sqrt((t2 ** 2).sum(axis=1))
        mean = float(np.mean(sc))
        total += sc / mean if mean > 0 else sc
    return total


@dataclass(frozen=True)
class Prune(Pass):
    """Magnitude, N:M or structured channel pruning (see the module docstring)."""

    name: ClassVar[str] = "prune"
    summary: ClassVar[str] = "Prune weights: magnitude, N:M, or structured channels"
    needs_finite_weights: ClassVar[bool] = True
    method: Literal["magnitude", "nm", "channel", "head"] = option(
        "magnitude", "magnitude (unstructured), nm (N:M), channel (structured: shrinks "
                     "tensors) or head (whole attention heads)")
    sparsity: float = option(0.5, "fraction of weights (magnitude), channels (channel) or "
                                  "heads per attention block (head) to drop, in [0, 1)")
    n: int = option(2, "nm: weights kept of every m")
    m: int = option(4, "nm: group size along the reduction axis")
    importance: Literal["l1", "l2", "activation"] = option(
        "l1", "l1 / l2 weight norms, or activation (calibration)")
    allocation: Literal["uniform", "sensitivity"] = option(
        "uniform", "channel: same sparsity everywhere, or more where the model is robust")
    max_sparsity: float = option(0.9, "channel + sensitivity: cap of any one group")
    multiple: int = option(1, "channel: keep channel counts a multiple of this (HTP lanes)")
    layers: tuple[str, ...] = option((), "only these layers (node or output names; for "
                                         "channel: groups with such a source)")
    sparsities: tuple[str, ...] = option((), "channel/head: per-group sparsity "
                                             "'source:fraction' (overrides sparsity there; for "
                                             "head, source = the block's module or a "
                                             "projection)")

    def _check(self, where: str) -> None:
        if not 0.0 <= self.sparsity <= 1.0:
            raise CompressionError(f"prune: sparsity {self.sparsity} is not in [0, 1]")
        if self.sparsity >= 1.0:
            raise CompressionError(f"prune: sparsity 1.0 would remove every weight of {where}; "
                                   "refused")

    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        """Prune as the options say."""
        if self.method == "channel":
            return self._channels(graph, ctx)
        if self.method == "head":
            return self._heads(graph, ctx)
        return self._weights(graph, ctx)

    # -- attention heads ---------------------------------------------------------------------
    def _heads(self, graph: Graph, ctx: PassContext) -> PassResult:
        start = rows_from(ctx)
        units = find_attention(graph)
        per = parse_sparsities(self.sparsities)
        wanted = set(self.layers) | set(per)
        check_layer_names(graph, [*self.layers, *per], f"prune{{method={self.method}}}")

        def names(u: AttentionUnit) -> list[str]:
            projs = u.projections() + ([u.out_proj] if u.out_proj is not None else [])
            return [u.name] + [k for n in projs for k in (_key(n), n.src) if k]

        for u in units:
            if u.blocked is not None and (not wanted or wanted & set(names(u))):
                report_entry(ctx, {"pass": "prune", "method": "head", "layer": u.name,
                                   "heads": u.heads, "action": "skipped",
                                   "reason": u.blocked})
        units = [u for u in units if u.blocked is None
                 and (not wanted or wanted & set(names(u)))]
        for u in units:
            self._check(f"attention {u.name} ({u.softmax.label()})")
        for name, sp in per.items():
            if not 0.0 <= sp < 1.0:
                raise CompressionError(f"prune: sparsity {sp} for {name} is not in [0, 1)")
        sparsity = {}
        for i, u in enumerate(units):
            hit = [per[k] for k in names(u) if k in per]
            sparsity[i] = hit[0] if hit else self.sparsity
        if not units or not any(sparsity.values()):
            return PassResult(False, {"units": 0})
        feeds = calibration_feeds(graph, ctx)
        contexts: dict[str, list[np.ndarray]] = {}
        if self.importance == "activation":
            if not feeds:
                raise CompressionError("prune: importance=activation needs calibration batches")
            contexts = collect(graph, context_values(units), feeds)
        ref = reference_outputs(graph, feeds[:4])
        keeps = {i: m for i, u in enumerate(units)
                 for m in keep_for([u], sparsity[i], self.importance, contexts).values()}
        alone: dict[int, float] = {}
        if feeds and len(keeps) <= MAX_ALONE:  # each block's own error, on a copy
            for i, km in keeps.items():
                trial = graph.copy()
                tunits = [u for u in find_attention(trial) if u.blocked is None]
                tu = next(u for u in tunits if u.name == units[i].name
                          and u.softmax.outputs[0].name == units[i].softmax.outputs[0].name)
                apply_heads(trial, None, tu, km)
                alone[i] = output_sqnr_db(ref, trial, feeds[:4])
        if not ctx.may_rewrite():
            return PassResult(False, {"units": 0})
        pruned = 0
        for i, u in enumerate(units):
            keep = keeps.get(i)
            entry: dict[str, Any] = {"pass": "prune", "method": "head", "layer": u.name,
                                     "heads_before": u.heads, "importance": self.importance,
                                     "projections": [layer_name(n) for n in u.projections()],
                                     "out_projection": layer_name(u.out_proj)
                                     if u.out_proj is not None else None}
            if keep is None:
                entry.update(heads_after=u.heads, action="kept",
                             reason=f"nothing to drop at sparsity {sparsity[i]:.2f}")
            else:
                macs0 = unit_macs(u)
                apply_heads(graph, ctx, u, keep)
                pruned += 1
                if i in alone:
                    entry["alone_sqnr_db"] = alone[i]
                entry.update(heads_after=int(keep.sum()), action="pruned",
                             kept=[int(h) for h in np.flatnonzero(keep)],
                             macs_before=macs0, macs_after=unit_macs(u),
                             reason=f"lowest {self.importance} importance")
            report_entry(ctx, entry)
        stats: dict[str, int | float] = {"units": pruned}
        if ref and pruned:
            sq = output_sqnr_db(ref, graph, feeds[:4])
            stats["output-sqnr-db"] = sq if math.isfinite(sq) else 999.0
            summarize(ctx, start, {"pass": "prune", "method": "head", "units": pruned}, sq)
        return PassResult(pruned > 0, stats)

    # -- unstructured and N:M ----------------------------------------------------------------
    def _weights(self, graph: Graph, ctx: PassContext) -> PassResult:
        start = rows_from(ctx)
        check_layer_names(graph, self.layers, f"prune{{method={self.method}}}")
        nodes = _weight_layers(graph, set(self.layers))
        if self.method == "nm":
            if not 0 <= self.n <= self.m or self.m < 1:
                raise CompressionError(f"prune: n={self.n}, m={self.m} is not an N:M pattern")
            if self.n == 0 and nodes:
                raise CompressionError(f"prune: n=0 would remove every weight of "
                                       f"{nodes[0].label()}; refused")
            if self.n == self.m:
                return PassResult(False, {"layers": 0})
        else:
            if nodes:
                self._check(nodes[0].label())
            if self.sparsity == 0.0:
                return PassResult(False, {"layers": 0})
        feeds = calibration_feeds(graph, ctx) if self.importance == "activation" else []
        xs = collect(graph, [n.input(0).name for n in nodes], feeds)  # type: ignore[union-attr]
        ref = reference_outputs(graph, calibration_feeds(graph, ctx, 4))
        zeros = total = 0
        changed = 0
        for node in nodes:
            wv = node.input(1)
            assert wv is not None and wv.const is not None
            w = wv.const
            rows, shape, perm = _as_rows(node, np.asarray(w))
            score = np.abs(rows.astype(np.float64))
            scale = _input_scale(node, w, xs.get(node.input(0).name, []))  # type: ignore[union-attr]
            if scale is not None and scale.size == rows.shape[1]:
                score = score * scale[None, :]
            entry: dict[str, Any] = {"pass": "prune", "method": self.method,
                                     "layer": layer_name(node), "op": node.op,
                                     "speedup": NO_SPEEDUP}
            if self.method == "nm":
                if rows.shape[1] % self.m:
                    entry.update(action="skipped", reason=f"reduction size {rows.shape[1]} is "
                                 f"not a multiple of m={self.m}")
                    report_entry(ctx, entry)
                    continue
                g = score.reshape(rows.shape[0], -1, self.m)
                order = np.argsort(-g, axis=2, kind="stable")
                keep = np.zeros_like(g, bool)
                np.put_along_axis(keep, order[:, :, :self.n], True, axis=2)
                mask: np.ndarray = keep.reshape(rows.shape)
            else:
                k = math.floor(score.size * self.sparsity + 0.5)
                if k == 0:
                    continue
                flat = score.reshape(-1)
                idx = np.argsort(flat, kind="stable")[:k]
                mask = np.ones(flat.size, bool)
                mask[idx] = False
                mask = mask.reshape(rows.shape)
            new = _from_rows(np.where(mask, rows, 0).astype(w.dtype), shape, perm)
            if not ctx.may_rewrite():
                break
            rw = Rewriter(graph, ctx, rule=f"prune-{self.method}", root=node)
            rw.replace(wv, rw.const(np.ascontiguousarray(new), wv.name))
            if not wv.uses and not wv.is_output:
                rw.erase_const(wv)
            rw.finish()
            changed += 1
            nz = int(np.count_nonzero(new == 0))
            zeros += nz
            total += new.size
            w64 = np.asarray(w, np.float64)
            entry.update(action="sparsified", sparsity=nz / max(new.size, 1),
                         weight_error=float(np.linalg.norm(w64 - new) /
                                            max(float(np.linalg.norm(w64)), 1e-300)),
                         reason=(f"{self.n}:{self.m} pattern" if self.method == "nm"
                                 else f"smallest {self.sparsity:.0%} by "
                                      f"{'|w|*||x||' if scale is not None else '|w|'}"))
            report_entry(ctx, entry)
        stats: dict[str, int | float] = {"layers": changed,
                                         "sparsity": zeros / total if total else 0.0}
        if ref and changed:
            sq = output_sqnr_db(ref, graph, calibration_feeds(graph, ctx, 4))
            stats["output-sqnr-db"] = sq if math.isfinite(sq) else 999.0
            summarize(ctx, start, {"pass": "prune", "method": self.method,
                                   "sparsity": round(stats["sparsity"], 4),
                                   "speedup": NO_SPEEDUP}, sq)
        ctx.note(f"{self.method} pruning: {stats['sparsity']:.1%} of the weights of {changed} "
                 f"layers are zero; {NO_SPEEDUP}")
        return PassResult(changed > 0, stats)

    # -- structured channels -----------------------------------------------------------------
    def _channels(self, graph: Graph, ctx: PassContext) -> PassResult:
        start = rows_from(ctx)
        plan = plan_channels(graph)
        per = parse_sparsities(self.sparsities)
        wanted = set(self.layers) | set(per)
        check_layer_names(graph, [*self.layers, *per], f"prune{{method={self.method}}}")
        groups = [g for g in plan.prunable()
                  if not wanted or any(_key(s) in wanted or s.src in wanted for s in g.sources)]
        for g in groups:
            self._check(g.sources[0].label())
        for name, s in per.items():
            if not 0.0 <= s < 1.0:
                raise CompressionError(f"prune: sparsity {s} for {name} is not in [0, 1)")
        for g in plan.blocked():
            report_entry(ctx, {"pass": "prune", "method": "channel",
                               "layer": ", ".join(layer_name(s) for s in g.sources),
                               "channels": g.channels, "action": "skipped",
                               "reason": g.blocked})
        if (self.sparsity == 0.0 and not per) or not groups:
            return PassResult(False, {"groups": 0})
        feeds = calibration_feeds(graph, ctx)
        acts: dict[str, list[np.ndarray]] = {}
        if self.importance == "activation":
            if not feeds:
                raise CompressionError("prune: importance=activation needs calibration batches")
            acts = collect(graph, [x.name for g in groups for t in g.terminals
                                   if (x := t.input(0)) is not None], feeds)
        sparsity: dict[int, float] = {}
        for g in groups:
            hit = [per[k] for s in g.sources for k in (_key(s), s.src) if k in per]
            sparsity[g.gid] = hit[0] if hit else self.sparsity
        ref = reference_outputs(graph, feeds[:4])
        sens: dict[int, float] = {}
        if self.allocation == "sensitivity" and not per:
            if not feeds:
                raise CompressionError("prune: allocation=sensitivity needs calibration "
                                       "batches")
            sens = self._sensitivity(graph, plan, groups, sparsity, acts, feeds[:4], ref)
            sparsity = _allocate(plan, groups, sens, self.sparsity, self.max_sparsity)
        if not sens and feeds and len(groups) <= MAX_ALONE:  # each group's own error
            sens = self._sensitivity(graph, plan, groups, sparsity, acts, feeds[:4], ref)
            measured_only = True
        else:
            measured_only = False
        keep = channel_keep_masks(plan, sparsity, self.importance, acts, self.multiple)
        if not ctx.may_rewrite():
            return PassResult(False, {"groups": 0})
        changed = apply_channels(graph, ctx, plan, keep)
        pruned = 0
        for g in groups:
            mask = keep.get(g.gid)
            entry: dict[str, Any] = {
                "pass": "prune", "method": "channel",
                "layer": ", ".join(layer_name(s) for s in g.sources),
                "channels_before": g.channels,
                "channels_after": int(mask.sum()) if mask is not None else g.channels,
                "importance": self.importance, "consumers": len(g.terminals)}
            if g.gid in sens and (mask is not None or not measured_only):
                entry["alone_sqnr_db"] = sens[g.gid]
            if mask is None:
                entry.update(action="kept", reason="nothing to drop at sparsity "
                             f"{sparsity.get(g.gid, 0.0):.2f}")
            else:
                pruned += 1
                entry.update(action="pruned", sparsity=1 - float(mask.mean()),
                             kept=[int(i) for i in np.flatnonzero(mask)],
                             reason=f"lowest {self.importance} importance"
                             + (" (sensitivity-allocated)" if sens and not measured_only
                                else ""))
            report_entry(ctx, entry)
        stats: dict[str, int | float] = {"groups": pruned, "blocked": len(plan.blocked())}
        if ref and changed:
            sq = output_sqnr_db(ref, graph, feeds[:4])
            stats["output-sqnr-db"] = sq if math.isfinite(sq) else 999.0
            summarize(ctx, start, {"pass": "prune", "method": "channel", "groups": pruned}, sq)
        return PassResult(changed, stats)

    def _sensitivity(self, graph: Graph, plan: ChannelPlan, groups: list[ChannelGroup],
                     sparsity: Mapping[int, float], acts: Mapping[str, Sequence[np.ndarray]],
                     feeds: Sequence[Mapping[str, np.ndarray]], ref: Sequence[np.ndarray]
                     ) -> dict[int, float]:
        """Output SQNR (dB) with each group alone pruned at its sparsity."""
        out: dict[int, float] = {}
        for g in groups:
            keep = channel_keep_masks(plan, {g.gid: sparsity[g.gid]}, self.importance, acts,
                                      self.multiple)
            trial = graph.copy()
            tplan = plan_channels(trial)  # the copy's own nodes; gids follow graph order
            apply_channels(trial, None, tplan, keep)
            out[g.gid] = output_sqnr_db(ref, trial, feeds)
        return out


def _allocate(plan: ChannelPlan, groups: list[ChannelGroup], sens: Mapping[int, float],
              target: float, cap: float) -> dict[int, float]:
    """Per-group sparsities whose MAC-weighted mean is ``target``: a group's share grows with
    the square root of how little noise it added alone (robust groups are pruned harder)."""
    macs = {g.gid: max(plan.macs(g), 1) for g in groups}
    noise = {g.gid: 10 ** (-min(sens.get(g.gid, 99.0), 99.0) / 10) for g in groups}
    mean_noise = float(np.mean(list(noise.values())))
    weight = {gid: math.sqrt(mean_noise / max(n, 1e-12)) for gid, n in noise.items()}
    total = sum(macs.values())
    s = {gid: 0.0 for gid in weight}
    free = set(weight)
    budget = target * total
    for _ in range(len(weight) + 1):  # water-filling: capped groups hand their share on
        if not free:
            break
        denom = sum(weight[g] * macs[g] for g in free)
        scale = (budget - sum(s[g] * macs[g] for g in weight if g not in free)) / max(denom,
                                                                                      1e-12)
        over = {g for g in free if weight[g] * scale > cap}
        for g in free:
            s[g] = min(weight[g] * scale, cap)
        if not over:
            break
        free -= over
    return {g: max(v, 0.0) for g, v in s.items()}

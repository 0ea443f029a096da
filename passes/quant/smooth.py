"""``smooth-quant``: migrate activation outliers from a norm's output into the next weights.

For a ``LayerNormalization`` (or ``fuse``'s canonical RMSNorm) whose output feeds only linear
layers with constant weights (``Gemm``/``MatMul``, through reshapes that keep the channel
axis last), channel ``k`` of the activation is divided by
``s_k = max|X_k|^α / max|W_k|^(1-α)`` (folded into the norm's scale and shift) and the
weights' input channel ``k`` multiplied by it (Xiao et al., "SmoothQuant", 2023). Activation
maxima come from the calibration batches (``ctx.calibration``) on the CPU reference.

Exact in float. It flattens channel outliers of the activation, which 8-bit per-tensor
activations cannot hold, at the cost of wider weight channels (per-channel weights absorb
that). ``report["smoothing"]`` lists, per norm, the activation's max/median channel range
before and after.

``split=true`` leaves the norm's output as it is and gives the linear layers a scaled copy,
``Mul(out, 1/s)``, so it also applies where other ops read the output (a post-norm
transformer's residual stream, BERT's): under ``w8a8`` the norm's output stays at 16 bits
for the residual (the automatic policy keeps it) while the linear layers read the copy at 8
bits, as 8x8 kernels instead of 16x8 ones. ``1/s`` is snapped to multiples of
``max(1/s) / 255``, a grid that 8-bit and 16-bit encodings of the constant hold exactly, and
the weights take the snapped scales, so the quantized graph multiplies by exactly what the
weights were divided by. ``min_ratio`` leaves out norms whose output has no channel outliers
(channel max over median channel max below it): there the copy would only cost bits.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np

from compiler.errors import QuantizationError
from compiler.ir import Graph, Node, Value
from compiler.passes import Pass, PassContext, PassResult, option
from compiler.rewrite import Rewriter

__all__ = ["SmoothQuant", "smoothing_sites"]

_MOVES = frozenset({"Reshape", "Flatten"})


@dataclass
class _Site:
    norm: Node
    out: Value
    scale: Value  # the norm's per-channel scale constant
    shift: Value | None
    linears: list[tuple[Node, int]]  # node, weight input axis of the channel
    uses: list[tuple[Node, int]] = field(default_factory=list)  # split: the uses to rewire


def _channel_const(v: Value | None, k: int) -> bool:
    return (v is not None and v.is_const and v.const is not None and v.const.size == k
            and len(v.uses) == 1)


def _linear_axis(u: Node, i: int, k: int) -> int | None:
    """The channel axis of ``u``'s constant weight when ``u`` is a linear layer reading a
    width-``k`` activation (channel axis last) at input ``i``; None otherwise."""
    w = u.inputs[1] if len(u.inputs) > 1 else None
    if i != 0 or w is None or not w.is_const or w.const is None or len(w.uses) != 1:
        return None
    if u.op == "Gemm" and u.attr("transA", 0) == 0:
        axis = 1 if u.attr("transB", 0) == 1 else 0
    elif u.op == "MatMul" and w.const.ndim == 2:
        axis = 0
    else:
        return None
    return axis if w.const.shape[axis] == k else None


def _through_moves(u: Node, i: int, k: int, out: list[tuple[Node, int]]) -> bool:
    """Whether the use ``(u, i)`` reaches only linear layers (through reshapes that keep the
    channel axis last); collects them."""
    if u.op in _MOVES and i == 0:
        shape = u.outputs[0].shape
        found: list[tuple[Node, int]] = []  # kept only if every path ends in a linear layer
        if shape is not None and len(shape) > 0 and shape[-1] == k and _linear_users(
                u.outputs[0], k, found):
            out.extend(found)
            return True
        return False
    axis = _linear_axis(u, i, k)
    if axis is None:
        return False
    out.append((u, axis))
    return True


def _linear_users(v: Value, k: int, out: list[tuple[Node, int]]) -> bool:
    """Collect the linear consumers of ``v`` (channel axis last, width ``k``)."""
    if v.is_output:
        return False
    for u, i in v.uses:
        if not _through_moves(u, i, k, out):
            return False
    return bool(out)


def smoothing_sites(graph: Graph, split: bool = False) -> list[_Site]:
    """Norms whose output feeds only linear layers, in graph order; with ``split``, norms
    whose output feeds any linear layer (``_Site.uses``: the uses that reach them)."""
    sites = []
    for n in graph.nodes:
        shape = n.outputs[0].shape if n.outputs else None
        if not shape or not isinstance(shape[-1], int):
            continue
        k = int(shape[-1])
        if n.op == "LayerNormalization" and n.attr("axis", -1) in (-1, len(shape) - 1):
            scale, shift = n.inputs[1], n.inputs[2] if len(n.inputs) > 2 else None
        elif n.op == "Mul" and n.meta.get("fused") == "RMSNormalization":
            scale = next((v for v in n.inputs if v is not None and v.is_const), None)
            shift = None
        else:
            continue
        foldable = _channel_const(scale, k) and (shift is None or _channel_const(shift, k))
        if scale is None or not (split or foldable):
            continue  # the split leaves the norm's scale and shift alone
        linears: list[tuple[Node, int]] = []
        if split:
            uses = [(u, i) for u, i in n.outputs[0].uses if _through_moves(u, i, k, linears)]
            if uses:
                sites.append(_Site(n, n.outputs[0], scale, shift, linears, uses))
        elif _linear_users(n.outputs[0], k, linears):
            sites.append(_Site(n, n.outputs[0], scale, shift, linears))
    return sites


@dataclass(frozen=True)
class SmoothQuant(Pass):
    """Move activation channel outliers after norms into the next linear weights."""

    name: ClassVar[str] = "smooth-quant"
    summary: ClassVar[str] = "SmoothQuant: fold activation channel scales from norms into weights"
    needs_finite_weights: ClassVar[bool] = True
    alpha: float = option(0.5, "migration strength: 0 = none, 1 = all of the range to weights")
    split: bool = option(False, "leave the norm's output as it is and give the linear layers "
                         "a scaled copy (Mul by 1/s), also where other ops read the output")
    min_ratio: float = option(0.0, "only norms whose output's channel max / median channel "
                              "max is at least this (0: every norm)")

    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        """Measure channel maxima on the calibration batches, then rescale."""
        from compiler.reference import ReferenceRunner
        from passes.quant.calibrate import check_batch

        if not 0.0 <= self.alpha <= 1.0:
            raise QuantizationError(f"smooth-quant: alpha {self.alpha} is not in [0, 1]")
        if not self.min_ratio >= 0.0:
            raise QuantizationError(f"smooth-quant: min_ratio {self.min_ratio} is negative")
        sites = smoothing_sites(graph, self.split)
        if not sites:
            return PassResult(False, {"sites": 0})
        batches = list(ctx.calibration or [])
        if not batches:
            raise QuantizationError("smooth-quant: needs calibration batches "
                                    "(calibration_data=[...] or --calib)")
        names = [s.out.name for s in sites]
        runner = ReferenceRunner(graph, outputs=names, qdq=False)
        amax = {n: np.zeros(0) for n in names}
        for i, batch in enumerate(batches):
            got = runner.run(check_batch(graph, i, batch))
            for n in names:
                a = np.abs(got[n]).reshape(-1, got[n].shape[-1]).max(axis=0)
                amax[n] = a if amax[n].size == 0 else np.maximum(amax[n], a)
        report: list[dict[str, object]] = []
        skipped: list[dict[str, object]] = []
        order = {id(n): i for i, n in enumerate(graph.nodes)}
        for site in sites:
            x = amax[site.out.name].astype(np.float64)
            if _ratio(x) < self.min_ratio:
                skipped.append({"norm": site.norm.label(), "outlier_ratio": _ratio(x),
                                "reason": f"channel max / median {_ratio(x)} < min_ratio "
                                          f"{self.min_ratio}"})
                continue
            w = np.zeros_like(x)
            for lin, axis in site.linears:
                wc = lin.inputs[1].const  # type: ignore[union-attr]
                assert wc is not None
                w = np.maximum(w, np.abs(wc).max(axis=1 - axis))
            with np.errstate(divide="ignore", invalid="ignore"):
                s = x ** self.alpha / w ** (1.0 - self.alpha)
            s = np.where(np.isfinite(s) & (x > 0) & (w > 0), s, 1.0).clip(1e-5, 1e5)
            if site.uses:
                s = _snapped(s)
                first = min((u for u, _ in site.uses), key=lambda u: order[id(u)])
                rw = Rewriter(graph, ctx, rule="smooth-quant", root=first)
                inv = rw.const((1.0 / s).astype(np.float32), f"{site.out.name}_smooth")
                copy = rw.op("Mul", [site.out, inv], type=site.out.type,
                             name=f"{site.out.name}_smoothed")
                for u, i in site.uses:
                    u.set_input(i, copy)
            else:
                rw = Rewriter(graph, ctx, rule="smooth-quant", root=site.norm)
                for v in (site.scale, site.shift):
                    if v is not None and v.const is not None:
                        c = v.const
                        rw.replace(v, rw.const((c / s.reshape(c.shape)).astype(c.dtype),
                                               v.name))
            for lin, axis in site.linears:
                wv = lin.inputs[1]
                assert wv is not None and wv.const is not None
                shape = [1, 1]
                shape[axis] = -1
                rw.replace(wv, rw.const((wv.const * s.reshape(shape)).astype(wv.const.dtype),
                                        wv.name))
            rw.finish()
            after = x / s
            report.append({"norm": site.norm.label(), "linears": len(site.linears),
                           "split": bool(site.uses), "outlier_ratio_before": _ratio(x),
                           "outlier_ratio_after": _ratio(after)})
        ctx.report.setdefault("smoothing", {}).update({"alpha": self.alpha, "sites": report,
                                                      "skipped": skipped})
        return PassResult(bool(report), {"sites": len(report)})


def _snapped(s: np.ndarray) -> np.ndarray:
    """``s`` with ``1/s`` moved to the nearest nonzero multiple of ``max(1/s) / 255``: a grid
    that an 8-bit encoding of ``1/s`` over ``[0, max]`` holds exactly, and a 16-bit one too
    (65535 = 255 * 257)."""
    r = 1.0 / s
    step = float(r.max()) / 255.0
    return 1.0 / (np.maximum(np.round(r / step), 1.0) * step)


def _ratio(a: np.ndarray) -> float:
    med = float(np.median(a))
    return round(float(a.max()) / med, 2) if med > 0 else 0.0

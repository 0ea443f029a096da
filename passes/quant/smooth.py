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
"""

from __future__ import annotations

from dataclasses import dataclass
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


def _channel_const(v: Value | None, k: int) -> bool:
    return (v is not None and v.is_const and v.const is not None and v.const.size == k
            and len(v.uses) == 1)


def _linear_users(v: Value, k: int, out: list[tuple[Node, int]]) -> bool:
    """Collect the linear consumers of ``v`` (channel axis last, width ``k``)."""
    if v.is_output:
        return False
    for u, i in v.uses:
        if u.op in _MOVES and i == 0:
            shape = u.outputs[0].shape
            if not shape or shape[-1] != k or not _linear_users(u.outputs[0], k, out):
                return False
            continue
        w = u.inputs[1] if len(u.inputs) > 1 else None
        if i != 0 or w is None or not w.is_const or w.const is None or len(w.uses) != 1:
            return False
        if u.op == "Gemm" and u.attr("transA", 0) == 0:
            axis = 1 if u.attr("transB", 0) == 1 else 0
        elif u.op == "MatMul" and w.const.ndim == 2:
            axis = 0
        else:
            return False
        if w.const.shape[axis] != k:
            return False
        out.append((u, axis))
    return bool(out)


def smoothing_sites(graph: Graph) -> list[_Site]:
    """Norms whose output feeds only linear layers, in graph order."""
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
        if not _channel_const(scale, k) or (shift is not None and not _channel_const(shift, k)):
            continue
        linears: list[tuple[Node, int]] = []
        if _linear_users(n.outputs[0], k, linears):
            assert scale is not None
            sites.append(_Site(n, n.outputs[0], scale, shift, linears))
    return sites


@dataclass(frozen=True)
class SmoothQuant(Pass):
    """Move activation channel outliers after norms into the next linear weights."""

    name: ClassVar[str] = "smooth-quant"
    summary: ClassVar[str] = "SmoothQuant: fold activation channel scales from norms into weights"
    needs_finite_weights: ClassVar[bool] = True
    alpha: float = option(0.5, "migration strength: 0 = none, 1 = all of the range to weights")

    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        """Measure channel maxima on the calibration batches, then rescale."""
        from compiler.reference import ReferenceRunner
        from passes.quant.calibrate import check_batch

        if not 0.0 <= self.alpha <= 1.0:
            raise QuantizationError(f"smooth-quant: alpha {self.alpha} is not in [0, 1]")
        sites = smoothing_sites(graph)
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
        report = []
        for site in sites:
            x = amax[site.out.name].astype(np.float64)
            w = np.zeros_like(x)
            for lin, axis in site.linears:
                wc = lin.inputs[1].const  # type: ignore[union-attr]
                assert wc is not None
                w = np.maximum(w, np.abs(wc).max(axis=1 - axis))
            with np.errstate(divide="ignore", invalid="ignore"):
                s = x ** self.alpha / w ** (1.0 - self.alpha)
            s = np.where(np.isfinite(s) & (x > 0) & (w > 0), s, 1.0).clip(1e-5, 1e5)
            rw = Rewriter(graph, ctx, rule="smooth-quant", root=site.norm)
            for v in (site.scale, site.shift):
                if v is not None and v.const is not None:
                    c = v.const
                    rw.replace(v, rw.const((c / s.reshape(c.shape)).astype(c.dtype), v.name))
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
                           "outlier_ratio_before": _ratio(x), "outlier_ratio_after":
                           _ratio(after)})
        ctx.report.setdefault("smoothing", {}).update({"alpha": self.alpha, "sites": report})
        return PassResult(True, {"sites": len(sites)})


def _ratio(a: np.ndarray) -> float:
    med = float(np.median(a))
    return round(float(a.max()) / med, 2) if med > 0 else 0.0

"""``select-compression``: accuracy-aware choice of low-rank ranks and channel-pruning ratios.

The user-facing spec is ``compress="auto{max_sqnr_drop=3}"``. The pass

1. lists candidate actions: ``lowrank{ratio=r}`` on each factorizable layer and
   ``prune{method=channel}`` at each sparsity on each prunable channel group, for the
   ``ratios`` and ``sparsities`` options;
2. measures each action *alone* on the CPU reference with the calibration data: the output
   SQNR against the uncompressed model (the layer's sensitivity) and the latency the target's
   cost model predicts it saves; actions the cost model says do not pay are dropped;
3. orders the actions by added noise per predicted second saved (least sensitive per unit of
   gain first) and greedily accepts each one whose *combined* model stays within the budget,
   at most one action per layer or group;
4. replays the accepted actions on the graph, in order, with the ``lowrank`` and ``prune``
   passes (their rows land in ``ctx.report["compression"]`` as usual), and writes the choice
   as a reproducible pipeline fragment to ``ctx.report["compression_auto"]``.

The budget. Compression noise adds to quantization noise, so a drop of ``max_sqnr_drop`` dB
from a quantized model at ``B`` dB allows compression noise up to
``10^(-B/10) * (10^(drop/10) - 1)`` of the signal power (3 dB: as much noise as quantization
already adds). ``B`` is ``baseline_sqnr_db``; when that is ``none`` the pass measures it by
running ``calibrate,quantize{scheme=<precision>}`` on a copy (it needs
``ctx.options["quant_rules"]``, which ``compile()`` sets), else it takes 30 dB. ``min_sqnr_db``
instead sets the floor of the compressed model's SQNR against FP32 directly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from compiler.ir import Graph
from compiler.passes import Pass, PassContext, PassManager, PassResult, format_pass, option
from passes.lowrank.common import (
    CompressionError,
    calibration_feeds,
    graph_seconds,
    output_sqnr_db,
    reference_outputs,
)
from passes.lowrank.lowrank import LowRank, layer_key, lowrank_sites
from passes.prune.channels import plan_channels
from passes.prune.prune import Prune

__all__ = ["SelectCompression", "noise_budget"]

#: the quantized-model SQNR assumed when it cannot be measured (w8a16 zoo models reach 38-78)
FALLBACK_BASELINE_DB = 30.0


def noise_budget(baseline_db: float, drop_db: float) -> float:
    """Compression noise (as a fraction of the signal power) that lowers a model at
    ``baseline_db`` SQNR by at most ``drop_db``, with independent noises adding up."""
    return 10 ** (-baseline_db / 10) * (10 ** (drop_db / 10) - 1)


@dataclass
class _Candidate:
    unit: str  # the layer or group it acts on
    action: Pass
    sqnr_db: float = math.inf
    saved_s: float = 0.0

    @property
    def noise(self) -> float:
        return 0.0 if math.isinf(self.sqnr_db) else 10 ** (-self.sqnr_db / 10)


@dataclass(frozen=True)
class SelectCompression(Pass):
    """Greedy, sensitivity-ordered low-rank and channel-pruning choice within an SQNR budget
    (see the module docstring)."""

    name: ClassVar[str] = "select-compression"
    summary: ClassVar[str] = ("Choose per-layer ranks and pruning ratios within an SQNR budget "
                              "for the most predicted latency")
    needs_finite_weights: ClassVar[bool] = True
    max_sqnr_drop: float = option(3.0, "allowed drop (dB) of the quantized model's SQNR")
    baseline_sqnr_db: float | None = option(None, "SQNR (dB) of the quantized model (none: "
                                                  "measure it, else 30)")
    min_sqnr_db: float | None = option(None, "instead: floor of the compressed model's SQNR "
                                             "against FP32 (dB)")
    methods: tuple[str, ...] = option(("lowrank", "channel"), "actions to consider")
    ratios: tuple[float, ...] = option((0.25, 0.5), "lowrank MAC ratios to try per layer")
    sparsities: tuple[float, ...] = option((0.25, 0.5), "channel sparsities to try per group")
    whiten: bool = option(True, "data-aware low-rank (SVD-LLM / ASVD whitening)")
    multiple: int = option(1, "channel: keep channel counts a multiple of this")
    target: str | None = option(None, "target of the cost model (default: ctx.target, then "
                                      "htp-v75)")
    precision: str = option("w8a16", "precision of the cost model and of the measured baseline")

    def _budget(self, graph: Graph, ctx: PassContext) -> tuple[float, float, str]:
        """``(noise budget, baseline dB, how the baseline was found)``."""
        if self.min_sqnr_db is not None:
            return 10 ** (-self.min_sqnr_db / 10), self.min_sqnr_db, "min_sqnr_db"
        if self.baseline_sqnr_db is not None:
            base, how = self.baseline_sqnr_db, "given"
        elif ctx.options.get("quant_rules") is not None and self.precision not in ("fp16",
                                                                                    "fp32"):
            q = graph.copy()
            qctx = PassContext(target=ctx.target, calibration=ctx.calibration,
                               options=dict(ctx.options))
            PassManager(f"calibrate,quantize{{scheme={self.precision}}}",
                        verify_each=False).run(q, qctx)
            from compiler.reference import ReferenceRunner

            feeds = calibration_feeds(graph, ctx, 4)
            ref = reference_outputs(graph, feeds)
            runner = ReferenceRunner(q, qdq=True)
            got = [np.asarray(runner.run(f)[v.name], np.float64).reshape(-1)
                   for f in feeds for v in q.outputs]
            sig = sum(float(np.sum(r ** 2)) for r in ref)
            noise = sum(float(np.sum((r - g) ** 2)) for r, g in zip(ref, got))
            base = 10 * math.log10(sig / noise) if noise > 0 else 99.0
            how = f"measured ({self.precision})"
        else:
            base, how = FALLBACK_BASELINE_DB, "assumed (no quant_rules to measure it)"
        return noise_budget(base, self.max_sqnr_drop), base, how

    def _candidates(self, graph: Graph) -> list[_Candidate]:
        out: list[_Candidate] = []
        if "lowrank" in self.methods:
            for n in lowrank_sites(graph):
                key = layer_key(n)
                for r in self.ratios:
                    out.append(_Candidate(key, LowRank(ratio=r, layers=(key,),
                                                       whiten=self.whiten, target=self.target,
                                                       precision=self.precision)))
        if "channel" in self.methods:
            plan = plan_channels(graph)
            for g in plan.prunable():
                key = g.sources[0].name or g.sources[0].outputs[0].name
                for s in self.sparsities:
                    out.append(_Candidate(f"group:{key}", Prune(
                        method="channel", sparsities=(f"{key}:{s}",), multiple=self.multiple)))
        return out

    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        """Measure, order, choose, then apply (see the module docstring)."""
        feeds = calibration_feeds(graph, ctx, 4)
        if not feeds:
            raise CompressionError("select-compression: needs calibration batches to measure "
                                   "sensitivity (calibration_data=[...] or --calib)")
        budget, base, how = self._budget(graph, ctx)
        target = self.target or ctx.target
        ref = reference_outputs(graph, feeds)
        t0 = graph_seconds(graph, target, self.precision)
        cands = self._candidates(graph)
        scratch = ctx.calibration
        for c in cands:  # sensitivity: each action alone
            trial = graph.copy()
            res = c.action.run(trial, PassContext(target=ctx.target, calibration=scratch))
            if not res.modified:
                c.saved_s = 0.0
                continue
            c.saved_s = t0 - graph_seconds(trial, target, self.precision)
            c.sqnr_db = output_sqnr_db(ref, trial, feeds)
        useful = [c for c in cands if c.saved_s > 0]
        units: dict[str, list[_Candidate]] = {}
        for c in useful:
            units.setdefault(c.unit, []).append(c)
        # least sensitive layers first (noise per second saved of their best action); within a
        # layer, the most aggressive action that keeps the combined model within the budget
        order = sorted(units, key=lambda u: min(c.noise / c.saved_s for c in units[u]))
        working = graph.copy()
        chosen: list[_Candidate] = []
        rows: list[dict[str, Any]] = []
        sq_now = math.inf
        for unit in order:
            accepted = False
            for c in sorted(units[unit], key=lambda c: -c.saved_s):
                row: dict[str, Any] = {"unit": c.unit, "action": format_pass(c.action),
                                       "alone_sqnr_db": _db(c.sqnr_db),
                                       "predicted_saving_us": round(c.saved_s * 1e6, 3)}
                rows.append(row)
                if accepted:
                    row["decision"] = "skipped: a more aggressive action was accepted"
                    continue
                if c.noise > budget:
                    row["decision"] = "rejected: alone it exceeds the budget"
                    continue
                trial = working.copy()
                res = c.action.run(trial, PassContext(target=ctx.target, calibration=scratch))
                if not res.modified:
                    row["decision"] = "skipped: no longer applies"
                    continue
                sq = output_sqnr_db(ref, trial, feeds)
                row["combined_sqnr_db"] = _db(sq)
                if 10 ** (-sq / 10) <= budget:
                    working = trial
                    chosen.append(c)
                    accepted = True
                    sq_now = sq
                    row["decision"] = "accepted"
                else:
                    row["decision"] = "rejected: the combined model exceeds the budget"
        # replay the accepted actions on the real graph, so every mutation is a rewrite
        for c in chosen:
            c.action.run(graph, ctx)
        t1 = graph_seconds(graph, target, self.precision)
        fragment = ",".join(format_pass(c.action) for c in chosen)
        ctx.report["compression_auto"] = {
            "max_sqnr_drop": self.max_sqnr_drop, "baseline_sqnr_db": round(base, 3),
            "baseline": how, "budget_sqnr_db": _db(-10 * math.log10(budget)),
            "output_sqnr_db": _db(sq_now), "predicted_us_before": round(t0 * 1e6, 3),
            "predicted_us_after": round(t1 * 1e6, 3), "pipeline": fragment,
            "candidates": rows}
        return PassResult(bool(chosen), {"candidates": len(cands), "accepted": len(chosen),
                                         "predicted-saving-us": (t0 - t1) * 1e6})


def _db(x: float) -> float | None:
    return None if not math.isfinite(x) else round(x, 3)


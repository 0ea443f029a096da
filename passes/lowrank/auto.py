"""``select-compression``: accuracy-aware choice of low-rank ranks, channel- and head-pruning
ratios.

The user-facing spec is ``compress="auto{max_sqnr_drop=3}"``. The pass

1. lists candidate actions: ``lowrank{ratio=r}`` on each factorizable layer,
   ``prune{method=channel}`` at each sparsity on each prunable channel group and
   ``prune{method=head}`` on each attention block, for the ``ratios`` and ``sparsities``
   options (``methods`` picks among ``lowrank``, ``channel``, ``head``);
2. measures each action *alone* on the CPU reference with the calibration data: the output
   SQNR against the uncompressed model (the layer's sensitivity) and the latency the target's
   cost model predicts it saves; actions the cost model says do not pay are dropped;
3. orders the actions by added loss (noise, or metric drop) per predicted second saved
   (least sensitive per unit of gain first) and greedily accepts each one whose *combined*
   model stays within the budget, at most one action per layer or group;
4. replays the accepted actions on the graph, in order, with the ``lowrank`` and ``prune``
   passes (their rows land in ``ctx.report["compression"]`` as usual), and writes the choice
   as a reproducible pipeline fragment to ``ctx.report["compression_auto"]``.

The budget (``ctx.report["compression_auto"]["budget"]`` says which one was used):

- ``max_sqnr_drop=D`` (default 3): the compressed FP32 model's output SQNR against the
  uncompressed FP32 model, on the calibration data, must stay at least ``reference_db - D``
  (``reference_db=20`` by default: outputs within 10% RMS of the reference; a 3 dB drop allows
  14%). This is the drop *the compression alone* causes, independent of the precision the
  model is later quantized to. On the trained test models a 17 dB floor keeps top-1 within
  about 2 points (``tests/compress/test_compress_accuracy.py``).
- ``reference=quantized``: the old, strict reading. Compression noise adds to quantization
  noise, so a drop of ``D`` dB from a quantized model at ``B`` dB allows compression noise up to
  ``10^(-B/10) * (10^(D/10) - 1)`` of the signal power (3 dB: as much noise as quantization
  already adds). ``B`` is ``baseline_sqnr_db``, else measured by running
  ``calibrate,quantize{scheme=<precision>}`` on a copy (it needs ``ctx.options["quant_rules"]``,
  which ``compile()`` sets), else 30 dB. At w8a16 (B = 53-54 dB on our models) no compression
  without retraining fits, and this reading rightly chooses nothing.
- ``min_sqnr_db=S``: the floor of the compressed model's SQNR against FP32 is ``S`` directly.
- A user metric: :func:`choose_compression` (Python only; a callable cannot travel in a
  pipeline string) runs this pass with ``metric(predict) -> float`` (higher is better) and
  ``max_metric_drop``; it returns the chosen fragment for ``compile(compress=...)``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import numpy as np

from compiler.ir import Graph
from compiler.passes import (
    Pass,
    PassContext,
    PassManager,
    PassResult,
    format_pass,
    format_pipeline,
    option,
    parse_pipeline,
)
from passes.lowrank.common import (
    CompressionError,
    calibration_feeds,
    graph_seconds,
    output_sqnr_db,
    reference_outputs,
    report_entry,
)
from passes.lowrank.lowrank import LowRank, layer_key, lowrank_sites
from passes.prune.channels import plan_channels
from passes.prune.heads import find_attention
from passes.prune.prune import Prune

__all__ = ["SelectCompression", "noise_budget", "choose_compression", "METRIC_OPTION"]

#: the quantized-model SQNR assumed when it cannot be measured (w8a16 zoo models reach 38-78)
FALLBACK_BASELINE_DB = 30.0

#: the ``ctx.options`` key :func:`choose_compression` passes the user metric under
METRIC_OPTION = "compression_metric"

Predict = Callable[..., np.ndarray]


def noise_budget(baseline_db: float, drop_db: float) -> float:
    """Compression noise (as a fraction of the signal power) that lowers a model at
    ``baseline_db`` SQNR by at most ``drop_db``, with independent noises adding up."""
    return 10 ** (-baseline_db / 10) * (10 ** (drop_db / 10) - 1)


@dataclass
class _Candidate:
    unit: str  # the layer or group it acts on
    action: Pass
    loss: float = 0.0  # noise power fraction, or metric drop
    sqnr_db: float = math.inf
    saved_s: float = 0.0


class _Judge:
    """How a trial graph is scored: its loss (noise fraction, or metric drop) and the budget."""

    def __init__(self, graph: Graph, feeds: list[dict[str, np.ndarray]],
                 metric: Callable[[Predict], float] | None, budget: float) -> None:
        self.feeds = feeds
        self.ref = reference_outputs(graph, feeds)
        self.metric = metric
        self.budget = budget
        self.base_metric = metric(_predictor(graph)) if metric is not None else 0.0

    def __call__(self, trial: Graph) -> tuple[float, float]:
        """``(loss, output SQNR dB)`` of ``trial``."""
        sq = output_sqnr_db(self.ref, trial, self.feeds)
        if self.metric is not None:
            return max(self.base_metric - self.metric(_predictor(trial)), 0.0), sq
        return (0.0 if math.isinf(sq) else 10 ** (-sq / 10)), sq


def _predictor(graph: Graph) -> Predict:
    """``predict(*inputs) -> first output`` of ``graph`` on the CPU reference."""
    from compiler.reference import ReferenceRunner

    runner = ReferenceRunner(graph, qdq=False)
    names = [v.name for v in graph.inputs]
    out = graph.outputs[0].name

    def predict(*inputs: Any) -> np.ndarray:
        feed = {n: np.asarray(x.detach().numpy() if hasattr(x, "detach") else x)
                for n, x in zip(names, inputs)}
        return np.asarray(runner.run(feed)[out])

    return predict


@dataclass(frozen=True)
class SelectCompression(Pass):
    """Greedy, sensitivity-ordered low-rank, channel- and head-pruning choice within a budget
    (see the module docstring)."""

    name: ClassVar[str] = "select-compression"
    summary: ClassVar[str] = ("Choose per-layer ranks and pruning ratios within an SQNR budget "
                              "for the most predicted latency")
    needs_finite_weights: ClassVar[bool] = True
    max_sqnr_drop: float = option(3.0, "allowed SQNR drop (dB) below reference_db (or below "
                                       "the quantized model's, reference=quantized)")
    reference: Literal["fixed", "quantized"] = option(
        "fixed", "fixed: the floor is reference_db - max_sqnr_drop against FP32; quantized: "
                 "compression noise may add max_sqnr_drop to the quantized model's")
    reference_db: float = option(20.0, "reference SQNR (dB) the drop is taken from "
                                       "(reference=fixed)")
    baseline_sqnr_db: float | None = option(None, "reference=quantized: SQNR (dB) of the "
                                                  "quantized model (none: measure it, else 30)")
    min_sqnr_db: float | None = option(None, "instead: floor of the compressed model's SQNR "
                                             "against FP32 (dB)")
    max_metric_drop: float = option(0.01, "with a user metric (choose_compression): allowed "
                                          "drop of metric(predict)")
    methods: tuple[str, ...] = option(("lowrank", "channel", "head"), "actions to consider")
    ratios: tuple[float, ...] = option((0.25, 0.5), "lowrank MAC ratios to try per layer")
    sparsities: tuple[float, ...] = option((0.25, 0.5), "channel/head sparsities to try per "
                                                        "group")
    whiten: bool = option(True, "data-aware low-rank (SVD-LLM / ASVD whitening)")
    multiple: int = option(1, "channel: keep channel counts a multiple of this")
    target: str | None = option(None, "target of the cost model (default: ctx.target, then "
                                      "htp-v75)")
    precision: str = option("w8a16", "precision of the cost model and of the measured baseline")

    def _budget(self, graph: Graph, ctx: PassContext) -> tuple[float, float, str]:
        """``(noise budget, reference dB, how the budget was found)``."""
        if self.min_sqnr_db is not None:
            return 10 ** (-self.min_sqnr_db / 10), self.min_sqnr_db, "min_sqnr_db"
        if self.reference == "fixed":
            floor = self.reference_db - self.max_sqnr_drop
            return 10 ** (-floor / 10), self.reference_db, (
                f"fixed: FP32 SQNR >= {self.reference_db:g} - {self.max_sqnr_drop:g} dB")
        if self.baseline_sqnr_db is not None:
            base, how = self.baseline_sqnr_db, "quantized (given)"
        elif ctx.options.get("quant_rules") is not None and self.precision not in ("fp16",
                                                                                    "fp32"):
            q = graph.copy()
            qctx = PassContext(target=ctx.target, calibration=ctx.calibration,
                               options={k: v for k, v in ctx.options.items()
                                        if k != METRIC_OPTION})
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
            how = f"quantized (measured, {self.precision})"
        else:
            base, how = FALLBACK_BASELINE_DB, "quantized (assumed: no quant_rules to measure)"
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
        if "head" in self.methods:
            for u in find_attention(graph):
                if u.blocked is not None or not u.projections():
                    continue
                key = layer_key(u.projections()[0])
                for s in self.sparsities:
                    out.append(_Candidate(f"heads:{u.name}", Prune(
                        method="head", sparsity=0.0, sparsities=(f"{key}:{s}",))))
        return out

    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        """Measure, order, choose, then apply (see the module docstring)."""
        feeds = calibration_feeds(graph, ctx, 4)
        if not feeds:
            raise CompressionError("select-compression: needs calibration batches to measure "
                                   "sensitivity (calibration_data=[...] or --calib)")
        metric = ctx.options.get(METRIC_OPTION)
        if metric is not None:
            budget, base, how = self.max_metric_drop, math.nan, "user metric"
        else:
            budget, base, how = self._budget(graph, ctx)
        judge = _Judge(graph, feeds, metric, budget)
        target = self.target or ctx.target
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
            if c.saved_s > 0:
                c.loss, c.sqnr_db = judge(trial)
        useful = [c for c in cands if c.saved_s > 0]
        units: dict[str, list[_Candidate]] = {}
        for c in useful:
            units.setdefault(c.unit, []).append(c)
        # least sensitive layers first (loss per second saved of their best action); within a
        # layer, the most aggressive action that keeps the combined model within the budget
        order = sorted(units, key=lambda u: min(c.loss / c.saved_s for c in units[u]))
        working = graph.copy()
        chosen: list[_Candidate] = []
        rows: list[dict[str, Any]] = []
        sq_now = math.inf
        loss_now = 0.0
        for unit in order:
            accepted = False
            for c in sorted(units[unit], key=lambda c: -c.saved_s):
                row: dict[str, Any] = {"unit": c.unit, "action": format_pass(c.action),
                                       "alone_sqnr_db": _db(c.sqnr_db),
                                       "predicted_saving_us": round(c.saved_s * 1e6, 3)}
                if metric is not None:
                    row["alone_metric_drop"] = round(c.loss, 6)
                rows.append(row)
                if accepted:
                    row["decision"] = "skipped: a more aggressive action was accepted"
                    continue
                if c.loss > budget:
                    row["decision"] = "rejected: alone it exceeds the budget"
                    continue
                trial = working.copy()
                try:
                    res = c.action.run(trial, PassContext(target=ctx.target,
                                                          calibration=scratch))
                except CompressionError:  # an accepted action replaced its layer
                    res = PassResult(False)
                if not res.modified:
                    row["decision"] = "skipped: no longer applies"
                    continue
                loss, sq = judge(trial)
                row["combined_sqnr_db"] = _db(sq)
                if metric is not None:
                    row["combined_metric_drop"] = round(loss, 6)
                if loss <= budget:
                    working = trial
                    chosen.append(c)
                    accepted = True
                    sq_now, loss_now = sq, loss
                    row["decision"] = "accepted"
                else:
                    row["decision"] = "rejected: the combined model exceeds the budget"
        # replay the accepted actions on the real graph, so every mutation is a rewrite
        for c in chosen:
            c.action.run(graph, ctx)
        t1 = graph_seconds(graph, target, self.precision)
        fragment = ",".join(format_pass(c.action) for c in chosen)
        rep: dict[str, Any] = {
            "max_sqnr_drop": self.max_sqnr_drop, "budget": how,
            "reference_sqnr_db": _db(base),
            "output_sqnr_db": _db(sq_now), "predicted_us_before": round(t0 * 1e6, 3),
            "predicted_us_after": round(t1 * 1e6, 3), "pipeline": fragment,
            "candidates": rows}
        if metric is not None:
            rep.update(metric_before=judge.base_metric, max_metric_drop=budget,
                       metric_drop=round(loss_now, 6))
        else:
            rep["budget_sqnr_db"] = _db(-10 * math.log10(budget))
        ctx.report["compression_auto"] = rep
        # one row in the per-layer list too, so compile()'s report["compression"] says what
        # the selection chose, within which budget, and the measured result
        report_entry(ctx, {"pass": "select-compression", "layer": "(whole model)",
                           "action": "selected" if chosen else "kept",
                           "pipeline": fragment, "accepted": len(chosen),
                           "candidates": len(cands),
                           "reason": f"budget: {how}" + (
                               f", floor {rep['budget_sqnr_db']} dB" if metric is None
                               else f", max metric drop {budget}"),
                           "model_sqnr_db": sq_now,
                           "predicted_us_before": t0 * 1e6, "predicted_us_after": t1 * 1e6})
        return PassResult(bool(chosen), {"candidates": len(cands), "accepted": len(chosen),
                                         "predicted-saving-us": (t0 - t1) * 1e6})


def _db(x: float) -> float | None:
    return None if not math.isfinite(x) else round(x, 3)


def choose_compression(model: Any, example_inputs: Any = None, *,
                       calibration_data: Sequence[Any],
                       metric: Callable[[Predict], float], max_drop: float,
                       target: str = "htp-v75", precision: str = "w8a16",
                       options: str = "") -> tuple[str, dict[str, Any]]:
    """Accuracy-aware selection with a user metric; returns ``(fragment, report)``.

    ``model``/``example_inputs`` are what :func:`compiler.compile` takes. The model is
    prepared as ``compile()`` prepares it (the target's default pipeline up to quantization),
    then ``select-compression`` runs with ``metric(predict) -> float`` (higher is better;
    ``predict(*inputs)`` runs a candidate on the CPU reference and returns its first output)
    and keeps ``metric(uncompressed) - metric(compressed) <= max_drop``. ``options`` are more
    ``select-compression`` options (``"methods=lowrank|channel,ratios=0.5"``). Pass the
    returned fragment to ``compiler.compile(..., compress=fragment)``: it replays the choice
    without the metric. The report is ``ctx.report["compression_auto"]``.
    """
    from compiler.api import _feeds, _load
    from passes.lowrank.common import _QUANT_PASSES
    from targets import get_target

    graph = _load(model, example_inputs)
    tgt = get_target(target)
    passes = parse_pipeline(tgt.default_pipeline(precision))
    at = next((i for i, p in enumerate(passes) if p.name in _QUANT_PASSES), len(passes))
    feeds = _feeds(graph, list(calibration_data))
    ctx = PassContext(target=tgt.name, calibration=feeds,
                      options={METRIC_OPTION: metric, "quant_rules": tgt.quant_rules})
    if at:
        PassManager(format_pipeline(passes[:at])).run(graph, ctx)
    opts = f"max_metric_drop={max_drop},precision={precision}" + (f",{options}" if options
                                                                   else "")
    ctx = PassManager(f"select-compression{{{opts}}}").run(graph, ctx)
    rep = ctx.report["compression_auto"]
    return rep["pipeline"], rep

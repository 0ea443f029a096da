"""``seq-mse``: output-aware weight scales and rounding from each layer's input Gram matrix.

Runs between ``calibrate`` and ``quantize``. For every Conv (grouped and depthwise included),
Gemm and MatMul with a constant weight, the calibration batches stream through the FP32
reference once and each layer input's second-moment matrix ``H = sum_x x x^T`` is accumulated
(Conv: over im2col patches, one matrix per group); no activation is kept past its batch. For a
weight error ``d`` of one output channel, the squared error of that channel's output over the
whole calibration set is exactly ``d^T H d``: the objective of AIMET's SeqMSE (here with FP32
layer inputs, AIMET's ``symfp``). Where the bias can absorb the mean output shift (Conv, and
Gemm without ``transA``/``alpha``/``beta``), the objective is the centered ``d^T C d`` with
``C = H - n mu mu^T`` and the shift ``d . mu`` is folded into the bias (bias correction done
exactly, padding included, instead of by ``quantize``).

Per output channel, the scale is the grid candidate (``grid`` fractions of the channel's
absmax, down to ``min_ratio``, plus the scale ``quantize`` would pick on its own) with the
least output error at nearest rounding. With ``rounding=gptq`` the rounding is then chosen
too: GPTQ/OBQ error feedback (Frantar et al. 2022: each input column is rounded and its
error spread over the not-yet-rounded columns through the inverse of ``H``) followed by greedy
single-code flips that lower ``d^T H d`` until none does (``sweeps`` passes). That is
AdaRound's layer-output objective solved greedily rather than by AdaRound's relaxed gradient
descent; per channel the result is kept only when it beats nearest rounding.

The result goes to ``quantize`` as a finished weight: the constant is replaced by its on-grid
values and given its per-channel encoding, which ``quantize`` keeps (it only fills in tensors
without one). Widths come from the ``quantize`` pass that follows (its scheme and overrides);
per-block weights (``quantize{block_size=N}``) are left to ``quantize``.

Limits: a (per-group) input width above ``max_gram`` uses the diagonal of ``H`` plus the mean
term (no rounding optimisation: with a diagonal objective nearest rounding is optimal);
``time_budget_s`` caps the pass: layers are optimised worst-first (by their output SQNR under
plain scales) and those left when the budget runs out keep ``quantize``'s scales. Everything is
reported in ``ctx.report["quantization"]["seq_mse"]``: per layer, the output SQNR on the
calibration data before and after, the gain and the time; the layers skipped and why.
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import numpy as np

from compiler.errors import QuantizationError
from compiler.ir import Graph, Node, QuantEncoding, Value
from compiler.passes import Pass, PassContext, PassResult, option
from passes.quant.calibrate import calibration_of, stream_reference

__all__ = ["SeqMse"]

_MIN_SCALE = 1e-9
_DAMP = 0.01  # GPTQ's dampening of H's diagonal, as a fraction of its mean
_ENERGY_FLOOR = 1e-3  # weighting=energy: sample energies below this x the batch mean are raised


@dataclass
class _Layer:
    """One weight layer and its streamed input statistics."""

    node: Node
    weight: Value
    bits: int
    axis: int  # output-channel axis of the weight (for its encoding)
    groups: int
    rows: np.ndarray  # [O, d]: output channel x (per-group) input feature
    full: bool  # full Gram matrix, else its diagonal
    center: bool  # fold the mean shift into the bias (objective: covariance)
    gram: np.ndarray | None = None  # [G, d, d] or [G, d]
    xsum: np.ndarray | None = None  # [G, d]
    count: int = 0
    energy: bool = False  # weight each sample by 1 / its mean square (relative error)
    wsum: np.ndarray | None = None  # [G]: total sample weight (= count when unweighted)
    report: dict[str, Any] = field(default_factory=dict)

    @property
    def d(self) -> int:
        return int(self.rows.shape[1])

    def update(self, feats: list[np.ndarray]) -> None:
        """Add one batch of per-group feature rows ``[n, d]``."""
        for g, x in enumerate(feats):
            x = np.asarray(x, np.float64)
            if self.gram is None:
                shape = (self.groups, self.d, self.d) if self.full else (self.groups, self.d)
                self.gram = np.zeros(shape)
                self.xsum = np.zeros((self.groups, self.d))
                self.wsum = np.zeros(self.groups)
            assert self.xsum is not None and self.wsum is not None
            if self.energy:
                # a sample's error counts relative to its own energy; the floor keeps all-zero
                # samples (padding, dead ReLU regions) from taking the whole objective
                e = np.einsum("nd,nd->n", x, x) / max(x.shape[1], 1)
                wt = 1.0 / np.maximum(e, _ENERGY_FLOOR * max(float(e.mean()), 1e-30))
                xw = x * wt[:, None]
                self.wsum[g] += float(wt.sum())
            else:
                xw = x
                self.wsum[g] += x.shape[0]
            self.gram[g] += xw.T @ x if self.full else np.einsum("nd,nd->d", xw, x)
            self.xsum[g] += xw.sum(0)
        self.count += int(feats[0].shape[0])


# -- features: what one output channel's weights multiply --------------------------------------
def _layer_of(graph: Graph, n: Node, bits: int, max_gram: int, correct: bool = True
              ) -> tuple[_Layer | None, str]:
    """A ``_Layer`` for weight layer ``n``, or None and the reason it is not handled."""
    x, w = n.inputs[0], n.inputs[1]
    if x is None or w is None or not w.is_const or not w.dtype.is_float:
        return None, "weight is not a float constant"
    if len(w.uses) != 1:
        return None, "weight is shared by several nodes"
    if w.encoding is not None:
        return None, "weight already has an encoding"
    data = np.asarray(w.const, np.float64)
    if n.op == "Conv":
        if n.attr("auto_pad", "NOTSET") not in ("NOTSET", b"NOTSET") or data.ndim not in (3, 4):
            return None, "Conv with auto_pad or not 1-D/2-D"
        g = int(n.attr("group", 1) or 1)
        o = data.shape[0]
        if o % g:
            return None, "output channels not divisible by group"
        rows, axis, center = data.reshape(o, -1), 0, True
    elif n.op == "Gemm":
        if data.ndim != 2:
            return None, "Gemm weight is not 2-D"
        trans = bool(n.attr("transB", 0))
        rows, axis, g = (data if trans else data.T), (0 if trans else 1), 1
        center = (not n.attr("transA", 0) and n.attr("alpha", 1.0) == 1.0
                  and n.attr("beta", 1.0) == 1.0)
        if n.attr("transA", 0):
            return None, "Gemm with transA"
    elif n.op == "MatMul":
        if data.ndim != 2:
            return None, "MatMul weight is not 2-D (batched weights)"
        rows, axis, g, center = data.T, 1, 1, False
    else:
        return None, f"{n.op} is not handled"
    if len(n.inputs) > 2 and n.inputs[2] is not None:
        b = n.inputs[2]
        if not b.is_const or b.const is None or np.asarray(b.const).ndim != 1:
            center = False
    d = rows.shape[1]
    return _Layer(n, w, bits, axis, g, np.ascontiguousarray(rows), d <= max_gram,
                  center and correct), ""


def _features(n: Node, x: np.ndarray, groups: int) -> list[np.ndarray]:
    """Per group, the rows ``[samples, d]`` the layer's weight rows are dotted with."""
    if n.op != "Conv":
        return [x.reshape(-1, x.shape[-1])]
    w = n.inputs[1]
    assert w is not None and w.shape is not None
    k = [int(s) for s in np.asarray(w.const).shape[2:]]
    nd = len(k)
    strides = list(n.attr("strides", None) or [1] * nd)
    dil = list(n.attr("dilations", None) or [1] * nd)
    pads = list(n.attr("pads", None) or [0] * (2 * nd))
    xp = np.pad(x, [(0, 0), (0, 0)] + [(int(pads[i]), int(pads[i + nd])) for i in range(nd)])
    eff = [(k[i] - 1) * int(dil[i]) + 1 for i in range(nd)]
    win = np.lib.stride_tricks.sliding_window_view(xp, eff, axis=tuple(range(2, 2 + nd)))
    sl = (slice(None), slice(None), *(slice(None, None, int(s)) for s in strides),
          *(slice(None, None, int(d)) for d in dil))
    win = win[sl]  # [B, C, *out, *k]
    c = win.shape[1]
    # -> [B, *out, C, *k] -> [B * out, C, prod(k)]
    perm = (0, *range(2, 2 + nd), 1, *range(2 + nd, 2 + 2 * nd))
    cols = np.transpose(win, perm).reshape(-1, c, int(np.prod(k)))
    cg = c // groups
    return [cols[:, i * cg:(i + 1) * cg, :].reshape(cols.shape[0], -1) for i in range(groups)]


# -- the objective -----------------------------------------------------------------------------
class _Objective:
    """Per group: ``err(E)`` = each row's output error ``E M E^T`` (M = H or its centered
    form, dense or diagonal plus the rank-one mean term); ``err_shift(E, delta)`` = the error
    when a bias shift ``delta`` per row is subtracted instead (uncentered H)."""

    def __init__(self, lay: _Layer, g: int) -> None:
        assert lay.gram is not None and lay.xsum is not None and lay.wsum is not None
        n = max(float(lay.wsum[g]), 1e-30)
        self.mu = lay.xsum[g] / n
        self.xsum = lay.xsum[g]
        self.n = n
        self.full = lay.full
        self.center = lay.center
        if lay.full:
            h = 0.5 * (lay.gram[g] + lay.gram[g].T)
            self.h = h
            self.m = h - n * np.outer(self.mu, self.mu) if lay.center else h
        else:
            # diagonal: sum(var * d^2) * n, plus the mean term unless the bias absorbs it
            self.diag = np.maximum(lay.gram[g] / n - self.mu ** 2, 0.0) * n

    def _unc(self, e: np.ndarray) -> np.ndarray:
        if self.full:
            return np.asarray(np.einsum("rd,rd->r", e @ self.h, e))
        return np.asarray((e * e) @ self.diag + self.n * (e @ self.mu) ** 2)

    def err(self, e: np.ndarray) -> np.ndarray:
        if self.center:
            return np.maximum(self._unc(e) - self.n * (e @ self.mu) ** 2, 0.0)
        return np.maximum(self._unc(e), 0.0)

    def err_shift(self, e: np.ndarray, delta: np.ndarray) -> np.ndarray:
        return np.maximum(self._unc(e) - 2 * delta * (e @ self.xsum) + self.n * delta ** 2, 0.0)


def _signal(lay: _Layer, rows: np.ndarray, g: int, bias: np.ndarray | None) -> np.ndarray:
    """Per row, the energy of the layer's FP32 output over the calibration set."""
    assert lay.gram is not None and lay.xsum is not None and lay.wsum is not None
    n = max(float(lay.wsum[g]), 1e-30)
    if lay.full:
        s = np.einsum("rd,rd->r", rows @ lay.gram[g], rows)
    else:  # diagonal: the cross terms are unknown; the mean part is kept
        mu = lay.xsum[g] / n
        s = (rows * rows) @ np.maximum(lay.gram[g] - n * mu ** 2, 0.0) + n * (rows @ mu) ** 2
    if bias is not None:
        s = s + 2 * bias * (rows @ lay.xsum[g]) + n * bias ** 2
    return np.maximum(s, 0.0)


def _fq(rows: np.ndarray, s: np.ndarray, qmax: int) -> np.ndarray:
    """Nearest-rounded codes of ``rows`` at per-row scales ``s``."""
    return np.clip(np.rint(rows / s[:, None]), -qmax - 1, qmax)


def _gptq(rows: np.ndarray, s: np.ndarray, m: np.ndarray, qmax: int) -> np.ndarray:
    """GPTQ/OBQ error feedback: codes for ``rows`` at scales ``s`` under objective ``m``."""
    d = m.shape[0]
    h = m.copy()
    diag = np.diag(h).copy()
    dead = diag <= 0
    h[dead, :] = 0.0
    h[:, dead] = 0.0
    h[np.arange(d), np.arange(d)] = np.where(dead, 1.0, diag)
    h[np.arange(d), np.arange(d)] += _DAMP * max(float(np.mean(diag[~dead])) if (~dead).any()
                                                 else 1.0, 1e-12)
    try:
        hinv = np.linalg.inv(h)
        u = np.linalg.cholesky(0.5 * (hinv + hinv.T)).T  # upper: H^-1 = U^T U
    except np.linalg.LinAlgError:
        return _fq(rows, s, qmax)
    w = rows.copy()
    codes = np.zeros_like(w)
    for i in range(d):
        q = np.clip(np.rint(w[:, i] / s), -qmax - 1, qmax)
        codes[:, i] = q
        err = (w[:, i] - q * s) / u[i, i]
        if i + 1 < d:
            w[:, i + 1:] -= np.outer(err, u[i, i + 1:])
    return codes


def _refine(rows: np.ndarray, s: np.ndarray, codes: np.ndarray, m: np.ndarray, qmax: int,
            sweeps: int) -> np.ndarray:
    """Greedy single-code flips (+-1) that lower each row's ``e^T m e``, ``sweeps`` times."""
    codes = codes.copy()
    e = codes * s[:, None] - rows
    g = e @ m  # gradient / 2
    hd = np.diag(m)
    for _ in range(sweeps):
        changed = 0
        for i in range(m.shape[0]):
            for step in (1.0, -1.0):
                new = codes[:, i] + step
                delta = step * s
                gain = 2 * delta * g[:, i] + delta * delta * hd[i]
                ok = (gain < -1e-12 * (1.0 + np.abs(g[:, i] * delta))) & (new >= -qmax - 1) & (
                    new <= qmax)
                if not ok.any():
                    continue
                dv = np.where(ok, delta, 0.0)
                codes[:, i] = np.where(ok, new, codes[:, i])
                e[:, i] += dv
                g += np.outer(dv, m[i])
                changed += int(ok.sum())
        if not changed:
            break
    return codes


# -- the pass ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class SeqMse(Pass):
    """Choose each weight channel's scale (and optionally its rounding) by the error of the
    layer's output on the calibration data, from streamed input Gram matrices."""

    name: ClassVar[str] = "seq-mse"
    summary: ClassVar[str] = ("Output-aware weight scales (SeqMSE) and GPTQ-style rounding from "
                              "calibration Gram matrices")
    needs_finite_weights: ClassVar[bool] = True
    scheme: Literal["auto", "w8a8", "w8a16", "w4a16"] = option(
        "auto", "weight widths: auto takes them from the quantize pass that follows")
    rounding: Literal["nearest", "gptq"] = option(
        "nearest", "gptq: error-feedback rounding through H, then greedy code flips")
    grid: int = option(40, "scale candidates per channel (fractions of the channel absmax)")
    min_ratio: float = option(0.3, "smallest candidate, as a fraction of the absmax")
    time_budget_s: float = option(60.0, "stop optimising layers after this long (collection "
                                  "included); the rest keep quantize's scales")
    max_gram: int = option(2048, "per-group input width above which only H's diagonal is kept")
    sweeps: int = option(2, "rounding=gptq: passes of greedy code flips")
    weighting: Literal["energy", "none"] = option(
        "energy", "energy: each sample's (token's, pixel's) error counts relative to its "
        "input energy; none: plain output MSE")
    bias_correction: bool = option(True, "fold the mean output shift into the bias (Conv, "
                                   "Gemm) and optimise the centered error there")

    def _quantize_pass(self, ctx: PassContext) -> Any:
        from passes.quant.quantize import Quantize

        for p in ctx.remaining_passes():
            if isinstance(p, Quantize):
                return p
        return None

    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        """Collect Gram matrices, then pick scales (and codes) layer by layer, worst first."""
        from passes.quant.quantize import SCHEMES, Quantize

        t0 = time.perf_counter()
        if self.grid < 1 or not 0 < self.min_ratio <= 1 or self.time_budget_s < 0:
            raise QuantizationError("seq-mse: grid must be >= 1, min_ratio in (0, 1] and "
                                    "time_budget_s >= 0")
        q = self._quantize_pass(ctx)
        scheme = self.scheme
        if scheme == "auto":
            if q is None:
                raise QuantizationError("seq-mse: no quantize pass follows it; give "
                                        "seq-mse{scheme=w8a16} (or w8a8, w4a16)")
            scheme = q.scheme
        report: dict[str, Any] = {"scheme": scheme, "rounding": self.rounding,
                                  "layers": [], "skipped": []}
        ctx.report.setdefault("quantization", {})["seq_mse"] = report
        widths = SCHEMES.get(scheme)
        if widths is None:
            report["note"] = f"scheme {scheme} has no integer weights: nothing to do"
            return PassResult(False, {"layers": 0})
        if calibration_of(graph) is None:
            raise QuantizationError("seq-mse: no calibration statistics on the graph; run "
                                    "'calibrate' before 'seq-mse'")
        qp = q if q is not None else Quantize(scheme=scheme)
        rules = ctx.options.get("quant_rules")
        block_ops: frozenset[str] = getattr(rules, "block_quant_ops", frozenset())
        specs = qp._node_specs(graph, ctx, *widths)
        layers: list[_Layer] = []
        for n in graph.nodes:
            if n.op not in ("Conv", "Gemm", "MatMul") or len(n.inputs) < 2:
                continue
            w = n.inputs[1]
            if w is None or not w.is_const:
                continue  # an activation MatMul: no weight to quantize
            sp = specs[id(n)]
            if sp.float_ or not sp.wbits:
                report["skipped"].append({"node": n.label(), "reason": "stays float"})
                continue
            if qp.block_size > 0 and n.op in block_ops:
                report["skipped"].append({"node": n.label(), "reason":
                                          f"per-block weights (block_size={qp.block_size}) "
                                          "are left to quantize"})
                continue
            lay, why = _layer_of(graph, n, int(sp.wbits), self.max_gram,
                                 self.bias_correction)
            if lay is not None:
                lay.energy = self.weighting == "energy"
            if lay is None:
                report["skipped"].append({"node": n.label(), "reason": why})
            else:
                layers.append(lay)
        if not layers:
            report["time_s"] = round(time.perf_counter() - t0, 3)
            return PassResult(False, {"layers": 0})
        self._collect(graph, ctx, layers)
        t_collect = time.perf_counter() - t0
        report["collect_s"] = round(t_collect, 3)

        # plain scales (what quantize would choose alone), their error, worst layer first
        output_aware = bool(getattr(qp, "output_aware", True))
        moments = (calibration_of(graph) or {}).get("moments", {})
        correct = bool(getattr(qp, "bias_correction", True))
        plans = []
        for lay in layers:
            plain = self._plain_scales(lay, moments if output_aware else {})
            errs, sig = self._plain(lay, plain, moments, correct)
            before = _ratio_db(sig, float(sum(float(e.sum()) for e in errs)))
            plans.append((before, lay, plain, errs))
        plans.sort(key=lambda p: (p[0], p[1].node.label()))
        bar = None
        if ctx.progress or (sys.stderr.isatty() and len(plans) > 4):
            from tqdm import tqdm

            bar = tqdm(total=len(plans), desc="seq-mse", unit="layer", leave=False,
                       file=sys.stderr)
        done = 0
        sig_tot = err_before = err_after = 0.0
        try:
            for _before, lay, plain, errs in plans:
                if time.perf_counter() - t0 > self.time_budget_s:
                    report["skipped"].append({"node": lay.node.label(),
                                              "reason": "time budget exhausted"})
                    if bar is not None:
                        bar.update(1)
                    continue
                t1 = time.perf_counter()
                info = self._optimise(graph, lay, plain, errs)
                info["time_s"] = round(time.perf_counter() - t1, 4)
                report["layers"].append(info)
                sig_tot += info.pop("_signal")
                err_before += info.pop("_err_before")
                err_after += info.pop("_err_after")
                done += 1
                if bar is not None:
                    bar.update(1)
        finally:
            if bar is not None:
                bar.close()
        elapsed = time.perf_counter() - t0
        timed_out = sum(1 for s in report["skipped"] if s["reason"] == "time budget exhausted")
        report["total"] = {
            "layers": done, "skipped_for_time": timed_out,
            "sqnr_before_db": _db(_ratio_db(sig_tot, err_before)),
            "sqnr_after_db": _db(_ratio_db(sig_tot, err_after)),
            "time_s": round(elapsed, 3), "collect_s": round(t_collect, 3),
            "time_budget_s": self.time_budget_s,
        }
        if timed_out:
            ctx.note(f"time budget of {self.time_budget_s} s ran out: {timed_out} layer(s) "
                     "keep quantize's scales")
        return PassResult(done > 0, {"layers": done, "skipped_for_time": timed_out})

    # -- steps ---------------------------------------------------------------------------------
    def _collect(self, graph: Graph, ctx: PassContext, layers: list[_Layer]) -> None:
        """Stream the calibration batches through the reference; accumulate each layer's Gram."""
        batches = list(ctx.calibration or [])
        if not batches:
            raise QuantizationError("seq-mse: the calibration set is empty")
        names = sorted({lay.node.inputs[0].name for lay in layers  # type: ignore[union-attr]
                        })
        for _, got in stream_reference(graph, batches, names, ctx, "seq-mse: gram"):
            for lay in layers:
                x = got[lay.node.inputs[0].name]  # type: ignore[union-attr]
                lay.update(_features(lay.node, np.asarray(x), lay.groups))

    def _plain_scales(self, lay: _Layer, moments: dict[str, Any]) -> np.ndarray:
        """Per output channel, the scale ``quantize`` would choose by itself."""
        from passes.quant.quantize import _input_axis, _weight_encoding

        n, w = lay.node, lay.weight
        data = np.asarray(w.const, np.float32)
        x = n.inputs[0]
        mom = moments.get(x.name) if x is not None else None
        enc = _weight_encoding(data, lay.bits, lay.axis, 0, mom, _input_axis(n, data.ndim))
        return np.asarray(enc.scale, np.float64).reshape(-1)

    def _bias(self, lay: _Layer) -> np.ndarray | None:
        n = lay.node
        if len(n.inputs) > 2 and n.inputs[2] is not None and n.inputs[2].is_const:
            b = np.asarray(n.inputs[2].const, np.float64)
            if b.ndim == 1 and b.size == lay.rows.shape[0]:
                return b
        return None

    def _groups(self, lay: _Layer) -> list[slice]:
        per = lay.rows.shape[0] // lay.groups
        return [slice(g * per, (g + 1) * per) for g in range(lay.groups)]

    def _plain_shift(self, lay: _Layer, e: np.ndarray, moments: dict[str, Any],
                     correct: bool) -> np.ndarray:
        """Per row, the bias shift ``quantize``'s own bias correction would subtract for the
        weight error rows ``e`` (0 where it would not correct): the same conditions and the
        same per-channel means (Conv borders ignored) as ``quantize._correct_bias``."""
        n = lay.node
        zero = np.zeros(e.shape[0])
        x = n.inputs[0]
        mom = moments.get(x.name) if (correct and x is not None) else None
        if mom is None:
            return zero
        mu = np.asarray(mom[0], np.float64)
        bias = n.inputs[2] if len(n.inputs) > 2 else None
        if bias is not None and (not bias.is_const or np.asarray(bias.const).ndim != 1):
            return zero
        shift = zero
        if n.op == "Gemm":
            if (n.attr("transA", 0) or n.attr("alpha", 1.0) != 1.0
                    or n.attr("beta", 1.0) != 1.0 or e.shape[1] != mu.size):
                return zero
            shift = e @ mu
        elif n.op == "Conv":
            shape = np.asarray(lay.weight.const).shape
            if lay.groups == 1 and shape[1] == mu.size:
                shift = e.reshape(e.shape[0], shape[1], -1).sum(2) @ mu
            elif lay.groups == shape[0] == mu.size and shape[1] == 1:
                shift = e.sum(1) * mu
        return shift if np.all(np.isfinite(shift)) else zero

    def _plain(self, lay: _Layer, plain: np.ndarray, moments: dict[str, Any], correct: bool
               ) -> tuple[list[np.ndarray], float]:
        """Per group, each row's output error under ``quantize``'s own scales, nearest
        rounding and bias correction; and the layer's output energy."""
        qmax = (1 << (lay.bits - 1)) - 1
        bias = self._bias(lay)
        s32 = np.maximum(plain, _MIN_SCALE).astype(np.float32).astype(np.float64)
        e = _fq(lay.rows, s32, qmax) * s32[:, None] - lay.rows
        shift = self._plain_shift(lay, e, moments, correct)
        errs, sig = [], 0.0
        for g, sl in enumerate(self._groups(lay)):
            obj = _Objective(lay, g)
            errs.append(obj.err_shift(e[sl], shift[sl]))
            sig += float(_signal(lay, lay.rows[sl], g, None if bias is None else bias[sl]).sum())
        return errs, sig

    def _optimise(self, graph: Graph, lay: _Layer, plain: np.ndarray,
                  plain_errs: list[np.ndarray]) -> dict[str, Any]:
        """Pick scales (and codes), write the on-grid weight with its encoding, fix the bias."""
        qmax = (1 << (lay.bits - 1)) - 1
        rows = lay.rows
        bias = self._bias(lay)
        absmax = np.abs(rows).max(axis=1)
        ratios = np.linspace(1.0, self.min_ratio, self.grid)
        scales = np.maximum(plain.copy(), _MIN_SCALE)
        codes = np.zeros_like(rows)
        sig = err_before = err_after = 0.0
        improved_rounding = 0
        shift = np.zeros(rows.shape[0])
        for g, sl in enumerate(self._groups(lay)):
            obj = _Objective(lay, g)
            r = rows[sl]
            s_plain = np.maximum(plain[sl], _MIN_SCALE).astype(np.float32).astype(np.float64)
            c_best = _fq(r, s_plain, qmax)
            e_best = obj.err(c_best * s_plain[:, None] - r)
            s_best = s_plain.copy()
            err0 = plain_errs[g]
            for ratio in ratios:
                s = np.maximum(absmax[sl] * ratio / qmax, _MIN_SCALE)
                s = s.astype(np.float32).astype(np.float64)
                c = _fq(r, s, qmax)
                e = obj.err(c * s[:, None] - r)
                better = e < e_best
                if better.any():
                    s_best[better], e_best[better] = s[better], e[better]
                    c_best[better] = c[better]
            if self.rounding == "gptq" and lay.full:
                c2 = _gptq(r, s_best, obj.m, qmax)
                c2 = _refine(r, s_best, c2, obj.m, qmax, self.sweeps)
                e2 = obj.err(c2 * s_best[:, None] - r)
                better = e2 < e_best
                c_best[better], e_best[better] = c2[better], e2[better]
                improved_rounding += int(better.sum())
            scales[sl], codes[sl] = s_best, c_best
            sig += float(_signal(lay, r, g, None if bias is None else bias[sl]).sum())
            err_before += float(err0.sum())
            err_after += float(e_best.sum())
            if lay.center:
                shift[sl] = (c_best * s_best[:, None] - r) @ obj.mu
        self._write(graph, lay, scales, codes, shift if lay.center else None)
        info: dict[str, Any] = {
            "node": lay.node.label(), "op": lay.node.op, "weight": lay.weight.name,
            "bits": lay.bits, "d_in": lay.d, "groups": lay.groups,
            "gram": "full" if lay.full else "diagonal",
            "bias_corrected": bool(lay.center),
            "sqnr_before_db": _db(_ratio_db(sig, err_before)),
            "sqnr_after_db": _db(_ratio_db(sig, err_after)),
            "_signal": sig, "_err_before": err_before, "_err_after": err_after,
        }
        b, a = info["sqnr_before_db"], info["sqnr_after_db"]
        info["gain_db"] = None if a is None or b is None else round(a - b, 3)
        if self.rounding == "gptq":
            info["channels_rounded"] = improved_rounding
        return info

    def _write(self, graph: Graph, lay: _Layer, scales: np.ndarray, codes: np.ndarray,
               shift: np.ndarray | None) -> None:
        """Replace the weight by ``codes * scales`` in its own layout, with its encoding;
        subtract ``shift`` from the bias (adding one if needed)."""
        n, w = lay.node, lay.weight
        shape = np.asarray(w.const).shape
        s32 = scales.astype(np.float32)
        q = (codes.astype(np.float32) * s32[:, None]).astype(np.float32)
        if n.op == "Conv":
            data = q.reshape(shape)
        else:  # rows are [out, in]: back to the weight's layout
            data = q if lay.axis == 0 else q.T
        data = np.ascontiguousarray(data.astype(w.dtype.numpy))
        new = graph.const(data, f"{w.name}_sq")
        new.encoding = QuantEncoding(bits=lay.bits, signed=True, scale=s32,
                                     zero_point=np.zeros(s32.shape, np.int64), axis=lay.axis)
        new.meta.update({k: v for k, v in w.meta.items()})
        n.set_input(1, new)
        if not w.uses:
            graph.constants.pop(w.name, None)
        if shift is None or not np.any(shift) or not np.all(np.isfinite(shift)):
            return
        out = n.outputs[0]
        dtype = out.dtype.numpy if out is not None else np.float32
        bias = n.inputs[2] if len(n.inputs) > 2 else None
        old = (np.asarray(bias.const, np.float64) if bias is not None and bias.is_const
               else np.zeros(shift.shape))
        nb = graph.const((old - shift).astype(dtype), f"{out.name if out else n.op}_bias_sq")
        if bias is not None:
            n.set_input(2, nb)
            if not bias.uses:
                graph.constants.pop(bias.name, None)
        elif len(n.inputs) > 2:
            n.set_input(2, nb)
        else:
            n.set_inputs([*n.inputs, nb])


def _ratio_db(sig: float, err: float) -> float:
    if err <= 0:
        return math.inf
    if sig <= 0:
        return -math.inf
    return 10.0 * math.log10(sig / err)


def _db(x: float) -> float | None:
    return None if math.isinf(x) or math.isnan(x) else round(x, 3)

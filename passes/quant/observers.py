"""Streaming calibration statistics and range selection.

An :class:`Observer` sees one tensor's batches one at a time and keeps only a running
min/max and a fixed-size histogram, so calibration memory does not grow with the number of
batches. ``choose_range`` turns those statistics into a clipping range by one of four methods:

- ``minmax``: the observed range;
- ``percentile``: the range that keeps ``percentile`` % of the mass (both tails);
- ``mse``: the range whose expected quantization error (clipping plus rounding noise,
  estimated from the histogram) is smallest for the given bit width;
- ``entropy``: the range that minimises the KL divergence between the histogram and its
  quantized version (TensorRT's calibrator), symmetric about zero for signed data.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from compiler.errors import NumericsError, QuantizationError

__all__ = ["Observer", "RangeStats", "choose_range", "METHODS", "mse_range_for_array"]

METHODS = ("minmax", "percentile", "mse", "entropy")
_BINS = 2048


@dataclass
class RangeStats:
    """What an observer has seen: extremes, count, and a histogram over [lo, hi]."""

    lo: float
    hi: float
    count: int
    hist: np.ndarray  # float64 counts, _BINS bins over [lo, hi]
    #: how many values were -inf / +inf (attention masks); they are not in lo/hi/hist and
    #: saturate to the ends of whatever range is chosen
    neg_inf: int = 0
    pos_inf: int = 0


class Observer:
    """Streaming statistics of one tensor (names the tensor in its errors)."""

    __slots__ = ("absmax_sum", "batches", "count", "hi", "hist", "lo", "name", "neg_inf",
                 "pos_inf")

    def __init__(self, name: str) -> None:
        self.name = name
        self.lo = math.inf
        self.hi = -math.inf
        self.count = 0
        self.hist = np.zeros(_BINS, dtype=np.float64)
        self.absmax_sum = 0.0
        self.batches = 0
        self.neg_inf = 0
        self.pos_inf = 0

    def update(self, x: np.ndarray) -> None:
        """Add one batch of values."""
        x = np.asarray(x)
        if x.size == 0:
            return
        if not np.issubdtype(x.dtype, np.floating):
            x = x.astype(np.float32)
        flat = x.reshape(-1)
        lo, hi = float(flat.min()), float(flat.max())
        if not (math.isfinite(lo) and math.isfinite(hi)):
            if np.isnan(flat).any():
                raise NumericsError(f"tensor %{self.name}: calibration produced NaN values")
            # +-inf (an additive attention mask): counted, kept out of the range
            self.neg_inf += int(np.count_nonzero(np.isneginf(flat)))
            self.pos_inf += int(np.count_nonzero(np.isposinf(flat)))
            flat = flat[np.isfinite(flat)]
            if flat.size == 0:
                return
            lo, hi = float(flat.min()), float(flat.max())
        self.batches += 1
        self.absmax_sum += max(abs(lo), abs(hi))
        if self.count == 0:
            self.lo, self.hi = lo, hi
            self.hist = self._histogram(flat, lo, hi)
        else:
            new_lo, new_hi = min(self.lo, lo), max(self.hi, hi)
            if new_lo < self.lo or new_hi > self.hi:
                self.hist = _rebin(self.hist, self.lo, self.hi, new_lo, new_hi)
                self.lo, self.hi = new_lo, new_hi
            self.hist += self._histogram(flat, self.lo, self.hi)
        self.count += flat.size

    @staticmethod
    def _histogram(flat: np.ndarray, lo: float, hi: float) -> np.ndarray:
        if hi <= lo:
            h = np.zeros(_BINS, dtype=np.float64)
            h[0] = flat.size
            return h
        # np.histogram's uniform-bin path without its per-call overhead (~3x on the small
        # tensors calibration sees most); a value on an inner edge may land one bin lower
        idx = ((flat - lo) * (_BINS / (hi - lo))).astype(np.intp)
        np.clip(idx, 0, _BINS - 1, out=idx)
        return np.bincount(idx, minlength=_BINS).astype(np.float64)

    def stats(self) -> RangeStats:
        """The statistics; raises ``QuantizationError`` if nothing was observed."""
        if self.count == 0:
            raise QuantizationError(f"tensor %{self.name}: no calibration data reached it")
        return RangeStats(self.lo, self.hi, self.count, self.hist.copy(), self.neg_inf,
                          self.pos_inf)


def _rebin(hist: np.ndarray, lo: float, hi: float, new_lo: float, new_hi: float) -> np.ndarray:
    """Spread an old histogram over a wider range, splitting each bin proportionally."""
    out = np.zeros_like(hist)
    if hi <= lo:
        idx = min(int((lo - new_lo) / (new_hi - new_lo) * len(hist)), len(hist) - 1)
        out[idx] += hist.sum()
        return out
    old_edges = np.linspace(lo, hi, len(hist) + 1)
    new_edges = np.linspace(new_lo, new_hi, len(hist) + 1)
    # Cumulative mass at the new edges, by linear interpolation of the old CDF.
    cdf = np.concatenate([[0.0], np.cumsum(hist)])
    at_new = np.interp(new_edges, old_edges, cdf, left=0.0, right=float(cdf[-1]))
    out = np.diff(at_new)
    return np.maximum(out, 0.0)


def _centers(st: RangeStats) -> np.ndarray:
    if st.hi <= st.lo:
        return np.full(len(st.hist), st.lo)
    edges = np.linspace(st.lo, st.hi, len(st.hist) + 1)
    return (edges[:-1] + edges[1:]) / 2


def _percentile_range(st: RangeStats, pct: float) -> tuple[float, float]:
    cdf = np.cumsum(st.hist)
    total = cdf[-1]
    tail = total * (100.0 - pct) / 100.0 / 2.0
    edges = np.linspace(st.lo, st.hi, len(st.hist) + 1)
    lo_i = int(np.searchsorted(cdf, tail, side="right"))
    hi_i = int(np.searchsorted(cdf, total - tail, side="left"))
    return float(edges[min(lo_i, len(edges) - 1)]), float(edges[min(hi_i + 1, len(edges) - 1)])


def _mse_range(st: RangeStats, bits: int, symmetric: bool) -> tuple[float, float]:
    """Of 96 shrinkings of the observed range, the one with the least expected error (the
    first of equals): clipping error ``sum w (c - clip(c))^2`` of the bins outside plus
    ``step^2 / 12`` per unit of weight inside, from prefix sums of the histogram's weight,
    first and second moments (the bins below ``lo`` and above ``hi`` are contiguous), so
    each candidate costs two binary searches instead of a pass over the bins."""
    centers = _centers(st)
    w = st.hist
    levels = (1 << bits) - 1
    absmax = max(abs(st.lo), abs(st.hi))
    frac = np.linspace(0.05, 1.0, 96)
    if symmetric:
        lo, hi = -absmax * frac, absmax * frac
    else:
        lo, hi = st.lo * frac, st.hi * frac
    s0, s1, s2 = (np.concatenate([[0.0], np.cumsum(w * centers ** k)]) for k in (0, 1, 2))
    a = np.searchsorted(centers, lo, side="left")  # bins below lo: [0, a)
    b = np.searchsorted(centers, hi, side="right")  # bins above hi: [b, n)
    below = s2[a] - 2 * lo * s1[a] + lo * lo * s0[a]
    above = (s2[-1] - s2[b]) - 2 * hi * (s1[-1] - s1[b]) + hi * hi * (s0[-1] - s0[b])
    step = (hi - lo) / levels
    err = np.maximum(below, 0.0) + np.maximum(above, 0.0) + (s0[b] - s0[a]) * step * step / 12
    err = np.where(step > 0, err, math.inf)
    if not np.isfinite(err).any():
        return st.lo, st.hi
    i = int(np.argmin(err))
    return float(lo[i]), float(hi[i])


def _kl(p: np.ndarray, q: np.ndarray) -> float:
    p = p / max(p.sum(), 1e-30)
    q = q / max(q.sum(), 1e-30)
    mask = p > 0
    return float(np.sum(p[mask] * np.log(p[mask] / np.maximum(q[mask], 1e-30))))


def _entropy_range(st: RangeStats, bits: int) -> tuple[float, float]:
    # KL calibration on |x| (TensorRT style) for the threshold, applied to the sign of data.
    absmax = max(abs(st.lo), abs(st.hi))
    if absmax == 0:
        return st.lo, st.hi
    centers = _centers(st)
    nb = 512
    habs, _ = np.histogram(np.abs(centers), bins=nb, range=(0, absmax), weights=st.hist)
    levels = 1 << (bits - 1) if st.lo < 0 else 1 << bits
    levels = min(levels, nb)
    best_t, best_kl = nb, math.inf
    for t in range(levels, nb + 1, max(1, (nb - levels) // 64)):
        ref = habs[:t].copy()
        ref[t - 1] += habs[t:].sum()
        chunks = np.array_split(habs[:t], levels)
        q = np.concatenate([
            np.where(c > 0, c.sum() / max(np.count_nonzero(c), 1), 0.0) for c in chunks
        ])
        kl = _kl(ref, q)
        if kl < best_kl:
            best_kl, best_t = kl, t
    thr = best_t / nb * absmax
    lo = max(st.lo, -thr) if st.lo < 0 else st.lo
    return float(lo), float(min(st.hi, thr))


def choose_range(st: RangeStats, method: str = "minmax", *, bits: int = 8,
                 symmetric: bool = False, percentile: float = 99.99) -> tuple[float, float]:
    """The clipping range ``(lo, hi)`` for a tensor, always containing zero."""
    if method == "minmax":
        lo, hi = st.lo, st.hi
    elif method == "percentile":
        lo, hi = _percentile_range(st, percentile)
    elif method == "mse":
        lo, hi = _mse_range(st, bits, symmetric)
    elif method == "entropy":
        lo, hi = _entropy_range(st, bits)
    else:
        raise QuantizationError(f"unknown calibration method {method!r}; use one of {METHODS}")
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    if symmetric:
        m = max(abs(lo), abs(hi))
        lo, hi = -m, m
    return lo, hi


def mse_range_for_array(w: np.ndarray, bits: int, axis: int | None,
                        grid: int = 50) -> np.ndarray:
    """Per-channel symmetric clipping magnitudes for weights that minimise squared error.

    Returns one absmax per slice along ``axis`` (a scalar array when ``axis`` is None).
    """
    w = np.asarray(w, dtype=np.float32)
    if axis is None:
        flat = w.reshape(1, -1)
    else:
        flat = np.moveaxis(w, axis, 0).reshape(w.shape[axis], -1)
    absmax = np.abs(flat).max(axis=1)
    qmax = (1 << (bits - 1)) - 1
    best = absmax.copy()
    best_err = np.full(absmax.shape, np.inf)
    for frac in np.linspace(0.5, 1.0, grid + 1):
        m = np.maximum(absmax * frac, 1e-12)
        s = (m / qmax)[:, None]
        q = np.clip(np.rint(flat / s), -qmax - 1, qmax) * s
        err = ((q - flat) ** 2).sum(axis=1)
        better = err < best_err
        best[better] = m[better]
        best_err[better] = err[better]
    return best if axis is not None else best.reshape(())

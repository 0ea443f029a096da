"""Streaming calibration statistics and range selection."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st_

from compiler.errors import NumericsError, QuantizationError
from passes.quant.observers import Observer, choose_range, mse_range_for_array


def _observe(batches: list[np.ndarray]) -> Observer:
    ob = Observer("t")
    for b in batches:
        ob.update(b)
    return ob


def test_streaming_histogram_matches_one_shot() -> None:
    rng = np.random.default_rng(0)
    batches = [rng.normal(0, s, 4000).astype(np.float32) for s in (0.5, 1.0, 3.0, 0.1)]
    st = _observe(batches).stats()
    allx = np.concatenate(batches)
    assert st.lo == allx.min() and st.hi == allx.max() and st.count == allx.size
    assert st.hist.sum() == pytest.approx(allx.size)
    ref, _ = np.histogram(allx, bins=len(st.hist), range=(st.lo, st.hi))
    # Re-binning spreads mass within neighbouring bins only: the CDFs stay close.
    cdf_err = np.abs(np.cumsum(ref) - np.cumsum(st.hist)).max() / allx.size
    assert cdf_err < 0.01


def test_methods_order_and_contain_zero() -> None:
    rng = np.random.default_rng(1)
    x = rng.normal(0, 1, 200_000).astype(np.float32)
    x[:5] = 40.0  # outliers
    st = _observe([x]).stats()
    lo_mm, hi_mm = choose_range(st, "minmax")
    assert hi_mm == pytest.approx(40.0)
    for m, bits in (("percentile", 8), ("mse", 4), ("entropy", 8)):
        lo, hi = choose_range(st, m, bits=bits)
        assert lo <= 0 <= hi
        assert hi < 20.0, m  # each method clips the outliers (MSE only where it pays)
        assert hi > 2.0, m  # ...but keeps the bulk of a unit Gaussian
    assert choose_range(st, "mse", bits=16) == (lo_mm, hi_mm)  # 16 bits: clipping never pays
    relu = _observe([np.abs(x)]).stats()
    assert choose_range(relu, "mse")[0] == 0.0


def test_mse_beats_minmax_on_outliers() -> None:
    rng = np.random.default_rng(2)
    x = rng.laplace(0, 1, 100_000).astype(np.float32)
    st = _observe([x]).stats()

    def err(lo: float, hi: float) -> float:
        s = (hi - lo) / 255
        zp = np.round(-lo / s)
        q = np.clip(np.round(x / s) + zp, 0, 255)
        return float(np.mean(((q - zp) * s - x) ** 2))

    assert err(*choose_range(st, "mse")) < err(*choose_range(st, "minmax"))


def test_errors_name_the_tensor() -> None:
    with pytest.raises(QuantizationError, match="%t: no calibration data"):
        Observer("t").stats()
    with pytest.raises(NumericsError, match="%t: calibration produced NaN"):
        Observer("t").update(np.array([1.0, np.nan]))
    with pytest.raises(QuantizationError, match="unknown calibration method"):
        choose_range(_observe([np.ones(3)]).stats(), "magic")


def test_constant_tensor_gives_nonzero_range() -> None:
    lo, hi = choose_range(_observe([np.zeros(10, np.float32)]).stats(), "mse")
    assert (lo, hi) == (0.0, 0.0)  # the quantizer turns an empty range into a tiny scale
    lo, hi = choose_range(_observe([np.full(10, 3.0, np.float32)]).stats(), "minmax")
    assert (lo, hi) == (0.0, 3.0)


def test_weight_mse_per_channel() -> None:
    rng = np.random.default_rng(3)
    w = rng.normal(0, 1, (8, 256)).astype(np.float32)
    w[0, 0] = 30.0
    m = mse_range_for_array(w, 4, axis=0)
    assert m.shape == (8,)
    assert m[0] < 30.0 and np.all(m[1:] <= np.abs(w[1:]).max(axis=1) + 1e-6)


@settings(max_examples=200, deadline=None)
@given(st_.integers(0, 2**32 - 1), st_.sampled_from([8, 16]), st_.booleans(),
       st_.sampled_from([1.0, 8.0, 30.0]))
def test_mse_range_is_the_argmin_of_the_expected_error(seed: int, bits: int, symmetric: bool,
                                                       peak: float) -> None:
    """The prefix-sum search picks what scanning every candidate with the per-bin expected
    error picks (the first of equals), on histograms from flat to spiky, with empty bins."""
    import math

    from passes.quant.observers import RangeStats, _centers, _mse_range

    def expected_error(c: np.ndarray, w: np.ndarray, lo: float, hi: float,
                       levels: int) -> float:
        """The per-bin definition: clipping error outside [lo, hi], rounding inside."""
        step = (hi - lo) / levels
        if step <= 0:
            return math.inf
        inside = (c >= lo) & (c <= hi)
        return float(np.sum(w * ((c - np.clip(c, lo, hi)) ** 2
                                 + np.where(inside, step * step / 12.0, 0.0))))

    rng = np.random.default_rng(seed)
    lo = -abs(float(rng.normal())) * float(rng.choice([0.0, 1.0, 5.0]))
    hi = abs(float(rng.normal())) * float(rng.choice([0.001, 1.0, 10.0]))
    hist = (rng.random(2048) ** peak * (rng.random(2048) > rng.random())).astype(np.float64)
    stats = RangeStats(lo, hi, 100, hist, 0, 0)
    centers = _centers(stats)
    absmax = max(abs(lo), abs(hi))
    best = (math.inf, lo, hi)
    for frac in np.linspace(0.05, 1.0, 96):
        a, b = (-absmax * frac, absmax * frac) if symmetric else (lo * frac, hi * frac)
        err = expected_error(centers, hist, a, b, (1 << bits) - 1)
        if err < best[0]:
            best = (err, float(a), float(b))
    assert _mse_range(stats, bits, symmetric) == (best[1], best[2])

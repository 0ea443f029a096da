"""Error metrics, the drift instrument and per-node drift, on real graphs."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import pytest

from compiler.ir import Graph, QuantEncoding, parse
from compiler.numerics import (
    DriftInstrument,
    cosine,
    first_jump,
    max_abs,
    metrics,
    node_drift,
    sqnr_db,
)
from compiler.passes import Pass, PassContext, PassManager, PassResult


def test_metrics_values() -> None:
    ref = np.array([3.0, 4.0])
    assert sqnr_db(ref, ref) == math.inf
    assert sqnr_db(ref, ref + np.array([0.3, 0.4])) == pytest.approx(20.0)
    assert cosine(ref, 2 * ref) == pytest.approx(1.0)
    assert cosine(ref, -ref) == pytest.approx(-1.0)
    assert cosine(np.zeros(2), np.zeros(2)) == 1.0
    assert max_abs(ref, ref + np.array([0.1, -0.5])) == pytest.approx(0.5)
    m = metrics([ref, ref], [ref, ref + np.array([0.3, 0.4])])
    assert m.sqnr_db == pytest.approx(10 * math.log10(50 / 0.25))
    assert m.to_dict()["sqnr_db"] == pytest.approx(23.0103, abs=1e-3)
    with pytest.raises(ValueError):
        sqnr_db(np.zeros(2), np.zeros(3))
    # a masked tensor: the -inf both sides hold exactly are left out, the rest compared
    masked = np.array([3.0, -np.inf, 4.0])
    assert sqnr_db(masked, masked + np.array([0.3, 0.0, 0.4])) == pytest.approx(20.0)
    assert cosine(masked, masked) == pytest.approx(1.0)
    assert math.isnan(sqnr_db(masked, np.array([3.0, 0.0, 4.0])))  # a lost -inf is not hidden


TEXT = """graph g(%x: f32[1,8]) -> (%y) {
  %w1 = const f32[8,8] #sha:0000000000000000
  %w2 = const f32[8,8] #sha:0000000000000001
  %a = MatMul(%x, %w1) : f32[1,8] {src="l1"}
  %r = Relu(%a) : f32[1,8] {src="act"}
  %b = MatMul(%r, %w2) : f32[1,8] {src="l2"}
  %y = Tanh(%b) : f32[1,8] {src="out"}
}
"""


def _graph() -> Graph:
    rng = np.random.default_rng(0)
    return parse(TEXT, {"w1": rng.normal(size=(8, 8)).astype(np.float32),
                        "w2": rng.normal(size=(8, 8)).astype(np.float32)})


def _inputs(n: int = 4) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(1)
    return [{"x": rng.normal(size=(1, 8)).astype(np.float32)} for _ in range(n)]


@dataclass(frozen=True)
class _CrushSecondWeight(Pass):
    """A deliberately lossy pass: 4-bit per-tensor weights on the second MatMul."""

    name: ClassVar[str] = "test-crush"
    summary: ClassVar[str] = "test only"

    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        w = graph.constants["w2"]
        amax = float(np.abs(w.const).max())
        w.encoding = QuantEncoding(bits=4, signed=True, scale=np.float32(amax / 2),
                                   zero_point=np.int64(0))
        return PassResult(True)


def test_drift_instrument_after_every_pass() -> None:
    g = _graph()
    drift = DriftInstrument(_inputs())
    PassManager([*PassManager("canonicalize").passes, _CrushSecondWeight()],
                instruments=[drift]).run(g)
    names = [n for n, _ in drift.rows]
    assert names == ["input", "canonicalize", "test-crush"]
    assert drift.rows[1][1].sqnr_db == math.inf  # canonicalize keeps semantics
    crushed = drift.rows[2][1]
    assert 0 < crushed.sqnr_db < 30 and crushed.cosine < 1.0


def test_node_drift_points_at_the_node_that_adds_error() -> None:
    fp32 = _graph()
    test = fp32.copy()
    PassManager([_CrushSecondWeight()]).run(test)
    rows = node_drift(fp32, test, _inputs())
    assert [r.value for r in rows] == ["a", "r", "b", "y"]
    assert rows[0].metrics.sqnr_db == math.inf and rows[1].metrics.sqnr_db == math.inf
    assert math.isfinite(rows[2].metrics.sqnr_db)
    jump = first_jump(rows)
    assert jump is not None and jump.value == "b" and jump.src == "l2"
    assert first_jump(node_drift(fp32, fp32.copy(), _inputs())) is None

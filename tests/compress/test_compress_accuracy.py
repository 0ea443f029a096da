"""Accuracy of compressed models the test trains itself (a CNN and a small transformer on
generated data; a few seconds each), measured on the CPU reference, and ``select-compression``.

Stated drops (top-1 points on 256 held-out examples, no fine-tuning after compression), with
what this setup measured when the bounds were set:

=====================  ==============================================  ======  ==========  =====
model                  pipeline                                        MACs    measured    bound
=====================  ==============================================  ======  ==========  =====
CNN                    select-compression{min_sqnr_db=15}                   0.43x   -1.2        4
CNN                    prune{method=channel,sparsity=0.3}              0.49x   -8.6        12
transformer            lowrank{ratio=0.5,max_error=0.3,whiten,force}   0.52x   0.0         3
transformer            prune (MLP 50%) + the lowrank above             0.38x   +1.6        3
transformer            prune{method=head,sparsity=0.25,                0.91x   -3.9        8
                       importance=activation}
CNN                    auto{max_sqnr_drop=3} (FP32 SQNR >= 17 dB)      0.50x   0.0         3
transformer            auto{max_sqnr_drop=3}                           0.62x   +2.0        3
=====================  ==============================================  ======  ==========  =====

``auto`` with a user metric (top-1 on validation batches, not the test batches) is
``passes.lowrank.choose_compression``; its fragment replays in ``compile(compress=...)``.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import pytest

from compiler.frontends import load_torch
from compiler.ir import Graph
from compiler.passes import PassContext, PassManager
from compiler.reference import ReferenceRunner
from passes.lowrank import compression_pipeline
from targets.cost import node_macs
from tests.compress.trainable import accuracy, trained

CASES = [
    ("cnn", "select-compression{min_sqnr_db=15}", 0.55, 0.04),
    ("cnn", "prune{method=channel,sparsity=0.3}", 0.55, 0.12),
    ("transformer", "lowrank{ratio=0.5,max_error=0.3,whiten=true,force=true}", 0.55, 0.03),
    ("transformer", "prune{method=channel,sparsity=0.5},"
                    "lowrank{ratio=0.5,max_error=0.3,whiten=true,force=true}", 0.45, 0.03),
    ("transformer", "prune{method=head,sparsity=0.25,importance=activation}", 0.95, 0.08),
]


def _graph(kind: str) -> tuple[Graph, PassContext, float]:
    model, example, calib, _ = trained(kind)
    g = load_torch(model, (example,))
    PassManager("canonicalize,fuse").run(g)
    ctx = PassContext(calibration=[{g.inputs[0].name: c.numpy()} for c in calib])
    return g, ctx, _accuracy(g, kind)


def _accuracy(g: Graph, kind: str) -> float:
    _, _, _, (xs, ys) = trained(kind)
    runner = ReferenceRunner(g, qdq=False)
    return accuracy([runner.run([x.numpy()])[g.outputs[0].name] for x in xs], ys)


def _macs(g: Graph) -> int:
    return sum(node_macs(n) for n in g.nodes)


@pytest.mark.parametrize(("kind", "pipe", "max_macs", "max_drop"), CASES)
def test_compressed_accuracy(kind: str, pipe: str, max_macs: float, max_drop: float) -> None:
    g, ctx, acc0 = _graph(kind)
    assert acc0 > 0.85  # the model learned its task
    m0 = _macs(g)
    PassManager(pipe).run(g, ctx)
    ratio = _macs(g) / m0
    acc = _accuracy(g, kind)
    assert ratio <= max_macs, f"MACs {ratio:.2f}x"
    assert acc0 - acc <= max_drop, f"accuracy {acc0:.3f} -> {acc:.3f} at {ratio:.2f}x MACs"


def test_auto_stays_within_its_budget_and_replays() -> None:
    g, ctx, _ = _graph("cnn")
    original = g.copy()
    ctx = PassManager("select-compression{max_sqnr_drop=3,reference=quantized,"
                      "baseline_sqnr_db=20}").run(g, ctx)
    rep = ctx.report["compression_auto"]
    # 3 dB under 20 dB: compression noise up to the quantization noise -> 20 dB floor
    assert math.isclose(rep["budget_sqnr_db"], 20.0, abs_tol=0.05)
    assert rep["output_sqnr_db"] >= 20.0
    assert rep["predicted_us_after"] < rep["predicted_us_before"]
    assert any(c["decision"] == "accepted" for c in rep["candidates"])
    assert any(c["decision"].startswith("rejected") or c["decision"].startswith("skipped")
               for c in rep["candidates"])
    # the recorded fragment reproduces the choice
    again = original.copy()
    PassManager(rep["pipeline"]).run(again, PassContext(calibration=ctx.calibration))
    assert [n.op for n in again.nodes] == [n.op for n in g.nodes]
    assert sorted(v.digest for v in again.constants.values()) == \
        sorted(v.digest for v in g.constants.values())
    rows = ctx.report["compression"]
    assert rows and all("action" in r for r in rows)


def test_auto_measures_its_baseline_with_the_quantizer() -> None:
    from targets.hexagon_htp.rules import HTP_QUANT_RULES

    g, ctx, _ = _graph("transformer")
    ctx.options["quant_rules"] = HTP_QUANT_RULES
    ctx = PassManager("select-compression{reference=quantized,methods=channel,sparsities=0.5}"
                      ).run(g, ctx)
    rep = ctx.report["compression_auto"]
    assert rep["budget"] == "quantized (measured, w8a16)"
    assert 20 < rep["reference_sqnr_db"] < 99
    out = rep["output_sqnr_db"]
    assert out is None or out >= rep["budget_sqnr_db"]
    assert np.isfinite(rep["predicted_us_after"])


@pytest.mark.parametrize(("kind", "max_macs"), [("cnn", 0.6), ("transformer", 0.7)])
def test_auto_max_sqnr_drop_picks_layers_within_its_budget(kind: str, max_macs: float) -> None:
    g, ctx, acc0 = _graph(kind)
    m0 = _macs(g)
    spec = compression_pipeline("auto{max_sqnr_drop=3}")
    ctx = PassManager(spec).run(g, ctx)
    rep = ctx.report["compression_auto"]
    # the drop is the compression's own, against the FP32 model: 20 - 3 = 17 dB
    assert rep["budget"].startswith("fixed") and rep["budget_sqnr_db"] == pytest.approx(17.0)
    assert rep["output_sqnr_db"] is not None and rep["output_sqnr_db"] >= 17.0
    accepted = [c for c in rep["candidates"] if c["decision"] == "accepted"]
    assert len(accepted) >= 2 and rep["pipeline"]
    assert rep["predicted_us_after"] < rep["predicted_us_before"]
    assert _macs(g) / m0 <= max_macs
    assert acc0 - _accuracy(g, kind) <= 0.03
    (row,) = [r for r in ctx.report["compression"] if r["pass"] == "select-compression"]
    assert row["action"] == "selected" and row["pipeline"] == rep["pipeline"]


def test_user_metric_callback_chooses_within_its_drop_and_replays() -> None:
    from passes.lowrank import choose_compression
    from tests.compress.trainable import make_data

    model, example, calib, _ = trained("cnn")
    val = [make_data("cnn", 64, 700 + i) for i in range(2)]  # not the test batches

    def top1(predict: Callable[..., np.ndarray]) -> float:
        return accuracy([predict(x) for x, _ in val], [y.numpy() for _, y in val])

    fragment, rep = choose_compression(model, example, calibration_data=[(c,) for c in calib],
                                       metric=top1, max_drop=0.02,
                                       options="methods=lowrank|channel,ratios=0.5,sparsities=0.5")
    assert rep["budget"] == "user metric" and fragment
    assert rep["metric_drop"] <= 0.02
    assert any(c["decision"] == "accepted" for c in rep["candidates"])
    assert any(c["decision"].startswith("rejected") for c in rep["candidates"])
    # the fragment alone (no callback) reproduces the choice and its metric
    g, ctx, _ = _graph("cnn")
    m0 = _macs(g)
    PassManager(fragment).run(g, ctx)
    assert _macs(g) < m0
    from tests.compress.trainable import accuracy as acc_of

    runner = ReferenceRunner(g, qdq=False)
    got = acc_of([runner.run([x.numpy()])[g.outputs[0].name] for x, _ in val],
                 [y.numpy() for _, y in val])
    assert rep["metric_before"] - got <= 0.02 + 1e-9

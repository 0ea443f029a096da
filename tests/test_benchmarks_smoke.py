"""The benchmark scripts run (small settings) and write their tables; timings are not
asserted here: numbers come from benchmarks, not from tests."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_ingest_quick_writes_its_table(tmp_path: Path) -> None:
    r = subprocess.run([sys.executable, "benchmarks/run.py", "--only", "ingest", "--quick",
                        "--repeat", "1", "--out", str(tmp_path)], cwd=ROOT,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    table = (tmp_path / "ingest-quick.md").read_text()
    for stage in ("import s", "canonicalize", "export s", "peak MB", "linear scaling"):
        assert stage in table
    assert "| 2 | edgec |" in table and "| 4 | onnx |" in table


# -- the HTP benchmark's AIMET baseline and fairness columns -------------------------------------
def test_feeds_round_trip_through_npz(tmp_path: Path) -> None:
    import numpy as np

    from benchmarks.aimet_baseline import load_feeds, save_feeds

    rng = np.random.default_rng(0)
    feeds = [{"input.1": rng.standard_normal((1, 3, 4, 4)).astype(np.float32),
              "ids": rng.integers(0, 9, (1, 5))} for _ in range(12)]
    save_feeds(tmp_path / "c.npz", feeds)
    back = load_feeds(tmp_path / "c.npz")
    assert len(back) == 12  # batch order survives ten-plus batches
    for a, b in zip(feeds, back):
        assert a.keys() == b.keys()
        for k in a:
            assert a[k].dtype == b[k].dtype and np.array_equal(a[k], b[k])


def test_plain_pipeline_turns_only_the_auto_policy_off() -> None:
    from benchmarks.htp import plain_pipeline
    from compiler.passes import PassManager
    from targets.hexagon_htp.target import HtpTarget

    plain = plain_pipeline("75", "w8a8")
    default = HtpTarget("75").default_pipeline("w8a8")
    quant = [p for p in PassManager(plain).passes if p.name == "quantize"]
    assert len(quant) == 1 and quant[0].auto is False and quant[0].scheme == "w8a8"
    assert plain.replace("auto=false,", "") == default.replace(
        ",lower-layer-norm{min_outer_dims=2}", "").replace(
        "smooth-quant{split=true,min_ratio=4},", "")
    assert "lower-layer-norm{min_outer_dims=2}" in default  # the w8a8 default lowers batched LNs
    assert "smooth-quant{split=true,min_ratio=4}" in default  # and smooths a copy for linears


def test_targets_table_judges_compile_time_on_the_best_variant() -> None:
    from benchmarks.htp import targets_table

    def row(build: str, **kw: object) -> dict[str, object]:
        return {"model": "vit", "scheme": "w8a8", "build": build, **kw}

    text = targets_table([
        row("edgec", score=40.0, cycles=12e6, compile_s=3.0, compile_warm_s=1.0),
        row("edgec-plain", score=30.0, cycles=10e6, compile_s=2.0),
        row("aimet", score=31.5, cycles=9e6, compile_s=9.0),
        row("ort-strong", score=29.0, compile_s=2.0, compile_warm_s=0.8, compile_all_s=12.0),
        row("ort-default", error="FinalizeError: ..."),
    ])
    line = next(t for t in text.splitlines() if t.startswith("| vit |"))
    cells = [c.strip() for c in line.strip("|").split("|")]
    assert cells[3:] == ["aimet 31.5", "+8.5", "1.20x", "1.50x", "1.25x", "0.25x"]


def test_aimet_build_without_its_venv_is_a_visible_skip(tmp_path: Path) -> None:
    r = subprocess.run([sys.executable, "benchmarks/htp.py", "--models", "resnet", "--schemes",
                        "w8a8", "--builds", "aimet", "--aimet-python",
                        str(tmp_path / "nowhere" / "bin" / "python"), "--out", str(tmp_path)],
                       cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    table = (tmp_path / "htp.md").read_text()
    assert "| resnet | w8a8 | aimet |" in table
    assert "skipped: no " in table and "make bench-aimet-env" in table


@pytest.mark.htp
def test_cycles_are_measured_side_by_side_for_every_build(tmp_path: Path) -> None:
    """Both builds of the ResNet (whose auto policy keeps nothing: the same graph twice) get
    cycles from one interleaved measurement, and they agree."""
    r = subprocess.run([sys.executable, "benchmarks/htp.py", "--models", "resnet", "--schemes",
                        "w8a8", "--builds", "edgec", "edgec-plain", "--out", str(tmp_path)],
                       cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    rows = json.loads((tmp_path / "htp.json").read_text())
    assert [x["build"] for x in rows] == ["edgec", "edgec-plain"]
    a, b = (x["cycles"] for x in rows)
    assert a > 0 and b > 0 and abs(a / b - 1) < 0.1, (a, b)
    # each build is timed twice in its process: first, and again once its imports are paid
    assert all(0 < x["compile_warm_s"] for x in rows)
    assert not any("ctx_model" in x or "keep" in x for x in rows)


AIMET_PYTHON = ROOT / ".venv-aimet" / "bin" / "python"


@pytest.mark.htp
@pytest.mark.slow
@pytest.mark.skipif(not AIMET_PYTHON.exists(),
                    reason="no .venv-aimet: run `make bench-aimet-env` for the AIMET baseline")
def test_aimet_baseline_compiles_and_runs_on_the_simulator(tmp_path: Path) -> None:

    r = subprocess.run([sys.executable, "benchmarks/htp.py", "--models", "resnet", "--schemes",
                        "w8a16", "--builds", "aimet", "--out", str(tmp_path)], cwd=ROOT,
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    (res,) = json.loads((tmp_path / "htp.json").read_text())
    assert "error" not in res, res.get("error")
    assert res["aimet"]["seq_mse"] is True and res["aimet"]["config"] == "htp_v75"
    assert res["contexts"] == 1 and res["cpu_nodes"] == 0 and res["cycles"] > 0
    # the HTP runs what AIMET's QDQ model computes on the CPU, and that is a real quantization
    assert 25.0 < res["score"] < 80.0
    assert abs(res["score"] - res["cpu_qdq_score"]) < 1.0
    assert res["compile_s"] > res["aimet"]["seconds"]["seq_mse_s"]


def test_minilm_margin_is_also_given_in_db_of_its_unit_embeddings() -> None:
    from benchmarks.htp import targets_table, unit_sqnr_db

    assert unit_sqnr_db(0.995) == pytest.approx(20.0)  # |a - b|^2 = 2 (1 - cos) = 0.01
    text = targets_table([
        {"model": "minilm", "scheme": "w8a8", "build": "edgec", "score": 0.995},
        {"model": "minilm", "scheme": "w8a8", "build": "ort-strong", "score": 0.95},
    ])
    line = next(t for t in text.splitlines() if t.startswith("| minilm |"))
    assert "+0.0450 (+10.0 dB)" in line


@pytest.mark.htp
def test_quant_ablation_runs_and_measures_every_variant(tmp_path: Path) -> None:
    r = subprocess.run([sys.executable, "benchmarks/quant_ablation.py", "--models", "resnet",
                        "--schemes", "w8a8", "--out", str(tmp_path)],
                       cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    rows = json.loads((tmp_path / "quant_ablation.json").read_text())
    assert rows[0]["variant"] == "default" and len(rows) >= 2
    assert all(x.get("cycles", 0) > 0 and "error" not in x for x in rows), rows


def test_quant_ablation_has_a_variant_per_auto_rule() -> None:
    from benchmarks.quant_ablation import variants
    from passes.quant.quantize import AUTO_RULES

    v = variants("w8a8")
    assert all(f"auto_skip={r}" in v[f"-{r}"] for r in AUTO_RULES)

"""``edgec drift`` across stages: FP32, QDQ on the CPU reference and the HTP simulator per node.

A zoo model that the HTP computes like the CPU must show high agreement everywhere and no
disagreement; a planted miscomputation (a 16-bit SiLU gate after an Add, which the HTP gets
wrong unless the gate is 8-bit) must be reported at its Mul, with a minimal repro holding the
Add, the Sigmoid and the Mul. The tests without the ``htp`` mark need no simulator.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shlex
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

import compiler
from compiler.frontends import load_torch
from compiler.ir import Graph, load_ir, parse, save_ir
from compiler.numerics import (
    DriftInputError,
    Metrics,
    StageRow,
    disagreement_threshold,
    first_disagreement,
    minimal_repro,
    stage_drift,
    stage_first_jump,
)
from compiler.passes import PassContext, PassManager
from targets.hexagon_htp.rules import HTP_QUANT_RULES
from targets.hexagon_htp.target import default_pipeline
from tests.models.zoo import build, calibration_inputs
from tools.cli import main

SILU = """graph silu(%x: f32[1,64,8,8]) -> (%y) {
  %c = const f32[64,1,1] #sha:0000000000000000
  %a = Add(%x, %c) : f32[1,64,8,8] {src="block.add"}
  %s = Sigmoid(%a) : f32[1,64,8,8] {src="block.act"}
  %y = Mul(%a, %s) : f32[1,64,8,8] {src="block.act"}
}
"""


def _silu(gate_bits: int | None) -> tuple[Graph, Graph, list[dict[str, np.ndarray]]]:
    """(FP32 graph, w8a16 graph quantized with the HTP rules but SiLU gates of ``gate_bits``,
    feeds)."""
    rng = np.random.default_rng(0)
    fp32 = parse(SILU, {"c": rng.normal(size=(64, 1, 1)).astype(np.float32)})
    feeds = [{"x": (2 * rng.normal(size=(1, 64, 8, 8))).astype(np.float32)} for _ in range(4)]
    q = fp32.copy()
    rules = dataclasses.replace(HTP_QUANT_RULES, silu_gate_bits=gate_bits)
    ctx = PassContext(target="htp-v75", calibration=feeds,
                      options={"quant_rules": rules, "quant_overrides": {}})
    PassManager(default_pipeline("w8a16")).run(q, ctx)
    return fp32, q, feeds


def _row(value: str, cpu: float | None, agree: float | None, alone: float | None = None
         ) -> StageRow:
    def m(x: float | None) -> Metrics | None:
        return None if x is None else Metrics(x, 1.0, 0.0)

    return StageRow(value, value, "Add", "", value if cpu is not None else None, m(cpu),
                    m(agree), m(agree), alone=m(alone))


# -- no simulator -------------------------------------------------------------------------------


def test_first_disagreement_uses_threshold_margin_and_the_alone_verdict() -> None:
    rows = [_row("a", 60.0, 50.0), _row("b", 60.0, None), _row("c", 60.0, 5.0, alone=70.0),
            _row("d", 25.0, 17.0), _row("e", None, 12.0), _row("f", 60.0, 3.0)]
    # d: 17 dB is under 20 but within 10 dB of its own 25 dB quantization noise -> agreement;
    # c: bad in the whole-graph run, fine alone -> agreement; e: no FP32 row, plain threshold
    assert disagreement_threshold(rows[3], 20.0) == 15.0
    hit = first_disagreement(rows, 20.0)
    assert hit is not None and hit.value == "e"
    assert first_disagreement(rows, 10.0, margin_db=10.0) is rows[5]
    assert first_disagreement(rows[:4], 20.0) is None
    d = rows[2].to_dict()
    assert d["agreement_db"] == 70.0 and d["htp_vs_cpu"]["sqnr_db"] == 5.0
    json.dumps([r.to_dict() for r in rows])


def test_stage_first_jump_reads_the_cpu_column() -> None:
    rows = [_row("a", 60.0, 80.0), _row("b", 30.0, 80.0), _row("c", 29.0, 80.0)]
    rows[1].input_sqnr_db = 60.0
    rows[2].input_sqnr_db = 30.0
    assert stage_first_jump(rows) is rows[1]


def test_bad_inputs_are_typed_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    fp32, q, feeds = _silu(None)
    with pytest.raises(DriftInputError, match="at least one input"):
        stage_drift(fp32, q, [])
    with pytest.raises(DriftInputError, match="no node or value named 'nope'"):
        minimal_repro(q, "nope", feeds[:1])
    with pytest.raises(compiler.errors.TargetError):
        stage_drift(fp32, q, feeds[:1], arch="12")
    save_ir(fp32, tmp_path / "m.ir")
    np.savez(tmp_path / "in.npz", x=np.stack([f["x"] for f in feeds]))
    assert main(["drift", str(tmp_path / "m.ir"), "--calib", str(tmp_path / "in.npz")]) == 2
    assert "give -p PIPELINE, or --target" in capsys.readouterr().err
    assert main(["drift", str(tmp_path / "m.ir"), "--target", "cpu", "--stages", "--calib",
                 str(tmp_path / "in.npz")]) == 2
    assert "not an HTP target" in capsys.readouterr().err
    assert main(["drift", str(tmp_path / "m.ir"), "--target", "htp-v75", "--samples", "0",
                 "--calib", str(tmp_path / "in.npz")]) == 2
    assert "--samples" in capsys.readouterr().err


def test_target_rules_reach_the_per_pass_drift(tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    """-p with --target (and no --stages) keeps the per-pass drift, with the target's rules:
    the SiLU gate comes out 8-bit, so the Sigmoid's SQNR is that of 8 bits, not 16."""
    fp32, _, feeds = _silu(None)
    save_ir(fp32, tmp_path / "m.ir")
    np.savez(tmp_path / "in.npz", x=np.stack([f["x"] for f in feeds]))
    assert main(["drift", str(tmp_path / "m.ir"), "-p", default_pipeline("w8a16"),
                 "--target", "htp-v75", "--calib", str(tmp_path / "in.npz"), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert "passes" in out and "rows" not in out
    sig = next(n for n in out["nodes"] if n["value"] == "s")
    assert sig["sqnr_db"] < 60  # 8-bit gate (16 bits measure ~90 dB)


# -- on the HTP simulator -----------------------------------------------------------------------


@pytest.mark.htp
def test_zoo_resnet_agrees_on_every_node(tmp_path: Path) -> None:
    model, example = build("resnet")
    batches = list(calibration_inputs("resnet", 6))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cm = compiler.compile(model, example, precision="w8a16", calibration_data=batches[:4],
                              output_dir=tmp_path / "out", progress=False)
    fp32 = load_torch(model, example)
    feeds = [{"x": b[0].numpy()} for b in batches[4:]]
    rows = stage_drift(fp32, cm.graph, feeds, arch="75")
    assert [r.value for r in rows] == [n.outputs[0].name for n in cm.graph.nodes]
    measured = [r for r in rows if r.htp_vs_cpu is not None]
    assert len(measured) >= len(rows) // 2
    for r in measured:
        assert r.agreement_db is not None and r.agreement_db > 35, r.to_dict()
        assert r.alone is None  # nothing needed a recheck
        assert r.placement == "htp"
    assert all(r.cpu_vs_fp32 is not None and r.cpu_vs_fp32.sqnr_db > 35 for r in rows)
    assert first_disagreement(rows, 20.0) is None


@pytest.mark.htp
def test_planted_silu_gate_is_found_at_the_mul_with_a_minimal_repro(tmp_path: Path) -> None:
    fp32, q, feeds = _silu(None)
    assert q.value_map()["s"].encoding.bits == 16  # the planted 16-bit gate
    rows = stage_drift(fp32, q, feeds[:2], arch="75")
    assert [(r.op, r.value) for r in rows] == [("Add", "a"), ("Sigmoid", "s"), ("Mul", "y")]
    hit = first_disagreement(rows, 20.0)
    assert hit is not None and hit.op == "Mul" and hit.value == "y"
    assert hit.agreement_db is not None and hit.agreement_db < 10
    assert hit.cpu_vs_fp32 is not None and hit.cpu_vs_fp32.sqnr_db > 60  # the CPU QDQ is fine
    assert rows[0].agreement_db is not None and rows[0].agreement_db > 60

    rep = minimal_repro(q, hit.value, feeds[:2], "75", out_dir=tmp_path / "repro")
    assert rep is not None
    assert rep.ops == ["Add", "Sigmoid", "Mul"] and rep.value == "y"
    assert rep.agreement.sqnr_db < 10
    # it grew 1, 2, 3 nodes: the Sigmoid·Mul without the Add agrees
    assert [k for k, _ in rep.tried] == [1, 2, 3] and rep.tried[1][1] > 60
    for f in ("repro.ir", "repro.onnx", "inputs.npz"):
        assert (tmp_path / "repro" / f).is_file()
    back = load_ir(tmp_path / "repro" / "repro.ir")
    assert [n.op for n in back.nodes] == ["Add", "Sigmoid", "Mul"]
    assert [v.name for v in back.inputs] == ["x"]

    # the HTP rules' 8-bit gate is the fix: same graph, no disagreement
    fp32, q8, feeds = _silu(8)
    assert q8.value_map()["s"].encoding.bits == 8
    assert first_disagreement(stage_drift(fp32, q8, feeds[:2], arch="75"), 20.0) is None


@pytest.mark.htp
def test_cli_json_repro_and_replay(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _, q, feeds = _silu(None)
    save_ir(q, tmp_path / "q.ir")  # an already quantized model is taken as is
    np.savez(tmp_path / "in.npz", x=np.stack([f["x"] for f in feeds]))
    argv = ["drift", str(tmp_path / "q.ir"), "--target", "htp-v75", "--stages", "--calib",
            str(tmp_path / "in.npz"), "--repro", str(tmp_path / "rep"), "--json"]
    assert main(argv) == 0
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    out = json.loads(captured.out)
    assert out["mode"] == "stages" and out["target"] == "htp-v75" and out["pipeline"] is None
    assert [r["value"] for r in out["rows"]] == ["a", "s", "y"]
    assert out["first_disagreement"]["value"] == "y"
    assert out["first_disagreement"]["op"] == "Mul"
    assert out["repro"]["ops"] == ["Add", "Sigmoid", "Mul"]
    assert Path(out["repro"]["files"]["onnx"]).is_file()
    for r in out["rows"]:
        for k in ("cpu_vs_fp32", "htp_vs_fp32", "htp_vs_cpu"):
            assert r[k] is None or r[k]["sqnr_db"] is None or math.isfinite(r[k]["sqnr_db"])

    # the printed command reproduces the disagreement from the repro files alone; run as a
    # real process, stdout must be pure JSON (the simulator's native banner goes to stderr)
    cmd = shlex.split(out["reproduce"])
    assert cmd[:2] == ["edgec", "drift"]
    root = Path(__file__).resolve().parents[2]
    proc = subprocess.run([sys.executable, "-m", "tools.cli", *cmd[1:], "--json"], cwd=root,
                          env={**os.environ, "PYTHONPATH": str(root)}, capture_output=True,
                          text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr
    again = json.loads(proc.stdout)
    assert again["first_disagreement"]["value"] == "y"
    assert again["repro"] is None and again["pipeline"] is None

    # text form: the collapsed table marks the Mul and prints the re-run command
    assert main(argv[:-1]) == 0
    text = capsys.readouterr().out
    row_y = next(ln for ln in text.splitlines() if ln.startswith("y "))
    assert "HTP and CPU disagree first here" in row_y
    assert "minimal repro: 3 node(s) Add 'a', Sigmoid 's', Mul 'y'" in text
    assert "re-run: edgec drift" in text


@pytest.mark.htp
def test_cli_quantizes_a_float_model_for_the_target(tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    """A float model goes through the target's w8a16 pipeline (8-bit SiLU gate: it agrees)."""
    fp32, _, feeds = _silu(None)
    save_ir(fp32, tmp_path / "m.ir")
    np.savez(tmp_path / "in.npz", x=np.stack([f["x"] for f in feeds]))
    assert main(["drift", str(tmp_path / "m.ir"), "--target", "htp-v75", "--precision", "w8a16",
                 "--calib", str(tmp_path / "in.npz"), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["pipeline"] == default_pipeline("w8a16") and out["precision"] == "w8a16"
    assert out["first_disagreement"] is None
    assert all(r["agreement_db"] is None or r["agreement_db"] > 35 for r in out["rows"])
    # --fail-below gates on the HTP simulator's outputs against FP32
    (y,) = [r for r in out["rows"] if r["value"] in out["outputs"]]
    htp_db = y["htp_vs_fp32"]["sqnr_db"]
    assert out["gate"] is None and 20 < htp_db < 100
    assert main(["drift", str(tmp_path / "m.ir"), "--target", "htp-v75", "--calib",
                 str(tmp_path / "in.npz"), "--fail-below", f"{htp_db + 1:.2f}", "--json"]) == 1
    captured = capsys.readouterr()
    gate = json.loads(captured.out)["gate"]
    assert gate["broken"] and gate["value"] == pytest.approx(htp_db, abs=1e-3)
    assert "on the HTP simulator's outputs against FP32 is below --fail-below" in captured.err
    assert main(["drift", str(tmp_path / "m.ir"), "--target", "htp-v75", "--calib",
                 str(tmp_path / "in.npz"), "--repro", str(tmp_path / "r")]) == 0
    text = capsys.readouterr().out
    assert "agrees with the CPU QDQ reference on every node" in text
    assert "nothing to reproduce" in text and not (tmp_path / "r").exists()

"""``edgec explain``: placement with reasons, fallback percentage, per-partition latency and
suggested fixes, without calibration data."""

from __future__ import annotations

import io
import json
import warnings
from pathlib import Path

import pytest
import torch

from tests.models.zoo import ZOO
from tools.cli import main


@pytest.fixture(scope="module")
def whisper_onnx(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The whisper-like encoder as torch.onnx's TorchScript exporter writes it (erf-GELU)."""
    m, ex = ZOO["whisper"]()
    f = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(m, ex, f, dynamo=False, opset_version=17)  # type: ignore[arg-type]
    p = tmp_path_factory.mktemp("explain") / "whisper.onnx"
    p.write_bytes(f.getvalue())
    return p


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_unfused_erf_gelu_is_explained_with_a_fix(whisper_onnx: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = _run(capsys, "explain", str(whisper_onnx), "--target", "htp-v75",
                        "--pipeline", "canonicalize")
    assert code == 0
    assert "greedy placement" in out and "fallback" in out and "partitions:" in out
    assert "htp-v75 refuses it: op-unsupported: the HTP has no kernel for Erf" in out
    assert "run 'fuse'" in out
    code, out, _ = _run(capsys, "explain", str(whisper_onnx), "--target", "htp-v75",
                        "--pipeline", "canonicalize", "--json")
    rep = json.loads(out)
    assert rep["policy"] == "fallback" and rep["fallback_pct"] > 0
    assert rep["greedy"]["npu_partitions"] >= 2  # the erf-GELUs split the NPU graph
    # the fallback policy moves the small NPU islands between them to the CPU, never slower
    assert rep["npu_partitions"] < rep["greedy"]["npu_partitions"]
    assert rep["predicted_us"] < rep["greedy"]["predicted_us"]
    moved = [n for n in rep["nodes"] if n["reason"].startswith("an NPU island moved to cpu")]
    assert moved and all(n["target"] == "cpu" and n["reason_code"] == "cost" for n in moved)
    assert all(s["op"] == "Erf" for s in rep["suggestions"])
    assert rep["alternative"]["policy"] == "cost"
    assert rep["alternative"]["predicted_us"] <= rep["predicted_us"]


def test_default_pipeline_fuses_the_gelu_and_nothing_falls_back(
        whisper_onnx: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = _run(capsys, "explain", str(whisper_onnx), "--precision", "w8a16",
                        "--json")
    rep = json.loads(out)
    assert code == 0 and rep["fallback_pct"] == 0.0 and rep["num_partitions"] == 1
    assert rep["suggestions"] == []
    for p in rep["partitions"]:
        assert p["predicted_us"] == pytest.approx(
            p["compute_us"] + p["launch_us"] + p["transfer_us"], abs=0.01)


def test_cost_policy_and_pins(whisper_onnx: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = _run(capsys, "explain", str(whisper_onnx), "--target", "htp-v75,cpu",
                        "--pin", "op:LayerNormalization=cpu", "--all", "--json")
    rep = json.loads(out)
    assert code == 0 and rep["policy"] == "cost"
    lns = [n for n in rep["nodes"] if n["op"] == "LayerNormalization"]
    assert lns and all(n["target"] == "cpu" and n["reason_code"] == "user-pin" for n in lns)
    assert rep["predicted_us"] <= rep["greedy"]["predicted_us"]


def test_bad_pin_is_one_line_naming_the_node(whisper_onnx: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = _run(capsys, "explain", str(whisper_onnx), "--pipeline", "canonicalize",
                        "--pin", "op:Erf=htp")
    assert code == 2 and "(Erf) is pinned to htp-v75" in err and "no kernel for Erf" in err
    code, _, err = _run(capsys, "explain", str(whisper_onnx), "--pin", "nonsense")
    assert code == 2 and "PATTERN=TARGET" in err

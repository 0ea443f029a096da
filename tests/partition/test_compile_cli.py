"""``edgec compile MODEL --target htp-v75,cpu`` and ``--pin PATTERN=TARGET`` through the CLI:
the report's placement (not only the exit code), the ``report.json`` beside the artifact, and
bad targets or pins as one ``edgec: error:`` line with exit code 2 (``tools/cli.py``).

The model is :func:`tests.partition.models.sandwich` (an ``Erf`` between convolutions, 24x24)
loaded through a ``file.py:factory``; each successful compile runs a few simulator inferences.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tools.cli import main

pytestmark = pytest.mark.htp

_FACTORY = '''
from tests.partition.models import sandwich


def factory():
    return sandwich()
'''


@pytest.fixture
def model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "sandwich.py").write_text(_FACTORY)
    return f"{tmp_path / 'sandwich.py'}:factory"


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def _node(rep: dict, op: str) -> list[dict]:
    return [n for n in rep["placement"]["nodes"] if n["op"] == op]


def test_target_list_places_by_cost(model: str, tmp_path: Path,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    out_dir = tmp_path / "out"
    code, out, err = _run(capsys, "compile", model, "--target", "htp-v75,cpu",
                          "--precision", "w8a16", "-o", str(out_dir), "--json")
    assert code == 0, err
    rep = json.loads(out)
    pl = rep["placement"]
    assert pl["policy"] == "cost" and pl["targets"] == ["htp-v75", "cpu"]
    assert [p["target"] for p in pl["partitions"]] == ["htp-v75", "cpu", "htp-v75"]
    (erf,) = _node(rep, "Erf")
    assert (erf["target"], erf["reason_code"]) == ("cpu", "op-unsupported")
    convs = _node(rep, "Conv")
    assert len(convs) == 4 and all(c["target"] == "htp-v75" for c in convs)
    assert all(c["reason"].startswith("cost: ") for c in convs)
    assert pl["predicted_us"] <= pl["greedy"]["predicted_us"]
    s = rep["summary"]
    assert (s["cpu_nodes"], s["partitions"]) == (1, 2)
    assert s["npu_nodes"] == s["nodes"] - 1
    assert s["predicted_us"] == pl["predicted_us"]
    # the same placement is in the artifact's report.json
    on_disk = json.loads((out_dir / "report.json").read_text())
    assert on_disk["placement"]["nodes"] == pl["nodes"]


def test_pin_moves_the_pinned_nodes_and_says_why(model: str, tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = _run(capsys, "compile", model, "--pin", "tail.0=cpu",
                          "--precision", "w8a16", "-o", str(tmp_path / "out"))
    assert code == 0, err
    assert "(Conv): user pin 'tail.0' -> cpu" in out  # the "on CPU" rows of the summary
    rep = json.loads((tmp_path / "out" / "report.json").read_text())
    pl = rep["placement"]
    pinned = [n for n in pl["nodes"] if n["src"] == "tail.0"]
    assert len(pinned) == 1 and pinned[0]["target"] == "cpu"
    assert pinned[0]["reason_code"] == "user-pin"
    others = [n for n in pl["nodes"] if n["op"] == "Conv" and n["src"] != "tail.0"]
    head = [n for n in others if n["src"].startswith("head")]
    assert head and all(n["target"] == "htp-v75" for n in head)
    # the pin leaves a one-Conv NPU island after it: the fallback policy moves it to the CPU
    # only on the cost model's word, and says so
    assert all(n["reason_code"] == "cost" for n in others if n["target"] == "cpu")


def test_pin_on_a_fused_activation_names_the_pinned_member(
        model: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = _run(capsys, "compile", model, "--target", "htp-v75,cpu",
                          "--pin", "op:Relu=cpu", "--precision", "w8a16",
                          "-o", str(tmp_path / "out"), "--json")
    assert code == 0, err
    rep = json.loads(out)
    relus = _node(rep, "Relu")
    assert relus and all(r["target"] == "cpu" for r in relus)
    assert all(r["reason"] == "user pin 'op:Relu' -> cpu" for r in relus)
    relu_names = {r["node"] for r in relus}
    # a Conv placed with its Relu is not itself selected by 'op:Relu': its reason says so
    fused = [c for c in _node(rep, "Conv") if c["reason_code"] == "user-pin"]
    assert len(fused) == 3
    for c in fused:
        assert c["target"] == "cpu"
        assert c["reason"].startswith("in a unit with ")
        assert c["reason"].endswith(", pinned by 'op:Relu' -> cpu")
        assert c["reason"].split("in a unit with ")[1].split(",")[0] in relu_names


@pytest.mark.parametrize("argv,message", [
    (("--pin", "op:Relu=tpu"), "placement pin 'op:Relu' -> 'tpu'"),
    (("--pin", "op:Erf=htp"), "erf (Erf) is pinned to htp-v75"),
    (("--target", "htp-v75,cpu", "--pin", "op:Erf=npu"), "erf (Erf) is pinned to htp-v75"),
    (("--target", "htp-v75,tpu"), "unknown target 'tpu'"),
    (("--target", "htp-v75,htp-v79"), "one NPU per placement"),
    (("--pin", "op:Relu"), "expected PATTERN=TARGET"),
])
def test_bad_target_or_pin_is_one_error_line(model: str, tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str],
                                             argv: tuple[str, ...], message: str) -> None:
    out_dir = tmp_path / "out"
    code, out, err = _run(capsys, "compile", model, "--precision", "w8a8", "-o", str(out_dir),
                          *argv)
    assert code == 2
    lines = err.strip().splitlines()
    assert lines[0].startswith("edgec: error: ") and message in lines[0], err
    assert "Traceback" not in err and out == ""
    assert not (out_dir / "model.onnx").exists()

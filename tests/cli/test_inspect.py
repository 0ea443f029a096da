"""``edgec inspect`` on a real compiled artifact."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch

import compiler
from tools.cli import main

pytestmark = pytest.mark.htp


def test_inspect_lists_binaries_io_and_encodings(tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    torch.manual_seed(0)
    m = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU()).eval()
    x = torch.randn(1, 3, 8, 8)
    compiler.compile(m, (x,), calibration_data=[(x,)], output_dir=tmp_path / "out",
                     progress=False)
    assert main(["inspect", str(tmp_path / "out"), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert len(info["partitions"]) == 1 and info["cpu_nodes"] == []
    part = info["partitions"][0]
    binary = tmp_path / "out" / part["binary"]
    assert part["sha256"] == hashlib.sha256(binary.read_bytes()).hexdigest()
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["contexts"][0]["sha256"] == part["sha256"]
    assert info["arch"] == "75" and info["qairt_version"] == "2.51.0"
    (inp,) = info["inputs"]
    assert inp["shape"] == [1, 3, 8, 8] and inp["encoding"].startswith("u16{")
    assert main(["inspect", str(tmp_path / "out")]) == 0
    assert "partitions: 1" in capsys.readouterr().out
    assert main(["inspect", str(tmp_path / "missing")]) == 2
    assert "missing" in capsys.readouterr().err

"""``edgec compile --compress`` and the compression passes in ``edgec opt -p``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from compiler.frontends import load_torch, save_onnx
from compiler.ir import load_ir
from passes.prune.heads import find_attention
from tests.compress.trainable import Transformer
from tools.cli import main

FACTORY = '''
import torch
from torch import nn


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(3, 64, 3, padding=1)
        self.c2 = nn.Conv2d(64, 64, 3, padding=1)
        self.fc = nn.Linear(64, 10)

    def forward(self, x):
        y = torch.relu(self.c2(torch.relu(self.c1(x))))
        return self.fc(y.mean((2, 3)))


def make():
    torch.manual_seed(0)
    return Net().eval(), (torch.randn(1, 3, 16, 16),)
'''


def _cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.htp
def test_compile_compress_reports_per_layer(tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "net.py").write_text(FACTORY)
    model = f"{tmp_path / 'net.py'}:make"
    code, out, err = _cli(capsys, "compile", model, "-o", str(tmp_path / "base"), "--json")
    assert code == 0, err
    base = json.loads(out)
    code, out, err = _cli(capsys, "compile", model, "-o", str(tmp_path / "small"), "--json",
                          "--compress", "prune{method=channel,sparsity=0.5,multiple=8}")
    assert code == 0, err
    small = json.loads(out)
    assert "prune{method=channel,multiple=8},calibrate" in small["pipeline"]
    rows = [r for r in small["compression"] if r["action"] == "pruned"]
    assert len(rows) == 2  # c1 -> c2 and c2 -> fc
    for row in rows:
        assert row["channels_before"] == 64 and row["channels_after"] == 32
        assert row["model_sqnr_db"] is not None and row["reason"]
    assert small["summary"]["macs"] < 0.6 * base["summary"]["macs"]
    assert small["summary"]["weight_bytes"] < 0.6 * base["summary"]["weight_bytes"]
    # the text summary says what the compression did
    code, out, err = _cli(capsys, "compile", model, "-o", str(tmp_path / "text"),
                          "--compress", "prune{method=channel,sparsity=0.5}")
    assert code == 0, err
    assert "compression" in out and "prune" in out


def test_compile_compress_bad_spec_is_one_line(tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "net.py").write_text(FACTORY)
    code, _, err = _cli(capsys, "compile", f"{tmp_path / 'net.py'}:make", "-o",
                        str(tmp_path / "o"), "--compress", "fuse")
    assert code == 2
    lines = [ln for ln in err.splitlines() if ln.startswith("edgec: error:")]
    assert len(lines) == 1 and "not a compression pass" in lines[0]
    assert "Traceback" not in err
    code, _, err = _cli(capsys, "compile", f"{tmp_path / 'net.py'}:make", "-o",
                        str(tmp_path / "o2"), "--compress", "prune{method=channel,sparsity=1}")
    assert code == 2 and "refused" in err and "Traceback" not in err


def test_opt_prunes_attention_heads(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    torch.manual_seed(0)
    g = load_torch(Transformer().eval(), (torch.randn(2, 16, 16),))
    save_onnx(g, tmp_path / "t.onnx")
    code, _, err = _cli(capsys, "opt", str(tmp_path / "t.onnx"), "-p",
                        "canonicalize,fuse,prune{method=head,sparsity=0.5}", "-o",
                        str(tmp_path / "t.ir"))
    assert code == 0, err
    assert [u.heads for u in find_attention(load_ir(tmp_path / "t.ir"))] == [2, 2]

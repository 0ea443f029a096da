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


@pytest.mark.parametrize("pipe", ["prune{method=magnitude,sparsity=0.5}",
                                  "prune{method=nm,n=2,m=4}",
                                  "prune{method=channel,sparsity=0.5,multiple=8}",
                                  "lowrank{ratio=0.3}",
                                  "lowrank{rank=8,conv=spatial,force=true}"])
def test_opt_runs_the_compression_passes(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                         pipe: str) -> None:
    (tmp_path / "net.py").write_text(FACTORY)
    code, out, err = _cli(capsys, "opt", f"{tmp_path / 'net.py'}:make", "-p",
                          f"canonicalize,fuse,{pipe}", "-o", str(tmp_path / "n.ir"), "--json")
    assert code == 0, err
    stats = json.loads(out)["statistics"]
    assert any(k.startswith(pipe.split("{")[0]) for k in stats), stats
    g = load_ir(tmp_path / "n.ir")
    if "magnitude" in pipe or "nm" in pipe:  # zeros, no change of shape
        assert "no speed-up on the HTP" in err
        w = [n.input(1).const for n in g.nodes if n.op == "Conv"]  # type: ignore[union-attr]
        half = [abs(float((x == 0).mean()) - 0.5) < 0.01 for x in w]  # type: ignore[union-attr]
        # N:M skips c1 (its reduction, 3*3*3, is not a multiple of m=4) and says so
        assert all(half) if "magnitude" in pipe else half == [False, True]
    else:
        assert sum(n.meta.get("pass") in ("prune", "lowrank") for n in g.nodes) or any(
            n.op == "Conv" and n.input(1).const.shape[0] < 64  # type: ignore[union-attr]
            for n in g.nodes)


def test_opt_select_compression_without_calibration_is_one_line(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "net.py").write_text(FACTORY)
    code, _, err = _cli(capsys, "opt", f"{tmp_path / 'net.py'}:make", "-p",
                        "canonicalize,fuse,select-compression", "--no-reproducer")
    assert code != 0
    lines = [ln for ln in err.splitlines() if ln.startswith("edgec: error:")]
    assert len(lines) == 1 and "calibration" in lines[0], err
    assert "Traceback" not in err

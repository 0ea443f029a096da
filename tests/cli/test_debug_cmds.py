"""``edgec drift`` and ``edgec bisect`` on a graph with a deliberately lossy rewrite and a
deliberately lossy (non-rewriting) pass: they must point at the rule, the pass and the node."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest

import passes
from compiler.ir import Graph, QuantEncoding, parse, save_ir
from compiler.passes import Pass, PassContext, PassResult
from compiler.rewrite import Pat, apply_rules, fold
from tools.cli import main

TEXT = """graph g(%x: f32[1,8]) -> (%y) {
  %w1 = const f32[8,8] #sha:0000000000000000
  %w2 = const f32[8,8] #sha:0000000000000001
  %a = MatMul(%x, %w1) : f32[1,8] {src="l1"}
  %s = Sigmoid(%a) : f32[1,8] {src="act1"}
  %b = MatMul(%s, %w2) : f32[1,8] {src="l2"}
  %t = Sigmoid(%b) : f32[1,8] {src="act2"}
  %y = Neg(%t) : f32[1,8] {src="out"}
}
"""

# Lossy on purpose: Sigmoid(x) -> x.
_DROP_SIGMOID = fold("drop-sigmoid", Pat("Sigmoid", "x"), "x")


@dataclass(frozen=True)
class _DropSigmoid(Pass):
    name: ClassVar[str] = "test-drop-sigmoid"
    summary: ClassVar[str] = "test only: a wrong rewrite"

    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        n = apply_rules(graph, [_DROP_SIGMOID], ctx)
        return PassResult(bool(n))


@dataclass(frozen=True)
class _Crush(Pass):
    name: ClassVar[str] = "test-crush"
    summary: ClassVar[str] = "test only: 4-bit weights on the second MatMul"

    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        w = graph.constants["w2"]
        w.encoding = QuantEncoding(bits=4, signed=True,
                                   scale=np.float32(np.abs(w.const).max() / 2),
                                   zero_point=np.int64(0))
        return PassResult(True)


@pytest.fixture()
def model(tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    rng = np.random.default_rng(0)
    g = parse(TEXT, {"w1": rng.normal(size=(8, 8)).astype(np.float32),
                     "w2": rng.normal(size=(8, 8)).astype(np.float32)})
    save_ir(g, tmp_path / "m.ir")
    np.savez(tmp_path / "in.npz", x=rng.normal(size=(4, 1, 8)).astype(np.float32))
    passes.register("test-drop-sigmoid", _DropSigmoid)
    passes.register("test-crush", _Crush)
    yield tmp_path / "m.ir", tmp_path / "in.npz"
    passes.unregister("test-drop-sigmoid")
    passes.unregister("test-crush")


def _json(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, dict]:
    code = main([*argv, "--json"])
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    return code, json.loads(out) if out.strip() else {}


def test_drift_after_each_pass_and_first_jump(model: tuple[Path, Path],
                                              capsys: pytest.CaptureFixture[str]) -> None:
    ir, npz = model
    code, out = _json(capsys, "drift", str(ir), "-p", "canonicalize,test-crush",
                      "--calib", str(npz))
    assert code == 0
    assert [r["pass"] for r in out["passes"]] == ["input", "canonicalize", "test-crush"]
    assert out["passes"][1]["sqnr_db"] is None  # inf: canonicalize is exact
    assert 0 < out["passes"][2]["sqnr_db"] < 40
    assert [n["value"] for n in out["nodes"]] == ["a", "s", "b", "t", "y"]
    assert out["first_jump"]["value"] == "b" and out["first_jump"]["src"] == "l2"
    # the text form marks the same node
    assert main(["drift", str(ir), "-p", "test-crush", "--calib", str(npz)]) == 0
    text = capsys.readouterr().out
    row_b = next(ln for ln in text.splitlines() if ln.startswith("b "))
    assert "error jumps here" in row_b


def test_bisect_finds_the_rewrite(model: tuple[Path, Path],
                                  capsys: pytest.CaptureFixture[str]) -> None:
    ir, npz = model
    code, out = _json(capsys, "bisect", str(ir), "-p", "canonicalize,test-drop-sigmoid",
                      "--calib", str(npz), "--threshold", "30")
    assert code == 1
    assert out["first_bad_pass"] == "test-drop-sigmoid"
    rw = out["first_bad_rewrite"]
    assert rw["rule"] == "drop-sigmoid" and rw["index"] == 1  # the first Sigmoid already hurts
    assert "--bisect-limit 1" in out["reproduce"]
    # the printed command reproduces a broken state: the Sigmoid it names is gone
    code, rep = _json(capsys, "opt", str(ir), "-p", "canonicalize,test-drop-sigmoid",
                      "--bisect-limit", str(rw["index"]))
    assert code == 0 and rep["nodes"] == 4


def test_bisect_names_the_node_of_a_non_rewriting_pass(
        model: tuple[Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
    ir, npz = model
    code, out = _json(capsys, "bisect", str(ir), "-p", "canonicalize,test-crush",
                      "--calib", str(npz), "--threshold", "40")
    assert code == 1
    assert out["first_bad_pass"] == "test-crush"
    assert out["first_bad_node"]["value"] == "b"
    code, out = _json(capsys, "bisect", str(ir), "-p", "canonicalize", "--calib", str(npz),
                      "--threshold", "40")
    assert code == 0 and out["verdict"].startswith("no pass")


def test_bad_inputs_file(model: tuple[Path, Path], tmp_path: Path,
                         capsys: pytest.CaptureFixture[str]) -> None:
    ir, _ = model
    np.savez(tmp_path / "bad.npz", z=np.zeros((1, 8), np.float32))
    assert main(["drift", str(ir), "-p", "canonicalize", "--calib",
                 str(tmp_path / "bad.npz")]) == 2
    err = capsys.readouterr().err
    assert "'x'" in err and "bad.npz" in err
    np.savez(tmp_path / "shape.npz", x=np.zeros((2, 3, 1, 8), np.float32))
    assert main(["drift", str(ir), "-p", "canonicalize", "--calib",
                 str(tmp_path / "shape.npz")]) == 2
    assert "[2, 3, 1, 8]" in capsys.readouterr().err

"""The ``edgec`` CLI: bad input gives one line and exit code 2, never a traceback; ``opt``
writes what it is asked to, and only there; the debugging flags work."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

import passes
from compiler.ir import Graph, load_ir
from compiler.passes import Pass, PassContext, PassResult, read_reproducer
from tests.test_errors_onnx import _external_model, _model, _save, _weight_model
from tools.cli import main

ROOT = Path(__file__).resolve().parents[2]


def _cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def _refused(capsys: pytest.CaptureFixture[str], *argv: str, match: str) -> str:
    code, _, err = _cli(capsys, *argv)
    assert code == 2, err
    lines = [ln for ln in err.splitlines() if ln.startswith("edgec: error:")]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    assert match in lines[0], lines[0]
    return lines[0]


def test_version_and_help(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as ei:
        main(["--version"])
    assert ei.value.code == 0
    assert capsys.readouterr().out.startswith("edgec ")
    assert main([]) == 2  # no command: usage on stderr, non-zero


def test_list_passes_names_every_pass_with_summary_and_options(
        capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = _cli(capsys, "opt", "--list-passes")
    assert code == 0
    for name in passes.pass_names():
        assert name in out
    assert "fold-constants" in out and "max_bytes: int" in out
    code, out, _ = _cli(capsys, "opt", "--list-passes", "--json")
    infos = json.loads(out)
    assert {i["name"] for i in infos} == set(passes.pass_names())
    assert all(i["summary"] for i in infos)


# -- every bad input the foundation issue names -----------------------------------------------
def test_random_bytes_and_empty_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rnd = tmp_path / "rnd.onnx"
    rnd.write_bytes(np.random.default_rng(0).bytes(4096))
    _refused(capsys, "opt", str(rnd), match="rnd.onnx")
    empty = tmp_path / "empty.onnx"
    empty.write_bytes(b"")
    _refused(capsys, "opt", str(empty), match="empty.onnx")


def test_truncated_protobuf(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = _weight_model(np.ones((2, 4), np.float32)).SerializeToString()
    p = tmp_path / "trunc.onnx"
    p.write_bytes(data[: len(data) // 2])
    _refused(capsys, "opt", str(p), match="trunc.onnx")


def test_cycle(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    m = _model([helper.make_node("Add", ["x", "b"], ["a"], name="a_node"),
                helper.make_node("Neg", ["a"], ["b"], name="b_node"),
                helper.make_node("Identity", ["b"], ["y"], name="out")])
    line = _refused(capsys, "opt", str(_save(m, tmp_path / "cyc.onnx")), match="cycle")
    assert "a_node" in line or "b_node" in line


def test_cycle_in_ir_text(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    p = tmp_path / "cyc.ir"
    p.write_text("graph g(%x: f32[2]) -> (%b) {\n"
                 "  %a = Add(%x, %b) : f32[2]\n"
                 "  %b = Neg(%a) : f32[2]\n"
                 "}\n")
    _refused(capsys, "opt", str(p), match="cyc.ir")


def test_dangling_input_and_phantom_output(tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    m = _model([helper.make_node("Add", ["x", "ghost"], ["y"], name="adder")])
    line = _refused(capsys, "opt", str(_save(m, tmp_path / "d.onnx")), match="ghost")
    assert "adder" in line
    m = _model([helper.make_node("Relu", ["x"], ["y"])], outputs=("y", "phantom"))
    _refused(capsys, "opt", str(_save(m, tmp_path / "p.onnx")), match="phantom")


def test_unknown_domain_and_op(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    m = _model([helper.make_node("Frob", ["x"], ["y"], name="f1", domain="com.acme")])
    m.opset_import.append(helper.make_opsetid("com.acme", 1))
    line = _refused(capsys, "opt", str(_save(m, tmp_path / "dom.onnx")), match="com.acme")
    assert "f1" in line
    m = _model([helper.make_node("Frobnicate", ["x"], ["y"], name="f2")])
    line = _refused(capsys, "opt", str(_save(m, tmp_path / "op.onnx")), match="Frobnicate")
    assert "f2" in line


def test_opset_99(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    m = _model([helper.make_node("Relu", ["x"], ["y"])], opset=99)
    _refused(capsys, "opt", str(_save(m, tmp_path / "o99.onnx")), match="99")


def test_external_data_traversal_absolute_and_symlink(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "w.bin").write_bytes(np.arange(8, dtype=np.float32).tobytes())
    d1 = tmp_path / "m1"
    d1.mkdir()
    _refused(capsys, "opt", str(_external_model(d1, "../outside/w.bin")), match="w.bin")
    d2 = tmp_path / "m2"
    d2.mkdir()
    _refused(capsys, "opt", str(_external_model(d2, str(outside / "w.bin"))), match="w.bin")
    d3 = tmp_path / "m3"
    d3.mkdir()
    os.symlink(outside / "w.bin", d3 / "link.bin")
    _refused(capsys, "opt", str(_external_model(d3, "link.bin")), match="link.bin")


def test_nan_weights_refused_when_the_pipeline_computes_with_them(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    w = np.ones((2, 4), np.float32)
    w[0, 3] = np.nan
    p = _save(_weight_model(w), tmp_path / "nan.onnx")
    # A pipeline that does not read weight values passes them through...
    code, _, err = _cli(capsys, "opt", str(p), "-p", "remove-noops", "-o",
                        str(tmp_path / "ok.ir"))
    assert code == 0, err
    # ...one that computes with them names the constant.
    _refused(capsys, "opt", str(p), "-p", "canonicalize", match="%w")


def test_bad_pipeline_and_output_format(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    p = _save(_weight_model(np.ones((2, 4), np.float32)), tmp_path / "m.onnx")
    _refused(capsys, "opt", str(p), "-p", "canonicalise", match="canonicalise")
    _refused(capsys, "opt", str(p), "-o", str(tmp_path / "out.txt"), match="out.txt")
    _refused(capsys, "opt", str(tmp_path / "missing.onnx"), match="missing.onnx")


def test_console_script_prints_no_traceback(tmp_path: Path) -> None:
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\x00garbage")
    r = subprocess.run([sys.executable, "-m", "tools.cli", "opt", str(bad)], cwd=ROOT,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2
    assert "Traceback" not in r.stderr and "bad.onnx" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


# -- opt does its job ---------------------------------------------------------------------------
def _redundant_model(tmp_path: Path) -> Path:
    m = _model([
        helper.make_node("Identity", ["x"], ["i"], name="ident"),
        helper.make_node("Add", ["i", "w"], ["a"], name="add"),
        helper.make_node("Relu", ["a"], ["y"], name="relu"),
    ], inits=[numpy_helper.from_array(np.arange(8, dtype=np.float32).reshape(2, 4), "w")])
    return _save(m, tmp_path / "red.onnx")


def test_opt_writes_ir_and_onnx_that_load_back(tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    src = _redundant_model(tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    code, _, err = _cli(capsys, "opt", str(src), "-p", "canonicalize", "-o", str(out / "m.ir"))
    assert code == 0, err
    g = load_ir(out / "m.ir")
    g.verify()
    assert [n.op for n in g.nodes] == ["Add", "Relu"]
    np.testing.assert_array_equal(g.constants["w"].const,
                                  np.arange(8, dtype=np.float32).reshape(2, 4))
    code, _, err = _cli(capsys, "opt", str(out / "m.ir"), "-o", str(out / "m.onnx"))
    assert code == 0, err
    onnx.checker.check_model(onnx.load(str(out / "m.onnx")))
    # Only the files asked for (and the .ir's weights file) were written.
    assert sorted(p.name for p in out.iterdir()) == ["m.ir", "m.ir.weights", "m.onnx"]
    # Same input, same bytes.
    first = (out / "m.ir").read_bytes(), (out / "m.ir.weights").read_bytes()
    _cli(capsys, "opt", str(src), "-p", "canonicalize", "-o", str(out / "m.ir"))
    assert ((out / "m.ir").read_bytes(), (out / "m.ir.weights").read_bytes()) == first


def test_weights_file_that_does_not_belong_is_refused(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = _redundant_model(tmp_path)
    _cli(capsys, "opt", str(src), "-o", str(tmp_path / "a.ir"))
    w2 = _save(_weight_model(np.full((2, 4), 3.0, np.float32)), tmp_path / "other.onnx")
    _cli(capsys, "opt", str(w2), "-o", str(tmp_path / "b.ir"))
    (tmp_path / "a.ir.weights").write_bytes((tmp_path / "b.ir.weights").read_bytes())
    _refused(capsys, "opt", str(tmp_path / "a.ir"), match="a.ir.weights")


def test_debug_flags(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = _redundant_model(tmp_path)
    dump = tmp_path / "dump"
    code, out, err = _cli(capsys, "opt", str(src), "-p", "canonicalize",
                          "--print-ir-after-change", "--time-passes", "--pass-statistics",
                          "--dump-dir", str(dump))
    assert code == 0, err
    assert "IR changed by canonicalize/remove-noops" in err and "-  %i = Identity" in err
    assert "total" in err  # timing table
    assert "canonicalize/remove-noops.modified = 1" in err
    assert out.startswith("graph ")  # the result on stdout without -o
    assert [p.name for p in sorted(dump.iterdir())] == ["000_input.ir", "001_canonicalize.ir"]
    code, out, _ = _cli(capsys, "opt", str(src), "-p", "canonicalize", "--json")
    info = json.loads(out)
    assert info["pipeline"] == "canonicalize" and info["nodes"] == 2


def test_bisect_limit_stops_rewrites(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = _redundant_model(tmp_path)
    code, out, _ = _cli(capsys, "opt", str(src), "-p", "remove-noops", "--bisect-limit", "0",
                        "--json")
    assert code == 0
    assert json.loads(out)["nodes"] == 3  # the Identity survives
    code, out, _ = _cli(capsys, "opt", str(src), "-p", "remove-noops", "--bisect-limit", "1",
                        "--json")
    assert json.loads(out)["nodes"] == 2


@dataclass(frozen=True)
class _Explode(Pass):
    name: ClassVar[str] = "test-explode"
    summary: ClassVar[str] = "fails on purpose (tests)"

    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        raise RuntimeError("boom")


def test_pass_failure_writes_a_reproducer_that_replays(
        tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # the default reproducer.ir goes to the current directory
    src = _redundant_model(tmp_path)
    passes.register("test-explode", _Explode)
    try:
        line = _refused(capsys, "opt", str(src), "-p", "canonicalize,test-explode",
                        match="test-explode")
        assert "canonicalize" in line  # names the passes that ran before
        assert (tmp_path / "reproducer.ir").is_file()  # written by default
        code, _, err = _cli(capsys, "opt", str(src), "-p", "canonicalize,test-explode",
                            "--reproducer", str(tmp_path / "repro.ir"))
        assert code == 2 and "repro.ir" in err
        graph, pipeline = read_reproducer(tmp_path / "repro.ir")
        assert pipeline == "test-explode"
        assert [n.op for n in graph.nodes] == ["Add", "Relu"]  # the failing pass's input
        _refused(capsys, "opt", str(tmp_path / "repro.ir"), "-p", pipeline, match="boom")
    finally:
        passes.unregister("test-explode")


@pytest.mark.htp
def test_demo_compiles_runs_on_the_simulator_and_writes_only_its_folder(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "demo"
    code, stdout, err = _cli(capsys, "demo", "-o", str(out), "--json")
    assert code == 0, err
    info = json.loads(stdout)
    assert info["partitions"] == 1 and info["cpu_nodes"] == 0
    assert info["heldout"]["top1_agreement"] == 1.0
    assert info["heldout"]["sqnr_db"] > 40
    assert set(tmp_path.iterdir()) == {out}
    assert {p.name for p in out.iterdir()} >= {"model.onnx", "model.ir", "report.json"}


def test_compile_float_onnx_needs_no_calib_and_quantized_does(
        capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    model = tmp_path / "m.onnx"
    _save(_weight_model(np.linspace(-1, 1, 8, dtype=np.float32).reshape(2, 4)), model)
    code, out, err = _cli(capsys, "compile", str(model), "--target", "cpu", "--precision",
                          "fp32", "-o", str(tmp_path / "out"), "--json")
    assert code == 0, err
    assert "generated input" in err
    report = json.loads(out)
    assert report["summary"]["precision"] == "fp32"
    assert (tmp_path / "out" / "model.onnx").is_file()
    line = _refused(capsys, "compile", str(model), "--target", "cpu", "--precision", "w8a8",
                    "-o", str(tmp_path / "out2"), match="needs --calib")
    assert "w8a8" in line
    assert not (tmp_path / "out2").exists()


@pytest.mark.htp
def test_compile_htp_build_options_reach_the_context(
        capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    example = f"{ROOT / 'tools' / 'examples' / 'tiny_cnn.py'}:make"
    out = tmp_path / "out"
    code, _, err = _cli(capsys, "compile", example, "--precision", "w8a8", "--opt-level", "1",
                        "--vtcm-mb", "2", "--soc", "SM8650", "-o", str(out))
    assert code == 0, err
    report = json.loads((out / "report.json").read_text())
    assert report["options"]["optimization_level"] == 1
    assert report["options"]["vtcm_mb"] == 2
    assert str(report["soc_model"]) != "None"
    line = _refused(capsys, "compile", example, "--target", "htp-v68", "--soc", "SM8650",
                    "-o", str(tmp_path / "bad"), match="SM8650")
    assert "v68" in line or "v75" in line


def test_opt_calib_and_target_run_measuring_passes(
        capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    """``edgec opt --calib`` feeds passes that measure (calibrate, select-compression);
    ``--target`` gives quantize the target's rules; without --calib they refuse in one line."""
    from tools.examples.tiny_cnn import calibration_batches

    example = f"{ROOT / 'tools' / 'examples' / 'tiny_cnn.py'}:make"
    npz = tmp_path / "calib.npz"
    # the example's input name, from the model the CLI loads
    from tools.loading import load_model

    name = load_model(example).inputs[0].name
    np.savez(npz, **{name: np.stack([b[0].numpy() for b in calibration_batches(4)])})
    out = tmp_path / "q.ir"
    code, _, err = _cli(capsys, "opt", example, "-p",
                        "canonicalize,fuse,calibrate,quantize{scheme=w8a8}", "--calib",
                        str(npz), "--target", "htp-v75", "-o", str(out), "--no-reproducer")
    assert code == 0, err
    g = load_ir(out)
    enc = [v.encoding for n in g.nodes for v in n.outputs if v is not None and v.encoding]
    assert enc and all(e.bits in (8, 16) for e in enc)
    code, out_json, err = _cli(capsys, "opt", example, "-p",
                               "canonicalize,fuse,select-compression{min_sqnr_db=15}",
                               "--calib", str(npz), "--json", "--no-reproducer")
    assert code == 0, err
    assert "select-compression" in json.dumps(json.loads(out_json))
    _refused(capsys, "opt", example, "-p", "canonicalize,fuse,calibrate", "--no-reproducer",
             match="calibrat")

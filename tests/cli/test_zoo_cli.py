"""Every flag of the pass-debugging CLI (issue #6) on a real zoo model (the ResNet), checked by
content: dumps against printed IR, diffs that apply, bisect results whose printed command
reproduces them, a crash reproducer whose printed replay command replays, and ``--json``
output that parses for every command."""

from __future__ import annotations

import json
import re
import shlex
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import onnx
import onnxruntime as ort
import pytest

import passes
from compiler.frontends import load_torch
from compiler.ir import Graph, load_ir, parse, print_graph, save_ir
from compiler.passes import Pass, PassContext, PassResult
from tests.models.zoo import build, calibration_inputs, rel_error, torch_outputs
from tools.cli import main

ROOT = Path(__file__).resolve().parents[2]
_BANNER = re.compile(r"^// ----- (.*?) ----- //$", re.M)
QUANT = "canonicalize,fuse,calibrate,quantize{scheme=w4a16}"
PRUNE = "canonicalize,fuse,prune{sparsity=0.9}"


@dataclass(frozen=True)
class Zoo:
    ir: Path
    onnx: Path
    npz: Path
    graph: Graph
    model: Any
    example: tuple[Any, ...]


@pytest.fixture(scope="module")
def zoo(tmp_path_factory: pytest.TempPathFactory) -> Zoo:
    """The zoo ResNet as ``.ir`` (module paths kept) and ``.onnx``, and 4 input samples."""
    d = tmp_path_factory.mktemp("zoo")
    model, example = build("resnet")
    g = load_torch(model, example)
    save_ir(g, d / "resnet.ir")
    from compiler.frontends import save_onnx

    save_onnx(g, d / "resnet.onnx")
    xs = np.stack([t[0].numpy() for t in calibration_inputs("resnet", 4)])
    np.savez(d / "in.npz", x=xs)
    return Zoo(d / "resnet.ir", d / "resnet.onnx", d / "in.npz", g, model, example)


def _cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    return code, out, err


def _sections(text: str) -> dict[str, str]:
    """``{banner title: text up to the next banner}`` of the IR printed on stderr."""
    parts = _BANNER.split(text)
    return {parts[i]: parts[i + 1].lstrip("\n") for i in range(1, len(parts) - 1, 2)}


def _apply_unified_diff(old: str, diff: str) -> str:
    """Apply a one-file unified diff (as difflib writes it, ``lineterm=""``) to ``old``."""
    src = old.splitlines()
    out: list[str] = []
    pos = 0
    lines = diff.splitlines()
    assert lines[0].startswith("--- ") and lines[1].startswith("+++ ")
    i = 2
    while i < len(lines):
        m = re.match(r"@@ -(\d+)(?:,(\d+))? \+(\d+)(?:,(\d+))? @@", lines[i])
        assert m, lines[i]
        start = int(m.group(1)) - (0 if m.group(2) == "0" else 1)
        out += src[pos:start]
        pos = start
        i += 1
        while i < len(lines) and not lines[i].startswith("@@"):
            tag, body = lines[i][:1], lines[i][1:]
            if tag in (" ", "-"):
                assert src[pos] == body, (src[pos], body)  # the context really is there
                pos += 1
            if tag in (" ", "+"):
                out.append(body)
            i += 1
    out += src[pos:]
    return "\n".join(out) + "\n"


# -- opt: IR printing, dumps, diffs ------------------------------------------------------------
def test_print_before_after_and_dump_dir_agree(zoo: Zoo, tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    dump = tmp_path / "dump"
    code, out, err = _cli(capsys, "opt", zoo.ir, "-p", "canonicalize,fuse",
                          "--print-ir-before", "fuse", "--print-ir-after", "fuse",
                          "--dump-dir", dump)
    assert code == 0, err
    files = sorted(p.name for p in dump.iterdir())
    assert files == ["000_input.ir", "001_canonicalize.ir", "002_fuse.ir"]
    text = {f: (dump / f).read_text() for f in files}
    for t in text.values():
        parse(t).verify()  # every dump is valid IR text
    assert text["000_input.ir"] == print_graph(zoo.graph)
    sec = _sections(err)
    assert list(sec) == ["IR before fuse", "IR after fuse"]
    assert sec["IR before fuse"] == text["001_canonicalize.ir"]
    assert sec["IR after fuse"] == text["002_fuse.ir"] == out  # and the result on stdout
    assert "BatchNormalization" in sec["IR before fuse"]
    assert "BatchNormalization" not in sec["IR after fuse"]


def test_print_after_all_prints_every_leaf_pass(zoo: Zoo,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = _cli(capsys, "opt", zoo.ir, "-p", "canonicalize,fuse",
                          "--print-ir-after-all", "--json")
    assert code == 0, err
    info = json.loads(out)
    sec = _sections(err)
    titles = list(sec)
    assert all(t.startswith("IR after ") for t in titles)
    paths = [t[len("IR after "):] for t in titles]
    # a section per leaf pass that ran: every statistics path that is not a pipeline
    leaves = {p for p in info["statistics"] if p != "canonicalize"}
    assert set(paths) == leaves
    assert "canonicalize/fold-constants" in paths and paths[-1] == "fuse"
    for body in sec.values():
        assert body.startswith("graph ")
    final = load_ir(zoo.ir)
    from compiler.passes import PassManager

    PassManager("canonicalize,fuse").run(final)
    assert sec["IR after fuse"] == print_graph(final)


def test_print_after_change_is_a_unified_diff_that_applies(
        zoo: Zoo, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    dump = tmp_path / "d"
    code, _, err = _cli(capsys, "opt", zoo.ir, "-p", "canonicalize,fuse",
                        "--print-ir-after-change", "--dump-dir", dump)
    assert code == 0, err
    sec = _sections(err)
    assert "IR changed by fuse" in sec
    diff = sec["IR changed by fuse"]
    assert diff.startswith("--- before fuse\n+++ after fuse\n")
    removed = [ln for ln in diff.splitlines() if ln.startswith("-") and "BatchNorm" in ln]
    assert len(removed) == 6
    before = (dump / "001_canonicalize.ir").read_text()
    after = (dump / "002_fuse.ir").read_text()
    assert _apply_unified_diff(before, diff) == after
    # passes that changed nothing print no diff
    assert all(t.startswith("IR changed by ") for t in sec)
    assert "IR changed by canonicalize/eliminate-common-subexpressions" not in sec


def test_time_passes_and_statistics(zoo: Zoo, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = _cli(capsys, "opt", zoo.ir, "-p", "canonicalize,fuse", "--time-passes",
                        "--pass-statistics")
    assert code == 0, err
    rows = {}
    for ln in err.splitlines():
        m = re.match(r"^( *)(\S+)\s+(\d+\.\d\d)$", ln)
        if m:
            rows[(len(m.group(1)) // 2, m.group(2))] = float(m.group(3))
    top = {k: v for k, v in rows.items() if k[0] == 0 and k[1] != "total"}
    assert set(top) == {(0, "canonicalize"), (0, "fuse")}
    assert (1, "fold-constants") in rows  # sub-passes indented under canonicalize
    assert rows[(0, "total")] == pytest.approx(sum(top.values()), abs=0.02)
    stats = dict(re.findall(r"^(\S+) = (\S+)$", err, re.M))
    assert stats["fuse.modified"] == "1" and stats["fuse.runs"] == "1"
    assert stats["fuse.nodes"] == "17" and int(stats["canonicalize.runs"]) == 1


def test_bisect_limit_applies_exactly_n_rewrites(zoo: Zoo,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    def run(*extra: str) -> dict[str, Any]:
        code, out, err = _cli(capsys, "opt", zoo.ir, "-p", "canonicalize,fuse", "--json",
                              *extra)
        assert code == 0, err
        return dict(json.loads(out), err=err)

    full = run()
    total = full["rewrites"]
    assert total >= 6 and full["bisect_skipped"] == 0
    none = run("--bisect-limit", "0")
    assert none["rewrites"] == 0 and none["bisect_skipped"] > 0
    assert none["nodes"] == len(zoo.graph.nodes)  # no rewrite: every BatchNorm survives
    assert "bisect: limit of 0 rewrites reached" in none["err"]
    counts = [run("--bisect-limit", str(n))["nodes"] for n in range(total + 1)]
    assert counts == sorted(counts, reverse=True) and counts[-1] == full["nodes"]
    assert len(set(counts)) > 3  # each fusion removes a node: N really is a dial
    code, _, err = _cli(capsys, "opt", zoo.ir, "--bisect-limit", "-1")
    assert code == 2 and "--bisect-limit" in err


def test_output_onnx_runs_and_matches_torch(zoo: Zoo, tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    factory = tmp_path / "factory.py"
    factory.write_text(f"import sys\nsys.path.insert(0, {str(ROOT)!r})\n"
                       "from tests.models.zoo import build\n\n\n"
                       "def resnet():\n    return build('resnet')\n")
    for src in (f"{factory}:resnet", str(zoo.onnx)):
        out = tmp_path / "r.onnx"
        code, _, err = _cli(capsys, "opt", src, "-p", "canonicalize,fuse", "-o", out)
        assert code == 0, err
        m = onnx.load(str(out))
        onnx.checker.check_model(m)
        assert "BatchNormalization" not in {n.op_type for n in m.graph.node}
        sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
        (got,) = sess.run(None, {"x": zoo.example[0].numpy()})
        (want,) = torch_outputs(zoo.model, zoo.example)
        assert rel_error(got, want) < 1e-4
    code, _, err = _cli(capsys, "opt", zoo.ir, "-o", tmp_path / "r.ir")
    assert code == 0, err
    assert len(load_ir(tmp_path / "r.ir").nodes) == len(zoo.graph.nodes)


# -- verification, failure printing, crash reproducer --------------------------------------------
@dataclass(frozen=True)
class _Duplicate(Pass):
    name: ClassVar[str] = "test-duplicate-name"
    summary: ClassVar[str] = "test only: leaves invalid IR (a value defined twice)"

    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        nodes = list(graph.nodes)
        nodes[1].outputs[0].name = nodes[0].outputs[0].name
        return PassResult(True)


@dataclass(frozen=True)
class _Boom(Pass):
    name: ClassVar[str] = "test-boom"
    summary: ClassVar[str] = "test only: crashes"

    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        raise RuntimeError("boom in a fused ResNet")


@pytest.fixture()
def test_passes() -> Iterator[None]:
    passes.register("test-duplicate-name", _Duplicate)
    passes.register("test-boom", _Boom)
    yield
    passes.unregister("test-duplicate-name")
    passes.unregister("test-boom")


def test_verify_each_catches_invalid_ir_and_no_verify_lets_it_through(
        zoo: Zoo, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, test_passes: None,
        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(tmp_path)
    from compiler.passes import PassManager

    canon = zoo.graph.copy()
    PassManager("canonicalize").run(canon)
    dup = f"%{next(iter(canon.nodes)).outputs[0].name}"  # the name the test pass duplicates
    for flags in ([], ["--verify-each"]):
        code, _, err = _cli(capsys, "opt", zoo.ir, "-p", "canonicalize,test-duplicate-name",
                            "--no-reproducer", "--print-ir-after-failure", *flags)
        assert code == 2
        (line,) = [ln for ln in err.splitlines() if ln.startswith("edgec: error:")]
        assert "test-duplicate-name" in line and "defined twice" in line
        assert "canonicalize" in line  # names the passes that ran before
        (title, body), = _sections(err).items()
        assert title.startswith("IR after failure of test-duplicate-name: ")
        defs = [ln for ln in body.splitlines() if ln.strip().startswith(f"{dup} = ")]
        assert len(defs) == 2  # the IR the pass left, duplicate and all
    code, out, err = _cli(capsys, "opt", zoo.ir, "-p", "canonicalize,test-duplicate-name",
                          "--no-verify")
    assert code == 0, err
    assert sum(ln.strip().startswith(f"{dup} = ") for ln in out.splitlines()) == 2
    assert list(tmp_path.iterdir()) == []  # --no-reproducer, and no crash: nothing written


def test_crash_writes_reproducer_ir_and_the_printed_command_replays(
        zoo: Zoo, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, test_passes: None,
        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(tmp_path)
    code, _, err = _cli(capsys, "opt", zoo.ir, "-p", "canonicalize,fuse,test-boom,fuse")
    assert code == 2
    lines = err.splitlines()
    assert len(lines) == 2, err
    assert lines[0].startswith("edgec: error:") and "boom in a fused ResNet" in lines[0]
    m = re.fullmatch(r"edgec: reproducer written to reproducer\.ir; replay with: (.*)", lines[1])
    assert m, lines[1]
    command = shlex.split(m.group(1))
    assert command[:2] == ["edgec", "opt"]
    # the file holds the failing pass's input (the fused graph) and the rest of the pipeline
    text = (tmp_path / "reproducer.ir").read_text()
    assert "// pipeline: test-boom,fuse" in text
    repro = load_ir(tmp_path / "reproducer.ir")
    assert len(repro.nodes) == 17 and "BatchNormalization" not in {n.op for n in repro.nodes}
    # replaying the printed command fails the same way, in the same pass, from the first pass
    code, _, err = _cli(capsys, *command[1:], "--no-reproducer")
    assert code == 2
    (line,) = [ln for ln in err.splitlines() if ln.startswith("edgec: error:")]
    assert "test-boom" in line and "boom in a fused ResNet" in line
    assert "[passes run before: none]" in line  # the reproducer starts at the failing pass
    # --reproducer FILE puts it elsewhere
    code, _, err = _cli(capsys, "opt", zoo.ir, "-p", "test-boom", "--reproducer",
                        tmp_path / "sub" / "r.ir")
    assert code == 2 and (tmp_path / "sub" / "r.ir").is_file()
    assert "replay with: edgec opt" in err


# -- drift and bisect --------------------------------------------------------------------------
def test_drift_per_pass_per_node_first_jump_and_gate(zoo: Zoo,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = _cli(capsys, "drift", zoo.ir, "-p", QUANT, "--calib", zoo.npz, "--json")
    assert code == 0, err
    info = json.loads(out)
    assert [r["pass"] for r in info["passes"]] == ["input", "canonicalize", "fuse", "calibrate",
                                                  "quantize"]
    by = {r["pass"]: r for r in info["passes"]}
    assert by["canonicalize"]["sqnr_db"] is None  # exact
    assert by["fuse"]["sqnr_db"] > 100  # batch-norm folding: float rounding only
    final = by["quantize"]["sqnr_db"]
    assert 20 < final < 60 and 0.99 < by["quantize"]["cosine"] < 1
    nodes = info["nodes"]
    assert len(nodes) == 17 and {"sqnr_db", "cosine", "max_abs", "src"} <= set(nodes[0])
    assert {n["src"] for n in nodes} >= {"bn1", "layer1.bn1", "layer2.downsample.1", "fc"}
    assert nodes[-1]["value"] == zoo.graph.outputs[0].name
    assert nodes[-1]["sqnr_db"] == pytest.approx(final, abs=1e-3)
    jump = info["first_jump"]
    assert jump is not None and jump["op"] == "Conv"
    assert jump["sqnr_db"] < 40  # the first 4-bit conv
    assert info["gate"] is None
    # --fail-below: exit 1 and one line naming the value, the pass and the threshold
    code, out, err = _cli(capsys, "drift", zoo.ir, "-p", QUANT, "--calib", zoo.npz,
                          "--fail-below", f"{final + 1:.3f}")
    assert code == 1
    (line,) = err.splitlines()
    assert line.startswith("edgec: drift: sqnr ") and "after quantize" in line
    assert f"--fail-below {final + 1:.3f}".rstrip("0") in line
    assert "error jumps here" in out  # the report still printed
    code, out, err = _cli(capsys, "drift", zoo.ir, "-p", QUANT, "--calib", zoo.npz,
                          "--fail-below", f"{final - 1:.3f}", "--json")
    assert code == 0 and err == ""
    assert json.loads(out)["gate"]["broken"] is False
    code, out, _ = _cli(capsys, "drift", zoo.ir, "-p", QUANT, "--calib", zoo.npz,
                        "--metric", "cosine", "--fail-below", "0.999999", "--json")
    assert code == 1 and json.loads(out)["gate"]["metric"] == "cosine"


def test_bisect_finds_the_prune_rewrite_and_its_command_reproduces(
        zoo: Zoo, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = _cli(capsys, "bisect", zoo.ir, "-p", PRUNE, "--calib", zoo.npz,
                          "--metric", "sqnr", "--threshold", "15", "--json")
    assert code == 1, err
    info = json.loads(out)
    assert info["first_bad_pass"] == "prune{sparsity=0.9}" and info["pass_index"] == 2
    rw = info["first_bad_rewrite"]
    assert rw["rule"] == "prune-magnitude"
    # fuse's rewrites come first; the first prune rewrite is the one right after them
    code, o, _ = _cli(capsys, "opt", zoo.ir, "-p", "canonicalize,fuse", "--json")
    assert rw["index"] == json.loads(o)["rewrites"] + 1
    # the printed command reproduces the broken state (exit 1), one rewrite fewer does not
    cmd = shlex.split(info["reproduce"])
    assert cmd[:2] == ["edgec", "drift"] and f"--bisect-limit {rw['index']}" in info["reproduce"]
    code, _, err = _cli(capsys, *cmd[1:])
    assert code == 1 and "below --fail-below 15" in err
    fewer = [a if a != str(rw["index"]) else str(rw["index"] - 1) for a in cmd[1:]]
    code, _, err = _cli(capsys, *fewer)
    assert code == 0, err
    # the 'show it' command prints the rewrite as a diff
    code, _, err = _cli(capsys, *shlex.split(info["show_ir"])[1:])
    assert code == 0 and "IR changed by prune" in err
    # text form
    code, out, _ = _cli(capsys, "bisect", zoo.ir, "-p", PRUNE, "--calib", zoo.npz,
                        "--threshold", "15")
    assert code == 1
    assert f"first bad rewrite: #{rw['index']} rule prune-magnitude" in out
    assert f"reproduce: {info['reproduce']}" in out


def test_bisect_names_the_node_of_quantization_and_its_command_reproduces(
        zoo: Zoo, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = _cli(capsys, "bisect", zoo.ir, "-p", QUANT, "--calib", zoo.npz,
                        "--threshold", "55", "--json")
    assert code == 1
    info = json.loads(out)
    assert info["first_bad_pass"] == "quantize{scheme=w4a16}"
    assert [r["pass"] for r in info["after_each_pass"]][-1] == "quantize{scheme=w4a16}"
    node = info["first_bad_node"]
    assert node["op"] == "Conv" and node["src"]
    cmd = shlex.split(info["reproduce"])
    code, out, err = _cli(capsys, *cmd[1:], "--json")
    assert code == 1 and "below --fail-below 55" in err
    again = json.loads(out)
    assert again["first_jump"]["value"] == node["value"]
    code, out, _ = _cli(capsys, "bisect", zoo.ir, "-p", QUANT, "--calib", zoo.npz,
                        "--threshold", "10", "--json")
    assert code == 0 and json.loads(out)["verdict"] == "no pass breaks the threshold"


# -- --json everywhere -------------------------------------------------------------------------
def test_every_command_speaks_json(zoo: Zoo, tmp_path: Path,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    runs = {
        "opt": ["opt", zoo.ir, "-p", "canonicalize"],
        "opt --list-passes": ["opt", "--list-passes"],
        "drift": ["drift", zoo.ir, "-p", "canonicalize", "--calib", zoo.npz],
        "bisect": ["bisect", zoo.ir, "-p", "canonicalize", "--calib", zoo.npz,
                   "--threshold", "30"],
        "explain": ["explain", zoo.onnx, "--target", "htp-v75"],
        "compile": ["compile", zoo.onnx, "--target", "cpu", "--precision", "fp32", "--calib",
                    zoo.npz, "-o", tmp_path / "out"],
        "inspect": ["inspect", tmp_path / "out"],
    }
    if shutil.which("dot"):
        runs["viz"] = ["viz", zoo.ir, "-o", tmp_path / "g.html"]
    docs = {}
    for name, argv in runs.items():
        code, out, err = _cli(capsys, *argv, "--json")
        assert code == 0, (name, err)
        docs[name] = json.loads(out)
    assert docs["opt"]["nodes"] == len(zoo.graph.nodes)
    assert {p["name"] for p in docs["opt --list-passes"]} >= {"fuse", "quantize"}
    assert docs["drift"]["passes"][-1]["pass"] == "canonicalize"
    assert docs["bisect"]["verdict"].startswith("no pass")
    assert isinstance(docs["explain"], dict) and docs["explain"]
    assert docs["compile"]["target"] == "cpu"
    assert len(docs["inspect"]["cpu_nodes"]) == 17 and docs["inspect"]["partitions"] == []
    assert docs["inspect"]["inputs"][0] == {"name": "x", "dtype": "f32", "shape": [1, 3, 32, 32],
                                            "encoding": None}
    if "viz" in docs:
        assert docs["viz"]["nodes"] == len(zoo.graph.nodes)

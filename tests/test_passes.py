"""Pass infrastructure: pipeline strings, the pass manager, verification and instruments."""

from __future__ import annotations

import io
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Literal

import numpy as np
import pytest

import passes
from compiler.errors import PassError, PipelineError, VerifyError
from compiler.ir import DType, Graph, parse, print_graph
from compiler.passes import (
    CrashReproducerInstrument,
    DumpInstrument,
    Pass,
    PassContext,
    PassManager,
    PassResult,
    PrintIRInstrument,
    StatisticsInstrument,
    TimingInstrument,
    format_pipeline,
    option,
    parse_pipeline,
    read_reproducer,
)
from compiler.reference import run_reference

# -- throw-away passes ----------------------------------------------------------------------


@dataclass(frozen=True)
class AllKinds(Pass):
    """A pass with one option of every supported kind."""

    name: ClassVar[str] = "test-all-kinds"
    summary: ClassVar[str] = "options of every kind"
    n: int = option(1, "an int")
    ratio: float = 0.5
    flag: bool = False
    label: str = "a"
    method: Literal["mse", "minmax"] = "minmax"
    targets: tuple[str, ...] = ("htp-v75", "cpu")
    limit: int | None = None


@dataclass(frozen=True)
class BreakIR(Pass):
    """Leaves invalid IR: the first Add's output becomes int32 while its inputs are float."""

    name: ClassVar[str] = "test-break-ir"
    summary: ClassVar[str] = "breaks the IR"

    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        node = next(n for n in graph.nodes if n.op == "Add")
        node.outputs[0].type = node.outputs[0].type.with_dtype(DType.I32)
        return PassResult(True)


@dataclass(frozen=True)
class Explode(Pass):
    """Renames a value, then raises."""

    name: ClassVar[str] = "test-explode"
    summary: ClassVar[str] = "raises"

    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        graph.outputs[0].name = "renamed_before_the_crash"
        raise RuntimeError("boom")


TEST_PASSES: dict[str, type[Pass]] = {c.name: c for c in (AllKinds, BreakIR, Explode)}


@pytest.fixture(autouse=True)
def _registered() -> Iterator[None]:
    for name, cls in TEST_PASSES.items():
        passes.register(name, cls)
    yield
    for name in TEST_PASSES:
        passes.unregister(name)


IR = """\
graph g(%x: f32[2,3]) -> (%y) opset(ai.onnx=17) {
  %w = const f32[2,3] = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]
  %i = Identity(%x) : f32[2,3]
  %a = Add(%i, %w) : f32[2,3]
  %y = Relu(%a) : f32[2,3]
}
"""


def _graph() -> Graph:
    g = parse(IR)
    g.verify()
    return g


# -- pipeline strings -----------------------------------------------------------------------


@pytest.mark.parametrize(("text", "canonical"), [
    ("", ""),
    ("canonicalize", "canonicalize"),
    ("canonicalize,fuse{level=2}", "canonicalize,fuse{level=2}"),
    ("  canonicalize ,\n fuse { level = 2 } ", "canonicalize,fuse{level=2}"),
    ("fuse{level=1}", "fuse"),  # defaults are not written
    ("fuse{}", "fuse"),
    ("canonicalize{max_rounds=2,max_bytes=100}", "canonicalize{max_bytes=100,max_rounds=2}"),
    ("test-all-kinds{targets=htp-v75|cpu}", "test-all-kinds"),
    ("test-all-kinds{n=-3,ratio=1e-05,flag=true,label=x/y.npz,method=mse,targets=cpu,limit=7}",
     "test-all-kinds{n=-3,ratio=1e-05,flag=true,label=x/y.npz,method=mse,targets=cpu,limit=7}"),
    ('test-all-kinds{label="a b,{c}|d",targets=htp-v81|"x y"|cpu}',
     'test-all-kinds{label="a b,{c}|d",targets=htp-v81|"x y"|cpu}'),
    ('test-all-kinds{label="",targets=,limit=none}', 'test-all-kinds{label="",targets=}'),
    ('test-all-kinds{label="none"}', 'test-all-kinds{label="none"}'),
])
def test_pipeline_round_trip(text: str, canonical: str) -> None:
    got = parse_pipeline(text)
    assert format_pipeline(got) == canonical
    again = parse_pipeline(canonical)
    assert again == got and format_pipeline(again) == canonical


def test_parsed_option_values_are_typed() -> None:
    (p,) = parse_pipeline('test-all-kinds{n=4,ratio=2,flag=true,label="none",targets=a|b,'
                          'limit=none,method=mse}')
    assert p == AllKinds(n=4, ratio=2.0, flag=True, label="none", targets=("a", "b"),
                         limit=None, method="mse")
    assert str(p) == 'test-all-kinds{n=4,ratio=2.0,flag=true,label="none",method=mse,targets=a|b}'


@pytest.mark.parametrize(("text", "message"), [
    ("canonicalise", "column 1: unknown pass 'canonicalise' (did you mean 'canonicalize'?); "
                     "valid passes: calibrate, canonicalize, eliminate-common-subexpressions"),
    ("canonicalize,frobnicate", "column 14: unknown pass 'frobnicate'; valid passes: "),
    ("fuse{lvl=2}", "column 6: pass 'fuse' has no option 'lvl'; options: level ({0|1|2}, "
                    "default 1)"),
    ("fuse{level=7}", "column 12: option 'level' of pass 'fuse' must be one of 0, 1, 2, got '7'"),
    ("fuse{level=two}", "option 'level' of pass 'fuse' must be one of 0, 1, 2, got 'two'"),
    ("test-all-kinds{n=1.5}", "option 'n' of pass 'test-all-kinds' must be an integer, got '1.5'"),
    ("test-all-kinds{flag=yes}", "option 'flag' of pass 'test-all-kinds' must be true or false"),
    ("test-all-kinds{ratio=fast}", "option 'ratio' of pass 'test-all-kinds' must be a number"),
    ("test-all-kinds{method=avg}", "option 'method' of pass 'test-all-kinds' must be one of "
                                   "mse, minmax, got 'avg'"),
    ("test-all-kinds{n=1|2}", "option 'n' of pass 'test-all-kinds' takes one value, not a list "
                              "of 2"),
    ("fuse{level=1,level=2}", "option 'level' of pass 'fuse' is given twice"),
    ("fuse{level=1", "column 13: expected '}', got the end"),
    ("fuse,,canonicalize", "column 6: expected a pass name, got ','"),
    ("fuse canonicalize", "column 6: expected ',', got 'c'"),
    ('test-all-kinds{label="open', "bad quoted value"),
])
def test_pipeline_errors_name_the_bad_part(text: str, message: str) -> None:
    with pytest.raises(PipelineError) as e:
        parse_pipeline(text)
    assert message in str(e.value)
    assert repr(text) in str(e.value)


def test_options_are_validated_when_a_pass_is_made() -> None:
    from passes.fuse import Fuse

    with pytest.raises(PipelineError, match=r"option 'level' of pass 'fuse' must be \{0\|1\|2\}"):
        Fuse(level=5)  # type: ignore[arg-type]
    with pytest.raises(PipelineError, match=r"option 'targets' .* must be list\[str\]"):
        AllKinds(targets="cpu")  # type: ignore[arg-type]
    with pytest.raises(PipelineError, match=r"option 'flag' .* must be bool, got 1"):
        AllKinds(flag=1)  # type: ignore[arg-type]
    assert AllKinds(targets=["a", "b"]).targets == ("a", "b")  # type: ignore[arg-type]
    assert AllKinds(ratio=2).ratio == 2


def test_registry_lists_passes_with_options() -> None:
    infos = {i["name"]: i for i in passes.list_passes()}
    for name in ("canonicalize", "fuse", "fold-constants", "infer-shapes", "remove-noops",
                 "eliminate-dead-code", "eliminate-common-subexpressions", "simplify-algebra",
                 "sort-topologically"):
        assert infos[name]["summary"]
    assert infos["fuse"]["options"] == [{"name": "level", "type": "{0|1|2}", "default": 1,
                                         "doc": "0 = off, 1 = safe fusions, 2 = also "
                                                "aggressive ones", "choices": [0, 1, 2]}]
    assert infos["canonicalize"]["pipeline"].startswith("infer-shapes,remove-noops,")
    assert infos["test-all-kinds"]["options"][5]["default"] == ["htp-v75", "cpu"]
    with pytest.raises(PipelineError, match="unknown pass 'nope'"):
        passes.get_pass("nope")


def test_registry_is_lazy() -> None:
    import subprocess
    import sys

    code = ("import sys, passes; passes.get_pass('fuse'); "
            "print(sorted(m for m in sys.modules if m.startswith('passes.')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=Path(__file__).parent.parent).stdout
    assert out.strip() == "['passes.fuse']"


# -- the pass manager -----------------------------------------------------------------------


def test_runs_and_records_history() -> None:
    g = _graph()
    ctx = PassManager("remove-noops,eliminate-dead-code").run(g)
    assert [r.path for r in ctx.history] == ["remove-noops", "eliminate-dead-code"]
    assert ctx.history[0].result.modified and not ctx.history[1].result.modified
    assert [n.op for n in g.nodes] == ["Add", "Relu"]


def test_progress_bar_goes_to_stderr(capsys: pytest.CaptureFixture[str]) -> None:
    PassManager("remove-noops,fuse").run(_graph(), PassContext(progress=True))
    err = capsys.readouterr().err
    assert "2/2" in err and "pass" in err


def test_verify_after_each_catches_a_broken_pass() -> None:
    g = _graph()
    with pytest.raises(PassError) as e:
        PassManager("remove-noops,eliminate-dead-code,test-break-ir,fuse").run(g)
    err = e.value
    assert err.pass_name == "test-break-ir"
    assert err.before == ("remove-noops", "eliminate-dead-code")
    assert isinstance(err.__cause__, VerifyError)
    assert str(err) == (
        "pass 'test-break-ir' left invalid IR: node Add (%a): output 0 %a is i32 but input 0 "
        "is f32 (both are type T) [passes run before: remove-noops, eliminate-dead-code]")
    # Without verification the broken IR goes through unnoticed.
    PassManager("test-break-ir", verify_each=False).run(_graph())


def test_exception_in_a_nested_pass_names_the_path() -> None:
    from passes.canonicalize import Canonicalize

    @dataclass(frozen=True)
    class Pipe(Canonicalize):
        name: ClassVar[str] = "test-pipe"

        def passes(self) -> list[Pass]:
            return [*super().passes()[:2], Explode()]

    with pytest.raises(PassError) as e:
        PassManager([Pipe()]).run(_graph())
    assert e.value.pass_name == "test-pipe/test-explode"
    assert e.value.before == ("test-pipe/infer-shapes", "test-pipe/remove-noops")
    assert str(e.value).startswith("pass 'test-explode' (test-pipe/test-explode) failed: "
                                   "RuntimeError: boom [passes run before: test-pipe/")
    assert isinstance(e.value.__cause__, RuntimeError)


def test_invalid_input_is_not_blamed_on_a_pass() -> None:
    g = _graph()
    g.find_node("a").attrs["bogus"] = 1
    with pytest.raises(VerifyError, match="node Add \\(%a\\): unknown attribute 'bogus'"):
        PassManager("fuse").run(g)


def test_result_must_be_a_pass_result() -> None:
    @dataclass(frozen=True)
    class Sloppy(Pass):
        name: ClassVar[str] = "test-sloppy"

        def run(self, graph: Graph, ctx: PassContext) -> PassResult:
            return True  # type: ignore[return-value]

    with pytest.raises(PassError, match="returned bool, not a PassResult"):
        PassManager([Sloppy()]).run(_graph())


# -- instruments ----------------------------------------------------------------------------


def test_timing_and_statistics_have_entries_per_pass() -> None:
    timing, stats = TimingInstrument(), StatisticsInstrument()
    PassManager("canonicalize,fuse", instruments=[timing, stats]).run(_graph())
    assert list(timing.totals)[:3] == ["canonicalize", "canonicalize/infer-shapes",
                                       "canonicalize/remove-noops"]
    assert "fuse" in timing.totals and all(t >= 0 for t in timing.totals.values())
    assert timing.totals["canonicalize"] >= timing.totals["canonicalize/infer-shapes"]
    report = timing.report()
    assert "  infer-shapes" in report and report.splitlines()[-1].startswith("total")
    assert stats.stats["canonicalize/remove-noops"]["identity"] == 1
    assert stats.stats["canonicalize/remove-noops"]["modified"] == 1
    assert stats.stats["canonicalize"]["rounds"] == 2
    assert stats.stats["fuse"] == {"runs": 1, "modified": 0, "nodes": 2}
    assert "canonicalize/remove-noops.identity = 1\n" in stats.report()


def test_print_ir_before_after_and_after_change() -> None:
    out = io.StringIO()
    inst = PrintIRInstrument(out, before=["fuse"], after=["canonicalize"], after_change=True)
    PassManager("canonicalize,fuse", instruments=[inst]).run(_graph())
    text = out.getvalue()
    assert text.count("// ----- IR changed by ") == 1  # only remove-noops changed anything
    assert textwrap.dedent("""\
        // ----- IR changed by canonicalize/remove-noops ----- //
        --- before canonicalize/remove-noops
        +++ after canonicalize/remove-noops
        @@ -1,6 +1,5 @@
         graph g(%x: f32[2,3]) -> (%y) opset(ai.onnx=17) {
           %w = const f32[2,3] #sha:""") in text
    assert "-  %i = Identity(%x) : f32[2,3]\n-  %a = Add(%i, %w) : f32[2,3]\n" \
           "+  %a = Add(%x, %w) : f32[2,3]\n" in text
    after = print_graph(parse(IR.replace("%i = Identity(%x) : f32[2,3]\n  ", "")
                              .replace("Add(%i", "Add(%x")))
    assert "// ----- IR after canonicalize ----- //\n" + after in text
    assert "// ----- IR before fuse ----- //\n" + after in text
    assert text.index("IR after canonicalize") < text.index("IR before fuse")


def test_print_ir_after_all_and_after_failure() -> None:
    out = io.StringIO()
    inst = PrintIRInstrument(out, after_all=True, after_failure=True, inline_limit=100)
    with pytest.raises(PassError):
        PassManager("remove-noops,test-explode", instruments=[inst]).run(_graph())
    text = out.getvalue()
    assert "// ----- IR after remove-noops ----- //\n" in text
    assert "// ----- IR after failure of test-explode: pass 'test-explode' failed: " \
           "RuntimeError: boom" in text
    assert "-> (%renamed_before_the_crash)" in text  # the IR as the failing pass left it
    assert "= [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]" in text


def test_dump_writes_numbered_files_inside_the_directory(tmp_path: Path) -> None:
    out = tmp_path / "dump"
    dump = DumpInstrument(out)
    g = _graph()
    with pytest.raises(PassError):
        PassManager("canonicalize,fuse,test-break-ir", instruments=[dump]).run(g)
    names = sorted(p.name for p in out.iterdir())
    assert names == ["000_input.ir", "001_canonicalize.ir", "002_fuse.ir",
                     "003_test-break-ir.failed.ir"]
    assert [p.name for p in dump.files] == names
    assert (out / "000_input.ir").read_text() == print_graph(_graph())
    canon = (out / "001_canonicalize.ir").read_text()
    assert "Identity" not in canon and canon == (out / "002_fuse.ir").read_text()
    assert (out / "003_test-break-ir.failed.ir").read_text() == print_graph(g)
    assert ": i32[2,3]" in print_graph(g)

    nested = DumpInstrument(tmp_path / "nested", nested=True)
    PassManager("canonicalize{max_rounds=1},fuse", instruments=[nested]).run(_graph())
    assert [p.name for p in nested.files] == [
        "000_input.ir", "001_canonicalize.infer-shapes.ir", "002_canonicalize.remove-noops.ir",
        "003_canonicalize.simplify-algebra.ir", "004_canonicalize.fold-constants.ir",
        "005_canonicalize.eliminate-common-subexpressions.ir",
        "006_canonicalize.eliminate-dead-code.ir", "007_canonicalize.sort-topologically.ir",
        "008_fuse.ir"]
    assert not list(tmp_path.glob("**/*.tmp"))


def test_crash_reproducer_replays_the_same_failure(tmp_path: Path) -> None:
    path = tmp_path / "repro.ir"
    big = np.arange(40, dtype=np.float32).reshape(4, 10) / 7
    g = Graph("big")
    x = g.add_input("x", _graph().inputs[0].type.with_shape((4, 10)))
    w = g.add_const("w", big)
    i = g.make_node("Identity", [x], outputs=["i"], types=[x.type]).outputs[0]
    a = g.make_node("Add", [i, w], outputs=["a"], types=[x.type]).outputs[0]
    g.outputs = [g.make_node("Relu", [a], outputs=["y"], types=[x.type]).outputs[0]]
    repro = CrashReproducerInstrument(path)
    pm = PassManager("canonicalize,test-break-ir,fuse{level=2}", instruments=[repro])
    with pytest.raises(PassError) as first:
        pm.run(g, PassContext(bisect_limit=100))
    assert repro.pipeline == "test-break-ir,fuse{level=2}"
    assert repro.command == (f"edgec opt {path} -p 'test-break-ir,fuse{{level=2}}' "
                             "--bisect-limit 99")
    assert first.value.hint == f"reproducer written to {path}; replay with: {repro.command}"
    lines = path.read_text().splitlines()
    assert lines[0] == "// edgec crash reproducer: " + str(first.value)
    assert lines[1:3] == ["// pipeline: test-break-ir,fuse{level=2}", "// replay: " + repro.command]

    replay, pipeline = read_reproducer(path)
    assert pipeline == repro.pipeline
    assert np.array_equal(replay.constants["w"].const, big)  # inlined, so it replays exactly
    assert "Identity" not in print_graph(replay)  # the input of the failing pass
    xs = np.ones((4, 10), np.float32)
    np.testing.assert_array_equal(run_reference(replay, [xs])["y"], np.maximum(xs + big, 0))
    with pytest.raises(PassError) as second:
        PassManager(pipeline).run(replay)
    assert second.value.pass_name == first.value.pass_name == "test-break-ir"
    assert str(second.value.__cause__) == str(first.value.__cause__)


def test_reproducer_keeps_the_input_of_the_failing_pass(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "r.ir"
    repro = CrashReproducerInstrument(path)
    with pytest.raises(PassError):
        PassManager("test-explode,fuse", instruments=[repro]).run(_graph())
    replay, pipeline = read_reproducer(path)
    assert pipeline == "test-explode,fuse"
    assert print_graph(replay, inline_limit=6) == IR  # not the renamed output the pass left


def test_lower_layer_norm_min_outer_dims_picks_batched_norms_and_stays_exact() -> None:
    """``min_outer_dims=2`` lowers a LayerNorm over ``[2, 5, 8]`` and leaves ``[1, 5, 8]``
    alone; the lowered graph equals the original on the CPU reference."""
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    from compiler.frontends import load_onnx
    from compiler.passes import PassManager
    from compiler.reference import run_reference

    def model(shape: list[int]) -> object:
        g = helper.make_graph(
            [helper.make_node("LayerNormalization", ["x", "s", "b"], ["y"], axis=-1,
                              epsilon=1e-5, name="ln")], "g",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, shape)],
            [numpy_helper.from_array(np.linspace(0.5, 1.5, 8, dtype=np.float32), "s"),
             numpy_helper.from_array(np.linspace(-1, 1, 8, dtype=np.float32), "b")])
        return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])

    for shape, lowered in (([2, 5, 8], True), ([1, 5, 8], False)):
        g = load_onnx(model(shape))
        x = np.random.default_rng(0).standard_normal(shape).astype(np.float32) * 3 + 1
        want = run_reference(g, [x])["y"]
        PassManager("lower-layer-norm{min_outer_dims=2}").run(g)
        ops = {n.op for n in g.nodes}
        assert ("LayerNormalization" not in ops) is lowered, (shape, ops)
        got = run_reference(g, [x])["y"]
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)

"""The ``partition`` placement without the simulator: NPU + CPU + NPU around an op the HTP
refuses, pins, units, determinism, reports, and cost-driven placement never predicted slower
than the greedy capability placement on the zoo."""

from __future__ import annotations

import io
import subprocess
import sys
import warnings
from functools import cache
from pathlib import Path

import onnx
import pytest
import torch

from compiler.errors import TargetError, UnsupportedOpError
from compiler.frontends import load_onnx, load_torch
from compiler.ir import Graph
from compiler.passes import PassContext, PassManager
from passes.partition import build_problem, evaluate, place, placement_report, solve
from targets.cost import graph_cost
from tests.models.zoo import ZOO
from tests.partition.models import sandwich

FLOAT = "canonicalize,fuse,lower-group-norm,canonicalize"


@cache
def _float_graph(name: str, pipeline: str = FLOAT, exporter: str = "fx") -> Graph:
    m, ex = sandwich() if name == "sandwich" else ZOO[name]()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if exporter == "fx":
            g = load_torch(m, ex)
        else:  # torch.onnx's TorchScript exporter: GELU becomes Erf, as users get it
            f = io.BytesIO()
            torch.onnx.export(m, ex, f, dynamo=False, opset_version=17)  # type: ignore[arg-type]
            g = load_onnx(onnx.load_from_string(f.getvalue()))
    PassManager(pipeline).run(g, PassContext(target="htp-v75"))
    return g


def graph(name: str, pipeline: str = FLOAT, exporter: str = "fx") -> Graph:
    """A fresh copy of the float graph of ``name`` after ``pipeline``."""
    return _float_graph(name, pipeline, exporter).copy()


def _targets_in_order(g: Graph) -> list[str]:
    return [str(n.placement) for n in g.nodes]


def test_erf_in_the_middle_of_a_cnn_gives_npu_cpu_npu() -> None:
    g = graph("sandwich")
    pl, base = place(g, ["htp-v75", "cpu"], precision="w8a16", assume_quantized=True)
    assert [p.target for p in pl.partitions] == ["htp-v75", "cpu", "htp-v75"]
    erf = next(n for n in g.nodes if n.op == "Erf")
    assert erf.placement == "cpu"
    assert "no kernel for Erf" in erf.meta["placement_reason"]
    convs = [n for n in g.nodes if n.op == "Conv"]
    assert all(n.placement == "htp" for n in convs)
    assert all(n.meta["placement_reason"].startswith("cost: ") for n in convs)
    assert pl.total_s <= base.total_s
    rep = placement_report(pl, base)
    assert rep["fallback_pct"] == pytest.approx(100 / len(g.nodes), abs=0.01)
    # the CPU partition pays for the tensor it receives, the second NPU one for its own
    assert rep["partitions"][1]["transfer_bytes"] > 0
    assert rep["partitions"][2]["transfer_us"] >= 50.0


def test_report_adds_up_and_one_target_is_graph_cost() -> None:
    g = graph("resnet")
    pl, base = place(g, ["htp-v75", "cpu"], precision="w8a8", assume_quantized=True)
    rep = placement_report(pl, base)
    assert sum(p["predicted_us"] for p in rep["partitions"]) == pytest.approx(
        rep["predicted_us"], abs=0.01)
    assert len(rep["nodes"]) == len(g.nodes)
    for n in rep["nodes"]:
        assert {"node", "op", "target", "reason", "predicted_us", "partition"} <= set(n)
    for t in ("htp-v75", "cpu"):
        one = solve(build_problem(g, [t], precision="w8a8", assume_quantized=True))
        assert one.total_s == pytest.approx(graph_cost(g, t, "a8w8").seconds, rel=1e-9)


def test_pins_are_honoured() -> None:
    g = graph("sandwich")
    pl, _ = place(g, ["htp-v75", "cpu"], pins={"tail.0": "cpu", "op:Relu": "npu"},
                  precision="w8a16", assume_quantized=True)
    by_src = {n.meta.get("src"): n for n in g.nodes}
    assert by_src["tail.0"].placement == "cpu"
    assert "user pin 'tail.0' -> cpu" in by_src["tail.0"].meta["placement_reason"]
    assert all(n.placement == "htp" for n in g.nodes if n.op == "Relu")
    assert pl.target_of()[by_src["tail.0"].name] == "cpu"
    # pins also hold under the greedy policy, and whole-module globs work
    g2 = graph("sandwich")
    place(g2, ["htp-v75", "cpu"], "greedy", pins={"head.*": "cpu"}, assume_quantized=True)
    assert all(n.placement == "cpu" for n in g2.nodes if str(n.meta.get("src", "")).startswith(
        "head."))


def test_bad_pins_name_the_node() -> None:
    g = graph("sandwich")
    with pytest.raises(UnsupportedOpError, match=r"node erf \(Erf\) is pinned to htp-v75"):
        place(g, ["htp-v75", "cpu"], pins={"op:Erf": "htp"}, assume_quantized=True)
    with pytest.raises(TargetError, match="gpu"):
        place(g, ["htp-v75", "cpu"], pins={"node:erf": "gpu"}, assume_quantized=True)
    with pytest.raises(UnsupportedOpError, match="erf"):
        place(g, ["htp-v75"], assume_quantized=True)  # no CPU to fall back to
    pl, _ = place(g, ["htp-v75", "cpu"], pins={"nothing.*": "cpu"}, assume_quantized=True)
    assert pl.problem.notes == ["placement pin 'nothing.*' matches no node"]


def test_units_are_placed_as_one() -> None:
    g = graph("vit")
    units: dict[str, list[str]] = {}
    for n in g.nodes:
        if isinstance(n.meta.get("unit"), str):
            units.setdefault(n.meta["unit"], []).append(n.name)
    att = next(u for u in sorted(units) if u.startswith("attention"))
    softmax = next(n for n in g.nodes if n.meta.get("unit") == att and n.op == "Softmax")
    softmax.name = softmax.name or "the_softmax"
    place(g, ["htp-v75", "cpu"], pins={f"node:{softmax.name}": "cpu"},
          precision="w8a8", assume_quantized=True)
    members = [n for n in g.nodes if n.meta.get("unit") == att]
    assert len(members) >= 3 and {n.placement for n in members} == {"cpu"}


def test_placement_is_deterministic() -> None:
    runs = []
    for _ in range(2):
        g = graph("whisper", "canonicalize", "onnx")
        pl, _ = place(g, ["htp-v75", "cpu"], precision="w8a16", assume_quantized=True)
        runs.append((_targets_in_order(g), [(p.target, p.items) for p in pl.partitions]))
    assert runs[0] == runs[1]


@pytest.mark.parametrize(("pipeline", "exporter"), [(FLOAT, "fx"), ("canonicalize", "onnx")])
@pytest.mark.parametrize("precision", ["w8a8", "w8a16"])
@pytest.mark.parametrize("name", sorted(ZOO))
def test_cost_is_never_predicted_slower_than_greedy(name: str, precision: str,
                                                    pipeline: str, exporter: str) -> None:
    g = graph(name, pipeline, exporter)
    pl, base = place(g, ["htp-v75", "cpu"], precision=precision, assume_quantized=True)
    assert pl.total_s <= base.total_s + 1e-12
    # and the reported total is the objective of the partitions it reports
    again = evaluate(pl.problem, pl.assign)
    assert again.total_s == pytest.approx(pl.total_s, rel=1e-12)


def test_greedy_islands_are_merged_when_unfused_erf_gelu_splits_a_model() -> None:
    # as exported, the whisper-like encoder's erf-GELUs split the greedy placement into
    # several NPU islands; cost-driven placement needs fewer partitions
    g = graph("whisper", "canonicalize", "onnx")
    pl, base = place(g, ["htp-v75", "cpu"], precision="w8a16", assume_quantized=True)
    assert len(base.partitions) >= 3
    assert len(pl.partitions) < len(base.partitions) and pl.total_s < base.total_s


def test_three_targets() -> None:
    g = graph("sandwich")
    pl, base = place(g, ["htp-v75", "gpu-adreno", "cpu"], precision="fp16",
                     assume_quantized=True)
    assert {n.placement for n in g.nodes} <= {"htp", "gpu", "cpu"}
    assert pl.total_s <= base.total_s + 1e-12


def test_partition_pass_in_a_pipeline() -> None:
    g = graph("sandwich")
    ctx = PassContext(target="htp-v75", options={"placement": {"tail.2": "cpu"}})
    PassManager("partition{targets=htp-v75|cpu,precision=w8a16,assume_quantized=true}").run(
        g, ctx)
    rep = ctx.report["placement"]
    assert rep["counts"]["cpu"] == 2 and rep["num_partitions"] == 4
    assert [p["target"] for p in rep["partitions"]] == ["htp-v75", "cpu", "htp-v75", "cpu"]
    assert {n.placement for n in g.nodes} == {"htp", "cpu"}
    with pytest.raises(Exception, match="policy"):
        PassManager("partition{policy=fastest}")


def test_refused_nodes_keep_their_reason_code() -> None:
    g = graph("sandwich")
    pl, _ = place(g, ["htp-v75", "cpu"], "greedy", assume_quantized=False)
    # not quantized and not fp16: the HTP refuses the float nodes with a dtype reason
    codes = {code for code, _ in pl.reasons.values()}
    assert "dtype-unsupported" in codes or "op-unsupported" in codes
    assert any(t == "cpu" for t in pl.assign)
    torch.manual_seed(0)  # keep torch's global state untouched for other tests


def test_placement_benchmark_quick_writes_its_table(tmp_path: Path) -> None:
    root = Path(__file__).resolve().parents[2]
    r = subprocess.run([sys.executable, "benchmarks/placement.py", "--quick", "--out",
                        str(tmp_path)], cwd=root, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    table = (tmp_path / "placement-quick.md").read_text()
    assert "| whisper | onnx | w8a16 |" in table
    assert "predicted slower than greedy: 0 of" in table


def test_a_pin_on_a_fused_activation_names_the_pinned_member() -> None:
    """``op:Relu`` selects the Relu, not the Conv placed with it: the Conv's reason names the
    Relu and the pin; the Relu's is the pin itself."""
    g = graph("sandwich")
    pl, _ = place(g, ["htp-v75", "cpu"], pins={"op:Relu": "cpu"}, precision="w8a16",
                  assume_quantized=True)
    rep = placement_report(pl)
    by_name = {n["node"]: n for n in rep["nodes"]}
    relus = [n for n in g.nodes if n.op == "Relu"]
    assert relus
    for relu in relus:
        conv = relu.inputs[0].producer
        assert conv is not None and conv.op == "Conv"
        assert by_name[relu.name]["reason"] == "user pin 'op:Relu' -> cpu"
        assert by_name[conv.name]["reason"] == (
            f"in a unit with {relu.name}, pinned by 'op:Relu' -> cpu")
        assert by_name[conv.name]["reason_code"] == "user-pin"
        assert conv.meta["placement_reason"] == by_name[conv.name]["reason"]

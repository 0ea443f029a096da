"""Placement through ``compile()`` on the HTP simulator: NPU + CPU + NPU around an op no HTP
kernel offers, pins, an all-CPU placement, and a partition that fails HTP finalization (moved,
never lost). Inputs are small: each test runs a few simulator inferences."""

from __future__ import annotations

import warnings
from pathlib import Path

import onnx
import pytest
import torch

import compiler
from compiler.errors import UnsupportedOpError
from compiler.numerics import metrics
from compiler.reference import run_reference
from tests.partition.models import sandwich

pytestmark = pytest.mark.htp


def _calib(shape: tuple[int, ...], n: int = 4) -> list[tuple[torch.Tensor]]:
    g = torch.Generator().manual_seed(1)
    return [(torch.randn(*shape, generator=g),) for _ in range(n)]


def _compile(m: torch.nn.Module, x: torch.Tensor, out: Path, **kw: object
             ) -> compiler.CompiledModel:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return compiler.compile(m, (x,), calibration_data=_calib(tuple(x.shape)),
                                output_dir=out, progress=False, **kw)


def _ops(path: Path) -> list[str]:
    return [n.op_type for n in onnx.load(str(path), load_external_data=False).graph.node
            if n.op_type not in ("QuantizeLinear", "DequantizeLinear")]


def _check_numerics(cm: compiler.CompiledModel, m: torch.nn.Module, x: torch.Tensor) -> None:
    with torch.no_grad():
        want = m(x).numpy()
    got = cm.run(x.numpy())
    assert metrics([want], got).sqnr_db > 35
    cpu = run_reference(cm.graph, [x.numpy()])
    assert metrics([cpu[cm.graph.outputs[0].name]], got).sqnr_db > 35


def test_erf_in_a_cnn_compiles_to_npu_cpu_npu_and_runs(tmp_path: Path) -> None:
    m, (x,) = sandwich()
    cm = _compile(m, x, tmp_path, target=["htp-v75", "cpu"])
    assert _ops(cm.artifacts["model"]) == ["EPContext", "Erf", "EPContext"]
    s = cm.report["summary"]
    assert (s["npu_nodes"], s["cpu_nodes"], s["partitions"]) == (len(cm.graph.nodes) - 1, 1, 2)
    rep = cm.report["placement"]
    assert [p["target"] for p in rep["partitions"]] == ["htp-v75", "cpu", "htp-v75"]
    assert rep["predicted_us"] <= rep["greedy"]["predicted_us"]
    erf = next(n for n in rep["nodes"] if n["op"] == "Erf")
    assert erf["target"] == "cpu" and erf["reason_code"] == "op-unsupported"
    _check_numerics(cm, m, x)


def test_pins_are_honoured_in_the_artifact(tmp_path: Path) -> None:
    m, (x,) = sandwich()
    cm = _compile(m, x, tmp_path, placement={"tail.0": "cpu"})  # target="htp-v75"
    ops = _ops(cm.artifacts["model"])
    # the pin leaves tail.2 a one-Conv NPU island between CPU nodes: the single-NPU
    # (fallback) policy moves it to the CPU, as the cost model predicts faster
    assert ops.count("EPContext") == 1 and ops.count("Conv") == 2
    pinned = [c for c in cm.report["cpu_nodes"] if c["op"] == "Conv" and c["src"] == "tail.0"]
    assert len(pinned) == 1 and "user pin 'tail.0'" in pinned[0]["reason"]
    moved = {n["node"]: n for n in cm.report["placement"]["nodes"]}
    island = [n for n in moved.values() if n["op"] == "Conv" and n["src"] == "tail.2"]
    assert island and island[0]["target"] == "cpu" and island[0]["reason_code"] == "cost"
    _check_numerics(cm, m, x)
    with pytest.raises(UnsupportedOpError, match=r"erf \(Erf\) is pinned to htp-v75"):
        _compile(m, x, tmp_path / "bad", placement={"op:Erf": "htp"})


def test_a_model_placed_wholly_on_the_cpu_runs_without_a_context(tmp_path: Path) -> None:
    torch.manual_seed(0)
    m = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU()).eval()
    x = torch.randn(1, 3, 8, 8)
    cm = _compile(m, x, tmp_path, target=["htp-v75", "cpu"], precision="w8a8")
    s = cm.report["summary"]
    assert s["partitions"] == 0 and s["npu_nodes"] == 0 and s["cpu_nodes"] == len(cm.graph.nodes)
    assert "EPContext" not in _ops(cm.artifacts["model"])
    assert cm.report["placement"]["predicted_us"] < cm.report["placement"]["greedy"][
        "predicted_us"]
    _check_numerics(cm, m, x)


def test_a_placed_partition_that_fails_finalization_is_split_not_lost(tmp_path: Path) -> None:
    class GN(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = torch.nn.Conv2d(16, 64, 3, padding=1)
            self.norm = torch.nn.GroupNorm(4, 64)
            self.b = torch.nn.Conv2d(64, 16, 3, padding=1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.b(torch.relu(self.norm(self.a(x))))

    torch.manual_seed(0)
    m = GN().eval()
    x = torch.randn(1, 16, 16, 16)
    # without the GroupNorm lowering its InstanceNormalization form fails HTP finalization
    pipe = "canonicalize,fuse,canonicalize,calibrate,quantize{scheme=w8a16}"
    cm = _compile(m, x, tmp_path, target=["htp-v75", "cpu"], pipeline=pipe)
    moves = cm.report["finalize_moves"]
    assert moves and "QNN_COMMON_ERROR_MEM_ALLOC" in moves[0]["reason"]
    rep = cm.report["placement"]
    names = [n["node"] for n in rep["nodes"]]
    assert sorted(names) == sorted(n.name for n in cm.graph.nodes)  # each node once
    moved = {mv["node"] for mv in moves}
    for n in rep["nodes"]:
        if n["node"] in moved:
            assert n["target"] == "cpu" and n["reason_code"] == "finalize-failed"
    assert cm.report["summary"]["partitions"] >= 1
    _check_numerics(cm, m, x)


def test_single_npu_target_moves_a_tiny_npu_island_to_the_cpu(tmp_path: Path) -> None:
    """``target="htp-v75"`` (CPU as fallback): capability placement would make the tiny op
    between two Erfs an NPU partition of its own; the fallback policy moves it to the CPU
    (fewer contexts, predicted faster than greedy), and the artifact still matches."""
    from tests.partition.models import island

    m, (x,) = island()
    cm = _compile(m, x, tmp_path, precision="w8a16")  # target="htp-v75"
    pl = cm.report["placement"]
    assert pl["predicted_us"] < pl["greedy"]["predicted_us"]
    assert cm.report["summary"]["partitions"] == 2  # head and tail; not head, island, tail
    moved = [n for n in pl["nodes"] if n["reason_code"] == "cost"]
    assert moved and all(n["target"] == "cpu" for n in moved)
    assert _ops(cm.artifacts["model"]).count("EPContext") == 2
    _check_numerics(cm, m, x)

"""``prune``: 0% changes nothing, 100% is refused, magnitude/N:M report sparsity and claim no
speed, and channel pruning keeps shapes consistent through batch norm, a residual, a
depthwise conv, a concat and Linear->Linear, equal to a masked-reference computation."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from compiler.errors import PassError
from compiler.frontends import load_torch
from compiler.ir import Graph
from compiler.passes import PassContext, PassManager
from compiler.reference import run_reference
from passes.lowrank import CompressionError
from passes.prune.channels import plan_channels
from passes.prune.prune import NO_SPEEDUP
from targets.cost import graph_cost, node_macs
from tests.compress.trainable import CNN


def _setup() -> tuple[CNN, Graph, PassContext, np.ndarray]:
    torch.manual_seed(0)
    model = CNN().eval()
    with torch.no_grad():  # non-trivial batch-norm statistics
        assert model.bn.running_mean is not None and model.bn.running_var is not None
        model.bn.running_mean.uniform_(-0.3, 0.3)
        model.bn.running_var.uniform_(0.5, 1.5)
    x = torch.randn(2, 3, 16, 16)
    g = load_torch(model, (x,))
    PassManager("canonicalize,fuse").run(g)
    gen = np.random.default_rng(3)
    ctx = PassContext(calibration=[{g.inputs[0].name: gen.normal(size=(2, 3, 16, 16))
                                    .astype(np.float32)} for _ in range(3)])
    return model, g, ctx, x.numpy()


def _out(g: Graph, x: np.ndarray) -> np.ndarray:
    return next(iter(run_reference(g, [x], qdq=False).values()))


@pytest.mark.parametrize("pipe", ["prune{method=magnitude,sparsity=0.0}",
                                  "prune{method=channel,sparsity=0.0}",
                                  "prune{method=nm,n=4,m=4}"])
def test_zero_sparsity_changes_nothing(pipe: str) -> None:
    _, g, ctx, _ = _setup()
    before = str(g)
    ctx = PassManager(pipe).run(g, ctx)
    assert str(g) == before
    assert not ctx.history[-1].result.modified


@pytest.mark.parametrize("pipe,names", [
    # full sparsity: refused, naming the node
    ("prune{method=magnitude,sparsity=1.0}", "Conv (%"),
    ("prune{method=channel,sparsity=1.0}", "Conv (%"),
    ("prune{method=nm,n=0,m=4}", "Conv (%"),
    # a layer name that matches nothing
    ("prune{method=channel,sparsities=c9:0.5}", "no layer named"),
    ("prune{method=magnitude,layers=fc3}", "no layer named"),
    ("prune{method=head,layers=blocks.7}", "no layer named"),
])
def test_impossible_request_is_refused(pipe: str, names: str) -> None:
    _, g, ctx, _ = _setup()
    with pytest.raises(PassError) as e:
        PassManager(pipe).run(g, ctx)
    assert isinstance(e.value.__cause__, CompressionError)
    assert names in str(e.value) and "refused" in str(e.value)


@pytest.mark.parametrize("method", ["magnitude", "nm"])
def test_unstructured_reports_sparsity_and_claims_no_speed(method: str) -> None:
    _, g, ctx, _ = _setup()
    cost_before = graph_cost(g, "htp-v75", "a16w8").seconds
    ctx = PassManager(f"prune{{method={method},sparsity=0.5}}").run(g, ctx)
    rows = [r for r in ctx.report["compression"] if r["action"] == "sparsified"]
    assert rows and all(r["speedup"] == NO_SPEEDUP for r in rows)
    assert all(abs(r["sparsity"] - 0.5) < 0.01 for r in rows)
    assert any("no speed-up on the HTP" in note for note in ctx.log)
    assert graph_cost(g, "htp-v75", "a16w8").seconds == cost_before  # shapes unchanged
    if method == "nm":
        for r in rows:
            n = next(n for n in g.nodes if n.outputs[0].name in r["layer"])
            wv = n.input(1)
            assert wv is not None and wv.const is not None
            w = wv.const
            rows2 = np.moveaxis(w, 0, 0).reshape(w.shape[0], -1).reshape(w.shape[0], -1, 4)
            assert (np.count_nonzero(rows2, axis=2) <= 2).all()


def test_channel_groups_follow_residual_concat_and_depthwise() -> None:
    _, g, _, _ = _setup()
    plan = plan_channels(g)
    groups = {tuple(sorted(s.src for s in grp.sources)): grp for grp in plan.prunable()}
    # stem (with its folded batch norm) and c2 meet in the residual add: one group
    assert ("bn", "c2") in groups
    residual = groups[("bn", "c2")]
    assert {t.src for t in residual.terminals} == {"c1", "mix"}  # mix reads it twice (concat)
    assert ("c1",) in groups and ("mix",) in groups and ("fc1",) in groups
    assert plan.blocked()[0].blocked is not None  # fc2 feeds the graph output


def test_channel_pruning_equals_the_masked_reference() -> None:
    model, g, ctx, x = _setup()
    ctx = PassManager("prune{method=channel,sparsity=0.5}").run(g, ctx)
    g.verify()
    rows = {r["layer"]: r for r in ctx.report["compression"] if r["action"] == "pruned"}
    kept = {}
    for layer, r in rows.items():
        src = layer.split(" ")[0]
        kept["residual" if layer.startswith("bn") else src] = r["kept"]
    assert set(kept) == {"residual", "c1", "mix", "fc1"}

    def mask(n: int, keep: list[int]) -> torch.Tensor:
        m = torch.zeros(n)
        m[keep] = 1
        return m

    w = 16
    res = mask(w, kept["residual"])
    # the channels of a group are zeroed where its consumers read them; the concat feeds
    # mix the depthwise branch and the residual, both of the residual group
    model.masks = {"c1": res, "c2": mask(w, kept["c1"]), "mix": torch.cat([res, res]),
                   "fc1": mask(2 * w, kept["mix"]), "fc2": mask(32, kept["fc1"])}
    with torch.no_grad():
        want = model(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(_out(g, x), want, rtol=1e-4, atol=1e-4)
    # tensors really shrank, consistently
    shapes = {n.src: n.input(1).const.shape for n in g.nodes  # type: ignore[union-attr]
              if n.op in ("Conv", "Gemm")}
    assert shapes["bn"][0] == shapes["c2"][0] == len(kept["residual"]) == 8
    assert shapes["dw"] == (8, 1, 3, 3)
    assert shapes["mix"] == (16, 16, 3, 3)  # 32 -> 16 outputs, concat of 8 + 8 inputs
    assert shapes["fc2"] == (4, 16)


def test_sensitivity_allocation_prunes_unevenly_at_the_same_mean() -> None:
    _, g, ctx, _ = _setup()
    macs0 = sum(node_macs(n) for n in g.nodes)
    ctx = PassManager("prune{method=channel,sparsity=0.3,allocation=sensitivity}").run(g, ctx)
    rows = [r for r in ctx.report["compression"] if "alone_sqnr_db" in r]
    assert len(rows) == 4
    assert len({r.get("sparsity", 0.0) for r in rows}) > 1
    ratio = sum(node_macs(n) for n in g.nodes) / macs0
    assert 0.3 < ratio < 0.75


def test_activation_importance_and_channel_multiple() -> None:
    _, g, ctx, x = _setup()
    PassManager("prune{method=channel,sparsity=0.3,importance=activation,multiple=8}"
                ).run(g, ctx)
    for n in g.nodes:
        if n.op == "Conv" and n.src in ("c1", "mix"):
            assert n.input(1).const.shape[0] % 8 == 0  # type: ignore[union-attr]
    assert np.isfinite(_out(g, x)).all()


def test_the_passes_run_from_edgec_opt(tmp_path: Path) -> None:
    from compiler.frontends import save_onnx
    from compiler.ir import load_ir
    from tools.cli import main

    _, g, _, _ = _setup()
    save_onnx(g, tmp_path / "cnn.onnx")
    out = tmp_path / "small.ir"
    code = main(["opt", str(tmp_path / "cnn.onnx"), "-p",
                 "canonicalize,prune{method=channel,sparsity=0.5},lowrank{rank=4,force=true}",
                 "-o", str(out)])
    assert code == 0
    small = load_ir(out)
    assert sum(node_macs(n) for n in small.nodes) < 0.5 * sum(node_macs(n) for n in g.nodes)


def test_sensitivity_allocation_prunes_the_robust_groups_harder() -> None:
    _, g, ctx, _ = _setup()
    ctx = PassManager("prune{method=channel,sparsity=0.3,allocation=sensitivity}").run(g, ctx)
    rows = [r for r in ctx.report["compression"] if "alone_sqnr_db" in r]
    by_sens = sorted(rows, key=lambda r: r["alone_sqnr_db"] or 999.0)
    # the group that alone costs the most (lowest SQNR) keeps at least as many of its
    # channels, proportionally, as the one that costs the least
    assert by_sens[0].get("sparsity", 0.0) <= by_sens[-1].get("sparsity", 0.0)
    assert all("sensitivity-allocated" in r["reason"] for r in rows if r["action"] == "pruned")


def test_unstructured_rows_carry_their_measured_error() -> None:
    _, g, ctx, _ = _setup()
    ctx = PassManager("prune{method=magnitude,sparsity=0.5}").run(g, ctx)
    rows = [r for r in ctx.report["compression"] if r["action"] == "sparsified"]
    assert rows and all(0 < r["weight_error"] < 1 for r in rows)
    assert all(r["model_sqnr_db"] is not None and r["model_sqnr_db"] > 0 for r in rows)

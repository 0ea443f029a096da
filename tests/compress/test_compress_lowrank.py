"""``lowrank``: exact at full rank (every layer kind and conv mode, plain and whitened), the
cost model's veto with its reason, rank criteria, refusals, and ``compression_pipeline``."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from compiler.errors import PassError, PipelineError
from compiler.frontends import load_torch
from compiler.ir import Graph
from compiler.passes import PassContext, PassManager
from compiler.reference import run_reference
from passes.lowrank import CompressionError, compression_pipeline, with_compression
from targets.cost import node_macs


class Net(nn.Module):
    """Convs (3x3 strided, 3x3, 1x1), a Linear pair and a MatMul with a constant weight."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(3, 16, 3, padding=1, stride=2)
        self.c2 = nn.Conv2d(16, 24, (3, 5), padding=(1, 2), dilation=1)
        self.c3 = nn.Conv2d(24, 24, 1)
        self.fc = nn.Linear(24, 32)
        self.w = nn.Parameter(torch.randn(32, 8))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.c1(x))
        y = torch.relu(self.c2(y))
        y = self.c3(y).mean((2, 3))
        return torch.relu(self.fc(y)).unsqueeze(1) @ self.w


def _setup() -> tuple[Graph, PassContext, np.ndarray]:
    torch.manual_seed(0)
    model = Net().eval()
    x = torch.randn(2, 3, 16, 16)
    g = load_torch(model, (x,))
    PassManager("canonicalize,fuse").run(g)
    gen = np.random.default_rng(1)
    ctx = PassContext(calibration=[{g.inputs[0].name: gen.normal(size=(2, 3, 16, 16))
                                    .astype(np.float32)} for _ in range(3)])
    return g, ctx, x.numpy()


def _out(g: Graph, x: np.ndarray) -> np.ndarray:
    return next(iter(run_reference(g, [x], qdq=False).values()))


@pytest.mark.parametrize("opts", ["", ",conv=spatial", ",conv=channel", ",whiten=true",
                                  ",whiten=true,conv=spatial"])
def test_full_rank_is_exact(opts: str) -> None:
    g, ctx, x = _setup()
    want = _out(g, x)
    ctx = PassManager(f"lowrank{{energy=1.0,force=true{opts}}}").run(g, ctx)
    rows = [r for r in ctx.report["compression"] if r["action"] == "factorized"]
    assert len(rows) == 5  # c1, c2, c3, fc, and the MatMul
    assert all(r["rank"] == r["full_rank"] for r in rows)
    assert sum(n.meta.get("pass") == "lowrank" for n in g.nodes) == 10
    np.testing.assert_allclose(_out(g, x), want, rtol=1e-4, atol=1e-4)


def test_cost_model_leaves_small_layers_alone_and_says_why() -> None:
    g, ctx, _ = _setup()
    before = str(g)
    ctx = PassManager("lowrank{ratio=0.3}").run(g, ctx)
    assert str(g) == before
    rows = ctx.report["compression"]
    assert rows and all(r["action"] == "skipped" for r in rows)
    assert all("cost model (htp-v75" in r["reason"] for r in rows)


def test_ratio_bounds_the_macs_of_each_factorized_layer() -> None:
    g, ctx, _ = _setup()
    ctx = PassManager("lowrank{ratio=0.5,force=true}").run(g, ctx)
    for r in ctx.report["compression"]:
        assert r["macs_after"] <= 0.5 * r["macs_before"] or r["rank"] == 1
        assert r["layer_sqnr_db"] is None or r["layer_sqnr_db"] > 0


def test_whitening_lowers_the_output_error_at_the_same_rank() -> None:
    errs = {}
    for whiten in ("false", "true"):
        g, ctx, _ = _setup()
        ctx = PassManager(f"lowrank{{rank=4,force=true,whiten={whiten},layers=linear}}"
                          ).run(g, ctx)
        (row,) = [r for r in ctx.report["compression"] if r["action"] == "factorized"]
        errs[whiten] = row["layer_sqnr_db"]
    assert errs["true"] > errs["false"]


@pytest.mark.parametrize("pipe", ["lowrank{rank=1000,force=true}", "lowrank{rank=0}"])
def test_impossible_rank_is_refused_naming_the_node(pipe: str) -> None:
    g, ctx, _ = _setup()
    with pytest.raises(PassError) as e:
        PassManager(pipe).run(g, ctx)
    assert isinstance(e.value.__cause__, CompressionError)
    assert "rank" in str(e.value)
    if "1000" in pipe:
        # c1 (%conv2d): channel SVD allows 1..min(Cin*kh*kw, Cout) = 1..16
        assert "Conv (%conv2d)" in str(e.value) and "1..16" in str(e.value)


def test_whiten_without_calibration_is_refused() -> None:
    g, _, _ = _setup()
    with pytest.raises(PassError) as e:
        PassManager("lowrank{whiten=true}").run(g, PassContext())
    assert isinstance(e.value.__cause__, CompressionError)


def test_macs_drop_where_factorized() -> None:
    g, ctx, _ = _setup()
    before = sum(node_macs(n) for n in g.nodes)
    PassManager("lowrank{ratio=0.3,force=true,layers=conv2d_1}").run(g, ctx)
    assert sum(node_macs(n) for n in g.nodes) < before


def test_compression_pipeline() -> None:
    spec = "lowrank{energy=0.95},prune{method=channel,sparsity=0.3}"
    assert compression_pipeline(spec) == spec
    assert compression_pipeline("auto{max_sqnr_drop=2}") == "select-compression{max_sqnr_drop=2.0}"
    assert compression_pipeline("") == ""
    with pytest.raises(PipelineError, match="not a compression pass"):
        compression_pipeline("fuse")


def test_with_compression_goes_before_quantization() -> None:
    from targets.hexagon_htp.target import default_pipeline

    pipe = with_compression(default_pipeline("w8a16"), "prune{method=channel,sparsity=0.3}")
    assert pipe.startswith("canonicalize,fuse,")
    assert ",prune{method=channel,sparsity=0.3},calibrate" in pipe
    assert pipe.endswith(",quantize")  # scheme=w8a16 is quantize's default
    assert with_compression("canonicalize", "auto") == "canonicalize,select-compression"
    assert with_compression("canonicalize", "") == "canonicalize"


def test_explicit_rank_uses_the_conv_mode_it_fits() -> None:
    g, ctx, x = _setup()
    want = _out(g, x)
    # c1: spatial SVD allows ranks up to 9, channel SVD up to 16
    ctx = PassManager("lowrank{rank=12,force=true,layers=conv2d}").run(g, ctx)
    (row,) = ctx.report["compression"]
    assert row["mode"] == "channel" and row["rank"] == 12
    assert np.isfinite(_out(g, x)).all() and _out(g, x).shape == want.shape


def test_energy_and_error_budget_bound_every_layer() -> None:
    g, ctx, _ = _setup()
    ctx = PassManager("lowrank{energy=0.9,force=true}").run(g, ctx)
    rows = [r for r in ctx.report["compression"] if r["action"] == "factorized"]
    assert len(rows) == 5 and all(r["energy_kept"] >= 0.9 - 1e-6 for r in rows)
    assert any(r["rank"] < r["full_rank"] for r in rows)
    g, ctx, _ = _setup()
    ctx = PassManager("lowrank{max_error=0.3,force=true}").run(g, ctx)
    rows = [r for r in ctx.report["compression"] if r["action"] == "factorized"]
    assert len(rows) == 5 and all(r["weight_error"] <= 0.3 + 1e-6 for r in rows)
    assert any(r["rank"] < r["full_rank"] for r in rows)
    # a tighter budget never keeps a lower rank
    g2, ctx2, _ = _setup()
    ctx2 = PassManager("lowrank{max_error=0.1,force=true}").run(g2, ctx2)
    tight = {r["layer"]: r["rank"] for r in ctx2.report["compression"]}
    assert all(tight[r["layer"]] >= r["rank"] for r in rows)


@pytest.mark.parametrize("pipe", ["lowrank{layers=conv2d_9}", "lowrank{ranks=linar:4}"])
def test_unknown_layer_is_refused(pipe: str) -> None:
    g, ctx, _ = _setup()
    before = str(g)
    with pytest.raises(PassError) as e:
        PassManager(pipe).run(g, ctx)
    assert isinstance(e.value.__cause__, CompressionError)
    assert "no layer named" in str(e.value) and "refused" in str(e.value)
    assert str(g) == before
    if "linar" in pipe:
        assert "did you mean 'linear'" in str(e.value)

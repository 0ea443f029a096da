"""``equalize`` (cross-layer equalization) and ``smooth-quant``: exact in float on real zoo
graphs, and each does what it is for on a model built to need it."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from compiler.errors import PassError
from compiler.frontends import load_torch
from compiler.ir import Graph
from compiler.numerics import sqnr_db
from compiler.passes import PassContext, PassManager
from compiler.reference import run_reference
from passes.quant.equalize import equalization_pairs
from passes.quant.smooth import smoothing_sites
from targets.hexagon_htp.rules import HTP_QUANT_RULES
from tests.models.zoo import build, calibration_inputs


def _graph(name: str) -> tuple[Graph, list[tuple[torch.Tensor, ...]]]:
    model, ex = build(name)
    g = load_torch(model, ex)
    PassManager("canonicalize,fuse").run(g)
    return g, list(calibration_inputs(name, 4))


def _ctx(g: Graph, batches: list[tuple[torch.Tensor, ...]]) -> PassContext:
    ctx = PassContext()
    ctx.calibration = [{v.name: t.numpy() for v, t in zip(g.inputs, b)} for b in batches]
    ctx.options["quant_rules"] = HTP_QUANT_RULES
    return ctx


def _same(before: Graph, after: Graph, batches: list[tuple[torch.Tensor, ...]]) -> None:
    for b in batches:
        feed = [t.numpy() for t in b]
        want = run_reference(before, feed)
        got = run_reference(after, feed)
        for k in want:
            np.testing.assert_allclose(got[k], want[k], rtol=1e-4, atol=1e-4)


def test_equalize_is_exact_on_resnet_and_balances_ranges() -> None:
    g, batches = _graph("resnet")
    before = g.copy()
    assert len(equalization_pairs(g)) == 2  # conv1 -> relu -> conv2 in each basic block
    ctx = PassManager("equalize").run(g, _ctx(g, batches))
    st = ctx.history[-1].result.stats
    assert st["range-use-after"] > st["range-use-before"]
    _same(before, g, batches)


def test_equalize_skips_relu6_and_shared_weights() -> None:
    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = nn.Conv2d(3, 8, 3)
            self.b = nn.Conv2d(8, 8, 1)
            self.c = nn.Conv2d(8, 4, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.c(torch.clamp(self.b(torch.relu(self.a(x))), 0, 6))

    g = load_torch(Net().eval(), (torch.randn(1, 3, 8, 8),))
    PassManager("canonicalize,fuse").run(g)
    pairs = [(a.src, b.src) for a, b in equalization_pairs(g)]
    assert pairs == [("a", "b")]  # b -> clip(0, 6) -> c is not positively homogeneous


@pytest.mark.parametrize("name", ["vit", "llama"])
def test_smooth_quant_is_exact_on_transformers(name: str) -> None:
    g, batches = _graph(name)
    before = g.copy()
    sites = smoothing_sites(g)
    assert sites, "pre-norm transformers have norms feeding only linears"
    ctx = _ctx(g, batches)
    PassManager("smooth-quant").run(g, ctx)
    assert len(ctx.report["smoothing"]["sites"]) == len(sites)
    _same(before, g, batches)


class _Outliers(nn.Module):
    """A LayerNorm whose scale plants two huge channels, then a linear layer."""

    def __init__(self) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(3)
        self.norm = nn.LayerNorm(32)
        self.fc = nn.Linear(32, 16)
        with torch.no_grad():
            self.norm.weight.copy_(torch.ones(32))
            self.norm.weight[[3, 17]] = 40.0
            self.fc.weight.copy_(torch.randn(16, 32, generator=gen) * 0.2)
            self.fc.weight[:, [3, 17]] *= 0.01  # the output comes from the ordinary channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.norm(x))


def test_smooth_quant_flattens_planted_outliers_and_helps_w8a8() -> None:
    model = _Outliers().eval()
    gen = torch.Generator().manual_seed(4)
    batches = [(torch.randn(2, 8, 32, generator=gen),) for _ in range(6)]
    g0 = load_torch(model, batches[0])
    PassManager("canonicalize,fuse").run(g0)

    def sqnr(pre: str) -> tuple[float, PassContext]:
        g = g0.copy()
        ctx = _ctx(g, batches[:4])
        ctx.options["quant_overrides"] = {"op:LayerNormalization": "w8a8"}
        PassManager(pre + "calibrate,quantize{scheme=w8a8,auto=false}").run(g, ctx)
        vals = []
        for (x,) in batches[4:]:
            with torch.no_grad():
                want = model(x).numpy()
            got = next(iter(run_reference(g, [x.numpy()]).values()))
            vals.append(sqnr_db(want, got))
        return min(vals), ctx

    plain, _ = sqnr("")
    smooth, ctx = sqnr("smooth-quant{alpha=0.5},")
    site = ctx.report["smoothing"]["sites"][0]
    assert site["outlier_ratio_before"] > 20 and site["outlier_ratio_after"] < 8
    assert smooth > plain + 6, (plain, smooth)


def test_smooth_quant_needs_calibration_and_a_sane_alpha() -> None:
    g, _ = _graph("vit")
    with pytest.raises(PassError, match="needs calibration batches"):
        PassManager("smooth-quant").run(g, PassContext())
    with pytest.raises(Exception, match="alpha"):
        PassManager("smooth-quant{alpha=1.5}").run(g, PassContext())

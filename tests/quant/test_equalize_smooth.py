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
    with pytest.raises(Exception, match="min_ratio"):
        PassManager("smooth-quant{min_ratio=-1}").run(g, PassContext())


class _PostNorm(nn.Module):
    """BERT's post-norm FFN half: ``norm2(h + fc2(gelu(fc1(h))))`` with ``h = norm1(x)``; the
    residual reads ``h`` too. ``norm1``'s scale plants two large channels (as BERT's norms
    carry, 20x their median in all-MiniLM-L6-v2)."""

    def __init__(self) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(5)
        self.norm1 = nn.LayerNorm(32)
        self.fc1 = nn.Linear(32, 64)
        self.fc2 = nn.Linear(64, 32)
        self.norm2 = nn.LayerNorm(32)
        with torch.no_grad():
            self.norm1.weight.copy_(torch.ones(32))
            self.norm1.weight[[3, 17]] = 25.0
            self.fc1.weight.copy_(torch.randn(64, 32, generator=gen) * 0.2)
            self.fc1.weight[:, [3, 17]] *= 0.02

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm1(x)
        return self.norm2(h + self.fc2(nn.functional.gelu(self.fc1(h))))


def _post_norm() -> tuple[nn.Module, Graph, list[tuple[torch.Tensor, ...]]]:
    model = _PostNorm().eval()
    gen = torch.Generator().manual_seed(6)
    batches = [(torch.randn(1, 16, 32, generator=gen),) for _ in range(8)]
    g = load_torch(model, batches[0])
    PassManager("canonicalize,fuse").run(g)
    return model, g, batches


def test_smooth_quant_split_keeps_the_norm_output_and_is_exact_in_float() -> None:
    """The fold cannot apply (the residual reads the norm's output); the split gives fc1 a
    scaled copy and leaves the output the residual reads alone."""
    _, g, batches = _post_norm()
    norm1 = next(n for n in g.nodes if n.op == "LayerNormalization")
    assert norm1 not in {s.norm for s in smoothing_sites(g)}
    before = g.copy()
    ctx = _ctx(g, batches[:4])
    PassManager("smooth-quant{split=true}").run(g, ctx)
    sites = ctx.report["smoothing"]["sites"]
    assert [s["split"] for s in sites] == [True] and sites[0]["outlier_ratio_before"] > 10
    out = norm1.outputs[0]
    readers = {u.op for u in out.consumers()}
    assert readers == {"Add", "Mul"}, readers  # the residual, and the scaled copy
    mul = next(u for u in out.consumers() if u.op == "Mul")
    assert {u.op for u in mul.outputs[0].consumers()} <= {"Gemm", "MatMul", "Reshape"}
    _same(before, g, batches)


def test_smooth_quant_split_lets_linear_layers_read_8_bits_near_16() -> None:
    """Under w8a8 the auto policy keeps the norm's output at 16 bits; with the split, fc1
    reads an 8-bit copy, the Mul's constant survives quantization exactly, and the result is
    far better than fc1 reading the unsmoothed output at 8 bits."""
    model, g0, batches = _post_norm()

    def build(pre: str, quant: str) -> tuple[float, Graph]:
        g = g0.copy()
        ctx = _ctx(g, batches[:4])
        PassManager(f"{pre}calibrate,{quant}").run(g, ctx)
        vals = []
        for (x,) in batches[4:]:
            with torch.no_grad():
                want = model(x).numpy()
            vals.append(sqnr_db(want, next(iter(run_reference(g, [x.numpy()]).values()))))
        return min(vals), g

    eight, _ = build("", "quantize{scheme=w8a8,auto_skip=norm-output}")
    sixteen, _ = build("", "quantize{scheme=w8a8}")
    split, g = build("smooth-quant{split=true},", "quantize{scheme=w8a8}")
    mul = next(n for n in g.nodes if n.op == "Mul" and n.inputs[1] is not None
               and n.inputs[1].is_const)
    assert mul.outputs[0].encoding.bits == 8 and mul.inputs[0].encoding.bits == 16
    inv = mul.inputs[1]
    enc = inv.encoding
    q = np.round(inv.const / enc.scale) + enc.zero_point
    np.testing.assert_allclose((q - enc.zero_point) * enc.scale, inv.const, rtol=1e-6)
    assert split > eight + 6, (eight, split, sixteen)
    assert split > sixteen - 3, (eight, split, sixteen)


def test_smooth_quant_min_ratio_leaves_flat_norms_alone() -> None:
    _, g, batches = _post_norm()
    before = len(g.nodes)
    ctx = _ctx(g, batches[:4])
    res = PassManager("smooth-quant{split=true,min_ratio=1000}").run(g, ctx)
    assert len(g.nodes) == before and not ctx.report["smoothing"]["sites"]
    assert "min_ratio" in ctx.report["smoothing"]["skipped"][0]["reason"]
    del res


class _SharedReshape(nn.Module):
    """A norm's output read by a linear layer directly, and through a Reshape that feeds a
    linear layer and a ReLU: only the direct reader may take the scaled copy."""

    def __init__(self) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(32)
        self.fc = nn.Linear(32, 16)
        self.fc2 = nn.Linear(32, 16)
        with torch.no_grad():
            self.norm.weight[[3, 17]] = 25.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm(x)
        r = h.reshape(16, 32)
        return self.fc(r) + torch.relu(r)[:, :16] + self.fc2(h).reshape(16, 16)


def test_smooth_quant_split_rewires_only_paths_that_end_in_linear_layers() -> None:
    gen = torch.Generator().manual_seed(7)
    batches = [(torch.randn(1, 16, 32, generator=gen),) for _ in range(4)]
    g = load_torch(_SharedReshape().eval(), batches[0])
    PassManager("canonicalize,fuse").run(g)
    before = g.copy()
    ctx = _ctx(g, batches)
    PassManager("smooth-quant{split=true}").run(g, ctx)
    assert [s["linears"] for s in ctx.report["smoothing"]["sites"]] == [1]
    _same(before, g, batches)

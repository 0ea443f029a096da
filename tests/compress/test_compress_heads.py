"""``prune{method=head}``: attention heads found by the Split/Reshape/Transpose structure, whole
heads dropped from the fused QKV projection and the output projection, exact against a
head-masked reference; refusals, blocked units with their reason, separate Q/K/V projections.
(The trained transformer's accuracy after head pruning: ``test_compress_accuracy.py``.)"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from compiler.errors import CompressionError, PassError
from compiler.frontends import load_torch
from compiler.ir import Graph
from compiler.passes import PassContext, PassManager
from compiler.reference import run_reference
from passes.prune.heads import find_attention
from targets.cost import node_macs
from tests.compress.trainable import Transformer


def _setup(model: nn.Module, shape: tuple[int, ...] = (2, 16, 16)
           ) -> tuple[Graph, PassContext, np.ndarray]:
    x = torch.randn(*shape)
    g = load_torch(model, (x,))
    PassManager("canonicalize,fuse").run(g)
    gen = np.random.default_rng(5)
    ctx = PassContext(calibration=[{g.inputs[0].name: gen.normal(size=shape).astype(np.float32)}
                                   for _ in range(3)])
    return g, ctx, x.numpy()


def _out(g: Graph, x: np.ndarray) -> np.ndarray:
    return next(iter(run_reference(g, [x], qdq=False).values()))


def _macs(g: Graph) -> int:
    return sum(node_macs(n) for n in g.nodes)


@pytest.mark.parametrize("importance", ["l1", "l2", "activation"])
def test_head_pruning_equals_the_masked_reference(importance: str) -> None:
    torch.manual_seed(0)
    model = Transformer().eval()
    g, ctx, x = _setup(model)
    units = find_attention(g)
    assert [u.heads for u in units] == [4, 4] and all(u.blocked is None for u in units)
    assert [u.name for u in units] == ["blocks.0", "blocks.1"]
    m0 = _macs(g)
    ctx = PassManager(f"prune{{method=head,sparsity=0.5,importance={importance}}}").run(g, ctx)
    g.verify()
    rows = [r for r in ctx.report["compression"] if r["action"] == "pruned"]
    assert [(r["layer"], r["heads_before"], r["heads_after"]) for r in rows] == \
        [("blocks.0", 4, 2), ("blocks.1", 4, 2)]
    assert all(r["macs_after"] < r["macs_before"] for r in rows)
    assert all(np.isfinite(r["alone_sqnr_db"]) and r["model_sqnr_db"] is not None
               for r in rows)
    for r, block in zip(rows, model.blocks):
        mask = torch.zeros(4)
        mask[r["kept"]] = 1
        block.head_mask = mask
    with torch.no_grad():
        want = model(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(_out(g, x), want, rtol=1e-4, atol=1e-5)
    # the tensors really shrank: fused QKV 96 -> 48 rows, output projection 32 -> 16 inputs
    shapes = {n.src: n.input(1).const.shape for n in g.nodes  # type: ignore[union-attr]
              if n.op == "Gemm"}
    assert shapes["blocks.0.qkv"] == (48, 32) and shapes["blocks.0.proj"] == (32, 16)
    assert all(n.outputs[0].shape[1] == 2 for n in g.nodes if n.op == "Softmax")
    assert _macs(g) < m0


def test_activation_importance_keeps_the_heads_that_carry_the_output() -> None:
    torch.manual_seed(0)
    model = Transformer().eval()
    with torch.no_grad():  # head 3 of block 0 contributes nothing to the output projection
        model.blocks[0].proj.weight[:, 24:32] = 0
    g, ctx, _ = _setup(model)
    ctx = PassManager("prune{method=head,sparsity=0.25,importance=activation,"
                      "layers=blocks.0}").run(g, ctx)
    (row,) = [r for r in ctx.report["compression"] if r["action"] == "pruned"]
    assert row["kept"] == [0, 1, 2]
    assert row["alone_sqnr_db"] is None or row["alone_sqnr_db"] > 100  # exact: head 3 was dead


def test_zero_changes_nothing_and_full_is_refused() -> None:
    torch.manual_seed(0)
    g, ctx, _ = _setup(Transformer().eval())
    before = str(g)
    ctx = PassManager("prune{method=head,sparsity=0.0}").run(g, ctx)
    assert str(g) == before and not ctx.history[-1].result.modified
    with pytest.raises(PassError) as e:
        PassManager("prune{method=head,sparsity=1.0}").run(g, ctx)
    assert isinstance(e.value.__cause__, CompressionError)
    assert "attention blocks.0" in str(e.value) and "refused" in str(e.value)


class SeparateQKV(nn.Module):
    """Separate Q/K/V projections, the scale applied to q, and a context that is also a graph
    output in the second block (which must be blocked, not pruned)."""

    def __init__(self, d: int = 24, heads: int = 3) -> None:
        super().__init__()
        self.h = heads
        self.q, self.k, self.v = nn.Linear(d, d), nn.Linear(d, d), nn.Linear(d, d)
        self.o = nn.Linear(d, d)
        self.q2, self.k2, self.v2 = nn.Linear(d, d), nn.Linear(d, d), nn.Linear(d, d)

    def _split(self, t: torch.Tensor) -> torch.Tensor:
        b, n, d = t.shape
        return t.reshape(b, n, self.h, d // self.h).transpose(1, 2)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        b, n, d = x.shape
        q = self._split(self.q(x)) * (d // self.h) ** -0.5
        att = F.softmax(q @ self._split(self.k(x)).transpose(-1, -2), dim=-1)
        y = x + self.o((att @ self._split(self.v(x))).transpose(1, 2).reshape(b, n, d))
        att2 = F.softmax(self._split(self.q2(y)) @ self._split(self.k2(y)).transpose(-1, -2),
                         dim=-1)
        return y, att2 @ self._split(self.v2(y))


def test_separate_projections_and_a_blocked_unit() -> None:
    torch.manual_seed(0)
    model = SeparateQKV().eval()
    g, ctx, x = _setup(model, (2, 8, 24))
    units = find_attention(g)
    assert len(units) == 2
    assert units[0].blocked is None and len(units[0].projections()) == 3
    assert units[1].blocked is not None
    want = _out(g, x)
    ctx = PassManager("prune{method=head,sparsity=0.34}").run(g, ctx)
    g.verify()
    rows = ctx.report["compression"]
    pruned = [r for r in rows if r["action"] == "pruned"]
    skipped = [r for r in rows if r["action"] == "skipped"]
    assert len(pruned) == 1 and pruned[0]["heads_after"] == 2
    assert len(skipped) == 1 and skipped[0]["reason"]
    got = _out(g, x)
    assert got.shape == want.shape and np.isfinite(got).all()
    # the dropped head's share of the first output is gone, nothing else changed shape
    assert {n.src: n.input(1).const.shape for n in g.nodes  # type: ignore[union-attr]
            if n.op == "Gemm"}["q"] == (16, 24)

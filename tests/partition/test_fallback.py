"""``fallback``: one NPU with the CPU as a fallback, placed by cost but conservatively: small
NPU islands between CPU fallbacks move to the CPU when that is predicted faster by a margin;
the biggest NPU partition stays, and a model the NPU fully supports is not touched."""

from __future__ import annotations

import pytest

import passes.partition.placement as placement_mod
from compiler.frontends import load_torch
from compiler.ir import Graph
from compiler.passes import PassContext, PassManager
from passes.partition import place, placement_report
from tests.models.zoo import ZOO
from tests.partition.models import island
from tests.partition.test_placement import FLOAT, graph

TARGETS = ["htp-v75", "cpu"]


def _island() -> Graph:
    m, ex = island()
    g = load_torch(m, ex)
    PassManager(FLOAT).run(g, PassContext(target="htp-v75"))
    return g


def test_a_small_npu_island_between_fallbacks_moves_to_the_cpu() -> None:
    g = _island()
    pl, greedy = place(g, TARGETS, "fallback", precision="w8a16", assume_quantized=True)
    assert [p.target for p in greedy.partitions] == ["htp-v75", "cpu", "htp-v75", "cpu",
                                                      "htp-v75"]
    assert [p.target for p in pl.partitions] == ["htp-v75", "cpu", "htp-v75"]
    margin = max(placement_mod.FALLBACK_MARGIN_S,
                 placement_mod.FALLBACK_MARGIN_FRAC * greedy.total_s)
    assert pl.total_s < greedy.total_s - margin
    rep = placement_report(pl, greedy)
    (mul,) = [n for n in rep["nodes"] if n["op"] == "Mul"]
    assert (mul["target"], mul["reason_code"]) == ("cpu", "cost")
    assert mul["reason"].startswith("an NPU island moved to cpu")
    # the convolutions stay where the capability placement put them
    assert all(n["target"] == "htp-v75" and n["reason_code"] == "capability"
               for n in rep["nodes"] if n["op"] == "Conv")
    assert g.nodes and next(n for n in g.nodes if n.op == "Mul").placement == "cpu"


def test_the_margin_keeps_the_capability_placement() -> None:
    g = _island()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(placement_mod, "FALLBACK_MARGIN_S", 1.0)  # a second: nothing clears it
        pl, greedy = place(g, TARGETS, "fallback", precision="w8a16", assume_quantized=True,
                           write=False)
    assert pl.assign == greedy.assign and len(pl.partitions) == 5


def test_an_island_pinned_to_the_npu_stays() -> None:
    g = _island()
    pl, _ = place(g, TARGETS, "fallback", pins={"op:Mul": "htp"}, precision="w8a16",
                  assume_quantized=True)
    assert len(pl.partitions) == 5
    mul = next(n for n in g.nodes if n.op == "Mul")
    assert mul.placement == "htp" and mul.meta["placement_reason"].startswith("user pin")


def test_comparable_halves_do_not_move() -> None:
    """At w8a8 the cost-driven policy puts this small model wholly on the CPU; the fallback
    policy moves only the one-node island, not the tail convolutions the user asked the NPU
    for."""
    g = _island()
    pl, _ = place(g, TARGETS, "fallback", precision="w8a8", assume_quantized=True, write=False)
    cost, _ = place(g, TARGETS, "cost", precision="w8a8", assume_quantized=True, write=False)
    assert [p.target for p in pl.partitions] == ["htp-v75", "cpu", "htp-v75"]
    assert [p.target for p in cost.partitions] == ["cpu"]


def test_deterministic() -> None:
    a, _ = place(_island(), TARGETS, "fallback", precision="w8a16", assume_quantized=True)
    b, _ = place(_island(), TARGETS, "fallback", precision="w8a16", assume_quantized=True)
    assert a.assign == b.assign and a.total_s == b.total_s


@pytest.mark.parametrize("exporter", ["fx", "onnx"])
@pytest.mark.parametrize("name", sorted(ZOO))
def test_zoo_never_slower_and_full_support_untouched(name: str, exporter: str) -> None:
    g = graph(name, exporter=exporter)
    for prec in ("w8a8", "w8a16"):
        pl, greedy = place(g, TARGETS, "fallback", precision=prec, assume_quantized=True,
                           write=False)
        assert pl.total_s <= greedy.total_s
        if all(t == "htp-v75" for t in greedy.assign):
            assert pl.assign == greedy.assign and len(pl.partitions) == 1
        # the anchor, the biggest NPU partition of the capability placement, stays on the NPU
        npu = [p for p in greedy.partitions if p.target == "htp-v75"]
        anchor = max(npu, key=lambda p: (p.compute_s, -p.index))
        assert all(pl.assign[i] == "htp-v75" for i in anchor.items)


def test_the_partition_pass_takes_the_policy() -> None:
    g = _island()
    ctx = PassContext(target="htp-v75")
    PassManager("partition{targets=htp-v75|cpu,policy=fallback,precision=w8a16,"
                "assume_quantized=true}").run(g, ctx)
    rep = ctx.report["placement"]
    assert rep["policy"] == "fallback" and rep["num_partitions"] == 3
    assert rep["greedy"]["partitions"] == 5

"""Property tests of the placement on generated DAGs: every node is placed exactly once, the
partitions are acyclic and come in a dependency order, capabilities, pins and units hold,
cost-driven placement is never predicted slower than greedy, and the result is deterministic.
"""

from __future__ import annotations

import networkx as nx
import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from compiler.ir import DType, Graph, TensorType
from passes.partition import place, placement_report
from targets.hexagon_htp.partition import htp_runs

SETTINGS = settings(max_examples=60, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow])

_OPS = ["Conv", "Relu", "Erf", "Add", "Sigmoid", "Mul", "Conv", "Einsum"]


@st.composite
def dags(draw: st.DrawFn) -> tuple[Graph, dict[str, str]]:
    """A random DAG of convolutions and element-wise ops (``Erf`` and ``Einsum`` have no HTP
    kernel), some 2-node units, and random CPU pins."""
    # tiny tensors are cheapest on the CPU alone; 128 channels at 32x32 make convolutions
    # worth an NPU launch, so both kinds of placement occur
    c = draw(st.sampled_from([4, 128, 128]))
    t = TensorType(DType.F32, (1, c, 32, 32))
    g = Graph("rand", {"": 17})
    values = [g.add_input("x", t)]
    producers: list[int | None] = [None]
    n = draw(st.integers(1, 14))
    pins: dict[str, str] = {}
    for i in range(n):
        op = draw(st.sampled_from(_OPS))
        a = draw(st.integers(0, len(values) - 1))
        if op == "Conv":
            w = g.add_const(f"w{i}", np.full((c, c, 1, 1), 0.01, np.float32))
            ins = [values[a], w]
            attrs: dict = {}
        elif op in ("Add", "Mul"):
            ins = [values[a], values[draw(st.integers(0, len(values) - 1))]]
            attrs = {}
        elif op == "Einsum":
            ins = [values[a]]
            attrs = {"equation": "nchw->nchw"}
        else:
            ins = [values[a]]
            attrs = {}
        node = g.make_node(op, ins, attrs, types=[t], name=f"n{i}",
                           meta={"src": f"layers.{i % 3}.m{i}"})
        p = producers[a]
        if p is not None and draw(st.integers(0, 4)) == 0:  # a unit along an edge
            unit = f"u:{i}"
            prod = next(x for x in g.nodes if x.name == f"n{p}")
            if "unit" not in prod.meta:
                prod.meta["unit"] = unit
                node.meta["unit"] = unit
        if draw(st.integers(0, 5)) == 0:
            pins[f"node:n{i}"] = "cpu"
        values.append(node.outputs[0])
        producers.append(i)
    g.outputs = [v for v in values[1:] if not v.uses] or [values[-1]]
    return g, pins


@SETTINGS
@given(dags(), st.sampled_from(["cost", "greedy"]))
def test_generated_dags_are_placed_once_in_acyclic_partitions(
        case: tuple[Graph, dict[str, str]], policy: str) -> None:
    g, pins = case
    pl, base = place(g, ["htp-v75", "cpu"], policy,  # type: ignore[arg-type]
                     pins=pins, precision="w8a16", assume_quantized=True)
    problem = pl.problem
    # every node exactly once
    placed = [name for p in pl.partitions for i in p.items for name in problem.items[i].names]
    assert sorted(placed) == sorted(n.name for n in g.nodes)
    assert len(placed) == len(set(placed))
    # partitions acyclic, listed in a dependency order
    part_of = {name: p.index for p in pl.partitions for i in p.items
               for name in problem.items[i].names}
    q: nx.DiGraph = nx.DiGraph()
    q.add_nodes_from(range(len(pl.partitions)))
    for n in g.nodes:
        for v in n.inputs:
            if v is not None and v.producer is not None:
                a, b = part_of[v.producer.name], part_of[n.name]
                assert a <= b
                if a != b:
                    q.add_edge(a, b)
    assert nx.is_directed_acyclic_graph(q)
    # capabilities, pins, units
    for n in g.nodes:
        tgt = pl.target_of()[n.name]
        assert n.placement == tgt.split("-")[0]
        if n.op in ("Erf", "Einsum"):
            assert tgt == "cpu"
        if f"node:{n.name}" in pins:
            assert tgt == "cpu"
    units: dict[str, set[str]] = {}
    for n in g.nodes:
        if isinstance(n.meta.get("unit"), str):
            units.setdefault(n.meta["unit"], set()).add(str(n.placement))
    assert all(len(s) == 1 for s in units.values())
    assert pl.total_s <= base.total_s + 1e-12
    rep = placement_report(pl, base)
    assert sum(p["nodes"] for p in rep["partitions"]) == len(g.nodes)
    # deterministic
    again, _ = place(g, ["htp-v75", "cpu"], policy,  # type: ignore[arg-type]
                     pins=pins, precision="w8a16", assume_quantized=True, write=False)
    assert again.assign == pl.assign
    # the emitter's contract: reordered by partition, the HTP runs between CPU nodes are
    # unions of whole HTP partitions
    from targets.hexagon_htp.emit import _apply_placement

    parts = [(p.target.split("-")[0], [nm for i in p.items for nm in problem.items[i].names])
             for p in pl.partitions]
    cpu = _apply_placement(g, parts)
    g.verify()
    for run in htp_runs(g, cpu):
        ks = {part_of[n.name] for n in run}
        assert all(pl.partitions[k].target == "htp-v75" for k in ks)
        assert sum(len(parts[k][1]) for k in ks) == len(run)

"""Placement reports: per node target, reason and predicted cost; per partition predicted
latency and transfer cost; the greedy baseline for comparison (JSON-ready)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from compiler.ir import Graph
from passes.partition.placement import Placement, Policy, build_problem, evaluate, family, solve

__all__ = ["place", "placement_report", "annotate", "reevaluate"]


def _us(s: float) -> float:
    return round(s * 1e6, 3)


def annotate(pl: Placement) -> None:
    """Write ``node.placement`` (the target family: ``htp``, ``cpu``, ``gpu``) and
    ``node.meta["placement_reason"]`` on every node of the placed graph; unnamed nodes get the
    name the report uses (the HTP emitter's rule: their first output's)."""
    for it in pl.problem.items:
        t = pl.assign[it.index]
        for n, name in zip(it.nodes, it.names):
            if not n.name:
                n.name = name
            n.placement = family(t)
            n.meta["placement_reason"] = pl.reason_of(it.index, name)[1]


def place(graph: Graph, targets: Sequence[str], policy: Policy = "cost", *,
          pins: Mapping[str, str] | None = None, precision: str | None = None,
          assume_quantized: bool = False, write: bool = True
          ) -> tuple[Placement, Placement]:
    """Place ``graph`` on ``targets`` by ``policy``; returns ``(placement, greedy baseline)``
    and, with ``write``, annotates the nodes (:func:`annotate`). See
    :func:`passes.partition.placement.build_problem` for the arguments and errors."""
    problem = build_problem(graph, targets, pins=pins, precision=precision,
                            assume_quantized=assume_quantized)
    result = solve(problem, policy)
    baseline = result if policy == "greedy" else solve(problem, "greedy")
    if write:
        annotate(result)
    return result, baseline


def placement_report(pl: Placement, baseline: Placement | None = None) -> dict[str, Any]:
    """The JSON-ready report of ``pl`` (and of the greedy ``baseline`` when given)."""
    problem = pl.problem
    part_of = pl.partition_of()
    nodes: list[dict[str, Any]] = []
    for it in problem.items:
        t = pl.assign[it.index]
        for k, (n, name) in enumerate(zip(it.nodes, it.names)):
            code, why = pl.reason_of(it.index, name)
            own = {o: (it.node_costs[o][k] if o in it.node_costs
                       else it.cost[o] / len(it.nodes)) for o in problem.targets}
            nodes.append({
                "node": name, "op": n.op, "src": str(n.meta.get("src", "")),
                "unit": it.unit, "target": t, "reason_code": code, "reason": why,
                "predicted_us": _us(own[t]),
                "costs_us": {o: _us(c) for o, c in own.items()},
                "partition": part_of[it.index],
            })
    parts = []
    for p in pl.partitions:
        first = problem.items[p.items[0]].names[0]
        last = problem.items[p.items[-1]].names[-1]
        parts.append({"index": p.index, "target": p.target,
                      "nodes": sum(len(problem.items[i].nodes) for i in p.items),
                      "first": first, "last": last, "predicted_us": _us(p.predicted_s),
                      "compute_us": _us(p.compute_s), "launch_us": _us(p.launch_s),
                      "transfer_us": _us(p.transfer_s), "transfer_bytes": p.transfer_bytes})
    counts = {t: sum(1 for n in nodes if n["target"] == t) for t in problem.targets}
    npu = [t for t in problem.targets if family(t) == "htp"]
    npu_parts = sum(1 for p in pl.partitions if family(p.target) == "htp")
    total_nodes = len(nodes)
    off_npu = total_nodes - sum(counts[t] for t in npu) if npu else 0
    out: dict[str, Any] = {
        "policy": pl.policy, "targets": list(problem.targets),
        "predicted_us": _us(pl.total_s), "nodes": nodes, "partitions": parts,
        "counts": counts, "num_partitions": len(parts),
        "npu_partitions": npu_parts,
        "fallback_pct": round(100.0 * off_npu / total_nodes, 2) if total_nodes else 0.0,
        "notes": list(problem.notes),
    }
    if baseline is not None:
        out["greedy"] = {"predicted_us": _us(baseline.total_s),
                         "partitions": len(baseline.partitions),
                         "npu_partitions": sum(1 for p in baseline.partitions
                                               if family(p.target) == "htp"),
                         "counts": {t: sum(len(problem.items[i].nodes)
                                           for i, a in enumerate(baseline.assign) if a == t)
                                    for t in problem.targets}}
        out["speedup_vs_greedy"] = (round(baseline.total_s / pl.total_s, 4)
                                    if pl.total_s > 0 else 1.0)
    return out


def reevaluate(pl: Placement, final: Mapping[str, str],
               why: Mapping[str, str] | None = None) -> Placement:
    """``pl``'s problem evaluated at the placement ``final`` (node name -> target family)
    actually emitted: the HTP emitter moves nodes whose context fails to finalize, and without
    an explicit placement the QNN EP itself decides. Items that moved get the reason ``why``
    gives for one of their nodes (else "moved by the emitter"); others keep ``pl``'s."""
    problem = pl.problem
    by_family = {family(t): t for t in problem.targets}
    assign = list(pl.assign)
    reasons = dict(pl.reasons)
    node_reasons = dict(pl.node_reasons)
    for it in problem.items:
        fams = {final[n] for n in it.names if n in final}
        fam = "cpu" if "cpu" in fams else (next(iter(fams)) if len(fams) == 1 else None)
        if fam == "cpu" and family(assign[it.index]) == "gpu":
            continue  # GPU partitions are emitted as plain ONNX, like the CPU's
        if fam in by_family and by_family[fam] != assign[it.index]:
            assign[it.index] = by_family[fam]
            text = next((why[n] for n in it.names if why and n in why),
                        f"moved to {by_family[fam]} by the emitter")
            code = "finalize-failed" if "finaliz" in text.lower() else "emitter"
            reasons[it.index] = (code, text)
            for n in it.names:
                node_reasons.pop(n, None)
    out = evaluate(problem, assign, pl.policy)
    out.reasons = reasons
    out.node_reasons = node_reasons
    return out

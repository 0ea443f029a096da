"""``partition``: give every node a target so that total predicted latency is lowest.

    partition{targets=htp-v75|cpu, policy=cost}     (or policy=greedy, policy=fallback)

Pins come from ``ctx.options["placement"]`` (``{"layers.0.*": "cpu", "op:Softmax": "htp"}``,
see :mod:`passes.partition.pins`). The pass writes ``node.placement`` (``htp``/``cpu``/``gpu``)
and ``node.meta["placement_reason"]`` on every node, and the placement report (per node and
per partition, with the greedy baseline) into ``ctx.report["placement"]``. It changes no
computation.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

from compiler.ir import Graph
from compiler.passes import Pass, PassContext, PassResult, option

__all__ = ["Partition"]


@dataclass(frozen=True)
class Partition(Pass):
    """Cost-driven (or greedy capability) placement over several targets."""

    name: ClassVar[str] = "partition"
    summary: ClassVar[str] = "Place nodes on targets by predicted latency, transfers included"
    targets: tuple[str, ...] = option(("htp-v75", "cpu"),
                                      "targets to place on; greedy prefers them in this order")
    policy: Literal["cost", "greedy", "fallback"] = option(
        "cost", "cost = lowest predicted latency; greedy = first capable target per node; "
                "fallback = greedy, then NPU islands moved to the CPU when that is predicted "
                "faster by a margin")
    precision: str | None = option(
        None, "scheme to cost nodes without encodings at (w8a8, w8a16, ...); none = float")
    assume_quantized: bool = option(
        False, "ignore the HTP's 'left in float' refusal (placing a graph before quantize)")

    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        """Place, annotate, report."""
        from passes.partition.report import place, placement_report

        before = [(n.placement, n.meta.get("placement_reason")) for n in graph.nodes]
        pins = dict(ctx.options.get("placement") or {})
        result, baseline = place(graph, self.targets, self.policy, pins=pins,
                                 precision=self.precision,
                                 assume_quantized=self.assume_quantized)
        rep = placement_report(result, baseline)
        ctx.report["placement"] = rep
        for note in rep["notes"]:
            ctx.note(note)
        after = [(n.placement, n.meta.get("placement_reason")) for n in graph.nodes]
        stats = {f"nodes.{t}": c for t, c in rep["counts"].items()}
        stats["partitions"] = rep["num_partitions"]
        return PassResult(before != after, stats)

"""Raise a graph's default-domain opset to :data:`FUSE_OPSET` before fusing.

The fused operators the HTP runs as one kernel are recent ONNX ops (``LayerNormalization`` is
opset 17, ``Gelu`` opset 20), while models exported at opset 13..19 spell them out. Between
opset 13 and 20 only one change is not backward compatible for inference: at opset 18 the
``Reduce*`` ops (all but ``ReduceSum``, which moved at 13) take ``axes`` as an input instead
of an attribute. :data:`OPSET_UPGRADES` rewrites those; every other op means the same at the
new opset. ``fuse`` applies these rules after bumping the opset (only when the graph holds
an op of :data:`UPGRADE_TRIGGERS`), and ``verify`` checks the result against the new opset's
schemas.
"""

from __future__ import annotations

import numpy as np

from compiler.ir import Graph
from compiler.passes import PassContext
from compiler.rewrite import Match, Pat, Rewriter, Rule, RuleSet, apply_rules

__all__ = ["FUSE_OPSET", "OPSET_UPGRADES", "UPGRADE_TRIGGERS", "upgrade_opset"]

#: The default-domain opset ``fuse`` works at (the PyTorch frontend's opset).
FUSE_OPSET = 20

#: Ops that begin a written-out form whose fused op is newer than opset 13 (Erf, Tanh: GELU;
#: ReduceMean: LayerNorm). Graphs without any are left at their opset.
UPGRADE_TRIGGERS = frozenset({"Erf", "Tanh", "ReduceMean"})

_REDUCES = ("ReduceL1", "ReduceL2", "ReduceLogSum", "ReduceLogSumExp", "ReduceMax",
            "ReduceMean", "ReduceMin", "ReduceProd", "ReduceSumSquare")


def _axes_to_input(m: Match, rw: Rewriter):  # type: ignore[no-untyped-def]
    n = m.root
    attrs = {k: v for k, v in n.attrs.items() if k != "axes"}
    axes = rw.const(np.asarray(n.attrs["axes"], np.int64), "axes")
    return rw.op(n.op, [m["x"], axes], attrs, type=n.outputs[0].type)


#: Rewrites from the opset-13 forms to the opset-18+ forms.
OPSET_UPGRADES = RuleSet("opset-upgrade", [
    Rule("reduce-axes-to-input", Pat(_REDUCES, "x"), _axes_to_input,
         lambda m: None if "axes" in m.root.attrs else "no axes attribute",
         doc="Reduce*(x, axes=[..]) -> Reduce*(x, axes) (opset 18)"),
])


def upgrade_opset(graph: Graph, ctx: PassContext | None = None,
                  version: int = FUSE_OPSET, triggers: frozenset[str] = UPGRADE_TRIGGERS
                  ) -> dict[str, int]:
    """Raise the default-domain opset of ``graph`` to ``version`` (in place; no-op when it is
    already there, or when no default-domain op is in ``triggers``). Returns rewrite counts,
    with ``"opset-upgrade"`` when the opset moved."""
    have = graph.opset.get("")
    if have is None or have >= version:
        return {}
    if not any(n.op in triggers and not n.domain for n in graph.nodes):
        return {}
    graph.opset[""] = version
    stats = apply_rules(graph, OPSET_UPGRADES, ctx)
    stats["opset-upgrade"] = 1
    return stats

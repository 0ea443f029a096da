"""Shared pieces of the compression passes (``lowrank``, ``prune``, ``select-compression``).

- :class:`~compiler.errors.CompressionError` (re-exported): the typed refusal (100% sparsity,
  an impossible rank), naming the node;
- :class:`ShapeRewriter`: a :class:`~compiler.rewrite.Rewriter` that may also change the
  shapes of a region (channel pruning shrinks every tensor of a channel group at once, which
  ``Rewriter.replace`` rightly refuses one value at a time);
- calibration helpers: batches as feeds, intermediate activations on the CPU reference, and
  the whole-graph output SQNR between two graph states;
- cost helpers: the device and precision key the compression passes price layers with;
- :func:`report_entry`: one ``ctx.report["compression"]`` row;
- :func:`compression_pipeline`: a ``compress=`` spec as a pipeline fragment, and
  :func:`with_compression`: a pipeline with that fragment placed before quantization.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from compiler.errors import CompressionError, PipelineError
from compiler.ir import Graph, Node, TensorType, Value
from compiler.passes import PassContext, format_pipeline, parse_pipeline
from compiler.rewrite import Rewriter

__all__ = [
    "CompressionError",
    "ShapeRewriter",
    "DEFAULT_TARGET",
    "COMPRESSION_PASSES",
    "calibration_feeds",
    "collect",
    "output_sqnr_db",
    "graph_seconds",
    "report_entry",
    "rows_from",
    "summarize",
    "compression_pipeline",
    "with_compression",
    "layer_name",
    "check_layer_names",
]

#: the target the cost model prices layers for when neither the pass nor the context names one
DEFAULT_TARGET = "htp-v75"

#: the pipeline names a ``compress=`` spec may use
COMPRESSION_PASSES = ("lowrank", "prune", "select-compression")


class ShapeRewriter(Rewriter):
    """A rewriter that may also re-point node inputs and retype values.

    Channel pruning changes the channel count of every tensor in a group together; each step
    alone is a type change that :meth:`Rewriter.replace` refuses. The pass keeps the region
    consistent and the graph verifies after it; this class keeps provenance, dead-constant
    removal and the rewrite trace (``finish``) as for any rewrite.
    """

    def set_input(self, node: Node, index: int, value: Value) -> None:
        """Make input ``index`` of ``node`` read ``value`` (the old input may die)."""
        old = node.inputs[index]
        if old is value:
            return
        if old is not None and old.is_const:
            self._maybe_dead_consts.append(old)
        node.set_input(index, value)
        self._changed = True

    def set_type(self, value: Value, type: TensorType) -> None:
        """Give ``value`` a new type (its shape shrinks with its channel group)."""
        if value.type != type:
            value.type = type
            self._changed = True

    def set_attr(self, node: Node, name: str, attr: Any) -> None:
        """Set attribute ``name`` of ``node`` (a depthwise conv's ``group``)."""
        if node.attrs.get(name) != attr:
            node.attrs[name] = attr
            self._changed = True


def layer_name(node: Node) -> str:
    """How reports name a layer: the node's name, else its source module, else its output."""
    if node.name:
        return node.name
    if node.src:
        return f"{node.src} (%{node.outputs[0].name})"
    return f"%{node.outputs[0].name}"


def check_layer_names(graph: Graph, names: Sequence[str], where: str) -> None:
    """Refuse (``CompressionError``) a ``layers=``/``ranks=``/``sparsities=`` name that names
    no node of ``graph`` (by node name, first output name or source module), so a typo does
    not silently compress nothing."""
    if not names:
        return
    known: set[str] = set()
    for n in graph.nodes:
        known.update(k for k in (n.name, n.src, n.outputs[0].name if n.outputs else None) if k)
        if n.outputs:
            known.add(f"%{n.outputs[0].name}")  # how reports name an unnamed node
    unknown = [k for k in dict.fromkeys(names) if k not in known]
    if unknown:
        import difflib

        hints = [m for k in unknown for m in difflib.get_close_matches(k, sorted(known), 2)]
        raise CompressionError(
            f"{where}: no layer named {', '.join(repr(k) for k in unknown)} in the graph"
            + (f" (did you mean {', '.join(repr(h) for h in dict.fromkeys(hints))}?)"
               if hints else "; name a node, its output or its source module")
            + "; refused")


def calibration_feeds(graph: Graph, ctx: PassContext, limit: int = 8
                      ) -> list[dict[str, np.ndarray]]:
    """Up to ``limit`` calibration batches of ``ctx`` as feeds by input name (checked)."""
    from passes.quant.calibrate import check_batch

    return [check_batch(graph, i, b) for i, b in enumerate(list(ctx.calibration or [])[:limit])]


def collect(graph: Graph, names: Sequence[str], feeds: Sequence[Mapping[str, np.ndarray]]
            ) -> dict[str, list[np.ndarray]]:
    """The values ``names`` (any value of the graph) on every feed, on the CPU reference."""
    from compiler.reference import ReferenceRunner

    out: dict[str, list[np.ndarray]] = {n: [] for n in names}
    if not names or not feeds:
        return out
    runner = ReferenceRunner(graph, outputs=list(dict.fromkeys(names)), qdq=False)
    for f in feeds:
        got = runner.run(f)
        for n in names:
            out[n].append(got[n])
    return out


def _outputs(graph: Graph, feeds: Sequence[Mapping[str, np.ndarray]]) -> list[np.ndarray]:
    from compiler.reference import ReferenceRunner

    runner = ReferenceRunner(graph, qdq=False)
    outs: list[np.ndarray] = []
    for f in feeds:
        got = runner.run(f)
        outs.extend(np.asarray(got[v.name], np.float64).reshape(-1) for v in graph.outputs)
    return outs


def output_sqnr_db(before: Graph | Sequence[np.ndarray], after: Graph,
                   feeds: Sequence[Mapping[str, np.ndarray]]) -> float:
    """SQNR (dB) of ``after``'s outputs against ``before``'s (a graph, or its outputs from
    :func:`reference_outputs`) over ``feeds``; ``inf`` when equal or without feeds."""
    if not feeds:
        return math.inf
    ref = reference_outputs(before, feeds) if isinstance(before, Graph) else list(before)
    got = _outputs(after, feeds)
    sig = sum(float(np.sum(r ** 2)) for r in ref)
    noise = sum(float(np.sum((r - g) ** 2)) for r, g in zip(ref, got))
    if noise == 0.0:
        return math.inf
    return 10.0 * math.log10(max(sig, 1e-300) / noise)


def reference_outputs(graph: Graph, feeds: Sequence[Mapping[str, np.ndarray]]
                      ) -> list[np.ndarray]:
    """The graph outputs on every feed, flattened, in float64 (for :func:`output_sqnr_db`)."""
    return _outputs(graph, feeds) if feeds else []


def _device_and_key(target: str | None, precision: str) -> tuple[Any, str]:
    from targets.cost import device_of, scheme_key

    return device_of(target or DEFAULT_TARGET), scheme_key(precision)


def graph_seconds(graph: Graph, target: str | None, precision: str) -> float:
    """Predicted latency of ``graph`` on ``target`` with every node at ``precision``."""
    from targets.cost import graph_cost

    device, key = _device_and_key(target, precision)
    return graph_cost(graph, device, key).seconds


def nodes_seconds(nodes: Sequence[Node], target: str | None, precision: str) -> float:
    """Predicted latency of ``nodes`` alone (each its own roofline, as ``graph_cost``)."""
    from targets.cost import node_cost

    device, key = _device_and_key(target, precision)
    return sum(node_cost(n, device, key).seconds for n in nodes)


def nodes_macs(nodes: Sequence[Node]) -> int:
    """Total MACs of ``nodes``."""
    from targets.cost import node_macs

    return sum(node_macs(n) for n in nodes)


def report_entry(ctx: PassContext, entry: dict[str, Any]) -> None:
    """Append one row to ``ctx.report["compression"]`` (a list, in the order layers were
    handled). Floats are rounded and infinities written as None, so the report is JSON."""
    clean: dict[str, Any] = {}
    for k, v in entry.items():
        if isinstance(v, float):
            clean[k] = None if not math.isfinite(v) else round(v, 5)
        else:
            clean[k] = v
    ctx.report.setdefault("compression", []).append(clean)


def rows_from(ctx: PassContext) -> int:
    """Where the rows a pass is about to add will start in ``ctx.report["compression"]``."""
    return len(ctx.report.get("compression", []))


def summarize(ctx: PassContext, start: int, summary: dict[str, Any], sqnr_db: float) -> None:
    """Record a pass's whole-model output SQNR (dB, against the graph before the pass, on the
    calibration data): on every row it added from ``start`` that changed a layer
    (``model_sqnr_db``) and as one ``ctx.report["compression_summary"]`` entry."""
    db = round(sqnr_db, 3) if math.isfinite(sqnr_db) else None
    for row in ctx.report.get("compression", [])[start:]:
        if row.get("action") in ("factorized", "pruned", "sparsified"):
            row["model_sqnr_db"] = db
    ctx.report.setdefault("compression_summary", []).append({**summary, "output_sqnr_db": db})


def compression_pipeline(spec: str) -> str:
    """The pipeline fragment of a ``compress=`` spec, canonical and checked.

    ``"lowrank{energy=0.95},prune{method=channel,sparsity=0.3}"`` is a pipeline string of
    compression passes; ``"auto{max_sqnr_drop=3}"`` is short for ``select-compression{...}``. Each
    pass must be one of :data:`COMPRESSION_PASSES` (``PipelineError`` otherwise). The result is
    meant to run after ``canonicalize,fuse`` (so batch norms are folded) and before
    ``calibrate``/``quantize``.
    """
    text = spec.strip()
    if not text:
        return ""
    # "auto" is the user-facing name of select-compression; rewrite whole pass names only.
    parts: list[str] = []
    depth = 0
    start = 0
    for i, ch in enumerate(text + ","):
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
        elif ch == "," and depth == 0:
            parts.append(text[start:i].strip())
            start = i + 1
    fixed = []
    for p in parts:
        head = p.split("{", 1)[0].strip()
        fixed.append("select-compression" + p[len(head):] if head == "auto" else p)
    passes = parse_pipeline(",".join(fixed))
    for ps in passes:
        if ps.name not in COMPRESSION_PASSES:
            raise PipelineError(f"compress spec {spec!r}: {ps.name!r} is not a compression "
                                f"pass (use {', '.join(COMPRESSION_PASSES)}, or 'auto')")
    return format_pipeline(passes)


#: passes a compression fragment must run before (they compute encodings of the float graph)
_QUANT_PASSES = ("calibrate", "quantize", "smooth-quant", "equalize")


def with_compression(pipeline: str, spec: str) -> str:
    """``pipeline`` with the fragment of ``spec`` (see :func:`compression_pipeline`) inserted
    before its first quantization pass (``calibrate``, ``quantize``, ...), or appended when it
    has none; a canonical pipeline string. An empty ``spec`` returns ``pipeline`` unchanged."""
    frag = compression_pipeline(spec)
    if not frag:
        return pipeline
    passes = parse_pipeline(pipeline)
    at = next((i for i, p in enumerate(passes) if p.name in _QUANT_PASSES), len(passes))
    return format_pipeline([*passes[:at], *parse_pipeline(frag), *passes[at:]])

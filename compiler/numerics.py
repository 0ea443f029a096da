"""Numeric error between a reference and a test tensor, and drift tracking across passes.

- :func:`sqnr_db`, :func:`cosine`, :func:`max_abs`: the metrics every report uses. SQNR is
  ``10 log10(sum(ref^2) / sum((ref - test)^2))`` in float64; identical tensors give ``inf``.
- :class:`DriftInstrument`: a pass instrument that runs the CPU reference on fixed inputs after
  every pass (encodings materialized as QDQ) and records the error of the graph outputs
  against the FP32 outputs of the pipeline's input graph.
- :func:`node_drift`: per-value error of a (quantized) graph against an FP32 graph, for every
  value the two share by name, in topological order, and the first node where error jumps.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from compiler.ir import Graph
from compiler.passes import Instrument, Pass, PassContext, PassResult

__all__ = ["sqnr_db", "cosine", "max_abs", "Metrics", "metrics", "DriftInstrument",
           "NodeDrift", "node_drift", "first_jump"]


def _pair(ref: Any, test: Any) -> tuple[np.ndarray, np.ndarray]:
    r = np.asarray(ref, dtype=np.float64).reshape(-1)
    t = np.asarray(test, dtype=np.float64).reshape(-1)
    if r.shape != t.shape:
        raise ValueError(f"cannot compare tensors of {r.size} and {t.size} elements")
    return r, t


def sqnr_db(ref: Any, test: Any) -> float:
    """Signal-to-quantization-noise ratio of ``test`` against ``ref`` in dB (``inf`` if equal)."""
    r, t = _pair(ref, test)
    noise = float(np.sum((r - t) ** 2))
    signal = float(np.sum(r ** 2))
    if noise == 0.0:
        return math.inf
    if signal == 0.0:
        return -math.inf
    return 10.0 * math.log10(signal / noise)


def cosine(ref: Any, test: Any) -> float:
    """Cosine similarity of the flattened tensors (1.0 for two all-zero tensors)."""
    r, t = _pair(ref, test)
    nr, nt = float(np.linalg.norm(r)), float(np.linalg.norm(t))
    if nr == 0.0 and nt == 0.0:
        return 1.0
    if nr == 0.0 or nt == 0.0:
        return 0.0
    return float(r @ t / (nr * nt))


def max_abs(ref: Any, test: Any) -> float:
    """Largest absolute difference."""
    r, t = _pair(ref, test)
    return float(np.max(np.abs(r - t))) if r.size else 0.0


@dataclass(frozen=True)
class Metrics:
    """SQNR (dB), cosine similarity and max abs error of one comparison."""

    sqnr_db: float
    cosine: float
    max_abs: float

    def to_dict(self) -> dict[str, float | None]:
        """JSON-safe: infinities become None."""
        return {k: (None if math.isinf(v) or math.isnan(v) else round(v, 6))
                for k, v in (("sqnr_db", self.sqnr_db), ("cosine", self.cosine),
                             ("max_abs", self.max_abs))}


def metrics(refs: Sequence[Any], tests: Sequence[Any]) -> Metrics:
    """Metrics over several tensor pairs at once (concatenated, so SQNR is energy-weighted)."""
    if len(refs) != len(tests) or not refs:
        raise ValueError("metrics() needs matching, non-empty lists")
    r = np.concatenate([np.asarray(a, np.float64).reshape(-1) for a in refs])
    t = np.concatenate([np.asarray(b, np.float64).reshape(-1) for b in tests])
    return Metrics(sqnr_db(r, t), cosine(r, t), max_abs(r, t))


def _run(graph: Graph, feeds: Sequence[Mapping[str, np.ndarray]],
         names: Sequence[str] | None = None) -> list[dict[str, np.ndarray]]:
    from compiler.reference import run_reference

    return [run_reference(graph, dict(f), outputs=names) for f in feeds]


class DriftInstrument(Instrument):
    """Records, after every top-level pass, the error of the graph outputs against the FP32
    outputs of the graph the pipeline started from, on ``inputs`` (a list of feed dicts).

    ``rows`` holds ``(pass path, Metrics)`` in order; outputs are compared position by position,
    so passes may rename them. Costs one reference run per pass and input.
    """

    def __init__(self, inputs: Sequence[Mapping[str, np.ndarray]]) -> None:
        if not inputs:
            raise ValueError("DriftInstrument needs at least one input")
        self.inputs = list(inputs)
        self.rows: list[tuple[str, Metrics]] = []
        self._ref: list[list[np.ndarray]] | None = None

    def _outputs(self, graph: Graph) -> list[list[np.ndarray]]:
        runs = _run(graph, self.inputs)
        return [[run[v.name] for v in graph.outputs] for run in runs]

    def before_pass(self, p: Pass, graph: Graph, ctx: PassContext) -> None:
        """Take the FP32 reference once, before the first pass."""
        if self._ref is None:
            self._ref = self._outputs(graph)
            self.rows.append(("input", Metrics(math.inf, 1.0, 0.0)))

    def after_pass(self, p: Pass, graph: Graph, ctx: PassContext, result: PassResult) -> None:
        """Measure after each top-level pass."""
        if ctx.depth != 0 or self._ref is None:
            return
        got = self._outputs(graph)
        refs = [a for run in self._ref for a in run]
        tests = [a for run in got for a in run]
        self.rows.append((ctx.pass_path, metrics(refs, tests)))



@dataclass
class NodeDrift:
    """Error of one value of the test graph against the same-named value of the FP32 graph."""

    value: str
    node: str
    op: str
    src: str
    metrics: Metrics
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe form."""
        return {"value": self.value, "node": self.node, "op": self.op, "src": self.src,
                **self.metrics.to_dict(), **self.extra}


def node_drift(fp32: Graph, test: Graph, inputs: Sequence[Mapping[str, np.ndarray]],
               *, limit: int | None = None) -> list[NodeDrift]:
    """Per-node error of ``test`` against ``fp32`` on ``inputs``: for every node output of
    ``test`` whose name also names a float value of ``fp32``, in ``test``'s order (at most
    ``limit`` values, evenly spread, when given)."""
    ref_names = {v.name for n in fp32.nodes for v in n.outputs if v is not None
                 and v.dtype.is_float}
    ref_names |= {v.name for v in fp32.outputs}
    pairs = [(n, v) for n in test.nodes for v in n.outputs
             if v is not None and v.name in ref_names and v.dtype.is_float]
    if limit is not None and len(pairs) > limit:
        step = len(pairs) / limit
        pairs = [pairs[int(i * step)] for i in range(limit)]
    names = [v.name for _, v in pairs]
    if not names:
        return []
    ref_runs = _run(fp32, inputs, names)
    test_runs = _run(test, inputs, names)
    out = []
    seen: dict[str, float] = {}
    for n, v in pairs:
        m = metrics([r[v.name] for r in ref_runs], [t[v.name] for t in test_runs])
        # the worst tracked input's SQNR: how much error arrived at this node
        arrived = min((seen[i.name] for i in n.inputs if i is not None and i.name in seen),
                      default=math.inf)
        seen[v.name] = m.sqnr_db
        out.append(NodeDrift(v.name, n.name or v.name, n.op, str(n.meta.get("src", "")), m,
                             {"input_sqnr_db": None if math.isinf(arrived) else
                              round(arrived, 6)}))
    return out


def first_jump(rows: Sequence[NodeDrift], *, drop_db: float = 6.0,
               clean_db: float = 40.0) -> NodeDrift | None:
    """The first node whose output SQNR is ``drop_db`` or more below the SQNR of its worst
    input (the node that adds the error, not one that merely passes it on), or None.

    An input's SQNR counts as at most ``clean_db``: error-free inputs (infinite SQNR) would
    otherwise make the unavoidable first rounding of a quantized graph (~40 dB at 8 bits) look
    like a jump; a node that turns clean inputs into a far worse output is still found."""
    for r in rows:
        got = r.extra.get("input_sqnr_db")
        arrived = clean_db if got is None else min(float(got), clean_db)
        s = r.metrics.sqnr_db
        if math.isfinite(s) and s <= arrived - drop_db:
            return r
    return None

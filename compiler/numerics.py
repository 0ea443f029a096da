"""Numeric error between a reference and a test tensor, and drift tracking across passes.

- :func:`sqnr_db`, :func:`cosine`, :func:`max_abs`: the metrics every report uses. SQNR is
  ``10 log10(sum(ref^2) / sum((ref - test)^2))`` in float64; identical tensors give ``inf``.
- :class:`DriftInstrument`: a pass instrument that runs the CPU reference on fixed inputs after
  every pass (encodings materialized as QDQ) and records the error of the graph outputs
  against the FP32 outputs of the pipeline's input graph.
- :func:`node_drift`: per-value error of a (quantized) graph against an FP32 graph, for every
  value the two share by name, in topological order, and the first node where error jumps.
- :func:`stage_drift`: per node of a quantized graph, three stages side by side -- the FP32
  reference, the QDQ graph on the CPU reference, the HTP simulator -- and
  :func:`first_disagreement`, the first node where the HTP computes differently from the CPU.
- :func:`minimal_repro`: the fewest nodes ending at a disagreeing node that still disagree when
  compiled alone, saved as ``.ir`` + ``.onnx`` + inputs.

The HTP functions import ``targets.hexagon_htp`` lazily and need the QNN simulator.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from compiler.errors import EdgecError, EmitError
from compiler.ir import Graph, Node, Value
from compiler.passes import Instrument, Pass, PassContext, PassResult

__all__ = ["sqnr_db", "cosine", "max_abs", "Metrics", "metrics", "DriftInstrument",
           "NodeDrift", "node_drift", "first_jump", "DriftInputError", "StageRow",
           "stage_drift", "first_disagreement", "disagreement_threshold", "stage_first_jump",
           "Repro", "minimal_repro"]


def _pair(ref: Any, test: Any) -> tuple[np.ndarray, np.ndarray]:
    """Both tensors flattened to float64; positions where both hold the same infinity (an
    attention mask's -inf, kept exactly) are left out, so the rest is compared."""
    r = np.asarray(ref, dtype=np.float64).reshape(-1)
    t = np.asarray(test, dtype=np.float64).reshape(-1)
    if r.shape != t.shape:
        raise ValueError(f"cannot compare tensors of {r.size} and {t.size} elements")
    same_inf = np.isinf(r) & (r == t)
    if same_inf.any():
        r, t = r[~same_inf], t[~same_inf]
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


# -- stages: FP32 reference, QDQ on the CPU, the HTP simulator -------------------------------


class DriftInputError(EdgecError, ValueError):
    """Bad input to a stage comparison: no samples, an unknown node, a graph with no values to
    compare (names what is wrong)."""


@dataclass
class StageRow:
    """One float node output of the quantized graph, seen at three stages.

    ``cpu_vs_fp32``: the QDQ graph on the CPU reference against the aligned FP32 value
    (``fp32_value``; None when the FP32 graph has no counterpart). ``htp_vs_fp32`` and
    ``htp_vs_cpu``: the HTP simulator against FP32 and against the CPU QDQ value, measured in one
    run of the whole graph with every quantized value exposed as an output (None when the value
    is not materialized on the HTP: it has no encoding, e.g. a producer fused into its Relu).
    ``alone``: HTP against CPU again, with the value's producers (its cone) compiled on their
    own and the value as the only output; set only for rows that disagreed in the whole-graph
    run, because exposing values as outputs can itself change what the HTP computes (a fused
    ``a · Sigmoid(a)`` corrupts the exposed Sigmoid output). When set, it is the verdict;
    ``alone_vs_fp32`` is the same run against FP32.
    ``input_sqnr_db``: the worst CPU-vs-FP32 SQNR among the node's measured inputs.
    """

    value: str
    node: str
    op: str
    src: str
    fp32_value: str | None
    cpu_vs_fp32: Metrics | None
    htp_vs_fp32: Metrics | None
    htp_vs_cpu: Metrics | None
    alone: Metrics | None = None
    alone_vs_fp32: Metrics | None = None
    placement: str = ""
    input_sqnr_db: float | None = None

    @property
    def agreement_db(self) -> float | None:
        """HTP-vs-CPU SQNR: the ``alone`` measurement when there is one, else the whole-graph
        one (None when the HTP does not materialize the value)."""
        m = self.alone if self.alone is not None else self.htp_vs_cpu
        return None if m is None else m.sqnr_db

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe form (infinite SQNRs become None)."""

        def md(m: Metrics | None) -> dict[str, float | None] | None:
            return None if m is None else m.to_dict()

        agree = self.agreement_db
        return {"value": self.value, "node": self.node, "op": self.op, "src": self.src,
                "fp32_value": self.fp32_value, "placement": self.placement,
                "cpu_vs_fp32": md(self.cpu_vs_fp32), "htp_vs_fp32": md(self.htp_vs_fp32),
                "htp_vs_cpu": md(self.htp_vs_cpu), "htp_vs_cpu_alone": md(self.alone),
                "htp_vs_fp32_alone": md(self.alone_vs_fp32),
                "agreement_db": None if agree is None or not math.isfinite(agree)
                else round(agree, 6),
                # NaN/Inf from the simulator: the worst result (its SQNR reads as None)
                "htp_nonfinite": agree is not None and agree == -math.inf,
                "input_sqnr_db": self.input_sqnr_db}


def disagreement_threshold(row: StageRow, threshold_db: float, margin_db: float = 10.0) -> float:
    """The HTP-vs-CPU SQNR under which ``row`` counts as a disagreement: ``threshold_db``, or
    ``margin_db`` under the row's own CPU-vs-FP32 SQNR when that is lower (at low precision the
    HTP's different requantization rounding is noise of the size of the quantization noise
    itself, not a miscomputation)."""
    limit = threshold_db
    if row.cpu_vs_fp32 is not None and math.isfinite(row.cpu_vs_fp32.sqnr_db):
        limit = min(limit, row.cpu_vs_fp32.sqnr_db - margin_db)
    return limit


def _disagrees(row: StageRow, threshold_db: float, margin_db: float) -> bool:
    agree = row.agreement_db
    return agree is not None and agree < disagreement_threshold(row, threshold_db, margin_db)


def first_disagreement(rows: Sequence[StageRow], threshold_db: float = 20.0, *,
                       margin_db: float = 10.0) -> StageRow | None:
    """The first row (graph order) where the HTP disagrees with the CPU QDQ reference: its
    HTP-vs-CPU SQNR (:attr:`StageRow.agreement_db`) is below
    :func:`disagreement_threshold`; None when every materialized value agrees."""
    return next((r for r in rows if _disagrees(r, threshold_db, margin_db)), None)


def stage_first_jump(rows: Sequence[StageRow], *, drop_db: float = 6.0,
                     clean_db: float = 40.0) -> StageRow | None:
    """:func:`first_jump` over the CPU-vs-FP32 column of stage rows: the first node that adds
    quantization error (rather than passing it on)."""
    views = [NodeDrift(r.value, r.node, r.op, r.src, r.cpu_vs_fp32,
                       {"input_sqnr_db": r.input_sqnr_db, "_row": i})
             for i, r in enumerate(rows) if r.cpu_vs_fp32 is not None]
    hit = first_jump(views, drop_db=drop_db, clean_db=clean_db)
    return None if hit is None else rows[int(hit.extra["_row"])]


def _check_feeds(feeds: Sequence[Mapping[str, np.ndarray]]) -> list[dict[str, np.ndarray]]:
    out = [dict(f) for f in feeds]
    if not out:
        raise DriftInputError("a stage comparison needs at least one input sample")
    return out


def _float_outputs(graph: Graph) -> list[tuple[Node, Value]]:
    return [(n, v) for n in graph.nodes for v in n.outputs
            if v is not None and v.dtype.is_float]


def _align(fp32: Graph, quant: Graph) -> dict[str, str]:
    """Quantized value name -> FP32 value name: by name, then graph outputs by position, then
    by provenance (the k-th node with the same ``src`` and op, when both graphs have equally
    many such nodes) with a matching shape."""
    fvals = {v.name: v for _, v in _float_outputs(fp32)}
    fvals.update({v.name: v for v in fp32.outputs})
    out: dict[str, str] = {}
    for qv, fv in zip(quant.outputs, fp32.outputs):
        out[qv.name] = fv.name
    by_key: dict[tuple[str, str], list[Value]] = {}
    for n in fp32.nodes:
        src = str(n.meta.get("src", ""))
        if src and n.outputs and n.outputs[0] is not None and n.outputs[0].dtype.is_float:
            by_key.setdefault((src, n.op), []).append(n.outputs[0])
    q_key: dict[tuple[str, str], list[Value]] = {}
    for n in quant.nodes:
        src = str(n.meta.get("src", ""))
        if src and n.outputs and n.outputs[0] is not None and n.outputs[0].dtype.is_float:
            q_key.setdefault((src, n.op), []).append(n.outputs[0])
    for _, v in _float_outputs(quant):
        if v.name in fvals:
            out.setdefault(v.name, v.name)
    for key, qvs in q_key.items():
        fvs = by_key.get(key, [])
        if len(fvs) != len(qvs):
            continue
        for qv, fv in zip(qvs, fvs):
            if qv.name not in out and qv.shape == fv.shape:
                out[qv.name] = fv.name
    return out


def _compare(refs: Sequence[Any], tests: Sequence[Any]) -> Metrics:
    """:func:`metrics`, except that a test with NaN or Inf values (the simulator can return
    garbage from a miscomputing kernel) is the worst result, not a NaN that compares as fine."""
    with np.errstate(invalid="ignore", over="ignore"):
        arrays = [np.asarray(t, np.float64) for t in tests]
    if not all(np.isfinite(a).all() for a in arrays):
        return Metrics(-math.inf, 0.0, math.inf)
    return metrics(refs, arrays)


def _cone(graph: Graph, node: Node) -> list[Node]:
    """``node`` and every node it depends on, in graph order."""
    producer = {id(v): n for n in graph.nodes for v in n.outputs if v is not None}
    need: set[int] = set()
    stack = [node]
    while stack:
        n = stack.pop()
        if id(n) in need:
            continue
        need.add(id(n))
        stack += [producer[id(v)] for v in n.inputs if v is not None and id(v) in producer]
    return [n for n in graph.nodes if id(n) in need]


def _htp_run(graph: Graph, feeds: Sequence[Mapping[str, np.ndarray]], arch: str
             ) -> tuple[list[dict[str, np.ndarray]], dict[str, str]]:
    """Emit (a copy of) ``graph`` for the HTP into a temporary folder and run every feed on the
    simulator. Returns the outputs per feed, and each node output's placement."""
    import tempfile

    from targets.hexagon_htp import qnn
    from targets.hexagon_htp.emit import emit

    g = graph.copy()
    names = {v.name for v in g.inputs}
    with tempfile.TemporaryDirectory(prefix="edgec-drift-") as d:
        res = emit(g, d, arch=arch, allow_cpu=True)
        runs = [qnn.run_context(res.model, {k: a for k, a in f.items() if k in names}).outputs
                for f in feeds]
    placement = {v.name: n.placement or "" for n in g.nodes for v in n.outputs if v is not None}
    return runs, placement


def _sub_graph(graph: Graph, nodes: Sequence[Node], value: str, name: str) -> Graph:
    from targets.hexagon_htp.partition import extract

    sub = extract(graph, nodes, name)
    sub.meta = dict(graph.meta)
    sub.outputs = [v for v in sub.value_map().values() if v.name == value][:1]
    if not sub.outputs:
        raise DriftInputError(f"value %{value} is not produced by the window")
    return sub


def _window_feeds(graph: Graph, sub: Graph, feeds: Sequence[Mapping[str, np.ndarray]]
                  ) -> list[dict[str, np.ndarray]]:
    """Feeds for ``sub``'s inputs: the CPU QDQ reference's values of ``graph`` on ``feeds``."""
    from compiler.reference import run_reference

    names = [v.name for v in sub.inputs]
    return [{k: np.asarray(a) for k, a in run_reference(graph, dict(f), outputs=names).items()}
            for f in feeds]


def _window_run(sub: Graph, feeds: Sequence[Mapping[str, np.ndarray]], arch: str
                ) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """``sub``'s single output on the CPU QDQ reference and on the HTP simulator."""
    from compiler.reference import run_reference

    out = sub.outputs[0].name
    htp, _ = _htp_run(sub, feeds, arch)
    cpu = [run_reference(sub, dict(f), outputs=[out])[out] for f in feeds]
    return cpu, [r[out] for r in htp]


def _window_agreement(sub: Graph, feeds: Sequence[Mapping[str, np.ndarray]], arch: str
                      ) -> Metrics:
    """HTP simulator against the CPU QDQ reference on ``sub``'s single output."""
    cpu, htp = _window_run(sub, feeds, arch)
    return _compare(cpu, htp)


def stage_drift(fp32_graph: Graph, quant_graph: Graph,
                feeds: Sequence[Mapping[str, np.ndarray]], *, arch: str = "75",
                threshold_db: float = 20.0, margin_db: float = 10.0,
                max_rechecks: int = 8) -> list[StageRow]:
    """Per float node output of ``quant_graph`` (graph order): CPU QDQ vs FP32, HTP vs FP32
    and HTP vs CPU QDQ on ``feeds``.

    ``fp32_graph`` is the float model (values aligned by name, graph outputs by position, then
    by provenance ``src`` + op); ``quant_graph`` the quantized graph (what
    ``compiler.compile()`` returns as ``CompiledModel.graph``). The HTP numbers come from one
    simulator run of ``quant_graph`` with every quantized value exposed as an extra output.
    Rows that disagree there (see :func:`first_disagreement`) are measured again with their
    cone compiled alone (:attr:`StageRow.alone`), in graph order, until one is confirmed or
    ``max_rechecks`` compiles were spent. Costs one HTP compile plus one simulator run per feed,
    plus the rechecks.
    """
    from compiler.reference import run_reference
    from targets.hexagon_htp.qnn import validate_arch

    arch = validate_arch(arch)
    runs_in = _check_feeds(feeds)
    pairs = _float_outputs(quant_graph)
    if not pairs:
        raise DriftInputError(f"graph {quant_graph.name!r} has no float node outputs to compare")
    aligned = _align(fp32_graph, quant_graph)
    names = [v.name for _, v in pairs]
    cpu_runs = [run_reference(quant_graph, f, outputs=names) for f in runs_in]
    fp32_names = sorted(set(aligned.values()))
    fp32_runs = ([run_reference(fp32_graph, f, outputs=fp32_names) for f in runs_in]
                 if fp32_names else [{} for _ in runs_in])

    has_enc = any(v.encoding is not None for v in quant_graph.values())
    exposed = quant_graph.copy()
    out_names = {v.name for v in exposed.outputs}
    extra = [v for _, v in _float_outputs(exposed)
             if v.name not in out_names and (v.encoding is not None or not has_enc)]
    exposed.outputs = [*exposed.outputs, *extra]
    htp_names = {v.name for v in exposed.outputs}
    htp_runs, placement = _htp_run(exposed, runs_in, arch)

    rows: list[StageRow] = []
    seen: dict[str, float] = {}
    for n, v in pairs:
        cpu = [r[v.name] for r in cpu_runs]
        fname = aligned.get(v.name)
        fp = [r[fname] for r in fp32_runs] if fname is not None else None
        if fp is not None and any(np.size(a) != np.size(b) for a, b in zip(fp, cpu)):
            fname, fp = None, None
        htp = [r[v.name] for r in htp_runs] if v.name in htp_names else None
        cpu_fp = metrics(fp, cpu) if fp is not None else None
        arrived = min((seen[i.name] for i in n.inputs if i is not None and i.name in seen),
                      default=math.inf)
        if cpu_fp is not None:
            seen[v.name] = cpu_fp.sqnr_db
        rows.append(StageRow(
            v.name, n.name or v.name, n.op, str(n.meta.get("src", "")), fname, cpu_fp,
            _compare(fp, htp) if fp is not None and htp is not None else None,
            _compare(cpu, htp) if htp is not None else None,
            placement=placement.get(v.name, ""),
            input_sqnr_db=None if math.isinf(arrived) else round(arrived, 6)))

    by_value = {v.name: n for n, v in pairs}
    fp32_of = {r.value: [f[r.fp32_value] for f in fp32_runs] for r in rows
               if r.fp32_value is not None}
    spent = 0
    for row in rows:
        if spent >= max_rechecks:
            break
        if not _disagrees(row, threshold_db, margin_db):
            continue
        node = by_value[row.value]
        sub = _sub_graph(quant_graph, _cone(quant_graph, node), row.value,
                         f"{quant_graph.name}_cone")
        cpu_alone, htp_alone = _window_run(sub, runs_in, arch)
        row.alone = _compare(cpu_alone, htp_alone)
        if row.value in fp32_of:
            row.alone_vs_fp32 = _compare(fp32_of[row.value], htp_alone)
        spent += 1
        if _disagrees(row, threshold_db, margin_db):
            break
    return rows


@dataclass
class Repro:
    """A window of nodes that, run alone on the HTP, still disagrees with the CPU reference.

    ``graph`` is the window (its inputs are values of the full graph), ``feeds`` the CPU QDQ
    reference's values for those inputs, ``agreement`` the HTP-vs-CPU metrics of ``value``.
    """

    graph: Graph
    nodes: list[str]
    ops: list[str]
    value: str
    agreement: Metrics
    feeds: list[dict[str, np.ndarray]]
    tried: list[tuple[int, float]] = field(default_factory=list)
    files: dict[str, str] = field(default_factory=dict)

    def save(self, directory: str | os.PathLike[str]) -> dict[str, str]:
        """Write ``repro.ir`` (+ weights), ``repro.onnx`` (QDQ) and ``inputs.npz`` (one array
        per window input, samples along a leading axis, as ``edgec drift --calib`` reads)."""
        import io

        from compiler.fileio import atomic_write_bytes
        from compiler.frontends import save_onnx
        from compiler.ir import save_ir

        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        save_ir(self.graph, d / "repro.ir")
        save_onnx(self.graph, d / "repro.onnx")
        buf = io.BytesIO()
        arrays = {v.name: np.stack([np.asarray(f[v.name]) for f in self.feeds])
                  for v in self.graph.inputs}
        savez: Any = np.savez  # numpy's stub types **kwds as its allow_pickle flag
        savez(buf, **arrays)
        atomic_write_bytes(d / "inputs.npz", buf.getvalue())
        self.files = {"ir": str(d / "repro.ir"), "onnx": str(d / "repro.onnx"),
                      "inputs": str(d / "inputs.npz")}
        return dict(self.files)

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe form."""
        return {"value": self.value, "nodes": list(self.nodes), "ops": list(self.ops),
                **{f"agreement_{k}": v for k, v in self.agreement.to_dict().items()},
                "tried": [{"nodes": k, "sqnr_db": None if not math.isfinite(s) else round(s, 6)}
                          for k, s in self.tried],
                "files": dict(self.files)}


def minimal_repro(quant_graph: Graph, node: Node | str,
                  feeds: Sequence[Mapping[str, np.ndarray]], arch: str = "75", *,
                  threshold_db: float = 20.0,
                  out_dir: str | os.PathLike[str] | None = None) -> Repro | None:
    """The smallest window of nodes ending at ``node`` (a node, its name, or the name of its
    output) that still disagrees with the CPU QDQ reference when compiled and run alone on the
    HTP (HTP-vs-CPU SQNR of the node's output below ``threshold_db``).

    Windows are suffixes of the node's cone (the node and its producers, in graph order; every
    such suffix is convex), fed with the CPU reference's values of ``quant_graph`` on
    ``feeds``. The window grows backwards 1, 2, 4, ... nodes until it disagrees, then a binary
    search shrinks it to the fewest nodes that still do (a window the HTP cannot compile on its
    own counts as not disagreeing). Returns None when even the whole cone agrees. With
    ``out_dir`` the repro is saved there (:meth:`Repro.save`).
    """
    from targets.hexagon_htp.qnn import validate_arch

    arch = validate_arch(arch)
    runs_in = _check_feeds(feeds)
    target, out = _find_node(quant_graph, node)
    if out is None or not out.dtype.is_float:
        raise DriftInputError(f"node {target.name or target.op!r} has no float output")
    cone = _cone(quant_graph, target)
    tried: dict[int, tuple[Graph, list[dict[str, np.ndarray]], Metrics]] = {}

    def probe(k: int) -> bool:
        if k not in tried:
            sub = _sub_graph(quant_graph, cone[-k:], out.name, f"{quant_graph.name}_repro")
            wf = _window_feeds(quant_graph, sub, runs_in)
            try:
                m = _window_agreement(sub, wf, arch)
            except EmitError:  # a window the HTP cannot compile alone reproduces nothing
                m = Metrics(math.nan, math.nan, math.nan)
            tried[k] = (sub, wf, m)
        return tried[k][2].sqnr_db < threshold_db

    k = 1
    while not probe(k):
        if k >= len(cone):
            return None
        k = min(2 * k, len(cone))
    lo, hi = k // 2, k  # window lo agrees (or is empty), window hi disagrees
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if probe(mid):
            hi = mid
        else:
            lo = mid
    sub, wf, m = tried[hi]
    window = cone[-hi:]
    rep = Repro(sub, [n.name or (n.outputs[0].name if n.outputs[0] is not None else n.op)
                      for n in window], [n.op for n in window], out.name, m, wf,
                sorted((kk, t[2].sqnr_db) for kk, t in tried.items()))
    if out_dir is not None:
        rep.save(out_dir)
    return rep


def _find_node(graph: Graph, node: Node | str) -> tuple[Node, Value | None]:
    """The node ``node`` names (a node, its name or an output's name) and the output meant:
    the named one, else the first float output."""
    if isinstance(node, Node):
        if node not in graph.nodes:
            raise DriftInputError(f"node {node.name or node.op!r} is not in graph "
                                  f"{graph.name!r}")
        found, want = node, ""
    else:
        hit = next((n for n in graph.nodes if n.name == node or any(
            v is not None and v.name == node for v in n.outputs)), None)
        if hit is None:
            raise DriftInputError(f"graph {graph.name!r} has no node or value named {node!r}")
        found, want = hit, node
    outs = [v for v in found.outputs if v is not None]
    named = next((v for v in outs if v.name == want), None)
    return found, named or next((v for v in outs if v.dtype.is_float), None)

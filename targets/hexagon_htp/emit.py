"""Emit an IR graph for the HTP: QDQ ONNX -> QNN context binary -> one deployable ONNX model.

The graph (with encodings) is exported as QDQ ONNX and compiled by the QNN EP for the chosen
arch. With CPU placement allowed, nodes the HTP does not take stay ordinary ONNX nodes in the
deployable model beside the ``EPContext`` nodes, and ORT runs them on the CPU EP; every such
node is listed in the report with a reason (edgec's capability table when it predicted the
refusal, else the EP's refusal). With CPU placement forbidden, any such node is an error that
names it.

When HTP finalization fails (``QNN_COMMON_ERROR_MEM_ALLOC`` and friends), the emitter finds the
culprit: it compiles prefixes of the failing run of HTP nodes to find the shortest one that
fails, places its last node on the CPU, and compiles the runs between CPU nodes as separate
contexts (``partition.py``; dropping a node's encodings would not take it away from the EP),
stitched into one deployable model. Forbidding the CPU turns the failure into an error.

With an explicit ``placement`` (ordered partitions from the ``partition`` pass, e.g. a
cost-driven placement or user pins), the emitter does not ask the EP: the graph is reordered so
that each partition is contiguous, each HTP run between CPU nodes is compiled as its own
context (with CPU fallback off) and stitched with the CPU nodes (``partition.py``); a run that
fails to finalize is bisected as above. With no HTP node at all, ``model.onnx`` is the plain
QDQ model for ONNX Runtime's CPU EP.

Artifacts in ``out_dir`` (each written atomically; identical input gives identical bytes):
``model.onnx`` (the deployable EPContext model) with its ``*.bin`` context binaries beside it,
``model.ir`` (the final IR text, with ``model.ir.weights``) and ``report.json`` (no wall-clock
times, so it is deterministic too).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import onnx

from compiler.errors import EmitError, FinalizeError, VerifyError
from compiler.fileio import atomic_write_text
from compiler.ir import Graph, Node, save_ir
from targets.hexagon_htp import qnn
from targets.hexagon_htp.legalize import QdqLegalization, _Names, legalize_graph, legalize_qdq
from targets.hexagon_htp.legalize_matmul import sign_matmul_rhs
from targets.hexagon_htp.target import DEVICES, supports

__all__ = ["emit", "EmitResult"]

_GLUE = frozenset({"EPContext", "QuantizeLinear", "DequantizeLinear"})
_MAX_FINALIZE_RETRIES = 8


@dataclass
class EmitResult:
    """What :func:`emit` wrote and where the nodes went."""

    model: Path
    bins: list[Path]
    ir: Path
    report_path: Path
    report: dict[str, Any]
    cpu_nodes: list[dict[str, str]] = field(default_factory=list)


def _strip(node: Node) -> None:
    """Move ``node`` to the CPU: drop the encodings of its outputs and constant inputs."""
    for out in node.outputs:
        if out is not None:
            out.encoding = None
    for v in node.inputs:
        if v is not None and v.is_const:
            v.encoding = None
    node.placement = "cpu"


def _node_key(n: Node) -> str:
    return n.name or (n.outputs[0].name if n.outputs and n.outputs[0] is not None else n.op)


def _htp_onnx(graph: Graph, log: list[QdqLegalization] | None = None) -> onnx.ModelProto:
    """``graph`` as the QDQ ONNX the QNN EP gets: mixed 8/16-bit nodes widened
    (``legalize.py``); what was done is appended to ``log``."""
    from compiler.frontends import to_onnx

    model, done = legalize_qdq(to_onnx(graph))
    # 16 x 16-bit activation MatMuls: second input as int16 (``legalize_matmul.py``)
    done.converts.extend((m, 16, 16) for m in sign_matmul_rhs(model))
    if log is not None:
        log.append(done)
    return model


def _compile(graph: Graph, out_dir: Path, arch: str, opts: dict[str, Any],
             log: list[QdqLegalization] | None = None) -> qnn.ContextArtifacts:
    return qnn.compile_context(_htp_onnx(graph, log), out_dir, arch=arch, name="model", **opts)


def _compile_partitioned(graph: Graph, out_dir: Path, arch: str, opts: dict[str, Any],
                         cpu: set[str], log: list[QdqLegalization] | None = None
                         ) -> qnn.ContextArtifacts:
    """Compile each HTP run between ``cpu`` nodes as its own context; stitch one model."""
    from compiler.fileio import atomic_write_bytes
    from compiler.frontends import to_onnx
    from targets.hexagon_htp.partition import extract, htp_runs, stitch

    full = to_onnx(graph)
    parts: list[tuple[set[str], onnx.ModelProto]] = []
    arts_all: list[qnn.ContextArtifacts] = []
    for i, run in enumerate(htp_runs(graph, cpu)):
        sub = extract(graph, run, f"{graph.name}_part{i}")
        a = qnn.compile_context(_htp_onnx(sub, log), out_dir, arch=arch, name=f"part{i}",
                                **{**opts, "allow_cpu_fallback": False})
        parts.append(({n.name for n in run}, onnx.load(str(a.ctx_onnx),
                                                        load_external_data=False)))
        a.ctx_onnx.unlink()
        arts_all.append(a)
    stitched = stitch(full, parts)
    path = out_dir / "model_ctx.onnx"
    atomic_write_bytes(path, stitched.SerializeToString(deterministic=True))
    first = arts_all[0]
    return qnn.ContextArtifacts(
        ctx_onnx=path, bins=tuple(b for a in arts_all for b in a.bins), arch=first.arch,
        soc_model=first.soc_model, bin_sha256=tuple(h for a in arts_all for h in a.bin_sha256),
        ep_sdk_version=first.ep_sdk_version, num_contexts=sum(a.num_contexts for a in arts_all))


def _partition_around_failures(graph: Graph, out_dir: Path, arch: str, opts: dict[str, Any],
                               first: FinalizeError, progress: Callable[[str], None],
                               placed_cpu: set[str] | None = None,
                               log: list[QdqLegalization] | None = None
                               ) -> tuple[qnn.ContextArtifacts, list[tuple[str, str]]]:
    """Find nodes whose presence makes HTP finalization fail, put them on the CPU (beside
    ``placed_cpu``, the nodes already placed there) and compile the runs between them as
    separate contexts."""
    from targets.hexagon_htp.partition import extract, htp_runs

    cpu: set[str] = set(placed_cpu or ())
    moved: list[tuple[str, str]] = []
    error = first
    for _ in range(_MAX_FINALIZE_RETRIES * 2):
        failing = None
        for run in htp_runs(graph, cpu):
            try:
                qnn.compile_context(_htp_onnx(extract(graph, run, "probe")), out_dir / ".bisect",
                                    arch=arch, name="probe",
                                    **{**opts, "allow_cpu_fallback": False})
            except FinalizeError as e:
                failing, error = run, e
                break
        if failing is None:
            return _compile_partitioned(graph, out_dir, arch, opts, cpu, log), moved
        lo, hi = 0, len(failing)

        def fails(k: int, run: list[Node] = failing) -> bool:
            try:
                qnn.compile_context(_htp_onnx(extract(graph, run[:k], "probe")),
                                    out_dir / ".bisect", arch=arch, name="probe",
                                    **{**opts, "allow_cpu_fallback": False})
            except FinalizeError:
                return True
            except EmitError:
                return False
            return False

        while hi - lo > 1:
            mid = (lo + hi) // 2
            progress(f"finalize bisect: first {mid} of {len(failing)} nodes of a partition")
            if fails(mid):
                hi = mid
            else:
                lo = mid
        culprit = failing[hi - 1]
        cpu.add(culprit.name)
        moved.append((culprit.name, f"HTP finalization failed with {error.qnn_error} with "
                                    "this node in the context"))
    raise FinalizeError(f"HTP finalization still fails ({error.qnn_error}) after moving "
                        f"{', '.join(m for m, _ in moved)} to the CPU",
                        qnn_error=error.qnn_error, log=error.log)


def _apply_placement(graph: Graph, placement: Sequence[tuple[str, Sequence[str]]]
                     ) -> set[str]:
    """Reorder ``graph`` so that each partition of ``placement`` is contiguous (the partitions
    are in a topological order, so this order is one too); returns the names of the nodes
    placed off the HTP."""
    from compiler.ir.core import NodeList

    rank: dict[str, int] = {}
    cpu: set[str] = set()
    for k, (fam, names) in enumerate(placement):
        for name in names:
            rank[name] = k
            if fam != "htp":
                cpu.add(name)
    nodes = list(graph.nodes)
    missing = [n.name for n in nodes if n.name not in rank]
    if missing:
        raise EmitError(f"the placement does not place node {missing[0]} "
                        f"({len(missing)} node(s) unplaced)")
    order = sorted(range(len(nodes)), key=lambda i: (rank[nodes[i].name], i))
    graph.nodes = NodeList()
    for i in order:
        graph.nodes.append(nodes[i])
    try:
        graph.verify()
    except VerifyError as e:  # an order that is not topological: the placement had a cycle
        raise EmitError(f"the placement's partitions are not in a dependency order: {e}") from e
    for n in nodes:
        n.placement = "cpu" if n.name in cpu else "htp"
    return cpu


def _cpu_only(graph: Graph, out_dir: Path, arch: str) -> qnn.ContextArtifacts:
    """No node on the HTP: the deployable model is the plain QDQ model (ORT's CPU EP)."""
    from compiler.fileio import atomic_write_bytes
    from compiler.frontends import to_onnx

    path = out_dir / "model_ctx.onnx"
    atomic_write_bytes(path, to_onnx(graph).SerializeToString(deterministic=True))
    return qnn.ContextArtifacts(ctx_onnx=path, bins=(), arch=arch, soc_model=None,
                                bin_sha256=(), ep_sdk_version="", num_contexts=0)


def emit(graph: Graph, out_dir: str | os.PathLike[str], *, arch: str,
         soc_model: str | int | None = None, optimization_level: int = 3,
         fp16_precision: bool = False, vtcm_mb: int | None = None, allow_cpu: bool = True,
         progress: Callable[[str], None] | None = None,
         placement: Sequence[tuple[str, Sequence[str]]] | None = None) -> EmitResult:
    """Compile ``graph`` for HTP ``arch`` into ``out_dir`` (see the module docstring).

    ``placement``, when given, is the ordered list of partitions ``(family, node names)``
    (``family`` is ``htp``, or ``cpu``/``gpu`` for nodes left as plain ONNX) in a topological
    order of the partition graph, covering every node; it replaces the capability placement.
    """
    arch = qnn.validate_arch(arch)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    say = progress or (lambda _msg: None)
    fp16 = fp16_precision or graph.meta.get("precision") == "fp16"
    opts: dict[str, Any] = {"soc_model": soc_model, "optimization_level": optimization_level,
                            "fp16_precision": fp16, "vtcm_mb": vtcm_mb,
                            "allow_cpu_fallback": allow_cpu}
    # ORT keeps node names (not tensor names) of nodes it leaves outside a context: name
    # every node, deterministically, so each one in the deployable model can be traced back.
    names = _Names({n.name for n in graph.nodes if n.name})
    for n in graph.nodes:
        if not n.name:
            n.name = names.fresh(n.outputs[0].name if n.outputs and n.outputs[0] is not None
                                 else n.op)
    predicted = {}
    placed_cpu: set[str] = set()
    if placement is not None:
        placed_cpu = _apply_placement(graph, placement)
        for n in graph.nodes:
            if n.name in placed_cpu:
                predicted[n.name] = str(n.meta.get("placement_reason", "placed on the CPU"))
    else:
        vtcm = DEVICES[arch].vtcm_bytes  # the device's, as the placement pass checks it
        for n in graph.nodes:
            s = supports(n, fp16=fp16, vtcm_bytes=vtcm)
            n.placement = "htp" if s.ok else "cpu"
            if not s.ok:
                predicted[_node_key(n)] = f"{s.reason.value}: {s.detail}"
    if predicted and not allow_cpu:
        first = next(iter(predicted.items()))
        raise EmitError(f"{len(predicted)} node(s) cannot run on the HTP and CPU placement is "
                        f"forbidden; first: {first[0]} ({first[1]})")
    moved: list[tuple[str, str]] = []
    # the QDQ form the QNN EP builds integer kernels from (``legalize.py``)
    int32_norm_biases = legalize_graph(graph)
    say("compiling the HTP context")
    legal: list[QdqLegalization] = []
    try:
        if placement is None or not placed_cpu:
            arts = _compile(graph, out, arch, opts, legal)
        elif len(placed_cpu) == len(graph.nodes):
            arts = _cpu_only(graph, out, arch)
        else:
            arts = _compile_partitioned(graph, out, arch, opts, placed_cpu, legal)
    except FinalizeError as e:
        if not allow_cpu:
            raise
        say(f"HTP finalization failed ({e.qnn_error}); bisecting for the culprit nodes")
        legal.clear()
        arts, moved = _partition_around_failures(graph, out, arch, opts, e, say, placed_cpu,
                                                 legal)
    finally:
        _rm_tree(out / ".bisect")

    # where did every node end up?
    ctx_model = onnx.load(str(arts.ctx_onnx), load_external_data=False)
    outside = [n for n in ctx_model.graph.node if n.op_type not in _GLUE]
    reasons = dict(predicted)
    reasons.update(dict(moved))
    by_name = {n.name: n for n in graph.nodes if n.name}
    by_output = {o.name: n for n in graph.nodes for o in n.outputs if o is not None}
    cpu_nodes = []
    for n in outside:
        ir_node = by_name.get(n.name) or next(
            (by_output[o] for o in n.output if o in by_output), None)
        key = _node_key(ir_node) if ir_node is not None else (n.name or n.op_type)
        if ir_node is not None:
            ir_node.placement = "cpu"
        cpu_nodes.append({"node": key, "op": n.op_type,
                          "src": str(ir_node.meta.get("src", "")) if ir_node else "",
                          "reason": reasons.get(key, "refused by the QNN EP")})
    outside_names = {c["node"] for c in cpu_nodes}
    for n in graph.nodes:
        if _node_key(n) not in outside_names:
            n.placement = "htp"
    if cpu_nodes and not allow_cpu:
        raise EmitError(f"node {cpu_nodes[0]['node']} ({cpu_nodes[0]['op']}) stayed outside "
                        f"the HTP context: {cpu_nodes[0]['reason']}")

    model = out / "model.onnx"
    # The EP names its output <name>_ctx.onnx; the deployable model is model.onnx.
    os.replace(arts.ctx_onnx, model)
    ir_path = out / "model.ir"
    save_ir(graph, ir_path)
    versions = qnn.versions(arts.ep_sdk_version)
    report = {
        "target": f"htp-v{arch}",
        "arch": arch,
        "soc_model": arts.soc_model,
        "qairt_version": versions.get("qairt", ""),
        "ep_sdk_version": arts.ep_sdk_version,
        "onnxruntime_qnn": versions.get("onnxruntime_qnn", ""),
        "precision": graph.meta.get("precision", "fp32"),
        "options": {"optimization_level": optimization_level, "fp16_precision": fp16,
                    "vtcm_mb": vtcm_mb, "allow_cpu": allow_cpu},
        "contexts": [{"file": b.name, "sha256": h} for b, h in zip(arts.bins,
                                                                   arts.bin_sha256)],
        "num_contexts": arts.num_contexts,
        "nodes": len(graph.nodes),
        "npu_nodes": len(graph.nodes) - len(cpu_nodes),
        "cpu_nodes": cpu_nodes,
        "finalize_moves": [{"node": k, "reason": r} for k, r in moved],
        "qnn_legalization": _legal_report(int32_norm_biases, legal),
        "note": "a context binary loads only on a QNN runtime at least as new as "
                "ep_sdk_version",
    }
    report_path = out / "report.json"
    atomic_write_text(report_path, json.dumps(report, indent=2, sort_keys=True) + "\n")
    return EmitResult(model, list(arts.bins), ir_path, report_path, report, cpu_nodes)


def _legal_report(biases: list[str], done: list[QdqLegalization]) -> dict[str, Any]:
    """What was changed so the QNN EP builds integer kernels (``legalize.py``)."""
    widened = [w for d in done for w in d.widened]
    return {"int32_norm_biases": biases,
            "widened_to_16_bit": widened,
            "converts": sum(len(d.converts) for d in done),
            "constants_widened": [c for d in done for c in d.constants],
            "not_legalized": [{"node": n, "reason": r} for d in done for n, r in d.skipped]}


def _rm_tree(p: Path) -> None:
    import shutil

    shutil.rmtree(p, ignore_errors=True)

"""``compiler.compile()``: a model in, a QNN HTP (or CPU) artifact out, with a report.

    cm = compiler.compile(module, (x,), target="htp-v75", precision="w8a16",
                          calibration_data=[(x1,), (x2,)], output_dir="out")
    cm.run(x)           # runs the artifact: HTP parts on the simulator, the rest on ORT CPU
    cm.report           # JSON-serialisable; cm.report["summary"] has the headline numbers
    cm.save("elsewhere"), cm.artifacts

    # cost-driven placement over the NPU and the CPU, with user pins
    cm = compiler.compile(module, (x,), target=["htp-v75", "cpu"],
                          placement={"layers.0.*": "cpu"}, calibration_data=[(x1,), (x2,)])
    cm.report["placement"]   # per node target, reason, predicted cost; per partition latency
"""

from __future__ import annotations

import math
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np

from compiler.errors import EdgecError, EmitError, ModelLoadError, QuantizationError, TargetError

__all__ = ["compile", "CompiledModel"]


def _np(x: Any) -> np.ndarray:
    if hasattr(x, "detach"):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def _as_tuple(batch: Any) -> tuple[Any, ...]:
    if isinstance(batch, (tuple, list)):
        return tuple(batch)
    return (batch,)


def _load(model: Any, example_inputs: Any) -> Any:
    from compiler.frontends import load_onnx, load_torch

    if isinstance(model, (str, Path)):
        if not str(model).endswith(".onnx"):
            raise ModelLoadError(f"{model}: compile() takes an .onnx path, an onnx.ModelProto "
                                 "or an nn.Module")
        return load_onnx(str(model))
    try:
        import onnx

        if isinstance(model, onnx.ModelProto):
            return load_onnx(model)
    except ImportError:  # pragma: no cover - onnx is a dependency
        pass
    if example_inputs is None:
        raise ModelLoadError("compile(): a PyTorch module needs example_inputs")
    return load_torch(model, _as_tuple(example_inputs))


def _feeds(graph: Any, batches: Sequence[Any]) -> list[dict[str, np.ndarray]]:
    names = [v.name for v in graph.inputs]
    out = []
    for i, b in enumerate(batches):
        if isinstance(b, Mapping):
            out.append({k: _np(v) for k, v in b.items()})
            continue
        t = _as_tuple(b)
        if len(t) != len(names):
            raise QuantizationError(f"calibration batch {i} has {len(t)} tensors; the model "
                                    f"takes {len(names)} inputs {names}")
        out.append({n: _np(x) for n, x in zip(names, t)})
    return out


class CompiledModel:
    """The result of :func:`compile`: the artifacts, a report, and a way to run them."""

    def __init__(self, out_dir: Path, report: dict[str, Any], artifacts: dict[str, Path],
                 input_names: list[str], owned_tmp: tempfile.TemporaryDirectory[str] | None,
                 graph: Any) -> None:
        self.out_dir = out_dir
        self.report = report
        self.artifacts = artifacts
        self.input_names = input_names
        self.graph = graph
        self._tmp = owned_tmp

    def run(self, *args: Any) -> list[np.ndarray]:
        """Run the artifact on ``args`` (numpy arrays or tensors, in input order): HTP parts on
        the simulator, anything else on ONNX Runtime's CPU EP."""
        feed = {n: _np(a) for n, a in zip(self.input_names, args)}
        if len(args) != len(self.input_names):
            raise EdgecError(f"run() takes {len(self.input_names)} inputs "
                             f"{self.input_names}, got {len(args)}")
        if self.report.get("target") == "cpu":
            from compiler.reference import run_reference

            res = run_reference(self.graph, feed)
            return [res[v.name] for v in self.graph.outputs]
        if self.report.get("num_contexts", 1) == 0:
            # nothing was placed on the NPU: a plain ONNX model for ORT's CPU EP (the QNN EP
            # must not see it, or it would take the nodes)
            import onnxruntime as ort

            sess = ort.InferenceSession(str(self.artifacts["model"]),
                                        providers=["CPUExecutionProvider"])
            names = [o.name for o in sess.get_outputs()]
            return [np.asarray(v) for v in sess.run(names, feed)]
        from targets.hexagon_htp import qnn

        r = qnn.run_context(self.artifacts["model"], feed)
        return list(r.outputs.values())

    def save(self, directory: str | Path) -> dict[str, Path]:
        """Copy the artifacts into ``directory`` (each file atomically); returns the new paths."""
        from compiler.fileio import atomic_write_bytes

        dest = Path(directory)
        dest.mkdir(parents=True, exist_ok=True)
        out = {}
        for k, p in self.artifacts.items():
            target = dest / p.name
            atomic_write_bytes(target, p.read_bytes())
            out[k] = target
        return out


def _verify(cm: CompiledModel, fp32: Any, feeds: list[dict[str, np.ndarray]]
            ) -> tuple[float, float, float]:
    """SQNR of the artifact against FP32, of the QDQ graph on the CPU reference against FP32,
    and of the artifact against that CPU reference (how faithfully the target ran the QDQ).

    The artifact runs (on the simulator) in a worker thread while the two CPU references run
    here: both release the GIL, so they overlap. One reference session per graph, made
    directly (``run_reference`` would print and hash each graph once per feed to find its
    cached session)."""
    from concurrent.futures import ThreadPoolExecutor

    from compiler.numerics import metrics
    from compiler.reference import ReferenceRunner

    def artifact() -> list[np.ndarray]:
        out: list[np.ndarray] = []
        for f in feeds:
            out += cm.run(*[f[n] for n in cm.input_names])
        return out

    refs, qdq = [], []
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="edgec-verify") as pool:
        running = pool.submit(artifact)
        fp32_ref = ReferenceRunner(fp32)
        qdq_ref = ReferenceRunner(cm.graph)
        for f in feeds:
            want = fp32_ref.run(f)
            refs += [want[v.name] for v in fp32.outputs]
            cpu = qdq_ref.run(f)
            qdq += [cpu[v.name] for v in cm.graph.outputs]
        tests = running.result()
    return (metrics(refs, tests).sqnr_db, metrics(refs, qdq).sqnr_db,
            metrics(qdq, tests).sqnr_db)


def _macs(graph: Any) -> int:
    from targets.cost import node_macs

    return sum(node_macs(n) for n in graph.nodes)


def _without_times(obj: Any) -> Any:
    """``obj`` without wall-clock entries (keys ending in ``_s``): what goes into report.json,
    which must be byte-identical for identical input."""
    if isinstance(obj, dict):
        return {k: _without_times(v) for k, v in obj.items()
                if not (isinstance(k, str) and k.endswith("_s"))}
    if isinstance(obj, list):
        return [_without_times(v) for v in obj]
    return obj


def _add_to_report_file(path: Path, key: str, value: Any) -> None:
    """Add ``key`` to the artifact's ``report.json`` (atomically, deterministically)."""
    import json

    from compiler.fileio import atomic_write_text

    data = json.loads(path.read_text())
    data[key] = value
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=True) + "\n")


def _targets(target: str | Sequence[str]) -> tuple[Any, list[str], bool]:
    """``(primary target, placement targets, explicit list)``: the primary is the NPU of the
    list (else its first entry); at most one NPU."""
    from targets import get_target

    if isinstance(target, str):
        t = get_target(target)
        return t, [t.name], False
    names = [get_target(t).name for t in target]
    if not names:
        raise TargetError("compile(): target is an empty list")
    npus = [n for n in names if n.startswith("htp-")]
    if len(npus) > 1:
        raise TargetError(f"compile(): one NPU per placement, got {npus}")
    # without an NPU the artifact is the CPU reference's (GPU partitions run there too)
    return get_target(npus[0] if npus else "cpu"), names, True


def _place(graph: Any, tgt: Any, names: list[str], explicit: bool,
           pins: Mapping[str, str] | None, precision: str) -> tuple[Any, Any, bool]:
    """Run the placement for ``compile()``: ``(placement, greedy baseline, applied)``.

    An explicit target list places by cost. One NPU target places by the ``fallback`` policy
    (capability, then small NPU islands moved to the CPU where the cost model predicts a clear
    win; a model the NPU fully supports is left alone), with any pins. The placement is applied
    (the emitter cuts partitions by it) when it is explicit, pinned, or differs from the
    greedy one; otherwise the emitter places by capability as before."""
    from passes.partition import annotate, place

    plan = list(names) if explicit else [tgt.name, "cpu"]
    if "cpu" not in plan:
        plan.append("cpu")  # the reference runs whatever the NPU does not; cost decides
    policy: Literal["cost", "fallback"] = "cost" if explicit else "fallback"
    # the graph is quantized by now: nodes cost at their encodings; float nodes at fp16 in an
    # fp16 build, else at each device's float key
    pl, base = place(graph, plan, policy, pins=pins,
                     precision="fp16" if precision == "fp16" else None, write=False)
    apply = explicit or bool(pins) or pl.assign != base.assign
    if apply:
        annotate(pl)
    return pl, base, apply


def compile(model: Any, example_inputs: Any = None, *, target: str | Sequence[str] = "htp-v75",
            precision: str = "w8a16", calibration_data: Sequence[Any] | None = None,
            overrides: Mapping[str, str] | None = None, pipeline: str | None = None,
            output_dir: str | Path | None = None, allow_cpu: bool = True,
            progress: bool | None = None, optimization_level: int = 3,
            soc_model: str | int | None = None, vtcm_mb: int | None = None,
            placement: Mapping[str, str] | None = None,
            compress: str | None = None) -> CompiledModel:
    """Compile ``model`` (an ``nn.Module`` with ``example_inputs``, an ``.onnx`` path or an
    ``onnx.ModelProto``) for ``target`` at ``precision`` (``w8a8``, ``w8a16``, ``w4a16``,
    ``fp16``, ``fp32``). ``calibration_data`` is a list of argument tuples shaped like
    ``example_inputs`` (default: the example alone, with a warning). ``overrides`` maps
    module-path globs, ``op:<Op>`` or ``node:<name>`` to precision specs. ``pipeline`` replaces
    the target's default pass pipeline. Artifacts go to ``output_dir`` (default: a temporary
    folder the returned object owns).

    Placement: ``target="htp-v75"`` puts every node the NPU takes on the NPU and the rest on the
    CPU (a fallback); ``target=["htp-v75", "cpu"]`` places every node where the predicted
    latency, transfers included, is lowest (``passes/partition``). ``placement`` pins nodes
    (module-path globs, ``op:<Op>``, ``node:<name>`` -> ``cpu``/``htp``). Either way the
    artifact is one ONNX model with an ``EPContext`` node per NPU partition and plain ONNX
    nodes for the rest; ``report["placement"]`` says where each node went and why.

    HTP build options: ``optimization_level`` (0-3, the QNN graph finalization mode),
    ``soc_model`` (a Snapdragon name or QNN SoC id recorded in the context), ``vtcm_mb`` (the
    VTCM budget; default the SoC's); ``precision="fp16"`` builds with HTP FP16 kernels.

    Compression: ``compress="lowrank{energy=0.95},prune{method=channel,sparsity=0.3}"`` (or
    ``"auto{min_sqnr_db=30}"``) runs those passes after fusion and before quantization;
    ``report["compression"]`` lists per layer what was done, why, and the measured error."""
    tgt, target_names, explicit = _targets(target)
    htp = tgt.name != "cpu"
    if htp:
        # the QNN compile's child interpreter starts now and gets ready (ONNX Runtime, the EP)
        # while the model is imported and quantized here
        from targets.hexagon_htp import qnn

        qnn.prestart()
    try:
        return _compile(model, example_inputs, tgt, target_names, explicit,
                        precision=precision, calibration_data=calibration_data,
                        overrides=overrides, pipeline=pipeline, output_dir=output_dir,
                        allow_cpu=allow_cpu, progress=progress,
                        optimization_level=optimization_level, soc_model=soc_model,
                        vtcm_mb=vtcm_mb, placement=placement, compress=compress)
    finally:
        if htp:
            qnn.release_prestarted()  # unused (a failure before emit): let it exit


def _compile(model: Any, example_inputs: Any, tgt: Any, target_names: list[str],
             explicit: bool, *, precision: str, calibration_data: Sequence[Any] | None,
             overrides: Mapping[str, str] | None, pipeline: str | None,
             output_dir: str | Path | None, allow_cpu: bool, progress: bool | None,
             optimization_level: int, soc_model: str | int | None, vtcm_mb: int | None,
             placement: Mapping[str, str] | None, compress: str | None) -> CompiledModel:
    from compiler.passes import PassManager, TimingInstrument
    from targets import target_context

    show = sys.stderr.isatty() if progress is None else progress
    times: dict[str, float] = {}
    t0 = time.perf_counter()
    graph = _load(model, example_inputs)
    times["import_s"] = time.perf_counter() - t0
    fp32 = graph.copy()

    if calibration_data is None:
        if example_inputs is None:
            raise QuantizationError("compile(): give calibration_data (or example_inputs) to "
                                    "calibrate with")
        calibration_data = [example_inputs]
        if precision not in ("fp16", "fp32"):
            import warnings

            warnings.warn("compile(): calibrating on the example input alone; pass "
                          "calibration_data=[...] with representative inputs", stacklevel=3)
    feeds = _feeds(graph, list(calibration_data))
    ctx = target_context(tgt, overrides=overrides, calibration=feeds, progress=show)
    pipe = pipeline or tgt.default_pipeline(precision)
    if compress:
        from passes.lowrank import with_compression

        pipe = with_compression(pipe, compress)
    timing = TimingInstrument()
    t0 = time.perf_counter()
    PassManager(pipe, instruments=[timing]).run(graph, ctx)
    times["passes_s"] = time.perf_counter() - t0
    times["calibrate_s"] = sum(v for k, v in timing.totals.items() if k.endswith("calibrate"))

    tmp: tempfile.TemporaryDirectory[str] | None = None
    if output_dir is None:
        tmp = tempfile.TemporaryDirectory(prefix="edgec-")
        out = Path(tmp.name)
    else:
        out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)

    def say(msg: str) -> None:
        if show:
            sys.stderr.write(f"edgec: {msg}\n")

    t0 = time.perf_counter()
    if tgt.name == "cpu":
        from compiler.frontends import save_onnx
        from compiler.ir import save_ir

        save_onnx(graph, out / "model.onnx")
        save_ir(graph, out / "model.ir")
        artifacts = {"model": out / "model.onnx", "ir": out / "model.ir"}
        emit_report: dict[str, Any] = {"target": "cpu", "cpu_nodes": [], "num_contexts": 0,
                                       "npu_nodes": 0}
        from passes.partition import place, placement_report

        cpu_pl, _ = place(graph, ["cpu"], "greedy", write=False)
        emit_report["placement"] = placement_report(cpu_pl)
    else:
        from passes.partition import family, placement_report, reevaluate
        from targets.hexagon_htp.emit import emit

        pl, base, applied = _place(graph, tgt, target_names, explicit, placement, precision)
        parts = None
        if applied:
            parts = [(family(p.target), [n for i in p.items for n in pl.problem.items[i].names])
                     for p in pl.partitions]
        emit_opts: dict[str, Any] = {
            "arch": tgt.arch, "allow_cpu": allow_cpu, "progress": say,
            "optimization_level": optimization_level, "soc_model": soc_model,
            "fp16_precision": precision == "fp16", "vtcm_mb": vtcm_mb}
        try:
            res = emit(graph, out, placement=parts, **emit_opts)
        except EmitError as e:
            if parts is None or explicit or placement:
                raise
            # the fallback policy's own placement (nobody asked for it) could not be built:
            # build the emitter's capability placement instead, and say so
            ctx.note(f"the cost-driven fallback placement could not be built ({e}); "
                     "placed by capability instead")
            res = emit(graph, out, placement=None, **emit_opts)
        artifacts = {"model": res.model, "ir": res.ir, "report": res.report_path}
        for i, b in enumerate(res.bins):
            artifacts[f"context{i}"] = b
        emit_report = dict(res.report)
        why = {c["node"]: c["reason"] for c in res.cpu_nodes}
        final = reevaluate(pl, {n.name: n.placement for n in graph.nodes if n.name}, why)
        emit_report["placement"] = placement_report(final, base)
        if any(t.startswith("gpu") for t in target_names):
            emit_report["placement"]["notes"].append(
                "gpu-adreno partitions are emitted as ONNX and run on the CPU reference on "
                "this machine")
        _add_to_report_file(res.report_path, "placement", emit_report["placement"])
    times["emit_s"] = time.perf_counter() - t0

    report: dict[str, Any] = dict(emit_report)
    report["pipeline"] = PassManager(pipe).pipeline
    report["quantization"] = ctx.report.get("quantization", {})
    report["calibration"] = ctx.report.get("calibration", {})
    report["compression"] = ctx.report.get("compression", [])
    if report["compression"] and "report" in artifacts:
        _add_to_report_file(artifacts["report"], "compression", report["compression"])
    if report["quantization"] and "report" in artifacts:
        _add_to_report_file(artifacts["report"], "quantization",
                            _without_times(report["quantization"]))
    report["notes"] = list(ctx.log)
    cm = CompiledModel(out, report, artifacts, [v.name for v in graph.inputs], tmp, graph)
    t0 = time.perf_counter()
    sq, sq_cpu, agree = _verify(cm, fp32, feeds[: min(len(feeds), 4)])
    times["verify_s"] = time.perf_counter() - t0
    report["warnings"] = []
    if tgt.name != "cpu" and agree < min(sq_cpu - 10.0, 20.0):
        report["warnings"].append(
            f"the {tgt.name} artifact disagrees with the same quantized graph on the CPU "
            f"reference ({agree:.1f} dB between them; {sq_cpu:.1f} dB on the CPU vs FP32): "
            "the target computes some quantized op differently; run 'edgec drift' on the "
            "model to find where")
    weight_bytes = 0
    for v in graph.constants.values():
        if v.const is None:
            continue
        bits = v.encoding.bits if v.encoding is not None else v.dtype.bits
        weight_bytes += (v.const.size * bits + 7) // 8
    cpu = len(emit_report.get("cpu_nodes", []))
    report["summary"] = {
        "target": tgt.name, "precision": precision, "nodes": len(graph.nodes),
        "npu_nodes": emit_report.get("npu_nodes", 0), "cpu_nodes": cpu if tgt.name != "cpu"
        else len(graph.nodes),
        "partitions": emit_report.get("num_contexts", 0),
        "placement_partitions": emit_report.get("placement", {}).get("num_partitions", 1),
        "predicted_us": emit_report.get("placement", {}).get("predicted_us"),
        "macs": _macs(graph),
        "weight_bytes": int(weight_bytes),
        "sqnr_db": None if math.isinf(sq) else round(sq, 3),
        "cpu_qdq_sqnr_db": None if math.isinf(sq_cpu) else round(sq_cpu, 3),
        "target_vs_cpu_qdq_db": None if math.isinf(agree) else round(agree, 3),
        "times_s": {k: round(v, 3) for k, v in times.items()},
    }
    return cm


"""The baselines a careful user reaches for today: ONNX Runtime's QNN quantization recipe.

``strong``: the TorchScript ``torch.onnx.export`` -> ``qnn_preprocess_model`` (fuses
LayerNorm/Gelu) -> ``get_qnn_qdq_config(per_channel=True)`` with MinMax or Percentile
calibration, with and without the overrides that decide transformer models (the softmax input's
calibrated minimum clipped above the -1e4-style mask values; LayerNorm inputs, i.e. the residual
stream, at 16 bits under 8-bit activations; each alone and both) -> QNN EP context. Every
variant is built and the best one on the held-out inputs is reported: the baseline gets every
benefit of the doubt.

``default``: ``get_qnn_qdq_config`` with its defaults (MinMax, per-tensor weights), no
preprocessing, for reference.

Both compile through the same QNN EP (``targets.hexagon_htp.qnn.compile_context``) with CPU
fallback allowed, as a user of the EP gets it, and run on the HTP simulator.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx

__all__ = ["BaselineResult", "compile_qdq", "cpu_compute_nodes", "export_torchscript",
           "rebuild", "run_compiled", "run_ort_recipe"]


@dataclass
class BaselineResult:
    """One baseline build: its outputs on held-out inputs and what the build cost."""

    variant: str
    ok: bool
    error: str = ""
    outputs: list[list[np.ndarray]] | None = None
    contexts: int = 0
    cpu_nodes: int = 0
    compile_s: float = 0.0
    params: dict[str, Any] | None = None  # the variant's recipe (``rebuild`` takes it)


def export_torchscript(module: Any, example: tuple[Any, ...], path: Path) -> list[str]:
    """``torch.onnx.export`` with the TorchScript exporter (what the ORT recipe documents);
    returns the ONNX input names."""
    import warnings

    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, example, str(path), opset_version=17, dynamo=False)
    return [i.name for i in onnx.load(str(path), load_external_data=False).graph.input]


class _Reader:
    """An ORT ``CalibrationDataReader`` over a list of feed dicts."""

    def __init__(self, feeds: Sequence[dict[str, np.ndarray]]) -> None:
        self._it = iter(list(feeds))

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._it, None)


def _softmax_input_clips(model_path: Path, feeds: Sequence[dict[str, np.ndarray]]
                         ) -> dict[str, tuple[float, float]]:
    """Calibrated range of every Softmax input with mask-like values (< -1000) left out."""
    import onnxruntime as ort

    m = onnx.load(str(model_path))
    names = [n.input[0] for n in m.graph.node if n.op_type == "Softmax"]
    if not names:
        return {}
    have = {o.name for o in m.graph.output}
    for n in names:
        if n not in have:
            m.graph.output.append(onnx.ValueInfoProto(name=n))
    so = ort.SessionOptions()
    # Exposing intermediates trips ORT's constant folding on preprocessed models
    # ("Attempt to replace the existing tensor"); the values are the same without it.
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(m.SerializeToString(), so, providers=["CPUExecutionProvider"])
    lo = {n: np.inf for n in names}
    hi = {n: -np.inf for n in names}
    for f in feeds:
        for n, arr in zip(names, sess.run(names, f)):
            real = arr[arr > -1000.0]
            if real.size:
                lo[n] = min(lo[n], float(real.min()))
                hi[n] = max(hi[n], float(real.max()))
    return {n: (lo[n], hi[n]) for n in names if np.isfinite(lo[n])}


def _overrides(model_path: Path, feeds: Sequence[dict[str, np.ndarray]], a16: bool,
               kinds: str) -> dict[str, list[dict[str, Any]]]:
    from onnxruntime.quantization import QuantType

    out: dict[str, list[dict[str, Any]]] = {}
    if "softmax" in kinds:
        for name, (lo, hi) in _softmax_input_clips(model_path, feeds).items():
            out[name] = [{"rmin": np.array(lo, np.float32), "rmax": np.array(hi, np.float32)}]
    if not a16 and "ln16" in kinds:
        m = onnx.load(str(model_path), load_external_data=False)
        for n in m.graph.node:
            if n.op_type == "LayerNormalization":
                out.setdefault(n.input[0], [{}])[0]["quant_type"] = QuantType.QUInt16
    return out


def _build(src: Path, work: Path, tag: str, calib: Sequence[dict[str, np.ndarray]], *,
           a16: bool, per_channel: bool, method: str, preprocess: bool, overrides: str,
           arch: str) -> tuple[Path, Path, float]:
    from onnxruntime.quantization import CalibrationMethod, QuantType, quantize
    from onnxruntime.quantization.execution_providers.qnn import (
        get_qnn_qdq_config,
        qnn_preprocess_model,
    )

    t0 = time.perf_counter()
    model_in = src
    if preprocess:
        pre = work / f"{tag}.pre.onnx"
        if qnn_preprocess_model(str(src), str(pre), fuse_layernorm=True):
            model_in = pre
    init = _overrides(model_in, calib, a16, overrides) if overrides else None
    kwargs: dict[str, Any] = {}
    if per_channel:
        kwargs.update(per_channel=True, weight_type=QuantType.QInt8, weight_symmetric=True)
    config = get_qnn_qdq_config(
        str(model_in), _Reader(calib),
        calibrate_method=getattr(CalibrationMethod, method),
        activation_type=QuantType.QUInt16 if a16 else QuantType.QUInt8,
        init_overrides=init, **kwargs)
    qdq = work / f"{tag}.qdq.onnx"
    quantize(str(model_in), str(qdq), config)
    ctx = compile_qdq(qdq, work, tag, arch)
    return qdq, ctx, time.perf_counter() - t0


def rebuild(onnx_path: Path, work: Path, calib: Sequence[dict[str, np.ndarray]],
            params: dict[str, Any], *, scheme: str, arch: str = "75") -> float:
    """Build one variant again (``params`` from :func:`run_ort_recipe`'s result) and return
    its quantize + compile seconds: the recipe's cost in a process that has run it before."""
    return _build(onnx_path, work, "rebuild", calib, a16=scheme == "w8a16", arch=arch,
                  **params)[2]


def compile_qdq(qdq: Path, work: Path, tag: str, arch: str) -> Path:
    """Compile a QDQ ONNX model into a QNN HTP context model the way a user of the EP gets it
    (CPU fallback allowed); returns the EPContext model's path (``<work>/<tag>.ctx/*.onnx``).
    Every baseline (ORT's recipes, AIMET's) goes through here, so they compile the same way."""
    from targets.hexagon_htp import qnn

    return qnn.compile_context(qdq, work / f"{tag}.ctx", arch=arch, allow_cpu_fallback=True,
                               name=tag).ctx_onnx


def run_compiled(label: str, ctx_path: Path, heldout: Sequence[dict[str, np.ndarray]],
                 compile_s: float) -> BaselineResult:
    """Run a compiled baseline on the held-out feeds on the HTP simulator and count its
    contexts and CPU nodes (its cycles are measured beside the other builds', in
    ``benchmarks.htp.measure_cycles``)."""
    from targets.hexagon_htp import qnn

    outs = [list(qnn.run_context(ctx_path, feed).outputs.values()) for feed in heldout]
    return BaselineResult(label, True, outputs=outs, contexts=qnn.count_contexts(ctx_path),
                          cpu_nodes=cpu_compute_nodes(ctx_path), compile_s=compile_s)


def cpu_compute_nodes(ctx_path: Path) -> int:
    """Nodes of a context model left on the CPU, not counting Q/DQ and layout glue."""
    glue = {"EPContext", "QuantizeLinear", "DequantizeLinear", "Cast"}
    m = onnx.load(str(ctx_path), load_external_data=False)
    return sum(1 for n in m.graph.node if n.op_type not in glue)


def run_ort_recipe(onnx_path: Path, work: Path, calib: Sequence[dict[str, np.ndarray]],
                   heldout: Sequence[dict[str, np.ndarray]], reference: Sequence[list[np.ndarray]],
                   *, scheme: str, arch: str = "75", strong: bool = True,
                   score: Any = None) -> tuple[BaselineResult, list[BaselineResult]]:
    """Build the strong (or default) ORT recipe for ``onnx_path`` at ``scheme`` (w8a8 or w8a16)
    and run it on the simulator. Returns the best variant by ``score(reference, outputs)``
    (higher is better) and every variant tried (``compile_s`` of each, failed ones included,
    is its quantize + compile time: their sum is what finding the best variant costs)."""
    a16 = scheme == "w8a16"
    if strong:
        kinds = ["", "softmax"] + ([] if a16 else ["ln16", "softmax+ln16"])
        variants = [dict(method=m, overrides=o, per_channel=True, preprocess=True)
                    for m in ("MinMax", "Percentile") for o in kinds]
    else:
        variants = [dict(method="MinMax", overrides="", per_channel=False, preprocess=False)]
    tried: list[BaselineResult] = []
    for i, v in enumerate(variants):
        tag = f"{'strong' if strong else 'default'}{i}"
        label = (f"{v['method']}{'+' + str(v['overrides']) if v['overrides'] else ''}"
                 f"{'+per-channel' if v['per_channel'] else ''}")
        t0 = time.perf_counter()
        try:
            _, ctx_path, secs = _build(onnx_path, work, tag, calib, a16=a16, arch=arch,
                                       **v)  # type: ignore[arg-type]
            res = run_compiled(label, ctx_path, heldout, secs)
            res.params = dict(v)
        except Exception as e:  # a baseline that fails to build is a result, not a crash
            # a failed variant still cost the user its time: count it
            res = BaselineResult(label, False, error=f"{type(e).__name__}: "
                                 f"{str(e).splitlines()[0] if str(e) else ''}"[:300],
                                 compile_s=time.perf_counter() - t0)
        tried.append(res)
    ok = [r for r in tried if r.ok and r.outputs is not None]
    if not ok:
        return tried[0], tried
    best = max(ok, key=lambda r: score(reference, r.outputs) if score else 0.0)
    return best, tried

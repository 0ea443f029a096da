"""``calibrate``: collect activation statistics by running calibration batches on the reference.

Batches (``ctx.calibration``: a list of ``{input name: array}``) go through the CPU reference
one at a time; a streaming :class:`~passes.quant.observers.Observer` per float activation keeps
only min/max and a fixed-size histogram, so memory does not grow with the number of batches.
The result is stored in ``graph.meta["_calibration"]`` (value name -> ``RangeStats``, plus the
method) and read by ``quantize``, which picks a range per bit width from the histograms (the
MSE-optimal range of a tensor depends on how many bits it gets). Leading-underscore meta is
in-memory state: it is not printed in the IR text.

Errors name what is wrong: an empty calibration set, an unknown or missing input, a batch of
the wrong shape or dtype, or NaN/Inf activations (the first tensor and the node that made it).
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import numpy as np

from compiler.errors import NumericsError, QuantizationError
from compiler.ir import Graph, Value
from compiler.passes import Pass, PassContext, PassResult, option
from passes.quant.observers import Observer, RangeStats

__all__ = ["Calibrate", "CALIBRATION_KEY", "activation_values", "calibration_of", "check_batch",
           "stream_reference"]

CALIBRATION_KEY = "_calibration"


def activation_values(graph: Graph) -> list[Value]:
    """Float values that carry data at run time: graph inputs and node outputs."""
    out = [v for v in graph.inputs if v.dtype.is_float]
    for n in graph.nodes:
        out += [v for v in n.outputs if v is not None and v.dtype.is_float]
    return out


def calibration_of(graph: Graph) -> dict[str, Any] | None:
    """What ``calibrate`` stored on ``graph`` (``{"method", "percentile", "stats"}``) or None."""
    return graph.meta.get(CALIBRATION_KEY)


def _input_channel_axis(graph: Graph) -> dict[str, int]:
    """Values that feed a layer with a constant weight, and their input-channel axis."""
    out: dict[str, int] = {}
    for n in graph.nodes:
        if len(n.inputs) < 2 or n.inputs[0] is None or n.inputs[1] is None:
            continue
        if not n.inputs[1].is_const:
            continue
        if n.op in ("Conv", "ConvTranspose"):
            out.setdefault(n.inputs[0].name, 1)
        elif n.op == "MatMul" or (n.op == "Gemm" and not n.attr("transA", 0)):
            out.setdefault(n.inputs[0].name, -1)
    return out


class _Moments:
    """Streaming per-channel mean and mean square of a layer input (for output-aware weight
    scales: the expected output error of a weight error ``d`` is about
    ``sum(var * d^2) + (sum(mean * d))^2``)."""

    def __init__(self, axis: int) -> None:
        self.axis = axis
        self.sum: np.ndarray | None = None
        self.sq: np.ndarray | None = None
        self.count = 0

    def update(self, x: np.ndarray) -> None:
        x = np.moveaxis(np.asarray(x, np.float64), self.axis, -1)
        flat = x.reshape(-1, x.shape[-1])
        s, q = flat.sum(0), (flat * flat).sum(0)
        self.sum = s if self.sum is None else self.sum + s
        self.sq = q if self.sq is None else self.sq + q
        self.count += flat.shape[0]

    def result(self) -> tuple[np.ndarray, np.ndarray]:
        assert self.sum is not None and self.sq is not None
        return self.sum / self.count, self.sq / self.count


def stream_reference(graph: Graph, batches: list[Any], outputs: list[str], ctx: PassContext,
                     desc: str) -> Iterator[tuple[int, dict[str, np.ndarray]]]:
    """Run the calibration ``batches`` through the float CPU reference one at a time, yielding
    ``(index, {name: value})`` for ``outputs`` (each batch's values are dropped before the
    next runs); a progress bar named ``desc`` shows on a terminal, or when ``ctx.progress``."""
    from compiler.reference import ReferenceRunner

    runner = ReferenceRunner(graph, outputs=outputs, qdq=False)
    bar = None
    if ctx.progress or (sys.stderr.isatty() and len(batches) > 4):
        from tqdm import tqdm

        bar = tqdm(total=len(batches), desc=desc, unit="batch", leave=False, file=sys.stderr)
    try:
        for i, batch in enumerate(batches):
            got = runner.run(check_batch(graph, i, batch))
            yield i, got
            del got
            if bar is not None:
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()


def check_batch(graph: Graph, i: int, batch: Any) -> dict[str, np.ndarray]:
    if not isinstance(batch, dict):
        raise QuantizationError(f"calibration batch {i} must map input names to arrays, not "
                                f"{type(batch).__name__}")
    names = [v.name for v in graph.inputs]
    for k in batch:
        if k not in names:
            raise QuantizationError(f"calibration batch {i} has input {k!r}, which the graph "
                                    f"does not have (inputs: {names})")
    feed = {}
    for v in graph.inputs:
        if v.name not in batch:
            raise QuantizationError(f"calibration batch {i} is missing input {v.name!r}")
        arr = np.asarray(batch[v.name])
        want = v.dtype.numpy
        if arr.dtype != want:
            if arr.dtype.kind == want.kind or (arr.dtype.kind in "fiu" and want.kind in "fiu"
                                               and np.can_cast(arr.dtype, want, "same_kind")):
                arr = arr.astype(want)
            else:
                raise QuantizationError(f"calibration batch {i}: input {v.name!r} is "
                                        f"{arr.dtype}, the graph wants {v.dtype.value}")
        if v.shape is not None:
            ok = arr.ndim == len(v.shape) and all(
                not isinstance(d, int) or d == s for d, s in zip(v.shape, arr.shape))
            if not ok:
                raise QuantizationError(f"calibration batch {i}: input {v.name!r} has shape "
                                        f"{list(arr.shape)}, the graph wants {v.type}")
        feed[v.name] = arr
    return feed


@dataclass(frozen=True)
class Calibrate(Pass):
    """Run the calibration batches through the reference and keep per-tensor statistics."""

    name: ClassVar[str] = "calibrate"
    summary: ClassVar[str] = "Collect activation ranges from calibration batches (streaming)"
    needs_finite_weights: ClassVar[bool] = True
    method: Literal["minmax", "percentile", "mse", "entropy"] = option(
        "mse", "how quantize picks a range from the statistics: mse minimises the expected "
        "rounding plus clipping error for the bit width it quantizes to")
    percentile: float = option(99.99, "kept mass for method=percentile")

    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        """Observe every float activation on every batch."""
        batches = list(ctx.calibration or [])
        if not batches:
            raise QuantizationError("calibrate: the calibration set is empty; pass at least "
                                    "one batch of inputs (calibration_data=[...] or --calib)")
        if not 0 < self.percentile <= 100:
            raise QuantizationError(f"calibrate: percentile {self.percentile} is not in (0, 100]")
        values = activation_values(graph)
        names = [v.name for v in values]
        producer = {v.name: v.producer.label() if v.producer is not None else "graph input"
                    for v in values}
        observers = {n: Observer(n) for n in names}
        moments = {n: _Moments(a) for n, a in _input_channel_axis(graph).items() if n in names}
        for i, got in stream_reference(graph, batches, names, ctx, "calibrate"):
            for n in names:  # graph order: the first bad tensor is the one reported
                try:
                    observers[n].update(got[n])
                except NumericsError as e:
                    raise QuantizationError(f"calibration batch {i}: {e} (made by "
                                            f"{producer[n]})") from None
            for n, mo in moments.items():
                mo.update(got[n])
        stats: dict[str, RangeStats] = {n: o.stats() for n, o in observers.items()}
        graph.meta[CALIBRATION_KEY] = {"method": self.method, "percentile": self.percentile,
                                       "batches": len(batches), "stats": stats,
                                       "moments": {n: m.result() for n, m in moments.items()}}
        ctx.report.setdefault("calibration", {}).update(
            {"method": self.method, "batches": len(batches), "tensors": len(stats)})
        return PassResult(True, {"tensors": len(stats), "batches": len(batches)})

"""Per-layer weight sensitivity: the output noise each layer's quantized weights add.

For each layer with a constant weight (Conv, ConvTranspose, Gemm, MatMul), the graph runs on the
CPU reference with float activations and only that layer's weight fake-quantized, and the noise
at the graph outputs is measured on the calibration batches as a fraction of their power.
Rounding errors of different layers are nearly independent, so the fractions add up to about
the noise of all weights quantized at once (the zoo UNet's 8-bit weights on its calibration
data: the sum of its layers' fractions gives 40.8 dB, all of them quantized together 41.2).
``quantize{weight_target_db=...}`` uses it to choose the layers that get 16-bit weights.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from compiler.ir import Graph, Node
from compiler.reference import ReferenceRunner

__all__ = ["weight_noise"]


def _outputs(runner: ReferenceRunner, feeds: Sequence[Mapping[str, Any]]) -> list[np.ndarray]:
    return [np.asarray(a, np.float64) for f in feeds for a in runner.run(f).values()]


def weight_noise(graph: Graph, feeds: Sequence[Mapping[str, Any]], layers: Sequence[Node],
                 fake_quant: Callable[[Node, np.ndarray], np.ndarray],
                 show: bool = False) -> dict[int, float]:
    """``{id(layer): noise / signal}`` at the graph outputs with only ``layer``'s weight (input
    1) replaced by ``fake_quant(layer, weight)``; a progress bar over the layers with ``show``.
    The graph is left as it was."""
    ref = _outputs(ReferenceRunner(graph, qdq=False), feeds)
    signal = sum(float(np.sum(r * r)) for r in ref) or 1e-30
    out: dict[int, float] = {}
    bar = None
    if show:
        from tqdm import tqdm

        bar = tqdm(total=len(layers), desc="weight sensitivity", unit="layer", leave=False,
                   file=sys.stderr)
    try:
        for n in layers:
            w = n.inputs[1]
            assert w is not None and w.const is not None
            orig = w.const
            try:
                w.const = fake_quant(n, np.asarray(orig)).astype(orig.dtype)
                got = _outputs(ReferenceRunner(graph, qdq=False), feeds)
            finally:
                w.const = orig
            out[id(n)] = sum(float(np.sum((g - r) ** 2)) for g, r in zip(got, ref)) / signal
            if bar is not None:
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    return out

"""``equalize``: cross-layer equalization of weight ranges along Conv/Gemm chains.

For ``A -> [Relu] -> B`` where output channel ``i`` of ``A`` feeds only input channel ``i`` of
``B`` (``B`` ungrouped or depthwise), ``A``'s channel ``i`` (weights and bias) is divided by
``s_i = sqrt(r_A,i / r_B,i)`` and ``B``'s input channel ``i`` multiplied by it, where ``r`` are
the channels' weight ranges: both become ``sqrt(r_A,i · r_B,i)`` (Nagel et al., "Data-Free
Quantization Through Weight Equalization and Bias Correction", 2019). ReLU is positively
homogeneous, so the function is unchanged; other activations between the two (ReLU6's fixed
clip, HardSwish, SiLU) break the chain and are skipped. Sweeps repeat ``iterations`` times so
that longer chains converge. Weights shared with another consumer are left alone.

Exact in float. It matters most for per-tensor weights; with per-channel weights (the HTP
default) it trades activation range between layers, so it is an option, not a default.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from compiler.ir import Graph, Node, Value
from compiler.passes import Pass, PassContext, PassResult, option
from compiler.rewrite import Rewriter

__all__ = ["Equalize", "equalization_pairs"]


def _const_weight(n: Node, i: int) -> np.ndarray | None:
    v = n.inputs[i] if len(n.inputs) > i else None
    if v is None or not v.is_const or v.const is None or len(v.uses) != 1:
        return None
    return v.const


def _out_axis_ok(n: Node) -> bool:
    if n.op == "Conv":
        return True
    return n.op == "Gemm" and n.attr("transB", 0) == 1 and n.attr("transA", 0) == 0


def _single_user(v: Value) -> Node | None:
    if v.is_output or len(v.uses) != 1:
        return None
    return v.uses[0][0]


def equalization_pairs(graph: Graph) -> list[tuple[Node, Node]]:
    """``(A, B)`` pairs that equalization may rescale, in graph order."""
    pairs = []
    for a in graph.nodes:
        if a.op not in ("Conv", "Gemm") or not _out_axis_ok(a) or _const_weight(a, 1) is None:
            continue
        b = _single_user(a.outputs[0])
        if b is not None and b.op == "Relu":
            b = _single_user(b.outputs[0])
        if b is None or b.op != a.op or not _out_axis_ok(b) or _const_weight(b, 1) is None:
            continue
        if len(a.inputs) > 2 and a.inputs[2] is not None and _const_weight(a, 2) is None:
            continue
        wb = _const_weight(b, 1)
        assert wb is not None
        if b.op == "Conv":
            group = int(b.attr("group", 1))  # type: ignore[arg-type]
            depthwise = group > 1 and wb.shape[1] == 1 and group == wb.shape[0]
            if group != 1 and not depthwise:
                continue
        pairs.append((a, b))
    return pairs


def _in_ranges(b: Node, wb: np.ndarray) -> np.ndarray:
    if b.op == "Conv" and int(b.attr("group", 1)) > 1:  # type: ignore[arg-type]
        return np.abs(wb).reshape(wb.shape[0], -1).max(axis=1)  # depthwise: channel i
    axes = tuple(i for i in range(wb.ndim) if i != 1)
    return np.abs(wb).max(axis=axes)


def _scale_in(b: Node, wb: np.ndarray, s: np.ndarray) -> np.ndarray:
    if b.op == "Conv" and int(b.attr("group", 1)) > 1:  # type: ignore[arg-type]
        return wb * s.reshape((-1,) + (1,) * (wb.ndim - 1))
    return wb * s.reshape((1, -1) + (1,) * (wb.ndim - 2))


@dataclass(frozen=True)
class Equalize(Pass):
    """Cross-layer equalization of Conv/Gemm chains (exact in float)."""

    name: ClassVar[str] = "equalize"
    summary: ClassVar[str] = "Cross-layer equalization of weight ranges along Conv/Gemm chains"
    iterations: int = option(3, "sweeps over the chains")

    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        """Rescale every pair, ``iterations`` times."""
        pairs = equalization_pairs(graph)
        before = _utilization(pairs)
        for _ in range(self.iterations):
            for a, b in pairs:
                wa, wb = _const_weight(a, 1), _const_weight(b, 1)
                assert wa is not None and wb is not None
                r1 = np.abs(wa).reshape(wa.shape[0], -1).max(axis=1).astype(np.float64)
                r2 = _in_ranges(b, wb).astype(np.float64)
                if r1.shape != r2.shape:
                    continue
                with np.errstate(divide="ignore", invalid="ignore"):
                    s = np.sqrt(r1 / r2)
                s = np.where(np.isfinite(s) & (r1 > 0) & (r2 > 0), s, 1.0).clip(1e-4, 1e4)
                rw = Rewriter(graph, ctx, rule="cross-layer-equalization", root=a)
                dt = wa.dtype
                col = s.reshape((-1,) + (1,) * (wa.ndim - 1))
                wa_v, wb_v = a.inputs[1], b.inputs[1]
                assert wa_v is not None and wb_v is not None
                rw.replace(wa_v, rw.const((wa / col).astype(dt), wa_v.name))
                bias = a.inputs[2] if len(a.inputs) > 2 else None
                if bias is not None and bias.const is not None:
                    rw.replace(bias, rw.const((bias.const / s).astype(dt), bias.name))
                rw.replace(wb_v, rw.const(_scale_in(b, wb, s).astype(dt), wb_v.name))
                rw.finish()
        after = _utilization(pairs)
        ctx.report.setdefault("equalization", {}).update(
            {"pairs": len(pairs), "iterations": self.iterations,
             "range_use_before": round(before, 4), "range_use_after": round(after, 4)})
        return PassResult(bool(pairs), {"pairs": len(pairs), "range-use-before": before,
                                        "range-use-after": after})


def _utilization(pairs: list[tuple[Node, Node]]) -> float:
    """Mean over the pairs' channels of ``(r_A,i / max r_A) · (r_B,i / max r_B)``: the joint
    per-tensor precision of each channel pair, which equalization maximizes (Nagel et al.)."""
    uses: list[float] = []
    for a, b in pairs:
        wa, wb = _const_weight(a, 1), _const_weight(b, 1)
        if wa is None or wb is None:
            continue
        r1 = np.abs(wa).reshape(wa.shape[0], -1).max(axis=1).astype(np.float64)
        r2 = _in_ranges(b, wb).astype(np.float64)
        if r1.shape == r2.shape and r1.max() > 0 and r2.max() > 0:
            uses.append(float((r1 / r1.max() * r2 / r2.max()).mean()))
    return float(np.mean(uses)) if uses else 1.0

"""``x / max(‖x‖₂, eps)`` over one axis becomes ``LpNormalization{p=2}``.

The PyTorch frontend spells ``F.normalize(x, dim=d)`` (the last step of every
sentence-transformers model) as ``ReduceL2 -> Clip(min=eps) -> Expand -> Div``. The HTP has no
``ReduceL2`` kernel, and the ``Div`` of that form fails HTP finalization
(``QNN_COMMON_ERROR_MEM_ALLOC``; all-MiniLM-L6-v2 at w8a16), so the whole tail would run on
the CPU after a finalize bisection; ``LpNormalization`` is one HTP kernel. Equal wherever
``‖x‖₂ >= eps`` (``eps`` is 1e-12 in ``F.normalize``); a zero vector gives 0 either way.
"""

from __future__ import annotations

from compiler.ir import Node, Value
from compiler.rewrite import Match, Rewriter
from passes.fuse import register_fusion
from passes.fusions.forms import form_rule, match, producer, scalar

__all__ = ["L2_NORMALIZE"]


def _axis(red: Node, rank: int) -> int | None:
    if red.attr("keepdims", 1) != 1:
        return None
    if "axes" in red.attrs:
        axes = list(red.attrs["axes"])  # type: ignore[call-overload]
    elif len(red.inputs) > 1 and red.inputs[1] is not None and red.inputs[1].const is not None:
        axes = red.inputs[1].const.reshape(-1).tolist()
    else:
        return None
    return int(axes[0]) % rank if len(axes) == 1 else None


def _match(root: Node) -> Match | str:
    x, den = root.inputs
    if x is None or den is None:
        return "not a division"
    nodes: list[Node] = []
    exp = producer(den, "Expand")
    if exp is not None:
        nodes.append(exp)
        den = exp.inputs[0]
    clip = producer(den, ("Clip", "Max"))
    if clip is not None:
        lo = scalar(clip.inputs[1]) if len(clip.inputs) > 1 else None
        hi = clip.inputs[2] if clip.op == "Clip" and len(clip.inputs) > 2 else None
        if lo is None or lo < 0 or lo > 1e-6 or hi is not None:
            return "the norm is not clamped below by a small epsilon only"
        nodes.append(clip)
        den = clip.inputs[0]
    red = producer(den, "ReduceL2")
    if red is None or red.inputs[0] is not x:
        return "the divisor is not the L2 norm of the dividend"
    rank = len(x.shape or ())
    axis = _axis(red, rank) if rank else None
    if axis is None:
        return "the norm is not over a single axis with keepdims"
    if root.outputs[0].shape != x.shape:
        return "the division broadcasts x"
    return match(root, [*nodes, red], x=x)


def _rewrite(m: Match, rw: Rewriter) -> Value:
    red = next(n for n in m.nodes if n.op == "ReduceL2")
    axis = _axis(red, len(m["x"].shape or ()))
    return rw.op("LpNormalization", [m["x"]], {"axis": axis, "p": 2},
                 type=m.root.outputs[0].type)


L2_NORMALIZE = register_fusion(form_rule(
    "l2-normalize", "Div", _match, _rewrite,
    "x / max(ReduceL2(x), eps) over one axis -> LpNormalization{p=2}"))

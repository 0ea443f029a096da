"""``infer-shapes``: fill unknown value types with ONNX shape inference.

The graph is exported as a *skeleton*: constants small enough to matter for shapes (shape
tensors, axes, pads) keep their data so that data propagation sees them; larger ones, and
constants known only by hash, become typed inputs, so no weight is copied. ONNX's own
inference (with data propagation) then types every value, including those of ops edgec has no
table for. Results only refine: a known dimension is never changed, a symbol ONNX invents
(``unk__0``) counts as unknown, and an element type is taken only for a value whose shape was
unknown (its type was a placeholder).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import onnx
import onnx.shape_inference

from compiler.errors import EdgecError
from compiler.ir import Graph, TensorType
from compiler.ir.core import UnresolvedConst
from compiler.ir.types import Dim
from compiler.passes import Pass, PassContext, PassResult, option

__all__ = ["InferShapes", "refine"]


def refine(old: TensorType, new: TensorType) -> TensorType:
    """``old`` with what ``new`` adds: its type when ``old``'s shape is unknown, else the
    dimensions ``old`` leaves unknown (when ranks agree)."""
    if old.shape is None:
        return new
    if new.shape is None or len(new.shape) != len(old.shape) or new.dtype is not old.dtype:
        return old
    dims: list[Dim] = [a if a is not None else b for a, b in zip(old.shape, new.shape)]
    return TensorType(old.dtype, tuple(dims))


def _skeleton(graph: Graph, keep_elements: int) -> Graph:
    g = graph.copy()
    for v in list(g.constants.values()):
        n = v.type.numel
        if isinstance(v.const_source, UnresolvedConst) or n is None or n > keep_elements:
            del g.constants[v.name]
            v.const = None
            g.inputs.append(v)
    return g


def _read_type(tp: onnx.TypeProto) -> TensorType | None:
    from compiler.frontends.onnx_import import ONNX_TO_DTYPE

    if tp.WhichOneof("value") != "tensor_type":
        return None
    tt = tp.tensor_type
    dt = ONNX_TO_DTYPE.get(tt.elem_type)
    if dt is None:
        return None
    if not tt.HasField("shape"):
        return TensorType(dt, None)
    dims: list[Dim] = []
    for d in tt.shape.dim:
        if d.HasField("dim_value") and d.dim_value >= 0:
            dims.append(int(d.dim_value))
        elif d.HasField("dim_param") and d.dim_param and not d.dim_param.startswith("unk__"):
            dims.append(d.dim_param)
        else:
            dims.append(None)
    return TensorType(dt, tuple(dims))


@dataclass(frozen=True)
class InferShapes(Pass):
    """Fill unknown output types (dtype and shape) of every node."""

    name: ClassVar[str] = "infer-shapes"
    summary: ClassVar[str] = "Fill unknown value types with ONNX shape inference"
    keep_elements: int = option(4096, "constants up to this many elements keep their data "
                                "for data propagation")

    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        """Export a skeleton, infer, and refine every node output's type."""
        if not any(not o.type.is_static for n in graph.nodes for o in n.outputs):
            return PassResult(False)
        from compiler.frontends.onnx_export import to_onnx

        try:
            model = to_onnx(_skeleton(graph, self.keep_elements), materialize_qdq=False)
            inferred = onnx.shape_inference.infer_shapes(model, check_type=False,
                                                         strict_mode=False, data_prop=True)
        except (EdgecError, onnx.shape_inference.InferenceError, RuntimeError) as e:
            ctx.note(f"shape inference failed, types left as they are: {e}")
            return PassResult(False, {"failed": 1})
        found: dict[str, Any] = {}
        for vi in (*inferred.graph.value_info, *inferred.graph.output):
            found[vi.name] = vi.type
        refined = 0
        for n in graph.nodes:
            for o in n.outputs:
                tp = found.get(o.name)
                new = _read_type(tp) if tp is not None else None
                if new is None:
                    continue
                t = refine(o.type, new)
                if t != o.type:
                    o.type = t
                    refined += 1
        return PassResult(bool(refined), {"refined": refined})

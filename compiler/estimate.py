"""``compiler.estimate()``: predicted latency of a model on a target, per node, without compiling.

    est = compiler.estimate(module, target="htp-v75", precision="w8a8", example_inputs=(x,))
    est["totals"]["seconds"], est["nodes"][0]   # {"op", "name", "seconds", "macs", "bytes",
                                                #  "bound", ...}

The model is imported and run through the target's float pass pipeline (canonicalize, fuse,
...: the graph ``compile()`` would quantize), then costed by the roofline model of
:mod:`targets.cost`. Quantized precisions are estimated from the scheme alone, without
calibrating: ``w8a8`` costs every node at ``a8w8``, ``w8a16`` (and ``w4a16``) at ``a16w8``;
nodes that already carry encodings (an IR graph that was quantized) keep theirs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = ["estimate"]


def _load(model: Any, example_inputs: Any) -> tuple[Any, bool]:
    """``(graph, owned)``: the IR graph of ``model`` and whether it is a fresh copy."""
    from compiler.errors import ModelLoadError
    from compiler.frontends import load_onnx, load_torch
    from compiler.ir import Graph

    if isinstance(model, Graph):
        return model, False
    if isinstance(model, (str, Path)):
        if not str(model).endswith(".onnx"):
            raise ModelLoadError(f"{model}: estimate() takes an .onnx path, an onnx.ModelProto, "
                                 "an IR Graph or an nn.Module")
        return load_onnx(str(model)), True
    try:
        import onnx

        if isinstance(model, onnx.ModelProto):
            return load_onnx(model), True
    except ImportError:  # pragma: no cover - onnx is a dependency
        pass
    if example_inputs is None:
        raise ModelLoadError("estimate(): a PyTorch module needs example_inputs")
    inputs = tuple(example_inputs) if isinstance(example_inputs, (tuple, list)) else (
        example_inputs,)
    return load_torch(model, inputs), True


def estimate(model: Any, target: str = "htp-v75", precision: str = "w8a8",
             example_inputs: Any = None, *, optimize: bool = True) -> dict[str, Any]:
    """Predict the latency of ``model`` on ``target`` at ``precision``.

    ``model`` is an IR :class:`~compiler.ir.Graph` (not modified: it is costed on a copy), an
    ``nn.Module`` with ``example_inputs``, an ``.onnx`` path or an ``onnx.ModelProto``. With
    ``optimize`` (default) the target's float pipeline runs first, unless the graph already
    carries quantization encodings (it is then costed as it is).

    Returns a JSON-ready dict: ``target``, ``device``, ``precision``, ``precision_key``,
    ``nodes`` (one entry per graph node, in order: ``name``, ``op``, ``seconds``, ``macs``,
    ``bytes``, ``dram_bytes``, ``bound`` of ``compute``/``memory``/``fused``, ...) and
    ``totals`` (``seconds``, ``ms``, ``macs``, ``bytes``, overheads, bound counts).
    Raises :class:`~compiler.errors.TargetError` for an unknown target or a precision the
    target's device has no throughput for (quantized precisions on ``gpu-adreno``).
    """
    from compiler.passes import PassContext, PassManager
    from targets import get_target
    from targets.cost import device_of, graph_cost, scheme_key

    tgt = get_target(target)
    device = device_of(tgt)
    key = scheme_key(precision)
    graph, owned = _load(model, example_inputs)
    quantized = any(v.encoding is not None for v in graph.values())
    if optimize and not quantized:
        if not owned:
            graph = graph.copy()
        PassManager(tgt.default_pipeline("fp32")).run(graph, PassContext(target=tgt.name))
    cost = graph_cost(graph, device, key)
    nodes = [n.to_dict() for n in cost.nodes]
    bounds = {b: sum(1 for n in cost.nodes if n.bound == b)
              for b in ("compute", "memory", "fused")}
    totals = {
        "seconds": cost.seconds, "ms": cost.seconds * 1e3, "macs": cost.macs,
        "bytes": cost.bytes, "dram_bytes": sum(n.dram_bytes for n in cost.nodes),
        "weight_bytes": sum(n.weight_bytes for n in cost.nodes),
        "compute_s": sum(n.compute_s for n in cost.nodes),
        "memory_s": sum(n.memory_s for n in cost.nodes),
        "op_overhead_s": sum(n.overhead_s for n in cost.nodes),
        "graph_overhead_s": cost.overhead_s, "nodes": len(nodes),
        **{f"{b}_bound" if b != "fused" else "fused": c for b, c in bounds.items()},
    }
    return {"target": tgt.name, "device": device.name, "precision": precision,
            "precision_key": key, "nodes": nodes, "totals": totals}

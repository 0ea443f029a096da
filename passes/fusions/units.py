"""Units: groups of nodes that are quantized and placed as one, marked in ``meta["unit"]``.

- ``attention``: ``MatMul(q, k)`` -> optional scale (``Mul``/``Div`` by a constant) ->
  optional mask ``Add`` -> ``Softmax`` -> ``MatMul(p, v)``, the scaled-dot-product core of
  every attention layer. The quantizer keeps its scores and probabilities at 16 bits under
  ``w8a8`` auto; the HTP emitter places the unit on one side as a whole.
- ``silu``: ``x · Sigmoid(x)`` (SiLU/Swish, which ONNX spells out before opset 24).
- ``rmsnorm``: the canonical RMSNorm that ``fuse`` writes (see ``norms.py``).

Units are numbered in graph order (``"attention:0"``, ...), so the same graph gets the same
marks. Marking changes no computation.
"""

from __future__ import annotations

from compiler.ir import Graph, Node, Value
from passes.fusions.forms import producer, scalar, single_use

__all__ = ["annotate_units", "rms_input", "unit_members"]


def _attention(sm: Node) -> list[Node] | None:
    out = sm.outputs[0]
    if not single_use(out):
        return None
    pv = out.uses[0][0]
    if pv.op != "MatMul" or pv.domain or pv.inputs[0] is not out:
        return None
    members = [sm, pv]
    v = sm.inputs[0]
    add = producer(v, "Add")
    if add is not None and v is not None and single_use(v):
        a, b = add.inputs
        if producer(a, ("MatMul", "Mul", "Div")) is None:
            a, b = b, a
        if producer(a, ("MatMul", "Mul", "Div")) is not None:
            members.append(add)
            v = a
    scale = producer(v, ("Mul", "Div"))
    if scale is not None and v is not None and single_use(v):
        a, b = scale.inputs
        if scale.op == "Mul" and scalar(a) is not None:
            a, b = b, a
        if scalar(b) is not None:
            members.append(scale)
            v = a
    qk = producer(v, "MatMul")
    if qk is None or v is None or not single_use(v):
        return None
    members.append(qk)
    return members


def _silu(mul: Node) -> list[Node] | None:
    a, b = mul.inputs
    for x, s in ((a, b), (b, a)):
        sig = producer(s, "Sigmoid")
        if sig is not None and s is not None and sig.inputs[0] is x and single_use(s):
            return [sig, mul]
    return None


def annotate_units(graph: Graph) -> dict[str, int]:
    """Mark attention, SiLU and RMSNorm units in ``meta["unit"]``; returns counts by kind."""
    for n in graph.nodes:
        n.meta.pop("unit", None)
    counts: dict[str, int] = {}

    def mark(kind: str, nodes: list[Node]) -> None:
        if any("unit" in n.meta for n in nodes):
            return
        i = counts.get(kind, 0)
        counts[kind] = i + 1
        for n in nodes:
            n.meta["unit"] = f"{kind}:{i}"

    for n in graph.nodes:
        if n.domain:
            continue
        if n.op == "Softmax":
            got = _attention(n)
            if got:
                mark("attention", got)
        elif n.op == "Mul":
            got = _silu(n)
            if got:
                mark("silu", got)
            if n.meta.get("fused") == "RMSNormalization":
                mark("rmsnorm", _rms_members(n))
    return counts


def _rms_members(last: Node) -> list[Node]:
    """The nodes the rms-norm rule made for this unit (walking back through its own nodes)."""
    seen: list[Node] = []
    stack = [last]
    while stack:
        n = stack.pop()
        if n in seen or n.meta.get("rule") != "rms-norm":
            continue
        seen.append(n)
        stack.extend(v.producer for v in n.inputs if v is not None and v.producer is not None)
    return seen


def unit_members(graph: Graph) -> dict[str, list[Node]]:
    """Nodes by unit name."""
    out: dict[str, list[Node]] = {}
    for n in graph.nodes:
        u = n.meta.get("unit")
        if isinstance(u, str):
            out.setdefault(u, []).append(n)
    return out


def rms_input(last: Node) -> Value | None:
    """The normalized input of the canonical RMSNorm ending at ``last`` (its ``x·x``)."""
    for n in _rms_members(last):
        if n.op == "Mul" and n.inputs[0] is n.inputs[1]:
            return n.inputs[0]
    return None

"""Written-out activations become the ONNX op the HTP runs as one kernel.

- erf-GELU ``0.5·x·(1+erf(x/√2))`` -> ``Gelu``; tanh-GELU
  ``0.5·x·(1+tanh(√(2/π)·(x+0.044715·x³)))`` -> ``Gelu{approximate="tanh"}``, in any order of
  the factors. The QNN EP has no ``Erf`` kernel, so an unfused erf-GELU splits the graph into
  several HTP contexts with CPU nodes between them (``../shared/QNN_NOTES.md``).
- HardSwish ``x·clip(x+3, 0, 6)/6`` or ``x·HardSigmoid(x)`` -> ``HardSwish``.

Exact up to float rounding (the constants are matched to a relative 1e-3).
"""

from __future__ import annotations

import math

from compiler.ir import Node, Value
from compiler.rewrite import Match, Rewriter
from passes.fuse import register_fusion
from passes.fusions.forms import close, factors, form_rule, match, producer, scalar

__all__ = ["ERF_GELU", "TANH_GELU", "HARD_SWISH"]


def _one_plus(v: Value, op: str) -> tuple[Node, Node] | None:
    """``v = 1 + op(t)``: the Add and the ``op`` node."""
    add = producer(v, "Add")
    if add is None or len(add.inputs) != 2:
        return None
    a, b = add.inputs
    if scalar(a) == 1.0:
        a, b = b, a
    if scalar(b) != 1.0 or a is None:
        return None
    inner = producer(a, op)
    return (add, inner) if inner is not None else None


def _gelu_split(root: Node, op: str) -> tuple[Value, Node, Node, list[Node]] | str:
    """The root as ``0.5 · x · (1 + op(t))``: x, the Add, the ``op`` node, product nodes."""
    p = factors(root.outputs[0])
    if p is None or p.const is not None or not close(p.coef, 0.5):
        return "not 0.5 times a product"
    terms = p.values(1)
    if len(terms) != 2 or len(p.terms) != 2:
        return "not a product of two values"
    for x, other in ((terms[0], terms[1]), (terms[1], terms[0])):
        got = _one_plus(other, op)
        if got is not None:
            return x, got[0], got[1], p.nodes
    return f"no (1 + {op}(..)) factor"


def _match_erf_gelu(root: Node) -> Match | str:
    got = _gelu_split(root, "Erf")
    if isinstance(got, str):
        return got
    x, add, erf, nodes = got
    q = factors(erf.inputs[0], root=False)  # type: ignore[arg-type]
    if q is None or q.const is not None or q.terms != [(x, 1)]:
        return "the Erf argument is not a multiple of x"
    if not close(q.coef, 1 / math.sqrt(2)):
        return f"the Erf argument is x times {q.coef:.4g}, not 1/sqrt(2)"
    return match(root, [*nodes, add, erf, *q.nodes], x=x)


def _is_cube(p_terms: list[tuple[Value, int]], x: Value) -> list[Node] | None:
    if p_terms == [(x, 1)] * 3:
        return []
    if len(p_terms) == 1 and p_terms[0][1] == 1:
        pw = producer(p_terms[0][0], "Pow")
        if pw is not None and pw.inputs[0] is x and scalar(pw.inputs[1]) == 3.0:
            return [pw]
    return None


def _match_tanh_gelu(root: Node) -> Match | str:
    got = _gelu_split(root, "Tanh")
    if isinstance(got, str):
        return got
    x, add, tanh, nodes = got
    q = factors(tanh.inputs[0], root=False)  # type: ignore[arg-type]
    if q is None or q.const is not None or len(q.terms) != 1 or q.terms[0][1] != 1:
        return "the Tanh argument is not a multiple of one value"
    if not close(q.coef, math.sqrt(2 / math.pi)):
        return f"the Tanh argument is scaled by {q.coef:.4g}, not sqrt(2/pi)"
    s = producer(q.terms[0][0], "Add")
    if s is None or len(s.inputs) != 2:
        return "the Tanh argument is not x + c·x³"
    a, b = s.inputs
    if b is x:
        a, b = b, a
    if a is not x or b is None:
        return "the Tanh argument is not x + c·x³"
    c = factors(b, root=False)
    cube = None if c is None or c.const is not None else _is_cube(c.terms, x)
    if c is None or cube is None or not close(c.coef, 0.044715):
        return "the Tanh argument is not x + 0.044715·x³"
    return match(root, [*nodes, add, tanh, *q.nodes, s, *c.nodes, *cube], x=x)


def _gelu(approximate: str):  # type: ignore[no-untyped-def]
    def rewrite(m: Match, rw: Rewriter) -> Value:
        attrs = {"approximate": approximate} if approximate != "none" else {}
        return rw.op("Gelu", [m["x"]], attrs, type=m.root.outputs[0].type)
    return rewrite


def _match_hard_swish(root: Node) -> Match | str:
    p = factors(root.outputs[0])
    if p is None or p.const is not None or len(p.terms) != 2 or p.values(1) != [
            v for v, _ in p.terms]:
        return "not a product of two values"
    a, b = p.values(1)
    for x, g in ((a, b), (b, a)):
        hs = producer(g, "HardSigmoid")
        if hs is not None and hs.inputs[0] is x and close(p.coef, 1.0):
            if close(hs.attr("alpha", 0.2), 1 / 6) and close(hs.attr("beta", 0.5), 0.5):
                return match(root, [*p.nodes, hs], x=x)
        clip = producer(g, "Clip")
        if clip is not None and close(p.coef, 1 / 6) and len(clip.inputs) == 3:
            lo, hi = scalar(clip.inputs[1]), scalar(clip.inputs[2])
            add = producer(clip.inputs[0], "Add")
            if lo == 0.0 and hi == 6.0 and add is not None:
                u, w = add.inputs
                if w is x:
                    u, w = w, u
                if u is x and scalar(w) == 3.0:
                    return match(root, [*p.nodes, clip, add], x=x)
    return "not x·HardSigmoid(x) or x·clip(x+3, 0, 6)/6"


ERF_GELU = register_fusion(form_rule(
    "erf-gelu", "Mul", _match_erf_gelu, _gelu("none"),
    "0.5·x·(1+erf(x/√2)) in any factor order -> Gelu"))
TANH_GELU = register_fusion(form_rule(
    "tanh-gelu", "Mul", _match_tanh_gelu, _gelu("tanh"),
    "0.5·x·(1+tanh(√(2/π)(x+0.044715x³))) -> Gelu{approximate=tanh}"))
HARD_SWISH = register_fusion(form_rule(
    "hard-swish", ("Mul", "Div"), _match_hard_swish,
    lambda m, rw: rw.op("HardSwish", [m["x"]], type=m.root.outputs[0].type),
    "x·clip(x+3,0,6)/6 or x·HardSigmoid(x) -> HardSwish"))

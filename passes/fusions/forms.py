"""Matching written-out math: products of factors, for fusions whose exporters vary the order.

An erf-GELU arrives as ``0.5*x*(1+erf(x/√2))``, ``x*(1+erf(x*0.7071))*0.5`` and other
spellings; a fixed tree pattern per spelling does not scale. :func:`factors` flattens a tree
of ``Mul`` and ``Div`` nodes into a product (non-constant factors with exponents ±1, scalar
constants multiplied out, at most one non-scalar constant kept apart), and :class:`FormRule`
is a :class:`~compiler.rewrite.Rule` whose match is a function instead of a tree pattern.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from compiler.ir import Node, Value
from compiler.rewrite import Match, Pat, Rule

__all__ = ["Product", "factors", "FormRule", "scalar", "producer", "single_use", "close"]


def scalar(v: Value | None) -> float | None:
    """The value of a constant with one element, else None."""
    if v is None or not v.is_const:
        return None
    arr = v.const
    if arr is None or arr.size != 1 or not np.issubdtype(arr.dtype, np.floating):
        return None
    return float(arr.reshape(()))


def close(a: float | None, b: float, rtol: float = 1e-3) -> bool:
    """``a`` is within ``rtol`` of ``b``."""
    return a is not None and abs(a - b) <= rtol * abs(b)


def producer(v: Value | None, op: str | tuple[str, ...]) -> Node | None:
    """The node of op ``op`` that produces ``v``, or None."""
    if v is None or v.producer is None:
        return None
    ops = (op,) if isinstance(op, str) else op
    return v.producer if v.producer.op in ops and not v.producer.domain else None


def single_use(v: Value) -> bool:
    """``v`` feeds exactly one node input and is not a graph output."""
    return len(v.uses) == 1 and not v.is_output


@dataclass
class Product:
    """``coef * const * prod(value ** exp)``: scalar coefficient, at most one non-scalar
    constant, and the non-constant factors in order."""

    coef: float = 1.0
    const: np.ndarray | None = None
    terms: list[tuple[Value, int]] = field(default_factory=list)
    nodes: list[Node] = field(default_factory=list)

    def values(self, exp: int = 1) -> list[Value]:
        """The non-constant factors with exponent ``exp``."""
        return [v for v, e in self.terms if e == exp]


def factors(v: Value, root: bool = True) -> Product | None:
    """Flatten the ``Mul``/``Div`` tree that produces ``v`` (inner nodes must have one use).
    None when two non-scalar constants meet."""
    p = Product()
    ok = _collect(v, 1, p, root)
    return p if ok else None


def _collect(v: Value, exp: int, p: Product, root: bool) -> bool:
    s = scalar(v)
    if s is not None:
        if exp < 0 and s == 0.0:
            return False
        p.coef *= s if exp > 0 else 1.0 / s
        return True
    if v.is_const:
        if p.const is not None or exp < 0 or v.const is None:
            return False
        p.const = v.const
        return True
    n = producer(v, ("Mul", "Div"))
    if n is None or (not root and not single_use(v)) or len(n.inputs) != 2:
        p.terms.append((v, exp))
        return True
    p.nodes.append(n)
    a, b = n.inputs
    if a is None or b is None:
        return False
    return (_collect(a, exp, p, False)
            and _collect(b, exp if n.op == "Mul" else -exp, p, False))


MatchFn = Callable[[Node], "Match | str"]


@dataclass(frozen=True)
class FormRule(Rule):
    """A rule whose match is ``matcher(node) -> Match | reason``; ``pattern`` only names the
    root op(s). Matched non-root nodes must be used only inside the match."""

    matcher: MatchFn | None = None

    def try_match(self, node: Node) -> Match | str:
        """Run the matcher, then the exclusivity check and ``check``."""
        if not self.pattern.accepts(node.qualified_op):
            return f"{node.label()} is not {' or '.join(self.pattern.ops)}"
        assert self.matcher is not None
        m = self.matcher(node)
        return m if isinstance(m, str) else self.accept(m, exclusive=True)


def form_rule(name: str, root_ops: str | tuple[str, ...], matcher: MatchFn,
              rewrite: Callable[..., object], doc: str) -> FormRule:
    """Build a :class:`FormRule`."""
    return FormRule(name, Pat(root_ops, ...), rewrite, doc=doc,  # type: ignore[arg-type]
                    matcher=matcher)


def match(root: Node, nodes: list[Node], **values: Value) -> Match:
    """A :class:`Match` over ``nodes`` (root first, duplicates dropped)."""
    uniq = list({id(n): n for n in [root, *nodes]}.values())
    return Match(root, uniq, dict(values), {})

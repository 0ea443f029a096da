"""Property tests on random valid graphs.

The generator builds DAGs of elementwise, matmul, reshape, transpose, concat, reduce, cast,
shape and constant ops with consistent static shapes, seasoned with what the passes look for
(x*1, Identity, Dropout, transpose pairs, foldable constant chains, duplicated nodes, dead
nodes) and with some output types forgotten. Every pass, and ``canonicalize`` as a whole, must
keep the outputs the reference computes; the verifier must catch every corruption injected
into such a graph, naming the node (or the value, for a graph output).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from compiler.errors import VerifyError
from compiler.ir import DType, Graph, Node, TensorType, Value, print_graph
from compiler.passes import PassManager
from compiler.reference import run_reference

F32 = DType.F32
UNARY = ["Relu", "Neg", "Abs", "Sigmoid", "Tanh", "Identity"]
BINARY = ["Add", "Sub", "Mul", "Max", "Min"]
KINDS = ["unary", "dropout", "binary", "binary", "matmul", "reshape", "transpose", "concat",
         "reduce", "cast", "const-chain", "shape-chain", "identity-const", "duplicate"]
PASSES = ["infer-shapes", "fold-constants", "remove-noops", "simplify-algebra",
          "eliminate-common-subexpressions", "eliminate-dead-code", "sort-topologically",
          "fuse", "canonicalize"]

SETTINGS = settings(max_examples=40, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


class _Builder:
    """Draws ops onto a graph; ``pool`` holds the values later ops may read."""

    def __init__(self, draw: st.DrawFn) -> None:
        self.draw = draw
        self.rng = np.random.default_rng(draw(st.integers(0, 2**16)))
        self.g = Graph("random")
        self.pool: list[Value] = []

    def shape(self, max_rank: int = 3) -> tuple[int, ...]:
        rank = self.draw(st.integers(1, max_rank))
        return tuple(self.draw(st.integers(1, 4)) for _ in range(rank))

    def const(self, shape: tuple[int, ...], fill: float | None = None, dtype: type = np.float32
              ) -> Value:
        if fill is not None:
            arr = np.full(shape, fill, dtype=dtype)
        elif dtype is np.float32:
            arr = self.rng.standard_normal(shape).astype(np.float32)
        else:
            arr = np.asarray(self.rng.integers(0, 3, shape), dtype=dtype)
        return self.g.const(arr, "c")

    def node(self, op: str, inputs: list[Value | None], shape: tuple[int, ...] | None,
             attrs: dict | None = None, dtype: DType = F32) -> Value:
        n = self.g.make_node(op, inputs, attrs, types=[TensorType(dtype, shape)])
        return n.outputs[0]

    def pick(self) -> Value:
        # Float tensors of rank >= 1 (scalars and shape values are outputs only).
        return self.draw(st.sampled_from([v for v in self.pool if v.shape and v.dtype is F32]))

    def add(self, kind: str) -> None:
        x = self.pick()
        xs: tuple[int, ...] = x.shape  # type: ignore[assignment]
        rank = len(xs)
        out: Value
        if kind == "unary":
            out = self.node(self.draw(st.sampled_from(UNARY)), [x], xs)
        elif kind == "dropout":
            out = self.node("Dropout", [x], xs)
        elif kind == "binary":
            same = [v for v in self.pool if v.shape == xs and v is not x]
            how = self.draw(st.sampled_from(["value", "suffix", "grow"]))
            if how == "value" and same:
                other, shape = self.draw(st.sampled_from(same)), xs
            elif how == "grow" and rank < 4:
                other, shape = self.const((2, *xs)), (2, *xs)
            else:
                k = self.draw(st.integers(0, rank))
                suffix = tuple(d if self.draw(st.booleans()) else 1 for d in xs[rank - k:])
                fill = self.draw(st.sampled_from([None, None, 0.0, 1.0]))
                other, shape = self.const(suffix, fill), xs
            a, b = (x, other) if self.draw(st.booleans()) else (other, x)
            out = self.node(self.draw(st.sampled_from(BINARY)), [a, b], shape)
        elif kind == "matmul":
            n = self.draw(st.integers(1, 4))
            out = self.node("MatMul", [x, self.const((xs[-1], n))], (*xs[:-1], n))
        elif kind == "reshape":
            numel = int(np.prod(xs))
            target = self.draw(st.sampled_from([xs, (numel,), (1, numel), tuple(reversed(xs))]))
            spec = list(target)
            if self.draw(st.booleans()):
                spec[self.draw(st.integers(0, len(spec) - 1))] = -1
            out = self.node("Reshape", [x, self.g.const(np.array(spec, np.int64), "shape")],
                            target)
        elif kind == "transpose":
            perm = list(self.draw(st.permutations(range(rank))))
            out = self.node("Transpose", [x], tuple(xs[p] for p in perm), {"perm": perm})
            if self.draw(st.booleans()):  # undo it again: a pair that cancels
                inv = [perm.index(i) for i in range(rank)]
                out = self.node("Transpose", [out], xs, {"perm": inv})
        elif kind == "concat":
            axis = self.draw(st.integers(-rank, rank - 1))
            other = x if self.draw(st.booleans()) else self.const(xs)
            shape = list(xs)
            shape[axis] *= 2
            out = self.node("Concat", [x, other], tuple(shape), {"axis": axis})
        elif kind == "reduce":
            axis = self.draw(st.integers(0, rank - 1))
            keep = self.draw(st.integers(0, 1))
            shape = tuple(1 if i == axis else d for i, d in enumerate(xs) if keep or i != axis)
            if self.draw(st.booleans()):
                axes = self.g.const(np.array([axis], np.int64), "axes")
                out = self.node("ReduceSum", [x, axes], shape, {"keepdims": keep})
            else:
                out = self.node("ReduceMax", [x], shape, {"axes": [axis], "keepdims": keep})
        elif kind == "cast":
            out = self.node("Cast", [x], xs, {"to": 1})
        elif kind == "const-chain":  # a computation on constants only, then used
            t = self.node(self.draw(st.sampled_from(BINARY)), [self.const(xs), self.const(xs)], xs)
            t = self.node("Neg", [t], xs)
            out = self.node("Mul", [x, t], xs)
        elif kind == "shape-chain":  # Shape -> Cast, folds when the shape is static
            s = self.node("Shape", [x], (rank,), dtype=DType.I64)
            out = self.node("Cast", [s], (rank,), {"to": 1})
        elif kind == "identity-const":  # x op 0/1 and 0/1 op x: some are x, some are not
            op = self.draw(st.sampled_from(["Add", "Sub", "Mul", "Div", "Pow"]))
            c = self.const(self.draw(st.sampled_from([(1,), xs[-1:], xs])),
                           self.draw(st.sampled_from([0.0, 1.0])))
            out = self.node(op, [x, c] if self.draw(st.booleans()) else [c, x], xs)
        else:  # duplicate an existing node: work for CSE
            nodes = [n for n in self.g.nodes if len(n.outputs) == 1]
            if not nodes:
                return
            n = self.draw(st.sampled_from(nodes))
            out = self.g.make_node(n.op, n.inputs, dict(n.attrs), types=[n.outputs[0].type],
                                   domain=n.domain).outputs[0]
        self.pool.append(out)


@st.composite
def graphs(draw: st.DrawFn) -> Graph:
    """A random valid graph with static input shapes."""
    b = _Builder(draw)
    for i in range(draw(st.integers(1, 2))):
        b.pool.append(b.g.add_input(f"x{i}", TensorType(F32, b.shape())))
    for _ in range(draw(st.integers(1, 12))):
        b.add(draw(st.sampled_from(KINDS)))
    produced = [v for v in b.pool if v.producer is not None]
    assume(produced)
    outs = draw(st.lists(st.sampled_from(produced), min_size=1, max_size=3, unique_by=id))
    b.g.outputs = [produced[-1], *[o for o in outs if o is not produced[-1]]]
    for n in b.g.nodes:  # forget some types: passes must cope (infer-shapes fills them)
        if draw(st.integers(0, 4)) == 0:
            n.outputs[0].type = TensorType(n.outputs[0].dtype, None)
    b.g.verify()
    return b.g


def _feed(g: Graph) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {v.name: rng.standard_normal(v.shape).astype(np.float32)  # type: ignore[arg-type]
            for v in g.inputs}


@pytest.mark.parametrize("pipeline", PASSES)
@SETTINGS
@given(g=graphs())
def test_pass_keeps_reference_outputs(pipeline: str, g: Graph) -> None:
    feed = _feed(g)
    want = run_reference(g, feed)
    text = print_graph(g)
    PassManager(pipeline).run(g)  # verifies after each pass
    got = run_reference(g, feed)
    assert list(got) == list(want), f"output names changed by {pipeline}:\n{text}"
    for name in want:
        np.testing.assert_allclose(got[name], want[name], rtol=1e-5, atol=1e-5,
                                   err_msg=f"{pipeline} changed %{name} of\n{text}")


# -- the verifier catches corruptions -------------------------------------------------------

BINDS_T = {"Relu", "Neg", "Abs", "Sigmoid", "Tanh", "Identity", "Add", "Sub", "Mul", "Max",
           "Min", "MatMul", "Concat", "Transpose", "Reshape", "ReduceSum", "ReduceMax",
           "Dropout"}


def _cycle(g: Graph, draw: st.DrawFn) -> list[Node]:
    edges = [(v.producer, n) for n in g.nodes for v in n.inputs
             if v is not None and v.producer is not None and n.inputs[0] is not None]
    assume(edges)
    a, b = draw(st.sampled_from(edges))
    a.set_input(0, b.outputs[0])  # a -> b -> a
    return [a, b]


def _undefined_use(g: Graph, draw: st.DrawFn) -> list[Node]:
    n = draw(st.sampled_from(list(g.nodes)))
    n.set_input(0, Value("ghost", TensorType(F32, (1,))))
    return [n]


def _double_definition(g: Graph, draw: st.DrawFn) -> list[Node]:
    n = draw(st.sampled_from(list(g.nodes)))
    n.outputs[0].name = g.inputs[0].name
    return [n]


def _wrong_dtype(g: Graph, draw: st.DrawFn) -> list[Node]:
    nodes = [n for n in g.nodes if n.op in BINDS_T]
    assume(nodes)
    n = draw(st.sampled_from(nodes))
    n.outputs[0].type = n.outputs[0].type.with_dtype(DType.I32)
    return [n]


def _bad_attribute(g: Graph, draw: st.DrawFn) -> list[Node]:
    n = draw(st.sampled_from(list(g.nodes)))
    if draw(st.booleans()):
        n.attrs["bogus"] = 1
    else:
        n.attrs[draw(st.sampled_from(["perm", "axis", "keepdims"]))] = "not a number"
    return [n]


def _shape_mismatch(g: Graph, draw: st.DrawFn) -> list[Node]:
    nodes = [n for n in g.nodes if n.op in BINARY or n.op == "MatMul"]
    assume(nodes)
    n = draw(st.sampled_from(nodes))
    a, b = n.inputs
    assert a is not None and b is not None
    a.type, b.type = TensorType(F32, (2, 3)), TensorType(F32, (4, 5))
    return [u for v in (a, b) for u, _ in v.uses]  # any reader of the two may be named


def _orphan_output(g: Graph, draw: st.DrawFn) -> list[Node]:
    g.outputs.append(Value("orphan", TensorType(F32, (1,))))
    return []


CORRUPTIONS: dict[str, Callable[[Graph, st.DrawFn], list[Node]]] = {
    "cycle": _cycle, "undefined use": _undefined_use, "double definition": _double_definition,
    "wrong dtype": _wrong_dtype, "bad attribute": _bad_attribute,
    "shape mismatch": _shape_mismatch, "output with no producer": _orphan_output,
}
MESSAGES = {
    "cycle": "cycle through node", "undefined use": "uses %ghost, which is not defined",
    "double definition": "is defined twice", "wrong dtype": "is i32 but",
    "bad attribute": "attribute", "shape mismatch": "",
    "output with no producer": "graph output %orphan is not produced by any node",
}


@pytest.mark.parametrize("corruption", list(CORRUPTIONS))
@settings(max_examples=30, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
@given(g=graphs(), data=st.data())
def test_verifier_catches_corruption(corruption: str, g: Graph, data: st.DataObject) -> None:
    suspects = CORRUPTIONS[corruption](g, data.draw)
    with pytest.raises(VerifyError) as e:
        g.verify()
    msg = str(e.value)
    assert MESSAGES[corruption] in msg
    if suspects:
        assert any(f"node {n.label()}" in msg for n in suspects), msg

"""The mutation API keeps uses, names and order right, also while iterating."""

from __future__ import annotations

import numpy as np
import pytest

from compiler.ir import DType, ExternalArray, Graph, QuantEncoding, TensorType, parse, print_graph

CHAIN = """\
graph g(%x: f32[4]) -> (%d) {
  %a = Relu(%x) : f32[4]
  %b = Neg(%a) : f32[4]
  %c = Abs(%b) : f32[4]
  %d = Exp(%c) : f32[4]
}
"""


def test_remove_during_iteration_continues() -> None:
    g = parse(CHAIN)
    seen = []
    for n in g.nodes:
        seen.append(n.op)
        if n.op == "Neg":
            # Bypass the next node too: the iterator must not visit it.
            absn = n.outputs[0].uses[0][0]
            absn.outputs[0].replace_all_uses_with(n.outputs[0])
            g.remove_node(absn)
    assert seen == ["Relu", "Neg", "Exp"]
    g.verify()
    assert [n.op for n in g.nodes] == ["Relu", "Neg", "Exp"]


def test_insert_after_current_is_visited() -> None:
    g = parse(CHAIN)
    seen = []
    for n in g.nodes:
        seen.append(n.op)
        if n.op == "Relu":
            s = g.make_node("Sigmoid", [n.outputs[0]], types=[n.outputs[0].type], after=n)
            for user, i in list(n.outputs[0].uses):
                if user is not s:
                    user.set_input(i, s.outputs[0])
    assert seen == ["Relu", "Sigmoid", "Neg", "Abs", "Exp"]
    g.verify()


def test_remove_node_refuses_when_used_and_cleans_uses() -> None:
    g = parse(CHAIN)
    relu = next(iter(g.nodes))
    with pytest.raises(ValueError, match="still used"):
        g.remove_node(relu)
    x = g.inputs[0]
    assert x.uses == [(relu, 0)]
    neg = relu.outputs[0].uses[0][0]
    neg.set_input(0, x)
    g.remove_node(relu)
    assert x.uses == [(neg, 0)]
    g.verify()


def test_replace_all_uses_updates_graph_outputs() -> None:
    g = parse(CHAIN)
    d = g.outputs[0]
    c = d.producer.inputs[0]
    d.replace_all_uses_with(c)
    assert g.outputs[0] is c
    g.remove_node(d.producer)
    g.verify()


def test_fresh_names_never_collide() -> None:
    g = parse(CHAIN)
    names = {v.name for v in g.values()}
    for _ in range(5):
        n = g.make_node("Relu", [g.inputs[0]], types=[TensorType(DType.F32, (4,))], name="a")
        assert n.outputs[0].name not in names
        names.add(n.outputs[0].name)


def test_copy_is_deep_and_equal() -> None:
    g = parse(CHAIN)
    h = g.copy()
    assert print_graph(h) == print_graph(g)
    next(iter(h.nodes)).op = "Sigmoid"
    assert print_graph(h) != print_graph(g)
    g.verify()
    h.verify()


def test_external_array_is_mapped_lazily(tmp_path) -> None:
    data = np.arange(12, dtype=np.float32)
    f = tmp_path / "w.bin"
    f.write_bytes(b"\0" * 100 + data.tobytes())
    g = Graph()
    v = g.add_const("w", ExternalArray(f, 100, 48, DType.F32, (3, 4)))
    assert not isinstance(v.const_source, np.ndarray)
    arr = v.const
    np.testing.assert_array_equal(arr, data.reshape(3, 4))
    assert not arr.flags.writeable


def test_encoding_math_and_refusals() -> None:
    enc = QuantEncoding(8, False, 0.1, 128)
    x = np.array([-12.8, 0.0, 0.05, 12.7, 100.0], np.float32)
    np.testing.assert_allclose(enc.fake_quant(x), [-12.8, 0.0, 0.0, 12.7, 12.7], atol=1e-6)
    pc = QuantEncoding(8, True, [0.5, 1.0], [0, 0], axis=0)
    np.testing.assert_array_equal(pc.quantize(np.array([[1.0, 2.0], [1.0, 2.0]])), [[2, 4], [1, 2]])
    blk = QuantEncoding(4, True, np.array([[0.5, 1.0]]), np.zeros((1, 2)), axis=1, block_size=2)
    np.testing.assert_array_equal(blk.quantize(np.array([[1.0, 1.0, 1.0, 1.0]])), [[2, 2, 1, 1]])
    for bad in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="scale"):
            QuantEncoding(8, False, bad, 0)
    with pytest.raises(ValueError, match="zero_point out of range"):
        QuantEncoding(8, True, 0.1, 200)

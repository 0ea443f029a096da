"""The verifier catches each kind of corruption and names the node or value."""

from __future__ import annotations

import numpy as np
import pytest

from compiler.errors import VerifyError
from compiler.ir import DType, Graph, Node, QuantEncoding, TensorType, Value, parse

BASE = """\
graph g(%x: f32[2,4], %y: f32[4,3]) -> (%r) opset(ai.onnx=17) {
  %m = MatMul(%x, %y) : f32[2,3] {name="mm"}
  %r = Relu(%m) : f32[2,3] {name="relu"}
}
"""


def test_base_is_valid() -> None:
    parse(BASE).verify()


def test_cycle_names_a_node() -> None:
    g = parse(BASE)
    mm, relu = list(g.nodes)
    mm.set_input(0, relu.outputs[0])
    with pytest.raises(VerifyError, match="cycle through node"):
        g.verify()


def test_out_of_order_names_both_nodes() -> None:
    g = parse(BASE)
    mm, relu = list(g.nodes)
    g.nodes.remove(mm)
    g.nodes.insert_after(relu, mm)
    with pytest.raises(VerifyError, match=r"Relu 'relu'.*defined by a later node MatMul 'mm'"):
        g.verify()
    g.sort()
    g.verify()


def test_undefined_use() -> None:
    g = parse(BASE)
    stray = Value("ghost", TensorType(DType.F32, (2, 3)))
    next(n for n in g.nodes if n.op == "Relu").set_input(0, stray)
    with pytest.raises(VerifyError, match=r"Relu 'relu'.*%ghost, which is not defined"):
        g.verify()


def test_double_definition() -> None:
    g = parse(BASE)
    relu = next(n for n in g.nodes if n.op == "Relu")
    relu.outputs[0].name = "m"
    with pytest.raises(VerifyError, match="%m is defined twice"):
        g.verify()


def test_output_without_producer() -> None:
    g = parse(BASE)
    g.outputs.append(Value("lost", TensorType(DType.F32, (1,))))
    with pytest.raises(VerifyError, match="graph output %lost is not produced"):
        g.verify()


def test_dtype_mismatch() -> None:
    g = parse(BASE.replace("%y: f32[4,3]", "%y: f16[4,3]"))
    with pytest.raises(VerifyError, match=r"MatMul 'mm'.*f16.*f32"):
        g.verify()


def test_shape_mismatch() -> None:
    g = parse(BASE.replace("%y: f32[4,3]", "%y: f32[5,3]"))
    with pytest.raises(VerifyError, match=r"MatMul 'mm'.*inner dimensions"):
        g.verify()


def test_broadcast_mismatch() -> None:
    g = parse(
        "graph g(%a: f32[2,3], %b: f32[4]) -> (%c) {\n  %c = Add(%a, %b) : f32[2,3]\n}\n"
    )
    with pytest.raises(VerifyError, match="do not broadcast"):
        g.verify()


@pytest.mark.parametrize(
    ("attrs", "fragment"),
    [
        ('{bogus=1}', "unknown attribute 'bogus'"),
        ('{axis="x"}', "attribute 'axis' must be int"),
    ],
)
def test_bad_attributes(attrs: str, fragment: str) -> None:
    g = parse(f"graph g(%a: f32[2,3]) -> (%c) {{\n  %c = Softmax(%a) {attrs} : f32[2,3]\n}}\n")
    with pytest.raises(VerifyError, match=fragment):
        g.verify()


def test_unknown_op_and_domain() -> None:
    g = parse("graph g(%a: f32[2]) -> (%c) {\n  %c = Frobnicate(%a) : f32[2]\n}\n")
    with pytest.raises(VerifyError, match="unknown op Frobnicate"):
        g.verify()
    g = parse("graph g(%a: f32[2]) -> (%c) {\n  %c = acme.Relu(%a) : f32[2]\n}\n")
    with pytest.raises(VerifyError, match="domain 'acme' is not imported"):
        g.verify()


def test_arity_and_conv_channels() -> None:
    g = parse("graph g(%a: f32[2]) -> (%c) {\n  %c = Relu(%a, %a) : f32[2]\n}\n")
    with pytest.raises(VerifyError, match=r"takes 1\.\.1 inputs"):
        g.verify()
    g = Graph()
    x = g.add_input("x", TensorType(DType.F32, (1, 3, 8, 8)))
    w = g.add_const("w", np.zeros((4, 2, 3, 3), np.float32))
    n = g.make_node("Conv", [x, w], types=[TensorType(DType.F32, (1, 4, 6, 6))], name="c")
    g.outputs = [n.outputs[0]]
    with pytest.raises(VerifyError, match=r"Conv 'c'.*3 channels"):
        g.verify()


def test_encoding_channel_count() -> None:
    g = Graph()
    w = g.add_const("w", np.zeros((4, 2), np.float32))
    w.encoding = QuantEncoding(8, True, [0.1, 0.2, 0.3], [0, 0, 0], axis=0)
    g.outputs = [w]
    with pytest.raises(VerifyError, match="%w: per-channel encoding has 3 scales for 4"):
        g.verify()


def test_broken_use_list() -> None:
    g = parse(BASE)
    x = g.inputs[0]
    x.uses.clear()
    with pytest.raises(VerifyError, match="use list of %x"):
        g.verify()


def test_node_constructor_refuses_second_producer() -> None:
    g = parse(BASE)
    m = g.find_node("mm").outputs[0]
    with pytest.raises(ValueError, match="already has a producer"):
        Node("Relu", [g.inputs[0]], [m])

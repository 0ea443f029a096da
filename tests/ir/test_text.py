"""Golden tests of the IR text form: parse(print) and print(parse) round-trip exactly."""

from __future__ import annotations

import numpy as np
import pytest

from compiler.errors import ParseError
from compiler.ir import DType, Graph, QuantEncoding, TensorType, parse, print_graph

GOLDEN = """\
graph block(%x: f32[1,3,8,8], %"my in": f32[n,4] !u8{scale=0.5, zp=3}) -> (%y, %s) opset(ai.onnx=17) {
  meta {producer="test"}
  %w = const f32[4,3,3,3] #sha:0c1d2e3f4a5b6c7d {src="conv"}
  %b = const f32[4] = [0.0, 0.5, 1.0, 1.5]
  %q = const i8[4] !i8{scale=[0.1, 0.2, 0.3, 0.4], zp=[0, 0, 0, 0], axis=0} = [1, 2, 3, -4]
  %c = Conv(%x, %w, %b) {pads=[1, 1, 1, 1], strides=[1, 1]} : f32[1,4,8,8] @htp {name="conv", src="layers.0.conv"}
  %y = Relu(%c) : f32[1,4,8,8] !u8{scale=0.0213, zp=0} @htp
  %s = Softmax(%"my in") {axis=-1} : f32[n,4]
}
"""


def test_golden_round_trip() -> None:
    g = parse(GOLDEN)
    assert print_graph(g, inline_limit=8) == GOLDEN
    assert g.name == "block"
    assert [v.name for v in g.inputs] == ["x", "my in"]
    assert g.inputs[1].type.shape == ("n", 4)
    conv = g.find_node("conv")
    assert conv is not None and conv.placement == "htp" and conv.src == "layers.0.conv"
    assert conv.attrs == {"pads": [1, 1, 1, 1], "strides": [1, 1]}
    assert g.find_node("y").outputs[0].encoding == QuantEncoding(8, False, 0.0213, 0)


def test_hash_constants_bind_data() -> None:
    w = np.arange(108, dtype=np.float32).reshape(4, 3, 3, 3)
    g = parse(GOLDEN, constants={"w": w})
    g.verify()
    assert np.array_equal(g.constants["w"].const, w)
    text = print_graph(g, inline_limit=1000)
    g2 = parse(text)
    assert np.array_equal(g2.constants["w"].const, w)
    assert print_graph(g2, inline_limit=1000) == text


def test_unresolved_constant_refuses_data_access() -> None:
    g = parse(GOLDEN)
    with pytest.raises(ValueError, match="known only by hash"):
        _ = g.constants["w"].const
    assert g.constants["w"].digest == "0c1d2e3f4a5b6c7d"


def test_every_dtype_and_special_floats_round_trip() -> None:
    g = Graph("dtypes")
    for dt in DType:
        if dt is DType.BF16:
            arr = np.array([1.5, -2.0], dtype=dt.numpy)
        elif dt is DType.BOOL:
            arr = np.array([True, False])
        elif dt in (DType.I4,):
            arr = np.array([-8, 7], dtype=np.int8)
        elif dt in (DType.U4,):
            arr = np.array([0, 15], dtype=np.uint8)
        else:
            arr = np.array([1, 2], dtype=dt.numpy)
        g.add_const(f"c_{dt.value}", arr, dt)
    g.add_const("special", np.array([np.nan, np.inf, -np.inf, 1e-7, 3.4e38], dtype=np.float32))
    g.outputs = list(g.constants.values())
    text = print_graph(g, inline_limit=10)
    g2 = parse(text)
    assert print_graph(g2, inline_limit=10) == text
    for name, v in g.constants.items():
        a, b = v.const, g2.constants[name].const
        assert g2.constants[name].dtype is v.dtype
        np.testing.assert_array_equal(np.asarray(a, dtype=np.float64), np.asarray(b, np.float64))


def test_attributes_of_every_kind_round_trip() -> None:
    text = (
        'graph a(%x: f32[2,3]) -> (%y) opset(ai.onnx=17) {\n'
        '  %y = Foo(%x, _) {f=1e-05, fs=[0.5, 2.0], i=-3, is=[], s="a \\"q\\"", '
        'ss=["x", "y"], t=tensor<i64[2]>[1, 2]} : f32[2,3]\n'
        "}\n"
    )
    g = parse(text)
    n = next(iter(g.nodes))
    assert n.attrs["f"] == float(np.float32(1e-5))
    assert n.attrs["s"] == 'a "q"'
    assert n.inputs[1] is None
    assert np.array_equal(n.attrs["t"], np.array([1, 2]))
    assert print_graph(g) == text


def test_multi_output_symbolic_unknown_rank_and_domains() -> None:
    text = (
        "graph m(%x: f32[b,?,16]) -> (%v, %i) opset(ai.onnx=17, edgec=1) {\n"
        "  %k = const i64[1] = [2]\n"
        "  %v, %i = TopK(%x, %k) {axis=-1} : f32[b,?,2], i64[b,?,2]\n"
        "  %z = edgec.Thing(%v) : f32[*]\n"
        "}\n"
    )
    g = parse(text)
    assert print_graph(g) == text
    assert g.find_node("z").domain == "edgec"
    assert g.find_node("z").outputs[0].type == TensorType(DType.F32, None)


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("graph g(%x: f32[1]) -> (%y) {\n  %y = Relu(%nope) : f32[1]\n}\n", "undefined value %nope"),
        ("graph g(%x: f32[1]) -> (%y) {\n  %x = Relu(%x) : f32[1]\n}\n", "defined twice"),
        ("graph g(%x: f32[1]) -> (%y) {\n}\n", "output %y is never defined"),
        ("graph g(%x: q9[1]) -> (%x) {\n}\n", "element type"),
        ("graph g(%x: f32[1]) -> (%x) {\n  %c = const f32[2] = [1.0]\n}\n", "has 1 values"),
        ("graph g(%x: f32[1]) -> (%x) {\n  %y = Relu(%x) : f32[1] $\n}\n", "line 2"),
        ("graph g(%x: f32[1] !u8{scale=0.0, zp=0}) -> (%x) {\n}\n", "bad encoding"),
        ("graph g(%x: f32[1]) -> (%x) {", "end of text"),
    ],
)
def test_parse_errors_name_the_line_or_value(text: str, fragment: str) -> None:
    with pytest.raises(ParseError, match=fragment.replace("%", "%").replace("$", r"\$")):
        parse(text)

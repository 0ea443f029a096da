"""ONNX export: round trips keep numerics, output is deterministic, Q/DQ and saving are right."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper
from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

from compiler.errors import EmitError, UnsupportedOpError
from compiler.frontends import load_onnx, save_onnx, to_onnx
from compiler.ir import (
    EDGEC_DOMAIN,
    DType,
    EdgecOpSchema,
    ExternalArray,
    Graph,
    Node,
    QuantEncoding,
    TensorType,
    UnresolvedConst,
    register_edgec_op,
)
from compiler.reference import run_reference

RNG = np.random.default_rng(3)


def _f32(*shape: int) -> np.ndarray:
    return RNG.standard_normal(shape).astype(np.float32)


def _vi(name: str, shape, dtype=TensorProto.FLOAT):
    return helper.make_tensor_value_info(name, dtype, shape)


def _ort(model: onnx.ModelProto | str, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    src = model if isinstance(model, str) else model.SerializeToString()
    return ort.InferenceSession(src, so, providers=["CPUExecutionProvider"]).run(None, feeds)


def _convnet(opset: int = 17) -> onnx.ModelProto:
    inits = [numpy_helper.from_array(_f32(8, 3, 3, 3), "c1.weight"),
             numpy_helper.from_array(_f32(8), "c1.bias"),
             numpy_helper.from_array(_f32(8, 8, 3, 3), "c2.weight"),
             numpy_helper.from_array(np.array([0, -1], np.int64), "flat"),
             numpy_helper.from_array(_f32(8 * 4 * 4, 10), "fc.weight"),
             numpy_helper.from_array(_f32(10), "fc.bias")]
    nodes = [
        helper.make_node("Conv", ["x", "c1.weight", "c1.bias"], ["a"], pads=[1, 1, 1, 1],
                         name="/c1/Conv"),
        helper.make_node("Relu", ["a"], ["b"], name="/act/Relu"),
        helper.make_node("Conv", ["b", "c2.weight"], ["c"], pads=[1, 1, 1, 1], strides=[2, 2],
                         name="/c2/Conv"),
        helper.make_node("Sigmoid", ["c"], ["d"], name="/act2/Sigmoid"),
        helper.make_node("Reshape", ["d", "flat"], ["e"], name="/Reshape"),
        helper.make_node("MatMul", ["e", "fc.weight"], ["f"], name="/fc/MatMul"),
        helper.make_node("Add", ["f", "fc.bias"], ["y"], name="/fc/Add"),
    ]
    g = helper.make_graph(nodes, "convnet", [_vi("x", [1, 3, 8, 8])], [_vi("y", [1, 10])], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])


class _Reader(CalibrationDataReader):
    def __init__(self, n: int = 4) -> None:
        self.it = iter([{"x": _f32(1, 3, 8, 8)} for _ in range(n)])

    def get_next(self):  # type: ignore[no-untyped-def]
        return next(self.it, None)


def _quantize(d: Path, weights: QuantType, acts: QuantType, opset: int,
              contrib: bool = False) -> Path:
    onnx.save(_convnet(opset), d / "float.onnx")
    quantize_static(str(d / "float.onnx"), str(d / "qdq.onnx"), _Reader(),
                    quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=acts, weight_type=weights,
                    extra_options={"UseQDQContribOps": contrib})
    return d / "qdq.onnx"


@pytest.fixture(scope="module")
def qdq_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _quantize(tmp_path_factory.mktemp("qdq"), QuantType.QInt8, QuantType.QUInt8, 17)


# -- float round trips ----------------------------------------------------------------------


def test_convnet_round_trip_is_exact() -> None:
    m = _convnet()
    x = _f32(1, 3, 8, 8)
    (want,) = _ort(m, {"x": x})
    out = to_onnx(load_onnx(m))
    onnx.checker.check_model(out, full_check=True)
    (got,) = _ort(out, {"x": x})
    assert np.array_equal(got, want)
    assert [o.name for o in out.graph.output] == ["y"]
    assert [n.name for n in out.graph.node][:2] == ["/c1/Conv", "/act/Relu"]


def test_reexport_is_byte_identical() -> None:
    g = load_onnx(_convnet())
    a = to_onnx(g).SerializeToString()
    assert to_onnx(g).SerializeToString() == a
    assert to_onnx(load_onnx(a)).SerializeToString() == a
    assert to_onnx(g.copy()).SerializeToString() == a


def test_metadata_survives_export() -> None:
    m = _convnet()
    m.producer_name, m.doc_string = "me", "doc"
    helper.set_model_props(m, {"k": "v"})
    out = to_onnx(load_onnx(m))
    assert out.producer_name == "me" and out.doc_string == "doc"
    assert {p.key: p.value for p in out.metadata_props} == {"k": "v"}


def test_placement_and_provenance_round_trip() -> None:
    g = load_onnx(_convnet())
    for n in g.nodes:
        n.placement = "htp" if n.op == "Conv" else "cpu"
    out = to_onnx(g, keep_placement=True)
    props = {p.key: p.value for p in out.graph.node[0].metadata_props}
    assert props == {"edgec.placement": "htp", "edgec.src": "c1"}
    g2 = load_onnx(out)
    assert [n.placement for n in g2.nodes] == [n.placement for n in g.nodes]
    assert [n.src for n in g2.nodes] == [n.src for n in g.nodes]
    assert not any(len(n.metadata_props) for n in to_onnx(g).graph.node)


def test_forced_opset_is_converted() -> None:
    m = _convnet(opset=13)
    x = _f32(1, 3, 8, 8)
    out = to_onnx(load_onnx(m), opset=19)
    assert out.opset_import[0].version == 19
    assert np.array_equal(_ort(out, {"x": x})[0], _ort(m, {"x": x})[0])


def test_unresolved_constant_cannot_be_exported() -> None:
    g = Graph("g")
    x = g.add_input("x", TensorType(DType.F32, (4,)))
    w = g.add_const("w", UnresolvedConst("00ff", DType.F32, (4,)))
    n = g.make_node("Add", [x, w], types=[TensorType(DType.F32, (4,))])
    g.outputs = [n.outputs[0]]
    with pytest.raises(EmitError, match=r"%w"):
        to_onnx(g)


# -- Q/DQ -----------------------------------------------------------------------------------


def test_qdq_model_round_trip_keeps_numerics(qdq_model: Path) -> None:
    x = _f32(1, 3, 8, 8)
    (want,) = _ort(str(qdq_model), {"x": x})
    g = load_onnx(qdq_model)
    assert not any(n.op.endswith("QuantizeLinear") for n in g.nodes)  # all folded
    w = g.constants["c1.weight"]
    assert w.encoding is not None and w.encoding.granularity == "channel"
    assert w.encoding.bits == 8 and w.encoding.signed
    out = to_onnx(g)
    (got,) = _ort(out, {"x": x})
    assert np.array_equal(got, want)
    assert np.array_equal(run_reference(g, [x])["y"], want)
    # The integer weights are written back bit-exactly.
    orig = {t.name: numpy_helper.to_array(t) for t in onnx.load(qdq_model).graph.initializer}
    new = {t.name: numpy_helper.to_array(t) for t in out.graph.initializer}
    assert np.array_equal(new["c1.weight_quantized"], orig["c1.weight_quantized"])
    # After one round the export is a fixed point.
    assert to_onnx(load_onnx(out)).SerializeToString() == out.SerializeToString()


@pytest.mark.parametrize("weights,acts,opset,contrib", [
    (QuantType.QInt8, QuantType.QInt8, 13, False),
    (QuantType.QUInt8, QuantType.QUInt16, 21, False),
    (QuantType.QInt4, QuantType.QUInt8, 21, False),
    (QuantType.QInt8, QuantType.QUInt16, 17, True),  # com.microsoft Q/DQ
])
def test_qdq_widths_round_trip(tmp_path: Path, weights: QuantType, acts: QuantType,
                               opset: int, contrib: bool) -> None:
    src = _quantize(tmp_path, weights, acts, opset, contrib)
    domains = {n.domain for n in onnx.load(src).graph.node if "Quantize" in n.op_type}
    assert domains == ({"com.microsoft"} if contrib else {""})
    x = _f32(1, 3, 8, 8)
    (want,) = _ort(str(src), {"x": x})
    g = load_onnx(src)
    assert not any("QuantizeLinear" in n.op for n in g.nodes)
    out = to_onnx(g)
    onnx.checker.check_model(out, full_check=True)
    assert all(n.domain == "" for n in out.graph.node)
    assert np.array_equal(_ort(out, {"x": x})[0], want)
    assert to_onnx(load_onnx(out)).SerializeToString() == out.SerializeToString()


def test_qdq_layout_activations_and_outputs(qdq_model: Path) -> None:
    out = to_onnx(load_onnx(qdq_model))
    by_out = {o: n for n in out.graph.node for o in n.output}
    # Graph output: the DQ produces 'y', the producer writes 'y_float'.
    assert by_out["y"].op_type == "DequantizeLinear"
    assert by_out["y_float"].op_type == "Add"
    # Internal activation: the producer keeps its name, consumers read the DQ.
    sig = next(n for n in out.graph.node if n.op_type == "Sigmoid")
    assert by_out[sig.input[0]].op_type == "DequantizeLinear"
    assert sig.output[0] == "d" and by_out["d_dequantized"].op_type == "DequantizeLinear"
    kinds = [n.op_type for n in out.graph.node]
    # One DQ per quantized constant (weights and biases), one Q/DQ pair per activation.
    assert kinds.count("DequantizeLinear") - kinds.count("QuantizeLinear") == 5


def test_materialize_qdq_false_gives_the_float_graph(qdq_model: Path) -> None:
    out = to_onnx(load_onnx(qdq_model), materialize_qdq=False)
    assert not any("QuantizeLinear" in n.op_type for n in out.graph.node)
    assert all(t.data_type in (TensorProto.FLOAT, TensorProto.INT64)
               for t in out.graph.initializer)


def _encoded_graph(enc: QuantEncoding, wenc: QuantEncoding | None = None) -> Graph:
    g = Graph("enc")
    x = g.add_input("x", TensorType(DType.F32, (2, 8)))
    w = g.add_const("w", _f32(8, 4), encoding=wenc)
    mm = g.make_node("MatMul", [x, w], types=[TensorType(DType.F32, (2, 4))], name="mm")
    mm.outputs[0].encoding = enc
    r = g.make_node("Relu", [mm.outputs[0]], types=[TensorType(DType.F32, (2, 4))], name="r")
    g.outputs = [r.outputs[0]]
    g.verify()
    return g


def test_activation_encoding_materializes_as_fake_quant() -> None:
    enc = QuantEncoding(8, False, 0.02, 120)
    g = _encoded_graph(enc)
    x = _f32(2, 8)
    w = g.constants["w"].const
    got = run_reference(g, [x], outputs=["mm", "r"])
    expect = enc.fake_quant(x @ w)
    np.testing.assert_allclose(got["mm"], expect, atol=0.02 + 1e-6)
    assert np.array_equal(got["r"], np.maximum(got["mm"], 0))
    assert np.array_equal(run_reference(g, [x], qdq=False)["r"], np.maximum(x @ w, 0))


def test_int16_and_block_encodings_bump_the_opset() -> None:
    act = QuantEncoding(16, False, 1e-3, 30000)
    wenc = QuantEncoding(4, True, (RNG.random((2, 4)) * 0.1 + 0.05).astype(np.float32),
                         np.zeros((2, 4), np.int64), axis=0, block_size=4)
    g = _encoded_graph(act, wenc)
    assert g.opset[""] == 17
    out = to_onnx(g)
    assert out.opset_import[0].version == 21
    wq = next(t for t in out.graph.initializer if t.name == "w_quantized")
    assert wq.data_type == TensorProto.INT4
    dq = next(n for n in out.graph.node if n.output[0] == "w")
    assert {a.name: helper.get_attribute_value(a) for a in dq.attribute} == \
        {"axis": 0, "block_size": 4}
    x = _f32(2, 8)
    wf = wenc.fake_quant(g.constants["w"].const)
    np.testing.assert_allclose(run_reference(g, [x])["r"],
                               np.maximum(act.fake_quant(x @ wf), 0), atol=2e-3)
    with pytest.raises(EmitError, match=r"opset 21"):
        to_onnx(g, opset=19)


def test_32_bit_activation_encoding_is_refused() -> None:
    g = _encoded_graph(QuantEncoding(32, True, 1e-3, 0))
    with pytest.raises(EmitError, match=r"%mm.*32-bit"):
        to_onnx(g)


# -- edgec ops ------------------------------------------------------------------------------


def _lower_scale_add(graph: Graph, node: Node) -> None:
    x = node.inputs[0]
    k = graph.const(np.float32(node.attrs.get("k", 1.0)), "k")
    mul = graph.make_node("Mul", [x, k], types=[node.outputs[0].type], before=node)
    add = graph.make_node("Add", [mul.outputs[0], x], types=[node.outputs[0].type],
                          before=node)
    graph.replace_node(node, add.outputs)


register_edgec_op(EdgecOpSchema("TestScaleAdd", 1, 1, 1, {"k": float},
                                "y = x * k + x (tests only)", lower=_lower_scale_add))
register_edgec_op(EdgecOpSchema("TestOpaque", 1, 1, 1, {}, "no lowering (tests only)"))


def _edgec_graph(op: str) -> Graph:
    g = Graph("e")
    x = g.add_input("x", TensorType(DType.F32, (3,)))
    n = g.make_node(op, [x], {"k": 2.0} if op == "TestScaleAdd" else {},
                    types=[TensorType(DType.F32, (3,))], domain=EDGEC_DOMAIN)
    g.outputs = [n.outputs[0]]
    g.verify()
    return g


def test_edgec_ops_export_in_their_domain_or_lowered() -> None:
    g = _edgec_graph("TestScaleAdd")
    plain = to_onnx(g)
    assert [(n.domain, n.op_type) for n in plain.graph.node] == [("edgec", "TestScaleAdd")]
    assert any(o.domain == "edgec" for o in plain.opset_import)
    low = to_onnx(g, lower_edgec=True)
    assert [n.op_type for n in low.graph.node] == ["Mul", "Add"]
    assert len(list(g.nodes)) == 1  # lowering worked on a copy
    x = np.array([1.0, -2.0, 3.0], np.float32)
    assert np.array_equal(run_reference(g, [x])[g.outputs[0].name], x * 2 + x)
    assert len(load_onnx(plain).nodes) == 1  # registered edgec ops import back


def test_edgec_op_without_lowering_cannot_run_on_the_reference() -> None:
    g = _edgec_graph("TestOpaque")
    with pytest.raises(UnsupportedOpError, match=r"TestOpaque"):
        run_reference(g, [np.zeros(3, np.float32)])


# -- saving ---------------------------------------------------------------------------------


def test_save_is_deterministic_and_leaves_no_temp_files(tmp_path: Path) -> None:
    g = load_onnx(_convnet())
    p1 = save_onnx(g, tmp_path / "a.onnx")
    p2 = save_onnx(g, tmp_path / "b.onnx")
    assert p1.read_bytes() == p2.read_bytes()
    save_onnx(g, tmp_path / "a.onnx")  # overwrite in place
    assert sorted(os.listdir(tmp_path)) == ["a.onnx", "b.onnx"]


def test_external_data_with_tiny_threshold(tmp_path: Path) -> None:
    m = _convnet()
    g = load_onnx(m)
    p = save_onnx(g, tmp_path / "model.onnx", external_threshold=0, min_external_bytes=64)
    data = tmp_path / "model.onnx.data"
    assert data.is_file()
    blob, payload = p.read_bytes(), data.read_bytes()
    saved = onnx.load(str(p), load_external_data=False)
    ext = [t for t in saved.graph.initializer if t.data_location == TensorProto.EXTERNAL]
    assert {t.name for t in ext} == {"c1.weight", "c2.weight", "fc.weight"}
    for t in ext:
        info = {e.key: e.value for e in t.external_data}
        assert info["location"] == "model.onnx.data"
        assert int(info["offset"]) % 4096 == 0
    # Small tensors stay inline.
    assert any(t.name == "fc.bias" and t.data_location != TensorProto.EXTERNAL
               for t in saved.graph.initializer)
    g2 = load_onnx(p)
    assert isinstance(g2.constants["fc.weight"].const_source, ExternalArray)
    x = _f32(1, 3, 8, 8)
    assert np.array_equal(run_reference(g2, [x])["y"], _ort(m, {"x": x})[0])
    assert np.array_equal(_ort(str(p), {"x": x})[0], _ort(m, {"x": x})[0])
    # Deterministic, also when re-saved from the externally loaded graph.
    save_onnx(g2, tmp_path / "again.onnx", external_threshold=0, min_external_bytes=64)
    assert (tmp_path / "again.onnx.data").read_bytes() == payload
    assert sorted(os.listdir(tmp_path)) == ["again.onnx", "again.onnx.data", "model.onnx",
                                            "model.onnx.data"]
    del blob


def test_save_model_proto_with_external_data(tmp_path: Path) -> None:
    m = _convnet()
    before = m.SerializeToString()
    p = save_onnx(m, tmp_path / "m.onnx", external_data=True, min_external_bytes=64)
    assert m.SerializeToString() == before  # the caller's proto is untouched
    x = _f32(1, 3, 8, 8)
    assert np.array_equal(_ort(str(p), {"x": x})[0], _ort(m, {"x": x})[0])


@pytest.mark.skipif(not hasattr(os, "symlink"), reason="needs symlinks")
def test_saver_never_writes_through_a_symlink(tmp_path: Path) -> None:
    outside = tmp_path / "outside.bin"
    outside.write_bytes(b"precious")
    folder = tmp_path / "out"
    folder.mkdir()
    (folder / "m.onnx.data").symlink_to(outside)
    (folder / "m.onnx").symlink_to(outside)
    save_onnx(load_onnx(_convnet()), folder / "m.onnx", external_data=True,
              min_external_bytes=64)
    assert outside.read_bytes() == b"precious"
    assert not (folder / "m.onnx").is_symlink() and not (folder / "m.onnx.data").is_symlink()


def test_save_into_missing_folder_fails(tmp_path: Path) -> None:
    with pytest.raises(EmitError, match=r"does not exist"):
        save_onnx(load_onnx(_convnet()), tmp_path / "nope" / "m.onnx")


# -- property: encodings survive export and import ------------------------------------------


@st.composite
def _encodings(draw: st.DrawFn, channels: int | None) -> QuantEncoding:
    bits = draw(st.sampled_from([4, 8, 16]))
    signed = draw(st.booleans())
    lo, hi = (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if signed else (0, (1 << bits) - 1)
    n = 1 if channels is None else channels
    scale = draw(st.lists(st.floats(0.0009765625, 1.0, width=32), min_size=n, max_size=n))
    zp = draw(st.lists(st.integers(lo, hi), min_size=n, max_size=n))
    if channels is None:
        return QuantEncoding(bits, signed, scale[0], zp[0])
    return QuantEncoding(bits, signed, scale, zp, axis=1)


@settings(max_examples=20, deadline=None)
@given(wenc=_encodings(4), aenc=_encodings(None))
def test_encodings_survive_a_round_trip(wenc: QuantEncoding, aenc: QuantEncoding) -> None:
    g = _encoded_graph(aenc, wenc)
    m = to_onnx(g)
    g2 = load_onnx(m)
    assert g2.constants["w"].encoding == wenc
    assert g2.find_node("mm").outputs[0].encoding == aenc
    assert to_onnx(g2).SerializeToString() == m.SerializeToString()
    x = _f32(2, 8)
    assert np.array_equal(run_reference(g, [x])["r"], run_reference(g2, [x])["r"])

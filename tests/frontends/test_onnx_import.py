"""ONNX import: types, constants, external data, opsets, provenance and Q/DQ folding."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from compiler.frontends import load_onnx
from compiler.frontends.onnx_import import fold_qdq
from compiler.ir import DType, ExternalArray, QuantEncoding, parse, print_graph
from compiler.reference import run_reference

RNG = np.random.default_rng(7)


def _f32(*shape: int) -> np.ndarray:
    return RNG.standard_normal(shape).astype(np.float32)


def _model(nodes, inputs, outputs, inits=(), opset=17, value_info=(), **kw) -> onnx.ModelProto:
    g = helper.make_graph(list(nodes), "g", list(inputs), list(outputs), list(inits),
                          value_info=list(value_info))
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)], **kw)


def _vi(name: str, shape, dtype=TensorProto.FLOAT):
    return helper.make_tensor_value_info(name, dtype, shape)


def _ort(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    s = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    return s.run(None, feeds)


def _conv_model(opset: int = 17) -> onnx.ModelProto:
    w, b = _f32(4, 3, 3, 3), _f32(4)
    nodes = [
        helper.make_node("Conv", ["x", "layers.0.conv.weight", "layers.0.conv.bias"], ["c"],
                         pads=[1, 1, 1, 1], name="/layers.0/conv/Conv"),
        helper.make_node("Relu", ["c"], ["r"], name="/layers.0/act/Relu"),
        helper.make_node("GlobalAveragePool", ["r"], ["y"], name="/pool/GlobalAveragePool"),
    ]
    inits = [numpy_helper.from_array(w, "layers.0.conv.weight"),
             numpy_helper.from_array(b, "layers.0.conv.bias")]
    return _model(nodes, [_vi("x", ["batch", 3, 8, 8])], [_vi("y", None)], inits, opset)


# -- basics ---------------------------------------------------------------------------------


def test_conv_model_types_names_and_provenance() -> None:
    g = load_onnx(_conv_model())
    assert [v.name for v in g.inputs] == ["x"]
    assert g.inputs[0].shape == ("batch", 3, 8, 8)
    conv, relu, pool = g.nodes
    assert conv.name == "/layers.0/conv/Conv" and conv.src == "layers.0.conv"
    assert relu.src == "layers.0.act" and pool.src == "pool"
    assert conv.outputs[0].type.shape == ("batch", 4, 8, 8)  # symbolic dim kept
    assert conv.outputs[0].dtype is DType.F32
    assert conv.attrs["pads"] == [1, 1, 1, 1]
    assert all("src" in n.meta for n in g.nodes)


def test_torch_dynamo_name_scopes_give_provenance() -> None:
    n = helper.make_node("Relu", ["x"], ["y"], name="node_relu")
    e = n.metadata_props.add()
    e.key, e.value = "pkg.torch.onnx.name_scopes", "['', 'encoder', 'encoder.layers.1', 'relu']"
    g = load_onnx(_model([n], [_vi("x", [2])], [_vi("y", [2])]))
    (node,) = g.nodes
    assert node.name == "node_relu" and node.src == "encoder.layers.1"


@pytest.mark.parametrize("name,src", [
    ("/layers/layers.0/Relu_1", "layers.0"),
    ("/layers.0/mlp/mlp.0/Relu", "layers.0.mlp.0"),
    ("/layers.0/conv/Relu", "layers.0.conv"),
    ("/Relu", ""),
    ("plain_name", "plain_name"),
])
def test_torchscript_scopes_merge(name: str, src: str) -> None:
    n = helper.make_node("Relu", ["x"], ["y"], name=name)
    g = load_onnx(_model([n], [_vi("x", [2])], [_vi("y", [2])]))
    assert next(iter(g.nodes)).src == src


def test_model_metadata_is_kept() -> None:
    m = _conv_model()
    m.producer_name, m.producer_version, m.doc_string = "unit", "1.2", "a doc"
    helper.set_model_props(m, {"author": "me", "license": "mit"})
    g = load_onnx(m)
    assert g.meta["producer_name"] == "unit" and g.meta["producer_version"] == "1.2"
    assert g.meta["doc_string"] == "a doc"
    assert g.meta["metadata_props"] == {"author": "me", "license": "mit"}


def test_unknown_dims_are_none_and_text_round_trips() -> None:
    m = _model([helper.make_node("Relu", ["x"], ["y"])],
               [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, "2*s0 + 1"])],
               [_vi("y", None)])
    g = load_onnx(m)
    shape = g.inputs[0].shape
    assert shape[0] is None and isinstance(shape[1], str)
    assert print_graph(parse(print_graph(g))) == print_graph(g)


def test_input_proto_is_not_modified_and_bytes_work() -> None:
    m = _conv_model(opset=11)
    before = m.SerializeToString()
    load_onnx(m)
    assert m.SerializeToString() == before
    assert len(load_onnx(before).nodes) == 3


def test_initializers_listed_as_inputs_are_constants() -> None:
    m = _conv_model()
    m.ir_version = 3
    m.graph.input.extend([_vi("layers.0.conv.weight", [4, 3, 3, 3]),
                          _vi("layers.0.conv.bias", [4])])
    g = load_onnx(m)
    assert [v.name for v in g.inputs] == ["x"]
    assert set(g.constants) == {"layers.0.conv.weight", "layers.0.conv.bias"}


def test_raw_initializers_are_zero_copy_and_read_only() -> None:
    g = load_onnx(_conv_model())
    w = g.constants["layers.0.conv.weight"].const
    assert w is not None and not w.flags.owndata and not w.flags.writeable


def test_constant_nodes_become_constants() -> None:
    nodes = [helper.make_node("Constant", [], ["k"], value_float=2.0, name="two"),
             helper.make_node("Mul", ["x", "k"], ["y"], name="mul")]
    g = load_onnx(_model(nodes, [_vi("x", [3])], [_vi("y", [3])]))
    assert [n.op for n in g.nodes] == ["Mul"]
    assert float(g.constants["k"].const) == 2.0


def test_nodes_out_of_order_are_sorted() -> None:
    nodes = [helper.make_node("Neg", ["a"], ["y"], name="second"),
             helper.make_node("Relu", ["x"], ["a"], name="first")]
    g = load_onnx(_model(nodes, [_vi("x", [3])], [_vi("y", [3])]))
    assert [n.name for n in g.nodes] == ["first", "second"]
    assert g.nodes.__iter__().__next__().outputs[0].shape == (3,)


def test_omitted_optional_inputs_and_outputs() -> None:
    nodes = [helper.make_node("Clip", ["x", "", "hi"], ["y"], name="clip")]
    hi = numpy_helper.from_array(np.array(0.5, np.float32), "hi")
    g = load_onnx(_model(nodes, [_vi("x", [3])], [_vi("y", [3])], [hi]))
    (clip,) = g.nodes
    assert clip.inputs[1] is None and clip.inputs[2] is g.constants["hi"]


# -- opsets ---------------------------------------------------------------------------------


def test_old_opset_is_converted_and_keeps_numerics() -> None:
    nodes = [helper.make_node("Squeeze", ["x"], ["s"], axes=[0], name="sq"),
             helper.make_node("Split", ["s"], ["a", "b"], axis=1, split=[1, 3], name="sp"),
             helper.make_node("Sub", ["b", "a"], ["y"], name="sub")]
    m = _model(nodes, [_vi("x", [1, 2, 4])], [_vi("y", None)], opset=11)
    g = load_onnx(m)
    assert g.opset[""] == 17
    x = _f32(1, 2, 4)
    (want,) = _ort(m, {"x": x})
    assert np.array_equal(run_reference(g, {"x": x})["y"], want)


@pytest.mark.parametrize("opset", [13, 21, 28])
def test_new_opsets_are_taken_directly(opset: int) -> None:
    g = load_onnx(_conv_model(opset))
    assert g.opset[""] == opset


# -- external data --------------------------------------------------------------------------


def test_external_data_is_lazy_and_correct(tmp_path: Path) -> None:
    m = _conv_model()
    want = _ort(m, {"x": (x := _f32(2, 3, 8, 8))})[0]
    onnx.save(m, tmp_path / "m.onnx", save_as_external_data=True, all_tensors_to_one_file=True,
              location="weights.bin", size_threshold=0)
    g = load_onnx(tmp_path / "m.onnx")
    w = g.constants["layers.0.conv.weight"]
    assert isinstance(w.const_source, ExternalArray)  # not read yet
    assert w.const_source.path == (tmp_path / "weights.bin").resolve()
    assert np.array_equal(run_reference(g, [x])["y"], want)
    assert not w.const.flags.writeable


def test_external_data_inside_subfolder(tmp_path: Path) -> None:
    m = _conv_model()
    orig = numpy_helper.to_array(m.graph.initializer[0])
    (tmp_path / "data").mkdir()
    onnx.save(m, tmp_path / "m.onnx", save_as_external_data=True, location="data/w.bin",
              size_threshold=0)
    g = load_onnx(tmp_path / "m.onnx")
    assert np.array_equal(g.constants["layers.0.conv.weight"].const, orig)


# -- Q/DQ folding ---------------------------------------------------------------------------


def _qdq_activation_model() -> onnx.ModelProto:
    inits = [numpy_helper.from_array(np.array(0.05, np.float32), "s"),
             numpy_helper.from_array(np.array(128, np.uint8), "z")]
    nodes = [helper.make_node("Relu", ["x"], ["a"], name="relu"),
             helper.make_node("QuantizeLinear", ["a", "s", "z"], ["a_q"], name="q"),
             helper.make_node("DequantizeLinear", ["a_q", "s", "z"], ["a_dq"], name="dq"),
             helper.make_node("Neg", ["a_dq"], ["n"], name="neg"),
             helper.make_node("QuantizeLinear", ["n", "s", "z"], ["n_q"], name="q2"),
             helper.make_node("DequantizeLinear", ["n_q", "s", "z"], ["y"], name="dq2")]
    return _model(nodes, [_vi("x", [2, 8])], [_vi("y", [2, 8])], inits)


def test_activation_qdq_folds_into_the_float_value() -> None:
    m = _qdq_activation_model()
    g = load_onnx(m)
    assert [n.op for n in g.nodes] == ["Relu", "Neg"]
    relu, neg = g.nodes
    a = relu.outputs[0]
    assert a.name == "a" and a.dtype is DType.F32
    assert a.encoding == QuantEncoding(8, False, 0.05, 128)
    assert neg.inputs[0] is a
    # The DQ output was the graph output: the folded value takes its name.
    assert [v.name for v in g.outputs] == ["y"] and g.outputs[0] is neg.outputs[0]
    assert not g.constants  # the scale and zero point are gone
    x = _f32(2, 8) * 4
    (want,) = _ort(m, {"x": x})
    assert np.array_equal(run_reference(g, [x])["y"], want)


def test_qdq_is_kept_when_the_float_tensor_is_also_read() -> None:
    m = _qdq_activation_model()
    m.graph.node.append(helper.make_node("Abs", ["a"], ["also"], name="float_reader"))
    m.graph.output.append(_vi("also", [2, 8]))
    g = load_onnx(m)
    ops = [n.op for n in g.nodes]
    assert ops.count("QuantizeLinear") == 1 and ops.count("DequantizeLinear") == 1
    x = _f32(2, 8) * 4
    want = _ort(m, {"x": x})
    got = run_reference(g, [x])
    assert np.array_equal(got["y"], want[0]) and np.array_equal(got["also"], want[1])


@pytest.mark.parametrize("qtype,bits,signed", [
    (TensorProto.INT8, 8, True), (TensorProto.UINT8, 8, False),
    (TensorProto.INT16, 16, True), (TensorProto.UINT16, 16, False),
    (TensorProto.INT4, 4, True), (TensorProto.UINT4, 4, False)])
def test_weight_dq_per_channel_folds_to_float_const(qtype: int, bits: int, signed: bool) -> None:
    lo, hi = (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if signed else (0, (1 << bits) - 1)
    q = RNG.integers(lo, hi + 1, size=(3, 4))
    scale = np.array([0.1, 0.2, 0.3], np.float32)
    zp = np.array([0, 1, 2]) if not signed else np.array([0, -1, 1])
    inits = [helper.make_tensor("w_quantized", qtype, [3, 4], q.reshape(-1).tolist()),
             numpy_helper.from_array(scale, "w_scale"),
             helper.make_tensor("w_zp", qtype, [3], zp.tolist())]
    nodes = [helper.make_node("DequantizeLinear", ["w_quantized", "w_scale", "w_zp"], ["w_f"],
                              axis=0, name="dq"),
             helper.make_node("MatMul", ["x", "w_f"], ["y"], name="mm")]
    m = _model(nodes, [_vi("x", [2, 3])], [_vi("y", [2, 4])], inits, opset=21)
    g = load_onnx(m)
    assert [n.op for n in g.nodes] == ["MatMul"]
    w = g.constants["w"]  # named after the weight, not the DQ output
    assert w.dtype is DType.F32
    assert w.encoding == QuantEncoding(bits, signed, scale, zp, axis=0)
    assert np.array_equal(w.const, ((q - zp[:, None]) * scale[:, None]).astype(np.float32))
    x = _f32(2, 3)
    (want,) = _ort(m, {"x": x})
    assert np.array_equal(run_reference(g, [x])["y"], want)


def test_weight_dq_per_block_folds() -> None:
    q = RNG.integers(-8, 8, size=(8, 4))
    scale = (RNG.random((2, 4)) * 0.1 + 0.01).astype(np.float32)
    inits = [helper.make_tensor("wq", TensorProto.INT4, [8, 4], q.reshape(-1).tolist()),
             numpy_helper.from_array(scale, "ws")]
    nodes = [helper.make_node("DequantizeLinear", ["wq", "ws"], ["w"], axis=0, block_size=4),
             helper.make_node("MatMul", ["x", "w"], ["y"])]
    m = _model(nodes, [_vi("x", [2, 8])], [_vi("y", [2, 4])], inits, opset=21)
    g = load_onnx(m)
    w = g.constants["w"]
    assert w.encoding is not None and w.encoding.granularity == "block"
    assert w.encoding.block_size == 4 and w.encoding.axis == 0 and w.encoding.bits == 4
    x = _f32(2, 8)
    (want,) = _ort(m, {"x": x})
    assert np.array_equal(run_reference(g, [x])["y"], want)


def test_int32_bias_dq_folds_with_32_bit_encoding() -> None:
    b = np.array([100, -5000, 70000], np.int32)
    inits = [numpy_helper.from_array(b, "b_quantized"),
             numpy_helper.from_array(np.array(1e-4, np.float32), "b_scale")]
    nodes = [helper.make_node("DequantizeLinear", ["b_quantized", "b_scale"], ["b_dq"]),
             helper.make_node("Add", ["x", "b_dq"], ["y"])]
    g = load_onnx(_model(nodes, [_vi("x", [3])], [_vi("y", [3])], inits))
    enc = g.constants["b"].encoding
    assert enc is not None and enc.bits == 32 and enc.signed


def test_fold_qdq_is_idempotent_on_a_folded_graph() -> None:
    g = load_onnx(_qdq_activation_model())
    text = print_graph(g)
    assert fold_qdq(g) == 0 and print_graph(g) == text

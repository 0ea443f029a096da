"""Every way an ONNX model can be broken gives a typed error naming the file, node or tensor."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from compiler.errors import (
    ExternalDataError,
    ModelLoadError,
    NumericsError,
    UnsupportedOpError,
    VerifyError,
)
from compiler.frontends import check_finite, load_onnx


def _model(nodes, inputs=("x",), outputs=("y",), inits=(), opset=17, shape=(2, 4),
           ir_version=None):
    g = helper.make_graph(
        list(nodes), "g",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, list(shape)) for n in inputs],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in outputs],
        list(inits))
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)],
                          ir_version=ir_version or 8)
    return m


def _save(m: onnx.ModelProto, path: Path) -> Path:
    path.write_bytes(m.SerializeToString())
    return path


def _weight_model(w: np.ndarray) -> onnx.ModelProto:
    return _model([helper.make_node("Add", ["x", "w"], ["y"], name="add")],
                  inits=[numpy_helper.from_array(w, "w")], shape=list(w.shape))


# -- reading --------------------------------------------------------------------------------


def test_missing_file(tmp_path: Path) -> None:
    p = tmp_path / "nope.onnx"
    with pytest.raises(ModelLoadError, match=r"nope.onnx"):
        load_onnx(p)


def test_random_bytes(tmp_path: Path) -> None:
    p = tmp_path / "random.onnx"
    p.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    with pytest.raises(ModelLoadError, match=r"random.onnx"):
        load_onnx(p)


def test_empty_file(tmp_path: Path) -> None:
    p = tmp_path / "empty.onnx"
    p.write_bytes(b"")
    with pytest.raises(ModelLoadError, match=r"empty.onnx"):
        load_onnx(p)


def test_truncated_protobuf(tmp_path: Path) -> None:
    blob = _weight_model(np.ones((64, 64), np.float32)).SerializeToString()
    p = tmp_path / "cut.onnx"
    p.write_bytes(blob[: len(blob) // 2])  # in the middle of the weight's raw data
    with pytest.raises(ModelLoadError, match=r"cut.onnx"):
        load_onnx(p)


def test_random_bytes_in_memory() -> None:
    with pytest.raises(ModelLoadError, match=r"bytes"):
        load_onnx(b"\x08\x96\x01garbage\xff\xff")


# -- structure ------------------------------------------------------------------------------


def test_cycle_names_a_node_on_it(tmp_path: Path) -> None:
    # 'after' reads the cycle but is not on it: the error must name 'a' or 'b'.
    m = _model([
        helper.make_node("Relu", ["b"], ["c"], name="after"),
        helper.make_node("Add", ["x", "b"], ["a"], name="a_node"),
        helper.make_node("Neg", ["a"], ["b"], name="b_node"),
        helper.make_node("Identity", ["c"], ["y"], name="out"),
    ])
    with pytest.raises((ModelLoadError, VerifyError), match=r"cycle.*'(a_node|b_node)'") as ei:
        load_onnx(_save(m, tmp_path / "cyc.onnx"))
    assert "cyc.onnx" in str(ei.value)


def test_dangling_input_names_tensor_and_node(tmp_path: Path) -> None:
    m = _model([helper.make_node("Add", ["x", "ghost"], ["y"], name="adder")])
    with pytest.raises(ModelLoadError, match=r"'adder'.*'ghost'") as ei:
        load_onnx(_save(m, tmp_path / "dangle.onnx"))
    assert "dangle.onnx" in str(ei.value)


def test_output_nothing_produces(tmp_path: Path) -> None:
    m = _model([helper.make_node("Relu", ["x"], ["y"])], outputs=("y", "phantom"))
    with pytest.raises(ModelLoadError, match=r"'phantom'"):
        load_onnx(_save(m, tmp_path / "out.onnx"))


def test_tensor_defined_twice() -> None:
    m = _model([helper.make_node("Relu", ["x"], ["y"], name="r1"),
                helper.make_node("Neg", ["x"], ["y"], name="r2")])
    with pytest.raises(ModelLoadError, match=r"'y'.*defined twice"):
        load_onnx(m)


# -- operators and opsets -------------------------------------------------------------------


def test_unknown_domain_names_node_and_op() -> None:
    m = _model([helper.make_node("Frobnicate", ["x"], ["y"], name="frob", domain="acme.ops")])
    m.opset_import.append(helper.make_opsetid("acme.ops", 1))
    with pytest.raises(UnsupportedOpError, match=r"'frob'.*Frobnicate.*acme\.ops"):
        load_onnx(m)


def test_unknown_default_domain_op_names_node_and_op() -> None:
    m = _model([helper.make_node("NotAnOnnxOp", ["x"], ["y"], name="mystery")])
    with pytest.raises(UnsupportedOpError, match=r"'mystery'.*NotAnOnnxOp"):
        load_onnx(m)


def test_contrib_op_is_refused() -> None:
    m = _model([helper.make_node("FastGelu", ["x"], ["y"], name="fg", domain="com.microsoft")])
    m.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    with pytest.raises(UnsupportedOpError, match=r"'fg'.*FastGelu"):
        load_onnx(m)


def test_opset_99(tmp_path: Path) -> None:
    m = _model([helper.make_node("Relu", ["x"], ["y"])], opset=99, ir_version=10)
    with pytest.raises(ModelLoadError, match=r"opset 99") as ei:
        load_onnx(_save(m, tmp_path / "future.onnx"))
    assert "future.onnx" in str(ei.value)


@pytest.mark.parametrize("op", ["If", "Loop", "Scan"])
def test_control_flow_is_refused(op: str) -> None:
    body = helper.make_graph([helper.make_node("Identity", ["x"], ["z"])], "body", [],
                             [helper.make_tensor_value_info("z", TensorProto.FLOAT, None)])
    attrs = {"If": {"then_branch": body, "else_branch": body},
             "Loop": {"body": body}, "Scan": {"body": body, "num_scan_inputs": 1}}[op]
    m = _model([helper.make_node(op, ["x"], ["y"], name=f"my_{op.lower()}", **attrs)])
    with pytest.raises(UnsupportedOpError, match=rf"'my_{op.lower()}'.*{op}"):
        load_onnx(m)


def test_string_tensor_is_refused() -> None:
    t = helper.make_tensor("names", TensorProto.STRING, [1], [b"a"])
    m = _model([helper.make_node("Relu", ["x"], ["y"])], inits=[t])
    with pytest.raises(UnsupportedOpError, match=r"'names'.*STRING"):
        load_onnx(m)


# -- external data --------------------------------------------------------------------------


def _external_model(folder: Path, location: str, *, offset: int = 0,
                    length: int | None = None) -> Path:
    w = numpy_helper.from_array(np.arange(8, dtype=np.float32).reshape(2, 4), "big_w")
    nbytes = len(w.raw_data)
    w.ClearField("raw_data")
    w.data_location = TensorProto.EXTERNAL
    for k, v in (("location", location), ("offset", str(offset)),
                 ("length", str(nbytes if length is None else length))):
        e = w.external_data.add()
        e.key, e.value = k, v
    m = _model([helper.make_node("Add", ["x", "big_w"], ["y"], name="add")], inits=[w])
    return _save(m, folder / "model.onnx")


def test_external_traversal_is_refused(tmp_path: Path) -> None:
    (tmp_path / "secret.bin").write_bytes(b"\0" * 32)
    inner = tmp_path / "m"
    inner.mkdir()
    p = _external_model(inner, "../secret.bin")
    with pytest.raises(ExternalDataError, match=r"'big_w'.*'\.\./secret\.bin'.*outside"):
        load_onnx(p)


def test_external_traversal_hidden_in_the_middle(tmp_path: Path) -> None:
    (tmp_path / "secret.bin").write_bytes(b"\0" * 32)
    inner = tmp_path / "m"
    (inner / "sub").mkdir(parents=True)
    p = _external_model(inner, "sub/../../secret.bin")
    with pytest.raises(ExternalDataError, match=r"'big_w'.*outside"):
        load_onnx(p)


def test_external_absolute_path_is_refused(tmp_path: Path) -> None:
    target = tmp_path / "abs.bin"
    target.write_bytes(b"\0" * 32)
    inner = tmp_path / "m"
    inner.mkdir()
    p = _external_model(inner, str(target))
    with pytest.raises(ExternalDataError, match=r"'big_w'.*abs\.bin.*absolute"):
        load_onnx(p)


@pytest.mark.skipif(not hasattr(os, "symlink"), reason="needs symlinks")
def test_external_symlink_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "outside.bin").write_bytes(b"\0" * 32)
    inner = tmp_path / "m"
    inner.mkdir()
    (inner / "w.bin").symlink_to(tmp_path / "outside.bin")
    p = _external_model(inner, "w.bin")
    with pytest.raises(ExternalDataError, match=r"'big_w'.*'w.bin'.*symlink"):
        load_onnx(p)


@pytest.mark.skipif(not hasattr(os, "symlink"), reason="needs symlinks")
def test_external_symlink_directory_is_refused(tmp_path: Path) -> None:
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (outside / "w.bin").write_bytes(b"\0" * 32)
    inner = tmp_path / "m"
    inner.mkdir()
    (inner / "data").symlink_to(outside, target_is_directory=True)
    p = _external_model(inner, "data/w.bin")
    with pytest.raises(ExternalDataError, match=r"'big_w'.*symlink"):
        load_onnx(p)


def test_external_offset_beyond_file(tmp_path: Path) -> None:
    (tmp_path / "w.bin").write_bytes(b"\0" * 32)
    p = _external_model(tmp_path, "w.bin", offset=4096)
    with pytest.raises(ExternalDataError, match=r"'big_w'.*offset 4096.*does not fit.*32 bytes"):
        load_onnx(p)


def test_external_length_mismatch(tmp_path: Path) -> None:
    (tmp_path / "w.bin").write_bytes(b"\0" * 64)
    p = _external_model(tmp_path, "w.bin", length=16)
    with pytest.raises(ExternalDataError, match=r"'big_w'.*length 16.*needs 32"):
        load_onnx(p)


def test_external_missing_file(tmp_path: Path) -> None:
    p = _external_model(tmp_path, "gone.bin")
    with pytest.raises(ExternalDataError, match=r"'big_w'.*does not exist"):
        load_onnx(p)


def test_external_data_can_be_forbidden(tmp_path: Path) -> None:
    (tmp_path / "w.bin").write_bytes(b"\0" * 32)
    p = _external_model(tmp_path, "w.bin")
    with pytest.raises(ExternalDataError, match=r"'big_w'.*allow_external_data=False"):
        load_onnx(p, allow_external_data=False)
    assert load_onnx(p).constants["big_w"].const.shape == (2, 4)


# -- numerics -------------------------------------------------------------------------------


def test_nan_weights_load_but_check_finite_names_them() -> None:
    w = np.ones((2, 4), np.float32)
    w[1, 2] = np.nan
    g = load_onnx(_weight_model(w))  # not an import error
    with pytest.raises(NumericsError, match=r"%w.*index 6"):
        check_finite(g)


def test_inf_in_constant_node_is_found() -> None:
    t = numpy_helper.from_array(np.array([1.0, np.inf], np.float32))
    m = _model([helper.make_node("Constant", [], ["k"], value=t, name="kk"),
                helper.make_node("Add", ["x", "k"], ["y"])], shape=[2])
    g = load_onnx(m)
    with pytest.raises(NumericsError, match=r"%k"):
        check_finite(g)


def test_finite_weights_pass() -> None:
    check_finite(load_onnx(_weight_model(np.ones((2, 4), np.float32))))

"""HTP capability refusals with their reason codes (``rank``, ``attribute``,
``too-large-for-vtcm``), each checked against the QNN EP itself, and the fix ``edgec explain``
suggests for each."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto
from onnx import helper as oh
from onnx import numpy_helper as nh

from compiler.errors import EmitError
from compiler.frontends import load_onnx
from compiler.ir import Graph, Node
from passes.partition import place, placement_report
from targets import get_target
from targets.base import Reason
from targets.hexagon_htp.target import MAX_RANK, supports
from tools.cli import main
from tools.explain_cmd import explain

_X = [1, 8, 16, 16]


def _model(op: str, attrs: dict[str, object], *, shape: list[int] = _X, extra: tuple[str, ...] = (),
           inits: tuple[onnx.TensorProto, ...] = (), opset: int = 17) -> onnx.ModelProto:
    """``x -> Relu -> <op> -> Relu -> z``: the op between two nodes the HTP takes."""
    nodes = [oh.make_node("Relu", ["x"], ["a"], name="pre"),
             oh.make_node(op, ["a", *extra], ["y"], name="target", **attrs),
             oh.make_node("Relu", ["y"], ["z"], name="post")]
    g = oh.make_graph(nodes, op, [oh.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
                      [oh.make_tensor_value_info("z", TensorProto.FLOAT, None)], list(inits))
    m = oh.make_model(g, opset_imports=[oh.make_opsetid("", opset)])
    m.ir_version = 8
    m = onnx.shape_inference.infer_shapes(m, strict_mode=True)
    out = next(v for v in m.graph.value_info if v.name == "y")
    m.graph.output[0].type.CopyFrom(out.type)
    return m


def _w(*shape: int) -> onnx.TensorProto:
    return nh.from_array(np.random.default_rng(0).standard_normal(shape).astype(np.float32), "w")


def _pads() -> onnx.TensorProto:
    return nh.from_array(np.array([0, 0, 1, 1, 0, 0, 1, 1], np.int64), "p")


def _scales() -> onnx.TensorProto:
    return nh.from_array(np.array([1, 1, 2, 2], np.float32), "s")


def _resize(**attrs: object) -> onnx.ModelProto:
    return _model("Resize", dict(attrs), extra=("", "s"), inits=(_scales(),),
                  opset=18 if "antialias" in attrs else 17)


#: name -> (model, reason code the HTP refuses it with, or None when it takes it)
CASES: dict[str, tuple[Callable[[], onnx.ModelProto], Reason | None]] = {
    "convT-dilation-2": (lambda: _model("ConvTranspose", {"dilations": [2, 2]}, extra=("w",),
                                        inits=(_w(8, 8, 3, 3),)), Reason.ATTRIBUTE),
    "convT-same-upper": (lambda: _model("ConvTranspose", {"strides": [2, 2],
                                                          "auto_pad": "SAME_UPPER"},
                                        extra=("w",), inits=(_w(8, 8, 3, 3),)), None),
    "maxpool-dilation-2": (lambda: _model("MaxPool", {"kernel_shape": [3, 3],
                                                      "dilations": [2, 2]}), Reason.ATTRIBUTE),
    "maxpool-ceil": (lambda: _model("MaxPool", {"kernel_shape": [3, 3], "strides": [2, 2],
                                                "ceil_mode": 1}), None),
    "pad-wrap": (lambda: _model("Pad", {"mode": "wrap"}, extra=("p",), inits=(_pads(),),
                                opset=19), Reason.ATTRIBUTE),
    "pad-reflect": (lambda: _model("Pad", {"mode": "reflect"}, extra=("p",),
                                   inits=(_pads(),)), None),
    "resize-nearest-asymmetric": (lambda: _resize(mode="nearest",
                                                  coordinate_transformation_mode="asymmetric"),
                                  Reason.ATTRIBUTE),
    "resize-nearest-asymmetric-floor": (lambda: _resize(
        mode="nearest", coordinate_transformation_mode="asymmetric", nearest_mode="floor"),
        None),
    "resize-antialias": (lambda: _resize(mode="linear", antialias=1), Reason.ATTRIBUTE),
    "resize-linear": (lambda: _resize(mode="linear"), None),
    "lpnorm-p1": (lambda: _model("LpNormalization", {"p": 1, "axis": 1}), Reason.ATTRIBUTE),
    "transpose-rank-6": (lambda: _model("Transpose", {"perm": [0, 1, 3, 2, 5, 4]},
                                        shape=[1, 2, 3, 4, 5, 2]), Reason.RANK),
    "transpose-rank-5": (lambda: _model("Transpose", {"perm": [0, 1, 3, 2, 4]},
                                        shape=[1, 2, 3, 4, 5]), None),
    "softmax-row-2Mi": (lambda: _model("Softmax", {"axis": -1}, shape=[1, 2 << 20]),
                        Reason.TOO_LARGE_FOR_VTCM),
    "softmax-row-1Mi": (lambda: _model("Softmax", {"axis": -1}, shape=[1, 1 << 20]), None),
}


def _target_node(g: Graph) -> Node:
    return next(n for n in g.nodes if n.name == "target")


@pytest.mark.parametrize("case", sorted(CASES))
def test_supports_gives_the_reason_code(case: str) -> None:
    build, want = CASES[case]
    g = load_onnx(build())
    s = supports(_target_node(g), fp16=True)
    if want is None:
        assert s.ok, s.detail
    else:
        assert not s.ok and s.reason is want
        assert s.detail
    if want is not Reason.RANK:  # rank-6 neighbours are refused too
        assert all(supports(n, fp16=True).ok for n in g.nodes if n.name != "target")


def test_vtcm_limit_follows_the_device_row() -> None:
    g = load_onnx(_model("Softmax", {"axis": -1}, shape=[1, 3 << 19]))  # 1.5 Mi elements
    node = _target_node(g)
    # 8 MB of VTCM on v75: 6 MB of 32-bit row is more than half
    assert get_target("htp-v75").supports(node, fp16=True).reason is Reason.TOO_LARGE_FOR_VTCM
    assert supports(node, fp16=True, vtcm_bytes=16 << 20).ok
    # along another axis the row is one element
    g2 = load_onnx(_model("Softmax", {"axis": 0}, shape=[1, 3 << 19]))
    assert supports(_target_node(g2), fp16=True).ok


def test_refused_node_goes_to_the_cpu_with_its_code() -> None:
    g = load_onnx(CASES["pad-wrap"][0]())
    pl, _ = place(g, ["htp-v75", "cpu"], precision="fp16")
    rep = placement_report(pl)
    row = next(n for n in rep["nodes"] if n["node"] == "target")
    assert (row["target"], row["reason_code"]) == ("cpu", "attribute")
    assert "wrap" in row["reason"]
    assert MAX_RANK == 5


@pytest.mark.parametrize("case,fix", [
    ("convT-dilation-2", "insert (d-1) zeros"),
    ("pad-wrap", "Concat of Slices"),
    ("resize-nearest-asymmetric", "nearest_mode='floor'"),
    ("resize-antialias", "AveragePool"),
    ("lpnorm-p1", "ReduceSum(Abs(x))"),
    ("transpose-rank-6", "at most 5 dimensions"),
    ("softmax-row-2Mi", "shorten the softmax axis"),
])
def test_explain_suggests_a_fix(case: str, fix: str) -> None:
    rep = explain(load_onnx(CASES[case][0]()), ["htp-v75"], precision="fp16", pipeline="")
    sug = [s for s in rep["suggestions"] if s["node"] == "target"]
    assert len(sug) == 1 and fix in sug[0]["fix"], rep["suggestions"]
    row = next(n for n in rep["nodes"] if n["node"] == "target")
    assert row["target"] == "cpu"


def test_maxpool_dilation_has_no_fix_but_is_explained(tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "m.onnx"
    onnx.save(CASES["maxpool-dilation-2"][0](), str(path))
    assert main(["explain", str(path), "--precision", "fp16", "--json"]) == 0
    rep = json.loads(capsys.readouterr().out)
    row = next(n for n in rep["nodes"] if n["node"] == "target")
    assert row["reason_code"] == "attribute" and "dilation" in row["reason"]
    assert not [s for s in rep["suggestions"] if s["node"] == "target"]


# -- the EP agrees --------------------------------------------------------------------------


def _qdq(model: onnx.ModelProto, folder: Path) -> Path:
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    shape = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    feeds = iter([{"x": np.random.default_rng(i).standard_normal(shape).astype(np.float32)}
                  for i in range(2)])

    class Reader(CalibrationDataReader):
        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(feeds, None)

    folder.mkdir(parents=True, exist_ok=True)
    src, dst = folder / "f.onnx", folder / "q.onnx"
    onnx.save(model, str(src))
    quantize_static(str(src), str(dst), Reader(), quant_format=QuantFormat.QDQ,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    return dst


@pytest.mark.htp
@pytest.mark.parametrize("case", sorted(c for c in CASES if not c.startswith("softmax-row")))
def test_the_qnn_ep_agrees(case: str, tmp_path: Path) -> None:
    """Each refusal (and its accepted neighbour) as the QNN EP decides it: a refused node is
    left outside the HTP context (CPU fallback allowed), an accepted one goes in."""
    from targets.hexagon_htp.qnn import compile_context, context_placement

    build, want = CASES[case]
    q = _qdq(build(), tmp_path)
    if want is Reason.RANK:  # every node of the model is rank 6: the EP takes none
        with pytest.raises(EmitError, match="wrote no"):
            compile_context(q, tmp_path, arch="75", allow_cpu_fallback=True,
                            optimization_level=1)
        return
    art = compile_context(q, tmp_path, arch="75", allow_cpu_fallback=True, optimization_level=1)
    outside = context_placement(art.ctx_onnx, q).outside
    assert ("target" in outside) == (want is not None), outside


@pytest.mark.htp
def test_the_htp_cannot_finalize_a_softmax_row_past_the_limit(tmp_path: Path) -> None:
    from compiler.errors import FinalizeError
    from targets.hexagon_htp.qnn import compile_context

    ok = _qdq(CASES["softmax-row-1Mi"][0](), tmp_path / "ok")
    compile_context(ok, tmp_path / "ok", arch="75", allow_cpu_fallback=True,
                    optimization_level=1)
    big = _qdq(CASES["softmax-row-2Mi"][0](), tmp_path / "big")
    with pytest.raises(FinalizeError, match="MEM_ALLOC"):
        compile_context(big, tmp_path / "big", arch="75", allow_cpu_fallback=True,
                        optimization_level=1)

"""What makes ``compile()`` fast without changing what it produces (issue 4, compile time).

- the QNN compile's child interpreter can start early (``qnn.prestart``) and still builds
  exactly one model, so the bytes are those of a fresh child;
- the QAIRT version comes from the context just built instead of a scan of libQnnHtp.so;
- an export keeps each weight's integers for the next export of the same graph state, and
  recomputes them when the constant or its encoding changes;
- ``aten.expand_as`` is lowered, so BERT-style models stay on the frontend's fast path;
- the report's SQNR figures are those of the plain per-feed computation.

Nothing is mocked: every context is built by libQnnHtp.so and run on its simulator.
"""

from __future__ import annotations

import hashlib
import math
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import nn

import compiler
from compiler.frontends import load_torch, to_onnx
from compiler.ir import QuantEncoding
from compiler.numerics import metrics
from compiler.reference import run_reference
from targets.hexagon_htp import qnn


def _tiny_qdq() -> onnx.ModelProto:
    """x -> Q -> DQ -> Conv(DQ(int8 W)) -> Q -> DQ -> y: the smallest real HTP build."""
    rng = np.random.default_rng(0)
    w = rng.integers(-127, 128, size=(4, 3, 3, 3)).astype(np.int8)
    inits = [
        numpy_helper.from_array(w, "Wq"),
        numpy_helper.from_array(np.array(0.01, np.float32), "ws"),
        numpy_helper.from_array(np.array(0, np.int8), "wz"),
        numpy_helper.from_array(np.array(0.02, np.float32), "xs"),
        numpy_helper.from_array(np.array(128, np.uint8), "xz"),
        numpy_helper.from_array(np.array(0.05, np.float32), "ys"),
        numpy_helper.from_array(np.array(128, np.uint8), "yz"),
    ]
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "xs", "xz"], ["xq"], name="qx"),
        helper.make_node("DequantizeLinear", ["xq", "xs", "xz"], ["xd"], name="dqx"),
        helper.make_node("DequantizeLinear", ["Wq", "ws", "wz"], ["W"], name="dqw"),
        helper.make_node("Conv", ["xd", "W"], ["c"], pads=[1, 1, 1, 1], name="conv"),
        helper.make_node("QuantizeLinear", ["c", "ys", "yz"], ["cq"], name="qy"),
        helper.make_node("DequantizeLinear", ["cq", "ys", "yz"], ["y"], name="dqy"),
    ]
    graph = helper.make_graph(
        nodes, "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 8, 8])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    return model


def _files(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def test_prestarted_child_builds_the_same_bytes_and_exits(tmp_path: Path) -> None:
    model = _tiny_qdq()
    qnn.release_prestarted()
    fresh = qnn.compile_context(model, tmp_path / "fresh", arch="75", name="tiny")
    qnn.prestart()
    child = qnn._prestarted
    assert child is not None and child.poll() is None
    qnn.prestart()  # idempotent: still the same child
    assert qnn._prestarted is child
    early = qnn.compile_context(model, tmp_path / "early", arch="75", name="tiny")
    assert qnn._prestarted is None  # the build took it ...
    assert child.poll() is not None  # ... and it exited after its one build
    assert _files(tmp_path / "fresh") == _files(tmp_path / "early")
    assert fresh.bin_sha256 == early.bin_sha256

    # an unused prestarted child exits when released
    qnn.prestart()
    unused = qnn._prestarted
    assert unused is not None
    qnn.release_prestarted()
    assert unused.poll() == 0 and qnn._prestarted is None


def test_prestarted_child_reports_compile_errors_like_a_fresh_one(tmp_path: Path) -> None:
    model = _tiny_qdq()
    model.graph.node[3].op_type = "NoSuchOp"  # ORT refuses the model itself
    messages = []
    for prestart in (False, True):
        if prestart:
            qnn.prestart()
        with pytest.raises(Exception) as info:
            qnn.compile_context(model, tmp_path / f"bad{prestart}", arch="75", name="tiny")
        messages.append((type(info.value), str(info.value).split(";")[0]))
    assert messages[0] == messages[1]
    qnn.release_prestarted()


def test_versions_from_the_built_context_equal_the_library_scan(tmp_path: Path) -> None:
    art = qnn.compile_context(_tiny_qdq(), tmp_path, arch="75", name="tiny")
    assert qnn.versions(art.ep_sdk_version) == qnn.versions()
    # anything that is not a build string falls back to the scan
    assert qnn.versions("") == qnn.versions() == qnn.versions("not-a-build")


class _Lin(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(16, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.fc(x))


def test_export_reuses_weight_integers_only_while_they_hold() -> None:
    g = load_torch(_Lin().eval(), (torch.randn(2, 16),))
    w = g.constants["fc.weight"]
    enc = QuantEncoding(bits=8, signed=True, scale=np.full(8, 0.01, np.float32),
                        zero_point=np.zeros(8, np.int64), axis=0)
    w.encoding = enc
    first = to_onnx(g).SerializeToString()
    cached = w.meta["_qdata"]
    assert cached[0] is w.const_source and cached[1] == enc and cached[2].dtype == np.int8
    assert to_onnx(g).SerializeToString() == first  # from the kept integers: same bytes

    def weight_ints(model: onnx.ModelProto) -> np.ndarray:
        return next(numpy_helper.to_array(t) for t in model.graph.initializer
                    if t.name == "fc.weight_quantized")

    # a new encoding: quantized again, not served from the cache
    w.encoding = QuantEncoding(bits=8, signed=True, scale=np.full(8, 0.002, np.float32),
                               zero_point=np.zeros(8, np.int64), axis=0)
    want = w.encoding.quantize(np.asarray(w.const, np.float32))
    np.testing.assert_array_equal(weight_ints(to_onnx(g)), want)
    # a new constant under the same encoding: quantized again too
    w.const = np.asarray(w.const, np.float32) * 0.5
    want = w.encoding.quantize(np.asarray(w.const, np.float32))
    np.testing.assert_array_equal(weight_ints(to_onnx(g)), want)


class _MaskExpand(nn.Module):
    """BERT's extended attention mask: ``mask[:, None, None, :].expand_as(scores)``."""

    def forward(self, scores: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        m = mask[:, None, None, :].to(scores.dtype).expand_as(scores)
        return torch.softmax(scores + (1.0 - m) * -1e4, dim=-1)


def test_expand_as_is_lowered_on_the_fast_path() -> None:
    scores = torch.randn(2, 4, 5, 5)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    g = load_torch(_MaskExpand().eval(), (scores, mask), frontend="fx")
    atens = {str(n.meta.get("aten", "")) for n in g.nodes}
    # kept whole: the program was not re-traced by run_decompositions
    assert "aten.expand_as.default" in atens
    got = run_reference(g, {"scores": scores.numpy(), "mask": mask.numpy()})
    want = _MaskExpand()(scores, mask).numpy()
    np.testing.assert_allclose(got[g.outputs[0].name], want, rtol=1e-6, atol=1e-6)


def test_report_sqnr_is_the_per_feed_computation(tmp_path: Path) -> None:
    """The overlapped verification reports exactly what running feed by feed gives."""
    torch.manual_seed(0)
    module = _Lin().eval()
    calib = [(torch.randn(2, 16),) for _ in range(3)]
    cm = compiler.compile(module, calib[0], target="htp-v75", precision="w8a16",
                          calibration_data=calib, output_dir=tmp_path, progress=False)
    fp32 = load_torch(module, calib[0])
    refs, tests, qdq = [], [], []
    for (x,) in calib:
        feed = {cm.input_names[0]: x.numpy()}
        refs += [run_reference(fp32, feed)[v.name] for v in fp32.outputs]
        tests += cm.run(x.numpy())
        qdq += [run_reference(cm.graph, feed)[v.name] for v in cm.graph.outputs]
    s = cm.report["summary"]

    def db(x: float) -> float | None:
        return None if math.isinf(x) else round(x, 3)

    assert s["sqnr_db"] == db(metrics(refs, tests).sqnr_db)
    assert s["cpu_qdq_sqnr_db"] == db(metrics(refs, qdq).sqnr_db)
    assert s["target_vs_cpu_qdq_db"] == db(metrics(qdq, tests).sqnr_db)
    assert s["sqnr_db"] > 30  # and it is a real, working build
    assert qnn._prestarted is None  # compile() used (or released) its prestarted child

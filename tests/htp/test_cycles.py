"""Where the HTP's cycles go: every node of a mixed-precision build runs as an integer kernel.

The QNN EP builds an integer HTP op only from a QDQ node unit whose activation inputs and
output share one integer type and whose Conv/Gemm/LayerNorm bias is int32; any other node
compiles as a float op between standalone Dequantize/Quantize ops, at 10-100x the cycles
(``targets/hexagon_htp/legalize.py``). These tests check the QDQ form edgec hands the EP
(structurally, on the CPU), the QNN graph the EP builds from it (no float op), and the
simulator cycles against the same build without the legalization, compiled in the same test.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

import compiler
from compiler.frontends import to_onnx
from compiler.ir import Graph
from targets.hexagon_htp import emit as htp_emit
from targets.hexagon_htp import qnn
from targets.hexagon_htp.legalize import (
    MIXED_OK_INPUTS,
    QdqLegalization,
    legalize_graph,
    legalize_qdq,
)
from targets.hexagon_htp.target import default_pipeline
from tests.models.zoo import ZOO, calibration_inputs, torch_outputs

_WIDTH = {onnx.TensorProto.UINT8: 8, onnx.TensorProto.UINT16: 16,
          onnx.TensorProto.INT8: 8, onnx.TensorProto.INT16: 16, onnx.TensorProto.INT32: 32}


def _quantized_ir(name: str, precision: str
                  ) -> tuple[Graph, list[list[np.ndarray]], list[list[np.ndarray]]]:
    """Zoo model ``name`` through the HTP's default pipeline and quantization rules (no QNN:
    nothing is emitted), three held-out inputs and the FP32 outputs on them."""
    from compiler.frontends import load_torch
    from compiler.passes import PassContext, PassManager
    from targets.hexagon_htp.rules import HTP_QUANT_RULES

    model, example = ZOO[name]()
    batches = list(calibration_inputs(name, 7))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        graph = load_torch(model, example)
    names = [v.name for v in graph.inputs]
    feeds = [{n: t.numpy() for n, t in zip(names, b)} for b in batches[:4]]
    ctx = PassContext(target="htp-v75", calibration=feeds, progress=False,
                      options={"quant_rules": HTP_QUANT_RULES, "quant_overrides": {}})
    # the LayerNorm op kept (the default pipelines write batched ones out): its int32 bias is
    # one of the legalizations under test
    pipe = default_pipeline(precision).replace(",lower-layer-norm{min_outer_dims=2}", "")
    PassManager(pipe).run(graph, ctx)
    held = batches[4:]
    return (graph, [[t.numpy() for t in b] for b in held],
            [torch_outputs(model, b) for b in held])


def _width_violations(model: onnx.ModelProto) -> list[str]:
    """Nodes the QNN EP would run in float: ONNX Runtime's QDQ selector rules (activation
    inputs and output of one integer type; int32 Conv/Gemm/LayerNorm biases)."""
    g = model.graph
    inits = {t.name: t for t in g.initializer}
    producer = {o: n for n in g.node for o in n.output}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for n in g.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)

    def width(qdq: onnx.NodeProto) -> int:
        return _WIDTH.get(inits[qdq.input[2]].data_type, 0) if len(qdq.input) > 2 else 8

    bad = []
    for n in g.node:
        if n.op_type in ("QuantizeLinear", "DequantizeLinear"):
            continue
        widths = set()
        for slot, t in enumerate(n.input):
            d = producer.get(t)
            if d is None or d.op_type != "DequantizeLinear":
                continue
            if slot in MIXED_OK_INPUTS.get(n.op_type, ()):
                if slot == 2 and n.op_type in ("Gemm", "Conv", "LayerNormalization"):
                    if inits[d.input[0]].data_type != onnx.TensorProto.INT32:
                        bad.append(f"{n.name}: bias is not int32")
                continue
            widths.add(width(d))
        for o in n.output:
            users = consumers.get(o, [])
            if len(users) == 1 and users[0].op_type == "QuantizeLinear":
                widths.add(width(users[0]))
        if len(widths) > 1:
            bad.append(f"{n.name} ({n.op_type}) mixes {sorted(widths)}-bit activations")
    return bad


def _cpu(model: onnx.ModelProto, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(model.SerializeToString(), so,
                                providers=["CPUExecutionProvider"])
    return [np.asarray(a) for a in sess.run(None, feed)]


def _sqnr(ref: np.ndarray, got: np.ndarray) -> float:
    r, g = ref.astype(np.float64), got.astype(np.float64).reshape(ref.shape)
    return float(10 * np.log10(np.sum(r ** 2) / max(np.sum((r - g) ** 2), 1e-30)))


@pytest.mark.parametrize(("name", "precision"), [("vit", "w8a8"), ("vit", "w8a16"),
                                                 ("whisper", "w8a8")])
def test_legalized_qdq_has_one_width_per_node_and_computes_the_same(
        name: str, precision: str, tmp_path: Path) -> None:
    graph, inputs, fp32 = _quantized_ir(name, precision)
    unlegal = to_onnx(graph)
    # the automatic precision policy (16-bit LayerNorm outputs, probabilities) and 8-bit
    # LayerNorm biases are what the legalization is for: the test must see some
    assert _width_violations(unlegal), "nothing to legalize: the test lost its subject"
    changed = legalize_graph(graph)
    assert any(c.endswith(".bias") for c in changed)
    raw = to_onnx(graph)
    model, done = legalize_qdq(raw)
    assert _width_violations(model) == [], done.as_dict()
    assert not done.skipped and (done.widened or precision == "w8a16")
    onnx.checker.check_model(model, full_check=True)
    # no DQ left without a reader (the EP would run it as a float op or refuse it)
    read = {i for n in model.graph.node for i in n.input} | {o.name for o in model.graph.output}
    assert all(n.output[0] in read for n in model.graph.node
               if n.op_type == "DequantizeLinear")
    # Widening is exact (8-bit values on the 16-bit grid) but for rounding 16-bit
    # intermediates to 8 bits (0.2% of a Gemm's outputs move by one step; in a 26 dB w8a8 ViT
    # such flips decorrelate the noise downstream), and the int32 LayerNorm biases are
    # re-quantized from float: on the CPU the legalized model is as close to FP32 as the IR.
    old, new = [], []
    for x, ref in zip(inputs, fp32):
        feed = {i.name: a for i, a in zip(raw.graph.input, x)}
        old += [_sqnr(r, o) for r, o in zip(ref, _cpu(unlegal, feed))]
        new += [_sqnr(r, o) for r, o in zip(ref, _cpu(model, feed))]
    assert np.mean(new) > np.mean(old) - 1.0, (old, new)


def test_legalize_qdq_widens_mixed_gemm_exactly() -> None:
    """A Gemm reading 8 bits and writing 16 (and the reverse): the widened form computes the
    same values on the CPU, the bias follows the input grid, and the EP's Convert pattern
    (a DQ whose only reader is a Q) is there."""
    from compiler.ir import parse

    rng = np.random.default_rng(0)
    w = rng.standard_normal((8, 16)).astype(np.float32) * 0.2
    b = rng.standard_normal(8).astype(np.float32) * 0.1
    text = """
    graph g(%x: f32[4,16] !u8{scale=0.02, zp=128}) -> (%z) {
      %w = const f32[8,16] !i8{scale=[%s], zp=0, axis=0} #sha:00
      %b = const f32[8] !i32{scale=[%s], zp=0, axis=0} #sha:01
      %y = Gemm(%x, %w, %b) {transB=1} : f32[4,8] !u16{scale=0.0001, zp=30000}
      %z = Relu(%y) : f32[4,8] !u16{scale=0.0001, zp=0}
    }
    """
    wscale = np.abs(w).max(axis=1) / 127
    text = text.replace("[%s]", "[" + ", ".join(f"{s:.8g}" for s in wscale) + "]", 1)
    text = text.replace("[%s]", "[" + ", ".join(f"{0.02 * s:.8g}" for s in wscale) + "]", 1)
    graph = parse(text, {"w": w, "b": b})
    raw = to_onnx(graph)
    model, done = legalize_qdq(raw)
    assert isinstance(done, QdqLegalization)
    assert done.widened == ["Gemm(y)"] and done.converts == [("x_dequantized", 8, 16)]
    assert _width_violations(model) == []
    x = rng.uniform(-2.5, 2.5, (4, 16)).astype(np.float32)
    want, got = _cpu(raw, {"x": x})[0], _cpu(model, {"x": x})[0]
    np.testing.assert_allclose(got, want, atol=2e-4)  # two 16-bit steps
    producers = {o: n for n in model.graph.node for o in n.output}
    gemm = next(n for n in model.graph.node if n.op_type == "Gemm")
    dq16 = producers[gemm.input[0]]
    q16 = producers[dq16.input[0]]
    dq8 = producers[q16.input[0]]
    assert (dq16.op_type, q16.op_type, dq8.op_type) == ("DequantizeLinear", "QuantizeLinear",
                                                          "DequantizeLinear")
    assert sum(1 for n in model.graph.node if dq8.output[0] in n.input) == 1


@pytest.mark.htp
def test_mixed_precision_vit_builds_no_float_op_on_the_htp(tmp_path: Path) -> None:
    graph, _, _ = _quantized_ir("vit", "w8a8")
    legalize_graph(graph)
    model, _ = legalize_qdq(to_onnx(graph))
    ops = qnn.qnn_graph_ops(model, arch="75")
    floats = [(o.op, o.name, o.inputs, o.outputs) for o in ops if o.is_float]
    assert floats == []
    kinds = {o.op for o in ops}
    assert {"LayerNorm", "FullyConnected", "Softmax", "Convert"} <= kinds


def _cycles(ctx: Path, feed: dict[str, np.ndarray]) -> int:
    return min(qnn.run_context(ctx, feed, profile=True).profile.total_cycles  # type: ignore
               for _ in range(2))


@pytest.mark.htp
def test_vit_w8a8_cycles_drop_against_the_unlegalized_build(tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch
                                                           ) -> None:
    """Measured (QAIRT 2.51, v75): 41.0 M cycles unlegalized, 11.0 M legalized, same SQNR."""
    model, example = ZOO["vit"]()
    batches = list(calibration_inputs("vit", 6))
    feed_t = batches[5]
    # with the LayerNorm op (the default writes ViT's batched norms out, which removes most of
    # what is legalized here)
    pipe = default_pipeline("w8a8").replace(",lower-layer-norm{min_outer_dims=2}", "")

    def build(out: Path) -> tuple[int, float]:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            cm = compiler.compile(model, example, precision="w8a8",
                                  calibration_data=batches[:4], output_dir=out,
                                  progress=False, pipeline=pipe)
        got = cm.run(*[t.numpy() for t in feed_t])
        ref = torch_outputs(model, feed_t)
        names = [i.name for i in onnx.load(str(cm.artifacts["model"]),
                                           load_external_data=False).graph.input]
        cyc = _cycles(Path(cm.artifacts["model"]),
                      {n: t.numpy() for n, t in zip(names, feed_t)})
        return cyc, _sqnr(ref[0], np.asarray(got[0]))

    after, sq_after = build(tmp_path / "after")
    with monkeypatch.context() as m:
        m.setattr(htp_emit, "legalize_qdq", lambda onnx_model: (onnx_model, QdqLegalization()))
        m.setattr(htp_emit, "legalize_graph", lambda g: [])
        before, sq_before = build(tmp_path / "before")
    assert after < 0.5 * before, (after, before)
    assert sq_after > sq_before - 1.0, (sq_after, sq_before)

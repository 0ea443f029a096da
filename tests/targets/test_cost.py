"""The roofline cost model (``targets/cost.py``), the CPU/GPU descriptors and ``estimate()``.

Calibration checks compare predictions with the published device numbers in
``/work/shared/QNN_NOTES.md`` (Qualcomm AI Hub): ResNet-50 W8A8 0.90 / 0.69 / 0.53 ms on
8 Gen 2 (v73) / 8 Gen 3 (v75) / 8 Elite (v79), MobileNetV2 W8A8 0.22 ms on 8 Elite; W8A16
1.7-2.2x and FP16 2.2-2.5x slower than W8A8; ResNet-18 W8A8 0.542 / 0.427 / 0.359 ms on
the same three SoCs (AI Hub's ``qai_hub_models/models/resnet18/perf_w8a8.yaml``, QNN runtime).
ResNet-50 W8A8 is what the HTP table was fitted to, so those three checks guard the fit;
MobileNetV2, ResNet-18 and the precision ratios are the checks the fit did not target
directly.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

import compiler
from compiler.errors import TargetError
from compiler.frontends import load_torch
from compiler.ir import Graph, QuantEncoding, parse
from compiler.passes import PassContext, PassManager
from targets import get_target
from targets.cost import (
    GraphCost,
    graph_cost,
    node_cost,
    node_macs,
    precision_key,
    scheme_key,
    transfer_cost,
)
from targets.hexagon_htp.target import DEVICES
from tests.models import build
from tests.models.reference_cnns import build_reference

#: (model, arch) -> published W8A8 latency in seconds (QNN_NOTES.md)
PUBLISHED_W8A8 = {
    ("resnet50", "73"): 0.90e-3, ("resnet50", "75"): 0.69e-3, ("resnet50", "79"): 0.53e-3,
    ("mobilenet_v2", "79"): 0.22e-3,
    # quic/ai-hub-models qai_hub_models/models/resnet18/perf_w8a8.yaml (torchscript_onnx_qnn)
    ("resnet18", "73"): 0.542e-3, ("resnet18", "75"): 0.427e-3, ("resnet18", "79"): 0.359e-3,
}
W8A16_RATIO = (1.7, 2.2)
FP16_RATIO = (2.2, 2.5)
TOLERANCE = 0.25

#: MACs at 1x3x224x224 (conv + the classifier): torchvision's 1.81 / 4.09 / 0.30 GMACs
REFERENCE_MACS = {"resnet18": 1_814_073_344, "resnet50": 4_089_184_256,
                  "mobilenet_v2": 300_774_272}


@pytest.fixture(scope="module")
def cnn_graphs() -> dict[str, Graph]:
    """The three reference CNNs as edgec sees them before quantization (canonicalize+fuse)."""
    out = {}
    for name in REFERENCE_MACS:
        model, x = build_reference(name)
        g = load_torch(model, x)
        PassManager(get_target("htp-v75").default_pipeline("fp32")).run(
            g, PassContext(target="htp-v75"))
        out[name] = g
    return out


def _within(pred: float, lo: float, hi: float | None = None, tol: float = TOLERANCE) -> bool:
    """``pred`` within ``tol`` of ``lo`` (or of the interval ``[lo, hi]``)."""
    hi = lo if hi is None else hi
    return lo * (1 - tol) <= pred <= hi * (1 + tol)


# --- MAC counting ---------------------------------------------------------------------------


def _graph(text: str) -> Graph:
    return parse(text)


def test_reference_cnn_macs_exact(cnn_graphs: dict[str, Graph]) -> None:
    for name, want in REFERENCE_MACS.items():
        assert graph_cost(cnn_graphs[name], "htp-v75", "a8w8").macs == want, name


def test_resnet50_stem_and_classifier_macs(cnn_graphs: dict[str, Graph]) -> None:
    g = cnn_graphs["resnet50"]
    convs = [n for n in g.nodes if n.op == "Conv"]
    assert node_macs(convs[0]) == 112 * 112 * 64 * 3 * 7 * 7  # 118,013,952
    gemm = next(n for n in g.nodes if n.op == "Gemm")
    assert node_macs(gemm) == 2048 * 1000


def test_depthwise_and_grouped_conv_macs() -> None:
    g = _graph("""graph t(%x: f32[1,32,56,56]) -> (%d, %g) {
  %wd = const f32[32,1,3,3] #sha:00000000000000d1
  %wg = const f32[64,8,3,3] #sha:00000000000000d2
  %d = Conv(%x, %wd) {group=32, pads=[1,1,1,1]} : f32[1,32,56,56]
  %g = Conv(%x, %wg) {group=4, pads=[1,1,1,1], strides=[2,2]} : f32[1,64,28,28]
}""")
    dw, grouped = list(g.nodes)
    assert node_macs(dw) == 32 * 56 * 56 * 9  # one 3x3 window per output element
    assert node_macs(grouped) == 64 * 28 * 28 * 8 * 9  # Cin/groups = 8


def test_conv_transpose_gemm_and_attention_matmul_macs() -> None:
    g = _graph("""graph t(%x: f32[1,16,8,8], %a: f32[32,10], %q: f32[1,4,16,8], %k: f32[1,4,8,16]) -> (%u, %y, %s) {
  %wt = const f32[16,4,4,4] #sha:00000000000000e1
  %wg = const f32[32,20] #sha:00000000000000e2
  %u = ConvTranspose(%x, %wt) {group=2, strides=[2,2], pads=[1,1,1,1]} : f32[1,8,16,16]
  %y = Gemm(%a, %wg) {transA=1} : f32[10,20]
  %s = MatMul(%q, %k) : f32[1,4,16,16]
}""")
    ct, gemm, mm = list(g.nodes)
    assert node_macs(ct) == 16 * 8 * 8 * 4 * 4 * 4  # every input through Cout/g * k*k weights
    assert node_macs(gemm) == 10 * 20 * 32  # K = A.shape[0] under transA
    assert node_macs(mm) == 4 * 16 * 16 * 8  # Q @ K^T: both operands are activations


# --- precision keys -------------------------------------------------------------------------


def test_precision_key_from_encodings() -> None:
    g = _graph("""graph t(%x: f32[1,8,4,4] !u8{scale=0.1, zp=0}, %h: f32[1,8,4,4] !u16{scale=0.1, zp=0}) -> (%a, %b, %c) {
  %w = const f32[8,8,1,1] !i8{scale=0.1, zp=0} #sha:00000000000000f1
  %a = Conv(%x, %w) : f32[1,8,4,4] !u8{scale=0.2, zp=0}
  %b = Conv(%h, %w) : f32[1,8,4,4] !u16{scale=0.2, zp=0}
  %c = Relu(%a) : f32[1,8,4,4]
}""")
    a, b, _ = list(g.nodes)
    assert precision_key(a, "fp16") == "a8w8"
    assert precision_key(b, "fp16") == "a16w8"
    w16 = QuantEncoding(16, True, np.asarray(0.1), np.asarray(0))
    g.constants["w"].encoding = w16
    assert precision_key(b, "fp16") == "a16w16"
    float_graph = _graph("""graph t(%x: f32[1,8]) -> (%y) {
  %y = Relu(%x) : f32[1,8]
}""")
    assert precision_key(next(iter(float_graph.nodes)), "fp16") == "fp16"
    assert [scheme_key(p) for p in ("w8a8", "w8a16", "w4a16", "fp16")] == [
        "a8w8", "a16w8", "a16w8", "fp16"]
    with pytest.raises(TargetError):
        scheme_key("w3a5")


def test_encoded_widths_set_bytes() -> None:
    g = _graph("""graph t(%x: f32[1,64,28,28]) -> (%y) {
  %w = const f32[64,64,3,3] #sha:00000000000000a1
  %y = Conv(%x, %w) {pads=[1,1,1,1]} : f32[1,64,28,28]
}""")
    conv = next(iter(g.nodes))
    dev = DEVICES["75"]
    c8, c16, cf = (node_cost(conv, dev, k) for k in ("a8w8", "a16w8", "fp16"))
    act = 2 * 64 * 28 * 28
    assert c8.bytes == act + 64 * 64 * 9
    assert c16.bytes == 2 * act + 64 * 64 * 9
    assert cf.bytes == 2 * act + 2 * 64 * 64 * 9
    assert c8.weight_bytes == 64 * 64 * 9 and cf.weight_bytes == 2 * 64 * 64 * 9


# --- monotonic sanity -----------------------------------------------------------------------


def test_bigger_conv_costs_more_and_newer_arch_is_faster() -> None:
    g = _graph("""graph t(%x: f32[1,64,56,56]) -> (%a, %b) {
  %wa = const f32[64,64,3,3] #sha:00000000000000b1
  %wb = const f32[128,64,3,3] #sha:00000000000000b2
  %a = Conv(%x, %wa) {pads=[1,1,1,1]} : f32[1,64,56,56]
  %b = Conv(%x, %wb) {pads=[1,1,1,1]} : f32[1,128,56,56]
}""")
    small, big = list(g.nodes)
    for arch in DEVICES:
        dev = DEVICES[arch]
        assert node_cost(big, dev, "a8w8").seconds > node_cost(small, dev, "a8w8").seconds
        assert node_cost(small, dev, "a16w8").seconds > node_cost(small, dev, "a8w8").seconds
    times = [node_cost(big, DEVICES[a], "a8w8").seconds for a in ("68", "73", "75", "79", "81")]
    assert times == sorted(times, reverse=True)


def test_w8a16_slower_than_w8a8_on_every_cnn(cnn_graphs: dict[str, Graph]) -> None:
    for name, g in cnn_graphs.items():
        for target in ("htp-v73", "htp-v75", "htp-v79", "cpu"):
            t8 = graph_cost(g, target, "a8w8").seconds
            t16 = graph_cost(g, target, "a16w8").seconds
            assert t16 > t8, (name, target)
    assert (graph_cost(cnn_graphs["resnet50"], "htp-v75", "a8w8").seconds
            > graph_cost(cnn_graphs["resnet18"], "htp-v75", "a8w8").seconds)


def test_htp_fuses_relu_into_conv_but_cpu_does_not(cnn_graphs: dict[str, Graph]) -> None:
    g = cnn_graphs["resnet18"]
    htp = graph_cost(g, "htp-v75", "a8w8")
    cpu = graph_cost(g, "cpu", "a8w8")
    relus = [c for c in htp.nodes if c.op == "Relu"]
    assert relus and all(c.bound == "fused" and c.seconds == 0 for c in relus)
    assert all(c.bound != "fused" and c.seconds > 0 for c in cpu.nodes if c.op == "Relu")


def test_depthwise_runs_on_the_vector_unit() -> None:
    """A depthwise conv gets the HVX lane rate, not the matrix unit's: per MAC it costs more
    compute than a dense 1x1 conv."""
    g = _graph("""graph t(%x: f32[1,96,56,56]) -> (%d, %p) {
  %wd = const f32[96,1,3,3] #sha:00000000000000c1
  %wp = const f32[96,96,1,1] #sha:00000000000000c2
  %d = Conv(%x, %wd) {group=96, pads=[1,1,1,1]} : f32[1,96,56,56]
  %p = Conv(%x, %wp) : f32[1,96,56,56]
}""")
    dw, pw = list(g.nodes)
    dev = DEVICES["75"]
    cd, cp = node_cost(dw, dev, "a8w8"), node_cost(pw, dev, "a8w8")
    assert cd.compute_s / cd.macs > 5 * cp.compute_s / cp.macs


# --- calibration against published numbers --------------------------------------------------


@pytest.mark.parametrize(("model", "arch"), sorted(PUBLISHED_W8A8))
def test_w8a8_within_25_percent_of_published(cnn_graphs: dict[str, Graph], model: str,
                                             arch: str) -> None:
    pred = graph_cost(cnn_graphs[model], f"htp-v{arch}", "a8w8").seconds
    want = PUBLISHED_W8A8[(model, arch)]
    assert _within(pred, want), f"{model} v{arch}: {pred * 1e3:.3f} ms vs {want * 1e3} ms"


@pytest.mark.parametrize("arch", ["73", "75", "79"])
def test_resnet50_w8a16_and_fp16_within_25_percent(cnn_graphs: dict[str, Graph],
                                                   arch: str) -> None:
    g = cnn_graphs["resnet50"]
    want = PUBLISHED_W8A8[("resnet50", arch)]
    w8a16 = graph_cost(g, f"htp-v{arch}", "a16w8").seconds
    fp16 = graph_cost(g, f"htp-v{arch}", "fp16").seconds
    assert _within(w8a16, want * W8A16_RATIO[0], want * W8A16_RATIO[1]), w8a16
    assert _within(fp16, want * FP16_RATIO[0], want * FP16_RATIO[1]), fp16


# --- transfers ------------------------------------------------------------------------------


def test_transfer_cost_positive_and_linear() -> None:
    t0, t1, t2 = (transfer_cost(n, "htp-v75", "cpu") for n in (0, 1 << 20, 2 << 20))
    assert 0 < t0 < t1 < t2
    assert t2 - t1 == pytest.approx(t1 - t0)
    assert transfer_cost(1 << 20, "htp-v75", "htp-v75") == 0.0
    assert transfer_cost(1 << 20, "cpu", "gpu-adreno") > 0
    with pytest.raises(ValueError):
        transfer_cost(-1, "cpu", "htp-v75")


# --- GPU and CPU descriptors ----------------------------------------------------------------


def test_gpu_descriptor_float_only(cnn_graphs: dict[str, Graph]) -> None:
    gpu = get_target("gpu-adreno")
    assert gpu.name == "gpu-adreno" and gpu.device.macs_per_cycle["fp16"] > 0
    g = _graph("""graph t(%x: f32[1,8] !u8{scale=0.1, zp=0}, %f: f32[1,8]) -> (%y, %z) {
  %y = Relu(%x) : f32[1,8] !u8{scale=0.1, zp=0}
  %z = Relu(%f) : f32[1,8]
}""")
    quant, flt = list(g.nodes)
    assert not gpu.supports(quant) and gpu.supports(quant).reason.value == "dtype-unsupported"
    assert gpu.supports(flt)
    with pytest.raises(TargetError):
        graph_cost(cnn_graphs["mobilenet_v2"], gpu, "a8w8")
    assert graph_cost(cnn_graphs["mobilenet_v2"], gpu, "fp16").seconds > 0
    with pytest.raises(TargetError):
        _ = gpu.arch


def test_cpu_has_a_cost_model(cnn_graphs: dict[str, Graph]) -> None:
    cost = graph_cost(cnn_graphs["resnet18"], "cpu")
    assert isinstance(cost, GraphCost) and all(c.key == "fp32" for c in cost.nodes)
    # the HTP is the faster device for a quantized CNN
    assert cost.seconds > graph_cost(cnn_graphs["resnet18"], "htp-v75", "a8w8").seconds


# --- estimate() -----------------------------------------------------------------------------


def _check_estimate(est: dict[str, Any], nodes: int) -> None:
    assert len(est["nodes"]) == nodes
    for entry in est["nodes"]:
        assert {"op", "name", "seconds", "macs", "bytes", "bound"} <= set(entry)
        assert entry["bound"] in ("compute", "memory", "fused")
        assert entry["name"]
    assert est["totals"]["seconds"] == pytest.approx(
        sum(e["seconds"] for e in est["nodes"]) + est["totals"]["graph_overhead_s"])


def test_estimate_zoo_resnet_has_an_entry_per_node(tmp_path: Any) -> None:
    model, x = build("resnet")
    est = compiler.estimate(model, target="htp-v75", precision="w8a8", example_inputs=x)
    g = load_torch(model, x)
    PassManager(get_target("htp-v75").default_pipeline("fp32")).run(
        g, PassContext(target="htp-v75"))
    _check_estimate(est, len(g.nodes))
    assert [e["op"] for e in est["nodes"]] == [n.op for n in g.nodes]
    assert est["totals"]["macs"] == sum(node_macs(n) for n in g.nodes) > 0
    assert {e["precision"] for e in est["nodes"]} == {"a8w8"}

    # an IR graph is costed as given (and not modified); an ONNX file the same as the module
    before = str(g)
    same = compiler.estimate(g, target="htp-v75", precision="w8a8", optimize=False)
    assert str(g) == before
    assert same["totals"]["seconds"] == pytest.approx(est["totals"]["seconds"])
    from compiler.frontends import save_onnx

    path = tmp_path / "resnet.onnx"
    save_onnx(g, path)
    from_file = compiler.estimate(str(path), target="htp-v75", precision="w8a8")
    assert from_file["totals"]["macs"] == est["totals"]["macs"]

    slower = compiler.estimate(g, target="htp-v75", precision="w8a16")
    assert slower["totals"]["seconds"] > est["totals"]["seconds"]
    assert compiler.estimate(g, target="cpu", precision="fp32")["totals"]["seconds"] > 0
    with pytest.raises(TargetError):
        compiler.estimate(g, target="gpu-adreno", precision="w8a8")


def test_estimate_keeps_existing_encodings() -> None:
    g = _graph("""graph t(%x: f32[1,8,4,4] !u16{scale=0.1, zp=0}) -> (%a) {
  %w = const f32[8,8,1,1] !i8{scale=0.1, zp=0} #sha:00000000000000f1
  %a = Conv(%x, %w) : f32[1,8,4,4] !u16{scale=0.2, zp=0}
}""")
    est = compiler.estimate(g, target="htp-v75", precision="w8a8")
    assert [e["precision"] for e in est["nodes"]] == ["a16w8"]
    assert np.isfinite(est["totals"]["seconds"])

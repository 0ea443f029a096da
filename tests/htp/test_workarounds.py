"""Two HTP miscomputations found with the simulator, and the workarounds edgec applies: each
test builds the smallest model that shows the problem and checks that the compiled context
agrees with the same quantized graph on the CPU reference."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from torch import nn

import compiler
from compiler.frontends import load_torch
from compiler.passes import PassManager
from compiler.reference import run_reference

pytestmark = pytest.mark.htp


class _AddSiLU(nn.Module):
    """``a = x + c; y = a * sigmoid(a)`` over [1, 64, 8, 8]: a GroupNorm's shift, then SiLU."""

    def __init__(self) -> None:
        super().__init__()
        self.c = nn.Parameter(torch.linspace(-0.2, 0.2, 64).reshape(64, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = x + self.c
        return a * torch.sigmoid(a)


class _NormLinear(nn.Module):
    def __init__(self, d: int) -> None:
        super().__init__()
        self.ln = nn.LayerNorm(d)
        self.fc = nn.Linear(d, d)
        with torch.no_grad():
            self.ln.weight.uniform_(0.5, 1.5)
            self.ln.bias.uniform_(-0.3, 0.3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.ln(x))


def _agreement(model: nn.Module, shape: tuple[int, ...], **kw: object) -> float:
    gen = torch.Generator().manual_seed(0)
    cal = [(torch.randn(*shape, generator=gen) * 2,) for _ in range(4)]
    cm = compiler.compile(model.eval(), cal[0], precision="w8a16", calibration_data=cal,
                          **kw)  # type: ignore[arg-type]
    return float(cm.report["summary"]["target_vs_cpu_qdq_db"])


def test_silu_gate_after_an_add_agrees_at_w8a16() -> None:
    assert _agreement(_AddSiLU(), (1, 64, 8, 8)) > 40


def test_silu_gate_at_16_bits_is_the_known_miscomputation() -> None:
    """Without the 8-bit gate rule the HTP disagrees: the rule is still needed."""
    from targets.hexagon_htp import target as htp

    rules = dataclasses.replace(htp.HtpTarget("75").quant_rules, silu_gate_bits=None)
    model = _AddSiLU().eval()
    gen = torch.Generator().manual_seed(0)
    cal = [(torch.randn(1, 64, 8, 8, generator=gen) * 2,) for _ in range(4)]
    orig = htp.HtpTarget.quant_rules
    try:
        htp.HtpTarget.quant_rules = property(lambda self: rules)  # type: ignore[assignment]
        cm = compiler.compile(model, cal[0], precision="w8a16", calibration_data=cal)
    finally:
        htp.HtpTarget.quant_rules = orig  # type: ignore[method-assign]
    assert cm.report["summary"]["target_vs_cpu_qdq_db"] < 10
    assert cm.report["warnings"]


@pytest.mark.parametrize("rows", [16, 32])
def test_layer_norm_then_linear_agrees_at_w8a16(rows: int) -> None:
    assert _agreement(_NormLinear(64), (1, rows, 64)) > 40


def test_lower_layer_norm_is_exact_and_filters_by_rows() -> None:
    model = _NormLinear(32).eval()
    for rows, lowered in ((16, True), (8, False)):
        x = torch.randn(1, rows, 32)
        g = load_torch(model, (x,))
        before = g.copy()
        PassManager("lower-layer-norm{rows=16}").run(g)
        assert ("LayerNormalization" in {n.op for n in g.nodes}) is not lowered
        want = run_reference(before, [x.numpy()])
        got = run_reference(g, [x.numpy()])
        for k in want:
            np.testing.assert_allclose(got[k], want[k], rtol=1e-4, atol=1e-5)


def _biased_linear(bias: float) -> nn.Module:
    torch.manual_seed(0)
    m = nn.Linear(32, 16)
    with torch.no_grad():
        m.bias.copy_(torch.randn(16) * bias)
    return m


@pytest.mark.parametrize("bias", [0.1, 1.0])
def test_sixteen_bit_weights_take_their_bias_as_an_add(bias: float) -> None:
    """A ``w16`` Gemm keeps its bias out of the HTP's 16x16 kernel (measured without the rule:
    25 dB against the CPU reference at bias 0.1; at bias 1 the int32 grid overflows)."""
    cm_kw = {"overrides": {"op:Gemm": "w16"}}
    gen = torch.Generator().manual_seed(0)
    cal = [(torch.randn(4, 32, generator=gen) * 2,) for _ in range(4)]
    cm = compiler.compile(_biased_linear(bias).eval(), cal[0], precision="w8a16",
                          calibration_data=cal, **cm_kw)  # type: ignore[arg-type]
    s = cm.report["summary"]
    assert s["cpu_qdq_sqnr_db"] > 75 and s["target_vs_cpu_qdq_db"] > 55, s
    assert cm.report["quantization"]["bias_as_add"] == ["Gemm (%linear)"]
    gemm = next(n for n in cm.graph.nodes if n.op == "Gemm")
    assert len(gemm.inputs) == 2 and gemm.inputs[1].encoding.bits == 16
    add = gemm.outputs[0].consumers()[0]
    assert add.op == "Add" and all(v.encoding.bits == 16 for v in (*add.inputs, *add.outputs))
    assert [v.name for v in cm.graph.outputs] == ["linear"]  # the output keeps its name


def test_the_bias_split_is_exact_in_float_and_only_for_wide_weights() -> None:
    from compiler.passes import PassContext
    from targets.hexagon_htp.rules import HTP_QUANT_RULES

    class ConvNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = nn.Conv2d(3, 8, 3, padding=1)
            self.b = nn.Conv2d(8, 4, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.b(torch.relu(self.a(x)))

    torch.manual_seed(0)
    x = torch.randn(1, 3, 6, 6)
    g = load_torch(ConvNet().eval(), (x,))
    ref = g.copy()
    ctx = PassContext(calibration=[{g.inputs[0].name: (x * 1.5).numpy()}],
                      options={"quant_rules": HTP_QUANT_RULES,
                               "quant_overrides": {"a": "w16"}})
    PassManager("canonicalize,fuse,calibrate,quantize{scheme=w8a16,bias_correction=false}"
                ).run(g, ctx)
    convs = [n for n in g.nodes if n.op == "Conv"]
    assert [len(c.inputs) for c in convs] == [2, 3]  # only the w16 conv lost its bias
    want = run_reference(ref, [x.numpy()], qdq=False)
    got = run_reference(g, [x.numpy()], qdq=False)
    for k in want:
        np.testing.assert_allclose(next(iter(got.values())), want[k], rtol=1e-5, atol=1e-5)

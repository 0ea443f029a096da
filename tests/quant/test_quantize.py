"""The quantize pass on small real graphs (CPU reference): the target's rules, overrides, the
automatic policy, bias correction, and scales that are never zero or NaN."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from compiler.errors import PassError
from compiler.frontends import load_torch
from compiler.passes import PassContext, PassManager
from compiler.reference import run_reference
from passes.quant.quantize import activation_encoding, parse_spec
from targets.hexagon_htp.rules import HTP_QUANT_RULES


class Block(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.norm = torch.nn.LayerNorm(8)
        self.fc = torch.nn.Linear(8, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.conv(x)).mean((2, 3))
        y = self.norm(y)
        return torch.softmax(self.fc(y), -1).reshape(5)


def _quantized(scheme: str = "w8a16", overrides: dict | None = None, **opts: object):
    torch.manual_seed(0)
    m = Block().eval()
    x = torch.randn(1, 3, 6, 6)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        g = load_torch(m, (x,))
    calib = [{"x": (torch.randn(1, 3, 6, 6) + 1.0).numpy()} for _ in range(6)]
    ctx = PassContext(calibration=calib, options={"quant_rules": HTP_QUANT_RULES,
                                                  "quant_overrides": overrides or {}})
    extra = "".join(f",{k}={str(v).lower()}" for k, v in opts.items())
    PassManager(f"canonicalize,fuse,calibrate,quantize{{scheme={scheme}{extra}}}").run(g, ctx)
    return m, g, ctx, calib


def _node(g, op: str):
    return next(n for n in g.nodes if n.op == op)


def test_rules_bias_fixed_range_shared_and_fused() -> None:
    _, g, _, _ = _quantized()
    conv = _node(g, "Conv")
    x, w, b = conv.inputs
    assert w.encoding.signed and w.encoding.axis == 0 and np.all(w.encoding.zero_point == 0)
    assert b.encoding.bits == 32
    np.testing.assert_allclose(b.encoding.scale, x.encoding.scale * w.encoding.scale,
                               rtol=1e-6)
    assert conv.outputs[0].encoding is None  # the Relu is fused into the Conv on the HTP
    sm = _node(g, "Softmax").outputs[0].encoding
    assert float(sm.scale) == pytest.approx(1 / 65535) and int(sm.zero_point) == 0
    r = _node(g, "Reshape")
    assert r.outputs[0].encoding == r.inputs[0].encoding


def test_overrides_and_errors() -> None:
    _, g, ctx, _ = _quantized("w8a8", {"op:Softmax": "a16", "fc": "w4a16"})
    assert _node(g, "Softmax").outputs[0].encoding.bits == 16
    gemm = _node(g, "Gemm")
    assert gemm.inputs[1].encoding.bits == 4
    assert {o["pattern"] for o in ctx.report["quantization"]["overrides"]} == {"op:Softmax",
                                                                              "fc"}
    _, g, _, _ = _quantized("w8a8", {"norm": "fp32"})
    assert _node(g, "LayerNormalization").outputs[0].encoding is None
    with pytest.raises(PassError, match=r"'nothing\.here' matches no node"):
        _quantized("w8a8", {"nothing.here": "a16"})
    with pytest.raises(PassError, match="not one of"):
        _quantized("w8a8", {"fc": "w9x"})
    assert parse_spec("w4a16") == {"w": 4, "a": 16} and parse_spec("fp32") == {"float": True}


def test_auto_policy_keeps_layer_norm_at_16_bits_and_says_why() -> None:
    _, g, ctx, _ = _quantized("w8a8")
    ln = _node(g, "LayerNormalization")
    assert ln.inputs[0].encoding.bits == 16 and ln.outputs[0].encoding.bits == 16
    kept = ctx.report["quantization"]["kept_16bit"]
    assert any("residual stream" in k["reason"] for k in kept)
    _, g, _, _ = _quantized("w8a8", auto=False)
    assert _node(g, "LayerNormalization").outputs[0].encoding.bits == 8


def test_bias_correction_cancels_the_mean_output_error() -> None:
    def mean_err(**opts: object) -> float:
        m, g, _, calib = _quantized("w8a8", **opts)
        name = _node(g, "Conv").outputs[0].name
        errs = []
        for f in calib:
            q = run_reference(g, f, outputs=[name])[name]
            with torch.no_grad():
                r = m.conv(torch.from_numpy(f["x"])).numpy()  # the float model's own conv
            errs.append((q - r).mean(axis=(0, 2, 3)))
        return float(np.abs(np.mean(errs, axis=0)).mean())

    assert mean_err(bias_correction=True) < 0.5 * mean_err(bias_correction=False)


@settings(max_examples=200, deadline=None)
@given(st.floats(-1e6, 1e6, allow_nan=False), st.floats(-1e6, 1e6, allow_nan=False),
       st.sampled_from([8, 16]))
def test_activation_encodings_never_have_zero_or_nan_scales(a: float, b: float,
                                                            bits: int) -> None:
    enc = activation_encoding(min(a, b), max(a, b), bits)
    s = float(enc.scale)
    assert math.isfinite(s) and s > 0
    assert enc.qmin <= int(enc.zero_point) <= enc.qmax
    # zero is exactly representable (padding, ReLU zeros)
    assert enc.fake_quant(np.zeros(1, np.float32))[0] == 0.0

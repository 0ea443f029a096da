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
    g = _load(m, torch.randn(1, 3, 6, 6))
    calib = [{"x": (torch.randn(1, 3, 6, 6) + 1.0).numpy()} for _ in range(6)]
    ctx = PassContext(calibration=calib, options={"quant_rules": HTP_QUANT_RULES,
                                                  "quant_overrides": overrides or {}})
    extra = "".join(f",{k}={str(v).lower()}" for k, v in opts.items())
    PassManager(f"canonicalize,fuse,calibrate,quantize{{scheme={scheme}{extra}}}").run(g, ctx)
    return m, g, ctx, calib


def _node(g, op: str):
    return next(n for n in g.nodes if n.op == op)


def _load(model: torch.nn.Module, *inputs: torch.Tensor):  # type: ignore[no-untyped-def]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return load_torch(model, inputs)


def _w8a8_sqnr(g0, feeds: list[dict], auto: bool, output: str | None = None):  # type: ignore[no-untyped-def]
    """Quantize a copy of ``g0`` at w8a8 (auto policy on or off); the SQNR of ``output`` (the
    graph's first output by default) on the CPU reference against the float graph."""
    g = g0.copy()
    ctx = PassContext(calibration=feeds, options={"quant_rules": HTP_QUANT_RULES})
    PassManager(f"canonicalize,fuse,calibrate,quantize{{scheme=w8a8,auto={str(auto).lower()}}}"
                ).run(g, ctx)
    name = output or g.outputs[0].name
    sig = err = 0.0
    for f in feeds:
        got = run_reference(g, f, outputs=[name])[name]
        want = run_reference(g, f, outputs=[name], qdq=False)[name]
        sig += float(np.sum(want.astype(np.float64) ** 2))
        err += float(np.sum((got.astype(np.float64) - want) ** 2))
    return 10 * math.log10(sig / max(err, 1e-30)), ctx, g


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


class _Bounded(torch.nn.Module):
    """A free tensor (``a = 3x``), a ReLU6, a HardSigmoid, a Sigmoid and a ReLU of it."""

    def forward(self, x: torch.Tensor):  # type: ignore[no-untyped-def]
        a = x * 3.0
        return (a + 1.0, torch.clamp(a, 0.0, 6.0) * 1.5, torch.nn.functional.hardsigmoid(a),
                torch.sigmoid(a), torch.relu(a) - 1.0)


def _bounded(margin: float, method: str = "minmax"):  # type: ignore[no-untyped-def]
    """(graph quantized at w8a16 with ``range_margin=margin``, calibration min/max per op)."""
    gen = torch.Generator().manual_seed(3)
    calib = [{"x": (torch.randn(1, 256, generator=gen) * 2).numpy()} for _ in range(4)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        g = load_torch(_Bounded().eval(), (torch.from_numpy(calib[0]["x"]),))
    ctx = PassContext(calibration=calib, options={"quant_rules": HTP_QUANT_RULES})
    PassManager(f"canonicalize,calibrate{{method={method}}},"
                f"quantize{{scheme=w8a16,range_margin={margin}}}").run(g, ctx)
    a = np.concatenate([f["x"].ravel() for f in calib]).astype(np.float64) * 3.0
    seen = {"Mul": a, "Clip": np.clip(a, 0.0, 6.0), "HardSigmoid": np.clip(a / 6 + 0.5, 0, 1),
            "Sigmoid": 1 / (1 + np.exp(-a)), "Relu": np.maximum(a, 0.0)}
    return g, {k: (float(v.min()), float(v.max())) for k, v in seen.items()}


def _enc_range(enc) -> tuple[float, float]:  # type: ignore[no-untyped-def]
    s, z = float(enc.scale), int(enc.zero_point)
    return (enc.qmin - z) * s, (enc.qmax - z) * s


def test_range_margin_widens_free_tensors_and_zero_gives_the_calibrated_range() -> None:
    g0, seen = _bounded(0.0)
    g25, _ = _bounded(0.25)
    lo, hi = seen["Mul"]
    assert lo < 0 < hi  # both sides free: both get the margin
    span = hi - lo
    # margin 0: the calibrated (minmax) range, to a quantization step
    lo0, hi0 = _enc_range(_node(g0, "Mul").outputs[0].encoding)
    step = span / 65535
    assert lo0 == pytest.approx(lo, abs=2 * step) and hi0 == pytest.approx(hi, abs=2 * step)
    # margin 0.25: 25% of the span more on each side
    lo25, hi25 = _enc_range(_node(g25, "Mul").outputs[0].encoding)
    assert lo25 == pytest.approx(lo - 0.25 * span, abs=3 * step)
    assert hi25 == pytest.approx(hi + 0.25 * span, abs=3 * step)
    # a one-sided tensor (ReLU, min 0) is widened only above: 0 stays the bottom
    rlo, rhi = _enc_range(_node(g25, "Relu").outputs[0].encoding)
    assert rlo == pytest.approx(0.0, abs=1e-12)
    assert rhi == pytest.approx(seen["Relu"][1] * 1.25, rel=1e-3)


def test_range_margin_stays_inside_what_the_op_can_output() -> None:
    g, seen = _bounded(0.25)
    assert seen["Clip"][1] == pytest.approx(6.0)  # the calibration saturates the ReLU6
    clo, chi = _enc_range(_node(g, "Clip").outputs[0].encoding)
    assert clo == pytest.approx(0.0, abs=1e-12) and chi <= 6.0 + 1e-5
    assert chi == pytest.approx(6.0, rel=1e-4)
    for op in ("HardSigmoid", "Sigmoid"):
        assert seen[op][1] > 0.99  # saturated too: a margin would otherwise pass 1
        lo, hi = _enc_range(_node(g, op).outputs[0].encoding)
        assert lo == pytest.approx(0.0, abs=1e-12) and hi <= 1.0 + 1e-6, op
    # the margin never narrows a range
    g0, _ = _bounded(0.0)
    for op in ("Mul", "Clip", "HardSigmoid", "Relu"):
        lo0, hi0 = _enc_range(_node(g0, op).outputs[0].encoding)
        lo, hi = _enc_range(_node(g, op).outputs[0].encoding)
        assert lo <= lo0 + 1e-9 and hi >= hi0 - 1e-6, op


class _NormThenLinear(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.norm = torch.nn.LayerNorm(16)
        self.fc = torch.nn.Linear(16, 16)
        with torch.no_grad():
            self.norm.weight.uniform_(0.5, 1.5)
            self.norm.bias.uniform_(-0.3, 0.3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        centred = x - x.mean(-1, keepdim=True)  # a centring that is no normalization
        return self.fc(self.norm(x + 1.0)) + centred


def test_auto_policy_keeps_a_written_out_layer_norm_at_16_bits() -> None:
    """``lower-layer-norm`` writes LayerNorm as ReduceMean/Sub/Mul/Sqrt/Div: under w8a8 its
    tensors stay 16-bit like the op's (the zoo ViT at w8a8 drops from 25.8 to 8.8 dB when
    they go to 8 bits)."""
    torch.manual_seed(0)
    x = torch.randn(1, 8, 16)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        g = load_torch(_NormThenLinear().eval(), (x,))
    calib = [{g.inputs[0].name: torch.randn(1, 8, 16).numpy()} for _ in range(3)]
    ctx = PassContext(calibration=calib, options={"quant_rules": HTP_QUANT_RULES})
    PassManager("canonicalize,fuse,lower-layer-norm{rows=0},canonicalize,calibrate,"
                "quantize{scheme=w8a8}").run(g, ctx)
    assert "LayerNormalization" not in {n.op for n in g.nodes}
    div = _node(g, "Div")
    assert div.outputs[0].encoding.bits == 16
    assert _node(g, "Sqrt").outputs[0].encoding.bits == 16
    # the affine after the division and the norm's input (the residual stream) too
    affine = div.outputs[0].consumers()[0]
    assert affine.op == "Mul" and affine.outputs[0].encoding.bits == 16
    subs = [n for n in g.nodes if n.op == "Sub"]
    assert len(subs) == 2
    norm_sub = next(s for s in subs if s.inputs[0].producer is not None
                    and s.inputs[0].producer.op == "Add")
    other = next(s for s in subs if s is not norm_sub)
    assert norm_sub.inputs[0].encoding.bits == 16 and norm_sub.outputs[0].encoding.bits == 16
    assert other.outputs[0].encoding.bits == 8  # centring alone is not a normalization
    kept = ctx.report["quantization"]["kept_16bit"]
    assert any("normalization written out" in k["reason"] for k in kept)
    assert not any(k["tensor"] == other.outputs[0].name for k in kept)


class _TimestepEmbedding(torch.nn.Module):
    """A diffusion model's sinusoidal timestep embedding (t in [0, 1000)) into a Linear."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = torch.nn.Linear(16, 8)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        freqs = torch.exp(-math.log(10000.0) * torch.arange(8, dtype=torch.float32) / 8)
        args = t[:, None] * freqs[None]
        return self.fc(torch.cat([torch.cos(args), torch.sin(args)], dim=-1))


def test_auto_policy_keeps_the_phase_of_sin_and_cos_at_16_bits() -> None:
    """At 8 bits, [0, 1000) is a step of 4 radians and the zoo UNet's Sin measured -1.7 dB
    against FP32; the phase chain (t, its Unsqueeze, the Mul and the Mul's frequency table)
    kept at 16 bits brings the embedding back, and the report says why."""
    torch.manual_seed(0)
    g0 = _load(_TimestepEmbedding().eval(), torch.tensor([500.0]))
    name = g0.inputs[0].name
    feeds = [{name: np.array([v], np.float32)}
             for v in (3.0, 117.0, 402.5, 640.0, 999.0, 871.25)]
    sin = _node(g0, "Sin").outputs[0].name
    plain, _, _ = _w8a8_sqnr(g0, feeds, False, sin)
    kept_db, ctx, _ = _w8a8_sqnr(g0, feeds, True, sin)
    assert plain < 15 and kept_db > 35, (plain, kept_db)
    kept = ctx.report["quantization"]["kept_16bit"]
    assert any(k["tensor"] == name and "phase of" in k["reason"] for k in kept)


class _TinyViT(torch.nn.Module):
    """Patch embedding, a learned CLS token joined by Concat, a norm, a head on the CLS row."""

    def __init__(self) -> None:
        super().__init__()
        self.patch = torch.nn.Conv2d(3, 16, 4, stride=4)
        self.cls = torch.nn.Parameter(torch.randn(1, 1, 16) * 0.02)
        self.norm = torch.nn.LayerNorm(16)
        self.head = torch.nn.Linear(16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = self.patch(x).flatten(2).transpose(1, 2)
        t = torch.cat([self.cls.expand(x.shape[0], -1, -1), t], dim=1)
        return self.head(self.norm(t)[:, 0])


def test_auto_policy_keeps_a_learned_token_and_what_it_is_joined_to_at_16_bits() -> None:
    """A CLS token (std 0.02) joined to patch embeddings (range ~±3) rounds to a few 8-bit
    steps of their grid; the zoo ViT at w8a8 went from 25.7 to 34.6 dB with the rule."""
    torch.manual_seed(0)
    g0 = _load(_TinyViT().eval(), torch.randn(1, 3, 16, 16))
    name = g0.inputs[0].name
    feeds = [{name: torch.randn(1, 3, 16, 16).numpy()} for _ in range(6)]
    plain, _, _ = _w8a8_sqnr(g0, feeds, False)
    kept_db, ctx, g = _w8a8_sqnr(g0, feeds, True)
    assert kept_db > plain + 6, (plain, kept_db)  # measured 9.8 -> 55.3 dB
    kept = {k["tensor"]: k["reason"] for k in ctx.report["quantization"]["kept_16bit"]}
    assert "learned token" in kept[_node(g, "Concat").outputs[0].name]
    # back through Flatten/Transpose to the Conv that computed the patch embeddings
    assert "learned token" in kept[_node(g, "Conv").outputs[0].name]


class _Embeddings(torch.nn.Module):
    """BERT's input: word + position + token-type embeddings summed, then a LayerNorm; or
    (``lookup=False``) a bias-free Linear plus a learned shift in the lookup's place."""

    def __init__(self, lookup: bool = True) -> None:
        super().__init__()
        self.lookup = lookup
        self.word = torch.nn.Embedding(50, 32)
        self.proj = torch.nn.Linear(8, 32, bias=False)
        self.pos = torch.nn.Parameter(torch.randn(1, 6, 32))
        self.typ = torch.nn.Parameter(torch.randn(32) * 0.5)
        self.norm = torch.nn.LayerNorm(32)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.word(x) if self.lookup else self.proj(x)
        return self.norm(h + self.pos + self.typ)


@pytest.mark.parametrize("lookup", [True, False])
def test_auto_policy_keeps_a_sum_of_embedding_lookups_at_16_bits(lookup: bool) -> None:
    """The norm's input is kept as the residual stream; with embedding lookups under it, the
    partial sum (word + position) is kept too, while the lookup itself stays 8-bit (a 16-bit
    table doubles its bytes). A linear layer's shifted output is not a lookup sum."""
    torch.manual_seed(0)
    m = _Embeddings(lookup).eval()
    example = torch.randint(0, 50, (1, 6)) if lookup else torch.randn(1, 6, 8)
    g0 = _load(m, example)
    name = g0.inputs[0].name
    feeds = [{name: (torch.randint(0, 50, (1, 6)) if lookup else torch.randn(1, 6, 8)).numpy()}
             for _ in range(6)]
    _, ctx, g = _w8a8_sqnr(g0, feeds, True)
    norm = _node(g, "LayerNormalization")
    first_add = norm.inputs[0].producer
    assert first_add is not None and first_add.op == "Add"
    inner = next(i for i in first_add.inputs if not i.is_const).producer
    assert inner is not None and inner.op == "Add"  # (word + pos) + typ
    kept = {k["tensor"]: k["reason"] for k in ctx.report["quantization"]["kept_16bit"]}
    part = inner.outputs[0]
    if lookup:
        assert "embedding lookups" in kept[part.name] and part.encoding.bits == 16
        assert _node(g, "Gather").outputs[0].encoding.bits == 8
    else:
        assert part.name not in kept and part.encoding.bits == 8


def test_auto_skip_leaves_out_named_rules_and_refuses_unknown_ones() -> None:
    """``quantize{auto_skip=...}`` drops whole rules of the policy (a user trading accuracy
    for cycles); every kept tensor names its rule; an unknown rule is an error naming the
    rules."""
    torch.manual_seed(0)
    g0 = _load(_Embeddings().eval(), torch.randint(0, 50, (1, 6)))
    name = g0.inputs[0].name
    feeds = [{name: torch.randint(0, 50, (1, 6)).numpy()} for _ in range(4)]

    def kept(skip: str) -> dict[str, str]:
        g = g0.copy()
        ctx = PassContext(calibration=feeds, options={"quant_rules": HTP_QUANT_RULES})
        PassManager(f"canonicalize,fuse,calibrate,quantize{{scheme=w8a8,auto_skip={skip}}}"
                    ).run(g, ctx)
        return {k["tensor"]: k["rule"] for k in ctx.report["quantization"]["kept_16bit"]}

    full = kept("")
    assert {"norm-input", "norm-output", "embedding-sum"} <= set(full.values())
    less = kept("embedding-sum+norm-output")
    assert set(less.values()) == {"norm-input"}
    assert set(less) < set(full)
    with pytest.raises(PassError, match=r"auto_skip names no rule.*softmax"):
        kept("norm")


class _PostLNBlock(torch.nn.Module):
    """``LayerNorm(x + fc2(gelu(fc1(x))))``, BERT's FFN half over 128 channels; ``outliers``
    scales one output channel of fc2 by 60 (BERT-class FFN outputs carry a few such channels:
    under 1% of the values, so the 99th percentile does not see them)."""

    def __init__(self, outliers: bool) -> None:
        super().__init__()
        self.fc1 = torch.nn.Linear(128, 64)
        self.fc2 = torch.nn.Linear(64, 128)
        self.norm = torch.nn.LayerNorm(128)
        if outliers:
            with torch.no_grad():
                self.fc2.weight[17] *= 60.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(x + self.fc2(torch.nn.functional.gelu(self.fc1(x))))


@pytest.mark.parametrize("outliers", [False, True])
def test_auto_policy_keeps_an_ffn_output_at_16_bits_only_with_outlier_channels(
        outliers: bool) -> None:
    torch.manual_seed(0)
    g0 = _load(_PostLNBlock(outliers).eval(), torch.randn(1, 16, 128))
    name = g0.inputs[0].name
    feeds = [{name: torch.randn(1, 16, 128).numpy()} for _ in range(4)]
    _, ctx, _ = _w8a8_sqnr(g0, feeds, True)
    branch = [k for k in ctx.report["quantization"]["kept_16bit"]
              if "residual branch" in k["reason"]]
    assert bool(branch) is outliers, branch
    if outliers:
        assert "its 99th percentile" in branch[0]["reason"]


class _ConvChain(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = torch.nn.Conv2d(3, 16, 3, padding=1)
        self.b = torch.nn.Conv2d(16, 16, 3, padding=1)
        self.c = torch.nn.Conv2d(16, 4, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c(torch.tanh(self.b(torch.tanh(self.a(x)))))


def test_weight_target_db_gives_the_noisiest_layers_16_bit_weights() -> None:
    from compiler.numerics import sqnr_db
    from passes.quant.quantize import _weight_encoding
    from passes.quant.rules import weight_axis
    from passes.quant.sensitivity import weight_noise

    torch.manual_seed(0)
    g0 = _load(_ConvChain().eval(), torch.randn(1, 3, 8, 8))
    name = g0.inputs[0].name
    feeds = [{name: torch.randn(1, 3, 8, 8).numpy()} for _ in range(3)]
    convs = [n for n in g0.nodes if n.op == "Conv"]

    def fq(n, data):  # type: ignore[no-untyped-def]
        return _weight_encoding(data, 8, weight_axis(n, 1), 0).fake_quant(data)

    # the layers' noise fractions add up to the noise of all weights quantized at once
    noise = weight_noise(g0, feeds, convs, fq)
    g1 = g0.copy()
    for n in g1.nodes:
        if n.op == "Conv":
            w = n.inputs[1]
            w.const = fq(n, np.asarray(w.const))
    got = [next(iter(run_reference(g1, f, qdq=False).values())) for f in feeds]
    want = [next(iter(run_reference(g0, f, qdq=False).values())) for f in feeds]
    measured = sqnr_db(np.concatenate([w.ravel() for w in want]),
                       np.concatenate([g.ravel() for g in got]))
    assert abs(10 * math.log10(1 / sum(noise.values())) - measured) < 1.0

    target = 10 * math.log10(1 / sum(noise.values())) + 3  # needs at least one layer
    g = g0.copy()
    ctx = PassContext(calibration=feeds, options={"quant_rules": HTP_QUANT_RULES})
    PassManager(f"canonicalize,fuse,calibrate,quantize{{scheme=w8a16,weight_target_db={target}}}"
                ).run(g, ctx)
    rep = ctx.report["quantization"]["wide_weights"]
    assert rep["measured_layers"] == 3 and rep["layers"]
    assert rep["estimated_db_after"] >= target > rep["estimated_db"]
    wide = {r["weight"] for r in rep["layers"]}
    for n in g.nodes:
        if n.op == "Conv":
            assert n.inputs[1].encoding.bits == (16 if n.inputs[1].name in wide else 8)
    assert rep["extra_weight_bytes"] > 0
    # statistics from an earlier calibration, but no batches to measure the layers on
    g2 = g0.copy()
    PassManager("calibrate").run(g2, PassContext(calibration=feeds))
    with pytest.raises(PassError, match="calibration data"):
        PassManager("quantize{scheme=w8a16,weight_target_db=50}").run(
            g2, PassContext(options={"quant_rules": HTP_QUANT_RULES}))

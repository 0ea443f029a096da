"""``quantize``: give tensors quantization encodings, following the target's rules.

Schemes: ``w8a8``, ``w8a16``, ``w4a16`` (per-channel weights; per-block with ``block_size``),
``fp16`` and ``fp32`` (no encodings; the precision is recorded in ``graph.meta["precision"]``
for the emitter). The rules (``ctx.options["quant_rules"]``, a
:class:`~passes.quant.rules.QuantRules`) decide the rest:

- weights of Conv/ConvTranspose/Gemm/MatMul: signed, symmetric, per output channel, with the
  clipping magnitude that minimises the weight's squared rounding error;
- Conv/Gemm biases: ``bias_bits`` integers, ``scale = input scale * weight scale``, zero point 0;
- activations: unsigned asymmetric from the calibration histograms (``calibrate`` first), with
  the range chosen for the bit width they get by the calibration method; a 16-bit activation's
  range is widened by ``range_margin`` (25%) of its span on each side that is not zero, never
  past what its producer can output (Clip bounds, Relu >= 0, Sigmoid/HardSigmoid in [0, 1]...):
  clipping inputs the calibration set did not cover costs more than the resolution the margin
  gives up (zoo at w8a16 on held-out inputs: margin 0 / 0.1 / 0.25 / 0.5 give a mean of
  48.9 / 55.2 / 55.7 / 55.6 dB; ResNet 40.0 dB without a margin, 63.3 with);
- other float constants (LayerNorm gamma/beta, Add/Mul operands, embedding tables): per-tensor
  from their own range, at the consuming node's activation width (or its output's, when the
  automatic policy keeps that output at 16 bits);
- with ``wide_weight_bias_add`` (the HTP), a Conv/Gemm with weights wider than 8 bits gets its
  bias as a separate 16-bit Add after it (``report["bias_as_add"]``);
- outputs of ``shared_encoding_ops`` share their input's encoding; ``fixed_ranges`` ops get
  their exact range; producers absorbed into a ``fused_activations`` op get no encoding.

``weight_target_db`` (off by default): give 16-bit weights to the layers whose quantized weights
add the most output noise, measured one layer at a time on the calibration data
(:mod:`passes.quant.sensitivity`), until the rest sum to that SQNR; reported in
``report["wide_weights"]`` with the bytes it costs.

Bias correction (``bias_correction``, on by default): the rounding error ``D`` of a weight
shifts the layer's output by ``D @ mean(x)`` on average; that shift, computed from the
calibrated input means, is subtracted from the Conv/Gemm bias (a bias is added if missing).

Mixed precision: ``ctx.options["quant_overrides"]`` maps patterns to specs. A pattern is a
module-path glob matched against the node's provenance (``"layers.*.mlp.*"``), ``"op:Softmax"``
or ``"node:<name>"``; a spec is ``"w4a16"``, ``"a16"``, ``"w8"`` or ``"fp32"`` (the node stays
float, which places it on the CPU). Later patterns win. A pattern that matches nothing is an
error naming it.

The automatic policy (``auto``, under ``w8a8``) keeps quantization-sensitive tensors at 16
bits: attention probabilities (Softmax outputs), LayerNorm/RMSNorm inputs and outputs (the
residual stream; also when ``lower-layer-norm`` or ``lower-group-norm`` has written the norm
out as ReduceMean/Sub/Mul/Sqrt/Div, with every tensor inside it: at 8 bits the zoo ViT with
every LayerNorm written out drops from 25.8 to 8.8 dB, Whisper from 42.1 to 34.1; the UNet's
GroupNorms gain 0.25 dB at the same cycles), the outputs of the last linear layer of each
residual branch summed into a norm when they have outlier channels (``branch_outlier_ratio``;
a BERT's FFN output carries 50-70x outliers in a few channels: at 8 bits the real
all-MiniLM-L6-v2 keeps cosine 0.95, at 16 bits 0.995 on the CPU reference) or come from a
convolution, but not attention output projections; the phase of Sin/Cos back to its source
(a diffusion timestep embedding); a Concat that joins a learned token (a ViT's CLS) to
activations, with those activations back to the op that computed them; and activations whose
range is dominated by a few outliers. Softmax inputs get their
calibrated minimum clipped above attention-mask values (a -1e4 mask would otherwise take the
whole 8-bit range). What it did, and why, is reported in ``ctx.report["quantization"]``.
"""

from __future__ import annotations

import fnmatch
import math
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import numpy as np

from compiler.errors import QuantizationError
from compiler.ir import Graph, Node, QuantEncoding, Value
from compiler.numerics import sqnr_db
from compiler.passes import Pass, PassContext, PassResult, option
from passes.quant.calibrate import calibration_of
from passes.quant.observers import RangeStats, choose_range, mse_range_for_array
from passes.quant.rules import QuantRules, is_bias, weight_axis

__all__ = ["AUTO_RULES", "Quantize", "SCHEMES", "parse_spec", "activation_encoding",
           "symmetric_activation_encoding"]

#: the w8a8 automatic policy's rules, as ``quantize{auto_skip=...}`` and the report name them
AUTO_RULES = ("softmax", "norm-input", "norm-output", "embedding-sum", "branch", "phase",
              "token", "outlier")

#: scheme -> (weight bits, activation bits); None for the float schemes
SCHEMES: dict[str, tuple[int, int] | None] = {
    "w8a8": (8, 8), "w8a16": (8, 16), "w4a16": (4, 16), "fp16": None, "fp32": None,
}
_MASK_FLOOR = -1000.0  # softmax inputs below this are attention-mask values, not scores
_SOFTMAX_SPAN = 20.0  # exp(-20) ~ 2e-9: a score clipped this far below the max is still ~0
_MASK_DEPTH = 80.0  # an additive mask clipped to -80 still zeroes its softmax weights
_MIN_SCALE = 1e-9
#: (op, input index) of float inputs that parameterise an op rather than carry data: quantizing
#: them changes what the op does (Resize scales of 2.0 becoming 1.99 shrink its output)
_PARAMETER_INPUTS = frozenset({("Resize", 1), ("Resize", 2), ("Upsample", 1)})


@dataclass
class _Spec:
    wbits: int | None
    abits: int | None
    float_: bool = False


def parse_spec(spec: str) -> dict[str, Any]:
    """``"w4a16"`` -> ``{"w": 4, "a": 16}``; ``"a16"``, ``"w8"``; ``"fp32"`` -> float."""
    s = spec.strip().lower()
    if s in ("fp32", "float", "fp16"):
        return {"float": True}
    out: dict[str, Any] = {}
    rest = s
    while rest:
        key = rest[0]
        digits = ""
        rest = rest[1:]
        while rest and rest[0].isdigit():
            digits, rest = digits + rest[0], rest[1:]
        if key not in "wa" or not digits or key in out:
            raise QuantizationError(f"quantization override spec {spec!r} is not one of "
                                    "w<bits>a<bits>, a<bits>, w<bits>, fp32")
        out[key] = int(digits)
    return out


def _matches(pattern: str, node: Node) -> bool:
    if pattern.startswith("op:"):
        return node.op == pattern[3:]
    if pattern.startswith("node:"):
        return node.name == pattern[5:]
    src = str(node.meta.get("src", ""))
    return bool(src) and (fnmatch.fnmatchcase(src, pattern)
                          or fnmatch.fnmatchcase(src + ".", pattern))


def activation_encoding(lo: float, hi: float, bits: int, signed: bool = False) -> QuantEncoding:
    """An asymmetric encoding covering ``[lo, hi]`` (widened to contain 0), never with a zero
    scale: a constant or all-zero tensor gets the smallest positive scale."""
    lo, hi = min(float(lo), 0.0), max(float(hi), 0.0)
    levels = (1 << bits) - 1
    scale = max((hi - lo) / levels, _MIN_SCALE)
    qmin = -(1 << (bits - 1)) if signed else 0
    zp = int(np.clip(round(qmin - lo / scale), qmin, qmin + levels))
    return QuantEncoding(bits=bits, signed=signed, scale=np.asarray(scale, np.float32),
                         zero_point=np.asarray(zp, np.int64))


def symmetric_activation_encoding(magnitude: float, bits: int) -> QuantEncoding:
    """An unsigned encoding of ``[-magnitude, magnitude]`` whose zero point is mid-scale
    (``2**(bits-1)``): the same grid as a signed symmetric encoding with zero point 0."""
    half = 1 << (bits - 1)
    scale = max(float(magnitude) / (half - 1), _MIN_SCALE)
    return QuantEncoding(bits=bits, signed=False, scale=np.asarray(scale, np.float32),
                         zero_point=np.asarray(half, np.int64))


_CLIP_GRID = np.linspace(1.0, 0.8, 41)


def _output_aware_magnitudes(w: np.ndarray, bits: int, axis: int, in_axis: int,
                             mean: np.ndarray, meansq: np.ndarray) -> np.ndarray:
    """Per output channel, the clipping magnitude (a fraction of the channel's absmax) that
    minimises the expected error of the layer's OUTPUT, not of the weight: with a weight error
    ``d`` over input channels whose activations have mean ``mu`` and variance ``var``, the
    output error is ``sum(var * d^2) + (sum(mu * d))^2``. Clipping makes sign-correlated
    errors that the mean term punishes; plain weight MSE does not see that."""
    qmax = (1 << (bits - 1)) - 1
    nd = w.ndim
    ax, in_ax = axis % nd, in_axis % nd
    if ax == in_ax:
        raise ValueError("the weight's output and input channel axes are the same")
    var = np.maximum(meansq.astype(np.float64) - mean.astype(np.float64) ** 2, 0.0)
    if var.size != w.shape[in_ax]:
        raise ValueError("activation moments do not match the weight's input channels")
    # [O, I * rest]: after flattening, element k of a row has input channel k // rest, so the
    # two error terms are matrix-vector products; float32 in one reused buffer (3x faster
    # than float64 broadcasting, same choices on MiniLM's and the zoo's weights)
    rest = [a for a in range(nd) if a not in (ax, in_ax)]
    wo = np.ascontiguousarray(np.transpose(w, [ax, in_ax, *rest]), dtype=np.float32)
    o = wo.shape[0]
    wo = wo.reshape(o, -1)
    per_in = wo.shape[1] // var.size
    var_f = np.repeat(var, per_in).astype(np.float32)
    mu_f = np.repeat(mean.astype(np.float64), per_in).astype(np.float32)
    absmax = np.abs(wo).max(axis=1).astype(np.float64)
    best_err = np.full(o, np.inf)
    best = absmax.copy()
    d = np.empty_like(wo)
    for r in _CLIP_GRID:
        mag = np.maximum(absmax * r, 1e-12)
        s = (mag / qmax).astype(np.float32)[:, None]
        np.divide(wo, s, out=d)
        np.rint(d, out=d)
        np.clip(d, -qmax - 1, qmax, out=d)
        np.multiply(d, s, out=d)
        np.subtract(d, wo, out=d)  # d = weight error
        mean_term = (d @ mu_f).astype(np.float64) ** 2
        np.multiply(d, d, out=d)
        err = (d @ var_f).astype(np.float64) + mean_term
        better = err < best_err
        best[better], best_err[better] = mag[better], err[better]
    return best


def _weight_encoding(w: np.ndarray, bits: int, axis: int | None, block: int,
                     moments: tuple[np.ndarray, np.ndarray] | None = None,
                     in_axis: int = 1) -> QuantEncoding:
    qmax = (1 << (bits - 1)) - 1
    if block > 0 and axis is not None:
        # per block along ``axis``: one absmax per block, weight shape with axis // block
        d = w.shape[axis]
        nblk = -(-d // block)
        pad = [(0, 0)] * w.ndim
        pad[axis] = (0, nblk * block - d)
        a = np.pad(np.abs(w), pad)
        shape = list(a.shape)
        shape[axis:axis + 1] = [nblk, block]
        amax = a.reshape(shape).max(axis=axis + 1)
        scale = np.maximum(amax / qmax, _MIN_SCALE).astype(np.float32)
        return QuantEncoding(bits=bits, signed=True, scale=scale,
                             zero_point=np.zeros(scale.shape, np.int64), axis=axis,
                             block_size=block)
    mags = None
    if moments is not None and axis is not None:
        try:
            mags = _output_aware_magnitudes(w, bits, axis, in_axis, *moments)
        except ValueError:
            mags = None
    if mags is None:
        mags = mse_range_for_array(w, bits, axis)
    scale = np.maximum(np.asarray(mags, np.float64) / qmax, _MIN_SCALE).astype(np.float32)
    if axis is None:
        return QuantEncoding(bits=bits, signed=True, scale=scale.reshape(()))
    return QuantEncoding(bits=bits, signed=True, scale=scale,
                         zero_point=np.zeros(scale.shape, np.int64), axis=axis)


@dataclass(frozen=True)
class Quantize(Pass):
    """Set quantization encodings on weights, biases and activations."""

    name: ClassVar[str] = "quantize"
    summary: ClassVar[str] = "Quantize weights and activations by scheme and the target's rules"
    needs_finite_weights: ClassVar[bool] = True
    scheme: Literal["w8a8", "w8a16", "w4a16", "fp16", "fp32"] = option(
        "w8a16", "weight/activation widths; fp16/fp32 leave the graph float")
    block_size: int = option(0, "0: per-channel weights; N>0: blocks of N along the input "
                                "axis (for ops the target allows)")
    auto: bool = option(True, "under w8a8, keep quantization-sensitive tensors at 16 bits")
    output_aware: bool = option(True, "pick each weight channel's scale by the expected "
                                "error of the layer output (from calibration moments)")
    bias_correction: bool = option(True, "fold the mean output shift the weight rounding "
                                   "causes (from calibration means) into the bias")
    range_margin: float = option(0.25, "16-bit activations: widen the calibrated range by "
                                 "this fraction of its span on each side that is not zero, "
                                 "within what the op can output")
    branch_outlier_ratio: float = option(4.0, "auto: keep an FFN output summed into a norm at "
                                         "16 bits when its range is at least this many "
                                         "times its 99th percentile (outlier channels)")
    weight_target_db: float = option(0.0, "give 16-bit weights to the layers whose quantized "
                                     "weights add the most output noise (measured one layer "
                                     "at a time on the calibration data) until the weights' "
                                     "estimated SQNR reaches this many dB; 0 = off")
    auto_skip: str = option("", "auto: rules left out, joined by '+' (" + "+".join(AUTO_RULES)
                            + "); each kept tensor's rule is in the report")
    outlier_ratio: float = option(12.0, "auto: an activation whose 99.99th-percentile range "
                                  "is this many times smaller than its full range is "
                                  "outlier-dominated")

    # -- planning ------------------------------------------------------------------------------
    def _node_specs(self, graph: Graph, ctx: PassContext, wbits: int, abits: int
                    ) -> dict[int, _Spec]:
        specs = {id(n): _Spec(wbits, abits) for n in graph.nodes}
        overrides = ctx.options.get("quant_overrides") or {}
        if not isinstance(overrides, dict):
            raise QuantizationError("quant_overrides must map patterns to specs, e.g. "
                                    '{"layers.*.mlp.*": "w4a16", "op:Softmax": "a16"}')
        applied = []
        for pattern, spec_text in overrides.items():
            spec = parse_spec(str(spec_text))
            hits = [n for n in graph.nodes if _matches(str(pattern), n)]
            if not hits:
                raise QuantizationError(f"quantization override {pattern!r} matches no node "
                                        "(patterns: module-path glob, op:<Op>, node:<name>)")
            for n in hits:
                s = specs[id(n)]
                if spec.get("float"):
                    s.float_ = True
                s.wbits = spec.get("w", s.wbits)
                s.abits = spec.get("a", s.abits)
            applied.append({"pattern": pattern, "spec": spec_text, "nodes": len(hits)})
        ctx.report.setdefault("quantization", {})["overrides"] = applied
        return specs

    def _encode_weight(self, n: Node, data: np.ndarray, bits: int, axis: int | None,
                       block: int, mom: tuple[np.ndarray, np.ndarray] | None) -> QuantEncoding:
        """The encoding of ``n``'s weight ``data`` (output-channel ``axis``; per ``block``
        along the input channels when > 0), output-aware from the input's moments ``mom``."""
        in_axis = _input_axis(n, data.ndim)
        return _weight_encoding(data, bits, in_axis if block else axis, block,
                                mom if self.output_aware else None, in_axis)

    def _widen_weights(self, graph: Graph, ctx: PassContext, specs: dict[int, _Spec],
                       rules: QuantRules, cal: dict[str, Any]) -> dict[str, Any]:
        """``weight_target_db``: measure each layer's weight noise, give the noisiest layers
        16-bit weights until the rest sum to the target; what it did, for the report."""
        from passes.quant.sensitivity import weight_noise

        if 16 not in rules.weight_bits:
            raise QuantizationError("quantize: weight_target_db needs 16-bit weights, which "
                                    f"the target does not allow ({list(rules.weight_bits)})")
        if not ctx.calibration:
            raise QuantizationError("quantize: weight_target_db measures each layer on the "
                                    "calibration data; none was given")
        layers = [n for n in graph.nodes
                  if weight_axis(n, 1) is not None and not specs[id(n)].float_
                  and (specs[id(n)].wbits or 16) < 16 and n.inputs[1] is not None
                  and n.inputs[1].is_const and n.inputs[1].dtype.is_float]
        moments = cal.get("moments", {})

        def fake_quant(n: Node, data: np.ndarray) -> np.ndarray:
            x = n.inputs[0]
            data = data.astype(np.float32)
            enc = self._encode_weight(n, data, specs[id(n)].wbits or 8, weight_axis(n, 1), 0,
                                      moments.get(x.name) if x is not None else None)
            return enc.fake_quant(data)

        noise = weight_noise(graph, ctx.calibration, layers, fake_quant,
                             show=bool(ctx.progress or (sys.stderr.isatty() and len(layers) > 4)))

        def db(frac: float) -> float:
            return 10 * math.log10(1 / frac) if frac > 0 else math.inf

        before = total = sum(noise.values())
        target = 10 ** (-self.weight_target_db / 10)
        widened: list[dict[str, Any]] = []
        extra = 0
        for n in sorted(layers, key=lambda n: -noise[id(n)]):
            if total <= target:
                break
            w = n.inputs[1]
            assert w is not None
            extra += w.type.numel * (16 - (specs[id(n)].wbits or 8)) // 8 if w.type.numel else 0
            specs[id(n)].wbits = 16
            widened.append({"node": n.label(), "weight": w.name,
                            "noise_db": round(db(noise[id(n)]), 2)})
            total -= noise[id(n)]
        for w_ in widened:
            ctx.note(f"16-bit weights for {w_['node']} (its 8-bit weights alone: "
                     f"{w_['noise_db']} dB)")
        return {"target_db": self.weight_target_db, "estimated_db": round(db(before), 2),
                "estimated_db_after": round(db(max(total, 0.0)), 2), "layers": widened,
                "extra_weight_bytes": extra, "measured_layers": len(layers)}

    def _auto_skip(self) -> frozenset[str]:
        skip = frozenset(r for r in self.auto_skip.split("+") if r)
        bad = sorted(skip - set(AUTO_RULES))
        if bad:
            raise QuantizationError(f"quantize: auto_skip names no rule {bad}; the rules are "
                                    f"{', '.join(AUTO_RULES)}")
        return skip

    def _auto_policy(self, graph: Graph, specs: dict[int, _Spec], stats: dict[str, RangeStats],
                     kept: list[dict[str, Any]]) -> dict[str, int]:
        """Values to keep at 16 bits under w8a8, with reasons."""
        wide: dict[str, int] = {}
        skip = self._auto_skip()

        def keep(v: Value | None, rule: str, reason: str) -> None:
            if (rule not in skip and v is not None and v.dtype.is_float and not v.is_const
                    and v.name not in wide):
                wide[v.name] = 16
                kept.append({"tensor": v.name, "bits": 16, "rule": rule, "reason": reason})

        for n in graph.nodes:
            if n.op in _PERIODIC:
                for v in _phase_chain(n.inputs[0]):
                    keep(v, "phase", f"phase of {n.op} {n.label()} (an argument spanning "
                         "many periods loses its phase at 8 bits: a sinusoidal timestep "
                         "embedding)")
            if (n.op == "Concat" and any(i is not None and i.is_const for i in n.inputs)
                    and any(i is not None and not i.is_const for i in n.inputs)):
                for v in _token_concat(n):
                    keep(v, "token", f"joined with a learned token by Concat {n.label()} "
                         "(a CLS token is tiny beside the embeddings it is joined to: on their "
                         "8-bit grid it rounds to a few steps, and it becomes the output)")
            if n.op == "Softmax":
                # attention probabilities are mostly small: 8 bits over [0, 1] rounds many of
                # them to 0 (the HTP takes 16-bit probabilities into an 8-bit-weight MatMul;
                # 16-bit softmax INPUTS inside an 8-bit block fail to finalize)
                keep(n.outputs[0], "softmax",
                     f"output of Softmax {n.label()} (attention probabilities)")
            if n.op in ("LayerNormalization", "RMSNormalization", "SimplifiedLayerNormalization"):
                keep(n.inputs[0], "norm-input", f"input of {n.op} {n.label()} (residual stream)")
                keep(n.outputs[0], "norm-output", f"output of {n.op} {n.label()}")
                x = n.inputs[0]
                if x is not None and x.producer is not None and x.producer.op == "Add":
                    # the residual stream starts as a sum of embedding lookups: 8 bits on a
                    # partial sum is as coarse as on the stream itself (all-MiniLM-L6-v2's
                    # word + position sum: 23 dB; its norm's output 20 dB)
                    for i in x.producer.inputs:
                        for v in _lookup_sum(i) or []:
                            keep(v, "embedding-sum", "a partial sum of embedding lookups "
                                 f"read by {n.op} {n.label()} (residual stream)")
            norm_in: Value | None = None
            label = f"{n.op} {n.label()}"
            if n.op in ("LayerNormalization", "RMSNormalization", "SimplifiedLayerNormalization"):
                norm_in = n.inputs[0]
            if n.meta.get("fused") == "RMSNormalization":  # fuse's canonical written-out form
                from passes.fusions.units import rms_input

                label = str(n.meta.get("unit", "RMSNorm"))
                norm_in = rms_input(n)
                keep(norm_in, "norm-input", f"input of {label} (residual stream)")
                keep(n.outputs[0], "norm-output", f"output of {label} {n.label()}")
            written = _written_out_norm(n)
            if written is not None:  # lower-layer-norm/lower-group-norm: the norm's tensors
                norm_in, inner = written
                label = f"normalization written out as reductions at {n.label()}"
                keep(norm_in, "norm-input", f"input of {label} (residual stream)")
                for v in inner:
                    keep(v, "norm-output",
                         f"inside {label} (a normalization's statistics and output)")
            branches = _residual_branches(norm_in)
            ratio = max((_p99_ratio(stats.get(lin.outputs[0].name)) for _, lin in branches),
                        default=0.0)
            # A convolution's output on the way into a norm (the UNet's proj_in -> Flatten ->
            # Transpose, the residual of its attention block) stays too: 8 bits there measured
            # slower (8.7 vs 7.2 M cycles: the 16-bit norm input is then a convert of it).
            conv = any(lin.op in ("Conv", "ConvTranspose") for _, lin in branches)
            if ratio >= self.branch_outlier_ratio or conv:
                why = (f"{ratio:.0f}x its 99th percentile (outlier channels: BERT-class FFN "
                       "outputs, Bondarenko et al. 2023)" if ratio >= self.branch_outlier_ratio
                       else "a convolution's output, cheaper at 16 bits than converted")
                for v, lin in branches:
                    keep(v, "branch", f"output of {lin.label()}, a residual branch summed "
                         f"into {label}, {why}")
        for name, st in stats.items():
            if name in wide:
                continue
            full = max(abs(st.lo), abs(st.hi))
            # the core range leaves out at least 64 values: with few calibration tokens the
            # 99.99th percentile is the maximum itself and would hide every outlier
            pct = 100.0 * (1.0 - max(1e-4, 64.0 / max(st.count, 1)))
            lo, hi = choose_range(st, "percentile", percentile=pct)
            core = max(abs(lo), abs(hi))
            if "outlier" not in skip and core > 0 and full / core >= self.outlier_ratio:
                kept.append({"tensor": name, "bits": 16, "rule": "outlier",
                             "reason": f"outlier-dominated range ({full / core:.0f}x its "
                                       "99.99th percentile)"})
                wide[name] = 16
        return wide

    # -- main ----------------------------------------------------------------------------------
    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        """Plan widths per node, then set every encoding in topological order."""
        rules = ctx.options.get("quant_rules")
        if rules is None:
            rules = QuantRules()
            ctx.note("no target quantization rules given; using the generic defaults")
        report: dict[str, Any] = ctx.report.setdefault("quantization", {})
        report["scheme"] = self.scheme
        widths = SCHEMES[self.scheme]
        if widths is None:
            graph.meta["precision"] = self.scheme
            return PassResult(False, {"quantized": 0})
        wbits, abits = widths
        for b, allowed, role in ((wbits, rules.weight_bits, "weight"),
                                 (abits, rules.activation_bits, "activation")):
            if b not in allowed:
                raise QuantizationError(f"quantize: {b}-bit {role}s are not allowed by the "
                                        f"target (allowed: {list(allowed)})")
        cal = calibration_of(graph)
        if cal is None:
            raise QuantizationError("quantize: no calibration statistics on the graph; run "
                                    "'calibrate' before 'quantize'")
        stats: dict[str, RangeStats] = cal["stats"]
        method, pct = cal["method"], cal["percentile"]
        specs = self._node_specs(graph, ctx, wbits, abits)
        if self.weight_target_db > 0:
            report["wide_weights"] = self._widen_weights(graph, ctx, specs, rules, cal)
        kept: list[dict[str, Any]] = []
        wide = (self._auto_policy(graph, specs, stats, kept)
                if self.auto and self.scheme == "w8a8" else {})
        report["kept_16bit"] = kept
        graph.meta["precision"] = self.scheme

        consumers: dict[int, list[Node]] = {}
        for n in graph.nodes:
            for v in n.inputs:
                if v is not None:
                    consumers.setdefault(id(v), []).append(n)

        def act_bits(v: Value) -> int | None:
            """Width of activation ``v``: its producer's (or, for an input, its consumers'),
            None when every node touching it stays float."""
            if v.name in wide:
                return wide[v.name]
            users = consumers.get(id(v), [])
            if v.producer is not None:
                s = specs[id(v.producer)]
                return None if s.float_ else s.abits
            widths = [specs[id(u)].abits or 0 for u in users if not specs[id(u)].float_]
            return (max(widths) or None) if widths else None

        def range_for(v: Value, bits: int) -> tuple[float, float]:
            st = stats.get(v.name)
            if st is None:
                raise QuantizationError(f"quantize: tensor %{v.name} has no calibration "
                                        "statistics (was the graph changed after calibrate?)")
            users = consumers.get(id(v), [])
            if st.lo < _MASK_FLOOR and users and all(_feeds_softmax(u) for u in users):
                # an additive attention mask (0 / -1e4): only "0" and "very negative" matter;
                # a -1e4-wide range would leave the scores it is added to a 0.15 step on the
                # HTP (its Add rescales both inputs), wrecking the softmax
                lo = max(st.lo, -_MASK_DEPTH)
                kept.append({"tensor": v.name, "bits": bits,
                             "reason": f"attention mask: range clipped from {st.lo:.3g} to "
                                       f"{lo:.3g} (masked scores still vanish in the softmax)"})
                return lo, st.hi
            if users and all(u.op == "Softmax" for u in users) and (st.lo < _MASK_FLOOR
                                                                   or st.neg_inf):
                # attention scores with a mask: range of the real scores only
                real = _real_lo(st)
                lo = min(real, st.hi - _SOFTMAX_SPAN)
                kept.append({"tensor": v.name, "bits": bits,
                             "reason": f"softmax input: minimum clipped from {st.lo:.3g} to "
                                       f"{lo:.3g} (attention-mask values saturate)"})
                return lo, st.hi
            lo, hi = choose_range(st, method, bits=bits, percentile=pct)
            if bits >= 16 and self.range_margin > 0:
                # A 16-bit tensor has resolution to spare, and clipping is what hurts on inputs
                # the calibration set did not cover: a 25% margin gives up 3.5 dB of a ~90 dB
                # rounding floor, while the held-out values beyond a 16-sample calibration
                # range cost the zoo's Llama and UNet 4-5 dB. The margin stays inside what the
                # op can output: a ReLU6 (Clip) encoded past 6 comes out wrong on the HTP.
                span = hi - lo
                lo = lo - self.range_margin * span if lo < 0 else lo
                hi = hi + self.range_margin * span if hi > 0 else hi
                blo, bhi = _output_bounds(v)
                lo, hi = max(lo, min(blo, st.lo)), min(hi, max(bhi, st.hi))
            return lo, hi

        symmetric = (_matmul_rhs_sources(graph, rules, act_bits)
                     if rules.symmetric_matmul_rhs else set())

        def encode(v: Value, bits: int) -> QuantEncoding:
            lo, hi = range_for(v, bits)
            if v.name in symmetric and bits >= 16:
                return symmetric_activation_encoding(max(-lo, hi), bits)
            return activation_encoding(lo, hi, bits)

        count = 0
        corrected = 0
        weight_sqnr: list[dict[str, Any]] = []
        # graph inputs
        for v in graph.inputs:
            if v.dtype.is_float:
                in_bits = act_bits(v)
                if in_bits:
                    v.encoding = encode(v, in_bits)
                    count += 1
        split: list[str] = []
        for n in list(graph.nodes):  # a snapshot: bias splits add nodes after n
            s = specs[id(n)]
            if s.float_:
                continue
            # constants read by this node
            for i, v in enumerate(n.inputs):
                if v is None or not v.is_const or not v.dtype.is_float or v.encoding is not None:
                    continue
                if (n.op, i) in _PARAMETER_INPUTS:
                    continue  # a float parameter (Resize scales), not data: stays exact
                data = np.asarray(v.const, dtype=np.float32)
                axis = weight_axis(n, i)
                if axis is not None and s.wbits:
                    block = (self.block_size if self.block_size > 0
                             and n.op in rules.block_quant_ops else 0)
                    x = n.inputs[0]
                    mom = cal.get("moments", {}).get(x.name) if x is not None else None
                    v.encoding = self._encode_weight(n, data, s.wbits, axis, block, mom)
                    if self.bias_correction and mom is not None and not block:
                        corrected += _correct_bias(graph, n, v.encoding.fake_quant(data) - data,
                                                   mom[0])
                    weight_sqnr.append({"tensor": v.name, "bits": s.wbits,
                                        "sqnr_db": _finite(sqnr_db(
                                            data, v.encoding.fake_quant(data)))})
                    count += 1
                elif is_bias(n, i):
                    continue  # set after the node's input and weight encodings are known
                else:
                    # a constant operand is as wide as the node's output: an 8-bit frequency
                    # table times a 16-bit timestep is still an 8-bit phase
                    b = max([s.abits or 8, *(wide.get(o.name, 0) for o in n.outputs
                                             if o is not None)])
                    v.encoding = activation_encoding(*_const_range(data), b)
                    count += 1
            # a wide-weight node's bias (bias correction included) moves to an Add after it
            presplit = False
            fb = _float_bias(n)
            if (rules.wide_weight_bias_add and n.op in _BIASED and (s.wbits or 0) > 8
                    and fb is not None and fb.encoding is None):
                split.append(_split_bias(graph, n, s.abits or 16, encode))
                presplit = True  # its output's encoding is set
            # bias
            if len(n.inputs) > 2 and is_bias(n, 2):
                x, w, bias = n.inputs[0], n.inputs[1], n.inputs[2]
                if (bias is not None and bias.is_const and bias.encoding is None
                        and x is not None and x.encoding is not None
                        and w is not None and w.encoding is not None
                        and w.encoding.block_size is None):
                    scale = (np.float64(x.encoding.scale)
                             * w.encoding.scale.astype(np.float64)).astype(np.float32)
                    scale = np.maximum(scale, np.float32(_MIN_SCALE))
                    bdata = np.asarray(bias.const, np.float32)
                    if bdata.ndim != 1:
                        continue
                    if scale.ndim == 0 or scale.size != bdata.size:
                        scale = np.broadcast_to(scale, bdata.shape).astype(np.float32)
                    bias.encoding = QuantEncoding(
                        bits=rules.bias_bits, signed=True, scale=scale,
                        zero_point=np.zeros(scale.shape, np.int64), axis=0)
                    count += 1
            # outputs
            for v in n.outputs:
                if v is None or not v.dtype.is_float or presplit:
                    continue
                out_bits = act_bits(v)
                if not out_bits:
                    continue
                b = out_bits
                users = consumers.get(id(v), [])
                if rules.silu_gate_bits and n.op == "Sigmoid" and _gates_own_input(n, users):
                    b = min(b, rules.silu_gate_bits)
                if (len(users) == 1 and users[0].op in rules.fused_activations
                        and v not in graph.outputs and v.name not in wide):
                    continue  # the target fuses the activation into this node
                if n.op in rules.fixed_ranges:
                    lo, hi = rules.fixed_ranges[n.op]
                    v.encoding = activation_encoding(lo, hi, b)
                elif (n.op in rules.shared_encoding_ops and n.inputs
                      and n.inputs[0] is not None and n.inputs[0].encoding is not None):
                    # data movement keeps its input's encoding, width included: narrowing a
                    # 16-bit tensor while moving it would throw away what was kept
                    v.encoding = n.inputs[0].encoding
                else:
                    v.encoding = encode(v, b)
                count += 1
        if symmetric:
            report["symmetric_matmul_rhs"] = sorted(symmetric)
        if split:
            report["bias_as_add"] = split
        report["weights"] = weight_sqnr
        report["bias_corrected"] = corrected
        report["encodings"] = count
        if rules.notes:
            report["rules"] = list(rules.notes)
        for k in kept:
            ctx.note(f"kept %{k['tensor']} at {k['bits']} bits: {k['reason']}")
        return PassResult(count > 0, {"encodings": count, "kept_16bit": len(kept)})


_LINEAR = frozenset({"Gemm", "MatMul", "Conv", "ConvTranspose"})
_BIASED = frozenset({"Gemm", "Conv", "ConvTranspose"})


def _float_bias(n: Node) -> Value | None:
    """The constant float bias (input 2) of a Conv/Gemm, or None."""
    b = n.input(2) if len(n.inputs) > 2 else None
    return b if b is not None and b.is_const and b.dtype.is_float else None


def _split_bias(graph: Graph, n: Node, bits: int,
                encode: Callable[[Value, int], QuantEncoding]) -> str:
    """``y = Conv(x, w, b)`` -> ``y0 = Conv(x, w); y = Add(y0, b')`` with 16-bit encodings:
    ``y``'s from its calibration statistics, ``y0``'s that range shifted by the bias's,
    ``b'`` (the bias shaped to broadcast over ``y``, times Gemm's ``beta``) over its own
    range. Returns the node's label. Exact in float."""
    b = _float_bias(n)
    assert b is not None and n.outputs
    y = n.outputs[0]
    label = n.label()
    data = np.asarray(b.const, np.float64)
    if n.op == "Gemm":
        data = data * float(n.attr("beta", 1.0))  # type: ignore[arg-type]
        n.attrs.pop("beta", None)
    else:  # Conv/ConvTranspose: one bias per output channel, dim 1 of [N, C, spatial...]
        x = n.inputs[0]
        rank = len(y.shape) if y.shape is not None else (
            len(x.shape or ()) if x is not None else 0) or 4
        data = data.reshape((-1,) + (1,) * (rank - 2))
    bits = max(bits, 16)
    enc = encode(y, bits)
    lo, hi = enc.dequantize(np.array([enc.qmin, enc.qmax]))  # y's encoded range
    bc = graph.const(data.astype(np.float32), f"{b.name}_add")
    bc.encoding = activation_encoding(float(data.min(initial=0.0)), float(data.max(initial=0.0)),
                                      bits)
    add = graph.make_node("Add", [None, bc], types=[y.type], after=n,
                          name=f"{n.name or y.name}_bias", meta=dict(n.meta))
    out = add.outputs[0]
    y.replace_all_uses_with(out)
    add.set_input(0, y)
    # the Add's output takes the name (a graph output keeps its name; the calibration
    # statistics under it describe the biased tensor)
    name = y.name
    y.name = graph.fresh_name(f"{name}_nobias")
    out.name = name
    n.set_inputs(list(n.inputs[:2]))
    if not b.uses and not b.is_output:
        graph.remove_const(b)
    out.encoding = enc
    y.encoding = activation_encoding(float(lo) - float(data.max(initial=0.0)),
                                     float(hi) - float(data.min(initial=0.0)), bits)
    return label
_MOVES = frozenset({"Reshape", "Transpose", "Flatten", "Squeeze", "Unsqueeze"})


def _residual_branches(norm_in: Value | None) -> list[tuple[Value, Node]]:
    """For a normalization input ``Add(residual, branch)``: the values from each branch's last
    linear layer to the Add (through data movement), with that layer."""
    add = norm_in.producer if norm_in is not None else None
    if add is None or add.op != "Add":
        return []
    out: list[tuple[Value, Node]] = []
    for v in add.inputs:
        chain = _moved_from(v)
        lin = chain[-1].producer if chain else None
        if lin is not None and lin.op in _LINEAR and not _reads_attention(lin):
            out.extend((c, lin) for c in [chain[-1], *chain[:-1]])
    return out


def _moved_from(v: Value | None) -> list[Value]:
    """``v`` and, back through data movement, each tensor it is a copy of; the last is the
    one an op computed (or a graph input or constant)."""
    chain: list[Value] = []
    while v is not None:
        chain.append(v)
        p = v.producer
        v = p.inputs[0] if p is not None and p.op in _MOVES else None
    return chain


def _p99_ratio(st: RangeStats | None) -> float:
    """Full range over the 99th-percentile range of a calibrated tensor (0 without stats).
    all-MiniLM-L6-v2's FFN outputs: 5-227; the zoo's randomly initialised models: 1.2-1.9."""
    if st is None or st.count == 0:
        return 0.0
    lo, hi = choose_range(st, "percentile", percentile=99.0)
    core = max(abs(lo), abs(hi))
    return max(abs(st.lo), abs(st.hi)) / core if core > 0 else 0.0


def _reads_attention(lin: Node) -> bool:
    """Whether ``lin`` is an attention output projection: its data input comes (through data
    movement) from a MatMul of two activations (``P·V``). Those branches carry no outlier
    channels (the FFN's do): at 16 bits they cost the MiniLM 5% of its simulator cycles and
    bought nothing (cosine 0.995 either way), the ViT 0.1 dB."""
    src = _moved_from(lin.inputs[0] if lin.inputs else None)
    p = src[-1].producer if src else None
    return (p is not None and p.op == "MatMul"
            and all(i is not None and not i.is_const for i in p.inputs))


#: ops of a normalization written out as reductions (``lower-layer-norm``/``normalize``)
_NORM_OPS = frozenset({"ReduceMean", "Sub", "Mul", "Add", "Sqrt", "Div", "Pow", "Reciprocal"})


#: ops whose output repeats with the input: 8 bits over [0, 1000] (a diffusion timestep times
#: the embedding's frequencies) is a step of 4 radians, so the output is noise (UNet at w8a8:
#: Sin at -1.7 dB against FP32)
_PERIODIC = frozenset({"Sin", "Cos"})
#: ops that pass one tensor through with a constant: the phase's chain back to its source
_PHASE_OPS = frozenset({"Mul", "Add", "Sub", "Div", "Neg", "Unsqueeze", "Reshape", "Squeeze",
                        "Flatten", "Cast", "Expand"})


def _token_concat(n: Node) -> list[Value]:
    """For a Concat of constants (learned tokens) and activations: its output and each
    activation input back through data movement to the op that computed it."""
    out = [n.outputs[0]] if n.outputs else []
    for v in n.inputs:
        out.extend(c for c in _moved_from(v) if not c.is_const)
    return out


def _lookup_sum(v: Value | None) -> list[Value] | None:
    """For a sum of embedding lookups (``Add`` of ``Gather`` outputs and constants, as BERT
    adds its word, position and token-type embeddings): its ``Add`` outputs; None for anything
    else (a bias add after a linear layer, a residual branch)."""
    if v is None or v.is_const or v.producer is None:
        return None
    p = v.producer
    if p.op == "Gather":
        return []
    if p.op != "Add":
        return None
    out = [v]
    for i in p.inputs:
        if i is None or i.is_const:
            continue
        inner = _lookup_sum(i)
        if inner is None:
            return None
        out.extend(inner)
    return out


def _phase_chain(v: Value | None) -> list[Value]:
    """``v`` and, back through ops combining one tensor with constants, the tensors it is
    computed from (up to a graph input or any other op)."""
    chain: list[Value] = []
    while v is not None and not v.is_const and v not in chain:
        chain.append(v)
        p = v.producer
        if p is None or p.op not in _PHASE_OPS:
            break
        live = [i for i in p.inputs if i is not None and not i.is_const]
        v = live[0] if len(live) == 1 else None
    return chain


def _written_out_norm(sub: Node) -> tuple[Value, list[Value]] | None:
    """For ``Sub(x, ReduceMean(x))``, the centering of a normalization written out as
    reductions: ``(x, [its tensors up to the normalized output (the Div by the deviation) and
    the constant affine after it])``; None for any other node. A tensor belongs when every
    non-constant input of its producer does."""
    if sub.op != "Sub" or len(sub.inputs) != 2:
        return None
    x, mean = sub.inputs
    d = sub.outputs[0] if sub.outputs else None
    if x is None or mean is None or d is None:
        return None
    red = mean.producer
    if red is None or red.op != "ReduceMean" or red.inputs[0] is not x:
        return None
    inside: dict[int, Value] = {id(mean): mean, id(d): d}
    order: list[Value] = [mean, d]
    frontier = [d]
    normalized = False
    while frontier:
        v = frontier.pop(0)
        for u in v.consumers():
            out = u.outputs[0] if u.outputs else None
            if (out is None or id(out) in inside or u.op not in _NORM_OPS
                    or not all(i is None or i.is_const or id(i) in inside for i in u.inputs)):
                continue
            inside[id(out)] = out
            order.append(out)
            if u.op == "Div":
                normalized = True
                break
            frontier.append(out)
        if normalized:
            break
    if not normalized:
        return None
    # the affine after the division: at most one Mul and one Add by constants
    tail = order[-1]
    for _ in range(2):
        users = tail.consumers()
        if len(users) != 1 or users[0].op not in ("Mul", "Add") or not any(
                i is not None and i.is_const for i in users[0].inputs):
            break
        nxt = users[0].outputs[0] if users[0].outputs else None
        if nxt is None or id(nxt) in inside:
            break
        inside[id(nxt)] = tail = nxt
        order.append(nxt)
    return x, order


def _matmul_rhs_sources(graph: Graph, rules: QuantRules,
                        act_bits: Callable[[Value], int | None]) -> set[str]:
    """Values whose encoding reaches the second input of a MatMul between two 16-bit
    activations: that input, traced back through the ops that share their input's encoding."""
    out: set[str] = set()
    for n in graph.nodes:
        if n.op != "MatMul" or len(n.inputs) < 2:
            continue
        a, b = n.inputs[0], n.inputs[1]
        if (a is None or b is None or a.is_const or b.is_const or not a.dtype.is_float
                or not b.dtype.is_float or (act_bits(a) or 0) < 16 or (act_bits(b) or 0) < 16):
            continue
        v: Value | None = b
        while (v is not None and v.producer is not None
               and v.producer.op in rules.shared_encoding_ops and v.producer.inputs
               and v.producer.inputs[0] is not None and not v.producer.inputs[0].is_const):
            v = v.producer.inputs[0]
        if v is not None:
            out.add(v.name)
    return out


#: output bounds of ops whose output range is limited whatever their input
_BOUNDS: dict[str, tuple[float, float]] = {
    "Relu": (0.0, math.inf), "Sigmoid": (0.0, 1.0), "HardSigmoid": (0.0, 1.0),
    "Softmax": (0.0, 1.0), "Tanh": (-1.0, 1.0), "Abs": (0.0, math.inf), "Exp": (0.0, math.inf),
    "Sqrt": (0.0, math.inf), "HardSwish": (-0.375, math.inf),
}


def _output_bounds(v: Value) -> tuple[float, float]:
    """What the producer of ``v`` can output at most (Clip from its constant bounds)."""
    n = v.producer
    if n is None:
        return -math.inf, math.inf
    if n.op == "Clip":
        lo, hi = -math.inf, math.inf
        for i, attr in ((1, "min"), (2, "max")):
            b = n.inputs[i] if len(n.inputs) > i else None
            c = (np.asarray(b.const) if b is not None and b.is_const and b.const is not None
                 else None)
            val = (float(c.reshape(-1)[0]) if c is not None and c.size == 1
                   else n.attr(attr, None) if b is None else None)
            if val is not None:
                lo, hi = (float(val), hi) if i == 1 else (lo, float(val))
        return lo, hi
    return _BOUNDS.get(n.op, (-math.inf, math.inf))


def _gates_own_input(sig: Node, users: list[Node]) -> bool:
    """``sig`` is the gate of a SiLU: a Mul multiplies its output by its own input."""
    x = sig.inputs[0]
    return bool(users) and all(
        u.op == "Mul" and x is not None and x in u.inputs for u in users)


def _feeds_softmax(node: Node) -> bool:
    """True for an Add (or Sub) whose result goes only into Softmax: a mask being applied."""
    if node.op not in ("Add", "Sub") or not node.outputs or node.outputs[0] is None:
        return False
    users = node.outputs[0].consumers()
    return bool(users) and all(u.op == "Softmax" for u in users)


def _const_range(data: np.ndarray) -> tuple[float, float]:
    """Range of a constant; infinities (an additive mask's -inf) widen it by the mask depth
    instead of poisoning it, so they saturate to the range's end."""
    finite = data[np.isfinite(data)]
    lo = float(finite.min()) if finite.size else 0.0
    hi = float(finite.max()) if finite.size else 0.0
    if np.isneginf(data).any():
        lo = min(lo, hi - _MASK_DEPTH)
    if np.isposinf(data).any():
        hi = max(hi, lo + _MASK_DEPTH)
    return lo, hi


def _correct_bias(graph: Graph, n: Node, delta: np.ndarray, mean: np.ndarray) -> int:
    """Subtract the expected output shift ``delta @ mean`` (weight rounding error times the
    calibrated input mean, per output channel) from the bias of Conv/Gemm ``n``; adds a bias
    when there is none. Returns 1 when corrected. Conv borders (zero padding) are ignored."""
    d = delta.astype(np.float64)
    mu = np.asarray(mean, np.float64)
    if n.op == "Gemm":
        if n.attr("transA", 0) or n.attr("alpha", 1.0) != 1.0 or n.attr("beta", 1.0) != 1.0:
            return 0
        w = d if n.attr("transB", 0) else d.T  # [N, K]
        if w.shape[1] != mu.size:
            return 0
        shift = w @ mu
    elif n.op == "Conv":
        group = int(n.attr("group", 1))
        if d.ndim < 3:
            return 0
        if group == 1 and d.shape[1] == mu.size:
            shift = np.einsum("oik,i->o", d.reshape(d.shape[0], d.shape[1], -1), mu)
        elif group == d.shape[0] == mu.size and d.shape[1] == 1:  # depthwise
            shift = d.reshape(d.shape[0], -1).sum(1) * mu
        else:
            return 0
    else:
        return 0
    if not np.all(np.isfinite(shift)):
        return 0
    bias = n.inputs[2] if len(n.inputs) > 2 else None
    if bias is not None and (not bias.is_const or bias.const is None or bias.const.ndim != 1):
        return 0
    old = (np.asarray(bias.const, np.float64) if bias is not None
           else np.zeros(shift.shape, np.float64))
    out = n.outputs[0]
    dtype = out.dtype.numpy if out is not None else np.float32
    new = graph.const((old - shift).astype(dtype), f"{out.name if out else n.op}_bias_bc")
    if bias is not None:
        n.set_input(2, new)
        if not bias.uses:
            graph.constants.pop(bias.name, None)
    else:
        n.set_inputs([*n.inputs, new])
    return 1


def _finite(x: float) -> float | None:
    return None if math.isinf(x) or math.isnan(x) else round(x, 3)


def _input_axis(n: Node, ndim: int) -> int:
    """The reduction (input-channel) axis of a weight: where blocks run."""
    if n.op == "Conv":
        return 1
    if n.op == "ConvTranspose":
        return 0
    if n.op == "Gemm":
        return 1 if n.attr("transB", 0) else 0
    return max(ndim - 2, 0)


def _real_lo(st: RangeStats) -> float:
    """The smallest histogram bin edge above the mask floor (the real scores' minimum)."""
    edges = np.linspace(st.lo, st.hi, len(st.hist) + 1)
    for count, left in zip(st.hist, edges[:-1]):
        if count > 0 and left > _MASK_FLOOR:
            return float(left)
    return st.lo

"""``lowrank``: truncated-SVD factorization of Gemm, MatMul (constant 2-D weight) and Conv.

Each layer's weight is viewed as a matrix ``M`` whose rows are the layer's inputs and whose
columns are its outputs, factorized ``M ~ (U_r sqrt(S_r)) (sqrt(S_r) V_r^T)`` and replaced by
two layers:

- ``Gemm``: ``Gemm(A, W1) -> Gemm(h, W2, C)`` (``alpha``/``beta`` kept on the second);
- ``MatMul``: ``MatMul(X, W1) -> MatMul(h, W2)``;
- ``Conv``, spatial SVD (Jaderberg et al. 2014; AIMET's "spatial SVD"): ``k_h x k_w`` becomes
  ``k_h x 1`` (``r`` outputs, the vertical stride, dilation and padding) then ``1 x k_w``
  (the horizontal ones and the bias); ``M`` is ``[Cin*k_h, Cout*k_w]``;
- ``Conv``, channel SVD (Zhang et al. 2015): ``k x k`` with ``r`` outputs then ``1 x 1``;
  ``M`` is ``[Cin*k_h*k_w, Cout]`` (a 1x1 conv becomes two 1x1 convs).

The rank is the largest of those the given criteria ask for (default ``energy=0.95``):
``energy`` (kept fraction of the squared singular values), ``ratio`` (the factorized layer's
MACs as a fraction of the original's; for a Gemm/MatMul also its parameters), ``max_error``
(relative Frobenius error of the layer, a per-layer error budget) or an explicit ``rank`` /
per-layer ``ranks``. At full rank the factorization is exact (up to float rounding). A rank
outside ``1..full`` for every conv mode, and a ``layers=``/``ranks=`` name that matches no
node, are refused with ``CompressionError``.

``whiten=true`` makes the SVD data-aware: the rows of ``M`` are first transformed by the
calibration activations' statistics, so that truncation minimises the error of the layer's
*output* rather than of its weights. Gemm/MatMul use the Cholesky factor of the input's second
moment ``E[x x^T] = L L^T`` (SVD-LLM, Wang et al. 2024: the truncation error then equals the
output error exactly); Conv uses per-input-channel RMS scaling (ASVD, Yuan et al. 2023),
because the im2col covariance of a conv is large.

A layer is left alone when the target's cost model (``targets.cost``; target from the option,
else ``ctx.target``, else ``htp-v75``) predicts the two layers are not faster than the one (a
factorization only pays when ``r`` is well under ``Cin*Cout/(Cin+Cout)``), unless
``force=true``. Every decision is a row of ``ctx.report["compression"]`` with the reason, the
predicted latencies and, with calibration data, the layer's measured output SQNR.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import numpy as np

from compiler.errors import PipelineError
from compiler.ir import Graph, Node, TensorType
from compiler.passes import Pass, PassContext, PassResult, option
from passes.lowrank.common import (
    CompressionError,
    ShapeRewriter,
    calibration_feeds,
    check_layer_names,
    collect,
    layer_name,
    nodes_seconds,
    output_sqnr_db,
    report_entry,
    rows_from,
    summarize,
)

__all__ = ["LowRank", "lowrank_sites", "layer_key", "Factorization", "factorize"]

def layer_key(node: Node) -> str:
    """The name options use for a layer: the node's name, else its first output's."""
    return node.name or node.outputs[0].name


def _static(shape: Any) -> tuple[int, ...] | None:
    if shape is None or any(not isinstance(d, int) for d in shape):
        return None
    return tuple(int(d) for d in shape)


def _why_not(node: Node) -> str | None:
    """Why ``node`` cannot be factorized (None when it can)."""
    w = node.input(1)
    if w is None or not w.is_const or w.const is None:
        return "the weight is not a constant"
    if len(w.uses) != 1:
        return f"the weight %{w.name} is shared with another layer"
    x = node.input(0)
    if x is None or _static(x.shape) is None or _static(node.outputs[0].shape) is None:
        return "shapes are not static"
    if node.op == "Gemm":
        if node.attr("transA", 0):
            return "transA=1"
        return None if w.const.ndim == 2 else "the weight is not 2-D"
    if node.op == "MatMul":
        return None if w.const.ndim == 2 else "the weight is not 2-D"
    if node.op == "Conv":
        if w.const.ndim != 4:
            return f"a {w.const.ndim - 2}-D convolution (only 2-D is factorized)"
        if int(node.attr("group", 1)) != 1:  # type: ignore[arg-type]
            return "a grouped or depthwise convolution (already cheap per channel)"
        if str(node.attr("auto_pad", "NOTSET")) not in ("NOTSET", ""):
            return "auto_pad is set"
        return None
    return f"{node.op} is not factorized"


def lowrank_sites(graph: Graph) -> list[Node]:
    """Gemm, constant-weight MatMul and 2-D Conv nodes that can be factorized, in order."""
    return [n for n in graph.nodes if n.op in ("Gemm", "MatMul", "Conv") and _why_not(n) is None]


# ---------------------------------------------------------------------------------------------
# the matrix view of each layer


def _matrix(node: Node, mode: str) -> np.ndarray:
    """The weight as ``[inputs, outputs]`` (see the module docstring), float64."""
    w = node.input(1).const  # type: ignore[union-attr]
    assert w is not None
    w = np.asarray(w, np.float64)
    if node.op == "Gemm":
        return w.T if node.attr("transB", 0) else w
    if node.op == "MatMul":
        return w
    cout, cin, kh, kw = w.shape
    if mode == "spatial":  # rows (c, i), columns (o, j)
        return w.transpose(1, 2, 0, 3).reshape(cin * kh, cout * kw)
    return w.reshape(cout, cin * kh * kw).T  # rows (c, i, j), columns o


def _conv_out(size: int, k: int, stride: int, dil: int, pb: int, pe: int) -> int:
    return (size + pb + pe - dil * (k - 1) - 1) // stride + 1


def _ints(node: Node, name: str, default: list[int]) -> list[int]:
    v = node.attr(name)
    return [int(x) for x in v] if v is not None else default  # type: ignore[union-attr]


@dataclass
class Factorization:
    """A factorized layer before it is built: the whitened SVD and the row transform."""

    node: Node
    mode: str  # "matrix", "spatial" or "channel"
    u: np.ndarray
    s: np.ndarray
    vt: np.ndarray
    row_inv: np.ndarray | None  # inverse of the whitening row transform (None: identity)
    macs_per_rank: int
    macs: int  # of the original layer

    @property
    def full_rank(self) -> int:
        """``min(m, n)``: the rank at which the factorization is exact."""
        return int(self.s.size)

    def kept_energy(self, r: int) -> float:
        """Fraction of the squared singular values kept at rank ``r``."""
        e = self.s ** 2
        total = float(e.sum())
        return 1.0 if total == 0 else float(e[:r].sum() / total)

    def rel_error(self, r: int) -> float:
        """Relative Frobenius error of the (whitened) matrix at rank ``r``."""
        return math.sqrt(max(1.0 - self.kept_energy(r), 0.0))

    def factors(self, r: int) -> tuple[np.ndarray, np.ndarray]:
        """``(A [inputs, r], B [r, outputs])`` with ``A @ B`` the rank-``r`` weight."""
        root = np.sqrt(self.s[:r])
        a = self.u[:, :r] * root
        if self.row_inv is not None:
            a = self.row_inv @ a
        b = root[:, None] * self.vt[:r]
        return a, b


def _row_transform(node: Node, mode: str, x: Sequence[np.ndarray]
                   ) -> tuple[np.ndarray, np.ndarray]:
    """``(T, T^-1)`` for whitening the rows of the layer's matrix with its inputs ``x``."""
    if node.op in ("Gemm", "MatMul"):
        k = x[0].shape[-1]
        flat = np.concatenate([np.asarray(a, np.float64).reshape(-1, k) for a in x])
        cov = flat.T @ flat / max(flat.shape[0], 1)
        cov += np.eye(k) * (1e-6 * float(np.trace(cov)) / k + 1e-12)
        chol = np.linalg.cholesky(cov)  # cov = L L^T; rows transform by L^T (SVD-LLM)
        t = chol.T
        return t, np.linalg.inv(t)
    w = node.input(1).const  # type: ignore[union-attr]
    assert w is not None
    kh, kw = w.shape[2], w.shape[3]
    rms = np.sqrt(np.mean([np.mean(np.asarray(a, np.float64) ** 2, axis=(0, 2, 3)) for a in x],
                          axis=0))
    rms = np.where(rms > 0, rms, max(float(rms.max()), 1e-12) * 1e-3)
    d = np.repeat(rms, kh if mode == "spatial" else kh * kw)  # ASVD: scale input channels
    return np.diag(d), np.diag(1.0 / d)


def _macs_per_rank(node: Node, mode: str) -> int:
    y = _static(node.outputs[0].shape)
    x = _static(node.input(0).shape)  # type: ignore[union-attr]
    w = node.input(1).const  # type: ignore[union-attr]
    assert y is not None and x is not None and w is not None
    if node.op in ("Gemm", "MatMul"):
        rows = math.prod(y) // y[-1]
        k = w.shape[1] if node.op == "Gemm" and node.attr("transB", 0) else w.shape[0]
        return rows * (k + y[-1])
    cout, cin, kh, kw = w.shape
    n, _, ho, wo = y
    if mode == "channel":
        return n * ho * wo * (cin * kh * kw + cout)
    return n * ho * x[3] * cin * kh + n * ho * wo * cout * kw


def factorize(node: Node, mode: str, inputs: Sequence[np.ndarray] | None = None
              ) -> Factorization:
    """The (optionally whitened, when ``inputs`` holds the layer's calibration inputs) SVD of
    ``node`` in ``mode`` (``matrix`` for Gemm/MatMul, ``spatial`` or ``channel`` for Conv)."""
    from targets.cost import node_macs

    m = _matrix(node, mode)
    t_inv = None
    if inputs:
        t, t_inv = _row_transform(node, mode, inputs)
        m = t @ m
    u, s, vt = np.linalg.svd(m, full_matrices=False)
    return Factorization(node, mode, u, s, vt, t_inv, _macs_per_rank(node, mode),
                         node_macs(node))


def _build(rw: ShapeRewriter, f: Factorization, r: int) -> list[Node]:
    """Build the two layers of ``f`` at rank ``r`` before the node; return them."""
    node = f.node
    a, b = f.factors(r)
    w = node.input(1)
    assert w is not None and w.const is not None
    dt = w.const.dtype
    x = node.input(0)
    assert x is not None
    y = node.outputs[0]
    ys = _static(y.shape)
    xs = _static(x.shape)
    assert ys is not None and xs is not None
    base = layer_key(node)
    bias = node.input(2) if len(node.inputs) > 2 else None
    if node.op == "Gemm":
        w1 = rw.const(a.T.astype(dt), f"{w.name}_lr1")
        w2 = rw.const(b.T.astype(dt), f"{w.name}_lr2")
        h = rw.op("Gemm", [x, w1], {"transB": 1},
                  type=TensorType(x.dtype, (xs[0], r)), name=f"{base}_lr1")
        attrs = {k: v for k, v in node.attrs.items() if k in ("alpha", "beta")}
        attrs["transB"] = 1
        out = rw.op("Gemm", [h, w2] + ([bias] if bias is not None else []), attrs,
                    type=y.type, name=f"{base}_lr2")
    elif node.op == "MatMul":
        w1 = rw.const(a.astype(dt), f"{w.name}_lr1")
        w2 = rw.const(b.astype(dt), f"{w.name}_lr2")
        h = rw.op("MatMul", [x, w1], type=TensorType(x.dtype, (*xs[:-1], r)),
                  name=f"{base}_lr1")
        out = rw.op("MatMul", [h, w2], type=y.type, name=f"{base}_lr2")
    else:
        cout, cin, kh, kw = w.const.shape
        strides = _ints(node, "strides", [1, 1])
        dil = _ints(node, "dilations", [1, 1])
        pads = _ints(node, "pads", [0, 0, 0, 0])
        if f.mode == "spatial":
            w1a = a.T.reshape(r, cin, kh, 1)
            w2a = b.reshape(r, cout, kw).transpose(1, 0, 2).reshape(cout, r, 1, kw)
            at1 = {"kernel_shape": [kh, 1], "strides": [strides[0], 1],
                   "dilations": [dil[0], 1], "pads": [pads[0], 0, pads[2], 0]}
            at2 = {"kernel_shape": [1, kw], "strides": [1, strides[1]],
                   "dilations": [1, dil[1]], "pads": [0, pads[1], 0, pads[3]]}
            hshape = (xs[0], r, ys[2], xs[3])
        else:
            w1a = a.T.reshape(r, cin, kh, kw)
            w2a = b.T.reshape(cout, r, 1, 1)
            at1 = {"kernel_shape": [kh, kw], "strides": strides, "dilations": dil,
                   "pads": pads}
            at2 = {"kernel_shape": [1, 1]}
            hshape = (xs[0], r, ys[2], ys[3])
        w1 = rw.const(w1a.astype(dt), f"{w.name}_lr1")
        w2 = rw.const(w2a.astype(dt), f"{w.name}_lr2")
        h = rw.op("Conv", [x, w1], at1, type=TensorType(x.dtype, hshape), name=f"{base}_lr1")
        out = rw.op("Conv", [h, w2] + ([bias] if bias is not None else []), at2,
                    type=y.type, name=f"{base}_lr2")
    first, second = h.producer, out.producer
    assert first is not None and second is not None
    return [first, second]


def _layer_sqnr(f: Factorization, r: int, inputs: Sequence[np.ndarray]) -> float:
    """SQNR (dB) of the factorized layer's product against the original's on ``inputs``."""
    a, b = f.factors(r)
    node = f.node
    sig = noise = 0.0
    if node.op in ("Gemm", "MatMul"):
        w = _matrix(node, "matrix")
        for x in inputs:
            x2 = np.asarray(x, np.float64).reshape(-1, w.shape[0])
            ref = x2 @ w
            got = (x2 @ a) @ b
            sig += float(np.sum(ref ** 2))
            noise += float(np.sum((ref - got) ** 2))
    else:
        import torch
        import torch.nn.functional as F

        wc = node.input(1).const  # type: ignore[union-attr]
        assert wc is not None
        cout, cin, kh, kw = wc.shape
        strides = _ints(node, "strides", [1, 1])
        dil = _ints(node, "dilations", [1, 1])
        p = _ints(node, "pads", [0, 0, 0, 0])
        if f.mode == "spatial":
            wr = (a @ b).reshape(cin, kh, cout, kw).transpose(2, 0, 1, 3)
        else:
            wr = (a @ b).T.reshape(cout, cin, kh, kw)
        for x in inputs:
            xt = F.pad(torch.from_numpy(np.asarray(x, np.float64)), (p[1], p[3], p[0], p[2]))
            ref = F.conv2d(xt, torch.from_numpy(np.asarray(wc, np.float64)),
                           stride=strides, dilation=dil).numpy()
            got = F.conv2d(xt, torch.from_numpy(wr), stride=strides, dilation=dil).numpy()
            sig += float(np.sum(ref ** 2))
            noise += float(np.sum((ref - got) ** 2))
    if noise == 0.0:
        return math.inf
    return 10.0 * math.log10(max(sig, 1e-300) / noise)


def parse_ranks(ranks: Sequence[str]) -> dict[str, int]:
    """``("fc1:16", "conv2d:8")`` as ``{"fc1": 16, "conv2d": 8}`` (``CompressionError`` on a
    malformed entry)."""
    out: dict[str, int] = {}
    for item in ranks:
        name, sep, num = item.rpartition(":")
        if not sep or not name or not num.lstrip("-").isdigit():
            raise CompressionError(f"lowrank: ranks entry {item!r} is not 'layer:rank'")
        out[name] = int(num)
    return out


@dataclass(frozen=True)
class LowRank(Pass):
    """Truncated-SVD factorization of Gemm / MatMul / Conv layers where it pays (see the
    module docstring)."""

    name: ClassVar[str] = "lowrank"
    summary: ClassVar[str] = "Low-rank (SVD) factorization of Gemm, MatMul and Conv layers"
    needs_finite_weights: ClassVar[bool] = True
    energy: float | None = option(None, "kept fraction of squared singular values (the default "
                                        "criterion, 0.95, when no other is given)")
    ratio: float | None = option(None, "factorized MACs (and parameters) as a fraction of the "
                                       "layer's")
    max_error: float | None = option(None, "per-layer budget: relative Frobenius error of the "
                                           "(whitened) weight")
    rank: int | None = option(None, "one explicit rank for every layer")
    ranks: tuple[str, ...] = option((), "per-layer ranks, 'layer:rank' (layer = node name or "
                                        "its output's); only these layers are touched")
    conv: Literal["auto", "spatial", "channel"] = option(
        "auto", "conv factorization: spatial (kxk -> kx1,1xk), channel (kxk(r) + 1x1) or auto "
                "(the cheaper)")
    whiten: bool = option(False, "data-aware SVD with calibration statistics (SVD-LLM / ASVD)")
    force: bool = option(False, "factorize even where the cost model predicts no gain")
    layers: tuple[str, ...] = option((), "only these layers (node or output names)")
    target: str | None = option(None, "target of the cost model (default: ctx.target, then "
                                      "htp-v75)")
    precision: str = option("w8a16", "precision the cost model prices layers at")

    def __post_init__(self) -> None:
        super().__post_init__()
        for k in ("energy", "ratio", "max_error"):
            v = getattr(self, k)
            if v is not None and not 0.0 <= v <= 1.0 and not (k == "ratio" and v > 0):
                raise PipelineError(f"option {k!r} of pass 'lowrank' must be in [0, 1], got {v}")

    def _rank(self, f: Factorization, explicit: int | None) -> int:
        node = f.node
        full = f.full_rank
        if explicit is not None:
            if not 1 <= explicit <= full:
                raise CompressionError(
                    f"lowrank: rank {explicit} is impossible for {node.label()} "
                    f"({layer_key(node)}): it must be in 1..{full}")
            return explicit
        ranks: list[int] = []
        energy = self.energy
        if energy is None and self.ratio is None and self.max_error is None:
            energy = 0.95
        if energy is not None:
            cum = np.cumsum(f.s ** 2) / max(float(np.sum(f.s ** 2)), 1e-300)
            ranks.append(int(np.searchsorted(cum, energy - 1e-12) + 1))
        if self.max_error is not None:
            errs = [f.rel_error(r) for r in range(1, full + 1)]
            ranks.append(next((r + 1 for r, e in enumerate(errs) if e <= self.max_error), full))
        if self.ratio is not None:
            ranks.append(int(self.ratio * f.macs / max(f.macs_per_rank, 1)))
        return int(min(max(max(ranks), 1), full))

    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        """Factorize every eligible layer where the cost model says it pays."""
        start = rows_from(ctx)
        per_layer = parse_ranks(self.ranks)
        wanted = set(self.layers) | set(per_layer)
        check_layer_names(graph, [*self.layers, *per_layer], "lowrank")
        target = self.target or ctx.target
        candidates = [n for n in graph.nodes if n.op in ("Gemm", "MatMul", "Conv")
                      and (not wanted or layer_key(n) in wanted or n.src in wanted)]
        if self.rank is not None and self.rank < 1:
            raise CompressionError(f"lowrank: rank {self.rank} is impossible (must be >= 1)")
        feeds = calibration_feeds(graph, ctx)
        if self.whiten and not feeds:
            raise CompressionError("lowrank: whiten=true needs calibration batches "
                                   "(calibration_data=[...] or --calib)")
        ok = [n for n in candidates if _why_not(n) is None]
        xs = collect(graph, [n.input(0).name for n in ok], feeds)  # type: ignore[union-attr]
        before = graph.copy() if feeds else None
        done = skipped = 0
        macs_before = macs_after = 0
        for node in candidates:
            reason = _why_not(node)
            if reason is not None:
                if node.op != "MatMul":  # activation MatMuls (attention) are not layers
                    report_entry(ctx, {"pass": "lowrank", "layer": layer_name(node),
                                       "op": node.op, "action": "skipped", "reason": reason})
                continue
            x = node.input(0)
            assert x is not None
            inputs = xs.get(x.name, [])
            explicit = per_layer.get(layer_key(node), per_layer.get(node.src, self.rank))
            res = self._one(graph, ctx, node, inputs, explicit, target)
            if res is None:
                skipped += 1
            else:
                done += 1
                macs_before += res[0]
                macs_after += res[1]
        stats: dict[str, int | float] = {"factorized": done, "skipped": skipped,
                                         "macs-before": macs_before, "macs-after": macs_after}
        if before is not None and done:
            sq = output_sqnr_db(before, graph, feeds)
            stats["output-sqnr-db"] = sq if math.isfinite(sq) else 999.0
            summarize(ctx, start, {"pass": "lowrank", "factorized": done}, sq)
        return PassResult(done > 0, stats)

    def _one(self, graph: Graph, ctx: PassContext, node: Node, inputs: Sequence[np.ndarray],
             explicit: int | None, target: str | None) -> tuple[int, int] | None:
        """Factorize ``node`` if it pays; return its MACs before/after, or None if skipped."""
        whiten_with = inputs if self.whiten else None
        if node.op == "Conv":
            w = node.input(1).const  # type: ignore[union-attr]
            assert w is not None
            spatial_ok = w.shape[2] > 1 and w.shape[3] > 1
            if self.conv == "spatial" and not spatial_ok:
                modes = ["channel"]
            elif self.conv == "auto":
                modes = ["spatial", "channel"] if spatial_ok else ["channel"]
            else:
                modes = [self.conv]
        else:
            modes = ["matrix"]
        old_s = nodes_seconds([node], target, self.precision)
        best: tuple[float, Factorization, int] | None = None
        refused: CompressionError | None = None
        for mode in modes:
            f = factorize(node, mode, whiten_with)
            try:
                r = self._rank(f, explicit)
            except CompressionError as e:  # the rank may fit the other conv mode
                refused = e
                continue
            rw = ShapeRewriter(graph, ctx, rule=f"lowrank-{mode}", root=node)
            built = _build(rw, f, r)
            secs = nodes_seconds(built, target, self.precision)
            rw.rollback()
            if best is None or secs < best[0]:
                best = (secs, f, r)
        if best is None:
            assert refused is not None
            raise refused
        secs, f, r = best
        entry: dict[str, Any] = {
            "pass": "lowrank", "layer": layer_name(node), "op": node.op, "mode": f.mode,
            "rank": r, "full_rank": f.full_rank, "energy_kept": f.kept_energy(r),
            "weight_error": f.rel_error(r), "whitened": bool(self.whiten),
            "macs_before": f.macs, "macs_after": f.macs_per_rank * r,
            "predicted_us_before": old_s * 1e6, "predicted_us_after": secs * 1e6}
        if secs >= old_s and not self.force:
            entry.update(action="skipped", reason=(
                f"the cost model ({target or 'htp-v75'}, {self.precision}) predicts "
                f"{secs * 1e6:.2f} us factorized at rank {r}/{f.full_rank} vs "
                f"{old_s * 1e6:.2f} us as is"))
            report_entry(ctx, entry)
            return None
        if not ctx.may_rewrite():
            return None
        rw = ShapeRewriter(graph, ctx, rule=f"lowrank-{f.mode}", root=node)
        built = _build(rw, f, r)
        rw.replace_root(built[1].outputs[0])
        rw.finish()
        entry["action"] = "factorized"
        entry["reason"] = ("forced" if secs >= old_s else
                           f"predicted {old_s * 1e6:.2f} -> {secs * 1e6:.2f} us")
        if inputs:
            entry["layer_sqnr_db"] = _layer_sqnr(f, r, inputs)
        report_entry(ctx, entry)
        return f.macs, f.macs_per_rank * r


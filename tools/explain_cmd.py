"""``edgec explain MODEL --target htp-v75 [--precision w8a8] [--json]``: where each node would
run, why, and what it would cost.

No calibration data is needed: the model runs through the target's float pipeline (as
``compiler.estimate`` does) and is costed at the precision scheme (``w8a8`` costs every node at
8-bit activations and weights). Prints the placement with a reason per node, the fallback
percentage (nodes off the NPU), each partition's predicted latency and transfer cost, the
greedy capability placement for comparison, and a suggested fix for nodes the NPU refuses
where one is known.

``--target htp-v75`` explains the NPU with the CPU as a fallback (policy ``fallback``: every
node the NPU takes on the NPU, then small NPU islands moved to the CPU where that is predicted
faster by a margin); ``--target htp-v75,cpu`` the cost-driven placement of
``compile(target=["htp-v75", "cpu"])``. ``--pin PATTERN=TARGET`` adds placement pins.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from compiler.errors import EdgecError

__all__ = ["add_explain_parser", "run_explain", "explain", "suggest_fix", "KNOWN_FIXES"]

#: op -> the rewrite that brings it onto the HTP (or why none exists)
KNOWN_FIXES: dict[str, str] = {
    "Erf": "an exact (erf) GELU: run 'fuse' (in the default pipeline) to make it one Gelu, "
           "which the HTP runs; or use nn.GELU(approximate='tanh')",
    "Einsum": "rewrite the einsum as MatMul with Transpose/Reshape (torch.matmul/bmm), "
              "which the HTP runs",
    "ReduceL2": "write the norm as Mul(x, x) -> ReduceSum -> Sqrt (x.pow(2).sum(dim).sqrt()), "
                "or use LpNormalization for normalize(p=2): both run on the HTP",
    "ReduceSumSquare": "write it as Mul(x, x) -> ReduceSum, which the HTP runs",
    "GroupNormalization": "run 'lower-group-norm' (in the default HTP pipeline)",
    "Trilu": "make its input a constant (a causal mask built once) so 'canonicalize' folds it",
    "Shape": "export with static shapes; 'canonicalize' then folds the shape arithmetic",
    "ConstantOfShape": "export with static shapes; 'canonicalize' then folds it",
    "Range": "export with static shapes; 'canonicalize' then folds it",
    "Mod": "no HTP kernel: precompute it when its inputs are constant, else it stays on "
           "the CPU",
    "NonZero": "data-dependent output shape: no NPU can run it; keep it on the CPU or avoid "
               "it (masks instead of indices)",
    "ScatterND": "no HTP kernel: rewrite as Where with a mask where possible",
    "Softplus": "rewrite as Log(1 + Exp(x)), which the HTP runs",
    "Mish": "rewrite as x * Tanh(Log(1 + Exp(x))), which the HTP runs",
    "Atan": "no HTP kernel; keep it on the CPU",
}


def add_explain_parser(sub: Any) -> None:
    """Register ``explain`` on the CLI's subparsers."""
    p = sub.add_parser("explain", help="show where each node would run, why, and its cost")
    p.add_argument("model", help="MODEL.onnx, MODEL.ir or file.py:factory")
    p.add_argument("--target", default="htp-v75",
                   help="htp-v75 (CPU as fallback) or a list such as htp-v75,cpu (placed by "
                        "predicted cost); default htp-v75")
    p.add_argument("--precision", default="w8a8",
                   choices=["w8a8", "w8a16", "w4a16", "fp16", "fp32"])
    p.add_argument("--policy", choices=["cost", "greedy", "fallback"], default=None,
                   help="override: cost (lowest predicted latency), greedy (capability) or "
                        "fallback (greedy, then small NPU islands to the CPU when predicted "
                        "faster; the default for one NPU target)")
    p.add_argument("--pipeline", default=None,
                   help="float pipeline to run first (default: the target's float pipeline)")
    p.add_argument("--pin", action="append", default=[], metavar="PATTERN=TARGET",
                   help="placement pin, e.g. 'layers.0.*=cpu' or 'op:Softmax=htp'")
    p.add_argument("--all", action="store_true", help="list every node, not only those off "
                                                      "the NPU")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=run_explain)


def _in_gelu(node: Any) -> bool:
    """Whether an ``Erf`` is the core of an exact GELU: ``x * 0.5 * (1 + erf(x / sqrt 2))``."""
    out = node.outputs[0] if node.outputs else None
    return out is not None and any(u.op == "Add" and any(
        w.op == "Mul" for o in u.outputs if o is not None for w in o.consumers())
        for u in out.consumers())


def suggest_fix(op: str, reason_code: str, detail: str, node: Any = None) -> str | None:
    """A suggested fix for a node the NPU refuses, or None when none is known (``node``, when
    given, refines it: a lone ``Erf`` is not a GELU)."""
    if reason_code == "op-unsupported":
        if op == "Erf" and node is not None and not _in_gelu(node):
            return ("a lone Erf has no HTP kernel; if it approximates an activation, use one "
                    "the HTP runs (Gelu, Tanh, Sigmoid), else it stays on the CPU")
        return KNOWN_FIXES.get(op)
    if reason_code == "dtype-unsupported":
        return "quantize it (compile at w8a8/w8a16) or build at --precision fp16"
    if reason_code == "dynamic-shape":
        return "export with static shapes (fixed batch and sequence length)"
    if reason_code == "too-large-for-vtcm":
        if op in ("Softmax", "LogSoftmax"):
            return ("the whole row must sit in VTCM: shorten the softmax axis (e.g. "
                    "reshape [n] -> [k, n/k] for a per-chunk softmax and renormalize with the "
                    "chunk sums) or keep it on the CPU")
        return "split the tensor (smaller tiles or batch) so it fits VTCM"
    if reason_code == "rank":
        return ("merge adjacent axes with Reshape so every tensor has at most 5 dimensions "
                "(e.g. a 6-D pixel-shuffle Transpose -> DepthToSpace/SpaceToDepth, or fold "
                "the batch into a neighbouring axis)")
    if reason_code == "attribute":
        return _ATTRIBUTE_FIXES.get(op, {}).get(_attribute_kind(op, detail))
    return None


#: op -> refusal kind (:func:`_attribute_kind`) -> the change that brings it onto the HTP
_ATTRIBUTE_FIXES: dict[str, dict[str, str]] = {
    "ConvTranspose": {"dilations": "dilate the kernel instead: insert (d-1) zeros between the "
                                   "taps of the weight and use dilations=1 (same result)"},
    "Pad": {"wrap": "write circular padding as Concat of Slices of the input "
                    "(torch.cat([x[..., -p:], x, x[..., :p]])): Slice and Concat run on the HTP"},
    "Resize": {"nearest": "use nearest_mode='floor' (torch's nn.Upsample(mode='nearest') "
                          "exports it) or coordinate_transformation_mode='half_pixel'",
               "antialias": "drop antialias (antialias=False), or low-pass first with an "
                            "AveragePool, which the HTP runs"},
    "LpNormalization": {"p": "write the L1 norm as x / ReduceSum(Abs(x)) "
                             "(x / x.abs().sum(dim, keepdim=True)): Abs, ReduceSum and Div "
                             "run on the HTP"},
}


def _attribute_kind(op: str, detail: str) -> str:
    """Which attribute of ``op`` the refusal ``detail`` (``targets/hexagon_htp/target.py``,
    ``attribute_refusal``) is about."""
    if "dilations" in detail:
        return "dilations"
    if "'wrap'" in detail:
        return "wrap"
    if "antialias" in detail:
        return "antialias"
    if op == "Resize":
        return "nearest"
    if op == "LpNormalization":
        return "p"
    return ""


def _pins(items: list[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in items:
        pattern, sep, target = item.rpartition("=")
        if not sep or not pattern or not target:
            raise EdgecError(f"--pin {item!r}: expected PATTERN=TARGET")
        out[pattern] = target
    return out


def explain(graph: Any, targets: list[str], *, precision: str = "w8a8",
            policy: str | None = None, pipeline: str | None = None,
            pins: dict[str, str] | None = None) -> dict[str, Any]:
    """The explanation of ``graph`` (an IR graph; modified: the float pipeline runs on it)
    placed on ``targets`` (one NPU alone means the NPU with a CPU fallback). JSON-ready."""
    from compiler.passes import PassContext, PassManager
    from passes.partition import place, placement_report
    from targets import get_target

    names = [get_target(t).name for t in targets]
    explicit = len(names) > 1
    if not explicit and names[0] != "cpu":
        names.append("cpu")
    chosen = policy or ("cost" if explicit else "fallback")
    first = get_target(names[0])
    pipe = pipeline if pipeline is not None else first.default_pipeline("fp32")
    if pipe:
        PassManager(pipe).run(graph, PassContext(target=first.name))
    quantized = precision not in ("fp16", "fp32")
    pl, base = place(graph, names, chosen, pins=pins,  # type: ignore[arg-type]
                     precision=precision, assume_quantized=quantized)
    rep = placement_report(pl, base)
    other = "greedy" if chosen == "cost" else "cost"
    alt, _ = place(graph, names, other, pins=pins,  # type: ignore[arg-type]
                   precision=precision, assume_quantized=quantized, write=False)
    rep["alternative"] = {"policy": other, "predicted_us": round(alt.total_s * 1e6, 3),
                          "partitions": len(alt.partitions)}
    fixes: list[dict[str, str]] = []
    seen: set[tuple[str, str]] = set()
    for it in pl.problem.items:
        for n, name in zip(it.nodes, it.names):
            for t, r in it.refusals.items():
                code, _, detail = r.partition(": ")
                fix = suggest_fix(n.op, code, detail, n) if t.startswith("htp-") else None
                if fix is not None and (name, fix) not in seen:
                    seen.add((name, fix))
                    fixes.append({"node": name, "op": n.op, "reason": r, "fix": fix})
    rep["suggestions"] = fixes
    rep["precision"] = precision
    rep["pipeline"] = pipe
    rep["model"] = graph.name
    return rep


def _print(rep: dict[str, Any], show_all: bool) -> None:
    w = sys.stdout.write
    targets = " + ".join(rep["targets"])
    w(f"model {rep['model']}: {targets} at {rep['precision']}, {rep['policy']} placement\n")
    total = len(rep["nodes"])
    off = round(rep["fallback_pct"] * total / 100)
    w(f"{'predicted latency':<18} {rep['predicted_us']:.1f} us in {rep['num_partitions']} "
      f"partition(s)\n")
    alt = rep["alternative"]
    label = f"{alt['policy']} placement"
    w(f"{label:<18} {alt['predicted_us']:.1f} us in {alt['partitions']} partition(s)\n")
    greedy = rep.get("greedy")
    if greedy is not None and "greedy" not in (rep["policy"], alt["policy"]):
        w(f"{'greedy placement':<18} {greedy['predicted_us']:.1f} us in "
          f"{greedy['partitions']} partition(s)\n")
    w(f"{'fallback':<18} {off} of {total} nodes off the NPU ({rep['fallback_pct']:.1f}%)\n")
    w("\npartitions:\n")
    for p in rep["partitions"]:
        w(f"  #{p['index']:<3} {p['target']:<10} {p['nodes']:>4} nodes  {p['first']} .. "
          f"{p['last']}: {p['predicted_us']:.2f} us (nodes {p['compute_us']:.2f}, launch "
          f"{p['launch_us']:.2f}, transfer {p['transfer_us']:.2f} us / "
          f"{p['transfer_bytes']} B)\n")
    npu = {t for t in rep["targets"] if t.startswith("htp-")}
    rows = [n for n in rep["nodes"] if show_all or n["target"] not in npu]
    if rows:
        w("\nnodes:\n" if show_all else "\nnodes off the NPU:\n")
        width = max(len(n["node"]) for n in rows)
        for n in rows:
            w(f"  {n['node']:<{width}}  {n['op']:<14} {n['target']:<10} "
              f"{n['predicted_us']:>8.2f} us  {n['reason']}\n")
    if rep["suggestions"]:
        w("\nsuggested fixes:\n")
        for f in rep["suggestions"]:
            w(f"  {f['node']} ({f['op']}): {f['fix']}\n")
    for note in rep["notes"]:
        w(f"note: {note}\n")


def run_explain(args: argparse.Namespace) -> int:
    """``edgec explain``."""
    from tools.loading import load_model

    targets = [t.strip() for t in str(args.target).split(",") if t.strip()]
    if not targets:
        raise EdgecError("--target: give a target, e.g. htp-v75 or htp-v75,cpu")
    graph = load_model(args.model)
    rep = explain(graph, targets, precision=args.precision, policy=args.policy,
                  pipeline=args.pipeline, pins=_pins(args.pin))
    if args.json:
        sys.stdout.write(json.dumps(rep, indent=2, sort_keys=True, default=str) + "\n")
        return 0
    _print(rep, args.all)
    return 0

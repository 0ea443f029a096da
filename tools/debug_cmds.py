"""``edgec drift`` and ``edgec bisect``: where did accuracy go?

``drift`` runs a pipeline on given inputs and measures the error of the outputs against FP32
after every pass, then per node of the final graph (SQNR, cosine, max abs), and names the
first node where the error jumps.

``bisect`` finds the first pass after which the outputs break a threshold, then, inside it,
the first rewrite that breaks it (binary search over ``--bisect-limit``) or, for a pass that
does not work through rewrites (quantization sets encodings), the node where error jumps.
It prints the ``edgec opt`` command that reproduces the breaking state, and exits with 1 when
the threshold is broken (0 when no pass breaks it), so scripts can gate on it.
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
import sys
from collections.abc import Sequence
from typing import Any

__all__ = ["add_debug_parsers", "run_drift", "run_bisect"]

_METRICS = ("sqnr", "cosine")


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="MODEL.onnx, MODEL.ir or file.py:factory")
    p.add_argument("-p", "--pipeline", required=True, help="pass pipeline string")
    p.add_argument("--calib", required=True, metavar="INPUTS.npz",
                   help="input samples: one array per graph input, leading axis = samples")
    p.add_argument("--frontend", choices=["auto", "fx", "onnx"], default="auto")
    p.add_argument("--json", action="store_true", help="machine-readable output")


def add_debug_parsers(sub: Any) -> None:
    """Register ``drift`` and ``bisect`` on the CLI's subparsers."""
    d = sub.add_parser("drift", help="error against FP32 after every pass and per node")
    _common(d)
    d.add_argument("--nodes", type=int, default=200,
                   help="measure at most this many node outputs, evenly spread")
    d.add_argument("--jump-db", type=float, default=6.0,
                   help="an SQNR drop this large at one node counts as a jump")
    d.set_defaults(func=run_drift)

    b = sub.add_parser("bisect", help="first pass, then first rewrite or node, that breaks "
                                      "an accuracy threshold")
    _common(b)
    b.add_argument("--metric", choices=_METRICS, default="sqnr")
    b.add_argument("--threshold", type=float, required=True,
                   help="the lowest acceptable value (dB for sqnr, similarity for cosine)")
    b.set_defaults(func=run_bisect)


def _setup(args: argparse.Namespace) -> tuple[Any, list[dict[str, Any]]]:
    from compiler.passes import parse_pipeline
    from tools.loading import load_inputs, load_model

    parse_pipeline(args.pipeline)  # fail on a bad pipeline before loading anything
    graph = load_model(args.model, frontend=args.frontend)
    return graph, load_inputs(args.calib, graph)


def _db(x: float) -> str:
    return "inf" if math.isinf(x) else f"{x:.2f}"


def run_drift(args: argparse.Namespace) -> int:
    """``edgec drift``."""
    from compiler.numerics import DriftInstrument, first_jump, node_drift
    from compiler.passes import PassContext, PassManager

    graph, feeds = _setup(args)
    fp32 = graph.copy()
    drift = DriftInstrument(feeds)
    ctx = PassContext(calibration=feeds, progress=sys.stderr.isatty())
    PassManager(args.pipeline, instruments=[drift]).run(graph, ctx)
    rows = node_drift(fp32, graph, feeds, limit=args.nodes)
    jump = first_jump(rows, drop_db=args.jump_db)
    if args.json:
        out = {"passes": [{"pass": n, **m.to_dict()} for n, m in drift.rows],
               "nodes": [r.to_dict() for r in rows],
               "first_jump": jump.to_dict() if jump else None}
        sys.stdout.write(json.dumps(out, indent=2, sort_keys=True) + "\n")
        return 0
    w = sys.stdout.write
    w(f"{'after pass':<40} {'SQNR dB':>9} {'cosine':>10} {'max abs':>11}\n")
    for name, m in drift.rows:
        w(f"{name:<40} {_db(m.sqnr_db):>9} {m.cosine:>10.6f} {m.max_abs:>11.4g}\n")
    w(f"\n{'node':<32} {'op':<20} {'SQNR dB':>9} {'cosine':>10} {'max abs':>11}  module\n")
    for r in rows:
        mark = "  <-- error jumps here" if jump is not None and r is jump else ""
        w(f"{r.node[:32]:<32} {r.op[:20]:<20} {_db(r.metrics.sqnr_db):>9} "
          f"{r.metrics.cosine:>10.6f} {r.metrics.max_abs:>11.4g}  {r.src}{mark}\n")
    if jump is not None:
        w(f"\nfirst jump: {jump.op} {jump.node!r} (module {jump.src or '?'}): "
          f"{_db(jump.metrics.sqnr_db)} dB after {jump.extra.get('input_sqnr_db')} dB in\n")
    return 0


def _value(m: Any, metric: str) -> float:
    return float(m.sqnr_db if metric == "sqnr" else m.cosine)


def _measure(graph: Any, feeds: Sequence[dict[str, Any]], fp32_out: Any, metric: str) -> float:
    from compiler.numerics import metrics
    from compiler.reference import run_reference

    tests = []
    for f in feeds:
        run = run_reference(graph, f)
        tests += [run[v.name] for v in graph.outputs]
    return _value(metrics(fp32_out, tests), metric)


def run_bisect(args: argparse.Namespace) -> int:
    """``edgec bisect``."""
    from compiler.numerics import first_jump, node_drift
    from compiler.passes import PassContext, PassManager, format_pipeline, parse_pipeline
    from compiler.reference import run_reference

    graph, feeds = _setup(args)
    passes = parse_pipeline(args.pipeline)
    fp32_out = []
    for f in feeds:
        run = run_reference(graph, f)
        fp32_out += [run[v.name] for v in graph.outputs]

    def broken(x: float) -> bool:
        return x < args.threshold

    # 1. the first top-level pass after which the outputs break the threshold
    state = graph.copy()
    ctx = PassContext(calibration=feeds)
    culprit = None
    before = state
    scores: list[tuple[str, float]] = []
    for i, p in enumerate(passes):
        before = state.copy()
        rewrites_before = ctx.rewrites
        PassManager([p]).run(state, ctx)
        score = _measure(state, feeds, fp32_out, args.metric)
        scores.append((format_pipeline([p]), score))
        if broken(score):
            culprit = (i, p, rewrites_before, ctx.rewrites)
            break
    result: dict[str, Any] = {"metric": args.metric, "threshold": args.threshold,
                              "after_each_pass": [{"pass": n, "value": v} for n, v in scores]}
    if culprit is None:
        result["verdict"] = "no pass breaks the threshold"
        _report_bisect(args, result)
        return 0
    index, p, r0, r1 = culprit
    prefix = format_pipeline(passes[:index + 1])
    result["first_bad_pass"] = format_pipeline([p])
    result["pass_index"] = index

    # 2. inside it: the first rewrite (when the pass works through the rewriter)
    if r1 > r0:
        lo, hi = r0, r1  # invariant: limit lo is fine, limit hi is broken

        def run_with(limit: int) -> tuple[float, PassContext]:
            g = graph.copy()
            c = PassContext(calibration=feeds, bisect_limit=limit)
            PassManager(passes[:index + 1]).run(g, c)
            return _measure(g, feeds, fp32_out, args.metric), c

        ok_lo, _ = run_with(lo)
        if not broken(ok_lo):
            while hi - lo > 1:
                mid = (lo + hi) // 2
                if broken(run_with(mid)[0]):
                    hi = mid
                else:
                    lo = mid
            _, c = run_with(hi)
            rec = next((t for t in c.trace if t.index == hi - 1), c.trace[-1] if c.trace
                       else None)
            result["first_bad_rewrite"] = {
                "index": hi, "rule": rec.rule if rec else "?", "root": rec.root if rec else "?",
                "created": list(rec.created) if rec else [],
                "removed": list(rec.removed) if rec else []}
            result["reproduce"] = (f"edgec opt {shlex.quote(str(args.model))} -p "
                                   f"{shlex.quote(prefix)} --bisect-limit {hi}")
    if "first_bad_rewrite" not in result:
        # 3. no rewrite to blame: the node where error jumps across the pass
        rows = node_drift(before, state, feeds)
        jump = first_jump(rows)
        if jump is not None:
            result["first_bad_node"] = jump.to_dict()
        result["reproduce"] = (f"edgec drift {shlex.quote(str(args.model))} -p "
                               f"{shlex.quote(prefix)} --calib {shlex.quote(str(args.calib))}")
    _report_bisect(args, result)
    return 1


def _report_bisect(args: argparse.Namespace, result: dict[str, Any]) -> None:
    if args.json:
        sys.stdout.write(json.dumps(result, indent=2, sort_keys=True) + "\n")
        return
    w = sys.stdout.write
    unit = "dB" if args.metric == "sqnr" else ""
    for row in result["after_each_pass"]:
        w(f"after {row['pass']:<40} {args.metric} = {row['value']:.4f} {unit}\n")
    if "verdict" in result:
        w(f"{result['verdict']} ({args.metric} >= {args.threshold})\n")
        return
    w(f"first pass below {args.threshold} {unit}: {result['first_bad_pass']}\n")
    if "first_bad_rewrite" in result:
        r = result["first_bad_rewrite"]
        w(f"first bad rewrite: #{r['index']} rule {r['rule']} at {r['root']}\n")
    elif "first_bad_node" in result:
        n = result["first_bad_node"]
        w(f"first node where error jumps: {n['op']} {n['node']!r} (module {n['src'] or '?'}), "
          f"SQNR {n['sqnr_db']} dB\n")
    w(f"reproduce: {result['reproduce']}\n")


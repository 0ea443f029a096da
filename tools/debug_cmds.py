"""``edgec drift`` and ``edgec bisect``: where did accuracy go?

``drift`` runs a pipeline on given inputs and measures the error of the outputs against FP32
after every pass, then per node of the final graph (SQNR, cosine, max abs), and names the
first node where the error jumps.

``drift --target htp-vXX`` (or ``--stages``) compares three stages per node instead: the FP32
model, the quantized (QDQ) graph on the CPU reference and the HTP simulator, aligned by value
name and provenance (:func:`compiler.numerics.stage_drift`). It names the first node where the
HTP computes differently from the CPU QDQ reference, and ``--repro DIR`` writes the smallest
window of nodes ending there that still disagrees when compiled alone (``repro.ir``,
``repro.onnx``, ``inputs.npz``) with the command that re-runs it. A MODEL that already carries
encodings is compared as is (that is how a repro is re-run).

``drift --fail-below X`` gates on the result: exit code 1 (and one ``edgec: drift:`` line on
stderr) when the final outputs measure below ``X`` (dB for ``--metric sqnr``, the default;
similarity for ``--metric cosine``). With ``--stages`` the HTP simulator's outputs against
FP32 are measured. ``drift --bisect-limit N`` applies only the first N rewrites, as in
``edgec opt``.

``bisect`` finds the first pass after which the outputs break a threshold, then, inside it,
the first rewrite that breaks it (binary search over ``--bisect-limit``) or, for a pass that
does not work through rewrites (quantization sets encodings), the node where error jumps.
It prints the ``edgec drift ... --fail-below`` command that reproduces the breaking state (it
exits with 1 because the threshold is broken), and exits with 1 itself when the threshold is
broken (0 when no pass breaks it), so scripts can gate on it.

Exit codes of both: 0 within the threshold, 1 threshold broken, 2 bad input (one
``edgec: error:`` line), 3 internal error.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import shlex
import sys
from collections.abc import Iterator, Sequence
from typing import Any

__all__ = ["add_debug_parsers", "run_drift", "run_stage_drift", "run_bisect"]

_METRICS = ("sqnr", "cosine")

#: exit code of ``drift --fail-below`` and ``bisect`` when the threshold is broken
EXIT_THRESHOLD = 1


def _common(p: argparse.ArgumentParser, *, pipeline_required: bool = True) -> None:
    p.add_argument("model", help="MODEL.onnx, MODEL.ir or file.py:factory")
    p.add_argument("-p", "--pipeline", required=pipeline_required,
                   help="pass pipeline string" + ("" if pipeline_required else
                                                  " (default with --target: the target's "
                                                  "pipeline for --precision)"))
    p.add_argument("--calib", required=True, metavar="INPUTS.npz",
                   help="input samples: one array per graph input, leading axis = samples")
    p.add_argument("--frontend", choices=["auto", "fx", "onnx"], default="auto")
    p.add_argument("--json", action="store_true", help="machine-readable output")


def add_debug_parsers(sub: Any) -> None:
    """Register ``drift`` and ``bisect`` on the CLI's subparsers."""
    d = sub.add_parser("drift", help="error against FP32 after every pass and per node; "
                                     "with --target htp-*, FP32 vs CPU QDQ vs HTP per node")
    _common(d, pipeline_required=False)
    d.add_argument("--nodes", type=int, default=200,
                   help="measure at most this many node outputs, evenly spread")
    d.add_argument("--jump-db", type=float, default=6.0,
                   help="an SQNR drop this large at one node counts as a jump")
    d.add_argument("--target", help="compile for this target (htp-v75, ...): its quantization "
                                    "rules and default pipeline; an HTP target compares "
                                    "stages unless -p is given without --stages")
    d.add_argument("--precision", default="w8a16",
                   choices=["w8a8", "w8a16", "w4a16", "fp16", "fp32"],
                   help="precision of the target's default pipeline (default w8a16)")
    d.add_argument("--stages", action="store_true",
                   help="compare FP32, the QDQ graph on the CPU and the HTP simulator per node "
                        "(an already quantized MODEL is taken as is)")
    d.add_argument("--repro", metavar="DIR",
                   help="write the minimal window of nodes that still disagrees on the HTP "
                        "(repro.ir, repro.onnx, inputs.npz) to DIR; implies --stages")
    d.add_argument("--agree-db", type=float, default=20.0,
                   help="HTP vs CPU QDQ below this SQNR (and 10 dB under the node's own "
                        "CPU-vs-FP32 SQNR) counts as a disagreement (default 20)")
    d.add_argument("--samples", type=int, default=2,
                   help="compare on the first N input samples (all of them calibrate)")
    d.add_argument("--worst", type=int, default=5,
                   help="rows shown besides the first jump and first disagreement: the N "
                        "worst HTP-vs-CPU agreements")
    d.add_argument("--all", action="store_true", help="show every node in the stage table")
    d.add_argument("--metric", choices=_METRICS, default="sqnr",
                   help="the metric --fail-below applies to (default sqnr)")
    d.add_argument("--fail-below", type=float, default=None, metavar="X",
                   help="exit with 1 when the final outputs measure below X against FP32 "
                        "(dB for sqnr, similarity for cosine; with --stages: the HTP's outputs)")
    d.add_argument("--bisect-limit", type=int, default=None, metavar="N",
                   help="apply only the first N rewrites of the pipeline (as edgec opt)")
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

    if args.pipeline is not None:
        parse_pipeline(args.pipeline)  # fail on a bad pipeline before loading anything
    graph = load_model(args.model, frontend=args.frontend)
    return graph, load_inputs(args.calib, graph)


def _db(x: float) -> str:
    if math.isinf(x):
        return "inf" if x > 0 else "-inf"
    return f"{x:.2f}"


def _stages_mode(args: argparse.Namespace) -> bool:
    return bool(args.stages or args.repro or (args.target and args.pipeline is None))


def _check_gate(args: argparse.Namespace) -> None:
    from compiler.errors import EdgecError

    if args.bisect_limit is not None and args.bisect_limit < 0:
        raise EdgecError(f"edgec drift: --bisect-limit must be >= 0, got {args.bisect_limit}")
    if args.fail_below is not None and not math.isfinite(args.fail_below):
        raise EdgecError(f"edgec drift: --fail-below must be a finite number, got "
                         f"{args.fail_below}")


def _gate(args: argparse.Namespace, value: float | None, where: str) -> dict[str, Any] | None:
    """The ``--fail-below`` verdict (None without the flag); writes the one-line message."""
    if args.fail_below is None:
        return None
    broken = value is None or value < args.fail_below
    unit = " dB" if args.metric == "sqnr" else ""
    shown = "no value" if value is None else (_db(value) if args.metric == "sqnr"
                                              else f"{value:.6f}")
    if broken:
        sys.stderr.write(f"edgec: drift: {args.metric} {shown}{unit} {where} is below "
                         f"--fail-below {args.fail_below:g}{unit}\n")
    return {"metric": args.metric, "fail_below": args.fail_below, "broken": broken,
            "value": None if value is None or not math.isfinite(value) else round(value, 6)}


def run_drift(args: argparse.Namespace) -> int:
    """``edgec drift``."""
    from compiler.errors import EdgecError
    from compiler.numerics import DriftInstrument, first_jump, node_drift
    from compiler.passes import PassContext, PassManager

    _check_gate(args)
    if _stages_mode(args):
        return run_stage_drift(args)
    if args.pipeline is None:
        raise EdgecError("edgec drift: give -p PIPELINE, or --target TARGET to compare the "
                         "FP32, CPU QDQ and HTP stages")
    graph, feeds = _setup(args)
    fp32 = graph.copy()
    drift = DriftInstrument(feeds)
    kw: dict[str, Any] = {"calibration": feeds, "progress": sys.stderr.isatty(),
                          "bisect_limit": args.bisect_limit}
    if args.target:
        from targets import target_context

        ctx = target_context(args.target, **kw)
    else:
        ctx = PassContext(**kw)
    PassManager(args.pipeline, instruments=[drift]).run(graph, ctx)
    rows = node_drift(fp32, graph, feeds, limit=args.nodes)
    jump = first_jump(rows, drop_db=args.jump_db)
    last_pass, last = drift.rows[-1]
    gate = _gate(args, _value(last, args.metric), f"after {last_pass}")
    code = EXIT_THRESHOLD if gate is not None and gate["broken"] else 0
    if args.json:
        out = {"passes": [{"pass": n, **m.to_dict()} for n, m in drift.rows],
               "nodes": [r.to_dict() for r in rows],
               "first_jump": jump.to_dict() if jump else None,
               "rewrites": ctx.rewrites, "bisect_skipped": ctx.bisect_skipped,
               "gate": gate}
        sys.stdout.write(json.dumps(out, indent=2, sort_keys=True) + "\n")
        return code
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
    if ctx.bisect_skipped:
        w(f"\nbisect: applied {ctx.rewrites} rewrite(s), skipped {ctx.bisect_skipped}\n")
    return code


@contextlib.contextmanager
def _native_stdout_to_stderr() -> Iterator[None]:
    """Point file descriptor 1 at stderr meanwhile: the QNN simulator's native libraries print
    banners straight to fd 1, which would corrupt ``--json`` on stdout."""
    sys.stdout.flush()
    try:
        saved = os.dup(1)
        os.dup2(2, 1)
    except OSError:  # no real fds (embedded use): nothing to protect
        yield
        return
    try:
        yield
    finally:
        with contextlib.suppress(Exception):  # flush C stdio buffers written meanwhile
            import ctypes

            ctypes.CDLL(None).fflush(None)
        os.dup2(saved, 1)
        os.close(saved)


def _stage_graphs(args: argparse.Namespace, tgt: Any) -> tuple[Any, Any, list[dict[str, Any]],
                                                              str | None]:
    """(FP32 graph, quantized graph, feeds, pipeline run or None). A MODEL that already carries
    encodings (a saved repro, ``edgec opt -o`` after quantize) is taken as is, its FP32 twin
    is the same graph without encodings."""
    from compiler.passes import PassManager
    from targets import target_context

    graph, feeds = _setup(args)
    if any(v.encoding is not None for v in graph.values()):
        fp32 = graph.copy()
        for v in fp32.values():
            v.encoding = None
        return fp32, graph, feeds, None
    fp32 = graph.copy()
    pipeline = args.pipeline or tgt.default_pipeline(args.precision)
    ctx = target_context(tgt, calibration=feeds, progress=sys.stderr.isatty(),
                         bisect_limit=args.bisect_limit)
    PassManager(pipeline).run(graph, ctx)
    return fp32, graph, feeds, pipeline


def run_stage_drift(args: argparse.Namespace) -> int:
    """``edgec drift --stages``: FP32 vs CPU QDQ vs HTP simulator per node, the first node
    where the HTP and the CPU disagree, and (``--repro DIR``) its minimal repro."""
    from compiler.errors import EdgecError
    from compiler.numerics import (
        disagreement_threshold,
        first_disagreement,
        minimal_repro,
        stage_drift,
        stage_first_jump,
    )
    from targets import get_target

    tgt = get_target(args.target or "htp-v75")
    if not tgt.name.startswith("htp-"):
        raise EdgecError(f"edgec drift --stages compares against the HTP simulator; target "
                         f"{tgt.name!r} is not an HTP target (use htp-v68 ... htp-v81)")
    if args.samples < 1:
        raise EdgecError(f"edgec drift: --samples must be at least 1, got {args.samples}")
    if args.worst < 0:
        raise EdgecError(f"edgec drift: --worst must be >= 0, got {args.worst}")
    fp32, quant, feeds, pipeline = _stage_graphs(args, tgt)
    sample = feeds[:args.samples]
    with _native_stdout_to_stderr():
        rows = stage_drift(fp32, quant, sample, arch=tgt.arch, threshold_db=args.agree_db)
    dis = first_disagreement(rows, args.agree_db)
    jump = stage_first_jump(rows, drop_db=args.jump_db)
    repro = None
    command = None
    if args.repro and dis is not None:
        with _native_stdout_to_stderr():
            repro = minimal_repro(quant, dis.value, sample, tgt.arch,
                                  threshold_db=disagreement_threshold(dis, args.agree_db),
                                  out_dir=args.repro)
        if repro is not None:
            command = (f"edgec drift {shlex.quote(repro.files['ir'])} --target {tgt.name} "
                       f"--stages --calib {shlex.quote(repro.files['inputs'])}")
    result: dict[str, Any] = {
        "mode": "stages", "target": tgt.name,
        "precision": quant.meta.get("precision", args.precision if pipeline else None),
        "pipeline": pipeline, "samples": len(sample), "threshold_db": args.agree_db,
        "outputs": [v.name for v in quant.outputs],
        "rows": [r.to_dict() for r in rows],
        "first_jump": jump.to_dict() if jump else None,
        "first_disagreement": dis.to_dict() if dis else None,
        "repro": repro.to_dict() if repro else None, "reproduce": command}
    outs = [r for r in rows if r.value in set(result["outputs"])]
    measured = [m for r in outs for m in [r.alone_vs_fp32 if r.alone is not None
                                          else r.htp_vs_fp32] if m is not None]
    worst = min((_value(m, args.metric) for m in measured), default=None)
    result["gate"] = _gate(args, worst, "on the HTP simulator's outputs against FP32")
    code = EXIT_THRESHOLD if result["gate"] is not None and result["gate"]["broken"] else 0
    if args.json:
        sys.stdout.write(json.dumps(result, indent=2, sort_keys=True) + "\n")
        return code
    _print_stages(args, rows, result, jump, dis, repro)
    return code


def _print_stages(args: argparse.Namespace, rows: Sequence[Any], result: dict[str, Any],
                  jump: Any, dis: Any, repro: Any) -> None:
    w = sys.stdout.write
    outputs = set(result["outputs"])
    keep = set(range(len(rows))) if args.all else set()
    if not args.all:
        index = {id(r): i for i, r in enumerate(rows)}
        for r in (jump, dis):
            if r is not None:
                keep.add(index[id(r)])
        ranked = sorted((i for i, r in enumerate(rows) if r.agreement_db is not None),
                        key=lambda i: rows[i].agreement_db)
        keep.update(ranked[:args.worst])
        keep.update(i for i, r in enumerate(rows) if r.value in outputs)

    def db(m: Any) -> str:
        return "-" if m is None else _db(m.sqnr_db)

    w(f"{result['target']} {result['precision'] or ''}: {len(rows)} node outputs, "
      f"{result['samples']} sample(s); SQNR in dB\n")
    w(f"{'node':<28} {'op':<18} {'CPU/FP32':>9} {'HTP/FP32':>9}  {'HTP/CPU':>9} "
      f"{'max|H-C|':>10}  {'where':<5} module\n")
    hidden = 0
    alone = False
    for i, r in enumerate(rows):
        if i not in keep:
            hidden += 1
            continue
        if hidden:
            w(f"  ... {hidden} row(s) hidden (--all shows them)\n")
            hidden = 0
        m = r.alone if r.alone is not None else r.htp_vs_cpu
        star = "*" if r.alone is not None else " "
        agree = db(m) + star
        to_fp32 = db(r.alone_vs_fp32 if r.alone is not None else r.htp_vs_fp32) + star
        alone = alone or r.alone is not None
        marks = []
        if dis is not None and r is dis:
            marks.append("<-- HTP and CPU disagree first here")
        if jump is not None and r is jump:
            marks.append("<-- quantization error jumps here")
        if r.value in outputs:
            marks.append("(output)")
        w(f"{r.node[:28]:<28} {r.op[:18]:<18} {db(r.cpu_vs_fp32):>9} {to_fp32:>10}"
          f"{agree:>10}{'-' if m is None else f'{m.max_abs:.4g}':>10}  {r.placement[:5]:<5} "
          f"{r.src}{'  ' + ' '.join(marks) if marks else ''}\n")
    if hidden:
        w(f"  ... {hidden} row(s) hidden (--all shows them)\n")
    if alone:
        w("* re-measured with the node and its producers compiled alone (exposing every value "
          "as an output can change what the HTP computes)\n")
    w("\n")
    if jump is not None:
        w(f"first jump of quantization error: {jump.op} {jump.node!r} (module "
          f"{jump.src or '?'}): {db(jump.cpu_vs_fp32)} dB on the CPU after "
          f"{jump.input_sqnr_db} dB in\n")
    if dis is None:
        worst = min((r for r in rows if r.agreement_db is not None),
                    key=lambda r: r.agreement_db, default=None)
        tail = (f" (lowest: {_db(worst.agreement_db)} dB at {worst.op} {worst.node!r})"
                if worst is not None else "")
        w(f"the HTP agrees with the CPU QDQ reference on every node{tail}\n")
        if args.repro:
            w("nothing to reproduce: no disagreement\n")
        return
    w(f"first HTP/CPU disagreement: {dis.op} {dis.node!r} (module {dis.src or '?'}): HTP vs "
      f"CPU QDQ {_db(dis.agreement_db)} dB, CPU QDQ vs FP32 {db(dis.cpu_vs_fp32)} dB\n")
    if args.repro and repro is None:
        w("no repro: the node's producers compiled alone agree with the CPU\n")
    elif repro is not None:
        w(f"minimal repro: {len(repro.nodes)} node(s) "
          f"{', '.join(f'{o} {n!r}' for o, n in zip(repro.ops, repro.nodes))}; HTP vs CPU "
          f"{_db(repro.agreement.sqnr_db)} dB alone\n")
        for k, path in sorted(repro.files.items()):
            w(f"  {k:<7} {path}\n")
        w(f"re-run: {result['reproduce']}\n")
    elif not args.repro:
        w("(--repro DIR writes the smallest window of nodes that still disagrees)\n")


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
            # trace indices count from 1, as --bisect-limit does: rewrite number hi broke it
            rec = next((t for t in c.trace if t.index == hi), None)
            result["first_bad_rewrite"] = {
                "index": hi, "rule": rec.rule if rec else "?", "root": rec.root if rec else "?",
                "created": list(rec.created) if rec else [],
                "removed": list(rec.removed) if rec else []}
            result["reproduce"] = _repro_command(args, prefix, hi)
            result["show_ir"] = (f"edgec opt {shlex.quote(str(args.model))} -p "
                                 f"{shlex.quote(prefix)} --bisect-limit {hi} "
                                 "--print-ir-after-change")
    if "first_bad_rewrite" not in result:
        # 3. no rewrite to blame: the node where error jumps across the pass
        rows = node_drift(before, state, feeds)
        jump = first_jump(rows)
        if jump is not None:
            result["first_bad_node"] = jump.to_dict()
        result["reproduce"] = _repro_command(args, prefix, None)
    _report_bisect(args, result)
    return EXIT_THRESHOLD


def _repro_command(args: argparse.Namespace, prefix: str, limit: int | None) -> str:
    """The ``edgec drift`` command that rebuilds the breaking state and, through
    ``--fail-below``, exits with 1 because it breaks the threshold."""
    cmd = (f"edgec drift {shlex.quote(str(args.model))} -p {shlex.quote(prefix)} "
           f"--calib {shlex.quote(str(args.calib))}")
    if args.frontend != "auto":
        cmd += f" --frontend {args.frontend}"
    if limit is not None:
        cmd += f" --bisect-limit {limit}"
    return cmd + f" --metric {args.metric} --fail-below {args.threshold!r}"


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
        w(f"show it: {result['show_ir']}\n")
    elif "first_bad_node" in result:
        n = result["first_bad_node"]
        w(f"first node where error jumps: {n['op']} {n['node']!r} (module {n['src'] or '?'}), "
          f"SQNR {n['sqnr_db']} dB\n")
    w(f"reproduce: {result['reproduce']}\n")


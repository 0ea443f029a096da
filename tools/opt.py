"""``edgec opt``: load a model, run a pass pipeline with debugging instruments, write the result.

The debugging flags follow LLVM's ``opt``: ``--print-ir-before/after PASS``,
``--print-ir-after-all``, ``--print-ir-after-change`` (a unified diff per changing pass),
``--print-ir-after-failure``, ``--dump-dir DIR`` (numbered IR files), ``--time-passes``,
``--pass-statistics``, ``--bisect-limit N`` (apply only the first N rewrites) and
``--verify-each`` (the default; ``--no-verify`` turns it off) and a crash reproducer: when a
pass fails, the failing pass's input IR and the rest of the pipeline go to ``reproducer.ir``
(``--reproducer FILE`` elsewhere, ``--no-reproducer`` not at all) and the one-line replay
command is printed.
IR goes to stderr, reports to stderr, the result to ``-o`` (``.ir`` or ``.onnx``) or, without
``-o``, as IR text to stdout.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from compiler.errors import EdgecError, PassError
from compiler.passes import (
    CrashReproducerInstrument,
    DumpInstrument,
    Instrument,
    PassContext,
    PassManager,
    PrintIRInstrument,
    StatisticsInstrument,
    TimingInstrument,
    parse_pipeline,
)

__all__ = ["run_opt"]


class _Reproducer(CrashReproducerInstrument):
    """The crash reproducer, but a reproducer that cannot be written (a read-only current
    directory) must not hide the pass failure: it becomes the hint instead."""

    def on_failure(self, p: Any, graph: Any, ctx: PassContext, exc: PassError) -> None:
        """Write the reproducer, or say why it could not be written."""
        try:
            super().on_failure(p, graph, ctx, exc)
        except OSError as e:
            exc.hint = (f"no reproducer: cannot write {self.path}: {e.strerror or e} "  # type: ignore[attr-defined]
                        "(give --reproducer FILE)")


def _write_result(graph: Any, out: Path, inline_limit: int) -> list[Path]:
    suffix = out.suffix.lower()
    if suffix == ".onnx":
        from compiler.frontends import save_onnx

        save_onnx(graph, out)
        return [out]
    if suffix == ".ir":
        from compiler.ir import save_ir

        return save_ir(graph, out, inline_limit=inline_limit)
    raise EdgecError(f"{out}: unknown output format {suffix!r} (use .ir or .onnx)")


def run_opt(args: argparse.Namespace) -> int:
    """Run ``edgec opt`` for parsed ``args`` (see :func:`tools.cli.build_parser`)."""
    from tools.loading import load_model

    passes = parse_pipeline(args.pipeline)  # a bad pipeline fails before the model loads
    if args.bisect_limit is not None and args.bisect_limit < 0:
        raise EdgecError(f"edgec opt: --bisect-limit must be >= 0, got {args.bisect_limit}")
    out = Path(args.output) if args.output else None
    if out is not None and out.suffix.lower() not in (".ir", ".onnx"):
        raise EdgecError(f"{out}: unknown output format {out.suffix!r} (use .ir or .onnx)")
    graph = load_model(args.model, frontend=args.frontend)

    instruments: list[Instrument] = []
    timing = TimingInstrument() if args.time_passes else None
    stats = StatisticsInstrument() if args.pass_statistics or args.json else None
    printing = (args.print_ir_before or args.print_ir_after or args.print_ir_after_all
                or args.print_ir_after_change or args.print_ir_after_failure)
    if printing:
        instruments.append(PrintIRInstrument(
            sys.stderr, before=args.print_ir_before, after=args.print_ir_after,
            after_all=args.print_ir_after_all, after_change=args.print_ir_after_change,
            after_failure=args.print_ir_after_failure, inline_limit=args.inline_limit))
    if args.dump_dir:
        instruments.append(DumpInstrument(args.dump_dir, inline_limit=args.inline_limit))
    if args.reproducer:
        instruments.append(_Reproducer(args.reproducer))
    instruments += [i for i in (timing, stats) if i is not None]

    feeds = None
    if args.calib:
        from tools.loading import load_inputs

        feeds = load_inputs(args.calib, graph)
    kw: dict[str, Any] = {"bisect_limit": args.bisect_limit, "progress": sys.stderr.isatty(),
                          "calibration": feeds}
    if args.target:
        from targets import target_context

        ctx = target_context(args.target, **kw)
    else:
        ctx = PassContext(**kw)
    pm = PassManager(passes, verify_each=args.verify_each, instruments=instruments)
    try:
        pm.run(graph, ctx)
    except PassError as e:
        if not args.reproducer and getattr(e, "hint", None) is None:
            e.hint = "rerun without --no-reproducer to save a replayable reproducer"  # type: ignore[attr-defined]
        raise

    for line in ctx.log:
        sys.stderr.write(f"note: {line}\n")
    if timing is not None:
        sys.stderr.write(timing.report())
    if stats is not None and args.pass_statistics:
        sys.stderr.write(stats.report())

    written: list[Path] = []
    if out is not None:
        written = _write_result(graph, out, args.inline_limit)
    if args.json:
        summary = {
            "model": str(args.model), "pipeline": pm.pipeline, "nodes": len(graph.nodes),
            "rewrites": ctx.rewrites, "bisect_skipped": ctx.bisect_skipped,
            "statistics": stats.stats if stats is not None else {},
            "times_s": timing.totals if timing is not None else {},
            "notes": ctx.log, "written": [str(p) for p in written],
        }
        sys.stdout.write(json.dumps(summary, indent=2, sort_keys=True) + "\n")
    elif out is None:
        from compiler.ir import print_graph

        sys.stdout.write(print_graph(graph, inline_limit=args.inline_limit))
    return 0

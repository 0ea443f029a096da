"""The ``edgec`` command line.

Exit codes, the same for every command:

- 0: done (for ``drift --fail-below`` and ``bisect``: the threshold holds);
- 1: a threshold is broken (``drift --fail-below X``, ``bisect --threshold X``), with one
  ``edgec: drift:`` line on stderr or the bisect verdict on stdout;
- 2: bad input (a model, pipeline, file or option): one ``edgec: error:`` line on stderr,
  plus one ``edgec:`` hint line where there is one (e.g. the crash reproducer's replay
  command); ``--debug`` shows the traceback;
- 3: an internal error (an edgec bug), one line; ``--debug`` shows the traceback;
- 130: interrupted.

``--json`` on every command prints one JSON document on stdout (errors stay on stderr).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from importlib import metadata
from typing import Any

from compiler.errors import EdgecError

__all__ = ["main", "build_parser"]

EXIT_USER_ERROR = 2
EXIT_INTERNAL = 3


def _version() -> str:
    try:
        return metadata.version("edgec")
    except metadata.PackageNotFoundError:  # running from a source tree
        return "0+unknown"


def _emit_json(obj: Any) -> None:
    sys.stdout.write(json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


# -- opt ------------------------------------------------------------------------------------
def _cmd_list_passes(args: argparse.Namespace) -> int:
    from passes import list_passes

    infos = list_passes()
    if args.json:
        _emit_json(infos)
        return 0
    for info in infos:
        sys.stdout.write(f"{info['name']:<36} {info['summary']}\n")
        for opt in info.get("options", []):
            default = opt.get("default")
            sys.stdout.write(f"    {opt['name']}: {opt['type']} = {default!r}\n")
    return 0


def _cmd_opt(args: argparse.Namespace) -> int:
    if args.list_passes:
        return _cmd_list_passes(args)
    if not args.model:
        raise EdgecError("edgec opt: a MODEL is required (or --list-passes)")
    from tools.opt import run_opt

    return run_opt(args)


def _cmd_demo(args: argparse.Namespace) -> int:
    from tools.demo import run_demo

    return run_demo(args)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``edgec`` (exposed for documentation and tests)."""
    p = argparse.ArgumentParser(
        prog="edgec",
        description="Compile PyTorch and ONNX models for Qualcomm Hexagon NPUs and CPUs.",
    )
    p.add_argument("--version", action="version", version=f"edgec {_version()}")
    p.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    o = sub.add_parser("opt", help="run a pass pipeline on a model and write the result")
    o.add_argument("model", nargs="?", help="MODEL.onnx, MODEL.ir or file.py:factory")
    o.add_argument("-p", "--pipeline", default="canonicalize", help="pass pipeline string")
    o.add_argument("-o", "--output", help="write the result (.ir or .onnx)")
    o.add_argument("--list-passes", action="store_true", help="list passes and their options")
    o.add_argument("--frontend", choices=["auto", "fx", "onnx"], default="auto")
    o.add_argument("--print-ir-before", action="append", default=[], metavar="PASS")
    o.add_argument("--print-ir-after", action="append", default=[], metavar="PASS")
    o.add_argument("--print-ir-after-all", action="store_true")
    o.add_argument("--print-ir-after-change", action="store_true",
                   help="print a unified diff of the IR after each pass that changed it")
    o.add_argument("--print-ir-after-failure", action="store_true")
    o.add_argument("--dump-dir", metavar="DIR", help="write numbered IR files per pass")
    o.add_argument("--time-passes", action="store_true")
    o.add_argument("--pass-statistics", action="store_true")
    o.add_argument("--verify-each", dest="verify_each", action="store_true", default=True,
                   help="verify the IR after each pass (the default)")
    o.add_argument("--no-verify", dest="verify_each", action="store_false",
                   help="do not verify the IR after each pass")
    o.add_argument("--bisect-limit", type=int, default=None, metavar="N",
                   help="apply only the first N rewrites (opt-bisect)")
    o.add_argument("--reproducer", metavar="FILE", default="reproducer.ir",
                   help="on a pass failure, write the failing pass's input IR and the "
                        "pipeline to FILE and print the replay command (default "
                        "reproducer.ir in the current directory)")
    o.add_argument("--no-reproducer", dest="reproducer", action="store_const", const=None,
                   help="write no crash reproducer")
    o.add_argument("--calib", metavar="INPUTS.npz",
                   help="input samples for passes that measure (calibrate, seq-mse, "
                        "select-compression, data-aware lowrank/prune): one array per graph "
                        "input, leading axis = samples")
    o.add_argument("--target", help="the target whose quantization rules quantize uses "
                                    "(htp-v75, cpu, ...; default: generic rules)")
    o.add_argument("--inline-limit", type=int, default=1,
                   help="print constants with at most this many elements in full")
    o.add_argument("--json", action="store_true", help="machine-readable output")
    o.set_defaults(func=_cmd_opt)

    from tools.compile_cmd import add_compile_parser
    from tools.debug_cmds import add_debug_parsers
    from tools.explain_cmd import add_explain_parser
    from tools.inspect_cmd import add_inspect_parser
    from tools.viz.cli import add_parser as add_viz_parser

    add_compile_parser(sub)
    add_debug_parsers(sub)
    add_explain_parser(sub)
    add_inspect_parser(sub)
    add_viz_parser(sub)

    d = sub.add_parser("demo", help="compile the bundled example and print the report")
    d.add_argument("-o", "--output", default="demo_out", help="output folder")
    d.add_argument("--target", default="htp-v75")
    d.add_argument("--precision", default="w8a16",
                   choices=["w8a8", "w8a16", "w4a16", "fp16", "fp32"])
    d.add_argument("--json", action="store_true")
    d.set_defaults(func=_cmd_demo)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``edgec`` console script; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help(sys.stderr)
        return EXIT_USER_ERROR
    func: Callable[[argparse.Namespace], int] = args.func
    from tools.stdio import native_stdout_to_stderr

    try:
        with native_stdout_to_stderr():
            return int(func(args) or 0)
    except EdgecError as e:
        if args.debug:
            raise
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        sys.stderr.write(f"edgec: error: {msg}\n")
        extra = getattr(e, "hint", None)
        if extra:
            sys.stderr.write(f"edgec: {extra}\n")
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        sys.stderr.write("edgec: interrupted\n")
        return 130
    except Exception as e:  # an edgec bug: one line, the traceback behind --debug
        if args.debug:
            raise
        sys.stderr.write(f"edgec: internal error: {type(e).__name__}: {e} "
                         "(run with --debug for the traceback)\n")
        return EXIT_INTERNAL


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())

"""``edgec compile MODEL --target htp-v75 --precision w8a16 --calib inputs.npz -o out/``.

``MODEL`` is an ``.onnx`` file or ``file.py:factory`` (``factory()`` returns ``(module,
example_inputs)``). ``--calib`` is an ``.npz`` with one array per graph input, keyed by the
input's name, with a leading axis of samples (see ``tools.loading.load_inputs``); without it a
``file.py:factory`` model calibrates on its example input. Prints a short summary table; the
artifacts and ``report.json`` go to ``-o``.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from compiler.errors import EdgecError

__all__ = ["add_compile_parser", "run_compile"]


def add_compile_parser(sub: Any) -> None:
    """Register ``compile`` on the CLI's subparsers."""
    c = sub.add_parser("compile", help="compile a model for a target and print a summary")
    c.add_argument("model", help="MODEL.onnx or file.py:factory")
    c.add_argument("--target", default="htp-v75",
                   help="htp-v68 ... htp-v81, a Snapdragon name, or cpu (default htp-v75); a "
                        "comma-separated list (htp-v75,cpu) places every node by predicted cost")
    c.add_argument("--precision", default="w8a16",
                   choices=["w8a8", "w8a16", "w4a16", "fp16", "fp32"])
    c.add_argument("--calib", metavar="INPUTS.npz", help="calibration inputs")
    c.add_argument("-o", "--output", required=True, help="output folder")
    c.add_argument("--override", action="append", default=[], metavar="PATTERN=SPEC",
                   help="mixed precision, e.g. 'layers.*.mlp.*=w4a16' or 'op:Softmax=a16'")
    c.add_argument("--pin", action="append", default=[], metavar="PATTERN=TARGET",
                   help="pin nodes to a target, e.g. 'layers.0.*=cpu' or 'op:Softmax=htp'")
    c.add_argument("--compress", metavar="SPEC",
                   help="compression before quantization, e.g. 'lowrank{energy=0.95}' or "
                        "'auto{min_sqnr_db=30}'")
    c.add_argument("--pipeline", help="replace the target's default pass pipeline")
    c.add_argument("--opt-level", type=int, default=3, choices=[0, 1, 2, 3],
                   help="HTP graph finalization optimization mode (default 3)")
    c.add_argument("--vtcm-mb", type=int, metavar="MB",
                   help="VTCM budget of the HTP context (default: the SoC's)")
    c.add_argument("--soc", metavar="NAME",
                   help="SoC the context is built for: a chip name (SM8650) or a QNN SoC id; "
                        "it must have the --target arch")
    c.add_argument("--no-cpu", dest="allow_cpu", action="store_false",
                   help="fail instead of placing any node on the CPU")
    c.add_argument("--json", action="store_true", help="print the whole report as JSON")
    c.set_defaults(func=run_compile)


def _overrides(items: list[str], flag: str = "--override", what: str = "SPEC"
               ) -> dict[str, str]:
    out = {}
    for item in items:
        pattern, sep, spec = item.rpartition("=")
        if not sep or not pattern or not spec:
            raise EdgecError(f"{flag} {item!r}: expected PATTERN={what}")
        out[pattern] = spec
    return out


def run_compile(args: argparse.Namespace) -> int:
    """``edgec compile``."""
    import compiler
    from tools.loading import load_factory, load_inputs

    overrides = _overrides(args.override)
    pins = _overrides(args.pin, "--pin", "TARGET")
    targets = [t.strip() for t in args.target.split(",") if t.strip()]
    target: str | list[str] = targets[0] if len(targets) == 1 else targets
    example = None
    if ".py:" in args.model:
        model, example = load_factory(args.model)
    elif args.model.endswith(".onnx"):
        model = args.model
    else:
        raise EdgecError(f"{args.model}: MODEL must be an .onnx file or file.py:factory")
    calib = None
    if args.calib:
        from compiler.frontends import load_onnx, load_torch

        graph = (load_torch(model, example) if example is not None else load_onnx(model))
        calib = load_inputs(args.calib, graph)
    elif example is None and args.precision in ("fp16", "fp32"):
        # nothing to calibrate: one generated sample measures the float build's error
        from compiler.frontends import load_onnx
        from tools.loading import synthetic_inputs

        calib = synthetic_inputs(load_onnx(model))
        sys.stderr.write("edgec: no --calib: the SQNR is measured on one generated input\n")
    elif example is None:
        raise EdgecError("an .onnx model needs --calib INPUTS.npz to calibrate with "
                         f"(--precision {args.precision} quantizes)")
    cm = compiler.compile(model, example, target=target, precision=args.precision,
                          calibration_data=calib if calib is not None else [example],
                          overrides=overrides, pipeline=args.pipeline, output_dir=args.output,
                          allow_cpu=args.allow_cpu, placement=pins or None,
                          compress=args.compress, optimization_level=args.opt_level,
                          vtcm_mb=args.vtcm_mb, soc_model=args.soc)
    if args.json:
        sys.stdout.write(json.dumps(cm.report, indent=2, sort_keys=True, default=str) + "\n")
        return 0
    s = cm.report["summary"]
    rows = [("target", s["target"]), ("precision", s["precision"]),
            ("nodes", f"{s['nodes']} ({s['npu_nodes']} NPU, {s['cpu_nodes']} CPU)"),
            ("HTP contexts", s["partitions"]),
            ("predicted", f"{s['predicted_us']:.0f} us" if s.get("predicted_us") else "-"),
            ("MACs", f"{s['macs']:,}"),
            ("weight bytes", f"{s['weight_bytes']:,}"),
            ("SQNR vs FP32", f"{s['sqnr_db']} dB (calibration inputs)"),
            ("time", ", ".join(f"{k[:-2]} {v:.2f}s" for k, v in s["times_s"].items())),
            ("artifacts", args.output)]
    done = [r for r in cm.report.get("compression", [])
            if r.get("action") in ("factorized", "pruned", "sparsified", "selected")]
    if cm.report.get("compression"):
        kinds = sorted({f"{r['pass']}{'/' + r['method'] if r.get('method') else ''}"
                        for r in done})
        rows.append(("compression", f"{len(done)} layers changed ({', '.join(kinds) or '-'});"
                                    " per layer: --json, report['compression']"))
    for node in cm.report.get("cpu_nodes", [])[:10]:
        rows.append(("on CPU", f"{node['node']} ({node['op']}): {node['reason']}"))
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        sys.stdout.write(f"{k:<{width}}  {v}\n")
    return 0

"""``edgec viz MODEL|IR|OUT_DIR -o graph.html [--before MODEL|IR] [--pipeline P] [--json]``.

``MODEL`` is anything ``tools.loading.load_model`` reads (``.onnx``, ``.ir``,
``file.py:factory``) or an output folder of ``edgec compile``: then its final IR
(``model.ir``) is shown, with the placement reasons of ``report.json`` when it is there.
``--before`` shows a second model side by side as the "before" state; ``--pipeline`` runs a
pass pipeline on the model and shows the model before and after it.

``--overlay cost`` colours nodes by the predicted latency of ``--target`` (default
``htp-v75``; microseconds, from :func:`targets.cost.graph_cost`; a node's precision comes from
its encodings). ``--overlay drift --calib INPUTS.npz`` colours them by their error against
FP32 on those inputs, in dB of noise (``-SQNR``: hotter is worse; exact nodes get no value).
The FP32 reference is the model before ``--pipeline``, the ``--before`` model, or, for a
model that carries encodings (an ``edgec compile`` folder, ``edgec opt -o`` after
``quantize``), the same model with its encodings removed.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from compiler.errors import EdgecError, ModelLoadError
from compiler.ir import Graph

__all__ = ["add_parser", "run", "load_graph", "cost_overlay", "drift_overlay"]


def add_parser(sub: Any) -> None:
    """Register ``viz`` on the CLI's subparsers."""
    p = sub.add_parser("viz", help="write a self-contained HTML view of a graph")
    p.add_argument("model", help="MODEL.onnx, MODEL.ir, file.py:factory or an 'edgec compile' "
                                 "output folder")
    p.add_argument("-o", "--output", required=True, help="the HTML file to write")
    p.add_argument("--before", metavar="MODEL", help="show this model side by side as 'before'")
    p.add_argument("--pipeline", metavar="P",
                   help="run this pass pipeline on the model and show before/after")
    p.add_argument("--overlay", action="append", choices=["cost", "drift"], default=[],
                   help="add a heat-colour mode: cost (predicted latency on --target) or "
                        "drift (error against FP32 on --calib); may be given twice")
    p.add_argument("--target", default="htp-v75",
                   help="the target whose cost model --overlay cost uses (default htp-v75)")
    p.add_argument("--calib", metavar="INPUTS.npz",
                   help="inputs for --overlay drift and for calibrating --pipeline (one array "
                        "per graph input)")
    p.add_argument("--json", action="store_true", help="print a machine-readable summary")
    p.set_defaults(func=run)


def _apply_report(graph: Graph, report_path: Path) -> None:
    """Copy the placement reasons of an ``edgec compile`` report onto the graph's nodes."""
    try:
        report = json.loads(report_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ModelLoadError(f"{report_path}: cannot read the compile report: {e}") from None
    if not isinstance(report, dict):
        raise ModelLoadError(f"{report_path}: not a compile report (expected a JSON object)")
    reasons: dict[str, str] = {}
    for section in ("cpu_nodes", "finalize_moves"):
        entries = report.get(section)
        for entry in entries if isinstance(entries, list) else []:
            if isinstance(entry, dict) and "node" in entry and "reason" in entry:
                reasons[str(entry["node"])] = str(entry["reason"])
    for n in graph.nodes:
        for key in (n.name, *(o.name for o in n.outputs)):
            if key and key in reasons:
                n.meta["placement_reason"] = reasons[key]
                if n.placement is None:
                    n.placement = "cpu"
                break


def load_graph(spec: str) -> Graph:
    """A model file, ``file.py:factory``, or an ``edgec compile`` output folder as a graph."""
    from tools.loading import load_model

    path = Path(spec)
    if not path.is_dir():
        return load_model(spec)
    ir = path / "model.ir"
    if not ir.is_file():
        raise ModelLoadError(f"{path}: no model.ir (give a model file or an 'edgec compile' "
                             "output folder)")
    from compiler.ir import load_ir

    graph = load_ir(ir)
    if (path / "report.json").is_file():
        _apply_report(graph, path / "report.json")
    return graph


def cost_overlay(graph: Graph, target: str) -> dict[str, float]:
    """Predicted latency per node on ``target``, in microseconds, keyed by node name."""
    from targets.cost import graph_cost, node_names

    names = node_names(graph)
    cost = graph_cost(graph, target)
    by_name = {c.name: c.seconds * 1e6 for c in cost.nodes}
    return {names[id(n)]: by_name[names[id(n)]] for n in graph.nodes}


def _float_twin(graph: Graph) -> Graph:
    fp32 = graph.copy()
    for v in fp32.values():
        v.encoding = None
    return fp32


def drift_overlay(reference: Graph, graph: Graph, calib: str) -> dict[str, float]:
    """Error of each node output of ``graph`` against the same-named value of ``reference``
    on the inputs in ``calib``, as ``-SQNR`` in dB (exactly equal values are left out)."""
    import math

    from compiler.numerics import node_drift
    from tools.loading import load_inputs

    feeds = load_inputs(calib, reference)
    rows = node_drift(reference, graph, feeds)
    return {r.value: -r.metrics.sqnr_db for r in rows if math.isfinite(r.metrics.sqnr_db)}


def run(args: argparse.Namespace) -> int:
    """``edgec viz``."""
    from tools.viz.render import render_page

    if args.before and args.pipeline:
        raise EdgecError("edgec viz: give --before or --pipeline, not both")
    if "drift" in args.overlay and not args.calib:
        raise EdgecError("edgec viz: --overlay drift needs --calib INPUTS.npz")
    if "cost" in args.overlay:
        from targets import get_target

        get_target(args.target)  # an unknown target fails before the model loads
    if args.pipeline:
        from compiler.passes import parse_pipeline

        parse_pipeline(args.pipeline)  # a bad pipeline fails before the model loads
    graph = load_graph(args.model)
    before = load_graph(args.before) if args.before else None
    title = str(args.model)
    if args.pipeline:
        from compiler.passes import PassContext, PassManager
        from tools.loading import load_inputs

        before = graph.copy()
        feeds = load_inputs(args.calib, graph) if args.calib else None
        PassManager(args.pipeline).run(graph, PassContext(calibration=feeds))
        title += f" ({args.pipeline})"
    elif before is not None:
        title = f"{args.before} -> {args.model}"
    overlay: dict[str, dict[str, float]] = {}
    before_overlay: dict[str, dict[str, float]] = {}  # drift describes the "after" graph only
    units: dict[str, str] = {}
    if "cost" in args.overlay:
        overlay["cost"] = cost_overlay(graph, args.target)
        if before is not None:
            before_overlay["cost"] = cost_overlay(before, args.target)
        units["cost"] = f"us on {args.target}"
    if "drift" in args.overlay:
        if before is not None:
            reference = before
        elif any(v.encoding is not None for v in graph.values()):
            reference = _float_twin(graph)
        else:
            raise EdgecError("edgec viz: --overlay drift compares against FP32: give "
                             "--pipeline P (the model before it is the reference), --before "
                             "MODEL, or a model that carries quantization encodings")
        overlay["drift"] = drift_overlay(reference, graph, args.calib)
        units["drift"] = "dB error (-SQNR vs FP32)"
    page = render_page(graph, before=before, title=title, overlay=overlay, units=units,
                       before_overlay=before_overlay)
    from compiler.fileio import atomic_write_text

    try:
        atomic_write_text(args.output, page.html)
    except OSError as e:
        raise EdgecError(f"{args.output}: cannot write the page: {e.strerror or e}") from None
    if args.json:
        summary = {"output": str(args.output), "bytes": len(page.html.encode("utf-8")),
                   "nodes": page.nodes, "groups": page.groups, "views": page.views,
                   "diff": page.diff, "overlays": sorted(overlay),
                   "overlay_values": {k: len(v) for k, v in sorted(overlay.items())}}
        sys.stdout.write(json.dumps(summary, indent=2, sort_keys=True) + "\n")
    else:
        sys.stderr.write(f"edgec viz: wrote {args.output} ({page.nodes} nodes)\n")
    return 0

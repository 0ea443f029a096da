"""``edgec viz MODEL|IR|OUT_DIR -o graph.html [--before MODEL|IR] [--pipeline P] [--json]``.

``MODEL`` is anything ``tools.loading.load_model`` reads (``.onnx``, ``.ir``,
``file.py:factory``) or an output folder of ``edgec compile``: then its final IR
(``model.ir``) is shown, with the placement reasons of ``report.json`` when it is there.
``--before`` shows a second model side by side as the "before" state; ``--pipeline`` runs a
pass pipeline on the model and shows the model before and after it.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from compiler.errors import EdgecError, ModelLoadError
from compiler.ir import Graph

__all__ = ["add_parser", "run", "load_graph"]


def add_parser(sub: Any) -> None:
    """Register ``viz`` on the CLI's subparsers."""
    p = sub.add_parser("viz", help="write a self-contained HTML view of a graph")
    p.add_argument("model", help="MODEL.onnx, MODEL.ir, file.py:factory or an 'edgec compile' "
                                 "output folder")
    p.add_argument("-o", "--output", required=True, help="the HTML file to write")
    p.add_argument("--before", metavar="MODEL", help="show this model side by side as 'before'")
    p.add_argument("--pipeline", metavar="P",
                   help="run this pass pipeline on the model and show before/after")
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


def run(args: argparse.Namespace) -> int:
    """``edgec viz``."""
    from tools.viz.render import render_page

    if args.before and args.pipeline:
        raise EdgecError("edgec viz: give --before or --pipeline, not both")
    if args.pipeline:
        from compiler.passes import parse_pipeline

        parse_pipeline(args.pipeline)  # a bad pipeline fails before the model loads
    graph = load_graph(args.model)
    before = load_graph(args.before) if args.before else None
    title = str(args.model)
    if args.pipeline:
        from compiler.passes import PassManager

        before = graph.copy()
        PassManager(args.pipeline).run(graph)
        title += f" ({args.pipeline})"
    elif before is not None:
        title = f"{args.before} -> {args.model}"
    page = render_page(graph, before=before, title=title)
    from compiler.fileio import atomic_write_text

    try:
        atomic_write_text(args.output, page.html)
    except OSError as e:
        raise EdgecError(f"{args.output}: cannot write the page: {e.strerror or e}") from None
    if args.json:
        summary = {"output": str(args.output), "bytes": len(page.html.encode("utf-8")),
                   "nodes": page.nodes, "groups": page.groups, "views": page.views,
                   "diff": page.diff}
        sys.stdout.write(json.dumps(summary, indent=2, sort_keys=True) + "\n")
    else:
        sys.stderr.write(f"edgec viz: wrote {args.output} ({page.nodes} nodes)\n")
    return 0

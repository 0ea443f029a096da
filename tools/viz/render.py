"""Render IR graphs as one self-contained HTML page.

The page is a single file: inline CSS and JavaScript (``viz.css``, ``viz.js`` beside this
module), the graph data as JSON in a ``<script type="application/json">`` block, and a
Content-Security-Policy that allows nothing but those two inline blocks (by hash): no
network fetch, no inline event handler, no image. Every string from the model reaches the
page as JSON text, with ``<``, ``>``, ``&`` and the JavaScript line separators escaped as
``\\uXXXX`` (so ``</script>`` cannot end the block), and the script writes it with
``textContent`` only.
"""

from __future__ import annotations

import base64
import hashlib
import html
import json
import math
import os
from dataclasses import dataclass
from importlib import resources
from typing import Any

from compiler.errors import EdgecError
from compiler.fileio import atomic_write_text
from compiler.ir import Graph
from tools.viz.layout import layout_views
from tools.viz.model import GraphModel, build_model, diff_graphs

__all__ = ["Page", "render_page", "render_html", "write_html", "embed_json"]

_OVERLAYS = ("cost", "drift")


def embed_json(data: Any) -> str:
    """``data`` as JSON that is safe inside an HTML ``<script>`` element."""
    text = json.dumps(data, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    for ch, esc in (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026"),
                    ("\u2028", "\\u2028"), ("\u2029", "\\u2029")):
        text = text.replace(ch, esc)
    return text


def _asset(name: str) -> str:
    return resources.files("tools.viz").joinpath(name).read_text(encoding="utf-8")


def _sha256(text: str) -> str:
    return base64.b64encode(hashlib.sha256(text.encode("utf-8")).digest()).decode("ascii")


def _check_overlay(overlay: dict[str, dict[str, float]] | None) -> dict[str, dict[str, float]]:
    if not overlay:
        return {}
    unknown = sorted(set(overlay) - set(_OVERLAYS))
    if unknown:
        raise EdgecError(f"unknown overlay {unknown[0]!r} (known: {', '.join(_OVERLAYS)})")
    out: dict[str, dict[str, float]] = {}
    for kind, table in overlay.items():
        vals: dict[str, float] = {}
        for name, x in table.items():
            f = float(x)
            if not math.isfinite(f):
                raise EdgecError(f"overlay {kind!r}: node {name!r} has a non-finite value")
            vals[str(name)] = f
        out[kind] = vals
    return out


def _graph_data(model: GraphModel, role: str, views: dict[str, dict[str, Any]]
                ) -> dict[str, Any]:
    return {"name": model.name, "role": role, "meta": model.meta, "nodes": model.nodes,
            "groups": model.groups, "views": views, "initial": model.initial}


@dataclass(frozen=True)
class Page:
    """A rendered page and facts about it (for ``edgec viz --json``)."""

    html: str
    nodes: int
    groups: int
    views: int
    diff: dict[str, int] | None


def render_page(graph: Graph, *, before: Graph | None = None,
                overlay: dict[str, dict[str, float]] | None = None, title: str = "",
                units: dict[str, str] | None = None,
                before_overlay: dict[str, dict[str, float]] | None = None) -> Page:
    """Render ``graph`` (see :func:`render_html`) and say how big the result is. ``units``
    names the unit of each overlay (``{"cost": "us"}``), shown in the legend and details;
    ``before_overlay`` gives the ``before`` graph its own overlay values (default: looked up
    in ``overlay`` by name, like the graph's)."""
    over = _check_overlay(overlay)
    before_over = over if before_overlay is None else _check_overlay(before_overlay)
    unit_text = {k: str(v) for k, v in (units or {}).items() if k in over}
    after_m = build_model(graph, over)
    models = [after_m]
    counts = None
    if before is not None:
        before_m = build_model(before, before_over)
        counts = diff_graphs(before_m, after_m)
        models = [before_m, after_m]
    specs = {f"{i}:{k}": v for i, m in enumerate(models) for k, v in m.views.items()}
    laid = layout_views(specs)
    roles = ["before", "after"] if before is not None else ["graph"]
    graphs = [_graph_data(m, role, {k: laid[f"{i}:{k}"] for k in m.views})
              for i, (m, role) in enumerate(zip(models, roles))]
    title = title or (f"{before.name} → {graph.name}" if before is not None else graph.name)
    data = {"version": 1, "title": title, "graphs": graphs, "diff": counts,
            "overlays": [k for k in _OVERLAYS if k in over or k in before_over],
            "units": unit_text}
    css, js = _asset("viz.css"), _asset("viz.js")
    csp = (f"default-src 'none'; script-src 'sha256-{_sha256(js)}'; "
           f"style-src 'sha256-{_sha256(css)}'; img-src data:; base-uri 'none'; "
           "form-action 'none'")
    page = "".join([
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n',
        f'<meta http-equiv="Content-Security-Policy" content="{csp}">\n',
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n',
        '<link rel="icon" href="data:,">\n',
        f"<title>{html.escape(title)}</title>\n<style>{css}</style>\n</head>\n<body>\n",
        '<header id="bar"></header>\n<div id="legend"></div>\n',
        '<div id="main"><div id="panes"></div><aside id="details"></aside></div>\n',
        '<script type="application/json" id="edgec-viz-data">', embed_json(data),
        f"</script>\n<script>{js}</script>\n</body>\n</html>\n",
    ])
    return Page(page, len(graph.nodes), len(after_m.groups),
                sum(len(m.views) for m in models), counts)


def render_html(graph: Graph, *, before: Graph | None = None,
                overlay: dict[str, dict[str, float]] | None = None, title: str = "",
                units: dict[str, str] | None = None) -> str:
    """One self-contained HTML page showing ``graph``.

    ``before`` adds a side-by-side before/after view with nodes marked added, removed or
    changed. ``overlay`` maps ``"cost"`` and/or ``"drift"`` to ``{node name: value}`` (a
    node's name, or the name of one of its outputs) and adds heat-colour modes; ``units``
    names their units. Raises ``GraphvizNotFoundError`` when Graphviz ``dot`` is not
    installed.
    """
    return render_page(graph, before=before, overlay=overlay, title=title, units=units).html


def write_html(path: str | os.PathLike[str], graph: Graph, *, before: Graph | None = None,
               overlay: dict[str, dict[str, float]] | None = None, title: str = "",
               units: dict[str, str] | None = None) -> None:
    """Render (see :func:`render_html`) and write the page to ``path`` atomically."""
    atomic_write_text(path, render_html(graph, before=before, overlay=overlay, title=title,
                                        units=units))

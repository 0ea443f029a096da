"""Layered (Sugiyama) layout of every view by Graphviz ``dot``, at build time.

All views of a page go to one ``dot -Tjson0`` process as a stream of graphs. ``dot`` sees no
model string at all: elements are generated ids (``n3``, ``g2``, ``p0``), sizes are given in
inches with ``fixedsize``, and an edge or cluster label is a run of ``0`` characters as long
as the real label, so that ``dot`` reserves room for it; the page draws the real text. The
result is converted to SVG coordinates (y down) and path strings built here from the parsed
numbers only.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Iterable
from typing import Any

from compiler.errors import EdgecError
from tools.viz.model import ViewSpec, value_text

__all__ = ["GraphvizNotFoundError", "LayoutError", "layout_views", "edge_label"]

_LABEL_CHARS = 48
_BIG_VIEW = 800  # views with more elements get a cheaper crossing minimisation


class GraphvizNotFoundError(EdgecError):
    """Graphviz's ``dot`` program, which lays out the graph, is not installed."""


class LayoutError(EdgecError):
    """``dot`` failed on a view (its message is kept)."""


def edge_label(values: list[Any]) -> str:
    """The label of an edge carrying ``values``: one value's type, else a count."""
    text = value_text(values[0]) if len(values) == 1 else f"{len(values)} tensors"
    return text if len(text) <= _LABEL_CHARS else text[: _LABEL_CHARS - 1] + "…"


def _pt(x: float) -> float:
    return round(x, 1)


def _inches(points: float) -> str:
    return f"{points / 72.0:.4f}"


def _placeholder(text: str) -> str:
    # dot's Courier metrics are narrower than the browser's monospace: reserve a bit more
    return "0" * (len(text) * 5 // 4 + 2)


def _dot_text(name: str, spec: ViewSpec) -> str:
    big = len(spec.elements) > _BIG_VIEW
    lines = [f"digraph {name} {{",
             "graph [rankdir=TB, nodesep=0.25, ranksep=0.45, fontsize=10, fontname=Courier"
             + (", mclimit=0.3, nslimit=3, nslimit1=3" if big else "") + "];",
             'node [shape=box, fixedsize=true, label=""];',
             "edge [fontsize=8, fontname=Courier, arrowsize=0.6];"]
    in_cluster: set[str] = set()
    for members in spec.clusters.values():
        in_cluster.update(members)

    def cluster(gid: str, depth: int) -> None:
        pad = "  " * depth
        label = _placeholder(spec.cluster_labels.get(gid, ""))
        lines.append(f'{pad}subgraph cluster_{gid} {{ label="{label}"; labeljust=l; margin=10;')
        for m in spec.clusters[gid]:
            if m in spec.clusters:
                cluster(m, depth + 1)
            else:
                lines.append(f"{pad}  {m};")
        lines.append(f"{pad}}}")

    for eid, (w, h) in spec.elements.items():
        lines.append(f"{eid} [width={_inches(w)}, height={_inches(h)}];")
    for gid in spec.clusters:
        if gid not in in_cluster:
            cluster(gid, 0)
    ins = [p for p, info in spec.ports.items() if info["dir"] == "in"]
    outs = [p for p, info in spec.ports.items() if info["dir"] == "out"]
    if ins:
        lines.append("{rank=source; " + "; ".join(ins) + ";}")
    if outs:
        lines.append("{rank=sink; " + "; ".join(outs) + ";}")
    for k, ((a, b), vals) in enumerate(spec.edges.items()):
        lines.append(f'{a} -> {b} [id=e{k}, label="{_placeholder(edge_label(vals))}"];')
    lines.append("}")
    return "\n".join(lines) + "\n"


def _xy(text: str) -> tuple[float, float]:
    x, y = text.split(",")[:2]
    return float(x), float(y)


def _path(pos: str, height: float) -> str:
    """An SVG path from a dot edge ``pos`` (B-spline control points, optional end point)."""
    end: tuple[float, float] | None = None
    pts: list[tuple[float, float]] = []
    for tok in pos.split():
        if tok.startswith("e,"):
            end = _xy(tok[2:])
        elif tok.startswith("s,"):
            continue
        else:
            pts.append(_xy(tok))
    if not pts:
        return ""
    flip = [(_pt(x), _pt(height - y)) for x, y in pts]
    d = f"M{flip[0][0]},{flip[0][1]}"
    for i in range(1, len(flip) - 2, 3):
        (x1, y1), (x2, y2), (x3, y3) = flip[i:i + 3]
        d += f"C{x1},{y1} {x2},{y2} {x3},{y3}"
    if end is not None:
        d += f"L{_pt(end[0])},{_pt(height - end[1])}"
    return d


def _convert(result: dict[str, Any], spec: ViewSpec) -> dict[str, Any]:
    x0, y0, x1, y1 = (float(t) for t in result["bb"].split(","))
    height = y1
    els: list[list[Any]] = []
    clusters: list[list[Any]] = []
    names: dict[int, str] = {}
    for obj in result.get("objects", []):
        name = str(obj.get("name", ""))
        if name.startswith("cluster_"):
            bx0, by0, bx1, by1 = (float(t) for t in obj["bb"].split(","))
            clusters.append([name[len("cluster_"):], _pt(bx0), _pt(height - by1),
                             _pt(bx1 - bx0), _pt(by1 - by0)])
            continue
        names[int(obj["_gvid"])] = name
        if name not in spec.elements:
            continue
        cx, cy = _xy(obj["pos"])
        w, h = spec.elements[name]
        els.append([name, _pt(cx - w / 2), _pt(height - cy - h / 2), _pt(w), _pt(h)])
    pairs = list(spec.edges.items())
    edges: list[dict[str, Any]] = []
    for e in result.get("edges", []):
        k = int(str(e["id"])[1:])
        (a, b), vals = pairs[k]
        lp = None
        if "lp" in e:
            lx, ly = _xy(e["lp"])
            lp = [_pt(lx), _pt(height - ly)]
        edges.append({"a": a, "b": b, "d": _path(str(e.get("pos", "")), height),
                      "t": edge_label(vals), "lp": lp, "n": len(vals)})
    return {"w": _pt(x1 - x0), "h": _pt(y1 - y0), "els": els, "clusters": clusters,
            "edges": edges, "ports": spec.ports}


def _decode_stream(text: str) -> Iterable[dict[str, Any]]:
    dec = json.JSONDecoder()
    i = 0
    while True:
        while i < len(text) and text[i].isspace():
            i += 1
        if i >= len(text):
            return
        obj, i = dec.raw_decode(text, i)
        yield obj


def dot_path() -> str:
    """The ``dot`` executable, or :class:`GraphvizNotFoundError` saying how to install it."""
    exe = shutil.which("dot")
    if exe is None:
        raise GraphvizNotFoundError(
            "Graphviz 'dot' was not found on PATH; edgec viz needs it to lay out graphs. "
            "Install Graphviz: 'apt-get install graphviz' (Debian/Ubuntu), "
            "'brew install graphviz' (macOS), or see https://graphviz.org/download/")
    return exe


def layout_views(views: dict[str, ViewSpec]) -> dict[str, dict[str, Any]]:
    """Lay out every view with one ``dot`` run; returns view key -> laid-out view."""
    exe = dot_path()
    keys = list(views)
    text = "".join(_dot_text(f"V{i}", views[k]) for i, k in enumerate(keys))
    try:
        proc = subprocess.run([exe, "-Tjson0"], input=text, capture_output=True, text=True,
                              check=False)
    except OSError as e:
        raise LayoutError(f"running {exe} failed: {e}") from e
    if proc.returncode != 0:
        first = (proc.stderr.strip().splitlines() or ["no message"])[0]
        raise LayoutError(f"dot failed laying out the graph (exit {proc.returncode}): {first}")
    out: dict[str, dict[str, Any]] = {}
    for result in _decode_stream(proc.stdout):
        i = int(str(result["name"])[1:])
        out[keys[i]] = _convert(result, views[keys[i]])
    missing = [k for k in keys if k not in out]
    if missing:
        raise LayoutError(f"dot returned no layout for view {missing[0]}")
    return out

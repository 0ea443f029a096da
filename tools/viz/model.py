"""The data behind the visualizer: nodes, module groups, views and the before/after diff.

Everything here is plain JSON-ready data (dicts, lists, strings, numbers); the page renders it
with ``textContent`` only, so model strings never become markup.

Groups. A node's module path (``node.meta["src"]``, dotted) places it in a tree of groups. A
path prefix is a group when at least two nodes live under it; a group whose nodes all sit in
one child group is elided (the child is labelled with the longer relative path). A node
belongs to the deepest group that is a prefix of its path; group 0 is the whole graph.

Views. The page shows one *view* at a time per graph: the interior of one group (its own
nodes, its child groups as single boxes, and ports for the tensors that cross its border), or,
for graphs of at most :data:`FLAT_LIMIT` nodes, ``"all"``: every node, with groups drawn as
nested frames. Graphs of at most :data:`COLLAPSE_OVER` nodes open on ``"all"``, bigger ones
on the top-level modules; opening a module box shows its view, collapsing goes back up. Each
view is laid out on its own (``tools.viz.layout``), so a 10,000-node graph costs one small
layout per group, never one huge layout. Constants are not drawn; they are listed as node
inputs in the details panel.

Diff. ``before`` and ``after`` nodes are matched by provenance: by node name where both sides
have it, the others by (module path, op, occurrence index among the unmatched nodes with that
path and op). Unmatched
``before`` nodes are *removed*, unmatched ``after`` nodes *added*, matched nodes whose op,
attributes, output types/encodings, placement, non-constant inputs or constant types differ
are *changed*.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from compiler.ir import Graph, Node, QuantEncoding, Value
from compiler.ir.printer import attr_str, format_float

__all__ = ["FLAT_LIMIT", "COLLAPSE_OVER", "GraphModel", "ViewSpec", "build_model",
           "diff_graphs", "encoding_text", "precision_of", "node_key"]

#: graphs up to this many nodes also get the ``all`` view (every node in one layout)
FLAT_LIMIT = 1500
#: graphs over this many nodes open on the top-level modules instead of the ``all`` view
COLLAPSE_OVER = 300
_ATTR_CHARS = 400  # longer attribute texts (big tensor attributes) are cut for the page


def node_key(node: Node) -> str:
    """The name a node is shown and looked up by: its name, else its first output's name."""
    if node.name:
        return node.name
    return node.outputs[0].name if node.outputs else node.op


def encoding_text(enc: QuantEncoding, *, exact: bool = False) -> str:
    """A one-line encoding: ``u8 s=0.0213 zp=0``, ``i8 axis=0 per-channel(64)``. The scale is
    rounded to 4 significant digits unless ``exact``."""
    if enc.axis is None:
        scale = float(enc.scale)
        s = format_float(scale) if exact else f"{scale:.4g}"
        return f"{enc.dtype.value} s={s} zp={int(enc.zero_point)}"
    kind = (f"block={enc.block_size}" if enc.block_size is not None
            else f"per-channel({enc.scale.size})")
    return f"{enc.dtype.value} axis={enc.axis} {kind}"


def value_text(v: Value, *, exact: bool = False) -> str:
    """Type of a value with its encoding: ``f32[1,16,8,8] u8 s=0.02 zp=0``."""
    t = str(v.type)
    return f"{t} {encoding_text(v.encoding, exact=exact)}" if v.encoding is not None else t


def precision_of(node: Node) -> str:
    """Precision category of a node's first output: ``int8``/``uint16``... for an encoded
    tensor, else the element type (``f32``, ``i64``)."""
    if not node.outputs:
        return "none"
    out = node.outputs[0]
    if out.encoding is not None:
        return f"{'int' if out.encoding.signed else 'uint'}{out.encoding.bits}"
    return out.dtype.value


def _cut(text: str, limit: int = _ATTR_CHARS) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _full_attr(v: Any) -> str:
    try:
        return attr_str(v)
    except TypeError:  # an attribute kind the printer does not know: show its repr
        return repr(v)


def _attr_text(v: Any) -> str:
    return _cut(_full_attr(v))


def _meta_text(v: Any) -> str:
    return _cut(v if isinstance(v, str) else repr(v))


@dataclass
class ViewSpec:
    """One view before layout: its elements (``n3``, ``g2``, ``p0``), edges and clusters.

    ``elements`` maps element id to ``(width, height)`` in points; ``ports`` describes the
    ``p*`` elements; ``edges`` maps ``(tail, head)`` to the values it carries; ``clusters``
    maps a group id to the element ids and sub-clusters it frames (``all`` view only).
    """

    elements: dict[str, tuple[float, float]] = field(default_factory=dict)
    ports: dict[str, dict[str, Any]] = field(default_factory=dict)
    edges: dict[tuple[str, str], list[Value]] = field(default_factory=dict)
    clusters: dict[str, list[str]] = field(default_factory=dict)
    cluster_labels: dict[str, str] = field(default_factory=dict)
    port_ids: dict[tuple[str, str], str] = field(default_factory=dict)

    def port(self, direction: str, v: Value, peer: str) -> str:
        """The id of the port for value ``v`` going ``in`` or ``out`` (created once)."""
        key = (direction, v.name)
        pid = self.port_ids.get(key)
        if pid is None:
            pid = f"p{len(self.port_ids)}"
            self.port_ids[key] = pid
            self.ports[pid] = {"dir": direction, "value": v.name,
                               "type": value_text(v, exact=True),
                               "peer": peer}
            self.elements[pid] = (_text_width(v.name, 28) + 12, 22.0)
        return pid

    def edge(self, tail: str, head: str, v: Value) -> None:
        """Record that ``v`` flows from element ``tail`` to element ``head``."""
        vals = self.edges.setdefault((tail, head), [])
        if v not in vals:
            vals.append(v)


def _text_width(text: str, max_chars: int) -> float:
    return 7.0 * min(len(text), max_chars)


@dataclass
class GraphModel:
    """One graph prepared for the page: node and group records plus unlaid views."""

    name: str
    nodes: list[dict[str, Any]]
    groups: list[dict[str, Any]]
    views: dict[str, ViewSpec]
    initial: str
    meta: list[list[str]]
    ir_nodes: list[Node]


def _groups_of(nodes: list[Node]) -> tuple[list[str], dict[str, int], list[int]]:
    """Group paths (index 0 is the root ``""``), path -> index, and each node's group."""
    counts: Counter[str] = Counter()
    for n in nodes:
        parts = n.src.split(".") if n.src else []
        for i in range(1, len(parts) + 1):
            counts[".".join(parts[:i])] += 1
    # a prefix whose nodes all sit under one child prefix is elided (it would be a box
    # holding one box); the child keeps the longer relative label
    wrappers = {k.rpartition(".")[0] for k, c in counts.items()
                if "." in k and c == counts[k.rpartition(".")[0]]}
    kept = {p for p, c in counts.items() if c >= 2 and p not in wrappers}
    paths = ["", *sorted(kept, key=lambda s: (s.count("."), s))]
    index = {p: i for i, p in enumerate(paths)}
    member: list[int] = []
    for n in nodes:
        g = 0
        parts = n.src.split(".") if n.src else []
        for i in range(len(parts), 0, -1):
            j = index.get(".".join(parts[:i]))
            if j is not None:
                g = j
                break
        member.append(g)
    return paths, index, member


def _parent_of(path: str, index: dict[str, int]) -> int:
    parts = path.split(".")
    for i in range(len(parts) - 1, 0, -1):
        j = index.get(".".join(parts[:i]))
        if j is not None:
            return j
    return 0


def _overlay_value(table: dict[str, float] | None, node: Node) -> float | None:
    if not table:
        return None
    for k in (node.name, *(o.name for o in node.outputs)):
        if k and k in table:
            return float(table[k])
    return None


def _node_record(n: Node, group: int, overlay: dict[str, dict[str, float]]) -> dict[str, Any]:
    meta = {k: v for k, v in n.meta.items() if not str(k).startswith("_")}
    ins = []
    for v in n.inputs:
        if v is None:
            ins.append(["", "(omitted)", "", False])
        else:
            enc = encoding_text(v.encoding, exact=True) if v.encoding is not None else ""
            ins.append([v.name, str(v.type), enc, v.is_const])
    outs = [[o.name, str(o.type),
             encoding_text(o.encoding, exact=True) if o.encoding is not None else ""]
            for o in n.outputs]
    return {
        "op": n.qualified_op, "name": n.name, "key": node_key(n), "g": group,
        "attrs": [[k, _attr_text(n.attrs[k])] for k in sorted(n.attrs)],
        "ins": ins, "outs": outs,
        "src": n.src, "rule": _meta_text(meta.pop("rule", "")),
        "pass": _meta_text(meta.pop("pass", "")),
        "reason": _meta_text(meta.pop("placement_reason", "")),
        "meta": [[str(k), _meta_text(meta[k])] for k in sorted(meta, key=str) if k != "src"],
        "pl": n.placement, "prec": precision_of(n),
        "cost": _overlay_value(overlay.get("cost"), n),
        "drift": _overlay_value(overlay.get("drift"), n),
        "diff": None, "changes": [], "peer": None,
    }


def _node_size(rec: dict[str, Any]) -> tuple[float, float]:
    return (max(64.0, max(_text_width(rec["op"], 28), _text_width(rec["key"], 28)) + 16), 36.0)


def _group_size(label: str, size: int) -> tuple[float, float]:
    return (max(90.0, _text_width(f"{label} ({size})", 36) + 28), 42.0)


def build_model(graph: Graph, overlay: dict[str, dict[str, float]] | None = None
                ) -> GraphModel:
    """Prepare ``graph`` for the page: records, groups, and every view's elements and edges."""
    nodes = list(graph.nodes)
    paths, index, member = _groups_of(nodes)
    parent = [-1] + [_parent_of(p, index) for p in paths[1:]]
    anc: list[list[int]] = []
    for j in range(len(paths)):
        chain = [j]
        while parent[chain[-1]] >= 0:
            chain.append(parent[chain[-1]])
        anc.append(chain[::-1])
    groups: list[dict[str, Any]] = []
    for j, p in enumerate(paths):
        par = parent[j]
        label = graph.name if j == 0 else (p[len(paths[par]) + 1:] if par > 0 else p)
        groups.append({"path": p, "label": label, "parent": par, "anc": anc[j], "kids": [],
                       "direct": [], "n": 0})
    for j in range(1, len(paths)):
        groups[parent[j]]["kids"].append(j)
    recs = [_node_record(n, member[i], overlay or {}) for i, n in enumerate(nodes)]
    for i, g in enumerate(member):
        groups[g]["direct"].append(i)
        for a in anc[g]:
            groups[a]["n"] += 1

    node_id = {id(n): i for i, n in enumerate(nodes)}

    def elem(i: int, view: int) -> str | None:
        """The element that shows node ``i`` in the view of group ``view`` (None: outside)."""
        chain = anc[member[i]]
        d = len(anc[view]) - 1
        if d >= len(chain) or chain[d] != view:
            return None
        return f"n{i}" if len(chain) == d + 1 else f"g{chain[d + 1]}"

    views: dict[str, ViewSpec] = {f"g{j}": ViewSpec() for j in range(len(paths))}
    for j, grp in enumerate(groups):
        spec = views[f"g{j}"]
        for i in grp["direct"]:
            spec.elements[f"n{i}"] = _node_size(recs[i])
        for k in grp["kids"]:
            spec.elements[f"g{k}"] = _group_size(groups[k]["label"], groups[k]["n"])
    outputs = {id(v) for v in graph.outputs}
    for v in graph.values():
        if v.is_const:
            continue
        prod = node_id.get(id(v.producer)) if v.producer is not None else None
        cons = sorted({node_id[id(c)] for c, _ in v.uses if id(c) in node_id})
        is_out = id(v) in outputs
        touched = set(anc[member[prod]]) if prod is not None else {0}
        for c in cons:
            touched.update(anc[member[c]])
        prod_key = recs[prod]["key"] if prod is not None else "graph input"
        for view in sorted(touched):
            spec = views[f"g{view}"]
            tail = elem(prod, view) if prod is not None else None
            heads = [(elem(c, view), recs[c]["key"]) for c in cons]
            inside = [h for h, _ in heads if h is not None and h != tail]
            leaves = is_out or any(h is None for h, _ in heads)
            if tail is None:
                if inside:
                    tail = spec.port("in", v, prod_key)
                else:
                    continue
            for h in inside:
                spec.edge(tail, h, v)
            if leaves and not tail.startswith("p"):
                peers = [k for h, k in heads if h is None] + (["graph output"] if is_out else [])
                spec.edge(tail, spec.port("out", v, ", ".join(peers[:3])
                                          + (" …" if len(peers) > 3 else "")), v)
    if len(nodes) <= FLAT_LIMIT:
        views["all"] = _flat_view(graph, nodes, recs, groups, node_id)
    initial = "all" if "all" in views and len(nodes) <= COLLAPSE_OVER else "g0"
    if initial == "g0":  # open below a chain of wrappers (a root holding one module only)
        j = 0
        while not groups[j]["direct"] and len(groups[j]["kids"]) == 1:
            j = groups[j]["kids"][0]
        initial = f"g{j}"
    meta = [[str(k), _meta_text(graph.meta[k])] for k in sorted(graph.meta, key=str)]
    return GraphModel(graph.name, recs, groups, views, initial, meta, nodes)


def _flat_view(graph: Graph, nodes: list[Node], recs: list[dict[str, Any]],
               groups: list[dict[str, Any]], node_id: dict[int, int]) -> ViewSpec:
    """Every node in one layout, each group a frame (a dot cluster) around its members."""
    spec = ViewSpec()
    for i, rec in enumerate(recs):
        spec.elements[f"n{i}"] = _node_size(rec)
    for j, g in enumerate(groups):
        if j == 0:
            continue
        spec.clusters[f"g{j}"] = ([f"n{i}" for i in g["direct"]]
                                  + [f"g{k}" for k in g["kids"]])
        spec.cluster_labels[f"g{j}"] = f"{g['label']} ({g['n']})"
    for v in graph.inputs:
        heads = sorted({node_id[id(c)] for c, _ in v.uses if id(c) in node_id})
        if heads:
            pid = spec.port("in", v, "graph input")
            for h in heads:
                spec.edge(pid, f"n{h}", v)
    for i, n in enumerate(nodes):
        for o in n.outputs:
            for c, _ in o.uses:
                if id(c) in node_id:
                    spec.edge(f"n{i}", f"n{node_id[id(c)]}", o)
    for v in graph.outputs:
        if v.producer is not None and id(v.producer) in node_id:
            spec.edge(f"n{node_id[id(v.producer)]}", spec.port("out", v, "graph output"), v)
    return spec


def _value_sig(v: Value) -> tuple[Any, ...]:
    enc = v.encoding.key() if v.encoding is not None else None
    return (str(v.type), enc, v.digest if v.is_const else v.name)


def _changes(a: Node, b: Node) -> list[str]:
    """What differs between two matched nodes (empty when nothing does)."""
    out = []
    if a.qualified_op != b.qualified_op:
        out.append(f"op: {a.qualified_op} -> {b.qualified_op}")
    keys = sorted(set(a.attrs) | set(b.attrs))
    diff_attrs = [k for k in keys if k not in a.attrs or k not in b.attrs
                  or _full_attr(a.attrs[k]) != _full_attr(b.attrs[k])]
    if diff_attrs:
        out.append("attributes: " + ", ".join(diff_attrs))
    if [_value_sig(o)[:2] for o in a.outputs] != [_value_sig(o)[:2] for o in b.outputs]:
        out.append("outputs: " + "; ".join(value_text(o, exact=True) for o in a.outputs)
                   + " -> " + "; ".join(value_text(o, exact=True) for o in b.outputs))
    if a.placement != b.placement:
        out.append(f"placement: {a.placement} -> {b.placement}")
    ins_a = [None if v is None else v.name for v in a.inputs if v is None or not v.is_const]
    ins_b = [None if v is None else v.name for v in b.inputs if v is None or not v.is_const]
    if ins_a != ins_b:
        out.append(f"inputs: {', '.join(map(str, ins_a))} -> {', '.join(map(str, ins_b))}")
    consts_a = [_value_sig(v) for v in a.inputs if v is not None and v.is_const]
    consts_b = [_value_sig(v) for v in b.inputs if v is not None and v.is_const]
    if consts_a != consts_b:
        names = [v.name for v in b.inputs if v is not None and v.is_const]
        out.append("constant inputs (values, types or encodings): " + ", ".join(names))
    return out


def _match(before: list[Node], after: list[Node]) -> dict[int, int]:
    """after index -> before index: by node name where both sides have it, then the rest by
    (module path, op, occurrence among the unmatched nodes with that path and op)."""
    names = {n.name: j for j, n in enumerate(before) if n.name}
    pairs: dict[int, int] = {}
    taken: set[int] = set()
    for i, n in enumerate(after):
        j = names.get(n.name) if n.name else None
        if j is not None and j not in taken:
            pairs[i] = j
            taken.add(j)

    def keyed(nodes: list[Node], skip: set[int]) -> dict[tuple[str, str, int], int]:
        seen: Counter[tuple[str, str]] = Counter()
        out: dict[tuple[str, str, int], int] = {}
        for k, n in enumerate(nodes):
            if k in skip:
                continue
            base = (n.src, n.qualified_op)
            out[(*base, seen[base])] = k
            seen[base] += 1
        return out

    rest_b = keyed(before, taken)
    for key, i in keyed(after, set(pairs)).items():
        if key in rest_b:
            pairs[i] = rest_b[key]
    return pairs


def diff_graphs(before: GraphModel, after: GraphModel) -> dict[str, int]:
    """Mark every node of both models ``added``/``removed``/``changed``/``same`` (in place),
    link matched nodes to each other (``peer``) and return the counts."""
    pairs = _match(before.ir_nodes, after.ir_nodes)
    counts: Counter[str] = Counter()
    for i, rec in enumerate(after.nodes):
        j = pairs.get(i)
        if j is None:
            rec["diff"] = "added"
        else:
            ch = _changes(before.ir_nodes[j], after.ir_nodes[i])
            rec["diff"] = before.nodes[j]["diff"] = "changed" if ch else "same"
            rec["changes"] = before.nodes[j]["changes"] = ch
            rec["peer"], before.nodes[j]["peer"] = j, i
        counts[rec["diff"]] += 1
    matched = set(pairs.values())
    for j, rec in enumerate(before.nodes):
        if j not in matched:
            rec["diff"] = "removed"
            counts["removed"] += 1
    return {k: counts.get(k, 0) for k in ("added", "removed", "changed", "same")}

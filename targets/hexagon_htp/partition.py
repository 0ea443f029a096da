"""Own partitioning for the HTP: compile each HTP region on its own and stitch the result.

Dropping a node's encodings does not take it away from the QNN EP (it runs float nodes too),
so placing a node on the CPU needs a model in which that node is not offered to the EP at all.
Here the graph is cut, in its topological order, into maximal runs of HTP nodes between CPU
nodes (a run of consecutive nodes is convex: no path leaves it and comes back, so no cycle is
possible). Each run is extracted as its own graph (boundary values become inputs and outputs,
keeping their encodings), exported as QDQ and compiled into its own context. The deployable
model is the whole graph's QDQ export with each run's nodes replaced by its ``EPContext``
node; nodes and Q/DQ pairs left without a consumer are removed.
"""

from __future__ import annotations

from collections.abc import Sequence

import onnx

from compiler.ir import Graph, Node, Value

__all__ = ["htp_runs", "extract", "stitch"]


def htp_runs(graph: Graph, cpu: set[str]) -> list[list[Node]]:
    """Maximal runs of consecutive non-CPU nodes, in graph order."""
    runs: list[list[Node]] = []
    cur: list[Node] = []
    for n in graph.nodes:
        if n.name in cpu:
            if cur:
                runs.append(cur)
            cur = []
        else:
            cur.append(n)
    if cur:
        runs.append(cur)
    return runs


def extract(graph: Graph, nodes: Sequence[Node], name: str) -> Graph:
    """The subgraph of ``nodes`` (in order): values from outside become inputs, values used
    outside (or graph outputs) become outputs; names, types and encodings are kept."""
    inside = {id(n) for n in nodes}
    sub = Graph(name, dict(graph.opset))
    vals: dict[str, Value] = {}

    def get(v: Value) -> Value:
        if v.name in vals:
            return vals[v.name]
        if v.is_const:
            nv = sub.add_const(v.name, v.const_source, v.dtype,  # type: ignore[arg-type]
                               encoding=v.encoding)
        else:
            nv = sub.add_input(v.name, v.type, encoding=v.encoding)
        vals[v.name] = nv
        return nv

    for n in nodes:
        ins = [get(v) if v is not None else None for v in n.inputs]
        out_names = [o.name if o is not None else "" for o in n.outputs]
        m = sub.make_node(n.op, ins, dict(n.attrs), outputs=out_names,
                          types=[o.type if o is not None else None for o in n.outputs],
                          domain=n.domain, name=n.name, meta=dict(n.meta))
        for o, mo in zip(n.outputs, m.outputs):
            if o is not None and mo is not None:
                if mo.name != o.name:
                    raise ValueError(f"subgraph {name}: value %{o.name} was renamed")
                mo.encoding = o.encoding
                vals[o.name] = mo
    graph_outs = {v.name for v in graph.outputs}
    results: list[Value] = []
    for n in nodes:
        for o in n.outputs:
            if o is None:
                continue
            used_outside = any(id(u) not in inside for u in o.consumers())
            if used_outside or o.name in graph_outs:
                results.append(vals[o.name])
    sub.outputs = results
    return sub


def stitch(full: onnx.ModelProto, parts: Sequence[tuple[set[str], onnx.ModelProto]]
           ) -> onnx.ModelProto:
    """``full`` with each part's nodes (by name) replaced by the part's EPContext nodes."""
    model = onnx.ModelProto()
    model.CopyFrom(full)
    g = model.graph
    removed = set().union(*(names for names, _ in parts)) if parts else set()
    new_nodes = [n for n in g.node if n.name not in removed]
    ctx_nodes = []
    produced_by_ctx: set[str] = set()
    for _, ctx in parts:
        for n in ctx.graph.node:
            if n.op_type != "EPContext":
                raise ValueError(f"partition context model has a non-EPContext node {n.name}")
            ctx_nodes.append(n)
            produced_by_ctx.update(n.output)
        for opset in ctx.opset_import:
            if opset.domain and not any(o.domain == opset.domain for o in model.opset_import):
                model.opset_import.append(opset)
    # nodes that would write a tensor an EPContext node now writes
    new_nodes = [n for n in new_nodes if not (set(n.output) & produced_by_ctx)]
    outputs = {o.name for o in g.output}
    nodes = new_nodes + ctx_nodes
    while True:  # drop nodes nothing reads any more (dangling Q/DQ, weight DQs)
        read = {i for n in nodes for i in n.input} | outputs
        keep = [n for n in nodes if any(o in read for o in n.output)]
        if len(keep) == len(nodes):
            break
        nodes = keep
    read = {i for n in nodes for i in n.input}
    inits = [t for t in g.initializer if t.name in read]
    del g.initializer[:]
    g.initializer.extend(inits)
    # topological order
    available = {i.name for i in g.input} | {t.name for t in inits} | {""}
    ordered: list[onnx.NodeProto] = []
    pending = list(nodes)
    while pending:
        rest = []
        for n in pending:
            if all(i in available for i in n.input):
                ordered.append(n)
                available.update(n.output)
            else:
                rest.append(n)
        if len(rest) == len(pending):
            missing = sorted({i for n in rest for i in n.input} - available)[:3]
            raise ValueError(f"stitching left inputs nobody produces: {missing}")
        pending = rest
    del g.node[:]
    g.node.extend(ordered)
    return model

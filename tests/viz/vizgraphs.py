"""Graphs for the visualizer tests: a hostile graph and a big graph."""

from __future__ import annotations

import shutil

import pytest

from compiler.ir import DType, Graph, TensorType

HOSTILE = '"><img src=x onerror=alert(1)>'

requires_dot = pytest.mark.skipif(shutil.which("dot") is None,
                                  reason="Graphviz 'dot' is not installed (apt-get install graphviz)")


def hostile_graph() -> Graph:
    """A graph whose every string (names, module paths, attributes, metadata) is markup."""
    t = TensorType(DType.F32, (1, "<b>batch</b>"))
    g = Graph(HOSTILE + "</script><script>alert(2)</script>")
    g.meta["doc_string"] = "</script><img src=x onerror=alert(3)>"
    x = g.add_input(HOSTILE + "in", t)
    a = g.make_node("Relu", [x], name=HOSTILE, types=[t],
                    meta={"src": "<svg onload=alert(4)>.a", "rule": "<img src=x onerror=alert(5)>",
                          "placement_reason": "<iframe src=javascript:alert(6)>"})
    b = g.make_node("Custom<img src=x onerror=alert(7)>", [a.outputs[0]],
                    {"mode": "</script><img src=x onerror=alert(8)>"}, domain="evil",
                    types=[t], placement="<b>htp</b>",
                    meta={"src": "<svg onload=alert(4)>.b"})
    g.outputs = [b.outputs[0]]
    return g


def big_graph(layers: int = 40, blocks: int = 5, per: int = 50) -> Graph:
    """``layers * (blocks * per + 1)`` nodes in a module tree ``layers.L.blockB.opK``."""
    t = TensorType(DType.F32, (1, 64))
    g = Graph("big")
    cur = g.add_input("x", t)
    for layer in range(layers):
        skip = cur
        for b in range(blocks):
            for k in range(per):
                op = "Relu" if k % 2 else "Sigmoid"
                cur = g.make_node(op, [cur], types=[t],
                                  meta={"src": f"layers.{layer}.block{b}.op{k // 5}"}).outputs[0]
        cur = g.make_node("Add", [cur, skip], types=[t], meta={"src": f"layers.{layer}"}).outputs[0]
    g.outputs = [cur]
    return g

"""``tools.viz``: the page is self-contained, model strings stay text, groups, diff, layout."""

from __future__ import annotations

import json
import re
import time
from importlib import resources
from pathlib import Path
from typing import Any

import pytest

from compiler.errors import EdgecError
from compiler.ir import Graph, save_ir
from tests.viz.vizgraphs import HOSTILE, big_graph, hostile_graph, requires_dot
from tools.cli import main
from tools.viz import GraphvizNotFoundError, render_html, write_html
from tools.viz.layout import _dot_text
from tools.viz.model import build_model, diff_graphs, node_key
from tools.viz.render import embed_json, render_page

_DATA = re.compile(r'<script type="application/json" id="edgec-viz-data">(.*?)</script>', re.S)


def page_data(page: str) -> dict[str, Any]:
    """The JSON embedded in a page."""
    m = _DATA.search(page)
    assert m is not None
    return json.loads(m.group(1))


# -- the page is one self-contained, inert file ------------------------------------------------
@requires_dot
def test_page_is_self_contained(resnet: Graph) -> None:
    page = render_html(resnet)
    assert page.startswith("<!DOCTYPE html>")
    assert not re.search(r"""(?:src|href)\s*=\s*["']?\s*(?:https?:)?//""", page, re.I)
    assert not re.search(r"<script[^>]*\bsrc=", page, re.I)
    assert not re.search(r"<link[^>]*stylesheet", page, re.I)
    assert "@import" not in page and not re.search(r"url\(\s*[\"']?(?!#)", page)
    assert "default-src 'none'" in page  # the CSP forbids every fetch
    assert page.count("<script") == 2 and page.count("</script>") == 2


def test_script_never_builds_markup_from_strings() -> None:
    js = resources.files("tools.viz").joinpath("viz.js").read_text()
    for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval(",
                 "new Function"):
        assert sink not in js


def test_embed_json_escapes_script_end_and_comments() -> None:
    data = {"s": "</script><!-- & \u2028 <img src=x>"}
    text = embed_json(data)
    assert "<" not in text and ">" not in text and "&" not in text and "\u2028" not in text
    assert "</" not in text
    assert json.loads(text) == data


@requires_dot
def test_hostile_strings_stay_text() -> None:
    g = hostile_graph()
    page = render_html(g, title=HOSTILE)
    # No model string leaves the JSON block or the escaped <title> as markup.
    assert "<img" not in page and "<svg onload" not in page and "<iframe" not in page
    assert page.count("</script>") == 2
    assert f"<title>{'&quot;&gt;&lt;img src=x onerror=alert(1)&gt;'}</title>" in page
    data = page_data(page)
    (graph,) = data["graphs"]
    assert graph["name"] == g.name
    names = {n["name"] for n in graph["nodes"]}
    assert HOSTILE in names
    relu = next(n for n in graph["nodes"] if n["name"] == HOSTILE)
    assert relu["rule"] == "<img src=x onerror=alert(5)>"
    assert relu["reason"] == "<iframe src=javascript:alert(6)>"
    custom = next(n for n in graph["nodes"] if n["op"].startswith("evil.Custom"))
    assert custom["attrs"] == [["mode", json.dumps("</script><img src=x onerror=alert(8)>")]]
    assert ["doc_string", "</script><img src=x onerror=alert(3)>"] in graph["meta"]


def test_dot_sees_only_generated_ids() -> None:
    gm = build_model(hostile_graph())
    for key, spec in gm.views.items():
        text = _dot_text(f"V{key}", spec)
        assert "<" not in text and "alert" not in text and "batch" not in text
        for token in re.findall(r"\b([A-Za-z_]\w*)\b", text):
            assert (re.fullmatch(r"[ngp]\d+|cluster_g\d+|e\d+|V\w+", token)
                    or token in {"digraph", "graph", "node", "edge", "subgraph", "rank",
                                 "source", "sink", "rankdir", "TB", "nodesep", "ranksep",
                                 "fontsize", "fontname", "Courier", "shape", "box",
                                 "fixedsize", "true", "label", "arrowsize", "width",
                                 "height", "id", "labeljust", "l", "margin", "mclimit",
                                 "nslimit", "nslimit1"}), token


def test_missing_dot_is_a_typed_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("tools.viz.layout.shutil.which", lambda name: None)
    with pytest.raises(GraphvizNotFoundError, match="apt-get install graphviz") as e:
        render_html(hostile_graph())
    assert isinstance(e.value, EdgecError)


# -- groups and views ------------------------------------------------------------------------
def test_module_paths_form_groups(resnet: Graph) -> None:
    gm = build_model(resnet)
    paths = [g["path"] for g in gm.groups]
    assert paths[0] == "" and "layer1" in paths and "layer2.downsample" in paths
    # a module with a single node is not a group of its own
    assert "layer1.conv1" not in paths and "fc" not in paths
    layer2 = gm.groups[paths.index("layer2")]
    assert layer2["n"] == 9 and layer2["label"] == "layer2"
    ds = gm.groups[paths.index("layer2.downsample")]
    assert ds["parent"] == paths.index("layer2") and ds["label"] == "downsample"
    assert gm.initial == "all"  # small graphs open fully expanded
    root = gm.views["g0"]
    assert f"g{paths.index('layer1')}" in root.elements
    assert {p["dir"] for p in root.ports.values()} == {"in", "out"}


def test_group_view_has_ports_for_crossing_tensors(resnet: Graph) -> None:
    gm = build_model(resnet)
    j = [g["path"] for g in gm.groups].index("layer1")
    spec = gm.views[f"g{j}"]
    ins = sorted(p["value"] for p in spec.ports.values() if p["dir"] == "in")
    outs = sorted(p["value"] for p in spec.ports.values() if p["dir"] == "out")
    assert ins == ["max_pool2d"] and outs == ["relu_2"]


@requires_dot
def test_ten_thousand_nodes_stay_usable() -> None:
    g = big_graph()
    assert len(g.nodes) == 10040
    t0 = time.perf_counter()
    page = render_page(g)
    elapsed = time.perf_counter() - t0
    assert elapsed < 60, elapsed
    data = page_data(page.html)
    (graph,) = data["graphs"]
    assert "all" not in graph["views"]  # never one 10,000-node layout
    start = graph["views"][graph["initial"]]
    assert graph["groups"][int(graph["initial"][1:])]["path"] == "layers"
    assert len(start["els"]) <= 45  # opens on the 40 layers, collapsed
    assert max(len(v["els"]) for v in graph["views"].values()) < 100
    assert len(page.html) < 20_000_000


# -- before/after -----------------------------------------------------------------------------
def test_diff_marks_added_removed_changed(resnet: Graph) -> None:
    after = resnet.copy()
    relu = next(n for n in after.nodes if n.op == "Relu")
    relu.placement = "htp"
    before_m, after_m = build_model(resnet), build_model(after)
    counts = diff_graphs(before_m, after_m)
    assert counts == {"added": 0, "removed": 0, "changed": 1, "same": len(after.nodes) - 1}
    rec = next(r for r in after_m.nodes if r["key"] == node_key(relu))
    assert rec["diff"] == "changed" and rec["changes"] == ["placement: None -> htp"]


def test_diff_of_a_fusion_pipeline(resnet: Graph, resnet_fused: Graph) -> None:
    before_m, after_m = build_model(resnet), build_model(resnet_fused)
    counts = diff_graphs(before_m, after_m)
    # every conv+batch-norm pair becomes one conv with the batch norm's module path
    assert counts["added"] == 6 and counts["removed"] == 12 and counts["same"] == 11
    added = [r for r in after_m.nodes if r["diff"] == "added"]
    assert {r["op"] for r in added} == {"Conv"} and all(r["rule"] for r in added)
    removed = {r["op"] for r in before_m.nodes if r["diff"] == "removed"}
    assert removed == {"Conv", "BatchNormalization"}


def test_named_graph_matches_unnamed_by_provenance(resnet: Graph) -> None:
    after = resnet.copy()
    for n in after.nodes:  # as 'edgec compile' names every node
        n.name = n.outputs[0].name
    next(iter(after.nodes)).placement = "htp"
    counts = diff_graphs(build_model(resnet), build_model(after))
    assert counts == {"added": 0, "removed": 0, "changed": 1, "same": len(after.nodes) - 1}


def test_named_nodes_match_by_name() -> None:
    before = hostile_graph()
    after = hostile_graph()
    after.find_node(HOSTILE).attrs["alpha"] = 0.5  # type: ignore[union-attr]
    b, a = build_model(before), build_model(after)
    counts = diff_graphs(b, a)
    assert counts["changed"] == 1 and counts["same"] == 1
    assert a.nodes[0]["changes"] == ["attributes: alpha"]


@requires_dot
def test_overlays_become_modes(resnet: Graph) -> None:
    cost = {n.outputs[0].name: float(i) for i, n in enumerate(resnet.nodes)}
    data = page_data(render_html(resnet, overlay={"cost": cost, "drift": {"relu": 3.5}}))
    assert data["overlays"] == ["cost", "drift"]
    nodes = data["graphs"][0]["nodes"]
    assert [n["cost"] for n in nodes] == [float(i) for i in range(len(nodes))]
    assert [n["key"] for n in nodes if n["drift"] is not None] == ["relu"]
    with pytest.raises(EdgecError, match="unknown overlay"):
        render_html(resnet, overlay={"latency": {}})
    with pytest.raises(EdgecError, match="non-finite"):
        render_html(resnet, overlay={"cost": {"relu": float("nan")}})


# -- writing and the CLI ---------------------------------------------------------------------
@requires_dot
def test_write_html_is_atomic(tmp_path: Path, resnet: Graph) -> None:
    out = tmp_path / "g.html"
    write_html(out, resnet)
    assert out.read_text().startswith("<!DOCTYPE html>")
    assert [p.name for p in tmp_path.iterdir()] == ["g.html"]


@requires_dot
def test_cli_ir_file_with_pipeline(tmp_path: Path, resnet: Graph,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    save_ir(resnet, tmp_path / "m.ir")
    out = tmp_path / "g.html"
    assert main(["viz", str(tmp_path / "m.ir"), "-o", str(out), "--pipeline",
                 "canonicalize,fuse", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["diff"] == {"added": 6, "removed": 12, "changed": 0, "same": 11}
    data = page_data(out.read_text())
    assert [g["role"] for g in data["graphs"]] == ["before", "after"]


@requires_dot
def test_cli_compile_output_folder(tmp_path: Path, resnet: Graph,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    g = resnet.copy()
    for n in g.nodes:
        n.placement = "cpu" if n.op == "Reshape" else "htp"
    folder = tmp_path / "out"
    folder.mkdir()
    save_ir(g, folder / "model.ir")
    report = {"cpu_nodes": [{"node": "flatten", "op": "Reshape", "src": "",
                             "reason": "dtype: i64 shape input"}], "finalize_moves": []}
    (folder / "report.json").write_text(json.dumps(report))
    out = tmp_path / "g.html"
    assert main(["viz", str(folder), "-o", str(out)]) == 0
    nodes = page_data(out.read_text())["graphs"][0]["nodes"]
    flat = next(n for n in nodes if n["key"] == "flatten")
    assert flat["pl"] == "cpu" and flat["reason"] == "dtype: i64 shape input"
    assert {n["pl"] for n in nodes} == {"cpu", "htp"}
    assert "wrote" in capsys.readouterr().err


def test_cli_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["viz", str(tmp_path), "-o", str(tmp_path / "g.html")]) == 2
    assert "no model.ir" in capsys.readouterr().err
    assert main(["viz", "a.ir", "-o", "g.html", "--before", "b.ir", "--pipeline", "fuse"]) == 2
    assert "not both" in capsys.readouterr().err
    assert main(["viz", "a.ir", "-o", "g.html", "--pipeline", "no-such-pass"]) == 2


# -- overlays from the CLI ---------------------------------------------------------------------
@requires_dot
def test_cli_cost_and_drift_overlays(tmp_path: Path, resnet: Graph,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    import numpy as np

    from compiler.passes import PassContext, PassManager
    from targets.cost import graph_cost

    save_ir(resnet, tmp_path / "m.ir")
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "in.npz", x=rng.normal(size=(3, 1, 3, 32, 32)).astype(np.float32))
    pipeline = "canonicalize,fuse,calibrate,quantize{scheme=w8a8}"
    out = tmp_path / "g.html"
    assert main(["viz", str(tmp_path / "m.ir"), "-o", str(out), "--pipeline", pipeline,
                 "--calib", str(tmp_path / "in.npz"), "--overlay", "cost", "--overlay", "drift",
                 "--target", "htp-v73", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["overlays"] == ["cost", "drift"]
    data = page_data(out.read_text())
    assert data["overlays"] == ["cost", "drift"]
    assert data["units"]["cost"] == "us on htp-v73" and "SQNR" in data["units"]["drift"]
    before, after = data["graphs"]
    # cost: the cost model's prediction for the quantized graph, node by node, in microseconds
    quant = resnet.copy()
    feeds = [{"x": a} for a in np.load(tmp_path / "in.npz")["x"]]
    PassManager(pipeline).run(quant, PassContext(calibration=feeds))
    want = [c.seconds * 1e6 for c in graph_cost(quant, "htp-v73").nodes]
    assert [n["cost"] for n in after["nodes"]] == pytest.approx(want)
    conv = max(n["cost"] for n in after["nodes"] if n["op"] == "Conv")
    assert conv > max(n["cost"] for n in after["nodes"] if n["op"] == "Relu")
    assert all(isinstance(n["cost"], float) for n in before["nodes"])  # its own, float costs
    # drift: -SQNR of each node against FP32, the same numbers 'edgec drift' reports
    assert main(["drift", str(tmp_path / "m.ir"), "-p", pipeline, "--calib",
                 str(tmp_path / "in.npz"), "--json"]) == 0
    rows = {r["value"]: r["sqnr_db"] for r in json.loads(capsys.readouterr().out)["nodes"]}
    got = {n["outs"][0][0]: n["drift"] for n in after["nodes"]}
    assert set(got) == set(rows)
    for value, sqnr in rows.items():
        assert got[value] == pytest.approx(-sqnr, abs=1e-4)
    assert all(n["drift"] is None for n in before["nodes"])  # drift describes the result only


def test_cli_overlay_errors(tmp_path: Path, resnet: Graph,
                            capsys: pytest.CaptureFixture[str]) -> None:
    save_ir(resnet, tmp_path / "m.ir")
    args = ["viz", str(tmp_path / "m.ir"), "-o", str(tmp_path / "g.html")]
    assert main([*args, "--overlay", "drift"]) == 2
    assert "--calib" in capsys.readouterr().err
    assert main([*args, "--overlay", "cost", "--target", "htp-v99"]) == 2
    assert "htp-v99" in capsys.readouterr().err
    import numpy as np

    np.savez(tmp_path / "in.npz", x=np.zeros((1, 1, 3, 32, 32), np.float32))
    assert main([*args, "--overlay", "drift", "--calib", str(tmp_path / "in.npz")]) == 2
    assert "compares against FP32" in capsys.readouterr().err  # a float model, no pipeline
    assert not (tmp_path / "g.html").exists()

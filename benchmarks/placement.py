"""Placement benchmark: predicted latency of cost-driven vs greedy capability placement.

For every zoo model (``tests/models/zoo.py``), the Erf-in-the-middle CNN of the placement tests,
the reference CNNs at 224x224 (``tests/models/reference_cnns.py``) and a 4-block ViT-S/16 at
224x224, on ``htp-v75`` + ``cpu``
at W8A8 and W8A16, predicted by ``targets/cost.py`` (no calibration, no simulator: the float
graph costed at the scheme, as ``edgec explain`` does):

- ``greedy``: every node the HTP takes on the HTP, the rest on the CPU (what Qualcomm's QNN EP
  partitioner does, one op at a time);
- ``cost``: ``passes/partition`` (min-cut + local search over partitions, launches and
  transfers included): ``target=["htp-v75", "cpu"]``;
- ``fallback``: one NPU with the CPU as a fallback (``target="htp-v75"``): greedy, then small
  NPU islands moved to the CPU when predicted faster by a margin.

A second table varies the HTP's per-graph launch overhead (``graph_overhead_s``, 50 us in the
device table, an assumption) to 10 and 250 us, the MAC rates left as fitted at 50 us.

Two front doors: ``fx`` (edgec's importer and its default float pipeline, which fuses erf-GELU
into Gelu) and ``onnx`` (``torch.onnx.export``'s TorchScript exporter, only ``canonicalize``:
erf-GELU stays, as a user of the QNN EP gets it, and splits the NPU graph).

    .venv/bin/python benchmarks/placement.py            # writes benchmarks/results/placement.*
    .venv/bin/python benchmarks/placement.py --quick --out /tmp/placement
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import time
import warnings
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

TARGETS = ["htp-v75", "cpu"]
FLOAT = "canonicalize,fuse,lower-group-norm,canonicalize"


def _models(quick: bool) -> dict[str, Any]:
    from tests.models.reference_cnns import REFERENCE_CNNS, build_reference
    from tests.models.zoo import ZOO
    from tests.partition.models import island, sandwich

    out: dict[str, Any] = {name: ZOO[name] for name in sorted(ZOO)}
    out["erf-sandwich"] = sandwich
    out["erf-island"] = island
    if not quick:
        for name in sorted(REFERENCE_CNNS):
            out[name] = (lambda name=name: build_reference(name))
        out["vit-s16x4"] = _vit_s16
    return out


def _vit_s16() -> tuple[Any, tuple[Any, ...]]:
    """ViT-S/16 at 224x224 with 4 of its 12 blocks (export stays quick)."""
    import torch

    from tests.models.zoo import ViT

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        m = ViT(dim=384, depth=4, heads=6, patch=16, image=224).eval()
        x = torch.randn(1, 3, 224, 224)
    return m, (x,)


def _graph(factory: Any, front: str) -> Any:
    import onnx
    import torch

    from compiler.frontends import load_onnx, load_torch
    from compiler.passes import PassContext, PassManager

    model, example = factory()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if front == "fx":
            g = load_torch(model, example)
            pipe = FLOAT
        else:
            f = io.BytesIO()
            torch.onnx.export(model, example, f, dynamo=False,  # type: ignore[arg-type]
                              opset_version=17)
            g = load_onnx(onnx.load_from_string(f.getvalue()))
            pipe = "canonicalize"
    PassManager(pipe).run(g, PassContext(target=TARGETS[0]))
    return g


def run(quick: bool = False) -> list[dict[str, Any]]:
    """One row per (model, front door, precision)."""
    from passes.partition import place

    rows = []
    for name, factory in _models(quick).items():
        for front in ("fx", "onnx"):
            base_graph = _graph(factory, front)
            for precision in ("w8a8", "w8a16"):
                g = base_graph.copy()
                t0 = time.perf_counter()
                cost, greedy = place(g, TARGETS, "cost", precision=precision,
                                     assume_quantized=True, write=False)
                secs = time.perf_counter() - t0
                fb, _ = place(g, TARGETS, "fallback", precision=precision,
                              assume_quantized=True, write=False)

                def parts(pl: Any) -> tuple[int, int, int]:
                    npu = sum(1 for p in pl.partitions if p.target.startswith("htp"))
                    cpu_nodes = sum(len(pl.problem.items[i].nodes)
                                    for p in pl.partitions if p.target == "cpu"
                                    for i in p.items)
                    return len(pl.partitions), npu, cpu_nodes

                gp, gn, gc = parts(greedy)
                cp, cn, cc = parts(cost)
                fp, fn, fc = parts(fb)
                rows.append({
                    "model": name, "front": front, "precision": precision,
                    "nodes": len(g.nodes),
                    "greedy_us": round(greedy.total_s * 1e6, 2), "greedy_partitions": gp,
                    "greedy_npu_partitions": gn, "greedy_cpu_nodes": gc,
                    "cost_us": round(cost.total_s * 1e6, 2), "cost_partitions": cp,
                    "cost_npu_partitions": cn, "cost_cpu_nodes": cc,
                    "speedup": round(greedy.total_s / cost.total_s, 3),
                    "fallback_us": round(fb.total_s * 1e6, 2), "fallback_partitions": fp,
                    "fallback_npu_partitions": fn, "fallback_cpu_nodes": fc,
                    "solve_s": round(secs, 3),
                })
                print(f"{name:<14} {front:<4} {precision:<5} greedy {rows[-1]['greedy_us']:>9.1f}"
                      f" us ({gp} parts)  cost {rows[-1]['cost_us']:>9.1f} us ({cp} parts, "
                      f"{cc} CPU nodes)  x{rows[-1]['speedup']:.2f}", file=sys.stderr)
    return rows


def markdown(rows: list[dict[str, Any]]) -> str:
    """The results as a markdown table."""
    lines = [
        "Predicted latency on htp-v75 + cpu (targets/cost.py), greedy capability placement vs "
        "cost-driven placement (passes/partition). Partitions: total (NPU); CPU: nodes on "
        "the CPU. `fx`: edgec's importer + float pipeline (fuses erf-GELU); `onnx`: "
        "torch.onnx TorchScript export + canonicalize (erf-GELU left as exported).",
        "",
        "| model | front | precision | nodes | greedy us | greedy partitions | greedy CPU | "
        "cost us | cost partitions | cost CPU | speedup | fallback us | fallback partitions | "
        "fallback CPU | solve s |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['front']} | {r['precision']} | {r['nodes']} | "
            f"{r['greedy_us']:.1f} | {r['greedy_partitions']} ({r['greedy_npu_partitions']}) | "
            f"{r['greedy_cpu_nodes']} | {r['cost_us']:.1f} | {r['cost_partitions']} "
            f"({r['cost_npu_partitions']}) | {r['cost_cpu_nodes']} | x{r['speedup']:.2f} | "
            f"{r['fallback_us']:.1f} | {r['fallback_partitions']} "
            f"({r['fallback_npu_partitions']}) | {r['fallback_cpu_nodes']} | "
            f"{r['solve_s']:.2f} |")
    worse = [r for r in rows if r["cost_us"] > r["greedy_us"] + 1e-6]
    fb_worse = [r for r in rows if r["fallback_us"] > r["greedy_us"] + 1e-6]
    fb_moved = [r for r in rows if r["fallback_cpu_nodes"] != r["greedy_cpu_nodes"]]
    lines += ["", f"Cost-driven placement predicted slower than greedy: {len(worse)} of "
              f"{len(rows)} rows. Fallback placement predicted slower than greedy: "
              f"{len(fb_worse)}; different from greedy: {len(fb_moved)} rows."]
    return "\n".join(lines) + "\n"


def sensitivity(overheads: tuple[float, ...] = (10e-6, 50e-6,
                                                                            250e-6),
                quick: bool = False) -> list[dict[str, Any]]:
    """The same placements with the HTP's ``graph_overhead_s`` set to each of ``overheads``
    (the MAC rates stay as fitted at 50 us): per value, how many rows the cost-driven policy
    takes wholly off the NPU, where the fallback policy differs from greedy, the mean
    cost-vs-greedy speedup, and ResNet-50 W8A8's predicted latency against AI Hub's 0.69 ms."""
    import dataclasses

    from passes.partition import place
    from targets.cost import graph_cost
    from targets.hexagon_htp import target as htp

    graphs = {(name, front): _graph(f, front) for name, f in _models(quick).items()
              for front in ("fx", "onnx")}
    r50 = None
    if not quick:
        from tests.models.reference_cnns import build_reference

        r50 = _graph(lambda: build_reference("resnet50"), "fx")
    arch = TARGETS[0].split("-v")[1]
    saved = htp.DEVICES[arch]
    out = []
    try:
        for oh in overheads:
            htp.DEVICES[arch] = dataclasses.replace(saved, graph_overhead_s=oh)
            off_npu = fb_moved = 0
            speedups = []
            for g0 in graphs.values():
                for precision in ("w8a8", "w8a16"):
                    cost, greedy = place(g0.copy(), TARGETS, "cost", precision=precision,
                                         assume_quantized=True, write=False)
                    fb, _ = place(g0.copy(), TARGETS, "fallback", precision=precision,
                                  assume_quantized=True, write=False)
                    off_npu += all(a == "cpu" for a in cost.assign)
                    fb_moved += fb.assign != greedy.assign
                    speedups.append(greedy.total_s / cost.total_s)
            out.append({
                "graph_overhead_us": round(oh * 1e6, 1), "rows": len(speedups),
                "cost_all_cpu_rows": off_npu, "fallback_changed_rows": fb_moved,
                "mean_cost_speedup": round(sum(speedups) / len(speedups), 3),
                "resnet50_w8a8_v75_ms": (round(graph_cost(r50, TARGETS[0], "a8w8").seconds
                                               * 1e3, 3) if r50 is not None else None),
            })
            print(f"overhead {oh * 1e6:.0f} us: {out[-1]}", file=sys.stderr)
    finally:
        htp.DEVICES[arch] = saved
    return out


def sensitivity_markdown(sens: list[dict[str, Any]]) -> str:
    """The sensitivity table as markdown."""
    lines = ["", "HTP per-graph launch overhead (`graph_overhead_s`) sensitivity, MAC rates as "
             "fitted at 50 us; rows = (model, front, precision) of the table above:", "",
             "| graph overhead us | rows | cost policy wholly on CPU | fallback differs from "
             "greedy | mean cost speedup vs greedy | ResNet-50 W8A8 v75 ms (AI Hub 0.69) |",
             "|---:|---:|---:|---:|---:|---:|"]
    for r in sens:
        r50 = "—" if r["resnet50_w8a8_v75_ms"] is None else f"{r['resnet50_w8a8_v75_ms']:.3f}"
        lines.append(f"| {r['graph_overhead_us']:.0f} | {r['rows']} | {r['cost_all_cpu_rows']} "
                     f"| {r['fallback_changed_rows']} | x{r['mean_cost_speedup']:.2f} | {r50} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Run, print the markdown, write ``placement.md`` and ``placement.json``."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="zoo only (no 224x224 reference CNNs)")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = p.parse_args(argv)
    rows = run(args.quick)
    sens = sensitivity(quick=args.quick)
    md = markdown(rows) + sensitivity_markdown(sens)
    args.out.mkdir(parents=True, exist_ok=True)
    stem = "placement-quick" if args.quick else "placement"
    (args.out / f"{stem}.md").write_text(md)
    (args.out / f"{stem}.json").write_text(json.dumps({"targets": TARGETS, "rows": rows,
                                                       "sensitivity": sens},
                                                      indent=1) + "\n")
    sys.stdout.write(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Placement benchmark: predicted latency of cost-driven vs greedy capability placement.

For every zoo model (``tests/models/zoo.py``), the Erf-in-the-middle CNN of the placement tests,
the reference CNNs at 224x224 (``tests/models/reference_cnns.py``) and a 4-block ViT-S/16 at
224x224, on ``htp-v75`` + ``cpu``
at W8A8 and W8A16, predicted by ``targets/cost.py`` (no calibration, no simulator: the float
graph costed at the scheme, as ``edgec explain`` does):

- ``greedy``: every node the HTP takes on the HTP, the rest on the CPU (what Qualcomm's QNN EP
  partitioner does, one op at a time);
- ``cost``: ``passes/partition`` (min-cut + local search over partitions, launches and
  transfers included).

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
    from tests.partition.models import sandwich

    out: dict[str, Any] = {name: ZOO[name] for name in sorted(ZOO)}
    out["erf-sandwich"] = sandwich
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

                def parts(pl: Any) -> tuple[int, int, int]:
                    npu = sum(1 for p in pl.partitions if p.target.startswith("htp"))
                    cpu_nodes = sum(len(pl.problem.items[i].nodes)
                                    for p in pl.partitions if p.target == "cpu"
                                    for i in p.items)
                    return len(pl.partitions), npu, cpu_nodes

                gp, gn, gc = parts(greedy)
                cp, cn, cc = parts(cost)
                rows.append({
                    "model": name, "front": front, "precision": precision,
                    "nodes": len(g.nodes),
                    "greedy_us": round(greedy.total_s * 1e6, 2), "greedy_partitions": gp,
                    "greedy_npu_partitions": gn, "greedy_cpu_nodes": gc,
                    "cost_us": round(cost.total_s * 1e6, 2), "cost_partitions": cp,
                    "cost_npu_partitions": cn, "cost_cpu_nodes": cc,
                    "speedup": round(greedy.total_s / cost.total_s, 3),
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
        "cost us | cost partitions | cost CPU | speedup | solve s |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['front']} | {r['precision']} | {r['nodes']} | "
            f"{r['greedy_us']:.1f} | {r['greedy_partitions']} ({r['greedy_npu_partitions']}) | "
            f"{r['greedy_cpu_nodes']} | {r['cost_us']:.1f} | {r['cost_partitions']} "
            f"({r['cost_npu_partitions']}) | {r['cost_cpu_nodes']} | x{r['speedup']:.2f} | "
            f"{r['solve_s']:.2f} |")
    worse = [r for r in rows if r["cost_us"] > r["greedy_us"] + 1e-6]
    lines += ["", f"Cost-driven placement predicted slower than greedy: {len(worse)} of "
              f"{len(rows)} rows."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Run, print the markdown, write ``placement.md`` and ``placement.json``."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="zoo only (no 224x224 reference CNNs)")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = p.parse_args(argv)
    rows = run(args.quick)
    md = markdown(rows)
    args.out.mkdir(parents=True, exist_ok=True)
    stem = "placement-quick" if args.quick else "placement"
    (args.out / f"{stem}.md").write_text(md)
    (args.out / f"{stem}.json").write_text(json.dumps({"targets": TARGETS, "rows": rows},
                                                      indent=1) + "\n")
    sys.stdout.write(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

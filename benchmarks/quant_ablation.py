"""What each piece of the HTP quantization pipeline buys: the default pipeline against itself
with one piece taken out, per zoo model and scheme, on the HTP simulator.

Variants (each a rewrite of ``targets/hexagon_htp/target.py``'s default pipeline):

- ``default``: the pipeline ``compile()`` runs;
- ``+seq-mse(gptq)`` (w8a16): with ``seq-mse{rounding=gptq}`` (output-aware weight scales and
  GPTQ rounding) between calibrate and quantize;
- ``+ln-written+seq-mse(gptq)`` (w8a16): that, with batched LayerNorms written out
  (``lower-layer-norm{min_outer_dims=2}``);
- ``margin=0``, ``margin=0.1`` (w8a16): ``quantize{range_margin=...}`` instead of 0.25;
- ``ln-op`` (w8a8): batched LayerNorms kept as the ``LayerNormalization`` op;
- ``percentile`` (w8a8): ``calibrate{method=percentile}`` instead of ``mse``;
- ``no-split-smooth`` (w8a8): linear layers read a norm's 16-bit output itself, not an
  8-bit SmoothQuant-scaled copy (``smooth-quant{split=true,min_ratio=4}`` left out);
- ``plain`` (w8a8): the automatic 16-bit policy off, the LayerNorm op kept and no split
  smoothing, the plain all-8-bit build the w8a8 cycle target is judged against;
- ``-<rule>`` (w8a8): the automatic policy without one of its rules
  (``quantize{auto_skip=<rule>}``), for each rule that kept a tensor in ``default``: what
  that rule buys and costs;
- ``+<name> (override)``: a user override measured on one model (Whisper's FFN at 16 bits).

Every variant of a model runs in one process on the same calibration (16) and held-out (4)
inputs as ``benchmarks/htp.py``. Reported: held-out SQNR against FP32, simulator cycles (all
variants of a model side by side in one process: four rounds, the minimum per variant; runs
in separate processes vary by up to ~40% on a loaded machine) and compile time.

    .venv/bin/python benchmarks/quant_ablation.py                       # every model, w8a16 + w8a8
    .venv/bin/python benchmarks/quant_ablation.py --models vit --schemes w8a8
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

MODELS = ["resnet", "mobilenet", "vit", "whisper", "llama", "unet", "minilm"]
SCHEMES = ["w8a16", "w8a8"]
#: (model, scheme) -> variant -> quantization overrides added to the default pipeline
OVERRIDES: dict[tuple[str, str], dict[str, dict[str, str]]] = {
    ("whisper", "w8a8"): {"+ffn a16 (override)": {"blocks.*.mlp.*": "a16"},
                          "+ffn+attn+conv a16 (override)": {
                              "blocks.*.mlp.*": "a16", "blocks.*.attn.*": "a16",
                              "conv*": "a16"}},
}


def variants(scheme: str) -> dict[str, str]:
    """Variant name -> pipeline; only variants that differ from ``default`` are kept."""
    from targets.hexagon_htp.target import default_pipeline

    base = default_pipeline(scheme)
    quant = f"quantize{{scheme={scheme}}}"
    gptq = base.replace(",quantize{", ",seq-mse{rounding=gptq},quantize{")
    if scheme == "w8a8":
        from benchmarks.htp import LN_LOWERING, SPLIT_SMOOTH, plain_pipeline
        from passes.quant.quantize import AUTO_RULES

        out = {"default": base, "ln-op": base.replace(LN_LOWERING, ""),
               "percentile": base.replace("method=mse", "method=percentile"),
               "no-split-smooth": base.replace(SPLIT_SMOOTH, ""),
               "plain": plain_pipeline("75", scheme)}
        out.update({f"-{r}": base.replace(quant, f"quantize{{scheme={scheme},auto_skip={r}}}")
                    for r in AUTO_RULES})
    else:
        from benchmarks.htp import LN_LOWERING

        out = {"default": base, "+seq-mse(gptq)": gptq,
               "+ln-written+seq-mse(gptq)": gptq.replace(
                   "lower-group-norm,", "lower-group-norm" + LN_LOWERING + ",", 1),
               "margin=0": base.replace(quant, f"quantize{{scheme={scheme},range_margin=0}}"),
               "margin=0.1": base.replace(quant,
                                          f"quantize{{scheme={scheme},range_margin=0.1}}")}
    return {k: v for k, v in out.items() if k == "default" or v != base}


def run_model(name: str, scheme: str, arch: str = "75") -> list[dict[str, Any]]:
    """Every variant of ``name`` at ``scheme``, in this process; cycles measured after all
    variants are built, side by side (``benchmarks.htp.measure_cycles``)."""
    import compiler
    from benchmarks.htp import _fp32, _input_names, _keep, _model, measure_cycles, score

    module, calib, held = _model(name)
    ref = _fp32(module, held)
    rows = []
    kept: list[tuple[dict[str, Any], str]] = []
    rules: set[str] = set()  # the auto policy's rules that kept something in ``default``
    pipes = variants(scheme)
    todo = [(label, pipe, None) for label, pipe in pipes.items()]
    todo += [(label, pipes["default"], ov)
             for label, ov in OVERRIDES.get((name, scheme), {}).items()]
    with tempfile.TemporaryDirectory(prefix="edgec-ablation-keep-") as keep:
        for label, pipe, ov in todo:
            if label.startswith("-") and label[1:] not in rules:
                continue  # the rule kept nothing here: the same build as default
            row: dict[str, Any] = {"model": name, "scheme": scheme, "variant": label}
            with tempfile.TemporaryDirectory(prefix="edgec-ablation-") as td:
                try:
                    t0 = time.perf_counter()
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore")
                        cm = compiler.compile(module, calib[0], target=f"htp-v{arch}",
                                              precision=scheme, calibration_data=calib,
                                              output_dir=Path(td) / "out", progress=False,
                                              pipeline=pipe, overrides=ov)
                    row["compile_s"] = time.perf_counter() - t0
                    if label == "default":
                        rules = {k.get("rule", "") for k in
                                 (cm.report.get("quantization") or {}).get("kept_16bit", [])}
                    outs = [[np.asarray(o) for o in cm.run(*[t.numpy() for t in b])]
                            for b in held]
                    row["sqnr_db"] = score(name, ref, outs)
                    model_path = Path(cm.artifacts["model"])
                    feed = {i: t.numpy() for i, t in zip(_input_names(model_path), held[0])}
                    kept.append((row, _keep(model_path, feed, Path(keep))))
                except Exception as e:  # a failed variant is a row, not a crash
                    row["error"] = f"{type(e).__name__}: {e}"
            rows.append(row)
        for (row, _), cycles in zip(kept, measure_cycles([k for _, k in kept])):
            row["cycles"] = cycles
    for row in rows:
        print(json.dumps(row), flush=True)
    return rows


def table(rows: list[dict[str, Any]]) -> str:
    """Markdown: one row per model/scheme/variant, with deltas against that model's default."""
    lines = ["Reproduce: `.venv/bin/python benchmarks/quant_ablation.py` (HTP v75 simulator)",
             "",
             "| model | scheme | variant | SQNR dB (MiniLM: cos) | vs default | cycles (M) | "
             "vs default | compile s |",
             "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: |"]
    base = {(r["model"], r["scheme"]): r for r in rows if r["variant"] == "default"}
    for r in rows:
        d = base.get((r["model"], r["scheme"]), {})
        if "error" in r:
            lines.append(f"| {r['model']} | {r['scheme']} | {r['variant']} | - | - | - | - | - "
                         f"| {r['error'][:80]}")
            continue
        k = 4 if r["model"] == "minilm" else 2  # MiniLM: cosine of its embeddings
        dq = (f"{r['sqnr_db'] - d['sqnr_db']:+.{k}f}" if "sqnr_db" in d and r is not d else "")
        cyc = r.get("cycles")
        dc = (f"{cyc / d['cycles']:.2f}x" if cyc and d.get("cycles") and r is not d else "")
        lines.append(f"| {r['model']} | {r['scheme']} | {r['variant']} | {r['sqnr_db']:.{k}f} | "
                     f"{dq} | {cyc / 1e6 if cyc else float('nan'):.2f} | {dc} | "
                     f"{r['compile_s']:.1f} |")
    return "\n".join(lines) + "\n"


def _has_minilm() -> bool:
    from tests.models import minilm

    return minilm.available()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--schemes", default=",".join(SCHEMES))
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results",
                    help="folder for quant_ablation.md/.json")
    args = ap.parse_args(argv)
    rows: list[dict[str, Any]] = []
    for scheme in args.schemes.split(","):
        for name in args.models.split(","):
            name, scheme = name.strip(), scheme.strip()
            if name == "minilm" and (scheme != "w8a8" or not _has_minilm()):
                continue  # MiniLM: the w8a8 rules only (seq-mse at w8a16 takes it ~50 s)
            rows.extend(run_model(name, scheme))
    from compiler.fileio import atomic_write_text

    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out / "quant_ablation.json", json.dumps(rows, indent=1) + "\n")
    md = table(rows)
    atomic_write_text(args.out / "quant_ablation.md", md)
    sys.stdout.write(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""The second baseline: Qualcomm's AIMET for ONNX (``aimet-onnx``) post-training quantization.

This script runs INSIDE the separate ``.venv-aimet`` (``make bench-aimet-env``): aimet-onnx pins
its own onnxruntime and torch, which must not replace the main venv's ``onnxruntime-qnn``.
``benchmarks/htp.py`` calls it as a subprocess on the same FP32 ONNX export and the same
calibration inputs as the other builds, then compiles the QDQ model it writes with the QNN EP
exactly as the ORT baselines are compiled (``benchmarks/ort_baseline.py``).

The recipe is AIMET's documented PTQ flow for an HTP target:

1. fold BatchNorms into the preceding Conv/Gemm (``fold_all_batch_norms_to_weight``);
2. ``QuantizationSimModel`` with the HTP config of the arch (``config_file="htp_v75"``: signed
   symmetric per-channel weights for Conv/Gemm/MatMul), ``param_type=int8`` and
   ``activation_type=int8`` (w8a8) or ``int16`` (w8a16), ``quant_scheme="min_max"`` (SeqMSE
   requires it);
3. SeqMSE (``aimet_onnx.apply_seq_mse``) on the calibration inputs: per layer, the weight
   scale that minimises the layer's output error; it freezes those weight encodings;
4. ``compute_encodings`` on the calibration inputs (activations);
5. ``to_onnx_qdq(export_int32_bias=True)``: a QDQ ONNX model with int32 biases, as the HTP wants.

Usage (inside .venv-aimet)::

    .venv-aimet/bin/python benchmarks/aimet_baseline.py --model fp32.onnx --calib calib.npz \\
        --scheme w8a16 --arch 75 --out aimet.qdq.onnx

It prints one JSON line: the AIMET version, the steps' seconds, what SeqMSE did and the peak
memory of this process. Only numpy and onnx are imported at module level, so the main venv can
import :func:`save_feeds` / :func:`load_feeds` from here.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["load_feeds", "main", "quantize_with_aimet", "save_feeds"]

_SEP = "::"


def save_feeds(path: Path, feeds: Sequence[dict[str, np.ndarray]]) -> None:
    """Write a list of ONNX feed dicts to one ``.npz`` (keys ``<batch>::<input name>``)."""
    arrays = {f"{i:05d}{_SEP}{name}": np.asarray(v) for i, f in enumerate(feeds)
              for name, v in f.items()}
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez(tmp, **arrays)  # type: ignore[arg-type]
    tmp.replace(path)


def load_feeds(path: Path) -> list[dict[str, np.ndarray]]:
    """Read what :func:`save_feeds` wrote, in batch order."""
    out: dict[int, dict[str, np.ndarray]] = {}
    with np.load(path) as z:
        for key in z.files:
            idx, name = key.split(_SEP, 1)
            out.setdefault(int(idx), {})[name] = z[key]
    return [out[i] for i in sorted(out)]


def quantize_with_aimet(model_path: Path, calib: Sequence[dict[str, np.ndarray]], out: Path,
                        *, scheme: str, arch: str, seq_mse: bool = True,
                        work: Path | None = None) -> dict[str, Any]:
    """Run AIMET's PTQ recipe (module docstring) on ``model_path`` and write the QDQ ONNX to
    ``out``. Returns what was done and how long each step took."""
    import aimet_onnx
    import onnx
    from aimet_onnx.batch_norm_fold import fold_all_batch_norms_to_weight
    from aimet_onnx.quantsim import QuantizationSimModel

    if scheme not in ("w8a8", "w8a16"):
        raise SystemExit(f"aimet_baseline: scheme {scheme!r} is not w8a8 or w8a16")
    secs: dict[str, float] = {}
    info: dict[str, Any] = {"aimet_version": getattr(aimet_onnx, "__version__", "?"),
                            "config": f"htp_v{arch}", "quant_scheme": "min_max"}

    t = time.perf_counter()
    model = onnx.load(str(model_path))
    if any(n.op_type == "BatchNormalization" for n in model.graph.node):
        pairs, _ = fold_all_batch_norms_to_weight(model)
        info["bn_folded"] = len(pairs)
    sim = QuantizationSimModel(model, param_type="int8",
                               activation_type="int16" if scheme == "w8a16" else "int8",
                               quant_scheme="min_max", config_file=f"htp_v{arch}",
                               path=str(work) if work else None)
    secs["sim_s"] = time.perf_counter() - t

    apply = getattr(aimet_onnx, "apply_seq_mse", None)
    if seq_mse and apply is not None:
        t = time.perf_counter()
        apply(sim, list(calib))
        secs["seq_mse_s"] = time.perf_counter() - t
        info["seq_mse"] = True
    else:
        info["seq_mse"] = False if not seq_mse else "unavailable in this aimet-onnx"

    t = time.perf_counter()
    sim.compute_encodings(list(calib))
    secs["compute_encodings_s"] = time.perf_counter() - t

    t = time.perf_counter()
    qdq = sim.to_onnx_qdq(export_int32_bias=True)
    if work is not None:
        # AIMET may keep weights as external data in its folder: the QDQ model must stand alone
        onnx.load_external_data_for_model(qdq, str(work))
    tmp = out.with_name(out.name + ".tmp")
    onnx.save(qdq, str(tmp))
    tmp.replace(out)
    secs["export_s"] = time.perf_counter() - t
    info["qdq_nodes"] = sum(1 for n in qdq.graph.node
                            if n.op_type in ("QuantizeLinear", "DequantizeLinear"))
    info["seconds"] = secs
    return info


def main(argv: list[str] | None = None) -> int:
    """Command-line entry: quantize one model, print one JSON line."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True, type=Path, help="FP32 ONNX model")
    p.add_argument("--calib", required=True, type=Path, help=".npz from save_feeds()")
    p.add_argument("--scheme", required=True, choices=["w8a8", "w8a16"])
    p.add_argument("--arch", default="75")
    p.add_argument("--out", required=True, type=Path, help="QDQ ONNX to write")
    p.add_argument("--no-seq-mse", action="store_true", help="skip SeqMSE")
    args = p.parse_args(argv)
    import logging
    import tempfile
    import warnings

    warnings.simplefilter("ignore")
    logging.disable(logging.WARNING)
    t0 = time.perf_counter()
    calib = load_feeds(args.calib)
    with tempfile.TemporaryDirectory(prefix="aimet-") as tmp:
        info = quantize_with_aimet(args.model, calib, args.out, scheme=args.scheme,
                                   arch=args.arch, seq_mse=not args.no_seq_mse,
                                   work=Path(tmp))
    info["total_s"] = time.perf_counter() - t0
    info["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps(info), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""On the HTP simulator (w8a16): structured channel pruning and low-rank factorization reduce
the simulated cycles of a small conv net; unstructured pruning does not, and does not claim to.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

import compiler
from passes.prune.prune import NO_SPEEDUP
from tests.compress.trainable import WideConvNet

pytestmark = pytest.mark.htp

BASE = ("canonicalize,fuse,{compress}canonicalize,calibrate{{method=minmax}},"
        "quantize{{scheme=w8a16}}")


def _build(compress: str, out: Path) -> tuple[Path, dict[str, np.ndarray], dict[str, object]]:
    torch.manual_seed(0)
    model = WideConvNet().eval()
    gen = torch.Generator().manual_seed(1)
    calib = [(torch.randn(1, 3, 32, 32, generator=gen),) for _ in range(4)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cm = compiler.compile(model, calib[0], target="htp-v75", precision="w8a16",
                              calibration_data=calib, output_dir=out, progress=False,
                              pipeline=BASE.format(compress=compress))
    feed = {cm.input_names[0]: calib[0][0].numpy()}
    return Path(cm.artifacts["model"]), feed, cm.report["summary"]


def test_structured_compression_cuts_cycles_and_unstructured_does_not(tmp_path: Path) -> None:
    from targets.hexagon_htp import qnn

    variants = {"base": "", "prune": "prune{method=channel,sparsity=0.5,multiple=8},",
                "lowrank": "lowrank{ratio=0.3},",  # the cost model agrees here
                "magnitude": "prune{method=magnitude,sparsity=0.5},"}
    built = {k: _build(v, tmp_path / k) for k, v in variants.items()}
    cycles: dict[str, float] = {}
    for _ in range(3):  # interleaved, least of three: the counts drift with the host's load
        for k, (model, feed, _) in built.items():
            prof = qnn.run_context(model, feed, profile=True).profile
            assert prof is not None
            cycles[k] = min(cycles.get(k, float("inf")), float(prof.total_cycles))
    s = {k: b[2] for k, b in built.items()}
    assert s["prune"]["macs"] < 0.5 * s["base"]["macs"]  # type: ignore[operator]
    assert s["lowrank"]["macs"] < 0.5 * s["base"]["macs"]  # type: ignore[operator]
    assert cycles["prune"] < 0.85 * cycles["base"], cycles
    assert cycles["lowrank"] < 0.9 * cycles["base"], cycles
    # zeros are computed like any weight: no gain (within simulator noise), and none claimed
    assert s["magnitude"]["macs"] == s["base"]["macs"]
    assert cycles["magnitude"] > 0.9 * cycles["base"], cycles
    assert "no speed-up on the HTP" in NO_SPEEDUP


def test_compile_compress_end_to_end(tmp_path: Path) -> None:
    """``compile(compress=...)`` at w8a16 on the simulator: the fragment runs after fusion and
    before calibration, every layer gets a row (what, why, measured error), the summary's
    MACs and weight bytes are the compressed model's, the context binary shrinks and the
    simulator spends fewer cycles; unstructured pruning keeps MACs and says it gains nothing."""
    from targets.hexagon_htp import qnn

    torch.manual_seed(0)
    model = WideConvNet().eval()
    gen = torch.Generator().manual_seed(1)
    calib = [(torch.randn(1, 3, 32, 32, generator=gen),) for _ in range(4)]
    specs = {"base": None,
             "small": "prune{method=channel,sparsity=0.5,multiple=8},lowrank{ratio=0.5}",
             "zeros": "prune{method=magnitude,sparsity=0.5}"}
    cms = {}
    for k, spec in specs.items():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            cms[k] = compiler.compile(model, calib[0], target="htp-v75", precision="w8a16",
                                      calibration_data=calib, output_dir=tmp_path / k,
                                      progress=False, compress=spec)
    base, small, zeros = cms["base"].report, cms["small"].report, cms["zeros"].report
    assert base["compression"] == []
    assert ",prune{method=channel,multiple=8},lowrank{ratio=0.5},calibrate" in small["pipeline"]
    rows = small["compression"]
    assert {r["pass"] for r in rows} == {"prune", "lowrank"}
    assert all(r["layer"] and r["action"] and r["reason"] for r in rows)
    changed = [r for r in rows if r["action"] in ("pruned", "factorized")]
    assert {r["pass"] for r in changed} == {"prune", "lowrank"}
    for r in changed:  # the measured error, per layer and for the model
        assert r["model_sqnr_db"] is not None
        assert r.get("layer_sqnr_db", r.get("alone_sqnr_db")) is not None
    skipped = [r for r in rows if r["action"] == "skipped"]
    assert skipped and all("cost model" in r["reason"] for r in skipped if r["pass"] ==
                           "lowrank")
    s0, s1 = base["summary"], small["summary"]
    assert s1["macs"] < 0.25 * s0["macs"]
    assert s1["weight_bytes"] < 0.25 * s0["weight_bytes"]
    assert zeros["summary"]["macs"] == s0["macs"]
    assert all(r["speedup"] == NO_SPEEDUP for r in zeros["compression"]
               if r["action"] == "sparsified")
    size = {k: Path(cm.artifacts["context0"]).stat().st_size for k, cm in cms.items()}
    assert size["small"] < 0.8 * size["base"]
    feed = {cms["base"].input_names[0]: calib[0][0].numpy()}
    cycles: dict[str, float] = {}
    for _ in range(2):
        for k, cm in cms.items():
            prof = qnn.run_context(Path(cm.artifacts["model"]), feed, profile=True).profile
            assert prof is not None
            cycles[k] = min(cycles.get(k, float("inf")), float(prof.total_cycles))
    assert cycles["small"] < 0.6 * cycles["base"], cycles
    assert cycles["zeros"] > 0.9 * cycles["base"], cycles

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

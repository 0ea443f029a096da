"""``--json`` output stays parseable although the QNN simulator's native libraries print
banners to file descriptor 1 (tools/stdio.py points fd 1 at stderr while a command runs)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = f"{ROOT / 'tools' / 'examples' / 'tiny_cnn.py'}:make"


@pytest.mark.htp
def test_compile_json_stdout_is_pure_json(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "tools.cli", "compile", EXAMPLE, "--precision", "w8a8",
         "--compress", "lowrank{energy=0.95}", "-o", str(tmp_path / "out"), "--json"],
        cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)  # nothing but the report on stdout
    assert report["summary"]["npu_nodes"] > 0
    assert report["pipeline"].index("lowrank") < report["pipeline"].index("quantize")
    assert {r["pass"] for r in report["compression"]} == {"lowrank"}


def test_text_output_still_reaches_stdout(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "tools.cli", "compile", EXAMPLE, "--target", "cpu",
         "--precision", "fp32", "-o", str(tmp_path / "out")],
        cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert "target" in proc.stdout and "cpu" in proc.stdout
    assert "LIBNATIVE" not in proc.stdout

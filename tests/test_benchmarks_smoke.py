"""The benchmark scripts run (small settings) and write their tables; timings are not
asserted here: numbers come from benchmarks, not from tests."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_ingest_quick_writes_its_table(tmp_path: Path) -> None:
    r = subprocess.run([sys.executable, "benchmarks/run.py", "--only", "ingest", "--quick",
                        "--repeat", "1", "--out", str(tmp_path)], cwd=ROOT,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    table = (tmp_path / "ingest-quick.md").read_text()
    for stage in ("import s", "canonicalize", "export s", "peak MB", "linear scaling"):
        assert stage in table
    assert "| 2 | edgec |" in table and "| 4 | onnx |" in table

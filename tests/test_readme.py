"""The README's claims that code can check: its table of default HTP pipelines."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from targets.hexagon_htp.target import default_pipeline

README = Path(__file__).resolve().parents[1] / "README.md"


def _pipeline_rows() -> dict[str, str]:
    rows: dict[str, str] = {}
    for line in README.read_text().splitlines():
        m = re.fullmatch(r"\s*\| `([\w`, ]+)` \| `([^`]+)` \|", line)
        if m:
            for p in re.findall(r"\w+", m.group(1)):
                rows[p] = m.group(2)
    return rows


@pytest.mark.parametrize("precision", ["w8a16", "w4a16", "w8a8", "fp16", "fp32"])
def test_readme_lists_the_default_htp_pipeline(precision: str) -> None:
    rows = _pipeline_rows()
    assert precision in rows, f"README has no default-pipeline row for {precision}"
    assert rows[precision] == default_pipeline(precision)

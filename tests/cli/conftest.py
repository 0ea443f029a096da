"""Every CLI test runs in its own empty directory: ``edgec opt`` writes its crash reproducer
(``reproducer.ir``) to the current directory by default, and a test must not leave one in the
source tree."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(autouse=True)
def _in_tmp_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)

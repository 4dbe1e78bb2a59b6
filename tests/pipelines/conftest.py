"""Fixtures shared by the retention tests."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest


@pytest.fixture
def out(golden: Path, tmp_path: Path) -> Path:
    """A fresh copy of the test module's ``golden`` output root, for one test to change."""
    copy = tmp_path / "out"
    shutil.copytree(golden, copy)
    return copy

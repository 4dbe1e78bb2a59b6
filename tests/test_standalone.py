"""The project stands alone: no tracked file points outside the repository.

A user who clones the project from its own host has nothing beside it, so the docs, docstrings
and schemas must carry the design in the project's own words (``docs/design.md``) and name the
source policy by its title and date. This test fails on any path that climbs out of the
repository from its root, and on the names of documents that live outside it.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# Spelled in pieces so that this file does not match itself.
_OUTSIDE = re.compile("|".join([r"\.\./" + "shared", "DESIGN" + r"\.md", r"\]\(\.\./"]))


def _tracked_text_files() -> list[Path]:
    listed = subprocess.run(
        ["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True
    ).stdout.split(b"\0")
    files = []
    for name in filter(None, listed):
        path = ROOT / name.decode()
        data = path.read_bytes() if path.is_file() else b""
        if b"\0" not in data[:8192]:  # text only
            files.append(path)
    return files


def test_no_tracked_file_points_outside_the_repository():
    offenders = []
    for path in _tracked_text_files():
        for number, line in enumerate(path.read_text("utf-8", "replace").splitlines(), 1):
            if _OUTSIDE.search(line):
                offenders.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()[:120]}")
    assert not offenders, "files point outside the repository:\n" + "\n".join(offenders)

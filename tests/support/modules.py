"""A module of the tests' own, written to a temporary folder and imported: how a seam is used
from outside the package (EXTENDING.md)."""

from __future__ import annotations

import contextlib
import importlib
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType


@contextlib.contextmanager
def temporary_module(folder: Path, name: str, source: str) -> Iterator[ModuleType]:
    """``source`` as the module ``name`` in ``folder``, imported (its registrations run) for
    the duration of the block, then forgotten; the caller unregisters what it registered."""
    (folder / f"{name}.py").write_text(textwrap.dedent(source))
    sys.path.insert(0, str(folder))
    try:
        yield importlib.import_module(name)
    finally:
        sys.modules.pop(name, None)
        sys.path.remove(str(folder))

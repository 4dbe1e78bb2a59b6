"""A module of the tests' own, written to a temporary folder and imported: how a seam is used
from outside the package (EXTENDING.md)."""

from __future__ import annotations

import contextlib
import importlib
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest


@contextlib.contextmanager
def temporary_module(
    folder: Path, name: str, source: str, unregister: Callable[[], None]
) -> Iterator[ModuleType]:
    """``source`` as the module ``name`` in ``folder``, imported (its registrations run) for
    the duration of the block, then forgotten, and ``unregister`` undoes what it registered
    (even if the import failed half-way)."""
    (folder / f"{name}.py").write_text(textwrap.dedent(source))
    sys.path.insert(0, str(folder))
    try:
        yield importlib.import_module(name)
    finally:
        sys.modules.pop(name, None)
        sys.path.remove(str(folder))
        unregister()


def module_fixture(fixture: str, name: str, source: str, unregister: Callable[[], None]) -> Any:
    """A module-scoped fixture called ``fixture`` giving :func:`temporary_module` of ``source``:
    each seam's test module declares its registering module in one line."""

    @pytest.fixture(scope="module", name=fixture)
    def imported(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ModuleType]:
        folder = tmp_path_factory.mktemp("modules")
        with temporary_module(folder, name, source, unregister) as module:
            yield module

    return imported

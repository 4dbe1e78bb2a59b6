"""The package declares what it imports, and imports what it declares.

A module imported only through another dependency (urllib3 through requests, once) breaks the
day that dependency drops it; a dependency nothing imports (requests, google-api-core, once)
is installed on every worker for nothing. Both are read from the code and ``setup.py``: the
third-party top-level imports of the package's modules, mapped to their distributions, against
``install_requires``.
"""

from __future__ import annotations

import ast
import importlib.metadata
import re
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PACKAGES = ("pipelines", "transforms", "schemas")
# Declared without an import, on purpose (setup.py says why): the design's country-lookup
# library, whose C reader (maxminddb) the pipelines call directly; the tests use its models.
DECLARED_NOT_IMPORTED = {"geoip2"}


def imported_top_levels() -> dict[str, set[str]]:
    """Top-level module names the package imports, each with the files that import it."""
    found: dict[str, set[str]] = {}
    for package in PACKAGES:
        for path in (REPO / package).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if isinstance(node, ast.Import):
                    names = [alias.name for alias in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names = [node.module]
                else:
                    continue
                for name in names:
                    found.setdefault(name.split(".")[0], set()).add(str(path.relative_to(REPO)))
    return found


def declared() -> set[str]:
    """Distribution names of ``install_requires`` (``BEAM`` is apache-beam), normalised."""
    text = (REPO / "setup.py").read_text()
    block = text.split("install_requires=[", 1)[1].split("]", 1)[0]
    names = {"apache-beam"} if re.search(r"^\s*BEAM,", block, re.M) else set()
    names |= {m.group(1) for m in re.finditer(r'^\s*"([A-Za-z0-9_.\-]+)', block, re.M)}
    return {normalise(n) for n in names}


def normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def third_party() -> dict[str, set[str]]:
    """Distributions the package imports (stdlib and the package itself left out)."""
    distributions = importlib.metadata.packages_distributions()
    needed: dict[str, set[str]] = {}
    for module, files in imported_top_levels().items():
        if module in sys.stdlib_module_names or module in PACKAGES or module == "__future__":
            continue
        for dist in distributions.get(module, [module]):
            needed.setdefault(normalise(dist), set()).update(files)
    return needed


def test_every_third_party_import_is_a_declared_dependency():
    missing = {d: sorted(f)[:3] for d, f in third_party().items() if d not in declared()}
    assert not missing, f"imported but not in install_requires: {missing}"


def test_every_declared_dependency_is_imported():
    unused = declared() - set(third_party()) - DECLARED_NOT_IMPORTED
    assert not unused, f"in install_requires but imported by no module of the package: {unused}"

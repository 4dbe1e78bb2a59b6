"""What a remote worker installs is enough to run the pipelines.

Dataflow and Flink workers get this project as the source distribution Beam builds from
``--setup_file`` (``python setup.py sdist``, staged as ``workflow.tar.gz``) and ``pip install``
it. Here the same sdist is built from a copy of the sources, installed into a fresh virtual
environment with its dependencies from the package index, and then, from a scratch directory and
with nothing of the repository on the path, every module of ``pipelines``, ``transforms`` and
``schemas`` is imported, the package data is found, and every pipeline runs on its bundled sample.
A module importing something setup.py does not install, a subpackage or data file left out of the
package, or a dependency on the working directory fails here instead of on the workers.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import venv
from pathlib import Path

import pytest

pytestmark = pytest.mark.engines

REPO = Path(__file__).resolve().parents[2]
PACKAGES = ("pipelines", "transforms", "schemas")
INSTALL_TIMEOUT = 900

CHECK = """
import importlib, importlib.resources, json, pkgutil, sys
packages = sys.argv[1].split(",")
modules = []
for name in packages:
    package = importlib.import_module(name)
    assert "site-packages" in package.__file__, package.__file__
    modules.append(name)
    for info in pkgutil.walk_packages(package.__path__, prefix=name + "."):
        if info.name.endswith("__main__"):
            continue  # importing it would run it; it is run below
        importlib.import_module(info.name)
        modules.append(info.name)
data = importlib.resources.files("schemas")
assert data.joinpath("policy.yaml").is_file()
assert any(p.name.endswith(".avsc") for p in data.joinpath("avro").iterdir())
bundled = importlib.resources.files("pipelines").joinpath("data")
assert bundled.joinpath("country.mmdb").is_file()
assert any(p.name.endswith(".jsonl") for p in bundled.joinpath("sample").iterdir())
print(json.dumps(sorted(modules)))
"""


def repo_modules() -> set[str]:
    modules = set()
    for package in PACKAGES:
        for path in (REPO / package).rglob("*.py"):
            if path.name == "__main__.py":
                continue
            parts = path.relative_to(REPO).with_suffix("").parts
            modules.add(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return modules


def clean_env() -> dict[str, str]:
    """No PYTHONPATH, no active venv: only what the fresh environment has installed."""
    return {
        k: v
        for k, v in os.environ.items()
        if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME", "PYTHONSTARTUP")
    }


def run(cmd: list, *, cwd: Path, timeout: float) -> subprocess.CompletedProcess:
    done = subprocess.run(
        [str(c) for c in cmd],
        cwd=cwd,
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert done.returncode == 0, (
        f"$ {' '.join(map(str, cmd))}\n{done.stdout[-3000:]}\n{done.stderr[-5000:]}"
    )
    return done


@pytest.fixture(scope="module")
def worker_env(tmp_path_factory, source_tree) -> Path:
    """A fresh venv with the project installed from the sdist Beam stages for workers."""
    tmp = tmp_path_factory.mktemp("worker")
    run(
        [sys.executable, "setup.py", "-q", "sdist", "--dist-dir", tmp / "dist"],
        cwd=source_tree,
        timeout=300,
    )
    (sdist,) = (tmp / "dist").glob("*.tar.gz")
    env_dir = tmp / "venv"
    venv.EnvBuilder(with_pip=True, clear=True).create(env_dir)
    python = env_dir / "bin" / "python"
    run(
        [python, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", sdist],
        cwd=tmp,
        timeout=INSTALL_TIMEOUT,
    )
    return python


def test_every_module_imports_from_the_installed_package(worker_env, tmp_path):
    done = run([worker_env, "-c", CHECK, ",".join(PACKAGES)], cwd=tmp_path, timeout=300)
    installed = set(json.loads(done.stdout.splitlines()[-1]))
    missing = repo_modules() - installed
    assert not missing, f"modules of the repository that the package does not install: {missing}"


def test_the_installed_package_runs_every_pipeline_on_its_sample(worker_env, tmp_path):
    done = run(
        [worker_env, "-m", "pipelines", f"--output={tmp_path / 'out'}"],
        cwd=tmp_path,
        timeout=600,
    )
    assert "reconciled=True" in done.stdout and "reconciled=False" not in done.stdout

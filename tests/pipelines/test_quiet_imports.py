"""A job imported without Beam's ``gcp`` extra prints nothing (``pip install .`` has no extra)."""

from __future__ import annotations

import subprocess
import sys

import pytest

# Makes ``apitools`` (of the gcp extra, which the test environment has) unimportable, as in an
# installation without the extra.
WITHOUT_GCP_EXTRA = """
import sys
class _NoApitools:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "apitools":
            raise ImportError(name)
sys.meta_path.insert(0, _NoApitools())
"""


def stderr_of(code: str) -> str:
    done = subprocess.run(
        [sys.executable, "-c", WITHOUT_GCP_EXTRA + code], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    return done.stderr


def test_beam_itself_warns_without_the_gcp_extra():
    """The control: the warning the jobs must not show is real in this setup."""
    assert "apitools not found" in stderr_of("import apache_beam")


@pytest.mark.parametrize("job", ["pipelines.visits", "pipelines.__main__", "pipelines.purge"])
def test_a_job_imported_without_the_gcp_extra_warns_of_nothing(job):
    assert stderr_of(f"import {job}\nimport logging\nlogging.warning('after: still shown')") == (
        "WARNING:root:after: still shown\n"
    )

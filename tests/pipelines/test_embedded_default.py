"""``python -m pipelines``: every source on its bundled sample, no network, one summary."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.support.outputs import decoded_text, read_rows, report

pytestmark = pytest.mark.e2e


def test_every_source_runs_on_the_bundled_sample(tmp_path):
    out = tmp_path / "out"
    done = subprocess.run(
        [sys.executable, "-m", "pipelines", f"--output={out}"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "all sources: read=" in done.stdout and "reconciled=True" in done.stdout
    categories = {r["data_category"] for r in read_rows(out)["parquet"]}
    assert categories == {
        "website_visit",
        "corporate_visitor_info",
        "sdk_log",
        "backend_log",
        "dashboard_information",
        "troubleshooting_data",
    }
    for pipeline in ("visits", "sdk_logs", "telemetry"):
        rep = report(out, pipeline)
        assert rep["reconciliation"]["reconciled"], pipeline
        assert rep["counts"]["dead_lettered_total"] > 0  # the samples carry their edge cases
    # the samples' secrets and media payloads are nowhere in the output
    text = decoded_text(out)
    for secret in (
        "hunter2",
        "eJyrVkrxCVYqTi0qzszPU7JSMlTSUTJUsgKpM",
        "UklGRiQAAABXQVZF",
        "AAAAIGZ0eXBpc29t",
        "BEGIN PRIVATE KEY",
    ):
        assert secret not in text

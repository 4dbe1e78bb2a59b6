"""Session fixtures of the hostile tests: the huge lines, and an output root for the retention
jobs to run on."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.hostile.corpus import ACCOUNTS, VALID_TIME, write_big_files
from tests.support.outputs import RUN_TIME


@pytest.fixture(scope="session")
def big_dir(tmp_path_factory) -> Path:
    """The 50 MB and 1,000,000-level lines, written once per session (linked into each CLI's
    input directory)."""
    return write_big_files(tmp_path_factory.mktemp("hostile-big"))


@pytest.fixture(scope="session")
def retention_root(tmp_path_factory) -> Path:
    """An output root holding four open-ended accounts (``ACCOUNTS``), written by the
    ingestion pipeline; copy it before running a retention job on it."""
    from pipelines import ingest

    tmp = tmp_path_factory.mktemp("hostile-root")
    records = [
        {
            "event_id": name,
            "uin": uin,
            "registered_at": VALID_TIME,
            "name": f"Account {name}",
            "location": "Singapore",
        }
        for name, uin in ACCOUNTS.items()
    ]
    data = tmp / "accounts.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in records))
    out = tmp / "root"
    report = ingest.run(
        [
            "--category=account_information",
            f"--input={data}",
            f"--output={out}",
            "--runner=FnApiRunner",
            f"--run_time={RUN_TIME}",
        ]
    )
    assert report["counts"]["written"] == {"account_information": len(ACCOUNTS)}, report
    return out

"""End to end: purge, lifecycle and erase on output roots whose names hold glob characters.

Beam reads ``[``, ``*`` and ``?`` in a path as glob characters (``FileSystem.translate_pattern``
has no way to quote them), so a root named ``out[x]`` was read as ``outx``: ``purge --output
'out[x]'`` deleted nothing, and ``erase`` on it wrote ``files_scanned: 0 ... verified: true`` and
then failed. Here each job runs on a root named ``out[x]``, ``out*`` and ``out?``, next to a
sibling that the glob would have matched (``outx``, ``out-other``, ``outa``), and must leave the
root in exactly the state the same job leaves in a copy named ``plain``, and the sibling
untouched, byte for byte.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest

from pipelines import erase, ingest, lifecycle, purge
from tests.support.outputs import RUN_TIME, read_rows, run_sample

pytestmark = pytest.mark.e2e
COMMON = ["--runner=FnApiRunner", f"--run_time={RUN_TIME}"]
# root name -> the sibling a glob of it matches
ROOTS = {"out[x]": "outx", "out*": "out-other", "out?": "outa"}
UIN = 100000009
ACCOUNTS = {
    "account_information": [
        {"event_id": "a1", "uin": UIN, "registered_at": "2026-11-01T08:00:00Z", "name": "Ada",
         "ip": "198.51.100.4"},
        {"event_id": "a2", "uin": 100000010, "registered_at": "2026-11-02T08:00:00Z",
         "name": "Bob", "ip": "::ffff:203.0.113.9"},
    ],
    "console_configuration": [
        {"event_id": "c1", "sdk_app_id": 1400000001, "uin": UIN, "updated_at": 1795000000000,
         "application_name": "mine"},
        {"event_id": "c2", "sdk_app_id": 1400000002, "uin": 100000010,
         "updated_at": 1795000000000, "application_name": "theirs"},
    ],
}  # fmt: skip
EVENTS = [{"event": "account_deleted", "uin": UIN, "at": "2026-11-28T10:00:00Z"}]
REQUESTS = [
    {"request_id": "DSR-uin", "received_at": "2026-11-28T09:00:00Z", "uin": UIN},
    {"request_id": "DSR-ip", "received_at": "2026-11-28T09:01:00Z", "ip": "203.0.113.9"},
]
PURGE_NOW = "2026-12-05T00:00:00Z"


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


@pytest.fixture(scope="module")
def golden(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("literal")
    out = tmp / "out"
    run_sample("sdk_logs", out)
    for category, records in ACCOUNTS.items():
        data = write_jsonl(tmp / f"{category}.jsonl", records)
        ingest.run(
            [
                f"--category={category}",
                f"--input={data}",
                f"--output={out}",
                "--format=both",
                *COMMON,
            ]
        )
    return out


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("inputs")
    return {
        "events": write_jsonl(tmp / "events.jsonl", EVENTS),
        "requests": write_jsonl(tmp / "requests.jsonl", REQUESTS),
    }


def jobs(inputs: dict[str, Path]) -> dict[str, tuple]:
    return {
        "purge": (purge.run, [f"--now={PURGE_NOW}"]),
        "lifecycle": (lifecycle.run, [f"--events={inputs['events']}", *COMMON]),
        "erase": (erase.run, [f"--requests={inputs['requests']}", *COMMON]),
    }


def inventory(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def state(root: Path) -> list[str]:
    """Every data row (with the partition it is in) and every dead letter (with its partition):
    the content of the layout, file names aside (they carry run ids)."""
    rows = [
        json.dumps({"format": fmt, **r}, sort_keys=True, default=str)
        for fmt, found in read_rows(root).items()
        for r in found
    ]
    letters = [
        f"{p.parent.relative_to(root)}\t{line}"
        for p in root.glob("_dead_letter/*/*/*.jsonl")
        for line in p.read_text().splitlines()
    ]
    return sorted(rows + letters)


@pytest.fixture(scope="module")
def reference(golden, inputs, tmp_path_factory) -> dict[str, tuple[dict, list[str]]]:
    """What each job reports and leaves on a root with a plain name."""
    done = {}
    for name, (run, args) in jobs(inputs).items():
        plain = tmp_path_factory.mktemp(f"plain-{name}") / "plain"
        shutil.copytree(golden, plain)
        done[name] = (run([f"--output={plain}", *args]), state(plain))
    return done


@pytest.mark.parametrize("job", ["purge", "lifecycle", "erase"])
@pytest.mark.parametrize("name", sorted(ROOTS))
def test_a_root_with_glob_characters_is_taken_literally(
    golden, inputs, reference, tmp_path, job, name
):
    root, sibling = tmp_path / name, tmp_path / ROOTS[name]
    shutil.copytree(golden, root)
    shutil.copytree(golden, sibling)
    untouched = inventory(sibling)
    expected_report, expected_state = reference[job]
    assert expected_state != state(golden)  # the job does change something

    run, args = jobs(inputs)[job]
    report = run([f"--output={root}", *args])

    assert state(root) == expected_state
    assert inventory(sibling) == untouched  # what a glob of the name matches is never touched
    assert report["counts"] == expected_report["counts"]
    assert not (root / "_retention").exists()
    assert Path(report["report_path"]).parent == root / "_reports"
    if job == "purge":
        assert report["counts"]["partitions"] > 0
    if job == "lifecycle":
        assert sum(report["counts"]["rows_moved"].values()) > 0
    if job == "erase":
        layout = [
            *golden.glob("data_category=*/expiry_date=*/*"),
            *golden.glob("_dead_letter/source=*/expiry_date=*/*"),
        ]
        assert report["counts"]["files_scanned"] == len(layout)  # every file, none missed
        assert report["counts"]["files_scanned"] > 0 and report["counts"]["rows_erased"] > 0
        verification = report["verification"]
        assert verification["verified"] and "error" not in report
        assert verification["files_listed"] == verification["files_read_back"] > 0
        assert all(r["verification"]["verified"] for r in report["requests"])

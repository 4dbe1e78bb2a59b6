"""End to end: ``python -m pipelines.lifecycle`` on outputs the ingestion pipelines really wrote.

Account, console, temporary-key and application-log records are ingested with
``pipelines.ingest --category`` (account data in Parquet and Avro), corporate visitor data with
the visits pipeline on its bundled sample; events then end their open-ended retention. Expected
expiries are computed from the policy objects, never from periods written in the test.
"""

from __future__ import annotations

import collections
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from pipelines import ingest, lifecycle, purge
from schemas.policy import load_policy
from tests.support.outputs import RUN_TIME, dead_letters, read_rows, run_sample
from transforms.retention.txn import FAILPOINT_ENV
from transforms.sinks import HIVE_NULL_PARTITION
from transforms.timestamps import format_utc, parse_event_time, utc_date

pytestmark = pytest.mark.e2e
COMMON = ["--runner=FnApiRunner", f"--run_time={RUN_TIME}"]
POLICY = load_policy()
KEY = "fingerprint-key-for-tests-0123456789"

INPUTS = {
    "account_information": [
        {"event_id": "a1", "uin": 100000009, "registered_at": "2026-11-01T08:00:00Z",
         "name": "Ada", "business_email": "ada@corp.example", "ip": "198.51.100.4"},
        {"event_id": "a2", "uin": "100000010", "registered_at": "2026-11-02T08:00:00Z",
         "name": "Bob"},
    ],
    "console_configuration": [
        {"event_id": "c1", "sdk_app_id": 1400000001, "uin": 100000009,
         "updated_at": 1795000000000, "application_name": "demo"},
        {"event_id": "c2", "sdk_app_id": 1400000002, "uin": 100000010,
         "updated_at": 1795000000000, "application_name": "old"},
        {"event_id": "c3", "sdk_app_id": 1400000003, "uin": 100000010,
         "updated_at": 1795000000000, "application_name": "third"},
        {"event_id": "c4", "sdk_app_id": 1400000004, "uin": 100000010,
         "updated_at": 1795000000000, "application_name": "kept"},
    ],
    "customer_temporary_key": [
        {"event_id": f"k{i}", "issued_at": "2026-11-03T00:00:00Z",
         "sdk_app_id": 1400000000 + i, "username": f"admin{i}", "private_key": f"PK-{i}"}
        for i in (1, 2, 3, 4)
    ],
    "customer_application_log": [
        {"event_id": eid, "sdk_app_id": str(app), "application_name": "x", "tag": "prod",
         "service_status": "running", "created_at": "2026-11-02T00:00:00", "operation": "create"}
        for eid, app in (("l1", 1400000001), ("l3", 1400000003), ("l3b", 1400000003),
                         ("l4", 1400000004))
    ],
}  # fmt: skip

ACCOUNT_DELETED = "2026-11-28T10:00:00Z"
TERMINATED = "2026-11-27T00:00:00Z"
TERMINATED_LONG_AGO = "2026-11-01T00:00:00Z"  # + 7 days is before the run time
OPTED_OUT = "2026-11-28T00:00:00Z"


def write_jsonl(path: Path, records: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records))
    return path


@pytest.fixture(scope="module")
def golden(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("lifecycle")
    out = tmp / "out"
    with pytest.MonkeyPatch.context() as env:
        env.setenv("TRTC_FINGERPRINT_KEY", KEY)
        for category, records in INPUTS.items():
            data = write_jsonl(tmp / f"{category}.jsonl", records)
            fmt = "both" if category == "account_information" else "parquet"
            ingest.run(
                [
                    f"--category={category}",
                    f"--input={data}",
                    f"--output={out}",
                    f"--format={fmt}",
                    *COMMON,
                ]
            )
    run_sample("visits", out)
    return out


def opted_out_email(root: Path) -> str:
    """The business e-mail with the most until-opt-out rows in the sample."""
    emails = collections.Counter(
        r["business_email"]
        for r in read_rows(root)["parquet"]
        if r["retention_rule"] == "until_opt_out" and r["business_email"]
    )
    return emails.most_common(1)[0][0]


def events(email: str) -> list:
    return [
        {"event": "account_deleted", "uin": 100000009, "at": ACCOUNT_DELETED},
        {"event": "service_terminated", "sdk_app_id": "1400000003", "at": TERMINATED},
        {"event": "service_terminated", "sdk_app_id": 1400000002, "at": TERMINATED_LONG_AGO},
        {"event": "marketing_opt_out", "business_email": f" {email.upper()} ", "at": OPTED_OUT},
    ]


MALFORMED = [
    {"event": "account_closed", "uin": 1, "at": ACCOUNT_DELETED},
    {"event": "account_deleted", "at": ACCOUNT_DELETED},
    {"event": "service_terminated", "sdk_app_id": 5, "at": "last tuesday"},
    '{"event": "account_deleted", "uin": ',
]


def expiry(event: str, category: str, at: str) -> int:
    cat = POLICY.category(category)
    return POLICY.lifecycle_events[event].expires_at(cat.retention, parse_event_time(at))


def strip(row: dict) -> dict:
    return {k: v for k, v in row.items() if k not in ("expires_at", "dir_expiry")}


def by_id(rows: list[dict]) -> dict[tuple[str, str], dict]:
    return {(r["data_category"], r["event_id"]): r for r in rows}


def data_state(root: Path) -> list[str]:
    """Every data row with the partition it is in (file names aside), in a stable order."""
    return sorted(
        json.dumps(r, sort_keys=True, default=str)
        for rows in read_rows(root).values()
        for r in rows
    )


def test_events_move_rows_delete_expired_ones_and_dead_letter_the_rest(out, tmp_path):
    email = opted_out_email(out)
    before = read_rows(out)
    feed = write_jsonl(tmp_path / "events.jsonl", [*events(email), *MALFORMED])
    report = lifecycle.run([f"--output={out}", f"--events={feed}", *COMMON])
    after = read_rows(out)

    moves = {
        (category, event_id): expiry(event, category, at)
        for category, event_id, event, at in (
            ("account_information", "a1", "account_deleted", ACCOUNT_DELETED),
            ("console_configuration", "c1", "account_deleted", ACCOUNT_DELETED),
            # the deleted account's application: its key and log end with the account's services
            ("customer_temporary_key", "k1", "service_terminated", ACCOUNT_DELETED),
            ("customer_application_log", "l1", "service_terminated", ACCOUNT_DELETED),
            ("console_configuration", "c3", "service_terminated", TERMINATED),
            ("customer_temporary_key", "k3", "service_terminated", TERMINATED),
            ("customer_application_log", "l3", "service_terminated", TERMINATED),
            ("customer_application_log", "l3b", "service_terminated", TERMINATED),
        )
    }
    opted = {
        ("corporate_visitor_info", r["event_id"])
        for r in before["parquet"]
        if r["retention_rule"] == "until_opt_out" and r["business_email"] == email
    }
    deleted = {("console_configuration", "c2"), ("customer_temporary_key", "k2")} | opted
    assert len(opted) >= 1

    for fmt in ("parquet", "avro"):
        old, new = by_id(before[fmt]), by_id(after[fmt])
        assert len(new) == len(after[fmt])  # no row is in two places
        assert set(new) == set(old) - deleted  # and none is lost
        for key, row in new.items():
            assert strip(row) == strip(old[key])  # every other column unchanged
            if key in moves:
                assert int(row["expires_at"].timestamp() * 1_000_000) == moves[key]
                assert row["dir_expiry"] == utc_date(moves[key])
            else:
                assert row["expires_at"] == old[key]["expires_at"]
                assert row["dir_expiry"] == old[key]["dir_expiry"]
    assert ("account_information", "a1") in by_id(after["avro"])
    untouched = {("account_information", "a2"), ("console_configuration", "c4"),
                 ("customer_temporary_key", "k4"), ("customer_application_log", "l4")}  # fmt: skip
    for key in untouched:
        assert by_id(after["parquet"])[key]["dir_expiry"] == HIVE_NULL_PARTITION

    letters = {d["error"] for d in dead_letters(out, "lifecycle")}
    assert letters == {
        "unknown_event",
        "missing_field:uin",
        "malformed_timestamp:at",
        "invalid_json",
    }
    counts = report["counts"]
    assert counts["events_read"] == 8 and counts["derived_app_events"] == 1
    assert counts["events_valid"] == {
        "account_deleted": 1,
        "marketing_opt_out": 1,
        "service_terminated": 2,
    }
    assert counts["rows_moved"] == {
        "account_information": 2,  # Parquet and Avro
        "console_configuration": 2,
        "customer_application_log": 3,
        "customer_temporary_key": 2,
    }
    assert counts["rows_deleted_expired"] == {
        "console_configuration": 1,
        "corporate_visitor_info": len(opted),
        "customer_temporary_key": 1,
    }
    assert report["policy_version"] == POLICY.version
    assert json.loads(Path(report["report_path"]).read_text())["files"] == report["files"]
    assert not (out / "_retention").exists()


def test_the_next_purge_deletes_moved_rows_on_their_day(out, tmp_path):
    feed = write_jsonl(tmp_path / "e.jsonl", events(opted_out_email(out))[:1])
    lifecycle.run([f"--output={out}", f"--events={feed}", *COMMON])
    a1 = expiry("account_deleted", "account_information", ACCOUNT_DELETED)
    c1 = expiry("account_deleted", "console_configuration", ACCOUNT_DELETED)

    def present() -> set[str]:
        return {r["event_id"] for r in read_rows(out)["parquet"]} & {"a1", "c1", "k1", "l1", "a2"}

    purge.run([f"--output={out}", f"--now={format_utc(c1)}"])  # the day c1 expires: kept
    assert present() == {"a1", "c1", "k1", "l1", "a2"}
    purge.run([f"--output={out}", f"--now={format_utc(c1 + 86_400_000_000)}"])
    assert present() == {"a1", "a2"}
    purge.run([f"--output={out}", f"--now={format_utc(a1)}"])
    assert present() == {"a1", "a2"}
    purge.run([f"--output={out}", f"--now={format_utc(a1 + 86_400_000_000)}"])
    assert present() == {"a2"}  # the other account is open-ended: never purged


def test_rerunning_the_same_events_is_a_no_op(out, tmp_path):
    feed = write_jsonl(tmp_path / "e.jsonl", events(opted_out_email(out)))
    lifecycle.run([f"--output={out}", f"--events={feed}", *COMMON])
    first = {p: p.read_bytes() for p in out.glob("data_category=*/*/*")}
    report = lifecycle.run([f"--output={out}", f"--events={feed}", *COMMON])
    assert {p: p.read_bytes() for p in out.glob("data_category=*/*/*")} == first
    assert report["counts"]["rows_moved"] == {} and report["files"]["added"] == []


@pytest.fixture(scope="module")
def feed_and_reference(golden, tmp_path_factory) -> tuple[Path, Path]:
    """The events of the crash tests, and the state an uninterrupted run leaves."""
    tmp = tmp_path_factory.mktemp("reference")
    feed = write_jsonl(tmp / "e.jsonl", [*events(opted_out_email(golden)), MALFORMED[0]])
    reference = tmp / "out"
    shutil.copytree(golden, reference)
    lifecycle.run([f"--output={reference}", f"--events={feed}", *COMMON])
    return feed, reference


@pytest.mark.parametrize("failpoint", ["before_commit", "apply:4"])
def test_killed_lifecycle_and_rerun_end_in_the_right_state(
    out, golden, feed_and_reference, failpoint
):
    feed, reference = feed_and_reference
    env = {**os.environ, FAILPOINT_ENV: failpoint}
    killed = subprocess.run(
        [
            sys.executable,
            "-m",
            "pipelines.lifecycle",
            f"--output={out}",
            f"--events={feed}",
            *COMMON,
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert killed.returncode == -9, killed.stderr[-3000:]
    if failpoint == "before_commit":  # staged, not committed: the old state, untouched
        assert data_state(out) == data_state(golden)
    else:  # committed, half applied: moved rows may be visible twice, none is missing
        assert {json.loads(r)["event_id"] for r in data_state(out)} >= {
            json.loads(r)["event_id"] for r in data_state(reference)
        }
    rerun = lifecycle.run([f"--output={out}", f"--events={feed}", *COMMON])
    (recovered,) = rerun["recovered_transactions"]
    assert recovered["outcome"] == (
        "rolled_back" if failpoint == "before_commit" else "rolled_forward"
    )
    assert data_state(out) == data_state(reference)
    # the killed run's dead letter is part of what it committed; the rerun reports its own
    assert [d["error"] for d in dead_letters(out, "lifecycle")] == ["unknown_event"] * (
        1 if failpoint == "before_commit" else 2
    )
    assert not (out / "_retention").exists()
    assert not list(out.rglob(".temp-*"))


def test_configuration_errors_stop_before_anything_is_touched(out, tmp_path):
    before = data_state(out)
    with pytest.raises(SystemExit, match="--events: no file matches"):
        lifecycle.main([f"--output={out}", f"--events={tmp_path / 'none-*.jsonl'}", *COMMON])
    with pytest.raises(SystemExit, match="--events is required"):
        lifecycle.main([f"--output={out}", *COMMON])
    assert data_state(out) == before and not (out / "_retention").exists()

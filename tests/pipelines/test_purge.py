"""End to end: ``python -m pipelines.purge`` on outputs the ingestion pipelines really wrote.

The sample of every source is ingested once (in process, FnApiRunner); each test purges a copy.
The interrupted purge is a real process killed with SIGKILL at a fail point of the journal.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from pipelines import purge
from schemas.arrow import arrow_schema
from schemas.avro import category_columns, output_schema
from schemas.policy import load_policy
from tests.support.outputs import read_rows, run_sample
from transforms.retention.txn import FAILPOINT_ENV
from transforms.sinks import (
    HIVE_NULL_PARTITION,
    OPEN_ENDED_EXPIRY_DATE,
    JsonLinesSink,
    ParquetSink,
    dead_letter_path,
    partition_path,
)
from transforms.tag import tag_row
from transforms.timestamps import format_utc, parse_event_time, utc_date

pytestmark = pytest.mark.e2e
POLICY = load_policy()


@pytest.fixture(scope="module")
def golden(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("purge") / "out"
    run_sample("sdk_logs", out)
    run_sample("telemetry", out)
    run_sample("visits", out)
    return out


def inventory(root: Path, *, reports: bool = False) -> dict[str, str]:
    """Every file under ``root`` with a hash of its bytes (``_reports/`` only if asked)."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file() and (reports or not str(p.relative_to(root)).startswith("_reports"))
    }


def letters(root: Path) -> list[tuple[str, str]]:
    """Every dead letter as (partition expiry, line)."""
    return sorted(
        (p.parent.name.split("=", 1)[1], line)
        for p in root.glob("_dead_letter/source=*/expiry_date=*/*.jsonl")
        for line in p.read_text().splitlines()
    )


def unexpired(rows: list[dict], today: str) -> list[dict]:
    """The rows a purge on ``today`` keeps: open-ended, or expiring after that date."""
    return [r for r in rows if r["dir_expiry"] == OPEN_ENDED_EXPIRY_DATE or r["dir_expiry"] > today]


def key(row: dict) -> str:
    return json.dumps(row, sort_keys=True, default=str)


def audits(root: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(root.glob("_reports/purge-*.json"))]


def run_cli(*args: str, failpoint: str | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ}
    env.pop(FAILPOINT_ENV, None)
    if failpoint:
        env[FAILPOINT_ENV] = failpoint
    return subprocess.run(
        [sys.executable, "-m", "pipelines.purge", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )


@pytest.mark.parametrize(
    "now",
    [
        "2026-11-30T00:00:00Z",  # before anything expires
        "2026-12-10T23:59:59+08:00",  # 15:59 UTC: the UTC date decides, not the local one
        "2026-12-13T00:00:00Z",  # dead letters (2026-12-13) go on their date
        "2027-04-10T12:00:00Z",  # half of the visits
        "2030-01-01T00:00:00Z",  # everything with a date
    ],
)
def test_purge_leaves_exactly_the_unexpired_rows(out, now):
    before, letters_before = read_rows(out)["parquet"], letters(out)
    today = utc_date(parse_event_time(now))
    dated = [
        str(p.relative_to(out))
        for p in [*out.glob("data_category=*/expiry_date=*"), *out.glob("_dead_letter/*/*")]
        if p.name != f"expiry_date={OPEN_ENDED_EXPIRY_DATE}"
    ]
    report = purge.run([f"--output={out}", f"--now={now}"])
    after = read_rows(out)["parquet"]
    assert sorted(map(key, after)) == sorted(map(key, unexpired(before, today)))
    for row in after:  # and by the rows' own expiry, not only by their directory
        assert row["expires_at"] is None or row["expires_at"].date().isoformat() > today
    assert letters(out) == [(d, line) for d, line in letters_before if d > today]
    assert {p["partition"] for p in report["partitions"]} == {
        d for d in dated if d.rsplit("=", 1)[1] <= today
    }
    for rel_dir in dated:  # a deleted partition leaves no empty directory behind
        assert (out / rel_dir).exists() == (rel_dir.rsplit("=", 1)[1] > today)
    assert report["deletes_expiry_dates_on_or_before"] == today
    (audit,) = audits(out)
    assert audit["policy_version"] == POLICY.version and audit["now"] == report["now"]
    assert audit["counts"]["files"] == sum(len(p["targets"]) for p in audit["partitions"])
    assert not (out / "_retention").exists()


@pytest.mark.parametrize("now", ["2030-01-01T00:00:00Z", "9999-12-31T23:59:59Z"])
def test_open_ended_partitions_are_never_due_whatever_the_date(out, now):
    """Open-ended rows are in ``expiry_date=9999-12-31``, and in outputs written before that,
    in Hive's null partition: the purge deletes neither, not even on 9999-12-31 itself (they
    are never due by rule, not by a date comparison), and deletes every dated one."""
    category = out / "data_category=corporate_visitor_info"
    current = category / f"expiry_date={OPEN_ENDED_EXPIRY_DATE}"
    assert list(current.glob("*.parquet")), "the sample has visitors kept until opt-out"
    # an older output's open-ended partition: the same kind of files under Hive's null name
    shutil.copytree(current, category / f"expiry_date={HIVE_NULL_PARTITION}")
    open_ended = {
        rel: digest
        for rel, digest in inventory(out).items()
        if f"/expiry_date={OPEN_ENDED_EXPIRY_DATE}/" in rel
        or f"/expiry_date={HIVE_NULL_PARTITION}/" in rel
    }
    assert {rel.split("/")[1] for rel in open_ended} == {
        f"expiry_date={OPEN_ENDED_EXPIRY_DATE}",
        f"expiry_date={HIVE_NULL_PARTITION}",
    }
    report = purge.run([f"--output={out}", f"--now={now}"])
    left = {
        rel: digest
        for rel, digest in inventory(out).items()
        if rel.startswith(("data_category=", "_dead_letter/"))
    }
    assert left == open_ended  # byte for byte; everything dated is gone
    assert report["partitions"] and all(
        p["expiry_date"] not in (OPEN_ENDED_EXPIRY_DATE, HIVE_NULL_PARTITION)
        for p in report["partitions"]
    )
    assert report["unrecognised_partitions"] == []  # both are known, as open-ended


def test_a_daily_purge_at_midnight_never_keeps_a_row_past_its_expiry(out):
    """ "Within N days" is at most N days: a purge at 00:00 UTC leaves only rows that expire at
    or after the next midnight, so run daily it never keeps a row past its ``expires_at``.

    Between two expiry dates a daily purge deletes nothing, so the purge on each expiry date is
    checked: what it keeps must all expire at or after the midnight that ends that date."""
    rows, dead = read_rows(out)["parquet"], letters(out)
    dates = sorted(
        {r["dir_expiry"] for r in rows} - {OPEN_ENDED_EXPIRY_DATE} | {d for d, _ in dead}
    )
    for date in dates:
        purge.run([f"--output={out}", f"--now={date}T00:00:00Z"])
        next_run = dt.datetime.fromisoformat(f"{date}T00:00:00+00:00") + dt.timedelta(days=1)
        kept = read_rows(out)["parquet"]
        assert all(r["expires_at"] is None or r["expires_at"] >= next_run for r in kept), date
        assert all(d > date for d, _ in letters(out)), date
    assert {r["event_id"] for r in read_rows(out)["parquet"]} == {
        r["event_id"] for r in rows if r["expires_at"] is None
    }


def test_dry_run_lists_and_changes_nothing(out):
    before = inventory(out, reports=True)
    report = purge.run([f"--output={out}", "--now=2027-04-01T00:00:00Z", "--dry_run"])
    assert report["dry_run"] and report["counts"]["partitions"] > 0
    assert inventory(out, reports=True) == before
    done = run_cli(f"--output={out}", "--now=2027-04-01T00:00:00Z", "--dry_run")
    assert done.returncode == 0, done.stderr[-2000:]
    assert "would delete" in done.stdout
    assert "data_category=sdk_log/expiry_date=2026-12-05" in done.stdout
    assert inventory(out, reports=True) == before


def test_second_run_is_a_no_op(out):
    purge.run([f"--output={out}", "--now=2027-04-01T00:00:00Z"])
    first = inventory(out)
    report = purge.run([f"--output={out}", "--now=2027-04-01T00:00:00Z"])
    assert inventory(out) == first
    assert report["counts"] == {"partitions": 0, "files": 0, "bytes": 0, "files_by": {}}


KILL_NOW = "2027-04-10T00:00:00Z"


@pytest.fixture(scope="module")
def reference(golden, tmp_path_factory) -> Path:
    """The state an uninterrupted purge at ``KILL_NOW`` leaves."""
    ref = tmp_path_factory.mktemp("reference") / "out"
    shutil.copytree(golden, ref)
    purge.run([f"--output={ref}", f"--now={KILL_NOW}"])
    return ref


@pytest.mark.parametrize("failpoint", ["before_commit", "apply:3"])
def test_killed_purge_and_rerun_end_in_the_right_state(out, golden, reference, failpoint):
    now = KILL_NOW
    killed = run_cli(f"--output={out}", f"--now={now}", failpoint=failpoint)
    assert killed.returncode == -9, killed.stderr[-2000:]
    assert (out / "_retention" / "lock.json").exists()  # died holding the lock
    if failpoint == "apply:3":  # mid-way: some partitions gone, not all
        assert inventory(reference) != inventory(out) != inventory(golden)

    rerun = purge.run([f"--output={out}", f"--now={now}"])
    assert inventory(out) == inventory(reference)
    assert sorted(map(key, read_rows(out)["parquet"])) == sorted(
        map(key, read_rows(reference)["parquet"])
    )
    assert not (out / "_retention").exists()
    if failpoint == "before_commit":  # nothing was committed: nothing to recover
        assert rerun["recovered_transactions"] == []
        assert rerun["counts"] == audits(reference)[0]["counts"]
    else:  # the killed run's deletions are audited, by the run that finished them
        (recovered,) = rerun["recovered_transactions"]
        assert recovered["outcome"] == "rolled_forward"
        killed_audit = json.loads(Path(recovered["audit"]).read_text())
        assert killed_audit["recovered"] and killed_audit["recovered_by"] == rerun["run_id"]
        assert (
            killed_audit["counts"]
            == json.loads(next(reference.glob("_reports/purge-*.json")).read_text())["counts"]
        )
        assert rerun["counts"]["partitions"] == 0


def test_never_touches_anything_outside_the_layout(out):
    foreign = {
        "notes.txt": b"mine",
        "data_category=sdk_log/expiry_date=garbage/part-x.bin": b"?",
        "data_category=sdk_log/expiry_date=2026-13-01/part-x.bin": b"?",
        ".temp-abc/data_category=sdk_log/expiry_date=2000-01-01/part-x.parquet": b"t",
        "_reports/other.json": b"{}",
        "exports/data_category=x/expiry_date=2000-01-01/f.parquet": b"e",
    }
    for rel, data in foreign.items():
        (out / rel).parent.mkdir(parents=True, exist_ok=True)
        (out / rel).write_bytes(data)
    null_before = {r["event_id"] for r in read_rows(out)["parquet"] if r["expires_at"] is None}
    report = purge.run([f"--output={out}", "--now=2100-01-01T00:00:00Z"])
    for rel, data in foreign.items():
        assert (out / rel).read_bytes() == data, rel
    rows = read_rows(out)["parquet"]
    assert null_before and {r["event_id"] for r in rows} == null_before
    assert report["unrecognised_partitions"] == [
        "data_category=sdk_log/expiry_date=2026-13-01",
        "data_category=sdk_log/expiry_date=garbage",
    ]


def test_refuses_a_directory_that_is_not_an_output_root(tmp_path):
    victim = tmp_path / "home"
    (victim / "photos").mkdir(parents=True)
    (victim / "photos" / "cat.jpg").write_bytes(b"meow")
    with pytest.raises(SystemExit, match="does not look like an output root"):
        purge.main([f"--output={victim}", "--now=2100-01-01T00:00:00Z"])
    assert (victim / "photos" / "cat.jpg").read_bytes() == b"meow"
    with pytest.raises(SystemExit, match="--now"):
        purge.main([f"--output={victim}", "--now=tomorrow"])


# --------------------------------------------------- property: any layout, any reference time

DAY_US = 86_400_000_000
T0 = parse_event_time("2026-11-01T00:00:00Z")
SDK_LOG = POLICY.category("sdk_log")
COLUMNS = category_columns("sdk_log")
SCHEMA = arrow_schema(output_schema("sdk_log"))


def _write(root: Path, rel: str, sink, rows: list[dict]) -> None:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as fh:
        sink.open(fh)
        for row in rows:
            sink.write(row)
        sink.flush()


@settings(
    max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    offsets=st.lists(st.integers(0, 40 * DAY_US), min_size=1, max_size=25),
    letter_days=st.lists(st.one_of(st.none(), st.integers(0, 40)), max_size=6),
    now_offset=st.integers(0, 60 * DAY_US),
)
# a purge on the very day a row and a dead letter expire (later that day): they go
@example(offsets=[DAY_US // 2], letter_days=[14], now_offset=14 * DAY_US)
def test_purge_keeps_exactly_rows_expiring_after_today(
    tmp_path_factory, offsets, letter_days, now_offset
):
    root = tmp_path_factory.mktemp("prop")
    rows = [
        tag_row(
            {"event_id": f"e{i}", "logged_at": T0 + off, "sdk_app_id": "1"},
            SDK_LOG,
            COLUMNS,
            POLICY.version,
        )
        for i, off in enumerate(offsets)
    ]
    by_partition: dict[str, list[dict]] = {}
    for row in rows:
        by_partition.setdefault(partition_path("sdk_log", row["expires_at"]), []).append(row)
    for rel_dir, part in by_partition.items():
        _write(root, f"{rel_dir}/part-0.parquet", ParquetSink(SCHEMA), part)
    dead = [
        {
            "source": "s",
            "error": f"e{i}",
            "raw": "r",
            "expires_at": None if d is None else T0 + d * DAY_US,
        }
        for i, d in enumerate(letter_days)
    ]
    for i, letter in enumerate(dead):
        _write(
            root,
            f"{dead_letter_path('s', letter['expires_at'])}/p{i}.jsonl",
            JsonLinesSink(),
            [letter],
        )
    now = T0 + now_offset
    today = utc_date(now)

    purge.run([f"--output={root}", f"--now={format_utc(now)}"])

    kept = {r["event_id"] for r in read_rows(root)["parquet"]}
    assert kept == {r["event_id"] for r in rows if utc_date(r["expires_at"]) > today}
    kept_letters = {json.loads(line)["error"] for _, line in letters(root)}
    assert kept_letters == {
        d["error"] for d in dead if d["expires_at"] is None or utc_date(d["expires_at"]) > today
    }

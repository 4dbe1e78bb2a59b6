"""The commit of an ingestion run and the sweep of killed runs, on real files in a temp root."""

from __future__ import annotations

import datetime as dt
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import apache_beam as beam
import pyarrow as pa
import pytest
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to

from pipelines.runs import begin_attempt, check_run_id
from schemas.arrow import arrow_schema
from transforms.commit import (
    STALE_AFTER,
    CommitRun,
    RunBusyError,
    RunStaging,
    attempt_state,
    commit_run,
    file_token,
    sweep,
)
from transforms.sinks import WriteTables, storage
from transforms.sinks.marker import LAYOUT_MARKER, layout_of_root
from transforms.sinks.storage import HiveLayout, LayoutError

SCHEMA = {
    "type": "record",
    "name": "visit",
    "fields": [
        {"name": "event_id", "type": "string"},
        {"name": "data_category", "type": "string"},
        {
            "name": "expires_at",
            "type": ["null", {"type": "long", "logicalType": "timestamp-micros"}],
        },
    ],
}
DAY = 86_400_000_000


def dead_pid() -> int:
    """The pid of a process that has exited."""
    done = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True
    )
    return int(done.stdout)


def record(staging: RunStaging, **attempt) -> None:
    staging.write_record(
        {"pipeline": staging.pipeline, "run_id": staging.run_id, "attempts": [attempt]}
    )


def stage(staging: RunStaging, rel: str, content: bytes = b"x") -> str:
    path = Path(staging.staged_root) / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    return str(path)


def test_file_token_is_the_run_id_of_a_sinks_file():
    assert file_token("part-00000-of-00001-6c64d6b0e8c83239.parquet") == "6c64d6b0e8c83239"
    assert file_token("part-00002-of-00004-run_1.a.jsonl") == "run_1.a"
    assert file_token("notes.txt") is None


@pytest.mark.parametrize("bad", ["", "a/b", "a-b", "x" * 65, "../up", "a b"])
def test_run_ids_that_cannot_name_a_file_are_refused(bad):
    with pytest.raises(ValueError, match="--run_id"):
        check_run_id(bad)


def test_attempt_state_of_this_hosts_processes_and_of_others():
    now = dt.datetime.now(dt.UTC)
    here = socket.gethostname()
    recent = now.isoformat()
    old = (now - STALE_AFTER - dt.timedelta(hours=1)).isoformat()
    assert (
        attempt_state({"attempts": [{"host": here, "pid": os.getpid(), "waits": True}]}, now)
        == "live"
    )
    assert (
        attempt_state({"attempts": [{"host": here, "pid": dead_pid(), "waits": True}]}, now)
        == "dead"
    )
    other = {"host": "elsewhere", "pid": 1, "waits": True}
    assert attempt_state({"attempts": [{**other, "started_at": recent}]}, now) == "unknown"
    assert attempt_state({"attempts": [{**other, "started_at": old}]}, now) == "dead"
    template = {"host": here, "pid": dead_pid(), "waits": False, "started_at": recent}
    assert attempt_state({"attempts": [template]}, now) == "unknown"
    assert attempt_state(None, now) == "dead"


def test_commit_adds_replaces_and_deletes_the_runs_files(tmp_path):
    root = str(tmp_path)
    staging = RunStaging(root, "visits", "r1")
    old_kept = (
        tmp_path / "data_category=visit/expiry_date=2027-01-01/part-00000-of-00001-r1.parquet"
    )
    old_gone = (
        tmp_path / "data_category=visit/expiry_date=2027-01-02/part-00000-of-00001-r1.parquet"
    )
    other_run = (
        tmp_path / "data_category=visit/expiry_date=2027-01-02/part-00000-of-00001-r0.parquet"
    )
    other_category = (
        tmp_path / "data_category=log/expiry_date=2027-01-02/part-00000-of-00001-r1.parquet"
    )
    for path in (old_kept, old_gone, other_run, other_category):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"old")
    written = [
        stage(
            staging,
            "data_category=visit/expiry_date=2027-01-01/part-00000-of-00001-r1.parquet",
            b"new",
        ),
        stage(
            staging,
            "data_category=visit/expiry_date=2027-01-03/part-00000-of-00001-r1.parquet",
            b"new",
        ),
        stage(
            staging,
            "_dead_letter/source=visits/expiry_date=2026-12-20/part-00000-of-00001-r1.jsonl",
        ),
    ]
    record(staging, host="h", pid=1, waits=True)
    summary = commit_run(staging, written, {"data": ["visit"], "dead_letter": ["visits"]})
    assert summary == {"files": 3, "replaced_files": 2}
    assert old_kept.read_bytes() == b"new"
    assert not old_gone.exists()
    assert other_run.read_bytes() == b"old"  # another run's file is not this run's to replace
    assert other_category.read_bytes() == b"old"  # nor is a category this pipeline does not write
    assert (tmp_path / "data_category=visit/expiry_date=2027-01-03").is_dir()
    assert not Path(staging.dir).exists()
    assert staging.read_record()["state"] == "committed"


def test_commit_refuses_a_file_written_outside_the_staging(tmp_path):
    staging = RunStaging(str(tmp_path), "visits", "r1")
    with pytest.raises(ValueError, match="staging"):
        commit_run(staging, [str(tmp_path / "elsewhere.parquet")], {"data": ["visit"]})


def test_commit_run_waits_for_every_sink_and_commits_once(tmp_path):
    staging = RunStaging(str(tmp_path), "visits", "r2")
    record(staging, host="h", pid=1, waits=True)
    table = pa.table(
        {
            "event_id": ["a", "b"],
            "data_category": ["visit"] * 2,
            "expires_at": pa.array([DAY * 20_000, None], pa.timestamp("us", tz="UTC")),
        },
        schema=arrow_schema(SCHEMA),
    )
    tables = [("visit", table)]
    with TestPipeline(runner="FnApiRunner") as p:
        first = (
            p
            | "A" >> beam.Create(tables)
            | "WriteA"
            >> WriteTables(
                staging.staged_root, {"visit": SCHEMA}, run_token="r2", remove_temp=False
            )
        )
        empty = p | "B" >> beam.Create([]).with_output_types(tuple[str, pa.Table])
        second = empty | "WriteB" >> WriteTables(
            staging.staged_root, {"visit": SCHEMA}, run_token="r2", remove_temp=False
        )
        summaries = (first, second) | CommitRun(staging, {"data": ["visit"]})
        assert_that(summaries, equal_to([{"files": 2, "replaced_files": 0}]))
    names = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*.parquet"))
    assert names == [
        "data_category=visit/expiry_date=2024-10-04/part-00000-of-00001-r2.parquet",
        "data_category=visit/expiry_date=9999-12-31/part-00000-of-00001-r2.parquet",
    ]
    assert not Path(staging.dir).exists()  # temp files included


def test_sweep_removes_killed_runs_and_keeps_live_ones(tmp_path):
    root = str(tmp_path)
    now = dt.datetime.now(dt.UTC)
    here = socket.gethostname()
    killed = RunStaging(root, "visits", "killed")
    live = RunStaging(root, "visits", "live")
    remote = RunStaging(root, "sdk_logs", "remote")
    stale = RunStaging(root, "sdk_logs", "stale")
    record(killed, host=here, pid=dead_pid(), waits=True)
    record(live, host=here, pid=os.getpid(), waits=True)
    record(remote, host="elsewhere", pid=1, waits=True, started_at=now.isoformat())
    old = (now - STALE_AFTER - dt.timedelta(minutes=1)).isoformat()
    record(stale, host="elsewhere", pid=1, waits=True, started_at=old)
    for staging in (killed, live, remote, stale):
        stage(staging, "data_category=visit/expiry_date=2027-01-01/part-00000-of-00001-x.parquet")
    done = sweep(root)
    assert sorted((d["run"], d["outcome"]) for d in done) == [
        ("sdk_logs-stale", "removed"),
        ("visits-killed", "removed"),
    ]
    assert Path(live.dir).exists() and Path(remote.dir).exists()
    assert not list(tmp_path.glob("data_category=*"))  # nothing of them became visible


def test_sweep_rolls_a_committed_run_forward(tmp_path):
    staging = RunStaging(str(tmp_path), "visits", "r3")
    record(
        staging, host="elsewhere", pid=1, waits=True, started_at=dt.datetime.now(dt.UTC).isoformat()
    )
    rel = "data_category=visit/expiry_date=2027-01-01/part-00000-of-00001-r3.parquet"
    stage(staging, rel)
    txn = staging.transaction()
    txn.commit(
        {
            "pipeline": "visits",
            "actions": [{"op": "add", "target": rel, "staged": txn.staged_rel(rel)}],
        }
    )
    assert sweep(str(tmp_path)) == [{"run": "visits-r3", "outcome": "rolled_forward"}]
    assert (tmp_path / rel).read_bytes() == b"x"
    assert json.loads(Path(staging.record_path).read_text())["state"] == "committed"


def test_an_attempt_is_refused_while_another_live_one_writes_the_run(tmp_path):
    staging = RunStaging(str(tmp_path), "visits", "busy")
    record(staging, host=socket.gethostname(), pid=os.getpid(), waits=True)
    stage(staging, "data_category=visit/expiry_date=2027-01-01/part-00000-of-00001-busy.parquet")
    with pytest.raises(RunBusyError, match="already running"):
        begin_attempt(staging, 0, waits=True)


def test_an_attempt_after_a_killed_one_keeps_its_record_and_clears_its_staging(tmp_path):
    staging = RunStaging(str(tmp_path), "visits", "again")
    record(staging, host=socket.gethostname(), pid=dead_pid(), waits=True)
    stage(staging, "data_category=visit/expiry_date=2027-01-01/part-00000-of-00001-again.parquet")
    attempt = begin_attempt(staging, 5 * DAY, waits=True)
    assert (attempt.number, attempt.replaces) == (2, "killed")
    assert not Path(staging.staged_root).exists()
    saved = staging.read_record()
    assert saved["run_time"] == "1970-01-06T00:00:00Z" and len(saved["attempts"]) == 2


def test_a_run_is_the_same_however_its_paths_are_spelt(tmp_path, monkeypatch):
    from apache_beam.io.filesystems import FileSystems
    from apache_beam.options.pipeline_options import PipelineOptions

    from pipelines.launch import input_pattern
    from pipelines.options import IngestOptions, JobOptions
    from pipelines.runs import run_identity

    (tmp_path / "in.jsonl").write_text("{}\n")
    monkeypatch.chdir(tmp_path)

    def identity(*argv: str) -> str:
        options = PipelineOptions(list(argv))
        (inputs,) = FileSystems.match([input_pattern(options.view_as(IngestOptions).input)])
        return run_identity(
            options,
            pipeline="visits",
            policy_version="v1",
            inputs=inputs.metadata_list,
            option_classes=(JobOptions, IngestOptions),
        )

    spellings = {
        identity(f"--input={i}", f"--output={o}")
        for i in ("in.jsonl", "./in.jsonl", str(tmp_path / "in.jsonl"), "*.jsonl")
        for o in ("out", "out/", "./out", str(tmp_path / "out"))
    }
    assert len(spellings) == 1
    assert identity("--input=in.jsonl", "--format=avro") not in spellings  # what it writes


# ------------------------------------------------------------------ the root's storage layout

PART = "data_category=visit/expiry_date=2027-01-01/part-00000-of-00001-{}.parquet"


class _Copy(HiveLayout):
    """A layout other than Hive's by name (its paths do not matter to the commit)."""

    name = "hive_copy"


@pytest.fixture
def other_layout():
    try:
        yield storage.register(_Copy())
    finally:
        storage.unregister(_Copy.name)


def test_a_hive_commit_writes_no_marker(tmp_path):
    staging = RunStaging(str(tmp_path), "visits", "r1")
    commit_run(staging, [stage(staging, PART.format("r1"))], {"data": ["visit"]})
    assert (tmp_path / PART.format("r1")).exists()
    assert not (tmp_path / LAYOUT_MARKER).exists()  # the output a hive run always wrote


def test_the_commit_records_its_layout_and_refuses_another(tmp_path, other_layout):
    root = str(tmp_path)
    first = RunStaging(root, "visits", "r1", other_layout)
    commit_run(first, [stage(first, PART.format("r1"))], {"data": ["visit"]})
    assert json.loads((tmp_path / LAYOUT_MARKER).read_text()) == {"layout": "hive_copy"}
    assert layout_of_root(root) == other_layout

    second = RunStaging(root, "visits", "r2")  # hive, into the hive_copy root
    with pytest.raises(LayoutError, match="written in the hive_copy layout"):
        commit_run(second, [stage(second, PART.format("r2"))], {"data": ["visit"]})
    assert not Path(second.transaction().commit_path).exists()  # refused before committing
    assert not (tmp_path / PART.format("r2")).exists()


def test_a_commit_rolled_forward_records_its_layout(tmp_path, other_layout):
    staging = RunStaging(str(tmp_path), "visits", "r1", other_layout)
    rel = PART.format("r1")
    stage(staging, rel)
    txn = staging.transaction()
    txn.commit(
        {"layout": other_layout.name, "actions": [{"op": "add", "target": rel,
                                                   "staged": txn.staged_rel(rel)}]}
    )  # fmt: skip
    assert [d["outcome"] for d in sweep(str(tmp_path))] == ["rolled_forward"]
    assert (tmp_path / rel).exists()
    assert json.loads((tmp_path / LAYOUT_MARKER).read_text()) == {"layout": "hive_copy"}

"""Exactly-once runs: a rerun replaces, a killed run shows nothing, the next job clears it.

The runs are real ``python -m pipelines.visits`` processes on ~12,000 visits (the bundled sample,
copied with distinct ids), killed with SIGKILL (the whole process group, as a lost VM) at random
points and at the commit's fail points, then run again with the same command. The rerun must
leave exactly what one uninterrupted run leaves, read back row by row.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from pipelines import erase, purge, sdk_logs
from pipelines.options import bundled
from tests.support.outputs import RUN_TIME, read_rows
from transforms.commit import RUNS_DIR, file_token
from transforms.retention.txn import FAILPOINT_ENV

pytestmark = pytest.mark.e2e

COPIES = 40
# The sample's month of visits at the sample's run time, whatever day the test runs.
WINDOW = ("--max_clock_skew=60d", "--max_dead_letter_ratio=1")


@pytest.fixture(scope="module")
def visits_input(tmp_path_factory) -> Path:
    """The bundled visits sample, ``COPIES`` times, every copy with its own event ids."""
    lines = Path(bundled("sample/visits.jsonl")).read_bytes().splitlines()
    out = tmp_path_factory.mktemp("input") / "visits.jsonl"
    with out.open("wb") as fh:
        for copy in range(COPIES):
            for line in lines:
                try:
                    record = json.loads(line)
                except ValueError:
                    fh.write(line + b"\n")  # the sample's bad lines stay bad
                    continue
                if isinstance(record, dict) and isinstance(record.get("event_id"), str):
                    record["event_id"] = f"{record['event_id']}-{copy}"
                fh.write(json.dumps(record).encode() + b"\n")
    return out


def command(input_path: Path, out: Path, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "pipelines.visits",
        f"--input={input_path}",
        f"--output={out}",
        f"--enrichment_snapshot={bundled('sample/arounddeal_snapshot.csv')}",
        *WINDOW,
        *extra,
    ]


def run_to_end(args: list[str], env: dict | None = None) -> subprocess.CompletedProcess:
    done = subprocess.run(args, capture_output=True, text=True, timeout=600, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def killed(args: list[str], *, after: float | None = None, failpoint: str | None = None) -> None:
    """Start the run and SIGKILL its process group ``after`` seconds, or let the fail point
    kill it."""
    env = {**os.environ, FAILPOINT_ENV: failpoint} if failpoint else None
    proc = subprocess.Popen(
        args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, start_new_session=True
    )
    try:
        proc.wait(timeout=after if after is not None else 600)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def snapshot(out: Path) -> dict:
    """What a reader sees: every row (by category, without the file it came from), every dead
    letter, and no staging or temp file anywhere."""
    rows = read_rows(out)["parquet"]
    by_category: dict[str, Counter] = {}
    for row in rows:
        key = json.dumps(row, sort_keys=True, default=str)
        by_category.setdefault(row["data_category"], Counter())[key] += 1
    letters = Counter(
        line
        for path in out.glob("_dead_letter/source=*/*/*.jsonl")
        for line in path.read_text().splitlines()
    )
    return {"rows": by_category, "dead_letters": letters}


def leftovers(out: Path) -> list[str]:
    """Staging folders and temp files still under the root after a run finished."""
    runs = out / RUNS_DIR
    staged = [p.name for p in runs.iterdir() if p.is_dir()] if runs.exists() else []
    temps = [str(p) for p in out.rglob(".temp-*")]
    return staged + temps


@pytest.fixture(scope="module")
def reference(visits_input, tmp_path_factory) -> dict:
    """One uninterrupted run at the pinned run time."""
    out = tmp_path_factory.mktemp("reference") / "out"
    run_to_end(command(visits_input, out, f"--run_time={RUN_TIME}"))
    expected = snapshot(out)
    assert sum(sum(c.values()) for c in expected["rows"].values()) > 10_000
    return expected


def test_a_rerun_replaces_the_run_it_repeats(visits_input, reference, tmp_path):
    out = tmp_path / "out"
    args = command(visits_input, out, f"--run_time={RUN_TIME}")
    run_to_end(args)
    second = run_to_end(args)
    assert snapshot(out) == reference
    assert "attempt 2: replaced the committed earlier attempt" in second.stdout
    (report_path,) = out.glob("_reports/visits-*.json")
    report = json.loads(report_path.read_text())
    assert report["attempt"] == {
        "number": 2,
        "replaced": True,
        "previous_attempt": "committed",
        "previous_run_time": RUN_TIME,
    }
    assert report["commit"]["replaced_files"] == report["commit"]["files"] > 0
    assert leftovers(out) == []


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_a_run_killed_at_a_random_point_and_rerun_is_one_run(
    visits_input, reference, tmp_path, seed
):
    out = tmp_path / "out"
    args = command(visits_input, out, f"--run_time={RUN_TIME}")
    started = time.monotonic()
    run_to_end(command(visits_input, tmp_path / "timing", f"--run_time={RUN_TIME}"))
    duration = time.monotonic() - started
    killed(args, after=random.Random(seed).uniform(0.3, duration))
    # What a reader sees of a killed run: all of it (it had committed) or none of it.
    seen = snapshot(out) if out.exists() else {"rows": {}, "dead_letters": Counter()}
    assert seen in ({"rows": {}, "dead_letters": Counter()}, reference)
    run_to_end(args)
    assert snapshot(out) == reference
    assert leftovers(out) == []


@pytest.mark.parametrize("failpoint", ["before_commit", "apply:7", "after_apply"])
def test_a_run_killed_in_its_commit_is_finished_by_the_rerun(
    visits_input, reference, tmp_path, failpoint
):
    out = tmp_path / "out"
    args = command(visits_input, out, f"--run_time={RUN_TIME}")
    killed(args, failpoint=failpoint)
    assert list(out.glob(f"{RUNS_DIR}/*/staged/data_category=*")), "the kill left no staging"
    if failpoint == "before_commit":  # nothing is visible before the commit record
        assert read_rows(out)["parquet"] == []
    run_to_end(args)
    assert snapshot(out) == reference
    assert leftovers(out) == []


def test_a_rerun_without_run_time_keeps_the_first_attempts(visits_input, tmp_path):
    out = tmp_path / "out"
    args = command(visits_input, out)
    killed(args, failpoint="before_commit")
    (record_path,) = out.glob(f"{RUNS_DIR}/visits-*.json")
    first = json.loads(record_path.read_text())["run_time"]
    time.sleep(1.1)  # a later "now" would show
    run_to_end(args)
    (report_path,) = out.glob("_reports/visits-*.json")
    report = json.loads(report_path.read_text())
    assert report["run_time"] == first
    assert report["attempt"]["previous_attempt"] == "killed"


def test_another_run_time_replaces_the_run(visits_input, reference, tmp_path):
    out = tmp_path / "out"
    run_to_end(command(visits_input, out, "--run_time=2026-12-15T00:00:00Z"))
    run_to_end(command(visits_input, out, f"--run_time={RUN_TIME}"))
    assert snapshot(out) == reference
    tokens = {file_token(p.name) for p in out.rglob("part-*")}
    assert len(tokens) == 1


def committed_then_killed(visits_input: Path, tmp_path: Path) -> tuple[Path, Path]:
    """An output root with one committed run and the staging of a second, killed before its
    commit (part of the same visits); returns the root and the second run's input."""
    out = tmp_path / "out"
    run_to_end(command(visits_input, out, f"--run_time={RUN_TIME}"))
    other = tmp_path / "other.jsonl"
    other.write_bytes(visits_input.read_bytes()[:200_000].rsplit(b"\n", 1)[0] + b"\n")
    killed(command(other, out, f"--run_time={RUN_TIME}"), failpoint="before_commit")
    return out, other


def test_the_next_retention_job_removes_a_killed_runs_staging(visits_input, tmp_path):
    out, _ = committed_then_killed(visits_input, tmp_path)
    assert [p.name for p in (out / RUNS_DIR).iterdir() if p.is_dir()]
    purge.run([f"--output={out}", "--now=2026-11-29T00:00:00Z"])
    assert leftovers(out) == []


def test_erase_reads_a_pending_runs_staging_and_does_not_call_it_verified(visits_input, tmp_path):
    out, other = committed_then_killed(visits_input, tmp_path)
    # As if that run were still writing on another host: the sweep must leave it alone.
    (record_path,) = [
        p for p in (out / RUNS_DIR).glob("*.json") if (out / RUNS_DIR / p.stem).is_dir()
    ]
    record = json.loads(record_path.read_text())
    record["attempts"][-1].update(
        host="another-host", started_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    )
    record_path.write_text(json.dumps(record))
    ip = json.loads(other.read_bytes().splitlines()[0])["ip"]
    requests = tmp_path / "requests.jsonl"
    requests.write_text(
        json.dumps({"request_id": "r1", "received_at": "2026-11-28T00:00:00Z", "ip": ip}) + "\n"
    )
    report = erase.run([f"--output={out}", f"--requests={requests}", f"--run_time={RUN_TIME}"])
    verification = report["verification"]
    assert verification["pending_runs"] == [record_path.stem]
    staged = [f for f in verification["files_still_matching"] if f.startswith(f"{RUNS_DIR}/")]
    assert staged and verification["rows_still_matching"] > 0
    assert verification["verified"] is False and "error" in report
    # Purge cannot delete what is not committed yet, and says so.
    purged = purge.run([f"--output={out}", "--now=2026-11-29T00:00:00Z"])
    assert purged["pending_runs"] == [record_path.stem]


def test_the_same_run_however_its_paths_are_spelt(tmp_path):
    """`out`, `out/`, `./out`, `../x/out` and the absolute root are one root, and `*.jsonl` and
    the file's own name one input: one run, replaced each time, never added to."""
    work = tmp_path / "x"
    work.mkdir()
    (work / "logs.jsonl").write_bytes(Path(bundled("sample/sdk_logs.jsonl")).read_bytes())
    for spelling_in, spelling_out in [
        ("*.jsonl", "out"),
        ("logs.jsonl", "out/"),
        ("./logs.jsonl", "./out"),
        (str(work / "logs.jsonl"), "../x/out"),
        ("*.jsonl", str(work / "out")),
    ]:
        done = subprocess.run(
            [
                *(sys.executable, "-m", "pipelines.sdk_logs", f"--input={spelling_in}"),
                *(f"--output={spelling_out}", "--run_time=2026-12-20T00:00:00Z"),
            ],
            cwd=work,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert done.returncode == 0, done.stderr[-2000:]
    assert len(list((work / "out" / "_reports").glob("sdk_logs-*.json"))) == 1
    rows = read_rows(work / "out")["parquet"]
    assert len(rows) == len({row["event_id"] for row in rows}) > 0
    assert leftovers(work / "out") == []


def test_the_same_run_however_its_flags_are_spelt(tmp_path):
    """A flag's value counts as the run uses it: ``--input_format=auto`` reads a ``.jsonl``
    as ``jsonl`` does, ``1d`` of clock skew is ``24h`` and ``1440m``, and an event-time bound
    written with ``Z`` is the one written ``+00:00``. One run, never two writing the same rows."""
    logs = bundled("sample/sdk_logs.jsonl")
    out = tmp_path / "out"
    for flags in [
        (),
        ("--input_format=jsonl",),
        ("--input_format=auto", "--max_clock_skew=24h"),
        ("--max_clock_skew=1440m", "--min_event_time=2000-01-01T00:00:00+00:00"),
    ]:
        sdk_logs.main(
            [f"--input={logs}", f"--output={out}", "--run_time=2026-12-20T00:00:00Z", *flags]
        )
    assert len(list((out / "_reports").glob("sdk_logs-*.json"))) == 1
    rows = read_rows(out)["parquet"]
    assert len(rows) == len({row["event_id"] for row in rows}) > 0

"""Every CLI, run like a user runs it, on input nobody listed (contract v2).

For each CLI (``visits``, ``sdk_logs``, ``telemetry``, ``ingest --category
account_information``, ``lifecycle``, ``erase``) one child process reads a directory of files
mixing the hostile corpus (``tests/hostile/corpus.py``) with valid lines: a mixed file, a file
starting with a BOM, one with ``\\r``-only line endings, one with CRLF endings, one without a
final newline, gzip bytes named ``.jsonl``, and the session's huge files (a 50 MB ``url``, 50 MB
of garbage without a newline, 1,000,000 levels of nesting). Then, each in its own test so that
every broken invariant shows: the CLI exits 0; the report reconciles with the line count and
with the files; every line ended in exactly one place it may end in; the valid lines are stored
(or, for the retention jobs, applied); no file under the output root, and nothing the CLI
printed, holds a canary; no temporary file or directory is left; dead letters are strict JSON;
a line over --max_line_bytes is named by its length and SHA-256 in its dead letter.

    python -m pytest -q tests/hostile                         # everything, a few minutes
    python -m pytest -q tests/hostile/test_cli_hostile.py -k erase   # one CLI

The retention jobs' lines carry no id of their own (lifecycle events) or one only a valid
request reports back (erase): their lines are matched by reason and count, and the effect on the
output root (which accounts moved or went) is checked on its own.
"""

from __future__ import annotations

import collections
import functools
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.hostile.checks import (
    Collected,
    account_for,
    avro_rows,
    canary_hits,
    collect,
    leftovers,
    read_rows,
    reconciliation_problems,
)
from tests.hostile.corpus import ACCOUNTS, ROW, SOURCES, Inputs, Source, write_inputs
from tests.support.outputs import RUN_TIME

pytestmark = pytest.mark.e2e

CLI_TIMEOUT = 600  # seconds; a hung run is a failure of its own
OPEN_ENDED = "9999-12-31"  # transforms.sinks.OPEN_ENDED_EXPIRY_DATE


@dataclass(repr=False)
class CliRun:
    source: Source
    inputs: Inputs
    out: Path
    returncode: int | None  # None: killed after CLI_TIMEOUT
    stdout: bytes
    stderr: bytes
    seconds: float

    @functools.cached_property
    def collected(self) -> Collected:
        return collect(self.source, self.out)

    def tail(self, lines: int = 30) -> str:
        """The end of what the CLI printed on stderr (its exception, if any)."""
        text = self.stderr.decode("utf-8", "replace").rstrip().splitlines()
        return "\n".join(text[-lines:])

    def __repr__(self) -> str:
        return f"<{self.source.name} run: exit {self.returncode}, {self.seconds:.0f}s>"


@pytest.fixture(scope="module", params=list(SOURCES))
def cli_run(request, tmp_path_factory, big_dir) -> CliRun:
    source = SOURCES[request.param]
    tmp = tmp_path_factory.mktemp(f"cli-{source.name}")
    inputs = write_inputs(source, tmp / "in", big_dir)
    out = tmp / "out"
    if source.retention_job:
        shutil.copytree(request.getfixturevalue("retention_root"), out)
    argv = [
        sys.executable,
        "-m",
        source.module,
        *source.flags,
        f"{source.input_flag}={inputs.pattern}",
        f"--output={out}",
        "--runner=FnApiRunner",
        f"--run_time={RUN_TIME}",
    ]
    if not source.retention_job:
        argv.append("--format=both")  # the Avro sink takes the hostile values too
    started = time.monotonic()
    try:
        done = subprocess.run(argv, capture_output=True, timeout=CLI_TIMEOUT)
        returncode, stdout, stderr = done.returncode, done.stdout, done.stderr
    except subprocess.TimeoutExpired as timeout:
        returncode, stdout, stderr = None, timeout.stdout or b"", timeout.stderr or b""
    return CliRun(source, inputs, out, returncode, stdout, stderr, time.monotonic() - started)


def _listing(problems: list[str], limit: int = 80) -> str:
    more = f"\n... and {len(problems) - limit} more" if len(problems) > limit else ""
    return "\n".join(problems[:limit]) + more


def test_no_line_stops_the_run(cli_run):
    what = "killed after the timeout" if cli_run.returncode is None else "exit"
    assert cli_run.returncode == 0, (
        f"{cli_run.source.name}: {what} {cli_run.returncode} after {cli_run.seconds:.0f}s\n"
        f"{cli_run.tail()}"
    )


def _finished(cli_run: CliRun) -> str:
    """Why the outputs can tell nothing, or ''."""
    if cli_run.collected.report is None:
        return (
            f"{cli_run.source.name}: the run wrote no report (exit {cli_run.returncode}); "
            f"its error:\n{cli_run.tail(4)}"
        )
    return ""


def test_report_reconciles_with_every_line_read(cli_run):
    unfinished = _finished(cli_run)
    assert not unfinished, unfinished
    problems = reconciliation_problems(cli_run.source, cli_run.collected, len(cli_run.inputs.lines))
    assert not problems, f"{cli_run.source.name}:\n{_listing(problems)}"


def test_every_line_ends_in_exactly_one_place(cli_run):
    unfinished = _finished(cli_run)
    assert not unfinished, unfinished
    problems = account_for(cli_run.inputs.lines, cli_run.collected)
    assert not problems, f"{cli_run.source.name}:\n{_listing(problems)}"


def test_valid_lines_are_stored_or_applied(cli_run):
    unfinished = _finished(cli_run)
    assert not unfinished, unfinished
    source, got = cli_run.source, cli_run.collected
    valid = [line for line in cli_run.inputs.lines if line.outcomes == {ROW}]
    if source.name == "lifecycle":
        rows = {r["event_id"]: r for r in read_rows(cli_run.out, ["account_information"])}
        assert set(ACCOUNTS) <= set(rows), sorted(rows)
        assert rows["a1"]["dir_expiry"] != OPEN_ENDED, "the valid account_deleted event of a1"
        assert rows["a1"]["expires_at"] is not None
        for untouched in ("a2", "a3"):
            assert rows[untouched]["dir_expiry"] == OPEN_ENDED, untouched
        applied = sum((got.report or {}).get("counts", {}).get("events_valid", {}).values())
        assert applied >= len(valid), f"{applied} valid events of {len(valid)}"
        return
    if source.name == "erase":
        kept = {r["event_id"] for r in read_rows(cli_run.out, ["account_information"])}
        assert "a2" not in kept, "the valid request erasing a2"
        assert {"a1", "a3", "a4"} <= kept, f"a hostile request erased an account: {sorted(kept)}"
        verification = (got.report or {}).get("verification")
        assert verification and verification["verified"], (
            f"erase: verification {verification}; {(got.report or {}).get('error')}"
        )
    missing = [line.name for line in valid if not any(got.rows_by_id[i] for i in line.ids)]
    assert not missing, f"{source.name}: valid lines not stored/applied: {missing}"
    if not source.retention_job:
        avro = collections.Counter(
            str(r.get("event_id"))
            for category in source.primary
            for path in cli_run.out.glob(f"data_category={category}/expiry_date=*/*.avro")
            for r in avro_rows(path)
        )
        assert avro == got.rows_by_id, "the Avro files do not hold the rows the Parquet files do"


def test_oversized_lines_are_identified_by_length_and_hash(cli_run):
    """A line over --max_line_bytes is never held whole: its dead letter keeps no raw text but
    says which line it was (the last-resort letter: length and SHA-256)."""
    unfinished = _finished(cli_run)
    assert not unfinished, unfinished
    letters = [d for d in cli_run.collected.letters if d["error"] == "line_too_large"]
    oversized = [
        line for line in cli_run.inputs.lines if line.reasons == frozenset({"line_too_large"})
    ]
    missing = []
    for line in oversized:
        if not any(
            line.length in d.values() and any(line.sha256 in str(v) for v in d.values())
            for d in letters
        ):
            missing.append(f"{line.name} ({line.length} bytes, sha256 {line.sha256[:12]}...)")
    assert not missing, f"{cli_run.source.name}: no line_too_large letter names: {missing}"


def test_no_canary_in_any_output_file(cli_run):
    hits = canary_hits(cli_run.out, cli_run.inputs.canaries)
    by_line = {c: line.name for line in cli_run.inputs.lines for c in line.canaries}
    problems = [f"{by_line[c]}: {c} in {files}" for c, files in sorted(hits.items())]
    assert not problems, f"{cli_run.source.name}:\n{_listing(problems)}"


def test_no_canary_in_console_output(cli_run):
    console = (cli_run.stdout + cli_run.stderr).lower()
    leaked = [
        line.name
        for line in cli_run.inputs.lines
        for c in line.canaries
        if c.lower().encode() in console
    ]
    assert not leaked, f"{cli_run.source.name}: canaries printed by the CLI: {leaked}"


def test_no_temporary_files_left(cli_run):
    found = leftovers(cli_run.out)
    assert not found, f"{cli_run.source.name}: left under the output root:\n{_listing(found)}"


def test_dead_letters_are_strict_json_lines(cli_run):
    problems = cli_run.collected.letter_problems
    assert not problems, f"{cli_run.source.name}:\n{_listing(problems, 20)}"

"""Helpers of the end-to-end tests: run a pipeline CLI, read every output back."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import fastavro
import pyarrow.parquet as pq

RUN_TIME = "2026-11-29T00:00:00Z"
# The flags of a pipeline run in a test: the local runner, the pinned run time.
COMMON = ["--runner=FnApiRunner", f"--run_time={RUN_TIME}"]


def run_sample(pipeline: str, out: Path, *extra: str) -> dict:
    """A pipeline on its bundled sample, as ``python -m pipelines`` runs it, into ``out``
    (FnApiRunner, pinned run time); returns the run report."""
    from pipelines.__main__ import SOURCES, sample_args

    (run, defaults) = next((r, d) for name, r, d in SOURCES if name == pipeline)
    return run(sample_args(defaults, [f"--output={out}", f"--run_time={RUN_TIME}", *extra]))


def run_cli(
    *args: str, env: dict | None = None, expect_ok: bool = True
) -> subprocess.CompletedProcess:
    """``python -m <args>`` on the FnApiRunner with a pinned run time."""
    done = subprocess.run(
        [sys.executable, "-m", *args, *COMMON],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    if expect_ok:
        assert done.returncode == 0, done.stderr[-3000:]
    return done


def run_command(module: str, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """``python -m <module> <args>`` of a command that runs no pipeline (no runner flags), as a
    user types it: its exit status, standard output and error."""
    return subprocess.run(
        [sys.executable, "-m", module, *args], capture_output=True, text=True, timeout=120, cwd=cwd
    )


def read_rows(out: Path) -> dict[str, list[dict]]:
    """Every written row by format, with the partition directory it was found in."""
    rows: dict[str, list[dict]] = {"parquet": [], "avro": []}
    for path in sorted(out.glob("data_category=*/expiry_date=*/*")):
        partition = {
            "dir_category": path.parent.parent.name.split("=", 1)[1],
            "dir_expiry": path.parent.name.split("=", 1)[1],
        }
        if path.suffix == ".parquet":
            rows["parquet"] += [{**r, **partition} for r in pq.read_table(path).to_pylist()]
        elif path.suffix == ".avro":
            with path.open("rb") as fh:
                rows["avro"] += [{**r, **partition} for r in fastavro.reader(fh)]
    return rows


def decoded_text(out: Path) -> str:
    """All output content, decompressed and decoded, for 'never anywhere' assertions."""
    parts = [json.dumps(rows, default=str) for rows in read_rows(out).values()]
    for path in out.rglob("*"):
        if path.is_file():
            parts.append(path.read_bytes().decode("latin-1"))
    return "\n".join(parts)


def dead_letters(out: Path, source: str) -> list[dict]:
    return [
        json.loads(line)
        for p in out.glob(f"_dead_letter/source={source}/*/*.jsonl")
        for line in p.read_text().splitlines()
    ]


def report(out: Path, pipeline: str) -> dict:
    (path,) = out.glob(f"_reports/{pipeline}-*.json")
    return json.loads(path.read_text())

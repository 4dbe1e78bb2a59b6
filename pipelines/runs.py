"""A run's identity and its attempts: what makes the same command, rerun, the same run.

An ingestion run is named by ``--run_id``, by default a hash of what decides its output: the
files its ``--input`` matches (path, size, modification time), the policy version, and the
values of the job's own flags other than ``--run_time``, ``--run_id`` and ``--log_level``
(Beam's runner options do not change what is written, so they are not part of it), taken however
they are spelt: a local path is hashed resolved, and ``--output``, ``--input`` and ``--policy``
are in it as the root the record lives in, the matched files and the version. Its run time
is fixed by its first attempt (``--run_time``, or the time of that attempt) and recorded under
``_runs/`` (``transforms.commit``); a rerun without ``--run_time`` takes it from there, so a run
killed and started again is the same run, dead letters' expiry included. An explicit
``--run_time`` is the run time of that attempt: it replaces the run with one at that time.

:func:`begin_attempt` is the start of every attempt: finish or remove what killed runs left
(``transforms.commit.sweep``), refuse to run while another live process writes the same run,
remove this run's own unfinished staging, and record the attempt. Whatever the earlier attempt
committed stays visible until this one commits, which replaces it.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import PipelineOptions

from pipelines.options import flags_of
from transforms.commit import RunBusyError, RunStaging, attempt_state, commit_run, owner, sweep
from transforms.timestamps import TimestampError, format_utc, parse_event_time

__all__ = ["IDENTITY_EXCLUDED", "Attempt", "begin_attempt", "check_run_id", "run_identity"]

# Flags that do not change what a run writes, that name the run itself, or that the identity
# holds in a form that does not depend on how they are spelt: --output (the run record lives in
# the root, so a run is always of its root), --input (its matched files are hashed) and
# --policy (its version is hashed). `out`, `out/` and `./out` are one root.
IDENTITY_EXCLUDED = frozenset({"run_time", "run_id", "log_level", "output", "input", "policy"})
_RUN_ID = re.compile(r"[A-Za-z0-9_.]{1,64}")


def check_run_id(value: str) -> str:
    """``--run_id``: letters, digits, ``_`` and ``.`` (it names files and folders)."""
    if not _RUN_ID.fullmatch(value):
        raise ValueError(
            f"--run_id must be 1 to 64 letters, digits, '_' or '.' (it names files), got {value!r}"
        )
    return value


def run_identity(
    options: PipelineOptions,
    *,
    pipeline: str,
    policy_version: str,
    inputs: Iterable[Any],
    option_classes: Sequence[type[PipelineOptions]],
    resolved: Mapping[str, Any] | None = None,
) -> str:
    """The default ``--run_id``: 16 hex digits of the SHA-256 of the run's identity.

    ``inputs`` are Beam ``FileMetadata`` of the matched input files; ``option_classes`` the
    job's own options classes, whose values (except :data:`IDENTITY_EXCLUDED`) are hashed.
    ``resolved`` holds flags by destination in the form the run uses them, hashed instead of
    their spelling: ``--input_format=auto`` and ``jsonl`` read a ``*.jsonl`` alike, and
    ``--max_clock_skew=31d`` is ``744h``, so each pair is one run, not two runs writing the
    same rows twice."""
    resolved = resolved or {}
    values: dict[str, Any] = {}
    for cls in option_classes:
        view = options.view_as(cls)
        for action in flags_of([cls]).values():
            if action.dest in resolved:
                values[action.dest] = resolved[action.dest]
            elif action.dest not in IDENTITY_EXCLUDED:
                values[action.dest] = _spelling_free(getattr(view, action.dest, None))
    files = sorted(
        [_spelling_free(m.path), int(m.size_in_bytes or 0), float(m.last_updated_in_seconds or 0)]
        for m in inputs
    )
    doc = {
        "pipeline": pipeline,
        "policy_version": policy_version,
        "inputs": files,
        "options": values,
    }
    encoded = json.dumps(doc, sort_keys=True, default=str).encode("utf-8")
    return hashlib.sha256(encoded).hexdigest()[:16]


def _spelling_free(value: Any) -> Any:
    """A local file's path as one absolute, resolved path (``in.jsonl``, ``./in.jsonl`` and
    ``/data/in.jsonl`` name one file); any other value as it is."""
    if isinstance(value, str) and "://" not in value and Path(value).exists():
        return str(Path(value).resolve())
    return value


def recorded_run_time(staging: RunStaging) -> int | None:
    """The run time the run's first attempt fixed, or None for a run never started here."""
    record = staging.read_record()
    value = (record or {}).get("run_time")
    if not isinstance(value, str):
        return None
    try:
        return parse_event_time(value)
    except TimestampError:
        return None


@dataclass(frozen=True)
class Attempt:
    """One attempt of a run, for its report."""

    number: int
    # What the attempt replaces: "committed" (a finished attempt's files), "killed" (an
    # attempt that never committed, so there was nothing visible to replace), or None.
    replaces: str | None
    previous_run_time: str | None

    def report(self) -> dict[str, Any]:
        return {
            "number": self.number,
            "replaced": self.replaces is not None,
            "previous_attempt": self.replaces,
            "previous_run_time": self.previous_run_time,
        }


def begin_attempt(staging: RunStaging, run_time: int, *, waits: bool) -> Attempt:
    """Start an attempt of the run at ``run_time``; see the module docstring.

    ``waits``: the launcher waits for the job, so a dead launcher process means a killed
    attempt. Raises :class:`~transforms.commit.RunBusyError` when a live attempt holds the
    run."""
    sweep(staging.root, keep=staging.name)
    record = staging.read_record()
    txn = staging.transaction()
    if staging.has_staging():
        if FileSystems.exists(txn.commit_path):
            commit_run(staging, (), {})  # an attempt that committed but did not finish applying
            record = staging.read_record()
        elif attempt_state(record, dt.datetime.now(dt.UTC)) != "dead" and record is not None:
            last = record["attempts"][-1]
            raise RunBusyError(
                f"run {staging.run_id} of {staging.pipeline} is already running (pid "
                f"{last.get('pid')} on {last.get('host')}, since {last.get('started_at')}); if "
                f"it is dead, delete {staging.dir}"
            )
        else:
            txn.discard()
    attempts = list((record or {}).get("attempts") or [])
    replaces = None
    if record is not None:
        replaces = "committed" if record.get("state") == "committed" else "killed"
    staging.write_record(
        {
            "pipeline": staging.pipeline,
            "run_id": staging.run_id,
            "run_time": format_utc(run_time),
            "state": "running",
            "attempts": [*attempts, {**owner(), "waits": waits, "run_time": format_utc(run_time)}],
        }
    )
    return Attempt(
        number=len(attempts) + 1,
        replaces=replaces,
        previous_run_time=_previous_run_time(record),
    )


def _previous_run_time(record: Mapping[str, Any] | None) -> str | None:
    value = (record or {}).get("run_time")
    return value if isinstance(value, str) else None

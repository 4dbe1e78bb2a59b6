"""Exactly-once output of an ingestion run: stage everything, commit once, replace earlier
attempts, and clear what killed runs left.

A run (``pipeline`` + ``run_id``) writes every file, data and dead letters alike, under its own
staging folder, outside the layout, so that no reader of the partitions sees a row before the
run commits::

    _runs/<pipeline>-<run_id>.json            the run record: run time, attempts, state
    _runs/<pipeline>-<run_id>/staged/<rel>    the attempt's files, at their layout path <rel>
    _runs/<pipeline>-<run_id>/commit.json     THE commit point (the retention journal's protocol)

Files are named ``part-<shard>-of-<shards>-<run_id>.<ext>``: the run id is the file token, so
the files of an earlier attempt of the same run are known by name. :class:`CommitRun`, the last
step of the pipeline, runs once every sink has finished (its input is an ``Impulse`` and the
written files are a side input, the pattern of Beam's own ``WriteFiles`` finalisation). It
journals one action per file (``add`` or ``replace`` for the new files; ``delete`` for a file of
an earlier attempt the new one did not write again), commits, applies, and removes the staging
folder. The journal, its atomic commit record and its idempotent apply are the retention jobs'
(``transforms.retention.txn``), so a commit the runner retries, or one a kill interrupted, ends
in the same state as one that ran straight through.

The commit also records the run's storage layout at the root (``transforms.sinks.marker``):
the first run of a non-Hive layout writes ``_layout.json`` before its files appear, and a run
whose layout is not the root's is refused before anything is applied (the launcher refuses it
first, before any data is read). The layout travels in the commit record, so a commit rolled
forward by another job records it too.

Why not Beam's ``WriteToFiles``/``WriteToParquet`` finalisation: each sink commits on its own,
so the data could become visible without its dead letters, and a rerun adds files beside the
earlier attempt's instead of replacing them.

:func:`sweep` is what every job (ingestion and retention) does first: roll a committed but
unapplied run forward, and remove the staging of a run that was killed. A run is known killed
when its launcher waited for it on this host and that process is gone; a run launched elsewhere
(another host, a Dataflow template launch, which does not wait) is only removed once its
attempt is older than :data:`STALE_AFTER`, since it may still be running.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import re
import shutil
import socket
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems

from transforms.counters import counter
from transforms.paths import literal_pattern, match
from transforms.retention.jsonio import read_json, utc_now_iso, write_json
from transforms.retention.layout import LayoutFile, full_path, is_local, list_layout
from transforms.retention.lock import alive
from transforms.retention.txn import Transaction, apply_actions, failpoint
from transforms.sinks.marker import check_root_layout, layout_of_root, write_marker
from transforms.sinks.storage import DEFAULT_LAYOUT, HIVE, StorageLayout, layout_named

__all__ = [
    "RUNS_DIR",
    "STALE_AFTER",
    "CommitRun",
    "RunBusyError",
    "RunStaging",
    "attempt_state",
    "commit_run",
    "file_token",
    "owner",
    "pending_runs",
    "staged_files",
    "sweep",
]

LOG = logging.getLogger(__name__)

RUNS_DIR = "_runs"
# How old the attempt of a run that cannot be checked for liveness (launched on another host,
# or by a launcher that does not wait) must be before its staging counts as abandoned.
STALE_AFTER = dt.timedelta(days=3)
_PART = re.compile(r"^part-\d+-of-\d+-(?P<token>[^/]+?)\.[a-z]+$")
# Sinks' temp folders (``.temp-<token>-<name>``) written at the root by earlier versions.
_LEGACY_TEMP = re.compile(r"^\.temp-[^/]+$")


class RunBusyError(OSError):
    """The run is being written by another live process (an OSError: the resource is busy)."""


def file_token(name: str) -> str | None:
    """The run token of a sink's file name (``part-00000-of-00001-<token>.parquet``)."""
    found = _PART.match(name)
    return found["token"] if found else None


@dataclass(frozen=True)
class RunStaging:
    """Where one run of a pipeline stages, journals and records itself under ``root``, and
    the storage layout its files are in."""

    root: str
    pipeline: str
    run_id: str
    layout: StorageLayout = HIVE

    @property
    def name(self) -> str:
        return f"{self.pipeline}-{self.run_id}"

    @property
    def rel_dir(self) -> str:
        return f"{RUNS_DIR}/{self.name}"

    @property
    def dir(self) -> str:
        return full_path(self.root, self.rel_dir)

    @property
    def staged_root(self) -> str:
        """The sinks' output directory: the layout of the attempt, invisible to readers."""
        return self.transaction().staged_root

    @property
    def record_path(self) -> str:
        return full_path(self.root, f"{self.rel_dir}.json")

    def transaction(self) -> Transaction:
        return Transaction(self.root, self.name, rel_dir=self.rel_dir)

    def read_record(self) -> dict[str, Any] | None:
        """The run record, or None when this run never started here."""
        if not FileSystems.exists(self.record_path):
            return None
        try:
            record = read_json(self.record_path)
        except (OSError, ValueError):
            return None
        return record if isinstance(record, dict) else None

    def write_record(self, record: Mapping[str, Any]) -> None:
        write_json(self.record_path, dict(record))

    def has_staging(self) -> bool:
        if is_local(self.dir):
            return Path(self.dir).exists()
        (result,) = match([literal_pattern(self.dir, "**")], limits=[1])
        return bool(result.metadata_list)


# -------------------------------------------------------------------------------- the owner


def owner() -> dict[str, Any]:
    """Who runs an attempt: host and process, for :func:`sweep` to tell a killed run."""
    return {"host": socket.gethostname(), "pid": os.getpid(), "started_at": utc_now_iso()}


def attempt_state(record: Mapping[str, Any] | None, now: dt.datetime) -> str:
    """``live``, ``dead`` or ``unknown`` (cannot tell yet) for the last attempt of a record."""
    attempts = (record or {}).get("attempts") or []
    if not attempts:
        return "dead"  # a staging folder without a record: nobody can be writing it
    last = attempts[-1]
    if last.get("waits") and last.get("host") == socket.gethostname():
        pid = last.get("pid")
        return "live" if isinstance(pid, int) and alive(pid) else "dead"
    try:
        started = dt.datetime.fromisoformat(str(last.get("started_at")).replace("Z", "+00:00"))
    except ValueError:
        return "dead"
    return "dead" if now - started > STALE_AFTER else "unknown"


# ---------------------------------------------------------------------------- the commit


def _previous_files(staging: RunStaging, kinds: Mapping[str, Iterable[str]]) -> list[str]:
    """Relative paths of the layout files an earlier attempt of the run committed: its token,
    in a partition of a category or dead-letter source this pipeline writes."""
    wanted = {kind: set(names) for kind, names in kinds.items()}
    found = []
    for f in list_layout(staging.root, staging.layout):
        if f.partition.name not in wanted.get(f.partition.kind, ()):
            continue
        if file_token(f.rel.rsplit("/", 1)[-1]) == staging.run_id:
            found.append(f.rel)
    return found


def _plan(staging: RunStaging, written: Sequence[str], previous: Sequence[str]) -> list[dict]:
    txn = staging.transaction()
    prefix = staging.staged_root.rstrip("/") + "/"
    targets = []
    for path in written:
        if not path.startswith(prefix):
            raise ValueError(f"{path} was not written under the run's staging {prefix}")
        targets.append(path[len(prefix) :])
    before = set(previous)
    actions = [
        {
            "op": "replace" if rel in before else "add",
            "target": rel,
            "staged": txn.staged_rel(rel),
        }
        for rel in sorted(set(targets))
    ]
    actions += [{"op": "delete", "target": rel} for rel in sorted(before - set(targets))]
    return actions


def commit_run(
    staging: RunStaging, written: Sequence[str], kinds: Mapping[str, Iterable[str]]
) -> dict[str, int]:
    """Make the attempt's ``written`` files (full paths under its staging) the run's files.

    Idempotent: a commit record already there (a retried or recovered commit) is applied as it
    stands. Returns the numbers of files committed and of earlier files replaced or deleted."""
    txn = staging.transaction()
    if FileSystems.exists(txn.commit_path):
        doc = read_json(txn.commit_path)
        actions = doc.get("actions", [])
        layout = layout_named(doc.get("layout", DEFAULT_LAYOUT), f"the commit of {staging.name}")
    else:
        layout = staging.layout
        check_root_layout(staging.root, layout)  # refused before anything is committed
        previous = _previous_files(staging, kinds)
        actions = _plan(staging, written, previous)
        txn.commit(
            {
                "pipeline": staging.pipeline,
                "run_id": staging.run_id,
                "committed_at": utc_now_iso(),
                "layout": layout.name,
                "actions": actions,
            }
        )
    write_marker(staging.root, layout)  # before any file of the layout appears
    apply_actions(staging.root, actions)
    summary = {
        "files": sum(a["op"] in ("add", "replace") for a in actions),
        "replaced_files": sum(a["op"] in ("replace", "delete") for a in actions),
    }
    record = staging.read_record() or {"pipeline": staging.pipeline, "run_id": staging.run_id}
    staging.write_record({**record, "state": "committed", "committed_at": utc_now_iso()})
    failpoint("after_apply")
    txn.discard()
    return summary


class _Commit(beam.DoFn):
    def __init__(self, staging: RunStaging, kinds: Mapping[str, tuple[str, ...]]) -> None:
        self.staging = staging
        self.kinds = kinds

    def process(self, _impulse: bytes, written: Iterable[str]):
        summary = commit_run(self.staging, sorted(written), self.kinds)
        for name, value in summary.items():
            counter(f"commit.{name}").inc(value)
        yield summary


class CommitRun(beam.PTransform):
    """The run's commit, once every sink is done: takes the ``fileio.FileResult``
    PCollections of the sinks (a tuple) and yields one summary dict
    (``{"files": n, "replaced_files": m}``, also counted as ``commit.<name>``).

    ``kinds`` maps ``"data"`` to the categories and ``"dead_letter"`` to the dead-letter
    sources the pipeline writes: only their files can belong to an earlier attempt."""

    def __init__(self, staging: RunStaging, kinds: Mapping[str, Iterable[str]]) -> None:
        super().__init__()
        self._staging = staging
        self._kinds = {kind: tuple(sorted(names)) for kind, names in kinds.items()}

    def expand(self, sinks):
        names = [
            files | f"FileNames{index}" >> beam.Map(lambda result: result.file_name)
            for index, files in enumerate(sinks)
        ]
        written = names | "AllFiles" >> beam.Flatten()
        return (
            written.pipeline
            | "Once" >> beam.Impulse()
            | "Commit"
            >> beam.ParDo(_Commit(self._staging, self._kinds), beam.pvalue.AsList(written))
        )


# --------------------------------------------------------------- staging seen by retention


def pending_runs(root: str) -> list[str]:
    """The runs (``<pipeline>-<run_id>``) whose staging is still under ``root``: being written
    now, or killed elsewhere and not yet stale (after :func:`sweep`)."""
    return _run_names(root)


def staged_files(root: str) -> list[LayoutFile]:
    """Every file the pending runs staged at a layout path, as a :class:`LayoutFile` whose
    ``rel`` is its path under the root (``_runs/<run>/staged/<layout path>``), so that erasure
    reads them like the partitions' files."""
    found = []
    layout = layout_of_root(root)
    for name in _run_names(root):
        staged = _staging_of(root, name).staged_root
        for f in list_layout(staged, layout):
            found.append(
                LayoutFile(f.path, f"{RUNS_DIR}/{name}/staged/{f.rel}", f.partition, f.size)
            )
    return found


# ------------------------------------------------------------------------------ the sweep


def _run_names(root: str) -> list[str]:
    """Names (``<pipeline>-<run_id>``) of the staging folders under ``_runs/``."""
    base = full_path(root, RUNS_DIR)
    if is_local(root):
        if not Path(base).is_dir():
            return []
        return sorted(p.name for p in Path(base).iterdir() if p.is_dir())
    (result,) = match([literal_pattern(base, "*", "**")])
    prefix = base.rstrip("/") + "/"
    return sorted({m.path[len(prefix) :].split("/", 1)[0] for m in result.metadata_list})


def _split(name: str) -> tuple[str, str]:
    """``(pipeline, run_id)`` of a staging folder's name (a run id has no ``-``)."""
    pipeline, _, run_id = name.rpartition("-")
    return pipeline, run_id


def _staging_of(root: str, name: str) -> RunStaging:
    return RunStaging(root, *_split(name))


def sweep(root: str, *, keep: str | None = None) -> list[dict[str, str]]:
    """Finish or remove what earlier runs left under ``root``; returns what was done.

    A committed run is rolled forward; the staging of a killed run (see the module docstring)
    is removed, and so are the sinks' ``.temp-*`` folders that earlier versions left at the
    root once they are older than :data:`STALE_AFTER`. ``keep`` names a run the caller handles
    itself (its own)."""
    done = []
    now = dt.datetime.now(dt.UTC)
    for name in _run_names(root):
        if name == keep:
            continue
        staging = _staging_of(root, name)
        txn = staging.transaction()
        try:
            if FileSystems.exists(txn.commit_path):
                commit_run(staging, (), {})
                LOG.warning("rolled the committed run %s forward", name)
                done.append({"run": name, "outcome": "rolled_forward"})
            elif attempt_state(staging.read_record(), now) == "dead":
                txn.discard()
                LOG.warning("removed the staging of the killed run %s", name)
                done.append({"run": name, "outcome": "removed"})
        except OSError as exc:  # another job may be sweeping it: the next run finishes it
            LOG.warning("could not finish or remove run %s: %s", name, exc)
    done += _sweep_legacy_temp(root, now)
    return done


def _sweep_legacy_temp(root: str, now: dt.datetime) -> list[dict[str, str]]:
    if not is_local(root) or not Path(root).is_dir():
        return []
    done = []
    for path in Path(root).iterdir():
        if not (path.is_dir() and _LEGACY_TEMP.match(path.name)):
            continue
        modified = dt.datetime.fromtimestamp(path.stat().st_mtime, dt.UTC)
        if now - modified > STALE_AFTER:
            shutil.rmtree(path, ignore_errors=True)
            done.append({"run": path.name, "outcome": "removed"})
    return done

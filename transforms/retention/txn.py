"""Crash-safe changes to many files of an output root: stage, commit, apply, recover.

Object stores have no multi-file transaction, so the retention jobs use a write-ahead journal
under the root (outside the layout, so readers of the partitions never see it)::

    _retention/lock.json                      one retention job at a time
    _retention/txn-<run_id>/staged/<rel>      new file contents, invisible to partition readers
    _retention/txn-<run_id>/plan.json         the actions the Beam job produced
    _retention/txn-<run_id>/commit.json       THE commit point

1. **Stage**: the job writes every new file under ``staged/`` with a deterministic name, so a
   retried bundle overwrites its own output instead of adding to it.
2. **Commit**: the launcher checks that every staged file exists, writes the commit record and
   renames it to ``commit.json``. A rename is atomic on a local disk, and an object on GCS/S3
   appears whole or not at all, so the record is either absent or complete. A crash before
   this point leaves the old state (the staged files are garbage the next run removes); after
   it, the new state.
3. **Apply**: every action is idempotent. ``add`` moves a staged file to a new path,
   ``replace`` moves it over the file it rewrites (same name: a rename overwrites one file
   atomically on a local disk and one object atomically on GCS/S3), ``delete`` and
   ``delete_partition`` remove files. Adds go first: a row moved between partitions is never
   absent; during the apply window a reader listing the directories can see it twice.
   A ``replace`` whose target disappeared meanwhile (a purge took the partition) is skipped:
   a rewrite never resurrects a deleted file.
4. **Recover**: every run of purge, lifecycle and erase first rolls each committed transaction
   forward and each uncommitted one back, and writes the audit of what it recovered.

Fail points (``TRTC_RETENTION_FAILPOINT=before_commit`` or ``apply:<n>``) kill the process
with SIGKILL at that step; the tests use them to prove that a rerun after a crash ends in the
right state. Nothing else reads the variable.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import os
import signal
import socket
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from apache_beam.io.filesystem import BeamIOError, CompressionTypes
from apache_beam.io.filesystems import FileSystems

from transforms.retention.files import ensure_parent
from transforms.retention.layout import REPORTS_DIR, full_path, is_local, remove_empty_dirs

__all__ = [
    "FAILPOINT_ENV",
    "RETENTION_DIR",
    "LockHeldError",
    "RetentionLock",
    "StagedChange",
    "Transaction",
    "added_action",
    "apply_actions",
    "delete_existing",
    "failpoint",
    "read_json",
    "recover",
    "sorted_actions",
    "staged_change",
    "utc_now_iso",
    "write_audit",
    "write_json",
]

LOG = logging.getLogger(__name__)

RETENTION_DIR = "_retention"
FAILPOINT_ENV = "TRTC_RETENTION_FAILPOINT"
_ORDER = {"add": 0, "replace": 1, "delete": 2, "delete_partition": 3}


def failpoint(name: str) -> None:
    """Kill this process (SIGKILL: no cleanup, like a lost VM) when the fail point is armed."""
    if os.environ.get(FAILPOINT_ENV) == name:
        LOG.warning("fail point %s: killing the process", name)
        os.kill(os.getpid(), signal.SIGKILL)


def utc_now_iso() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


# --------------------------------------------------------------------------------- JSON files


def write_json(path: str, doc: Any) -> None:
    """Create or overwrite ``path`` with ``doc`` as JSON (sorted keys, for readable diffs)."""
    ensure_parent(path)
    data = json.dumps(doc, indent=2, sort_keys=True, default=str).encode("utf-8")
    with FileSystems.create(path, compression_type=CompressionTypes.UNCOMPRESSED) as fh:
        fh.write(data)


def read_json(path: str) -> Any:
    with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as fh:
        return json.loads(fh.read().decode("utf-8"))


def write_audit(
    root: str, pipeline: str, run_id: str, doc: Mapping[str, Any], *, overwrite: bool = True
) -> str:
    """The audit record ``_reports/<pipeline>-<run_id>.json``; returns its path.

    With ``overwrite=False`` an existing record is kept (a recovered transaction whose own
    run already wrote its audit before it died)."""
    path = full_path(root, f"{REPORTS_DIR}/{pipeline}-{run_id}.json")
    if overwrite or not FileSystems.exists(path):
        write_json(path, dict(doc))
    return path


def delete_existing(paths: Sequence[str]) -> int:
    """Delete the paths that exist; a path already gone is not an error (idempotent).

    Returns how many were deleted by this call."""
    if not paths:
        return 0
    try:
        FileSystems.delete(list(paths))
        return len(paths)
    except BeamIOError as err:
        still_there = [p for p in err.exception_details if FileSystems.exists(p)]
        if still_there:
            raise
        return len(paths) - len(err.exception_details)


def delete_tree(path: str) -> None:
    """Delete every file under ``path`` and, on a local disk, the directory itself."""
    if is_local(path):
        if Path(path).exists():
            FileSystems.delete([path])
        return
    (result,) = FileSystems.match([FileSystems.join(path, "**")])
    delete_existing([m.path for m in result.metadata_list])


# ------------------------------------------------------------------------------ transactions


class Transaction:
    """One journaled change of an output root, named after the run that makes it."""

    def __init__(self, root: str, txn_id: str, rel_dir: str | None = None) -> None:
        """``rel_dir``: the transaction's folder under the root; by default a retention job's
        ``_retention/txn-<id>`` (an ingestion run journals its commit under ``_runs/``)."""
        self.root = root
        self.id = txn_id
        self.rel_dir = rel_dir or f"{RETENTION_DIR}/txn-{txn_id}"
        self.dir = full_path(root, self.rel_dir)
        self.staged_root = full_path(root, f"{self.rel_dir}/staged")
        self.plan_path = full_path(root, f"{self.rel_dir}/plan.json")
        self.commit_path = full_path(root, f"{self.rel_dir}/commit.json")
        self._pending_path = full_path(root, f"{self.rel_dir}/commit-pending.json")

    def staged_rel(self, target_rel: str) -> str:
        """Where the new content of ``target_rel`` is staged (relative to the root)."""
        return f"{self.rel_dir}/staged/{target_rel}"

    def read_plan(self) -> dict[str, Any]:
        return read_json(self.plan_path)

    def commit(self, doc: Mapping[str, Any]) -> None:
        """Make ``doc`` (with its ``actions``) the committed state; see the module docstring."""
        actions = doc.get("actions", [])
        missing = [
            a["staged"]
            for a in actions
            if a.get("staged") and not FileSystems.exists(full_path(self.root, a["staged"]))
        ]
        if missing:
            raise OSError(f"staged files are missing, not committing: {missing[:5]}")
        clashes = [
            a["target"]
            for a in actions
            if a["op"] == "add" and FileSystems.exists(full_path(self.root, a["target"]))
        ]
        if clashes:
            raise OSError(f"new files would overwrite existing ones, not committing: {clashes[:5]}")
        failpoint("before_commit")
        write_json(self._pending_path, {**doc, "txn": self.id})
        FileSystems.rename([self._pending_path], [self.commit_path])

    def discard(self) -> None:
        """Remove the transaction's folder (staged files, plan, commit record)."""
        delete_tree(self.dir)


def added_action(result: Any, staged_root: str, txn_rel_dir: str) -> dict[str, Any]:
    """The ``add`` action of a file a sink (``fileio.FileResult``) wrote under the staging
    folder of a transaction: its path there is its path in the layout."""
    rel = result.file_name[len(staged_root.rstrip("/")) + 1 :]
    return {"op": "add", "target": rel, "staged": f"{txn_rel_dir}/staged/{rel}"}


def sorted_actions(actions: Iterable[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """Actions in a stable order: the plan is the same whatever the bundling."""
    return sorted(actions, key=lambda a: (a["op"], a["target"]))


def apply_actions(root: str, actions: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """Apply committed actions, adds first; idempotent, so a rerun finishes a partial apply."""
    ordered = sorted(actions, key=lambda a: _ORDER[a["op"]])
    results: dict[str, Any] = {
        "applied": 0,
        "already_done": 0,
        "skipped_target_gone": [],
        "missing": [],
    }
    emptied: set[str] = set()
    for done, action in enumerate(ordered):
        failpoint(f"apply:{done}")
        op = action["op"]
        if op in ("add", "replace"):
            outcome = _move(root, action["staged"], action["target"], replace=op == "replace")
            if outcome == "skipped":
                results["skipped_target_gone"].append(action["target"])
            elif outcome == "missing":
                results["missing"].append(action["target"])
            else:
                results[outcome] += 1
        elif op == "delete":
            gone = delete_existing([full_path(root, action["target"])])
            results["applied" if gone else "already_done"] += 1
            emptied.add(action["target"].rsplit("/", 1)[0])
        elif op == "delete_partition":
            gone = delete_existing([full_path(root, t) for t in action["targets"]])
            results["applied" if gone else "already_done"] += 1
            emptied.add(action["partition"])
        else:  # a record written by a newer version: stop rather than half-apply it
            raise ValueError(f"unknown action {op!r} in the retention journal")
    failpoint(f"apply:{len(ordered)}")
    remove_empty_dirs(root, emptied)
    return results


def _move(root: str, staged_rel: str, target_rel: str, *, replace: bool) -> str:
    staged, target = full_path(root, staged_rel), full_path(root, target_rel)
    if not FileSystems.exists(staged):
        return "already_done" if FileSystems.exists(target) or replace else "missing"
    if replace and not FileSystems.exists(target):
        delete_existing([staged])  # the file was deleted meanwhile: do not bring it back
        return "skipped"
    ensure_parent(target)
    FileSystems.rename([staged], [target])
    return "applied"


def pending_transactions(root: str) -> list[str]:
    """Ids of the transactions left under ``_retention/`` (by a crash, or still running)."""
    base = full_path(root, RETENTION_DIR)
    ids: set[str] = set()
    if is_local(root):
        if Path(base).is_dir():
            ids |= {p.name[4:] for p in Path(base).iterdir() if p.name.startswith("txn-")}
    else:
        (result,) = FileSystems.match([FileSystems.join(base, "txn-*", "**")])
        prefix = base.rstrip("/") + "/txn-"
        for meta in result.metadata_list:
            ids.add(meta.path[len(prefix) :].split("/", 1)[0])
    return sorted(ids)


def recover(root: str, recovered_by: str) -> list[dict[str, Any]]:
    """Roll committed transactions forward and uncommitted ones back; audit what was recovered.

    Call it while holding the lock (no other retention job runs). Returns one summary per
    transaction found."""
    summaries = []
    for txn_id in pending_transactions(root):
        txn = Transaction(root, txn_id)
        if FileSystems.exists(txn.commit_path):
            doc = read_json(txn.commit_path)
            results = apply_actions(root, doc.get("actions", []))
            audit = {
                **doc.get("audit", {}),
                "recovered": True,
                "recovered_by": recovered_by,
                "recovered_at": utc_now_iso(),
                "apply": results,
            }
            path = write_audit(
                root, doc.get("pipeline", "retention"), txn_id, audit, overwrite=False
            )
            LOG.warning("rolled transaction %s forward (audit %s)", txn_id, path)
            summaries.append({"txn": txn_id, "outcome": "rolled_forward", "audit": path})
        else:
            LOG.warning("rolled uncommitted transaction %s back", txn_id)
            summaries.append({"txn": txn_id, "outcome": "rolled_back"})
        txn.discard()
    return summaries


# ------------------------------------------------------------------------------------- lock


class LockHeldError(OSError):
    """Another retention job holds the output root (an OSError: the resource is busy)."""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class RetentionLock:
    """One retention job per output root at a time (a context manager).

    Purge, lifecycle and erase all rewrite or delete files; run concurrently, one could stage a
    rewrite of a file the other deletes. The lock is a small JSON file under ``_retention/``:
    a holder that died on this host (its pid is gone) is taken over; any other holder makes the
    job stop with a message naming it. Object stores cannot create a file only if absent
    through Beam's API, so two jobs started in the same instant on different hosts are not
    excluded: schedule the retention jobs one after the other (deploy/ and docs/retention.md).
    """

    def __init__(self, root: str, run_id: str, pipeline: str) -> None:
        self.path = full_path(root, f"{RETENTION_DIR}/lock.json")
        self.doc = {
            "run_id": run_id,
            "pipeline": pipeline,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "acquired_at": utc_now_iso(),
        }

    def __enter__(self) -> RetentionLock:
        if FileSystems.exists(self.path):
            try:
                holder = read_json(self.path)
            except (OSError, ValueError):
                holder = {}
            same_host = holder.get("host") == self.doc["host"]
            pid = holder.get("pid")
            if not (same_host and isinstance(pid, int) and not _alive(pid)):
                raise LockHeldError(
                    f"another retention job holds {self.path}: {holder.get('pipeline')} run "
                    f"{holder.get('run_id')} (pid {pid} on {holder.get('host')}, since "
                    f"{holder.get('acquired_at')}); if it is dead, delete that file"
                )
            LOG.warning("taking over the lock of dead run %s", holder.get("run_id"))
        write_json(self.path, self.doc)
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            if read_json(self.path).get("run_id") == self.doc["run_id"]:
                delete_existing([self.path])
        except (OSError, ValueError):
            pass
        if is_local(self.path):
            with contextlib.suppress(OSError):
                Path(self.path).parent.rmdir()  # only if nothing is pending in it


# ------------------------------------------------------------------ the job protocol


@dataclass
class StagedChange:
    """The change a retention job makes under :func:`staged_change`."""

    txn: Transaction
    pipeline: str
    recovered: list[dict[str, Any]]
    committed: bool = False

    def commit_and_apply(
        self, actions: Sequence[Mapping[str, Any]], audit: Mapping[str, Any]
    ) -> dict[str, Any] | None:
        """Commit ``actions`` (with the audit so far, for a recovery to write) and apply them.

        Returns what applying did, or None when there is nothing to change."""
        if not actions:
            return None
        self.txn.commit({"pipeline": self.pipeline, "actions": list(actions), "audit": audit})
        self.committed = True
        return apply_actions(self.txn.root, actions)


@contextmanager
def staged_change(txn: Transaction, pipeline: str) -> Iterator[StagedChange]:
    """The protocol every retention job follows, around its own work.

    Hold the output root's lock; finish (or undo) what earlier killed runs left; let the job
    stage files and :meth:`StagedChange.commit_and_apply` its actions. If the job fails before
    its commit, nothing visible happened and its staged files are dropped; after the commit
    they stay for the next run to finish; on success the transaction folder is removed.
    """
    with RetentionLock(txn.root, txn.id, pipeline):
        change = StagedChange(txn, pipeline, recover(txn.root, txn.id))
        try:
            yield change
        except BaseException:
            if not change.committed:
                txn.discard()
            raise
        txn.discard()

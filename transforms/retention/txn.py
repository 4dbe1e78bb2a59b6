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
import hashlib
import json
import logging
import os
import signal
import socket
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

from transforms.paths import delete_paths, list_files, literal_pattern, match
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
    """Delete exactly ``paths`` (taken literally: ``transforms.paths``); a path already gone is
    not an error (idempotent).

    Returns how many were deleted by this call."""
    return delete_paths(list(paths))


def delete_tree(path: str) -> None:
    """Delete every file under ``path`` and, on a local disk, the directory itself."""
    if is_local(path):
        delete_paths([path])
        return
    delete_existing([m.path for m in list_files(path)])


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
        (result,) = match([literal_pattern(base, "txn-*", "**")])
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


# How deep a take-over of a take-over may go (a job that died while taking over a dead
# holder's lock leaves its take-over file, which the next job takes over in turn).
_MAX_TAKEOVER_DEPTH = 4


def _read_local(path: Path) -> dict[str, Any] | None:
    """The holder record of a local lock file: None when there is no file, ``{}`` when it
    cannot be read as one (a holder whose identity is unknown: never taken over)."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError:
        return {}
    try:
        doc = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return {}
    return doc if isinstance(doc, dict) else {}


def _record_id(doc: Mapping[str, Any]) -> str:
    """A short name for one holder record (of the take-over file that breaks it)."""
    text = json.dumps(dict(doc), sort_keys=True, default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


class RetentionLock:
    """One retention job per output root at a time (a context manager).

    Purge, lifecycle and erase all rewrite or delete files; run concurrently, one could stage a
    rewrite of a file the other deletes. The lock is a small JSON file, ``_retention/lock.json``,
    naming its holder (run, pipeline, host, pid, time). Another job finds it and stops with a
    :class:`LockHeldError` naming that holder, unless the holder died on this host (its pid is
    gone): then the lock is taken over.

    **Local and POSIX paths (NFS included): mutual exclusion, race-free.** The lock is taken by
    an exclusive create: its record is written in full under a private name, then hard-linked
    to ``lock.json``, which fails if ``lock.json`` exists (what ``os.open(O_CREAT | O_EXCL)``
    guarantees, without an instant where the lock exists but is empty; a filesystem without
    hard links gets ``os.open(O_CREAT | O_EXCL)`` itself). Of any number of jobs started at the
    same instant, exactly one holds it. Taking over a dead holder's lock is race-free too: only
    the job that exclusively creates ``lock.json.takeover-<id of the dead record>`` may remove
    ``lock.json``, and only after reading that it still holds that dead record; then it takes
    the lock by the same exclusive create as anyone. So a live holder's lock is never removed
    by another job, and jobs racing to take over the same dead lock end with one holder. A job
    that dies during a take-over leaves its take-over file, taken over in turn the same way.

    **Object stores (``gs://``, ``s3://``): no mutual exclusion for jobs started together.**
    GCS and S3 can create an object only if absent (``ifGenerationMatch=0``, ``If-None-Match``),
    but Beam's ``FileSystems`` (``create``) offers no such condition, so there the lock is
    check-then-write, then read back. Guaranteed: a job that starts after another job's lock
    object was written (both stores are strongly consistent: a finished upload is seen by every
    later read) is refused, naming the holder; a job whose read-back finds another job's record
    stops. Not guaranteed: two jobs whose check and write interleave (within one existence
    check plus one small upload of each other, typically under a second) can both proceed.
    Schedule the retention jobs one after the other there (docs/retention.md), which a single
    scheduler does.
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

    def _stale(self, holder: Mapping[str, Any]) -> bool:
        """The holder died on this host (its pid is gone)."""
        pid = holder.get("pid")
        return holder.get("host") == self.doc["host"] and isinstance(pid, int) and not _alive(pid)

    @staticmethod
    def _held(path: str, holder: Mapping[str, Any]) -> LockHeldError:
        return LockHeldError(
            f"another retention job holds {path}: {holder.get('pipeline')} run "
            f"{holder.get('run_id')} (pid {holder.get('pid')} on {holder.get('host')}, since "
            f"{holder.get('acquired_at')}); if it is dead, delete that file"
        )

    # --------------------------------------------------------------------- local paths

    def _create_exclusive(self, path: Path) -> bool:
        """Create ``path`` holding this job's record, only if it does not exist; False if it
        does. The file is complete from the instant it exists."""
        data = json.dumps(self.doc, indent=2, sort_keys=True).encode("utf-8")
        private = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex}")
        for _ in range(3):  # the directory may be removed by a holder leaving (rmdir if empty)
            path.parent.mkdir(parents=True, exist_ok=True)
            try:
                fd = os.open(private, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileNotFoundError:
                continue
            try:
                os.write(fd, data)
                os.fsync(fd)
            finally:
                os.close(fd)
            try:
                os.link(private, path)
                return True
            except FileExistsError:
                return False
            except FileNotFoundError:
                continue
            except OSError:  # no hard links on this filesystem: O_EXCL on the lock itself
                return self._create_exclusive_direct(path, data)
            finally:
                private.unlink(missing_ok=True)
        raise OSError(f"could not create {path}: its directory keeps disappearing")

    @staticmethod
    def _create_exclusive_direct(path: Path, data: bytes) -> bool:
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        return True

    def _acquire_local(self, path: Path, depth: int = 0) -> None:
        """Hold ``path`` (the lock, or a take-over file of it), or raise LockHeldError."""
        for _ in range(8):  # each pass ends in holding, refusing, or a file that just vanished
            if self._create_exclusive(path):
                return
            holder = _read_local(path)
            if holder is None:
                continue  # released between our create and our read: try again
            if not self._stale(holder):
                raise self._held(str(path), holder)
            if depth >= _MAX_TAKEOVER_DEPTH:
                raise self._held(str(path), holder)
            takeover = path.with_name(f"{path.name}.takeover-{_record_id(holder)}")
            self._acquire_local(takeover, depth + 1)  # raises if a live job is taking over
            try:
                if _read_local(path) == holder:  # still the dead record: only we may remove it
                    LOG.warning("taking over the lock of dead run %s", holder.get("run_id"))
                    path.unlink(missing_ok=True)
            finally:
                takeover.unlink(missing_ok=True)
        raise LockHeldError(f"could not take {path}: it keeps changing hands")

    # -------------------------------------------------------------------- object stores

    def _acquire_object_store(self) -> None:
        if FileSystems.exists(self.path):
            try:
                holder = read_json(self.path)
            except (OSError, ValueError):
                holder = {}
            if not self._stale(holder):
                raise self._held(self.path, holder)
            LOG.warning("taking over the lock of dead run %s", holder.get("run_id"))
        write_json(self.path, self.doc)
        try:
            mine = read_json(self.path)
        except (OSError, ValueError):
            mine = {}
        if mine != self.doc:
            raise self._held(self.path, mine)

    # ---------------------------------------------------------------------------- both

    def __enter__(self) -> RetentionLock:
        if is_local(self.path):
            self._acquire_local(Path(self.path))
        else:
            self._acquire_object_store()
        return self

    def __exit__(self, *exc: object) -> None:
        """Release the lock if it is still this job's record (compared whole: two jobs may
        share a run id, never a host, pid and time as well)."""
        if is_local(self.path):
            if _read_local(Path(self.path)) == self.doc:
                Path(self.path).unlink(missing_ok=True)
            with contextlib.suppress(OSError):
                Path(self.path).parent.rmdir()  # only if nothing is pending in it
            return
        try:
            if read_json(self.path) == self.doc:
                delete_existing([self.path])
        except (OSError, ValueError):
            pass


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

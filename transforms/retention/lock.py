"""One retention job per output root at a time: the lock file ``_retention/lock.json``.

Kept apart from the journal (``transforms.retention.txn``) because it is a different guarantee
with a different mechanism per filesystem: an exclusive create on local disks (race-free,
take-over of a dead holder included), check-write-read-back on object stores, whose Beam
filesystems offer no conditional create (see :class:`RetentionLock` for exactly what holds).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import socket
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from apache_beam.io.filesystems import FileSystems

from transforms.retention.jsonio import delete_existing, read_json, utc_now_iso, write_json
from transforms.retention.layout import full_path, is_local

__all__ = ["RETENTION_DIR", "LockHeldError", "RetentionLock", "alive"]

LOG = logging.getLogger(__name__)

RETENTION_DIR = "_retention"


class LockHeldError(OSError):
    """Another retention job holds the output root (an OSError: the resource is busy)."""


def alive(pid: int) -> bool:
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
        return holder.get("host") == self.doc["host"] and isinstance(pid, int) and not alive(pid)

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

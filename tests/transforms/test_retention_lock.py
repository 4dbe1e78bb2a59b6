"""The retention lock under contention: processes started at the same instant, on a real disk.

Each round starts its contenders as separate processes that wait at one barrier and then all
try to take the lock of the same output root at once; whoever got it keeps it until every
contender has reported, so two "got it" in one round means two jobs held it at the same time.
The check-then-write lock this replaced was held by both processes of every one of 40 pairs.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import socket
from pathlib import Path

import pytest

from transforms.retention.lock import LockHeldError, RetentionLock

ROUNDS = 40
CTX = mp.get_context("fork")  # the children start at once, with everything imported


def _contend(root: str, run_id: str, start, held, results) -> None:
    lock = RetentionLock(root, run_id, "purge")
    start.wait()
    try:
        lock.__enter__()
    except LockHeldError as err:
        results.put((run_id, False, str(err)))
        held.wait()
        return
    except BaseException as err:  # any other failure is reported, not hidden in a child
        results.put((run_id, None, repr(err)))
        held.wait()
        return
    results.put((run_id, True, Path(lock.path).read_text()))
    held.wait()  # keep it until every contender has tried
    lock.__exit__(None, None, None)


def _round(root: Path, contenders: int) -> list[tuple[str, bool | None, str]]:
    start, held, results = CTX.Barrier(contenders), CTX.Barrier(contenders), CTX.Queue()
    procs = [
        CTX.Process(target=_contend, args=(str(root), f"run-{i}", start, held, results))
        for i in range(contenders)
    ]
    for proc in procs:
        proc.start()
    got = [results.get(timeout=60) for _ in procs]
    for proc in procs:
        proc.join(60)
        assert proc.exitcode == 0
    return got


def _dead_pid() -> int:
    """The pid of a process of this host that has exited (and been reaped)."""
    proc = CTX.Process(target=os._exit, args=(0,))
    proc.start()
    proc.join()
    return proc.pid


def _stale_lock(root: Path, run_id: str = "dead-run") -> dict:
    doc = {
        "run_id": run_id,
        "pipeline": "purge",
        "host": socket.gethostname(),
        "pid": _dead_pid(),
        "acquired_at": "2026-12-01T00:00:00Z",
    }
    (root / "_retention").mkdir(exist_ok=True)
    (root / "_retention" / "lock.json").write_text(json.dumps(doc))
    return doc


def _check_one_holder(root: Path, got: list[tuple[str, bool | None, str]]) -> None:
    assert [g for g in got if g[1] is None] == []  # no contender failed otherwise
    holders = [g for g in got if g[1]]
    assert len(holders) == 1, f"{len(holders)} contenders held the lock at once: {holders}"
    (winner, _, record) = holders[0]
    assert json.loads(record)["run_id"] == winner
    contenders = {run_id for run_id, _, _ in got}
    for _run_id, _, message in (g for g in got if not g[1]):
        # The refusal names the holder, as before: the winner, or, in a take-over, the
        # contender that was taking the dead lock over (lock.json.takeover-<id>) just then.
        assert f"another retention job holds {root / '_retention' / 'lock.json'}" in message
        named = message.split("purge run ", 1)[1].split(" (pid ", 1)[0]
        assert named == winner or (named in contenders and ".takeover-" in message)
    # released by its holder; nothing of the contest is left behind
    assert not (root / "_retention").exists()


@pytest.mark.parametrize("contenders", [2, 5])
def test_processes_started_at_the_same_instant_never_both_hold_the_lock(tmp_path, contenders):
    for i in range(ROUNDS if contenders == 2 else ROUNDS // 4):
        root = tmp_path / f"round-{i}"
        root.mkdir()
        _check_one_holder(root, _round(root, contenders))


@pytest.mark.parametrize("contenders", [2, 5])
def test_taking_over_a_dead_holders_lock_is_race_free(tmp_path, contenders):
    """The holder died on this host: every contender sees it dead at the same instant, and
    still exactly one takes the lock over (renaming or deleting it after a check would let a
    slower contender remove the winner's fresh lock)."""
    for i in range(ROUNDS if contenders == 2 else ROUNDS // 4):
        root = tmp_path / f"round-{i}"
        root.mkdir()
        _stale_lock(root)
        _check_one_holder(root, _round(root, contenders))


def test_a_job_that_died_while_taking_over_is_taken_over_in_turn(tmp_path):
    """A take-over file left by a job killed in the middle of a take-over does not block the
    root for ever: it names a dead process too, and is taken over the same way."""
    dead = _stale_lock(tmp_path)
    lock_path = tmp_path / "_retention" / "lock.json"
    # what a contender that died mid-way leaves: its take-over file of the dead record
    probe = RetentionLock(str(tmp_path), "probe", "purge")
    taker = {**probe.doc, "run_id": "dead-taker", "pid": _dead_pid()}
    from transforms.retention.lock import _record_id  # the name is the protocol's own

    takeover = lock_path.with_name(f"lock.json.takeover-{_record_id(dead)}")
    takeover.write_text(json.dumps(taker))
    with RetentionLock(str(tmp_path), "next", "lifecycle") as lock:
        assert json.loads(Path(lock.path).read_text())["run_id"] == "next"
        assert not takeover.exists()
    assert not (tmp_path / "_retention").exists()


def test_a_live_takeover_in_progress_refuses_the_others(tmp_path):
    """While a live job holds the take-over file of a dead record, others stop, naming it."""
    dead = _stale_lock(tmp_path)
    from transforms.retention.lock import _record_id

    takeover = tmp_path / "_retention" / f"lock.json.takeover-{_record_id(dead)}"
    live = {
        "run_id": "taking-over",
        "pipeline": "erase",
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "acquired_at": "2026-12-01T00:00:01Z",
    }
    takeover.write_text(json.dumps(live))
    with pytest.raises(LockHeldError, match="erase run taking-over"):
        RetentionLock(str(tmp_path), "other", "purge").__enter__()
    assert json.loads((tmp_path / "_retention" / "lock.json").read_text()) == dead  # untouched


@pytest.mark.parametrize(
    "holder",
    [
        {"run_id": "far", "pipeline": "purge", "host": "another-host", "pid": 1},
        {"run_id": "alive", "pipeline": "purge", "host": socket.gethostname(), "pid": os.getpid()},
        "not json {",
    ],
    ids=["other-host", "alive", "unreadable"],
)
def test_a_holder_not_known_dead_is_never_taken_over(tmp_path, holder):
    (tmp_path / "_retention").mkdir()
    lock_file = tmp_path / "_retention" / "lock.json"
    lock_file.write_text(holder if isinstance(holder, str) else json.dumps(holder))
    before = lock_file.read_bytes()
    with pytest.raises(LockHeldError, match="if it is dead, delete that file"):
        RetentionLock(str(tmp_path), "new", "purge").__enter__()
    assert lock_file.read_bytes() == before


def test_only_its_holder_releases_the_lock(tmp_path):
    """Two jobs may share a run id (a rerun): release compares the whole record."""
    with RetentionLock(str(tmp_path), "same", "purge") as first:
        second = RetentionLock(str(tmp_path), "same", "purge")
        second.doc = {**second.doc, "acquired_at": "2000-01-01T00:00:00Z"}
        second.__exit__(None, None, None)  # not its lock: nothing happens
        assert json.loads(Path(first.path).read_text()) == first.doc
    assert not (tmp_path / "_retention").exists()


def test_on_an_object_store_a_written_lock_refuses_the_next_job_and_is_released(tmp_path):
    """Object stores: check-then-write, then read back (Beam's FileSystems offers no
    conditional create). What is guaranteed: a job started after the lock object was written
    is refused, naming its holder; the lock goes with its holder."""
    from tests.support.objectstore import OBJECTS  # registers memstore://

    OBJECTS.clear()
    root = "memstore://bucket/out[x]"
    try:
        with RetentionLock(root, "first", "purge") as lock:
            assert json.loads(OBJECTS[lock.path]) == lock.doc
            with pytest.raises(LockHeldError, match="purge run first"):
                RetentionLock(root, "second", "erase").__enter__()
        assert lock.path not in OBJECTS
        with RetentionLock(root, "third", "lifecycle") as lock:
            assert json.loads(OBJECTS[lock.path])["run_id"] == "third"
    finally:
        OBJECTS.clear()

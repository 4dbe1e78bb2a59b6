"""Purge, lifecycle and erase on an object store: no directories, rename = copy + delete.

``ObjectStore`` is a Beam ``FileSystem`` registered for the ``retstore://`` scheme, with the
semantics of GCS and S3 that matter here: keys, not directories; a listing is a prefix scan; a
rename is a copy followed by a delete (so a crash can leave both). The ingestion pipelines write
into it, the retention jobs run on it in process (FnApiRunner), all through ``FileSystems``.
"""

from __future__ import annotations

import io
import json
import threading
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from apache_beam.io.filesystem import BeamIOError, FileMetadata, FileSystem

from pipelines import erase, ingest, lifecycle, purge, sdk_logs
from pipelines.options import bundled
from tests.support.outputs import RUN_TIME
from transforms.retention.txn import Transaction, apply_actions, recover
from transforms.sinks import HIVE_NULL_PARTITION

_OBJECTS: dict[str, bytes] = {}
_LOCK = threading.Lock()
ROOT = "retstore://bucket/out"
COMMON = ["--runner=FnApiRunner", f"--run_time={RUN_TIME}"]


class _Upload(io.BytesIO):
    def __init__(self, path: str) -> None:
        super().__init__()
        self.path = path

    def close(self) -> None:
        if not self.closed:
            with _LOCK:
                _OBJECTS[self.path] = self.getvalue()  # an object appears whole, on close
        super().close()


class ObjectStore(FileSystem):
    """Flat keys behind Beam's FileSystems API, like GCS or S3."""

    @classmethod
    def scheme(cls):
        return "retstore"

    def join(self, basepath, *paths):
        return "/".join([basepath.rstrip("/"), *(p.strip("/") for p in paths)])

    def split(self, path):
        head, _, tail = path.rstrip("/").rpartition("/")
        return head, tail

    def mkdirs(self, path):
        pass

    def has_dirs(self):
        return False

    def _list(self, dir_or_prefix):
        with _LOCK:
            items = [(k, len(v)) for k, v in _OBJECTS.items() if k.startswith(dir_or_prefix)]
        for key, size in items:
            yield FileMetadata(key, size, 0.0)

    def create(self, path, mime_type="application/octet-stream", compression_type=None):
        return _Upload(path)

    def open(self, path, mime_type="application/octet-stream", compression_type=None):
        with _LOCK:
            return io.BytesIO(_OBJECTS[path])

    def copy(self, source_file_names, destination_file_names):
        with _LOCK:
            for src, dst in zip(source_file_names, destination_file_names, strict=True):
                _OBJECTS[dst] = _OBJECTS[src]

    def rename(self, source_file_names, destination_file_names):
        missing = {
            (s, d): KeyError(s)
            for s, d in zip(source_file_names, destination_file_names, strict=True)
            if s not in _OBJECTS
        }
        if missing:
            raise BeamIOError("rename failed", missing)
        self.copy(source_file_names, destination_file_names)  # two steps, as on GCS
        self.delete(source_file_names)

    def exists(self, path):
        return path in _OBJECTS

    def size(self, path):
        return len(_OBJECTS[path])

    def last_updated(self, path):
        return 0.0

    def checksum(self, path):
        return str(len(_OBJECTS[path]))

    def metadata(self, path):
        return FileMetadata(path, len(_OBJECTS[path]), 0.0)

    def delete(self, paths):
        errors = {}
        with _LOCK:
            for path in paths:
                doomed = [k for k in _OBJECTS if k == path or k.startswith(path.rstrip("/") + "/")]
                if not doomed:
                    errors[path] = FileNotFoundError(path)
                for key in doomed:
                    del _OBJECTS[key]
        if errors:
            raise BeamIOError("delete failed", errors)


def keys(prefix: str = "") -> list[str]:
    return sorted(k[len(ROOT) + 1 :] for k in _OBJECTS if k.startswith(f"{ROOT}/{prefix}"))


def rows(category: str) -> dict[str, dict]:
    found = {}
    for key in keys(f"data_category={category}/"):
        if key.endswith(".parquet"):
            expiry = key.split("/")[1].split("=", 1)[1]
            for row in pq.read_table(io.BytesIO(_OBJECTS[f"{ROOT}/{key}"])).to_pylist():
                found[row["event_id"]] = {**row, "dir_expiry": expiry}
    return found


@pytest.fixture
def store(tmp_path):
    _OBJECTS.clear()
    sdk_logs.run([f"--input={bundled('sample/sdk_logs.jsonl')}", f"--output={ROOT}", *COMMON])
    accounts = tmp_path / "accounts.jsonl"
    accounts.write_text(
        json.dumps({"event_id": "a1", "uin": 7, "registered_at": "2026-11-01T00:00:00Z"})
        + "\n"
        + json.dumps({"event_id": "a2", "uin": 8, "registered_at": "2026-11-01T00:00:00Z"})
        + "\n"
    )
    ingest.run(
        ["--category=account_information", f"--input={accounts}", f"--output={ROOT}", *COMMON]
    )
    assert not any(k.startswith("/") or "/tmp/" in k for k in _OBJECTS)  # nothing went local
    yield ROOT
    _OBJECTS.clear()


def test_purge_lifecycle_and_erase_on_an_object_store(store, tmp_path):
    logs = rows("sdk_log")
    assert logs and any(r["dir_expiry"] < "2026-12-10" for r in logs.values())

    dry = purge.run([f"--output={store}", "--now=2026-12-10T00:00:00Z", "--dry_run"])
    assert dry["counts"]["partitions"] > 0 and rows("sdk_log") == logs
    purge.run([f"--output={store}", "--now=2026-12-10T00:00:00Z"])
    assert rows("sdk_log") == {k: r for k, r in logs.items() if r["dir_expiry"] >= "2026-12-10"}
    assert keys("_reports/purge-")

    events = tmp_path / "events.jsonl"
    events.write_text(json.dumps({"event": "account_deleted", "uin": 7, "at": RUN_TIME}) + "\n")
    lifecycle.run([f"--output={store}", f"--events={events}", *COMMON])
    accounts = rows("account_information")
    assert accounts["a1"]["dir_expiry"] == "2026-12-29"
    assert accounts["a2"]["dir_expiry"] == HIVE_NULL_PARTITION

    uin = next(r["uin"] for r in rows("sdk_log").values() if r["uin"])
    requests = tmp_path / "requests.jsonl"
    requests.write_text(
        json.dumps({"request_id": "R1", "received_at": RUN_TIME, "uin": uin})
        + "\n"
        + json.dumps({"request_id": "R2", "received_at": RUN_TIME, "uin": 8})
        + "\n"
    )
    report = erase.run([f"--output={store}", f"--requests={requests}", *COMMON])
    assert report["verification"]["verified"]
    assert uin not in {r["uin"] for r in rows("sdk_log").values()}
    assert set(rows("account_information")) == {"a1"}
    assert not keys("_retention") and not [k for k in keys() if "/.temp-" in k]
    assert not Path("retstore:").exists()  # the scheme was never taken for a local folder


def test_a_rename_cut_between_copy_and_delete_is_finished_by_recovery(store):
    (target,) = keys("data_category=account_information/")
    txn = Transaction(store, "t1")
    staged = txn.staged_rel(target)
    _OBJECTS[f"{store}/{staged}"] = b"new content"
    new_key = "data_category=account_information/expiry_date=2026-12-29/part-new.parquet"
    _OBJECTS[f"{store}/{txn.staged_rel(new_key)}"] = b"moved rows"
    actions = [
        {"op": "add", "target": new_key, "staged": txn.staged_rel(new_key)},
        {"op": "replace", "target": target, "staged": staged},
    ]
    txn.commit({"pipeline": "lifecycle", "actions": actions, "audit": {}})
    _OBJECTS[f"{store}/{new_key}"] = b"moved rows"  # the copy of the first rename happened...
    (summary,) = recover(store, "r2")  # ...and the process died before its delete
    assert summary["outcome"] == "rolled_forward"
    assert _OBJECTS[f"{store}/{new_key}"] == b"moved rows"
    assert _OBJECTS[f"{store}/{target}"] == b"new content"
    assert not keys("_retention")
    assert apply_actions(store, actions)["missing"] == []  # and again: nothing left to do

"""Purge, lifecycle and erase on an object store: no directories, rename = copy + delete.

``tests.support.objectstore.ObjectStore`` is a Beam ``FileSystem`` (scheme ``memstore://``) with the
semantics of GCS and S3 that matter here: keys, not directories; a listing is a prefix scan; a
rename is a copy followed by a delete (so a crash can leave both). The ingestion pipelines write
into it, the retention jobs run on it in process (FnApiRunner), all through ``FileSystems``.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from pipelines import erase, ingest, lifecycle, purge, sdk_logs
from pipelines.options import bundled
from tests.support.objectstore import OBJECTS
from tests.support.outputs import RUN_TIME
from transforms.retention.txn import Transaction, apply_actions, recover
from transforms.sinks import OPEN_ENDED_EXPIRY_DATE

ROOT = "memstore://retention/out"
COMMON = ["--runner=FnApiRunner", f"--run_time={RUN_TIME}"]


def keys(prefix: str = "") -> list[str]:
    return sorted(k[len(ROOT) + 1 :] for k in OBJECTS if k.startswith(f"{ROOT}/{prefix}"))


def rows(category: str) -> dict[str, dict]:
    found = {}
    for key in keys(f"data_category={category}/"):
        if key.endswith(".parquet"):
            expiry = key.split("/")[1].split("=", 1)[1]
            for row in pq.read_table(io.BytesIO(OBJECTS[f"{ROOT}/{key}"])).to_pylist():
                found[row["event_id"]] = {**row, "dir_expiry": expiry}
    return found


@pytest.fixture
def store(tmp_path):
    OBJECTS.clear()
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
    assert not any(k.startswith("/") or "/tmp/" in k for k in OBJECTS)  # nothing went local
    yield ROOT
    OBJECTS.clear()


def test_purge_lifecycle_and_erase_on_an_object_store(store, tmp_path):
    logs = rows("sdk_log")
    assert logs and any(r["dir_expiry"] < "2026-12-10" for r in logs.values())

    dry = purge.run([f"--output={store}", "--now=2026-12-10T00:00:00Z", "--dry_run"])
    assert dry["counts"]["partitions"] > 0 and rows("sdk_log") == logs
    purge.run([f"--output={store}", "--now=2026-12-10T00:00:00Z"])
    assert rows("sdk_log") == {k: r for k, r in logs.items() if r["dir_expiry"] > "2026-12-10"}
    assert keys("_reports/purge-")

    events = tmp_path / "events.jsonl"
    events.write_text(json.dumps({"event": "account_deleted", "uin": 7, "at": RUN_TIME}) + "\n")
    lifecycle.run([f"--output={store}", f"--events={events}", *COMMON])
    accounts = rows("account_information")
    assert accounts["a1"]["dir_expiry"] == "2026-12-29"
    assert accounts["a2"]["dir_expiry"] == OPEN_ENDED_EXPIRY_DATE

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
    OBJECTS[f"{store}/{staged}"] = b"new content"
    new_key = "data_category=account_information/expiry_date=2026-12-29/part-new.parquet"
    OBJECTS[f"{store}/{txn.staged_rel(new_key)}"] = b"moved rows"
    actions = [
        {"op": "add", "target": new_key, "staged": txn.staged_rel(new_key)},
        {"op": "replace", "target": target, "staged": staged},
    ]
    txn.commit({"pipeline": "lifecycle", "actions": actions, "audit": {}})
    OBJECTS[f"{store}/{new_key}"] = b"moved rows"  # the copy of the first rename happened...
    (summary,) = recover(store, "r2")  # ...and the process died before its delete
    assert summary["outcome"] == "rolled_forward"
    assert OBJECTS[f"{store}/{new_key}"] == b"moved rows"
    assert OBJECTS[f"{store}/{target}"] == b"new content"
    assert not keys("_retention")
    assert apply_actions(store, actions)["missing"] == []  # and again: nothing left to do

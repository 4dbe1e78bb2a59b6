"""End to end: ``python -m pipelines.lifecycle`` on outputs the ingestion pipelines really wrote.

Account, console, temporary-key, application-log, SDK APPID and SDK log records are ingested
with ``pipelines.ingest --category`` (account data in Parquet and Avro), corporate visitor data
with the visits pipeline on its bundled sample and on visitors known only by a phone number or a
LinkedIn URL; events then end their open-ended retention. Expected expiries are computed from the
policy objects, never from periods written in the test.
"""

from __future__ import annotations

import collections
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from pipelines import ingest, lifecycle, purge
from schemas.policy import load_policy
from tests.support.feeds import (
    CONTACTS,
    assert_input_flag_checked,
    ingest_contact_visits,
    write_jsonl,
)
from tests.support.outputs import COMMON, RUN_TIME, dead_letters, read_rows, run_sample
from transforms.retention.txn import FAILPOINT_ENV
from transforms.sinks import HIVE_NULL_PARTITION, OPEN_ENDED_EXPIRY_DATE
from transforms.timestamps import format_utc, parse_event_time, utc_date

pytestmark = pytest.mark.e2e
POLICY = load_policy()
KEY = "fingerprint-key-for-tests-0123456789"

INPUTS = {
    "account_information": [
        {"event_id": "a1", "uin": 100000009, "registered_at": "2026-11-01T08:00:00Z",
         "name": "Ada", "business_email": "ada@corp.example", "ip": "198.51.100.4"},
        {"event_id": "a2", "uin": "100000010", "registered_at": "2026-11-02T08:00:00Z",
         "name": "Bob"},
    ],
    "console_configuration": [
        {"event_id": "c1", "sdk_app_id": 1400000001, "uin": 100000009,
         "updated_at": 1795000000000, "application_name": "demo"},
        {"event_id": "c2", "sdk_app_id": 1400000002, "uin": 100000010,
         "updated_at": 1795000000000, "application_name": "old"},
        {"event_id": "c3", "sdk_app_id": 1400000003, "uin": 100000010,
         "updated_at": 1795000000000, "application_name": "third"},
        {"event_id": "c4", "sdk_app_id": 1400000004, "uin": 100000010,
         "updated_at": 1795000000000, "application_name": "kept"},
    ],
    "customer_temporary_key": [
        {"event_id": f"k{i}", "issued_at": "2026-11-03T00:00:00Z",
         "sdk_app_id": 1400000000 + i, "username": f"admin{i}", "private_key": f"PK-{i}"}
        for i in (1, 2, 3, 4)
    ],
    "customer_application_log": [
        {"event_id": eid, "sdk_app_id": str(app), "application_name": "x", "tag": "prod",
         "service_status": "running", "created_at": "2026-11-02T00:00:00", "operation": "create"}
        for eid, app in (("l1", 1400000001), ("l3", 1400000003), ("l3b", 1400000003),
                         ("l4", 1400000004), ("l5", 1400000005))
    ],
}  # fmt: skip
# Account 100000011 has no console configuration row: its applications are known from an SDK
# APPID record (1400000005) and from an SDK log (1400000006) alone.
LINKED = "100000011"
INPUTS["account_information"].append(
    {"event_id": "a3", "uin": LINKED, "registered_at": "2026-11-03T08:00:00Z", "name": "Cy"}
)
INPUTS["customer_temporary_key"] += [
    {"event_id": f"k{i}", "issued_at": "2026-11-03T00:00:00Z", "sdk_app_id": 1400000000 + i,
     "username": f"admin{i}", "private_key": f"PK-{i}"}
    for i in (5, 6)
]  # fmt: skip
INPUTS["sdk_appid"] = [
    {"event_id": "s5", "observed_at": "2026-11-25T00:00:00Z", "sdk_app_id": 1400000005,
     "uin": int(LINKED)},
]  # fmt: skip
INPUTS["sdk_log"] = [
    {"event_id": "g6", "logged_at": "2026-11-25T00:00:00Z", "sdk_app_id": "1400000006",
     "uin": LINKED, "user_id": "u-1", "message": "enter room"},
]  # fmt: skip


ACCOUNT_DELETED = "2026-11-28T10:00:00Z"
TERMINATED = "2026-11-27T00:00:00Z"
TERMINATED_LONG_AGO = "2026-11-01T00:00:00Z"  # + 7 days is before the run time
OPTED_OUT = "2026-11-28T00:00:00Z"


@pytest.fixture(scope="module")
def golden(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("lifecycle")
    out = tmp / "out"
    with pytest.MonkeyPatch.context() as env:
        env.setenv("TRTC_FINGERPRINT_KEY", KEY)
        for category, records in INPUTS.items():
            data = write_jsonl(tmp / f"{category}.jsonl", records)
            fmt = "both" if category == "account_information" else "parquet"
            ingest.run(
                [
                    f"--category={category}",
                    f"--input={data}",
                    f"--output={out}",
                    f"--format={fmt}",
                    *COMMON,
                ]
            )
    run_sample("visits", out)
    ingest_contact_visits(tmp, out, *COMMON)
    return out


def opted_out_email(root: Path) -> str:
    """The business e-mail with the most until-opt-out rows in the sample."""
    emails = collections.Counter(
        r["business_email"]
        for r in read_rows(root)["parquet"]
        if r["retention_rule"] == "until_opt_out" and r["business_email"]
    )
    return emails.most_common(1)[0][0]


def events(email: str) -> list:
    return [
        {"event": "account_deleted", "uin": 100000009, "at": ACCOUNT_DELETED},
        {"event": "service_terminated", "sdk_app_id": "1400000003", "at": TERMINATED},
        {"event": "service_terminated", "sdk_app_id": 1400000002, "at": TERMINATED_LONG_AGO},
        {"event": "marketing_opt_out", "business_email": f" {email.upper()} ", "at": OPTED_OUT},
    ]


MALFORMED = [
    {"event": "account_closed", "uin": 1, "at": ACCOUNT_DELETED},
    {"event": "account_deleted", "at": ACCOUNT_DELETED},
    {"event": "service_terminated", "sdk_app_id": 5, "at": "last tuesday"},
    '{"event": "account_deleted", "uin": ',
    # no country code: E.164 cannot be known without guessing a region
    {"event": "marketing_opt_out", "business_phone": "(415) 555-0199", "at": OPTED_OUT},
    {"event": "marketing_opt_out", "business_email": "who@corp.example",
     "linkedin_url": "linkedin.com/in/secret-person", "at": OPTED_OUT},
]  # fmt: skip


def expiry(event: str, category: str, at: str) -> int:
    cat = POLICY.category(category)
    return POLICY.lifecycle_events[event].expires_at(cat.retention, parse_event_time(at))


def strip(row: dict) -> dict:
    return {k: v for k, v in row.items() if k not in ("expires_at", "dir_expiry")}


def by_id(rows: list[dict]) -> dict[tuple[str, str], dict]:
    return {(r["data_category"], r["event_id"]): r for r in rows}


def data_state(root: Path) -> list[str]:
    """Every data row with the partition it is in (file names aside), in a stable order."""
    return sorted(
        json.dumps(r, sort_keys=True, default=str)
        for rows in read_rows(root).values()
        for r in rows
    )


def test_events_move_rows_delete_expired_ones_and_dead_letter_the_rest(out, tmp_path):
    email = opted_out_email(out)
    before = read_rows(out)
    feed = write_jsonl(tmp_path / "events.jsonl", [*events(email), *MALFORMED])
    report = lifecycle.run([f"--output={out}", f"--events={feed}", *COMMON])
    after = read_rows(out)

    moves = {
        (category, event_id): expiry(event, category, at)
        for category, event_id, event, at in (
            ("account_information", "a1", "account_deleted", ACCOUNT_DELETED),
            ("console_configuration", "c1", "account_deleted", ACCOUNT_DELETED),
            # the deleted account's application: its key and log end with the account's services
            ("customer_temporary_key", "k1", "service_terminated", ACCOUNT_DELETED),
            ("customer_application_log", "l1", "service_terminated", ACCOUNT_DELETED),
            ("console_configuration", "c3", "service_terminated", TERMINATED),
            ("customer_temporary_key", "k3", "service_terminated", TERMINATED),
            ("customer_application_log", "l3", "service_terminated", TERMINATED),
            ("customer_application_log", "l3b", "service_terminated", TERMINATED),
        )
    }
    opted = {
        ("corporate_visitor_info", r["event_id"])
        for r in before["parquet"]
        if r["retention_rule"] == "until_opt_out" and r["business_email"] == email
    }
    deleted = {("console_configuration", "c2"), ("customer_temporary_key", "k2")} | opted
    assert len(opted) >= 1

    for fmt in ("parquet", "avro"):
        old, new = by_id(before[fmt]), by_id(after[fmt])
        assert len(new) == len(after[fmt])  # no row is in two places
        assert set(new) == set(old) - deleted  # and none is lost
        for key, row in new.items():
            assert strip(row) == strip(old[key])  # every other column unchanged
            if key in moves:
                assert int(row["expires_at"].timestamp() * 1_000_000) == moves[key]
                assert row["dir_expiry"] == utc_date(moves[key])
            else:
                assert row["expires_at"] == old[key]["expires_at"]
                assert row["dir_expiry"] == old[key]["dir_expiry"]
    assert ("account_information", "a1") in by_id(after["avro"])
    untouched = {("account_information", "a2"), ("console_configuration", "c4"),
                 ("customer_temporary_key", "k4"), ("customer_application_log", "l4")}  # fmt: skip
    for key in untouched:
        assert by_id(after["parquet"])[key]["dir_expiry"] == OPEN_ENDED_EXPIRY_DATE

    letters = {d["error"] for d in dead_letters(out, "lifecycle")}
    assert letters == {
        "unknown_event",
        "missing_field:uin",
        "malformed_timestamp:at",
        "invalid_json",
        "malformed_field:business_phone",
        "ambiguous_subject",
    }
    letters_text = json.dumps(dead_letters(out, "lifecycle"))
    for contact in ("555-0199", "who@corp.example", "secret-person"):
        assert contact not in letters_text  # contact data is masked in dead letters
    counts = report["counts"]
    assert counts["events_read"] == 10
    assert counts["derived_events"] == {"service_terminated": 1}
    assert counts["events_valid"] == {
        "account_deleted": 1,
        "marketing_opt_out": 1,
        "service_terminated": 2,
    }
    assert counts["rows_moved"] == {
        "account_information": 2,  # Parquet and Avro
        "console_configuration": 2,
        "customer_application_log": 3,
        "customer_temporary_key": 2,
    }
    assert counts["rows_deleted_expired"] == {
        "console_configuration": 1,
        "corporate_visitor_info": len(opted),
        "customer_temporary_key": 1,
    }
    assert report["policy_version"] == POLICY.version
    assert json.loads(Path(report["report_path"]).read_text())["files"] == report["files"]
    assert not (out / "_retention").exists()


def test_older_outputs_open_ended_rows_in_hives_null_partition_are_ended_alike(out, tmp_path):
    """Outputs written before open-ended rows went to ``expiry_date=9999-12-31`` hold them in
    Hive's null partition: the job reads that partition as open-ended too, and ends its rows
    exactly as it ends them in the current layout (the rows it does not reach stay put)."""
    legacy = tmp_path / "legacy"
    shutil.copytree(out, legacy)
    for partition in sorted(legacy.glob(f"*/expiry_date={OPEN_ENDED_EXPIRY_DATE}")):
        partition.rename(partition.with_name(f"expiry_date={HIVE_NULL_PARTITION}"))
    feed = write_jsonl(tmp_path / "events.jsonl", events(opted_out_email(out)))
    for root in (out, legacy):
        lifecycle.run([f"--output={root}", f"--events={feed}", *COMMON])

    def state(root: Path) -> list[str]:
        """The data rows, both open-ended partitions under one name."""
        named = dict.fromkeys((HIVE_NULL_PARTITION, OPEN_ENDED_EXPIRY_DATE), "open-ended")
        return sorted(
            json.dumps(
                {**r, "dir_expiry": named.get(r["dir_expiry"], r["dir_expiry"])},
                sort_keys=True,
                default=str,
            )
            for rows in read_rows(root).values()
            for r in rows
        )

    assert state(legacy) == state(out)
    assert list(legacy.glob(f"*/expiry_date={HIVE_NULL_PARTITION}/*"))  # the untouched rows
    assert not list(legacy.glob(f"*/expiry_date={OPEN_ENDED_EXPIRY_DATE}"))


def test_the_next_purge_deletes_moved_rows_on_their_day(out, tmp_path):
    feed = write_jsonl(tmp_path / "e.jsonl", events(opted_out_email(out))[:1])
    lifecycle.run([f"--output={out}", f"--events={feed}", *COMMON])
    a1 = expiry("account_deleted", "account_information", ACCOUNT_DELETED)
    c1 = expiry("account_deleted", "console_configuration", ACCOUNT_DELETED)

    def present() -> set[str]:
        return {r["event_id"] for r in read_rows(out)["parquet"]} & {"a1", "c1", "k1", "l1", "a2"}

    day = 86_400_000_000
    purge.run([f"--output={out}", f"--now={format_utc(c1 - day)}"])  # the day before: kept
    assert present() == {"a1", "c1", "k1", "l1", "a2"}
    midnight = c1 - c1 % day  # 00:00 UTC of the day c1 expires: it goes that day
    purge.run([f"--output={out}", f"--now={format_utc(midnight)}"])
    assert present() == {"a1", "a2"}
    purge.run([f"--output={out}", f"--now={format_utc(a1 - day)}"])
    assert present() == {"a1", "a2"}
    purge.run([f"--output={out}", f"--now={format_utc(a1 - a1 % day)}"])
    assert present() == {"a2"}  # the other account is open-ended: never purged


def corporate(root: Path) -> dict[str, str]:
    """The corporate visitor rows of the contact-only visitors, by the partition they are in."""
    return {
        r["event_id"]: r["dir_expiry"]
        for r in read_rows(root)["parquet"]
        if r["data_category"] == "corporate_visitor_info" and r["event_id"] in CONTACTS
    }


def test_an_opt_out_by_phone_or_profile_url_ends_rows_without_an_email(out, tmp_path):
    assert corporate(out) == dict.fromkeys(CONTACTS, OPEN_ENDED_EXPIRY_DATE)  # kept until opt-out
    # their visits (and IPs) are long purged, the marketing rows stay: only an opt-out ends them
    purge.run([f"--output={out}", "--now=2027-12-31T00:00:00Z"])
    assert not list(out.glob("data_category=website_visit/*"))
    assert corporate(out) == dict.fromkeys(CONTACTS, OPEN_ENDED_EXPIRY_DATE)
    before = read_rows(out)["parquet"]
    feed = write_jsonl(
        tmp_path / "e.jsonl",
        [  # the same contacts, spelt otherwise than AroundDeal or the page spelt them
            {"event": "marketing_opt_out", "business_phone": "001 415.555.2671", "at": OPTED_OUT},
            {"event": "marketing_opt_out", "linkedin_url": "HTTP://uk.LinkedIn.com/in/JANE-DOE",
             "at": OPTED_OUT},
        ],
    )  # fmt: skip
    report = lifecycle.run([f"--output={out}", f"--events={feed}", *COMMON])
    assert report["counts"]["events_valid"] == {"marketing_opt_out": 2}
    assert report["counts"]["rows_deleted_expired"] == {"corporate_visitor_info": 2}
    assert corporate(out) == {
        "p-other-phone": OPEN_ENDED_EXPIRY_DATE,
        "p-other-linkedin": OPEN_ENDED_EXPIRY_DATE,
    }
    gone = {("corporate_visitor_info", "p-phone"), ("corporate_visitor_info", "p-linkedin")}
    assert by_id(read_rows(out)["parquet"]) == {
        k: r for k, r in by_id(before).items() if k not in gone
    }


def test_account_deletion_finds_its_applications_in_every_linking_category(out, tmp_path):
    feed = write_jsonl(
        tmp_path / "e.jsonl", [{"event": "account_deleted", "uin": LINKED, "at": ACCOUNT_DELETED}]
    )
    report = lifecycle.run([f"--output={out}", f"--events={feed}", *COMMON])
    rows = by_id(read_rows(out)["parquet"])
    service = expiry("service_terminated", "customer_temporary_key", ACCOUNT_DELETED)
    expected = {
        ("account_information", "a3"): expiry("account_deleted", "account_information",
                                              ACCOUNT_DELETED),
        ("customer_temporary_key", "k5"): service,  # its application is in an SDK APPID record
        ("customer_application_log", "l5"): service,
        ("customer_temporary_key", "k6"): service,  # its application is in an SDK log
    }  # fmt: skip
    for key, expires in expected.items():
        assert rows[key]["dir_expiry"] == utc_date(expires), key
        assert int(rows[key]["expires_at"].timestamp() * 1_000_000) == expires, key
    assert report["counts"]["derived_events"] == {"service_terminated": 2}
    for untouched in (("customer_temporary_key", "k4"), ("customer_application_log", "l4")):
        assert rows[untouched]["dir_expiry"] == OPEN_ENDED_EXPIRY_DATE


def test_an_expiry_due_on_the_run_date_is_deleted_at_once(out, tmp_path):
    """The purge deletes a partition on its date, so a row whose new expiry falls on the run's
    UTC date is already due: it is deleted, not moved to a partition the purge would delete."""
    run_day = utc_date(parse_event_time(RUN_TIME))
    ends_today = format_utc(
        parse_event_time(RUN_TIME) + 12 * 3_600_000_000
        - (expiry("service_terminated", "customer_temporary_key", RUN_TIME)
           - parse_event_time(RUN_TIME))
    )  # fmt: skip
    email = opted_out_email(out)
    later_today = format_utc(parse_event_time(RUN_TIME) + 3_600_000_000)  # within the skew
    feed = write_jsonl(
        tmp_path / "e.jsonl",
        [
            {"event": "service_terminated", "sdk_app_id": 1400000004, "at": ends_today},
            {"event": "marketing_opt_out", "business_email": email, "at": later_today},
        ],
    )
    before = read_rows(out)["parquet"]
    report = lifecycle.run([f"--output={out}", f"--events={feed}", *COMMON])
    after = by_id(read_rows(out)["parquet"])
    opted = {
        ("corporate_visitor_info", r["event_id"])
        for r in before
        if r["retention_rule"] == "until_opt_out" and r["business_email"] == email
    }
    gone = {("console_configuration", "c4"), ("customer_temporary_key", "k4"),
            ("customer_application_log", "l4")} | opted  # fmt: skip
    assert set(after) == set(by_id(before)) - gone
    assert report["counts"]["rows_moved"] == {}
    assert not list(out.glob(f"data_category=*/expiry_date={run_day}"))


def test_rerunning_the_same_events_is_a_no_op(out, tmp_path):
    feed = write_jsonl(tmp_path / "e.jsonl", events(opted_out_email(out)))
    lifecycle.run([f"--output={out}", f"--events={feed}", *COMMON])
    first = {p: p.read_bytes() for p in out.glob("data_category=*/*/*")}
    report = lifecycle.run([f"--output={out}", f"--events={feed}", *COMMON])
    assert {p: p.read_bytes() for p in out.glob("data_category=*/*/*")} == first
    assert report["counts"]["rows_moved"] == {} and report["files"]["added"] == []


@pytest.fixture(scope="module")
def feed_and_reference(golden, tmp_path_factory) -> tuple[Path, Path]:
    """The events of the crash tests, and the state an uninterrupted run leaves."""
    tmp = tmp_path_factory.mktemp("reference")
    feed = write_jsonl(tmp / "e.jsonl", [*events(opted_out_email(golden)), MALFORMED[0]])
    reference = tmp / "out"
    shutil.copytree(golden, reference)
    lifecycle.run([f"--output={reference}", f"--events={feed}", *COMMON])
    return feed, reference


@pytest.mark.parametrize("failpoint", ["before_commit", "apply:4"])
def test_killed_lifecycle_and_rerun_end_in_the_right_state(
    out, golden, feed_and_reference, failpoint
):
    feed, reference = feed_and_reference
    env = {**os.environ, FAILPOINT_ENV: failpoint}
    killed = subprocess.run(
        [
            sys.executable,
            "-m",
            "pipelines.lifecycle",
            f"--output={out}",
            f"--events={feed}",
            *COMMON,
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert killed.returncode == -9, killed.stderr[-3000:]
    if failpoint == "before_commit":  # staged, not committed: the old state, untouched
        assert data_state(out) == data_state(golden)
    else:  # committed, half applied: moved rows may be visible twice, none is missing
        assert {json.loads(r)["event_id"] for r in data_state(out)} >= {
            json.loads(r)["event_id"] for r in data_state(reference)
        }
    rerun = lifecycle.run([f"--output={out}", f"--events={feed}", *COMMON])
    (recovered,) = rerun["recovered_transactions"]
    assert recovered["outcome"] == (
        "rolled_back" if failpoint == "before_commit" else "rolled_forward"
    )
    assert data_state(out) == data_state(reference)
    # the killed run's dead letter is part of what it committed; the rerun reports its own
    assert [d["error"] for d in dead_letters(out, "lifecycle")] == ["unknown_event"] * (
        1 if failpoint == "before_commit" else 2
    )
    assert not (out / "_retention").exists()
    assert not list(out.rglob(".temp-*"))


def test_configuration_errors_stop_before_anything_is_touched(out, tmp_path):
    before = data_state(out)
    assert_input_flag_checked(
        lifecycle.main, "--events", tmp_path / "none-*.jsonl", f"--output={out}", *COMMON
    )
    assert data_state(out) == before and not (out / "_retention").exists()

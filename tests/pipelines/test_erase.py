"""End to end: ``python -m pipelines.erase`` on outputs the ingestion pipelines really wrote.

SDK logs, visits (with visitors known only by a phone number or a LinkedIn URL) and account data
are ingested in Parquet and Avro; the rows each request must remove are computed here with plain
Python over the rows read back, independently of the pipeline's own matching, and everything
else must stay identical.
"""

from __future__ import annotations

import collections
import hashlib
import ipaddress
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from pipelines import erase, ingest, sdk_logs
from pipelines.options import bundled
from schemas.policy import load_policy
from tests.support.feeds import assert_input_flag_checked, ingest_contact_visits, write_jsonl
from tests.support.outputs import COMMON, dead_letters, read_rows, run_sample
from transforms.retention.txn import FAILPOINT_ENV

pytestmark = pytest.mark.e2e
INGEST = [*COMMON, "--format=both"]  # the golden output is written in Parquet and Avro
POLICY = load_policy()
KEY = "fingerprint-key-for-tests-0123456789"


def _sample(name: str) -> list[dict]:
    lines = Path(bundled(f"sample/{name}")).read_text().splitlines()
    out = []
    for line in lines:
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict):
            out.append(record)
    return out


# A customer whose UIN is in the sample SDK logs, a visitor IP with visits and dead letters.
UIN = collections.Counter(
    str(r["uin"]) for r in _sample("sdk_logs.jsonl") if r.get("uin")
).most_common(1)[0][0]
IP = "94.46.41.248"
USER, APP, OTHER_APP = "u-7", "1400000701", "1400000702"
# An application of UIN known from an SDK log alone (x6; no console configuration row).
LOGGED_APP = 1400000441

EXTRA_LOGS = [
    {"event_id": "x1", "logged_at": "2026-11-25T10:00:00Z", "sdk_app_id": APP, "user_id": USER,
     "uin": "42", "message": "enter"},
    {"event_id": "x2", "logged_at": "2026-11-26T10:00:00Z", "sdk_app_id": int(APP),
     "user_id": USER, "client_ip": "203.0.113.9"},
    {"event_id": "x3", "logged_at": "2026-11-26T10:00:00Z", "sdk_app_id": OTHER_APP,
     "user_id": USER, "message": "same id, other application"},
    {"event_id": "x4", "logged_at": "2026-11-26T10:00:00Z", "sdk_app_id": APP, "user_id": "u-8"},
    {"event_id": "x5", "logged_at": "not a time", "sdk_app_id": APP, "user_id": USER},
    # the only stored row that ties an application of UIN to it (no console configuration row)
    {"event_id": "x6", "logged_at": "2026-11-26T10:00:00Z", "sdk_app_id": LOGGED_APP,
     "uin": UIN, "user_id": "u-9"},
]  # fmt: skip


def accounts(email: str) -> dict[str, list[dict]]:
    return {
        "account_information": [
            {"event_id": "a1", "uin": UIN, "registered_at": "2026-11-01T08:00:00Z", "name": "Ada",
             "google_email": email.upper(), "ip": "198.51.100.4"},
            {"event_id": "a2", "uin": "100000010", "registered_at": "2026-11-02T08:00:00Z",
             "name": "Bob", "business_email": "bob@corp.example", "ip": IP},
        ],
        "console_configuration": [
            {"event_id": "c1", "sdk_app_id": 1400000001, "uin": UIN,
             "updated_at": 1795000000000, "application_name": "mine"},
            {"event_id": "c2", "sdk_app_id": 1400000002, "uin": 100000010,
             "updated_at": 1795000000000, "application_name": "theirs"},
            {"event_id": "c701", "sdk_app_id": APP, "uin": 100000010,
             "updated_at": 1795000000000, "application_name": "the erased application"},
        ],
        "customer_temporary_key": [
            {"event_id": f"k{i}", "issued_at": "2026-11-03T00:00:00Z",
             "sdk_app_id": app, "username": f"admin{i}", "private_key": f"PK-{i}"}
            for i, app in ((1, 1400000001), (2, 1400000002), (441, LOGGED_APP), (701, APP))
        ],
    }  # fmt: skip


def visitor_email() -> str:
    """The most frequent business e-mail of the bundled AroundDeal snapshot's contacts."""
    rows = Path(bundled("sample/arounddeal_snapshot.csv")).read_text().splitlines()
    header = rows[0].split(",")
    column = header.index("business_email")
    emails = collections.Counter(r.split(",")[column] for r in rows[1:] if r.split(",")[column])
    return emails.most_common(1)[0][0]


@pytest.fixture(scope="module")
def golden(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("erase")
    out = tmp / "out"
    run_sample("sdk_logs", out, "--format=both")
    sdk_logs.run(
        [f"--input={write_jsonl(tmp / 'x.jsonl', EXTRA_LOGS)}", f"--output={out}", *INGEST]
    )
    run_sample("visits", out, "--format=both")
    ingest_contact_visits(tmp, out, *INGEST)
    with pytest.MonkeyPatch.context() as env:
        env.setenv("TRTC_FINGERPRINT_KEY", KEY)
        for category, records in accounts(visitor_email()).items():
            data = write_jsonl(tmp / f"{category}.jsonl", records)
            ingest.run([f"--category={category}", f"--input={data}", f"--output={out}", *INGEST])
    return out


def requests(email: str) -> list:
    return [
        {"request_id": "DSR-email", "received_at": "2026-11-28T09:00:00Z",
         "business_email": f"  {email.title()} "},
        {"request_id": "DSR-ip", "received_at": "2026-11-28T09:01:00Z", "ip": IP},
        {"request_id": "DSR-uin", "received_at": "2026-11-28T09:02:00Z", "uin": int(UIN)},
        {"request_id": "DSR-user", "received_at": "2026-11-28T09:03:00Z", "user_id": USER,
         "sdk_app_id": int(APP)},
    ]  # fmt: skip


MALFORMED = [
    {"request_id": "DSR-bad-1", "received_at": "2026-11-28T09:00:00Z"},
    {"request_id": "DSR-bad-2", "received_at": "2026-11-28T09:00:00Z", "uin": 1, "ip": "9.9.9.9"},
    {"request_id": "DSR-bad-3", "business_email": "secret.person@example.com"},
    {"request_id": "DSR-bad-4", "received_at": "2026-11-28T09:00:00Z", "ip": "300.1.1.1"},
    '{"request_id": "DSR-bad-5", "uin": ',
]

# ---------------------------------------------------------------- the independent reference


def ip_spellings(ip: str) -> set[str]:
    v4 = ipaddress.IPv4Address(ip)
    return {ip, str(ipaddress.IPv6Address(f"::ffff:{v4}")), f"::ffff:{v4}"}


def expected_rows(rows: list[dict], email: str) -> dict[str, set[int]]:
    """Positions of the rows each request must erase, by plain predicates."""
    email = email.lower()

    def text(value) -> str:
        return "" if value is None else str(value).strip()

    hits: dict[str, set[int]] = collections.defaultdict(set)
    visits_of_ip = {
        r["event_id"]
        for r in rows
        if r["data_category"] == "website_visit" and text(r.get("ip")) in ip_spellings(IP)
    }
    # an account's applications: wherever a stored row ties the uin to an sdk_app_id
    apps_of_uin = {
        text(r["sdk_app_id"])
        for r in rows
        if r.get("sdk_app_id") is not None and text(r.get("uin")) == UIN
    }
    for i, r in enumerate(rows):
        if email in (text(r.get("business_email")).lower(), text(r.get("google_email")).lower()):
            hits["DSR-email"].add(i)
        if {text(r.get("ip")), text(r.get("client_ip"))} & ip_spellings(IP) or (
            r["data_category"] == "corporate_visitor_info" and r["event_id"] in visits_of_ip
        ):
            hits["DSR-ip"].add(i)
        if text(r.get("uin")) == UIN or (
            r["data_category"] in ("customer_temporary_key", "customer_application_log")
            and text(r.get("sdk_app_id")) in apps_of_uin
        ):
            hits["DSR-uin"].add(i)
        if text(r.get("user_id")) == USER and text(r.get("sdk_app_id")) == APP:
            hits["DSR-user"].add(i)
    return hits  # fmt: skip


def letter_matches(line: str, email: str) -> bool:
    lowered = line.lower()
    return (
        email.lower() in lowered
        or re.search(rf"(?<![\d.]){re.escape(IP)}(?![\d.])", line) is not None
        or re.search(rf'uin\\?"\s*:\s*\\?"?{UIN}\b', line) is not None
        or (f'"user_id": "{USER}"' in line.replace('\\"', '"') and APP in line)
    )


def all_letters(root: Path, *, exclude: str = "erase") -> list[str]:
    return sorted(
        line
        for p in root.glob("_dead_letter/source=*/*/*.jsonl")
        if f"source={exclude}" not in str(p)
        for line in p.read_text().splitlines()
    )


def key(row: dict) -> str:
    return json.dumps(row, sort_keys=True, default=str)


def hashes(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in [*root.glob("data_category=*/*/*"), *root.glob("_dead_letter/*/*/*")]
    }


# ------------------------------------------------------------------------------------ tests


def test_erasure_removes_every_row_of_each_subject_and_nothing_else(out, tmp_path):
    email = visitor_email()
    before, letters_before, files_before = read_rows(out), all_letters(out), hashes(out)
    feed = write_jsonl(tmp_path / "requests.jsonl", [*requests(email), *MALFORMED])
    report = erase.run([f"--output={out}", f"--requests={feed}", *COMMON])
    after = read_rows(out)

    expected_total: collections.Counter = collections.Counter()
    for fmt in ("parquet", "avro"):
        hits = expected_rows(before[fmt], email)
        assert all(hits[r] for r in ("DSR-email", "DSR-ip", "DSR-uin", "DSR-user")), fmt
        gone = set().union(*hits.values())
        kept = [r for i, r in enumerate(before[fmt]) if i not in gone]
        assert sorted(map(key, after[fmt])) == sorted(map(key, kept))  # the others, identical
        expected_total.update({request: len(rows) for request, rows in hits.items()})
    assert {r["request_id"]: r["rows_erased_total"] for r in report["requests"]} == dict(
        expected_total
    )
    positions = set().union(*expected_rows(before["parquet"], email).values())
    categories = {before["parquet"][i]["data_category"] for i in positions}
    assert categories >= {
        "website_visit", "corporate_visitor_info", "account_information", "console_configuration",
        "customer_temporary_key", "sdk_log", "backend_log",
    }  # fmt: skip
    assert [r["event_id"] for r in after["parquet"] if r.get("user_id") == USER] == ["x3"]

    erased_letters = [line for line in letters_before if letter_matches(line, email)]
    assert erased_letters
    assert all_letters(out) == [line for line in letters_before if line not in erased_letters]

    touched = {*report["files"]["rewritten"], *report["files"]["deleted"]}
    for rel, digest in files_before.items():
        if rel not in touched:  # a file without a subject's row is never rewritten
            assert hashes(out)[rel] == digest, rel
    assert touched and not report["files"]["not_scanned"]

    rejected = {d["raw"]: d["error"] for d in dead_letters(out, "erase")}
    assert sorted(rejected.values()) == [
        "ambiguous_subject",
        "invalid_json",
        "malformed_field:ip",
        "missing_field:received_at",
        "missing_subject",
    ]
    audit_text = Path(report["report_path"]).read_text()
    for identifier in (email, IP, USER, "secret.person@example.com", "300.1.1.1", "9.9.9.9"):
        assert identifier.lower() not in audit_text.lower()
        assert identifier not in json.dumps(dead_letters(out, "erase"))
    layout = [
        *out.glob("data_category=*/expiry_date=*/*"),
        *out.glob("_dead_letter/source=*/expiry_date=*/*"),
    ]
    assert report["verification"] == {
        "files_still_matching": [],
        "rows_still_matching": 0,
        "files_listed": len(layout),  # the read-back covered every file left
        "files_read_back": len(layout),
        "pending_runs": [],
        "verified": True,
    }
    audit = json.loads(audit_text)
    by_id = {r["request_id"]: r for r in audit["requests"]}
    assert set(by_id) == {"DSR-email", "DSR-ip", "DSR-uin", "DSR-user"}
    assert by_id["DSR-ip"]["dead_letters_erased"] > 0
    # k1 (its application in the console configuration) and k441 (in an SDK log), twice each
    assert by_id["DSR-uin"]["rows_erased"]["customer_temporary_key"] == 4
    for record in audit["requests"]:
        assert record["verification"] == {"rows_still_matching": 0, "verified": True}
        assert record["files"] and record["received_at"].startswith("2026-11-28T09:0")
    assert audit["policy_version"] == POLICY.version
    assert audit["counts"]["requests_read"] == 9 and audit["counts"]["requests_valid"] == 4
    assert not (out / "_retention").exists()


def test_erasure_by_phone_profile_url_and_whole_application(out, tmp_path):
    before, letters_before = read_rows(out), all_letters(out)
    feed = write_jsonl(
        tmp_path / "requests.jsonl",
        [  # spelt otherwise than stored
            {"request_id": "DSR-phone", "received_at": "2026-11-28T09:00:00Z",
             "business_phone": "00 1 415.555.2671"},
            {"request_id": "DSR-linkedin", "received_at": "2026-11-28T09:00:00Z",
             "linkedin_url": "http://LinkedIn.com/in/JANE-DOE#about"},
            {"request_id": "DSR-app", "received_at": "2026-11-28T09:00:00Z",
             "sdk_app_id": int(APP)},
            {"request_id": "DSR-bad-phone", "received_at": "2026-11-28T09:00:00Z",
             "business_phone": "(415) 555-2671"},  # no country code: not guessed
        ],
    )  # fmt: skip
    report = erase.run([f"--output={out}", f"--requests={feed}", *COMMON])

    def text(value) -> str:
        return "" if value is None else str(value).strip()

    expected: collections.Counter = collections.Counter()
    for fmt in ("parquet", "avro"):
        rows = before[fmt]
        hits = {
            "DSR-phone": {i for i, r in enumerate(rows)
                          if r["data_category"] == "corporate_visitor_info"
                          and r["event_id"] == "p-phone"},
            "DSR-linkedin": {i for i, r in enumerate(rows)
                             if r["data_category"] == "corporate_visitor_info"
                             and r["event_id"] == "p-linkedin"},
            "DSR-app": {i for i, r in enumerate(rows) if text(r.get("sdk_app_id")) == APP},
        }  # fmt: skip
        assert all(hits.values()), fmt
        gone = set().union(*hits.values())
        kept = [r for i, r in enumerate(rows) if i not in gone]
        assert sorted(map(key, read_rows(out)[fmt])) == sorted(map(key, kept)), fmt
        expected.update({request: len(found) for request, found in hits.items()})
    assert {r["request_id"]: r["rows_erased_total"] for r in report["requests"]} == dict(expected)
    app_rows = {r["data_category"] for r in before["parquet"] if text(r.get("sdk_app_id")) == APP}
    assert app_rows >= {"sdk_log", "backend_log", "console_configuration", "customer_temporary_key"}

    # the application's rejected log line is erased from the dead letters too
    erased = [line for line in letters_before if APP in line]
    assert erased and all_letters(out) == [line for line in letters_before if line not in erased]
    (rejected,) = dead_letters(out, "erase")
    assert rejected["error"] == "malformed_field:business_phone"
    assert "555-2671" not in json.dumps(rejected)  # a rejected request never copies its subject
    audit_text = Path(report["report_path"]).read_text()
    for value in ("555-2671", "4155552671", "jane-doe", APP):
        assert value not in audit_text.lower()
    assert report["verification"]["verified"]
    by_id = {r["request_id"]: r for r in report["requests"]}
    assert by_id["DSR-app"]["subject_field"] == "sdk_app_id"
    assert by_id["DSR-app"]["dead_letters_erased"] == len(erased)


def test_a_second_erasure_of_the_same_subjects_changes_nothing(out, tmp_path):
    feed = write_jsonl(tmp_path / "requests.jsonl", requests(visitor_email()))
    erase.run([f"--output={out}", f"--requests={feed}", *COMMON])
    first = hashes(out)
    report = erase.run([f"--output={out}", f"--requests={feed}", *COMMON])
    assert hashes(out) == first
    assert report["counts"]["rows_erased"] == 0 and report["verification"]["verified"]
    assert [r["rows_erased_total"] for r in report["requests"]] == [0, 0, 0, 0]


@pytest.fixture(scope="module")
def feed_and_reference(golden, tmp_path_factory) -> tuple[Path, Path]:
    tmp = tmp_path_factory.mktemp("reference")
    feed = write_jsonl(tmp / "requests.jsonl", requests(visitor_email()))
    reference = tmp / "out"
    shutil.copytree(golden, reference)
    erase.run([f"--output={reference}", f"--requests={feed}", *COMMON])
    return feed, reference


@pytest.mark.parametrize("failpoint", ["before_commit", "apply:5"])
def test_killed_erasure_and_rerun_end_in_the_right_state(out, feed_and_reference, failpoint):
    feed, reference = feed_and_reference
    killed = subprocess.run(
        [sys.executable, "-m", "pipelines.erase", f"--output={out}", f"--requests={feed}", *COMMON],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, FAILPOINT_ENV: failpoint},
    )
    assert killed.returncode == -9, killed.stderr[-3000:]
    rerun = erase.run([f"--output={out}", f"--requests={feed}", *COMMON])
    (recovered,) = rerun["recovered_transactions"]
    assert recovered["outcome"] == (
        "rolled_back" if failpoint == "before_commit" else "rolled_forward"
    )
    # rewrites keep their names; Avro files differ in their random sync marker, not in content
    assert hashes(out).keys() == hashes(reference).keys()
    for fmt, rows in read_rows(out).items():
        assert sorted(map(key, rows)) == sorted(map(key, read_rows(reference)[fmt])), fmt
    assert all_letters(out) == all_letters(reference)
    assert rerun["verification"]["verified"]
    if failpoint != "before_commit":
        killed_audit = json.loads(Path(recovered["audit"]).read_text())
        assert killed_audit["recovered"] and killed_audit["counts"]["rows_erased"] > 0
    assert not (out / "_retention").exists()


def test_configuration_errors_stop_before_anything_is_touched(out, tmp_path):
    before = hashes(out)
    assert_input_flag_checked(
        erase.main, "--requests", tmp_path / "none-*.jsonl", f"--output={out}", *COMMON
    )
    feed = write_jsonl(tmp_path / "r.jsonl", requests(visitor_email()))
    with pytest.raises(SystemExit, match="does not look like an output root"):
        erase.main([f"--output={tmp_path}", f"--requests={feed}", *COMMON])
    assert hashes(out) == before and not (out / "_retention").exists()

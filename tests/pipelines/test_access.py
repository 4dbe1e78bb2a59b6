"""End to end: ``python -m pipelines.access`` on outputs the ingestion pipelines really wrote.

The output is the erasure tests' (SDK logs, visits with contacts, account data; Parquet and
Avro). What an access request exports is checked three ways: against the rows an independent
reference says each request must reach, against what ``pipelines.erase`` then removes for the
same requests, and on disk (owner-only permissions, counts-only audit). A category a temporary
policy adds is exported and erased with no code change.
"""

from __future__ import annotations

import collections
import json
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from pipelines import access, erase, ingest, lifecycle
from tests.pipelines.test_erase import (  # noqa: F401 (golden: the module's output fixture)
    APP,
    COMMON,
    IP,
    USER,
    all_letters,
    expected_rows,
    golden,
    requests,
    visitor_email,
)
from tests.support.feeds import write_jsonl
from tests.support.outputs import RUN_TIME, dead_letters, read_rows
from tests.support.policies import webinar_policy
from transforms.retention.erasure import jsonable
from transforms.retention.export import csv_cell
from transforms.retention.lock import RetentionLock

pytestmark = pytest.mark.e2e
TAGS = ("data_category", "purposes", "legal_basis", "retention_rule", "expires_at")
# Subjects known only by a phone number, a LinkedIn URL, and a whole application.
MORE = [
    {"request_id": "DSR-phone", "received_at": "2026-11-28T09:00:00Z",
     "business_phone": "00 1 415.555.2671"},
    {"request_id": "DSR-linkedin", "received_at": "2026-11-28T09:00:00Z",
     "linkedin_url": "http://LinkedIn.com/in/JANE-DOE#about"},
    {"request_id": "DSR-app", "received_at": "2026-11-28T09:00:00Z", "sdk_app_id": int(APP)},
]  # fmt: skip


def run_access(out: Path, feed: Path, export: Path, *extra: str) -> dict:
    return access.run(
        [f"--output={out}", f"--requests={feed}", f"--export={export}", *COMMON, *extra]
    )


def stored_key(row: dict) -> str:
    """A row read back from the output (its partition columns dropped), as JSON."""
    row = {k: v for k, v in row.items() if not k.startswith("dir_")}
    return json.dumps(row, sort_keys=True, default=jsonable)


def exported_key(record: dict) -> str:
    """An exported row as the row it was read from, as JSON."""
    tags = {"data_category": record["category"], **{t: record[t] for t in TAGS[1:]}}
    row = {**record["fields"], **tags, "policy_version": record["policy_version"]}
    return json.dumps(row, sort_keys=True)


def exported(export: Path, request_id: str) -> list[dict]:
    return json.loads((export / request_id / "records.json").read_text())["records"]


def fmt(record: dict) -> str:
    return record["stored_in"].rsplit(".", 1)[-1]


# ------------------------------------------------------------------------------------ tests


def test_an_export_holds_exactly_the_rows_the_erasure_of_the_same_request_removes(out, tmp_path):
    email = visitor_email()
    feed = write_jsonl(tmp_path / "requests.jsonl", [*requests(email), *MORE])
    before, letters_before = read_rows(out), all_letters(out, exclude="access")
    export = tmp_path / "export"
    report = run_access(out, feed, export)
    ids = [r["request_id"] for r in [*requests(email), *MORE]]
    assert sorted(report["counts"][k] for k in ("requests_read", "requests_exported")) == [7, 7]
    assert read_rows(out) == before  # access changes no data

    # 1. each request's rows are the ones the independent reference of the erasure tests finds
    for form in ("parquet", "avro"):
        reference = expected_rows(before[form], email)
        for request_id in ("DSR-email", "DSR-ip", "DSR-uin", "DSR-user"):
            rows = [r for r in exported(export, request_id) if r["category"] != "dead_letter"]
            got = sorted(exported_key(r) for r in rows if fmt(r) == form)
            want = sorted(stored_key(before[form][i]) for i in reference[request_id])
            assert got and got == want, (request_id, form)

    # 2. then erase the same requests: it removes exactly what was exported, request by request
    erased = erase.run([f"--output={out}", f"--requests={feed}", *COMMON])
    assert erased["verification"]["rows_still_matching"] == 0
    audit = {r["request_id"]: r for r in report["requests"]}
    for request in erased["requests"]:
        mine = audit[request["request_id"]]
        assert mine["rows"] == request["rows_erased"], request["request_id"]
        assert mine["dead_letters"] == request["dead_letters_erased"], request["request_id"]
    after = read_rows(out)
    for form in ("parquet", "avro"):
        removed = collections.Counter(map(stored_key, before[form]))
        removed.subtract(collections.Counter(map(stored_key, after[form])))
        union = {
            (r["stored_in"], exported_key(r))
            for request_id in ids
            for r in exported(export, request_id)
            if r["category"] != "dead_letter" and fmt(r) == form
        }
        assert sorted(k for _, k in union) == sorted(+removed), form
    letters = {
        (r["stored_in"], json.dumps({**r["fields"], "expires_at": r["expires_at"]}, sort_keys=True))
        for request_id in ids
        for r in exported(export, request_id)
        if r["category"] == "dead_letter"
    }
    gone = collections.Counter(letters_before)
    gone.subtract(collections.Counter(all_letters(out, exclude="access")))
    assert letters and sorted(k for _, k in letters) == sorted(
        json.dumps(json.loads(line), sort_keys=True) for line in +gone
    )


def test_the_export_is_owner_only_says_what_is_held_and_a_rerun_replaces_it(out, tmp_path):
    feed = write_jsonl(
        tmp_path / "requests.jsonl",
        [
            {"request_id": "DSR-ip", "received_at": "2026-11-28T09:01:00Z", "ip": f"::ffff:{IP}"},
            {"request_id": "DSR-none", "received_at": "2026-11-28T09:01:00Z",
             "business_email": "nobody@nowhere.example"},
        ],
    )  # fmt: skip
    export = tmp_path / "exports" / "dsar"
    for _ in range(2):  # the second run replaces the first run's exports
        report = run_access(out, feed, export)
    assert sorted(p.name for p in export.iterdir()) == ["DSR-ip", "DSR-none"]  # nothing left over
    for path in [export, *export.rglob("*")]:
        mode = stat.S_IMODE(path.stat().st_mode)
        assert mode == (0o700 if path.is_dir() else 0o600), (path, oct(mode))

    summary = json.loads((export / "DSR-ip" / "summary.json").read_text())
    assert summary["data_held"] and summary["subject_field"] == "ip"
    held = {c["category"]: c for c in summary["categories"]}
    assert {"website_visit", "corporate_visitor_info", "account_information", "dead_letter"} <= set(
        held
    )
    visit = held["website_visit"]
    assert visit["purposes"] == ["data_analytics", "feature_improvement"]
    assert visit["legal_basis"] == ["legitimate_interest"]
    assert visit["retention"] == [{"rule": "fixed_180d", "in_words": "180 days from visited_at"}]
    assert visit["recipients"] and visit["recipients"][0].startswith("AroundDeal")
    assert "AroundDeal" in held["corporate_visitor_info"]["source"]
    records = exported(export, "DSR-ip")
    assert sum(c["rows"] for c in summary["categories"]) == len(records)
    for category, entry in held.items():
        csv_rows = (export / "DSR-ip" / entry["file"]).read_text().splitlines()
        assert (
            len(csv_rows) - 1
            == entry["rows"]
            == sum(1 for r in records if r["category"] == category)
        )
    visit_row = next(r for r in records if r["category"] == "website_visit")
    assert visit_row["fields"]["ip"] == IP and visit_row["expires_at"].endswith("Z")
    assert {"purposes", "legal_basis", "retention_rule", "expires_at"} <= set(visit_row)

    nothing = json.loads((export / "DSR-none" / "summary.json").read_text())
    assert not nothing["data_held"] and nothing["categories"] == []
    assert nothing["message"].startswith("Nothing is held about this subject")
    assert exported(export, "DSR-none") == []
    assert sorted(p.name for p in (export / "DSR-none").iterdir()) == [
        "records.json",
        "summary.json",
    ]
    by_id = {r["request_id"]: r for r in report["requests"]}
    assert not by_id["DSR-none"]["data_held"] and by_id["DSR-ip"]["rows_total"] == len(
        [r for r in records if r["category"] != "dead_letter"]
    )


def test_rejected_requests_are_dead_letters_and_the_audit_holds_no_value(out, tmp_path):
    email = visitor_email()
    feed = write_jsonl(
        tmp_path / "requests.jsonl",
        [
            {"request_id": "../../etc", "received_at": "2026-11-28T09:00:00Z", "ip": IP},
            {"request_id": "DSR-twice", "received_at": "2026-11-28T09:00:00Z", "ip": IP},
            {"request_id": "DSR-twice", "received_at": "2026-11-28T09:00:00Z",
             "business_email": email},
            {"request_id": "DSR-same", "received_at": "2026-11-28T09:00:00Z", "user_id": USER,
             "sdk_app_id": APP},
            {"request_id": "DSR-same", "received_at": "2026-11-28T09:00:00Z", "user_id": USER,
             "sdk_app_id": int(APP)},  # the same request again: one export
            {"request_id": "DSR-bad", "received_at": "2026-11-28T09:00:00Z",
             "business_phone": "(415) 555-2671"},
        ],
    )  # fmt: skip
    export = tmp_path / "export"
    report = run_access(out, feed, export)
    assert sorted(p.name for p in export.iterdir()) == ["DSR-same"]
    assert not (tmp_path / "etc").exists()
    rejected = sorted(d["error"] for d in dead_letters(out, "access"))
    assert rejected == [
        "conflicting_request_id",
        "conflicting_request_id",
        "malformed_field:business_phone",
        "malformed_field:request_id",
    ]
    audit_text = Path(report["report_path"]).read_text()
    letters_text = json.dumps(dead_letters(out, "access"))
    for value in (email, IP, USER, APP, "555-2671"):
        assert value.lower() not in audit_text.lower(), value
        assert value.lower() not in letters_text.lower(), value
    (same,) = report["requests"]
    assert same["narrowed_to_sdk_app_id"] and same["rows"] == {"backend_log": 2, "sdk_log": 2}
    assert report["counts"]["requests_read"] == 6 and report["counts"]["requests_valid"] == 4


def test_export_directory_problems_stop_the_job_before_anything_is_read(out, tmp_path):
    feed = write_jsonl(tmp_path / "r.jsonl", requests(visitor_email()))
    (tmp_path / "a_file").write_text("x")
    problems = {
        "--export is required": [],
        "is inside the output root": [f"--export={out / 'exports'}"],
        "holds the output root": [f"--export={tmp_path}"],
        "must be a local directory": ["--export=gs://bucket/exports"],
        "is a file, not a directory": [f"--export={tmp_path / 'a_file'}"],
    }
    listing = sorted(str(p.relative_to(out)) for p in out.rglob("*"))
    for message, args in problems.items():
        with pytest.raises(SystemExit) as stop:
            access.main([f"--output={out}", f"--requests={feed}", *args, *COMMON])
        assert message in str(stop.value) and "\n" not in str(stop.value), str(stop.value)
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*")) == listing
    with RetentionLock(str(out), "other", "purge"), pytest.raises(SystemExit) as stop:
        access.main(
            [f"--output={out}", f"--requests={feed}", f"--export={tmp_path / 'x'}", *COMMON]
        )
    assert "another retention job holds" in str(stop.value)
    assert not (tmp_path / "x").exists()


def test_the_command_line_runs_the_job_and_refuses_unknown_flags(out, tmp_path):
    feed = write_jsonl(tmp_path / "r.jsonl", MORE[:1])
    base = [sys.executable, "-m", "pipelines.access", f"--output={out}", f"--requests={feed}"]
    done = subprocess.run(
        [*base, f"--export={tmp_path / 'e'}", "--runner=FnApiRunner", f"--run_time={RUN_TIME}"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0 and done.stderr == "", done.stderr[-3000:]
    assert "[access] DSR-phone (business_phone): 2 rows in 1 category" in done.stdout
    wrong = subprocess.run(
        [*base, f"--exprot={tmp_path / 'e'}"], capture_output=True, text=True, timeout=300
    )
    assert wrong.returncode == 2
    assert wrong.stderr.strip() == "error: unknown flag --exprot (did you mean --export?)"


def test_csv_cells_never_run_as_spreadsheet_formulas():
    assert csv_cell('=HYPERLINK("http://x")') == '\'=HYPERLINK("http://x")'
    assert [csv_cell(v) for v in ("+1 415", "@x", "-x", "plain")] == [
        "'+1 415",
        "'@x",
        "'-x",
        "plain",
    ]
    assert [csv_cell(v) for v in (-1, None, ["a"], {"k": 1})] == ["-1", "", '["a"]', '{"k": 1}']


# --------------------------------------------------------- a new category, no code change


def webinar_contacts(tmp_path: Path, retention: dict) -> Path:
    """A temporary policy with a category holding ``contact_email``, declared a
    ``business_email``, and its .avsc next to it."""
    return webinar_policy(
        tmp_path,
        "webinar_contact",
        description="Contacts who registered to a product webinar.",
        fields={
            "contact_email": {"type": "string", "format": "email"},
            "webinar": {"type": "string"},
        },
        subject_fields={"contact_email": "business_email"},
        retention=retention,
    )


def test_a_new_category_with_a_subject_field_is_exported_and_erased(tmp_path):
    """Ingested, exported and erased by the e-mail its ``contact_email`` holds."""
    path = webinar_contacts(tmp_path, {"rule": "fixed", "days": 30})
    at = "2026-11-20T12:00:00Z"
    data = write_jsonl(
        tmp_path / "in.jsonl",
        [
            {"event_id": "w1", "registered_at": at, "contact_email": "Ada@Example.com",
             "webinar": "latency-101"},
            {"event_id": "w2", "registered_at": at, "contact_email": "bob@example.com",
             "webinar": "latency-101"},
            {"event_id": "w3", "registered_at": at, "contact_email": "ada@example.com",
             "webinar": "scaling", "seats": 2},
            {"event_id": "w4", "registered_at": at, "contact_email": "ada@example.com"},
        ],
    )  # fmt: skip
    out = tmp_path / "out"
    flags = [f"--policy={path}", *COMMON]
    ingest.run(
        [
            "--category=webinar_contact",
            f"--input={data}",
            f"--output={out}",
            "--format=both",
            *flags,
        ]
    )
    feed = write_jsonl(
        tmp_path / "requests.jsonl",
        [{"request_id": "DSR-ada", "received_at": "2026-11-28T09:00:00Z",
          "business_email": " ADA@example.COM "}],
    )  # fmt: skip
    export = tmp_path / "export"
    report = run_access(out, feed, export, f"--policy={path}")
    (request,) = report["requests"]
    assert request["rows"] == {"webinar_contact": 4}  # w1 and w3, in Parquet and Avro
    summary = json.loads((export / "DSR-ada" / "summary.json").read_text())
    (held,) = summary["categories"]
    assert (held["category"], held["purposes"], held["legal_basis"]) == (
        "webinar_contact",
        ["event_management"],
        ["consent"],
    )
    assert held["retention"] == [{"rule": "fixed_30d", "in_words": "30 days from registered_at"}]
    records = exported(export, "DSR-ada")
    rows = [r for r in records if r["category"] == "webinar_contact"]
    assert sorted({r["fields"]["event_id"] for r in rows}) == ["w1", "w3"]
    # w4's dead letter (missing_field:webinar) has the address redacted: it is not theirs
    assert len(rows) == len(records) and request["dead_letters"] == 0
    assert [d["event_id"] for d in dead_letters(out, "webinar_contact")] == ["w4"]

    erased = erase.run([f"--output={out}", f"--requests={feed}", *flags])
    (done,) = erased["requests"]
    assert done["rows_erased"] == request["rows"] and erased["verification"]["verified"]
    assert done["dead_letters_erased"] == request["dead_letters"]
    assert sorted(r["event_id"] for r in read_rows(out)["parquet"]) == ["w2"]


def test_an_opt_out_ends_a_new_categorys_rows_through_its_declared_field(tmp_path):
    """The lifecycle job finds the opt-out's e-mail in ``contact_email`` as erasure does."""
    path = webinar_contacts(tmp_path, {"rule": "until_opt_out"})
    data = write_jsonl(
        tmp_path / "in.jsonl",
        [
            {"event_id": f"w{i}", "registered_at": "2026-11-20T12:00:00Z", "contact_email": email,
             "webinar": "latency-101"}
            for i, email in enumerate(["Ada@Example.com", "bob@example.com"])
        ],
    )  # fmt: skip
    out = tmp_path / "out"
    flags = [f"--output={out}", f"--policy={path}", *COMMON]
    ingest.run(["--category=webinar_contact", f"--input={data}", *flags])
    events = write_jsonl(
        tmp_path / "events.jsonl",
        [{"event": "marketing_opt_out", "business_email": "ada@EXAMPLE.com",
          "at": "2026-11-28T00:00:00Z"}],
    )  # fmt: skip
    report = lifecycle.run([f"--events={events}", *flags])
    assert report["counts"]["rows_deleted_expired"] == {"webinar_contact": 1}
    assert [r["event_id"] for r in read_rows(out)["parquet"]] == ["w1"]

"""End to end: SDK logs, telemetry and the generic --category pipeline on real files.

Outputs are read back with pyarrow; "never anywhere" assertions search every output file,
decompressed and decoded, dead letters and reports included.
"""

from __future__ import annotations

import os

import pytest

from tests.support.feeds import write_jsonl
from tests.support.outputs import dead_letters, decoded_text, read_rows, report, run_cli
from tests.support.policies import webinar_policy
from transforms.fingerprint import fingerprint

pytestmark = pytest.mark.e2e
DAY_US = 86_400 * 1_000_000
USER_SIG = "eJyrVkrxUSERSIG-never-stored"
AUDIO = "UklGRiQAAABXQVZF-media-never-stored"
PRIVATE_KEY = "-----BEGIN PRIVATE KEY-----MIIEvQ-never-stored"
KEY = "fingerprint-key-for-tests-0123456789"


@pytest.fixture(scope="module")
def sdk_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("sdk")
    logs = write_jsonl(
        tmp / "logs.jsonl",
        [
            {
                "event_id": "plain",
                "logged_at": "2026-11-21T23:30:00+08:00",
                "sdk_app_id": 1400000001,
                "uin": 100000001,
                "user_id": 42,
                "room_id": 8001,
                "os_type": "iOS",
                "level": "INFO",
                "message": "enterRoom ok",
                "user_sig": USER_SIG,
                "audio_data": AUDIO,
            },
            {
                "event_id": "backend",
                "logged_at": 1795000000000,
                "sdk_app_id": "1400000002",
                "user_id": "u-7",
                "client_ip": "203.0.113.9",
            },
            {
                "event_id": "child",
                "logged_at": 1795000000000,
                "sdk_app_id": 1,
                "end_user_age": 11,
                "user_id": "child-user-id",
            },
            {
                "event_id": "child-consent",
                "logged_at": 1795000000000,
                "sdk_app_id": 1,
                "end_user_age": 11,
                "parental_consent": True,
            },
            {"event_id": "no-app", "logged_at": 1795000000000},
            {"event_id": "bad-ip", "logged_at": 1795000000000, "sdk_app_id": 1, "client_ip": "x"},
            '{"event_id": "broken", "user_sig": "' + USER_SIG + '", ',
        ],
    )
    out = tmp / "out"
    # Most of these records are rejected on purpose: above the default dead-letter ratio.
    done = run_cli(
        "pipelines.sdk_logs", f"--input={logs}", f"--output={out}", "--max_dead_letter_ratio=1"
    )
    return out, done


def test_sdk_logs_tags_routing_and_identifiers(sdk_run):
    out, done = sdk_run
    rows = {r["event_id"]: r for r in read_rows(out)["parquet"]}
    assert set(rows) == {"plain", "backend", "child-consent"}
    plain, backend = rows["plain"], rows["backend"]
    assert plain["data_category"] == "sdk_log" and backend["data_category"] == "backend_log"
    assert backend["client_ip"] == "203.0.113.9" and "client_ip" not in plain
    for row in rows.values():
        assert row["legal_basis"] == "contract" and row["retention_rule"] == "fixed_14d"
        assert row["purposes"] == ["service_operation", "troubleshooting"]
    # identifiers are strings whatever they arrived as
    assert (plain["sdk_app_id"], plain["uin"], plain["user_id"], plain["room_id"]) == (
        "1400000001",
        "100000001",
        "42",
        "8001",
    )
    # 23:30 at +08:00 on 11-21 is 15:30 UTC the same day; + 14 days
    assert str(plain["logged_at"]) == "2026-11-21 15:30:00+00:00"
    assert plain["dir_expiry"] == "2026-12-05"
    assert plain["expires_at"].timestamp() * 1_000_000 == (
        plain["logged_at"].timestamp() * 1_000_000 + 14 * DAY_US
    )
    assert "reconciled=True" in done.stdout


def test_sdk_logs_secrets_media_and_children_never_stored(sdk_run):
    out, _ = sdk_run
    text = decoded_text(out)
    assert USER_SIG not in text and AUDIO not in text
    assert "child-user-id" not in text
    letters = {d.get("event_id"): d for d in dead_letters(out, "sdk_logs")}
    assert letters["child"]["error"] == "under_minimum_age"
    assert letters["no-app"]["error"] == "missing_field:sdk_app_id"
    assert letters["bad-ip"]["error"] == "malformed_field:client_ip"
    assert {d["error"] for d in letters.values()} >= {"invalid_json"}
    rep = report(out, "sdk_logs")
    assert rep["reconciliation"] == {
        "primary_categories": ["backend_log", "sdk_log"],
        "read": 7,
        "primary_written": 3,
        "dead_lettered": 4,
        "expired_on_arrival": 0,
        "reconciled": True,
    }
    assert rep["parse"]["media_fields_dropped"] == 1 and rep["parse"]["secret_fields_dropped"] == 1
    assert rep["parse"]["under_minimum_age"] == 1


def test_telemetry_routing_media_and_numbers(tmp_path):
    records = write_jsonl(
        tmp_path / "t.jsonl",
        [
            {
                "event_id": "q",
                "reported_at": "2026-11-21T10:00:00Z",
                "sdk_app_id": 5,
                "uin": 6,
                "user_id": "u",
                "room_id": 7,
                "event_type": "quality",
                "cpu_usage": 12,
                "packet_loss": 0.01,
                "resolution": "1280x720",
                "frame_rate": 30,
            },
            {
                "event_id": "m",
                "reported_at": "2026-11-21T10:00:00",
                "sdk_app_id": 5,
                "event_type": "mute",
                "video_content": AUDIO,
            },
            {
                "event_id": "bad",
                "reported_at": "2026-11-21T10:00:00Z",
                "sdk_app_id": 5,
                "event_type": "explode",
            },
        ],
    )
    out = tmp_path / "out"
    run_cli("pipelines.telemetry", f"--input={records}", f"--output={out}", "--format=both")
    for fmt in ("parquet", "avro"):
        rows = {r["event_id"]: r for r in read_rows(out)[fmt]}
        assert rows["q"]["data_category"] == "troubleshooting_data"
        assert rows["m"]["data_category"] == "dashboard_information"
        assert rows["q"]["cpu_usage"] == 12.0 and isinstance(rows["q"]["cpu_usage"], float)
        assert rows["q"]["sdk_app_id"] == "5" and rows["q"]["room_id"] == "7"
        assert rows["m"]["dir_expiry"] == "2026-12-05"
    assert AUDIO not in decoded_text(out)
    (letter,) = dead_letters(out, "telemetry")
    assert letter["error"] == "malformed_field:event_type"
    rep = report(out, "telemetry")
    assert rep["reconciliation"]["reconciled"] and rep["parse"]["media_fields_dropped"] == 1


LIFECYCLE = {
    "account_information": (
        {
            "event_id": "a1",
            "uin": 100000009,
            "registered_at": "2026-11-01T08:00:00Z",
            "name": "Ada",
            "business_email": "ada@corp.example",
            "ip": "198.51.100.4",
            "password": "hunter2-never",
            "verification_code": "834201",
        },
        "account_lifetime_plus_30d",
    ),
    "console_configuration": (
        {
            "event_id": "c1",
            "sdk_app_id": 1400000001,
            "updated_at": 1795000000000,
            "application_name": "demo",
            "recording_enabled": True,
            "billing_method": "postpaid",
        },
        "service_lifetime_plus_7d",
    ),
    "customer_application_log": (
        {
            "event_id": "l1",
            "sdk_app_id": "1400000001",
            "application_name": "demo",
            "tag": "prod",
            "service_status": "running",
            "created_at": "2026-11-02T00:00:00",
            "operation": "create",
        },
        "service_lifetime_plus_7d",
    ),
    "customer_temporary_key": (
        {
            "event_id": "k1",
            "issued_at": "2026-11-03T00:00:00Z",
            "sdk_app_id": 1400000001,
            "username": "admin",
            "private_key": PRIVATE_KEY,
        },
        "service_lifetime_plus_7d",
    ),
}


@pytest.mark.parametrize("category", sorted(LIFECYCLE))
def test_generic_pipeline_on_lifecycle_categories(tmp_path, category):
    record, rule = LIFECYCLE[category]
    data = write_jsonl(tmp_path / "in.jsonl", [record, {"event_id": "broken"}])
    out = tmp_path / "out"
    env = {**os.environ, "TRTC_FINGERPRINT_KEY": KEY}
    run_cli(
        "pipelines.ingest", f"--category={category}", f"--input={data}", f"--output={out}", env=env
    )
    (row,) = read_rows(out)["parquet"]
    assert row["data_category"] == category and row["retention_rule"] == rule
    assert row["expires_at"] is None and row["dir_expiry"] == "9999-12-31"
    assert row["legal_basis"] == "contract" and row["event_id"] == record["event_id"]
    (letter,) = dead_letters(out, category)
    assert letter["error"].startswith("missing_field:")
    assert report(out, category)["reconciliation"]["reconciled"]
    text = decoded_text(out)
    for secret in ("hunter2-never", "834201", PRIVATE_KEY):
        assert secret not in text
    if category == "customer_temporary_key":
        assert row["private_key_fingerprint"] == fingerprint(
            KEY.encode(), category, "private_key", PRIVATE_KEY
        )
        assert "private_key" not in row


def test_fingerprint_category_without_a_key_fails_at_startup(tmp_path):
    data = write_jsonl(tmp_path / "in.jsonl", [LIFECYCLE["customer_temporary_key"][0]])
    env = {k: v for k, v in os.environ.items() if k != "TRTC_FINGERPRINT_KEY"}
    done = run_cli(
        "pipelines.ingest",
        "--category=customer_temporary_key",
        f"--input={data}",
        f"--output={tmp_path / 'out'}",
        env=env,
        expect_ok=False,
    )
    assert done.returncode != 0 and "TRTC_FINGERPRINT_KEY" in done.stderr
    assert "Traceback" not in done.stderr and not (tmp_path / "out").exists()


def test_never_stored_category_is_refused(tmp_path):
    data = write_jsonl(tmp_path / "in.jsonl", [{"event_id": "x"}])
    done = run_cli(
        "pipelines.ingest",
        "--category=audio_video_content",
        f"--input={data}",
        f"--output={tmp_path / 'out'}",
        expect_ok=False,
    )
    assert done.returncode != 0 and "never stored" in done.stderr


@pytest.mark.parametrize("category", ["corporate_visitor_info", "website_visit"])
def test_visit_categories_are_refused_naming_the_visits_pipeline(tmp_path, category):
    """These categories need geolocation and the contact gate: through the generic pipeline
    every record would be rejected and its contact data kept in clear in the dead letters."""
    data = write_jsonl(
        tmp_path / "in.jsonl",
        [
            {
                "event_id": "v",
                "ip": "8.8.8.8",
                "visited_at": "2026-10-05T10:00:00Z",
                "company_country": "DE",
                "business_email": "never-stored@firma.example",
            }
        ],
    )
    done = run_cli(
        "pipelines.ingest",
        f"--category={category}",
        f"--input={data}",
        f"--output={tmp_path / 'out'}",
        expect_ok=False,
    )
    assert done.returncode != 0
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "pipelines.visits" in lines[0], done.stderr
    assert not (tmp_path / "out").exists()


def test_a_new_category_is_a_yaml_and_schema_change_only(tmp_path):
    """Define a category in a temporary policy (+ its .avsc next to it) and ingest it."""
    # its uin identifies the customer (erasure, access, account deletion find it there)
    webinar_policy(
        tmp_path,
        "webinar_registration",
        description="Registrations to a product webinar.",
        fields={
            "uin": {"type": ["null", "string"], "default": None, "format": "identifier"},
            "webinar": {"type": "string"},
            "attended": {"type": ["null", "boolean"], "default": None},
        },
        subject_fields={"uin": "uin"},
        retention={"rule": "fixed", "days": 30},
    )
    data = write_jsonl(
        tmp_path / "in.jsonl",
        [
            {
                "event_id": "w1",
                "registered_at": "2026-11-20T12:00:00+01:00",
                "uin": 77,
                "webinar": "latency-101",
                "attended": True,
                "password": "nope-never",
            },
            {"event_id": "w2", "registered_at": "2026-11-20T12:00:00Z"},
        ],
    )
    out = tmp_path / "out"
    run_cli(
        "pipelines.ingest",
        "--category=webinar_registration",
        f"--input={data}",
        f"--output={out}",
        f"--policy={tmp_path / 'policy.yaml'}",
    )
    (row,) = read_rows(out)["parquet"]
    assert row["data_category"] == "webinar_registration" and row["uin"] == "77"
    assert row["legal_basis"] == "consent" and row["retention_rule"] == "fixed_30d"
    assert row["dir_expiry"] == "2026-12-20" and row["purposes"] == ["event_management"]
    (letter,) = dead_letters(out, "webinar_registration")
    assert letter["error"] == "missing_field:webinar"
    assert "nope-never" not in decoded_text(out)

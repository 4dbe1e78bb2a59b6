"""The extension seams of EXTENDING.md that no other test file proves: a new routed source is a
policy and schema change only."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from schemas.policy import default_policy_path
from tests.support.outputs import dead_letters, read_rows, run_cli

TIMESTAMP = {"type": "long", "logicalType": "timestamp-micros"}


def category(description: str, fields: list[str]) -> dict:
    return {
        "module": "privacy_policy",
        "description": description,
        "event_time": "submitted_at",
        "fields": fields,
        "purposes": ["event_management"],
        "legal_basis": "consent",
        "retention": {"rule": "fixed", "days": 30},
        "store": "data_lake",
    }


def avsc(name: str, fields: list[tuple[str, object]]) -> str:
    return json.dumps(
        {
            "type": "record",
            "name": name,
            "fields": [
                {"name": f, "type": t}
                if not isinstance(t, list)
                else {"name": f, "type": t, "default": None}
                for f, t in fields
            ],
        }
    )


def test_a_new_routed_source_is_a_policy_and_schema_change_only(tmp_path):
    """A source whose records go to one of two new categories by a field they carry."""
    policy = yaml.safe_load(Path(default_policy_path()).read_text())
    policy["categories"]["webinar_feedback"] = category(
        "Ratings left after a webinar.", ["event_id", "submitted_at", "webinar", "rating"]
    )
    policy["categories"]["webinar_question"] = category(
        "Questions asked during a webinar.", ["event_id", "submitted_at", "webinar", "question"]
    )
    policy["sources"]["webinar_events"] = {
        "input_schema": "webinar_event_input",
        "routes": [
            {"category": "webinar_feedback", "when_present": ["rating"]},
            {"category": "webinar_question"},
        ],
    }
    schemas = tmp_path / "avro"
    schemas.mkdir()
    common = [("event_id", "string"), ("submitted_at", TIMESTAMP), ("webinar", "string")]
    (schemas / "webinar_feedback.avsc").write_text(
        avsc("WebinarFeedback", [*common, ("rating", "int")])
    )
    (schemas / "webinar_question.avsc").write_text(
        avsc("WebinarQuestion", [*common, ("question", ["null", "string"])])
    )
    (schemas / "webinar_event_input.avsc").write_text(
        avsc(
            "WebinarEventInput",
            [*common, ("rating", ["null", "int"]), ("question", ["null", "string"])],
        )
    )
    (tmp_path / "policy.yaml").write_text(yaml.safe_dump(policy))
    lines = [
        {"event_id": "f1", "submitted_at": "2026-11-20T10:00:00Z", "webinar": "w", "rating": 5},
        {"event_id": "q1", "submitted_at": "2026-11-20T10:05:00Z", "webinar": "w", "question": "?"},
        {"event_id": "bad", "submitted_at": "2026-11-20T10:05:00Z"},
    ]
    data = tmp_path / "in.jsonl"
    data.write_text("".join(json.dumps(line) + "\n" for line in lines))
    out = tmp_path / "out"
    run_cli(
        "pipelines.ingest",
        "--source=webinar_events",
        f"--input={data}",
        f"--output={out}",
        f"--policy={tmp_path / 'policy.yaml'}",
    )
    rows = {row["event_id"]: row for row in read_rows(out)["parquet"]}
    assert rows["f1"]["data_category"] == "webinar_feedback" and rows["f1"]["rating"] == 5
    assert rows["q1"]["data_category"] == "webinar_question" and rows["q1"]["question"] == "?"
    assert rows["q1"]["retention_rule"] == "fixed_30d" and rows["q1"]["dir_expiry"] == "2026-12-20"
    (letter,) = dead_letters(out, "webinar_events")
    assert letter["error"] == "missing_field:webinar"

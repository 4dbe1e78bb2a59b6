"""Fingerprints, the minimum-age condition and routing, as pure functions and DoFns."""

from __future__ import annotations

import hashlib
import hmac
import json

import apache_beam as beam
import pytest
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to

from schemas.arrow import arrow_schema
from schemas.avro import category_columns, input_fields, output_schema
from schemas.policy import MinimumAge
from tests.support.stages import on_records
from transforms.batches import Rebatch
from transforms.deadletter import DEAD_LETTER_TAG
from transforms.fingerprint import Fingerprint, KeySource, fingerprint, load_key
from transforms.parse import ParseFn
from transforms.tag import CategoryOutput, Tag

KEY = b"0123456789abcdef0123456789abcdef"


def test_fingerprint_is_a_salted_hmac():
    expected = hmac.new(KEY, b"customer_temporary_key.private_key:pk-1", hashlib.sha256).hexdigest()
    assert fingerprint(KEY, "customer_temporary_key", "private_key", "pk-1") == expected
    assert fingerprint(KEY, "other_category", "private_key", "pk-1") != expected
    assert (
        fingerprint(b"another-key-of-16b", "customer_temporary_key", "private_key", "pk-1")
        != expected
    )


def test_key_comes_from_env_or_file_and_must_exist(tmp_path, monkeypatch):
    monkeypatch.setenv("TEST_FP_KEY", KEY.decode())
    assert load_key(KeySource(env="TEST_FP_KEY")) == KEY
    key_file = tmp_path / "key"
    key_file.write_bytes(b"file-key-0123456789\n")
    assert load_key(KeySource(env="TEST_FP_KEY", file=str(key_file))) == b"file-key-0123456789"
    monkeypatch.delenv("TEST_FP_KEY")
    with pytest.raises(ValueError, match="TEST_FP_KEY"):
        load_key(KeySource(env="TEST_FP_KEY"))
    monkeypatch.setenv("TEST_FP_KEY", "short")
    with pytest.raises(ValueError, match="shorter"):
        load_key(KeySource(env="TEST_FP_KEY"))


def test_fingerprint_composite_never_keeps_the_secret(monkeypatch):
    monkeypatch.setenv("TEST_FP_KEY", KEY.decode())
    record = {"event_id": "k1", "sdk_app_id": "1", "private_key": "-----BEGIN PRIVATE KEY-----x"}
    with TestPipeline(runner="FnApiRunner") as p:
        out = on_records(
            p | beam.Create([record]),
            Fingerprint(
                "customer_temporary_key",
                {"private_key_fingerprint": "private_key"},
                KeySource(env="TEST_FP_KEY"),
            ),
        )
        expected = fingerprint(KEY, "customer_temporary_key", "private_key", record["private_key"])
        assert_that(
            out,
            equal_to([{"event_id": "k1", "sdk_app_id": "1", "private_key_fingerprint": expected}]),
        )


@pytest.mark.parametrize(
    ("raw", "blocked"),
    [
        ({}, False),
        ({"end_user_age": 30}, False),
        ({"end_user_age": 16}, False),
        ({"end_user_age": 15}, True),
        ({"end_user_age": 15, "parental_consent": True}, False),
        ({"end_user_age": 15, "parental_consent": "yes"}, True),
        ({"end_user_age": "twelve"}, True),  # cannot tell: fail closed
        ({"end_user_age": True}, True),
    ],
)
def test_minimum_age(raw, blocked):
    assert MinimumAge(16, "end_user_age", "parental_consent").blocks(raw) is blocked


def test_under_age_record_keeps_nothing_but_its_id(policy, dl_context):
    fn = ParseFn(input_fields("sdk_log_input"), "logged_at", policy, dl_context)
    fn.setup()
    line = json.dumps(
        {
            "event_id": "child-1",
            "logged_at": 1,
            "sdk_app_id": 1,
            "user_id": "kid@example",
            "end_user_age": 9,
        }
    ).encode()
    (out,) = list(fn.process([line]))
    assert out.tag == DEAD_LETTER_TAG
    letter = out.value
    assert letter["error"] == "under_minimum_age" and letter["event_id"] == "child-1"
    assert "kid@example" not in json.dumps(letter)


def test_routing_is_exclusive_and_ordered(policy, dl_context):
    source = policy.sources["sdk_logs"]
    outputs = [
        CategoryOutput(r.category, category_columns(r.category), route=r) for r in source.routes
    ]
    records = [
        {"event_id": "a", "logged_at": 0, "sdk_app_id": "1", "client_ip": "1.2.3.4"},
        {"event_id": "b", "logged_at": 0, "sdk_app_id": "1", "client_ip": None},
    ]
    schemas = {o.category: arrow_schema(output_schema(o.category)) for o in outputs}
    with TestPipeline(runner="FnApiRunner") as p:
        batches = p | beam.Create(records) | Rebatch()
        tables, dead = batches | Tag(policy, outputs, dl_context, exclusive=True, schemas=schemas)
        rows = tables | "Rows" >> beam.FlatMap(lambda pair: pair[1].to_pylist())
        assert_that(
            rows
            | beam.Map(
                lambda r: (
                    r["event_id"],
                    r["data_category"],
                    round(r["expires_at"].timestamp() * 1_000_000),
                )
            ),
            equal_to(
                [("a", "backend_log", 14 * 86_400_000_000), ("b", "sdk_log", 14 * 86_400_000_000)]
            ),
            label="Rows",
        )
        assert_that(dead | "AllLetters" >> beam.Flatten(), equal_to([]), label="Dead")

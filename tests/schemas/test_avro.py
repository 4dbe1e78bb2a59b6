"""The Avro contract agrees with the policy, and its field specs coerce as documented."""

from __future__ import annotations

import pytest

from schemas.arrow import arrow_schema
from schemas.avro import (
    FieldSpec,
    category_columns,
    category_input_fields,
    input_fields,
    output_schema,
)
from schemas.policy import load_policy

POLICY = load_policy()
STORED = [name for name, c in POLICY.categories.items() if c.stored]


@pytest.mark.parametrize("category", STORED)
def test_every_stored_category_has_a_schema_with_exactly_its_fields(category):
    extra = (
        {"country", "region"} if category in ("website_visit", "corporate_visitor_info") else set()
    )
    assert set(category_columns(category)) == set(POLICY.category(category).fields) | extra
    schema = output_schema(category)
    names = [f["name"] for f in schema["fields"]]
    assert names[-6:] == [
        "data_category",
        "purposes",
        "legal_basis",
        "retention_rule",
        "expires_at",
        "policy_version",
    ]
    arrow = arrow_schema(schema)  # every output schema maps to Parquet
    event_time = POLICY.category(category).event_time
    assert str(arrow.field(event_time).type) == "timestamp[us, tz=UTC]"


def test_sources_input_schemas_cover_their_categories():
    for source in POLICY.sources.values():
        declared = {s.name for s in input_fields(source.input_schema)}
        for route in source.routes:
            assert set(POLICY.category(route.category).fields) <= declared, route.category


def test_identifiers_are_text_whatever_they_arrive_as():
    (spec,) = [s for s in input_fields("sdk_log_input") if s.name == "uin"]
    assert spec.format == "identifier"
    assert spec.accepts(100000001) and spec.accepts("100000001")
    assert not spec.accepts(True) and not spec.accepts(1.5) and not spec.accepts([1])
    assert spec.coerce(100000001) == "100000001"


def test_numbers_become_floats_for_double_columns_and_enums_are_checked():
    specs = {s.name: s for s in input_fields("telemetry_input")}
    assert specs["cpu_usage"].coerce(12) == 12.0 and isinstance(
        specs["cpu_usage"].coerce(12), float
    )
    assert specs["event_type"].accepts("quality") and not specs["event_type"].accepts("explode")
    assert specs["event_type"].required


def test_category_input_replaces_fingerprints_by_their_secret_input():
    specs = category_input_fields(
        "customer_temporary_key", {"private_key_fingerprint": "private_key"}
    )
    names = [s.name for s in specs]
    assert "private_key" in names and "private_key_fingerprint" not in names
    assert FieldSpec("private_key", True, ("string",)) in specs

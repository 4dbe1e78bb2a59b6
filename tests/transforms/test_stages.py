"""SuppressRestrictedContacts, Guard and Tag: the compliance invariants, record by record (the
composites, which take batches, through ``tests.support.stages.on_records``)."""

from __future__ import annotations

import apache_beam as beam
import pytest
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to
from hypothesis import given, settings
from hypothesis import strategies as st

from schemas.arrow import arrow_schema
from schemas.avro import category_columns, output_schema
from schemas.policy import load_policy
from tests.support.stages import on_records
from transforms.batches import Rebatch
from transforms.guard import Guard, violations
from transforms.suppress import (
    SuppressRestrictedContacts,
    SuppressRestrictedFn,
    forbidden_by_region,
)
from transforms.tag import CategoryOutput, Tag, tag_row

DAY = 86_400 * 1_000_000
T = 1_790_000_000 * 1_000_000  # 2026-09-21T14:13:20Z
POLICY = load_policy()
CONTACT = {"contact_name": "Jane", "business_email": "jane@corp.example", "job_title": "CTO"}


def visit(region, **extra):
    return {
        "event_id": f"e-{region}",
        "ip": "1.2.3.4",
        "visited_at": T,
        "region": region,
        "country": None,
        **extra,
    }


@pytest.fixture(scope="module")
def corporate(policy):
    return policy.category("corporate_visitor_info")


@pytest.mark.parametrize("region", ["EEA_UK", "UNKNOWN", "MARS"])
def test_suppress_removes_contact_fields_of_restricted_regions(policy, corporate, region):
    fn = SuppressRestrictedFn(forbidden_by_region([corporate]), policy.regions)
    fn.setup()
    record = visit(region, **CONTACT, company_name="ACME")
    ((out,),) = fn.process([record])
    assert not set(CONTACT) & out.keys()
    assert out["company_name"] == "ACME"
    assert record["contact_name"] == "Jane"  # input never mutated


def test_suppress_keeps_unrestricted_contacts(policy, corporate):
    fn = SuppressRestrictedFn(forbidden_by_region([corporate]), policy.regions)
    fn.setup()
    ((out,),) = fn.process([visit("OTHER", **CONTACT)])
    assert out["business_email"] == "jane@corp.example"


def _violations(policy, corporate, record):
    visit_cat = policy.category("website_visit")
    return violations(
        record,
        policy=policy,
        forbidden=forbidden_by_region([corporate]),
        allowed_keys=frozenset(visit_cat.fields + corporate.fields + ("country", "region")),
        country_fields=("company_country",),
    )


def test_guard_invariants(policy, corporate):
    assert _violations(policy, corporate, visit("OTHER", company_country="US", **CONTACT)) == []
    us = {"company_country": "US"}
    assert _violations(policy, corporate, visit("EEA_UK", **us, **CONTACT)) == ["forbidden_field"]
    assert _violations(policy, corporate, visit("UNKNOWN", **us, business_phone="+1")) == [
        "forbidden_field"
    ]
    assert "unknown_region" in _violations(policy, corporate, visit(None))
    assert _violations(policy, corporate, visit("OTHER", company_country="DE", **CONTACT)) == [
        "restricted_company_contact"
    ]
    assert _violations(policy, corporate, visit("OTHER", company_country="DE")) == []


@pytest.mark.parametrize("company_country", [None, "", " ", "ZZ", "XX", "Germany", " uk ", "EL"])
def test_guard_refuses_contacts_without_a_known_unrestricted_company(
    policy, corporate, company_country
):
    """Contact fields need a company country that is known and not restricted, whatever its
    spelling: an absent one is UNKNOWN (restricted), not "nothing to check"."""
    record = visit("OTHER", company_country=company_country, **CONTACT)
    assert _violations(policy, corporate, record) == ["restricted_company_contact"]
    assert _violations(policy, corporate, visit("OTHER", company_country=company_country)) == []
    assert "secret_field" in _violations(policy, corporate, visit("OTHER", UserSig="x"))
    assert _violations(policy, corporate, visit("OTHER", favourite_colour="red")) == [
        "undeclared_field"
    ]


def test_guard_composite_routes_violations_to_masked_dead_letters(policy, corporate, dl_context):
    visit_cat = policy.category("website_visit")
    records = [visit("OTHER", company_country="US", **CONTACT), visit("EEA_UK", **CONTACT)]
    with TestPipeline(runner="FnApiRunner") as p:
        good, dead = on_records(
            p | beam.Create(records),
            Guard(policy, (visit_cat, corporate), ("country", "region"), dl_context),
        )
        assert_that(
            good | "Ids" >> beam.Map(lambda r: r["event_id"]), equal_to(["e-OTHER"]), label="Good"
        )
        assert_that(
            dead
            | "AllLetters" >> beam.Flatten()
            | "Letters"
            >> beam.Map(lambda d: (d["error"], d["stage"], "jane@corp.example" in d["raw"])),
            equal_to([("guard:forbidden_field", "guard", False)]),
            label="Dead",
        )


def test_tag_row_stamps_the_policy(policy):
    visit_cat = policy.category("website_visit")
    row = tag_row(
        visit("OTHER", url="u", password="x"),
        visit_cat,
        category_columns("website_visit"),
        policy.version,
    )
    assert row["data_category"] == "website_visit"
    assert row["purposes"] == ["data_analytics", "feature_improvement"]
    assert row["legal_basis"] == "legitimate_interest"
    assert row["retention_rule"] == "fixed_180d"
    assert row["expires_at"] == T + 180 * DAY
    assert row["policy_version"] == policy.version
    assert "password" not in row and "business_email" not in row


def test_tag_direct_marketing_is_open_ended_in_its_jurisdictions_only(policy, corporate):
    columns = category_columns("corporate_visitor_info")
    other = tag_row(visit("OTHER", country="US", **CONTACT), corporate, columns, policy.version)
    assert "direct_marketing" in other["purposes"]
    assert other["retention_rule"] == "until_opt_out" and other["expires_at"] is None
    for country in ("JP", "BR", "CA", None, "us"):  # an allow-list: every other value is out
        row = tag_row(visit("OTHER", country=country, **CONTACT), corporate, columns, "v")
        assert "direct_marketing" not in row["purposes"], country
        assert row["expires_at"] == T + 180 * DAY
    eea = tag_row(visit("EEA_UK", company_name="ACME"), corporate, columns, policy.version)
    assert "direct_marketing" not in eea["purposes"]
    assert eea["expires_at"] == T + 180 * DAY


def test_tag_composite_splits_categories(policy, corporate, dl_context):
    company, contact = corporate.field_groups["company"], corporate.field_groups["contact"]
    outputs = (
        CategoryOutput("website_visit", category_columns("website_visit")),
        CategoryOutput(
            "corporate_visitor_info",
            category_columns("corporate_visitor_info"),
            when_any=company + contact,
        ),
    )
    records = [
        visit("OTHER", company_name="ACME"),
        visit("EEA_UK"),
        {**visit("OTHER"), "event_id": "no-time", "visited_at": None},
    ]
    schemas = {o.category: arrow_schema(output_schema(o.category)) for o in outputs}
    with TestPipeline(runner="FnApiRunner") as p:
        batches = p | beam.Create(records) | Rebatch()
        tables, dead = batches | Tag(policy, outputs, dl_context, schemas=schemas)
        rows = tables | "Rows" >> beam.FlatMap(lambda pair: pair[1].to_pylist())
        assert_that(
            rows | "Keys" >> beam.Map(lambda r: (r["data_category"], r["event_id"])),
            equal_to(
                [
                    ("website_visit", "e-OTHER"),
                    ("corporate_visitor_info", "e-OTHER"),
                    ("website_visit", "e-EEA_UK"),
                ]
            ),
            label="Rows",
        )
        assert_that(
            dead
            | "AllLetters" >> beam.Flatten()
            | "Errors" >> beam.Map(lambda d: (d["error"], d["event_id"])),
            equal_to([("unexpected_error:ValueError", "no-time")]),
            label="Dead",
        )


def test_suppress_composite(policy, corporate):
    with TestPipeline(runner="FnApiRunner") as p:
        out = on_records(
            p | beam.Create([visit("EEA_UK", **CONTACT)]),
            SuppressRestrictedContacts([corporate], policy.regions),
        )
        assert_that(out | beam.Map(lambda r: sorted(set(CONTACT) & r.keys())), equal_to([[]]))


REGIONS = st.sampled_from(["EEA_UK", "OTHER", "UNKNOWN", None, "MARS"])
VALUES = st.one_of(st.none(), st.just(""), st.text(min_size=1, max_size=8))
CONTACT_NAMES = ("contact_name", "business_email", "business_phone", "linkedin_url")


@settings(max_examples=300)
@given(
    region=REGIONS,
    contact=st.fixed_dictionaries(dict.fromkeys(CONTACT_NAMES, VALUES)),
    company_country=st.sampled_from(
        [None, "", " ", "DE", "GB", "US", " us ", "CH", "EU", "UK", "el", "\uff27\uff22", "ZZ"]
    ),
)
def test_property_suppressed_records_never_violate_the_region_rule(
    region, contact, company_country
):
    """Whatever arrives, after suppression the guard never sees a forbidden contact field,
    and the guard refuses exactly the records whose company country forbids theirs."""
    policy = POLICY
    corporate = policy.category("corporate_visitor_info")
    fn = SuppressRestrictedFn(forbidden_by_region([corporate]), policy.regions)
    fn.setup()
    record = {**visit(region), **contact, "company_country": company_country}
    ((out,),) = fn.process([record])
    found = _violations(policy, corporate, out)
    assert "forbidden_field" not in found
    has_contact = any(out.get(f) not in (None, "") for f in CONTACT_NAMES)
    company_restricted = policy.region_for(company_country) != "OTHER"
    assert ("restricted_company_contact" in found) == (company_restricted and has_contact)
    if region != "OTHER":
        assert not has_contact

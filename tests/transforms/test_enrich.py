"""EnrichAroundDeal: the join rules, the company-country rule, build_handler, and the composite
in a TestPipeline (FnApiRunner) with both handlers, counters included."""

from __future__ import annotations

import copy
import csv
from pathlib import Path

import apache_beam as beam
import pytest
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to

from schemas.policy import load_policy
from tests.support.arounddeal_server import (
    COMPANY_FIELDS,
    CONTACT_FIELDS,
    Action,
    AroundDealServer,
)
from transforms.enrichment import FAILED, MATCHED, NO_MATCH, LookupResult
from transforms.enrichment.enrich import (
    EnrichAroundDeal,
    JoinAroundDeal,
    RestrictContactsByCompanyCountry,
    build_handler,
)
from transforms.enrichment.http_client import MODE_COMPANY, MODE_COMPANY_CONTACT, HttpHandler
from transforms.enrichment.snapshot import SnapshotHandler

KEY_ENV = "AROUNDDEAL_PIPELINE_TEST_KEY"
POLICY = load_policy()

US_CO = {
    "company_name": "Acme",
    "company_domain": "acme.test",
    "company_industry": "Software",
    "company_country": "US",
    "company_size": "51-200",
}
DE_CO = {**US_CO, "company_name": "Beispiel GmbH", "company_country": "DE"}
CONTACT = {"contact_name": "Ada Example", "job_title": "CTO", "business_email": "ada@acme.test"}
NO_COMPANY = dict.fromkeys(COMPANY_FIELDS)


def visit(event_id: str, ip: str | None, region: str, **extra) -> dict:
    return {"event_id": event_id, "ip": ip, "region": region, "url": "/pricing", **extra}


def join() -> JoinAroundDeal:
    return JoinAroundDeal(COMPANY_FIELDS, CONTACT_FIELDS, POLICY)


def matched(fields: dict, contact_requested: bool = True) -> LookupResult:
    return LookupResult(MATCHED, dict(fields), contact_requested=contact_requested, source_calls=1)


# -- join ------------------------------------------------------------------------------------


def test_join_adds_company_and_contact_for_unrestricted_visitors() -> None:
    record = visit("e1", "203.0.113.7", "OTHER")
    snapshot = copy.deepcopy(record)
    out = join()(record, matched({**US_CO, **CONTACT}))
    assert out == {**record, **US_CO, **CONTACT}
    assert record == snapshot  # the input is never mutated
    assert out is not record


def test_join_input_wins_over_non_empty_values() -> None:
    record = visit(
        "e1", "203.0.113.7", "OTHER", company_name="Acme Corp", job_title="", contact_name="Bo"
    )
    out = join()(record, matched({**US_CO, **CONTACT}))
    assert out["company_name"] == "Acme Corp"  # input kept
    assert out["contact_name"] == "Bo"  # input kept
    assert out["job_title"] == "CTO"  # empty input filled from the response
    assert out["company_domain"] == "acme.test"


def test_join_drops_undeclared_keys_from_the_response() -> None:
    out = join()(
        visit("e1", "203.0.113.7", "OTHER"),
        matched({**US_CO, "visitor_email": "x@private.test", "ip": "10.9.9.9", "region": "OTHER"}),
    )
    assert "visitor_email" not in out
    assert out["ip"] == "203.0.113.7"


@pytest.mark.parametrize("region", ["EEA_UK", "UNKNOWN", None])
def test_join_restricted_visitor_keeps_no_contact_field(region) -> None:
    record = visit("e1", "203.0.113.7", region, contact_name="Leaked Upstream")
    out = join()(record, matched({**US_CO, **CONTACT}, contact_requested=False))
    assert out == {**visit("e1", "203.0.113.7", region), **US_CO}


def test_join_refuses_contacts_of_an_eea_company() -> None:
    out = join()(visit("e1", "203.0.113.7", "OTHER"), matched({**DE_CO, **CONTACT}))
    assert out == {**visit("e1", "203.0.113.7", "OTHER"), **DE_CO}


@pytest.mark.parametrize("country", ["UK", " uk ", "EL", "FX", "\uff27\uff22", "XI", "EU", "EZ"])
def test_join_refuses_contacts_of_a_company_under_any_restricted_spelling(country) -> None:
    """UK, EL (Greece in EU usage) and FX (metropolitan France) are the EEA/UK too."""
    company = {**US_CO, "company_country": country}
    out = join()(visit("e1", "203.0.113.7", "OTHER"), matched({**company, **CONTACT}))
    assert not set(out) & set(CONTACT_FIELDS)
    assert RestrictContactsByCompanyCountry(CONTACT_FIELDS, POLICY)(
        {**visit("e1", "203.0.113.7", "OTHER"), **company, **CONTACT}
    ) == {**visit("e1", "203.0.113.7", "OTHER"), **company}


@pytest.mark.parametrize("country", [None, "", "Germany", "USA", "d", "ZZ", "XX", "AP"])
def test_join_refuses_contacts_without_a_known_company_country(country) -> None:
    company = {**US_CO, "company_country": country}
    out = join()(visit("e1", "203.0.113.7", "OTHER"), matched({**company, **CONTACT}))
    assert not set(out) & set(CONTACT_FIELDS)


def test_join_lowercase_country_codes_are_normalised() -> None:
    out = join()(
        visit("e1", "203.0.113.7", "OTHER"), matched({**US_CO, "company_country": "gb", **CONTACT})
    )
    assert not set(out) & set(CONTACT_FIELDS)
    out = join()(
        visit("e1", "203.0.113.7", "OTHER"), matched({**US_CO, "company_country": "us", **CONTACT})
    )
    assert out["job_title"] == "CTO"


@pytest.mark.parametrize("status", [NO_MATCH, FAILED])
def test_join_without_a_match_adds_empty_company_fields(status) -> None:
    record = visit("e1", "203.0.113.7", "OTHER", contact_name="Bo")
    out = join()(record, LookupResult(status, {"company_name": "ignored"}))
    assert out == {**record, **NO_COMPANY}


def test_join_accepts_a_plain_mapping_from_a_foreign_handler() -> None:
    out = join()(visit("e1", "203.0.113.7", "OTHER"), {**US_CO, **CONTACT})
    assert out["job_title"] == "CTO"


def test_restrict_by_company_country_removes_every_contact_field(counted) -> None:
    rule = RestrictContactsByCompanyCountry(CONTACT_FIELDS, POLICY)
    record = {**visit("e1", "203.0.113.7", "OTHER"), **DE_CO, **CONTACT}
    out = rule(record)
    assert out == {**visit("e1", "203.0.113.7", "OTHER"), **DE_CO}
    assert record["contact_name"] == "Ada Example"  # not mutated
    us_record = {**visit("e2", "203.0.113.8", "OTHER"), **US_CO, **CONTACT}
    assert rule(us_record) == us_record
    assert counted == {
        "enrichment.company_country_restricted": 1,
        "enrichment.contact_fields_discarded": len(CONTACT),
    }


@pytest.mark.parametrize("country", [None, "", "  ", "ZZ", "Narnia"])
def test_contacts_from_the_record_without_a_known_company_country_are_dropped_and_counted(
    counted, country
) -> None:
    """The producer's own contact fields pass the same gate as AroundDeal's: no company
    country that is known and unrestricted, no contact data; the drop is counted for the
    report's ``suppressed`` section."""
    rule = RestrictContactsByCompanyCountry(CONTACT_FIELDS, POLICY)
    record = {**visit("e3", "203.0.113.9", "OTHER"), "company_country": country, **CONTACT}
    assert rule(record) == {**visit("e3", "203.0.113.9", "OTHER"), "company_country": country}
    assert counted == {
        "suppressed.company_country_unknown": 1,
        "enrichment.contact_fields_discarded": len(CONTACT),
    }
    counted.clear()
    bare = {**visit("e4", "203.0.113.9", "OTHER"), "company_country": country}
    assert rule(bare) == bare
    assert counted == {}  # nothing to drop, nothing counted


# -- build_handler ---------------------------------------------------------------------------


def test_build_handler_picks_the_source() -> None:
    kwargs = {"company_fields": COMPANY_FIELDS, "contact_fields": CONTACT_FIELDS, "policy": POLICY}
    assert build_handler(None, None, **kwargs) is None
    assert build_handler("", "", **kwargs) is None
    snapshot = build_handler("gs://bucket/arounddeal.csv", None, batch_size=50, **kwargs)
    assert isinstance(snapshot, SnapshotHandler)
    assert snapshot.batch_size == 50
    http = build_handler(None, "https://api.test/v1/lookup", requests_per_second=2.5, **kwargs)
    assert isinstance(http, HttpHandler)
    assert http.requests_per_second == 2.5
    with pytest.raises(ValueError, match="not both"):
        build_handler("a.csv", "https://api.test/v1/lookup", **kwargs)
    with pytest.raises(ValueError, match="HTTP options"):
        build_handler("a.csv", None, requests_per_second=2.5, **kwargs)


# -- the composite in a pipeline -------------------------------------------------------------


def counters(result) -> dict[str, int]:
    found: dict[str, int] = {}
    query = result.metrics().query(MetricsFilter().with_namespace("compliance"))
    for counter in query["counters"]:
        name = counter.key.metric.name
        found[name] = found.get(name, 0) + counter.committed
    return found


def records() -> list[dict]:
    return [
        visit("us-open", "203.0.113.7", "OTHER"),
        visit("us-eea-visitor", "203.0.113.7", "EEA_UK"),
        visit("us-unknown-region", "::ffff:203.0.113.7", "UNKNOWN"),
        visit("de-company", "192.0.2.10", "OTHER", contact_name="Input Contact"),
        visit("no-match", "198.51.100.1", "OTHER", contact_name="Dropped Contact"),
        visit("bad-ip", "not-an-ip", "OTHER"),
        visit("input-wins", "203.0.113.7", "OTHER", company_name="Acme Corp"),
    ]


def expected() -> list[dict]:
    r = {rec["event_id"]: rec for rec in records()}
    return [
        {**r["us-open"], **US_CO, **CONTACT},
        {**r["us-eea-visitor"], **US_CO},
        {**r["us-unknown-region"], **US_CO},
        {**visit("de-company", "192.0.2.10", "OTHER"), **DE_CO},
        {**visit("no-match", "198.51.100.1", "OTHER"), **NO_COMPANY},  # no company country
        {**r["bad-ip"], **NO_COMPANY},
        {**r["input-wins"], **US_CO, "company_name": "Acme Corp", **CONTACT},
    ]


def run_enrich(handler) -> dict[str, int]:
    pipeline = TestPipeline(runner="FnApiRunner")
    out = (
        pipeline
        | beam.Create(records())
        | "EnrichAroundDeal" >> EnrichAroundDeal(handler, COMPANY_FIELDS, CONTACT_FIELDS, POLICY)
    )
    assert_that(out, equal_to(expected()))
    result = pipeline.run()
    result.wait_until_finish()
    return counters(result)


def write_snapshot(path: Path) -> str:
    header = ["network", *COMPANY_FIELDS, *CONTACT_FIELDS]
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=header, restval="")
        writer.writeheader()
        writer.writerow({"network": "203.0.113.0/24", **US_CO, **CONTACT})
        writer.writerow({"network": "192.0.2.0/24", **DE_CO, **CONTACT})
    return str(path)


def test_enrich_with_the_snapshot_in_a_pipeline(tmp_path: Path) -> None:
    handler = SnapshotHandler(
        write_snapshot(tmp_path / "ad.csv"), COMPANY_FIELDS, CONTACT_FIELDS, POLICY, batch_size=3
    )
    found = run_enrich(handler)
    assert found["enrichment.calls"] == 6  # every record with a usable IP
    assert found["enrichment.matched"] == 5
    assert found["enrichment.no_match"] == 2
    assert found.get("enrichment.failed", 0) == 0
    assert found["enrichment.invalid_ip"] == 1
    assert found["enrichment.contact_blocked"] == 2
    assert found["enrichment.company_country_restricted"] == 1
    # The DE company's contacts never left the snapshot loader (its row is counted once);
    # the input contacts of the DE company's visitor and of the unmatched one were removed.
    assert found["enrichment.snapshot_contact_rows_dropped"] == 1
    assert found["enrichment.contact_fields_discarded"] == 2
    assert found["suppressed.company_country_unknown"] == 1


COMPANIES = {
    "203.0.113.7": {**US_CO, **CONTACT},
    "192.0.2.10": {**DE_CO, **CONTACT},
}


def test_enrich_over_http_in_a_pipeline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(KEY_ENV, "pipeline-key")
    with AroundDealServer(COMPANIES, leak_contact=True) as server:
        handler = HttpHandler(
            server.url,
            COMPANY_FIELDS,
            CONTACT_FIELDS,
            api_key_env=KEY_ENV,
            batch_size=50,
            backoff_base=0.01,
            deadline=5.0,
        )
        found = run_enrich(handler)
        sent = [item for request in server.requests for item in request.items]
        headers = [request.headers for request in server.requests]
    assert all(h["X-API-Key"] == "pipeline-key" for h in headers)
    modes: dict[str, set[str]] = {}
    for item in sent:
        modes.setdefault(item["ip"], set()).add(item["fields"])
    # Restricted visitors of 203.0.113.7 only ever asked for company data; the open one asked
    # for contacts too (separate items, separate cache entries).
    assert modes["203.0.113.7"] == {MODE_COMPANY, MODE_COMPANY_CONTACT}
    assert "not-an-ip" not in modes
    assert found["enrichment.matched"] == 5
    assert found["enrichment.no_match"] == 2
    assert found["enrichment.contact_blocked"] == 2
    assert found["enrichment.company_country_restricted"] == 1
    assert found["enrichment.calls"] == len(server.requests)
    # The server leaked contacts for the company-only items; they were discarded and counted.
    assert found["enrichment.contact_fields_discarded"] >= len(CONTACT)
    assert found["suppressed.company_country_unknown"] == 1  # the unmatched visitor's contact


def test_failed_lookups_still_flow_through_the_pipeline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(KEY_ENV, "pipeline-key")
    with AroundDealServer(COMPANIES) as server:
        server.script(*[Action(status=503)] * 100)
        handler = HttpHandler(
            server.url,
            COMPANY_FIELDS,
            CONTACT_FIELDS,
            api_key_env=KEY_ENV,
            batch_size=50,
            max_attempts=2,
            backoff_base=0.01,
            deadline=5.0,
        )
        pipeline = TestPipeline(runner="FnApiRunner")
        inputs = records()
        out = (
            pipeline
            | beam.Create(inputs)
            | EnrichAroundDeal(handler, COMPANY_FIELDS, CONTACT_FIELDS, POLICY)
        )
        # Every record comes out, unenriched: company fields empty (the input's own value wins),
        # and without the input's contact fields, since no company country is known.
        unenriched = [
            {**NO_COMPANY, **{k: v for k, v in record.items() if k not in CONTACT_FIELDS}}
            for record in inputs
        ]
        assert_that(out, equal_to(unenriched))
        result = pipeline.run()
        result.wait_until_finish()
    found = counters(result)
    assert found["enrichment.failed"] == 6
    assert found["enrichment.no_match"] == 1  # the invalid IP was never sent
    assert found.get("enrichment.matched", 0) == 0


def test_without_a_handler_only_the_company_country_rule_applies() -> None:
    inputs = [
        {**visit("e1", "203.0.113.7", "OTHER"), **DE_CO, **CONTACT},
        {**visit("e2", "203.0.113.8", "OTHER"), **CONTACT},
    ]
    with TestPipeline(runner="FnApiRunner") as pipeline:
        out = (
            pipeline
            | beam.Create(inputs)
            | EnrichAroundDeal(None, COMPANY_FIELDS, CONTACT_FIELDS, POLICY)
        )
        assert_that(
            out,
            equal_to(
                [
                    {**visit("e1", "203.0.113.7", "OTHER"), **DE_CO},
                    visit("e2", "203.0.113.8", "OTHER"),  # no company country: no contacts
                ]
            ),
        )

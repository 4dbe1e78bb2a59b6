"""EnrichAroundDeal: the join rules, the company-country rule, build_handler, the composite in
a TestPipeline (FnApiRunner) with both handlers, counters included, its columnar fallbacks (none
on clean input, in strict mode) and the call deadline."""

from __future__ import annotations

import argparse
import copy
import csv
import time
from pathlib import Path

import apache_beam as beam
import pyarrow as pa
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
from tests.support.stages import on_records
from transforms.counters import STRICT_COLUMNAR_ENV, ColumnarFallbackError
from transforms.elements import AnyBatch, TableBatch
from transforms.enrichment import FAILED, MATCHED, NO_MATCH, LookupResult
from transforms.enrichment.country import RestrictContactsByCompanyCountry
from transforms.enrichment.enrich import CallDeadlineError, EnrichAroundDeal, LookupAndJoin
from transforms.enrichment.http_client import HttpHandler
from transforms.enrichment.http_protocol import MODE_COMPANY, MODE_COMPANY_CONTACT
from transforms.enrichment.join import JoinAroundDeal
from transforms.enrichment.registry import add_flags, build_handler
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


def flags(*argv: str) -> argparse.Namespace:
    """The providers' flags as the visits command line parses them."""
    parser = argparse.ArgumentParser()
    add_flags(parser)
    return parser.parse_args(list(argv))


def test_build_handler_picks_the_source(tmp_path: Path) -> None:
    kwargs = {"company_fields": COMPANY_FIELDS, "contact_fields": CONTACT_FIELDS, "policy": POLICY}
    assert build_handler(flags(), **kwargs) is None
    assert build_handler(flags("--enrichment_snapshot=", "--enrichment_url="), **kwargs) is None
    path = write_snapshot(tmp_path / "ad.csv")
    snapshot = build_handler(flags(f"--enrichment_snapshot={path}"), **kwargs)
    assert isinstance(snapshot, SnapshotHandler)
    assert snapshot.contact_rows_dropped() == 1  # loaded and checked when built
    http = build_handler(
        flags(
            "--enrichment_url=https://api.test/v1/lookup",
            "--enrichment_rate_limit=2.5",
            "--enrichment_max_retries=1",
            "--enrichment_batch_size=7",
        ),
        **kwargs,
    )
    assert isinstance(http, HttpHandler)
    assert (http.requests_per_second, http.max_attempts, http.batch_size) == (2.5, 2, 7)
    with pytest.raises(ValueError, match="one source"):
        build_handler(
            flags(f"--enrichment_snapshot={path}", "--enrichment_url=https://api.test/v1/lookup"),
            **kwargs,
        )


def test_a_malformed_snapshot_fails_when_the_handler_is_built(tmp_path: Path) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text("network,company_name\n10.0.0.0/8,x\n")
    with pytest.raises(ValueError, match="missing columns"):
        build_handler(
            flags(f"--enrichment_snapshot={bad}"),
            company_fields=COMPANY_FIELDS,
            contact_fields=CONTACT_FIELDS,
            policy=POLICY,
        )


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


def enrich(handler) -> EnrichAroundDeal:
    return EnrichAroundDeal(handler, COMPANY_FIELDS, CONTACT_FIELDS, POLICY)


def run_enrich(handler) -> dict[str, int]:
    pipeline = TestPipeline(runner="FnApiRunner")
    out = on_records(pipeline | beam.Create(records()), enrich(handler))
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
        out = on_records(pipeline | beam.Create(inputs), enrich(handler))
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
        out = on_records(pipeline | beam.Create(inputs), enrich(None))
        assert_that(
            out,
            equal_to(
                [
                    {**visit("e1", "203.0.113.7", "OTHER"), **DE_CO},
                    visit("e2", "203.0.113.8", "OTHER"),  # no company country: no contacts
                ]
            ),
        )


# -- tables: the production path, and its fallbacks --------------------------------------------


def table_of(rows: list[dict]) -> pa.Table:
    """Rows as Parse and Geolocate hand them on: every field a string column."""
    names = list(dict.fromkeys(name for row in rows for name in row))
    return pa.Table.from_pylist(rows, schema=pa.schema([(n, pa.string()) for n in names]))


def run_on_table(handler, table: pa.Table, *, rows: list[dict], kind: str) -> dict[str, int]:
    """Runs the stage on one table; asserts the rows out (null values aside) and the kind of
    batch out; returns the counters."""
    pipeline = TestPipeline(runner="FnApiRunner")
    out = (
        pipeline
        | beam.Create([TableBatch(table)]).with_output_types(AnyBatch)
        | "EnrichAroundDeal" >> enrich(handler)
    )
    got = out | beam.FlatMap(
        lambda b: b.table.to_pylist() if isinstance(b, TableBatch) else list(b)
    )
    assert_that(got | beam.Map(without_nulls), equal_to(normal(rows)), label="Rows")
    assert_that(out | beam.Map(lambda b: type(b).__name__), equal_to([kind]), label="Kind")
    result = pipeline.run()
    result.wait_until_finish()
    return counters(result)


def without_nulls(row: dict) -> dict:
    return {k: v for k, v in row.items() if v is not None}


def normal(rows: list[dict]) -> list[dict]:
    """Rows without their null values (a table has a column where a record has no key),
    in event order."""
    return sorted(map(without_nulls, rows), key=lambda row: row["event_id"])


def clean_records() -> list[dict]:
    """As Parse emits them: no company column (every other test record)."""
    return [r for r in records() if "company_name" not in r]


def test_a_clean_table_is_enriched_in_columns_with_no_fallback(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Strict mode turns any fallback to the record path into a failure: the snapshot's column
    lookup, the join and the contact gate decide a clean table in columns, with the rows and
    counters of the record path."""
    monkeypatch.setenv(STRICT_COLUMNAR_ENV, "1")
    handler = SnapshotHandler(
        write_snapshot(tmp_path / "ad.csv"), COMPANY_FIELDS, CONTACT_FIELDS, POLICY
    )
    wanted = [r for r in expected() if r["event_id"] != "input-wins"]
    found = run_on_table(handler, table_of(clean_records()), rows=wanted, kind="TableBatch")
    assert not [name for name in found if name.startswith("columnar_fallback.")]
    assert found["enrichment.matched"] == 4 and found["enrichment.no_match"] == 2


def test_a_table_with_company_columns_falls_back_and_is_counted(tmp_path: Path) -> None:
    """The record's own company values win: the join cannot do that in columns, so the table
    goes record by record, counted by reason (and refused in strict mode)."""
    handler = SnapshotHandler(
        write_snapshot(tmp_path / "ad.csv"), COMPANY_FIELDS, CONTACT_FIELDS, POLICY
    )
    found = run_on_table(handler, table_of(records()), rows=expected(), kind="Batch")
    assert found["columnar_fallback.enrich.company_columns"] == len(records())


def test_strict_mode_refuses_the_fallback(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(STRICT_COLUMNAR_ENV, "1")
    table = TableBatch(table_of(records()))
    responses = [matched(US_CO)] * table.table.num_rows
    with pytest.raises(ColumnarFallbackError, match=r"enrich: 7 rows.*company_columns"):
        join().batch(table, responses)


# -- the call deadline ------------------------------------------------------------------------


class SlowHandler:
    """A handler that breaks its own deadline."""

    batch_size = 0

    def __init__(self) -> None:
        self.entered = self.exited = 0

    def max_call_seconds(self) -> float:
        return 0.2

    def __enter__(self) -> SlowHandler:
        self.entered += 1
        return self

    def __exit__(self, *exc: object) -> None:
        self.exited += 1

    def lookup(self, requests):
        time.sleep(1.0)
        return [None] * len(requests)


def test_a_call_past_its_deadline_fails_the_bundle_at_the_deadline() -> None:
    handler = SlowHandler()
    fn = LookupAndJoin(handler, join())
    fn.setup()
    started = time.monotonic()
    with pytest.raises(CallDeadlineError, match=r"within 0\.2s"):
        list(fn.process([visit("e1", "203.0.113.7", "OTHER")]))
    assert time.monotonic() - started < 0.9  # not when the call ends
    fn.teardown()
    assert (handler.entered, handler.exited) == (1, 1)

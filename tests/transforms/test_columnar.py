"""Columnar batches (``TableBatch``): every stage's table path is held to its record path.

The record-wise code is the reference (it has its own tests); here each stage runs over the
same records once as a list and once as an Arrow table, and must give the same good records
(a key the record path drops is a null in a table), the same dead letters and the same counters.
And on clean tables, as Parse emits them, each stage must decide in columns: strict mode
(``TRTC_STRICT_COLUMNAR=1``) makes any fallback to the record path an error, and the output must
still be a table, so a columnar path that is switched off fails here.
"""

from __future__ import annotations

import pickle
from collections import Counter
from typing import Any

import apache_beam as beam
import pyarrow as pa
import pytest
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipelines.options import bundled
from schemas.arrow import arrow_schema
from schemas.avro import category_columns, input_fields, output_schema
from transforms.batches import ApplyStage, RecordStage
from transforms.columns import not_blank, present
from transforms.counters import STRICT_COLUMNAR_ENV, ColumnarFallbackError
from transforms.deadletter import FromExceptions
from transforms.elements import AnyBatch, Batch, BatchCoder, TableBatch, records_of
from transforms.enrichment import FAILED, MATCHED, NO_MATCH, LookupResult
from transforms.enrichment.enrich import JoinAroundDeal, RestrictContactsByCompanyCountry
from transforms.fingerprint import FingerprintFn, KeySource
from transforms.geo import GeolocateFn
from transforms.guard import GuardFn
from transforms.suppress import SuppressRestrictedFn, forbidden_by_region
from transforms.tag import CategoryOutput, TagFn
from transforms.validation import record_schema

T = 1_790_000_000 * 1_000_000
TEXTS = st.sampled_from([None, "", " ", "\u3000", "\t x", "x", " Jane ", "jane@corp.example"])
# Company countries in every form the one country decision must read alike: codes, aliases,
# other spellings and values that are not countries.
COUNTRIES = st.sampled_from(
    [None, "", " ", "DE", "de", "US", "GB", "XX1", " us ", "UK", "el", "FX", "ZZ", "\uff27\uff22"]
)
REGIONS = st.sampled_from([None, "EEA_UK", "OTHER", "UNKNOWN", "MARS"])


def _normal(record: dict[str, Any]) -> tuple:
    """A record as a sortable value: a None value and a missing key are the same."""
    return tuple(sorted((k, repr(v)) for k, v in record.items() if v is not None))


def _outcome(outputs) -> tuple[list, list]:
    good, dead = [], []
    for out in outputs:
        if isinstance(out, AnyBatch):
            good.extend(_normal(r) for r in records_of(out))
        else:
            dead.append((out.value["error"], out.value.get("event_id")))
    return sorted(good), sorted(dead)


def _both(make_fn, records: list[dict[str, Any]], schema: pa.Schema, counted: Counter):
    """(outcome, counters) of a fresh stage over the records as a list, then as a table."""
    results = []
    for batch in (Batch(records), TableBatch(pa.Table.from_pylist(records, schema=schema))):
        counted.clear()
        fn = make_fn()
        fn.setup()
        results.append((_outcome(fn.process(batch)), dict(counted)))
    return results


def _visits(draw_rows, extra: dict[str, pa.DataType] | None = None):
    """Records as the stages after Geolocate see them, and the table schema for them."""
    records = [
        {"event_id": f"e-{i}", "ip": "1.2.3.4", "visited_at": T, **row}
        for i, row in enumerate(draw_rows)
    ]
    names = dict.fromkeys(k for r in records for k in r)
    types = {"visited_at": pa.int64(), **(extra or {})}
    return records, pa.schema([(n, types.get(n, pa.string())) for n in names])


@pytest.fixture(scope="module")
def corporate(policy):
    return policy.category("corporate_visitor_info")


def _rows(contact_fields, *, company: bool = False):
    """Rows whose contact fields are all None or "" (nothing present: the rows a rule leaves
    as they are) about as often as rows with anything in them."""

    def row(texts):
        fields = {"region": REGIONS, "country": COUNTRIES}
        fields.update(dict.fromkeys(contact_fields, texts))
        if company:
            fields.update({"company_name": texts, "company_country": COUNTRIES})
        return st.fixed_dictionaries(fields)

    rows = row(st.sampled_from([None, ""])) | row(TEXTS)
    return st.lists(rows, min_size=1, max_size=25)


@settings(max_examples=150, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.data())
def test_suppress_table_is_suppress_records(policy, corporate, contact_fields, counted, data):
    records, schema = _visits(data.draw(_rows(contact_fields)))
    forbidden = forbidden_by_region([corporate])
    listed, tabled = _both(
        lambda: SuppressRestrictedFn(forbidden, policy.regions), records, schema, counted
    )
    assert tabled == listed


@settings(max_examples=150, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.data())
def test_guard_table_is_guard_records(policy, corporate, contact_fields, dl_context, counted, data):
    records, schema = _visits(data.draw(_rows(contact_fields, company=True)))
    visit = policy.category("website_visit")
    listed, tabled = _both(
        lambda: GuardFn(policy, (visit, corporate), ("country", "region"), dl_context),
        records,
        schema,
        counted,
    )
    assert tabled == listed


def test_guard_table_with_an_undeclared_column_rejects_every_row(policy, dl_context, counted):
    fn = GuardFn(policy, (policy.category("sdk_log"),), (), dl_context)
    fn.setup()
    table = pa.table({"event_id": ["a", "b"], "password": [None, "x"]})
    good, dead = _outcome(fn.process(TableBatch(table)))
    assert good == []
    assert dead == [("guard:secret_field", "a"), ("guard:secret_field", "b")]


@settings(max_examples=60, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    st.lists(
        st.sampled_from(
            [
                None,
                "",
                "not an ip",
                "8.8.8.8",
                "81.2.69.160",
                "2.125.160.216",
                "::ffff:8.8.8.8",
                "2001:218::1",
                "10.0.0.1",
                "89.160.20.112",
            ]
        ),
        min_size=1,
        max_size=20,
    )
)
def test_geolocate_table_is_geolocate_records(policy, counted, ips):
    records = [{"event_id": f"e-{i}", "ip": ip} for i, ip in enumerate(ips)]
    schema = pa.schema([("event_id", pa.string()), ("ip", pa.string())])
    listed, tabled = _both(
        lambda: GeolocateFn(bundled("country.mmdb"), policy),
        records,
        schema,
        counted,
    )
    assert tabled == listed
    assert sum(v for k, v in tabled[1].items() if k.startswith("region.")) == len(ips)


COMPANY = ("company_name", "company_domain", "company_industry", "company_country", "company_size")
OFFERED = st.fixed_dictionaries(
    {},
    optional={
        "company_name": st.sampled_from(["ACME", " ACME ", ""]),
        "company_country": COUNTRIES.filter(lambda c: c is not None),
        "company_size": st.sampled_from(["51-200", 12, ["a", " b"]]),
        "contact_name": st.sampled_from(["Jane", " ", "Bob "]),
        "business_email": st.sampled_from(["jane@corp.example", ""]),
    },
)
RESULTS = st.builds(
    LookupResult,
    st.sampled_from([MATCHED, NO_MATCH, FAILED]),
    OFFERED,
    contact_requested=st.booleans(),
    source_calls=st.integers(0, 2),
    retries=st.integers(0, 1),
    cache_hit=st.booleans(),
    contact_fields_discarded=st.integers(0, 2),
    invalid_ip=st.booleans(),
)


@settings(max_examples=200, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.data())
def test_enrichment_join_and_restrict_on_a_table_are_the_record_path(
    policy, contact_fields, counted, data
):
    records, schema = _visits(data.draw(_rows(contact_fields)))
    pool = data.draw(st.lists(RESULTS, min_size=1, max_size=4))  # shared, as a memo gives
    responses = [data.draw(st.sampled_from(pool)) for _ in records]
    outcomes = []
    for batch in (records, TableBatch(pa.Table.from_pylist(records, schema=schema))):
        counted.clear()
        join = JoinAroundDeal(COMPANY, contact_fields, policy)
        joined = join.batch(batch, responses)
        restricted = RestrictContactsByCompanyCountry(contact_fields, policy).batch(joined)
        outcomes.append((sorted(map(_normal, records_of(restricted))), dict(counted)))
    assert outcomes[1] == outcomes[0]


@settings(max_examples=200, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.data())
def test_company_country_rule_on_a_table_is_the_record_path(policy, contact_fields, counted, data):
    """Rows that already carry a company country (in any spelling, or none): the contact gate
    on columns keeps and drops exactly what it does record by record, with the same counts."""
    records, schema = _visits(data.draw(_rows(contact_fields, company=True)))
    outcomes = []
    for batch in (Batch(records), TableBatch(pa.Table.from_pylist(records, schema=schema))):
        counted.clear()
        out = RestrictContactsByCompanyCountry(contact_fields, policy).batch(batch)
        outcomes.append((sorted(map(_normal, records_of(out))), dict(counted)))
    assert outcomes[1] == outcomes[0]


def test_the_join_plans_outlive_a_batch_only_while_their_result_does(policy, contact_fields):
    """A plan is kept per result object; a new result at a recycled address is never taken
    for the old one."""
    join = JoinAroundDeal(COMPANY, contact_fields, policy)
    table = TableBatch(pa.table({"event_id": ["a"], "region": ["OTHER"]}))
    for company in ("ACME", "Initech", "Globex"):
        result = LookupResult(MATCHED, {"company_name": company}, contact_requested=True)
        (row,) = records_of(join.batch(table, [result]))
        assert row["company_name"] == company
        del result


@settings(max_examples=100, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.data())
def test_tag_table_is_tag_records(policy, contact_fields, dl_context, counted, data):
    rows = data.draw(_rows(contact_fields, company=True))
    records, schema = _visits(rows)
    outputs = (
        CategoryOutput("website_visit", category_columns("website_visit")),
        CategoryOutput(
            "corporate_visitor_info",
            category_columns("corporate_visitor_info"),
            when_any=tuple(COMPANY) + tuple(contact_fields),
        ),
    )
    schemas = {o.category: arrow_schema(output_schema(o.category)) for o in outputs}
    tables = []
    for batch in (Batch(records), TableBatch(pa.Table.from_pylist(records, schema=schema))):
        counted.clear()
        fn = TagFn(policy, outputs, dl_context, schemas=schemas)
        fn.setup()
        written: dict[str, list] = {}
        dead = []
        for out in fn.process(batch):
            if isinstance(out, tuple):
                written.setdefault(out[0], []).extend(map(_normal, out[1].to_pylist()))
            else:
                dead.append(out.value["error"])
        tables.append(({k: sorted(v) for k, v in written.items()}, sorted(dead), dict(counted)))
    assert tables[1] == tables[0]


def test_record_schema_of_a_field_of_several_types_is_none():
    from schemas.avro import FieldSpec

    assert record_schema((FieldSpec("x", True, ("string", "long")),), None) is None
    assert record_schema(input_fields("telemetry_input"), "reported_at") is not None


def test_the_batch_coder_round_trips_both_kinds():
    coder = BatchCoder()
    table = TableBatch(pa.table({"a": [1, None], "b": ["x", "y"]}))
    assert coder.decode(coder.encode(table)).table.equals(table.table)
    assert coder.decode(coder.encode(Batch([{"a": 1}]))) == [{"a": 1}]
    assert coder.estimate_size(table) > table.table.num_rows
    assert beam.coders.registry.get_coder(AnyBatch).__class__ is BatchCoder


@given(RESULTS)
def test_a_lookup_result_pickles_by_value(result):
    """Beam sizes (batch, responses) elements by pickling them: a result must come back equal."""
    assert pickle.loads(pickle.dumps(result)) == result


def test_a_failed_table_batch_is_one_dead_letter_per_row(dl_context):
    failed = (TableBatch(pa.table({"event_id": ["a", "b"]})), (ValueError, "m", []))
    with TestPipeline() as p:
        dead = p | beam.Create([failed]) | FromExceptions("stage", dl_context)
        assert_that(
            dead | beam.Map(lambda d: (d["event_id"], d["error"])),
            equal_to([("a", "unexpected_error:ValueError"), ("b", "unexpected_error:ValueError")]),
        )


@given(st.lists(st.none() | st.text(max_size=4), max_size=30))
def test_column_emptiness_is_python_emptiness(values):
    array = pa.array(values, pa.string())
    assert not_blank(array).to_pylist() == [v is not None and bool(v.strip()) for v in values]
    assert present(array).to_pylist() == [v not in (None, "") for v in values]


# ------------------------------------------------------------------ clean tables, strict mode

CONTACT = {"contact_name": "Jane", "business_email": "jane@corp.example", "job_title": "CTO"}


def _clean_visits() -> pa.Table:
    """Visits as Parse emits them (the record schema of ``visit_input``): addresses in and out of
    the EEA/UK, private ones, contact fields or none."""
    ips = ["81.2.69.160", "8.8.8.8", "2001:4860:4860::8888", "10.0.0.1", "193.99.144.80"]
    records = [
        {
            "event_id": f"e-{i}",
            "ip": ip,
            "visited_at": T + i,
            "url": "https://example.com/",
            **(CONTACT if i % 2 else {}),
        }
        for i, ip in enumerate(ips * 4)
    ]
    return pa.Table.from_pylist(
        records, schema=record_schema(input_fields("visit_input"), "visited_at")
    )


@pytest.fixture
def strict(monkeypatch):
    monkeypatch.setenv(STRICT_COLUMNAR_ENV, "1")


def _on_table(fn, table: pa.Table) -> tuple[list[Any], list[Any]]:
    """(good outputs, dead letters) of a fresh stage over one table."""
    fn.setup()
    good, dead = [], []
    for out in fn.process(TableBatch(table)):
        (dead if isinstance(out, beam.pvalue.TaggedOutput) else good).append(out)
    return good, dead


def _located(policy) -> pa.Table:
    ((located,), _) = _on_table(GeolocateFn(bundled("country.mmdb"), policy), _clean_visits())
    return located.table


def test_geolocate_decides_a_clean_table_in_columns(policy, strict):
    (out,), dead = _on_table(GeolocateFn(bundled("country.mmdb"), policy), _clean_visits())
    assert isinstance(out, TableBatch) and dead == []
    assert set(out.table.column("region").to_pylist()) == {"EEA_UK", "OTHER", "UNKNOWN"}


def test_suppress_decides_a_clean_table_in_columns(policy, corporate, strict, counted):
    fn = SuppressRestrictedFn(forbidden_by_region([corporate]), policy.regions)
    (out,), dead = _on_table(fn, _located(policy))
    assert isinstance(out, TableBatch) and dead == []
    assert counted["suppressed.records"] > 0  # it had work to do


def test_guard_decides_a_clean_table_in_columns(policy, corporate, dl_context, strict):
    visit = policy.category("website_visit")
    table = _located(policy)
    fn = SuppressRestrictedFn(forbidden_by_region([corporate]), policy.regions)
    ((suppressed,), _) = _on_table(fn, table)
    # contacts of an OTHER visitor stay only with a company of an unrestricted country
    company = pa.array(["US"] * suppressed.table.num_rows, pa.string())
    table = suppressed.table.append_column("company_country", company)
    fn = GuardFn(policy, (visit, corporate), ("country", "region"), dl_context)
    good, dead = _on_table(fn, table)
    assert [type(g) for g in good] == [TableBatch] and dead == []
    assert good[0].table.num_rows == table.num_rows


def test_guard_sends_the_rows_that_break_an_invariant_to_the_record_path(
    policy, corporate, dl_context, strict
):
    """The columns decide which rows break one (no fallback); their dead letters come from the
    record-wise check."""
    visit = policy.category("website_visit")
    fn = GuardFn(policy, (visit, corporate), ("country", "region"), dl_context)
    good, dead = _on_table(fn, _located(policy))  # contacts not suppressed: forbidden_field
    assert [type(g) for g in good] == [TableBatch]
    assert {d.value["error"] for d in dead} >= {"guard:forbidden_field"}


def test_tag_decides_a_clean_table_in_columns(policy, corporate, dl_context, strict):
    company = tuple(corporate.field_groups["company"]) + tuple(corporate.field_groups["contact"])
    outputs = (
        CategoryOutput("website_visit", category_columns("website_visit")),
        CategoryOutput(
            "corporate_visitor_info", category_columns("corporate_visitor_info"), when_any=company
        ),
    )
    schemas = {o.category: arrow_schema(output_schema(o.category)) for o in outputs}
    table = _located(policy)
    good, dead = _on_table(TagFn(policy, outputs, dl_context, schemas=schemas), table)
    assert dead == []
    assert sorted(c for c, _ in good) == ["corporate_visitor_info", "website_visit"]
    assert dict(good)["website_visit"].num_rows == table.num_rows


def test_fingerprint_decides_a_clean_table_in_columns(policy, strict, monkeypatch, counted):
    monkeypatch.setenv("TEST_FP_KEY", "0123456789abcdef0123456789abcdef")
    records = [
        {"event_id": "a", "sdk_app_id": "1", "private_key": "pk-1"},
        {"event_id": "b", "sdk_app_id": "2", "private_key": None},
    ]
    schema = pa.schema([(k, pa.string()) for k in records[0]])

    def make():
        return FingerprintFn(
            "customer_temporary_key",
            {"private_key_fingerprint": "private_key"},
            KeySource(env="TEST_FP_KEY"),
        )

    (out,), _ = _on_table(make(), pa.Table.from_pylist(records, schema=schema))
    assert isinstance(out, TableBatch)
    listed, tabled = _both(make, records, schema, counted)
    assert tabled == listed


class _RecordsOnly(RecordStage):
    stage = "records_only"

    def one(self, record):
        return record


def test_a_stage_without_a_columnar_path_falls_back_and_strict_mode_refuses_it(strict):
    with pytest.raises(ColumnarFallbackError, match=r"records_only: 2 rows.*no_columnar_path"):
        _on_table(_RecordsOnly(), pa.table({"event_id": ["a", "b"]}))


def test_strict_mode_fails_the_pipeline_rather_than_dead_lettering_the_batch(strict, dl_context):
    """Strict mode must stop a run: the dead-letter handlers of the stages do not catch it."""

    class _Lettered(_RecordsOnly):
        def __init__(self) -> None:
            super().__init__(dl_context)

    table = pa.table({"event_id": ["a", "b"]})
    with (
        pytest.raises(ColumnarFallbackError, match="strict mode"),
        TestPipeline(runner="FnApiRunner") as p,
    ):
        _ = p | beam.Create([TableBatch(table)]) | ApplyStage(_Lettered())

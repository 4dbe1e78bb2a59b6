"""Batches: a stage over a batch rejects records one by one; the table tagger writes what the
row tagger would. (The reader's tests are in ``test_read``.)"""

from __future__ import annotations

from collections import Counter
from types import MappingProxyType

import apache_beam as beam
import pyarrow as pa
import pyarrow.compute as pc
import pytest
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to
from hypothesis import given, settings
from hypothesis import strategies as st

from pipelines.ingest import spec_for
from schemas.arrow import arrow_schema, to_arrow_table
from schemas.avro import category_columns, output_schema
from tests.support.stages import on_records
from transforms.batches import ApplyStage, Batch, RecordStage
from transforms.counters import STRICT_COLUMNAR_ENV, ColumnarFallbackError
from transforms.deadletter import DEAD_LETTER_TAG, RecordError
from transforms.sinks import MAX_EXPIRY_MICROS
from transforms.tag import CategoryOutput, TagFn, Tagger
from transforms.tag_columns import BatchColumns
from transforms.timestamps import parse_event_time

T = 1_790_000_000 * 1_000_000
DAY = 86_400 * 1_000_000


class _Halve(RecordStage):
    """Halves even numbers; rejects odd ones; crashes on zero."""

    stage = "halve"

    def one(self, n):
        if n == 0:
            raise ZeroDivisionError("secret value 0")
        if n % 2:
            raise RecordError("odd", raw={"n": n, "secret": "s"}, event_id=f"n{n}")
        self.tally.add("halved")
        return n // 2


def _run(fn, batch):
    fn.setup()
    good, dead = [], []
    for out in fn.process(batch):
        if isinstance(out, beam.pvalue.TaggedOutput):
            assert out.tag == DEAD_LETTER_TAG
            dead.append(out.value)
        else:
            good.append(out)
    return good, dead


def test_a_stage_rejects_records_one_by_one_and_keeps_the_rest(dl_context):
    good, dead = _run(_Halve(dl_context), [4, 3, 0, 8])
    assert good == [[2, 4]]  # one output batch, in order
    assert [(d["error"], d["event_id"], d["raw"]) for d in dead if "event_id" in d] == [
        ("odd", "n3", '{"n": "***", "secret": "***"}')  # the stage's raw, closed-world masked
    ]
    (crash,) = [d for d in dead if "event_id" not in d]
    assert crash["error"] == "unexpected_error:ZeroDivisionError"
    assert crash["raw"] is None and crash["stage"] == "halve"  # not a record: nothing shown


def test_a_stage_without_dead_letters_lets_exceptions_through():
    with pytest.raises(ZeroDivisionError):
        _run(_Halve(), [2, 0])


@pytest.mark.parametrize("records", [False, True])
def test_apply_stage_on_batches_and_on_records(dl_context, records):
    """A stage applies to batches; ``on_records`` batches plain records around it."""
    with TestPipeline(runner="FnApiRunner") as p:
        if records:
            elements = p | beam.Create([2, 3, 4, 6, 0])
            good, dead = on_records(elements, ApplyStage(_Halve(dl_context)))
        else:
            elements = p | beam.Create([Batch([2, 3, 4]), Batch([6, 0])])
            good, dead = elements | ApplyStage(_Halve(dl_context))
            good = good | "Flat" >> beam.FlatMap(lambda b: b)
        assert_that(good, equal_to([1, 2, 3]), label="Good")
        assert_that(
            dead | "AllLetters" >> beam.Flatten() | beam.Map(lambda d: d["error"]),
            equal_to(["odd", "unexpected_error:ZeroDivisionError"]),
            label="Dead",
        )


class _FailsOutsideTheLoop(RecordStage):
    stage = "broken"

    def process(self, batch):
        raise RuntimeError("the whole batch")


def test_a_failed_batch_is_one_dead_letter_per_record(dl_context):
    records = [{"event_id": "a"}, {"event_id": "b"}]
    with TestPipeline(runner="FnApiRunner") as p:
        _good, dead = p | beam.Create([records]) | ApplyStage(_FailsOutsideTheLoop(dl_context))
        assert_that(
            dead | "AllLetters" >> beam.Flatten() | beam.Map(lambda d: (d["event_id"], d["error"])),
            equal_to(
                [("a", "unexpected_error:RuntimeError"), ("b", "unexpected_error:RuntimeError")]
            ),
        )


# ------------------------------------------------------------------------------- tagging

_CONTACT_VALUES = st.one_of(st.none(), st.just(""), st.text(max_size=5))


@settings(max_examples=100, deadline=None)
@given(
    st.lists(
        st.fixed_dictionaries(
            {
                "event_id": st.text(min_size=1, max_size=8),
                "region": st.sampled_from(["OTHER", "EEA_UK", "UNKNOWN"]),
                "visited_at": st.integers(min_value=0, max_value=T),
                "company_name": _CONTACT_VALUES,
                "business_email": _CONTACT_VALUES,
                "linkedin_url": _CONTACT_VALUES,
            }
        ),
        max_size=12,
    )
)
def test_the_table_tagger_writes_what_the_row_tagger_would(policy, records):
    category = policy.category("corporate_visitor_info")
    schema = arrow_schema(output_schema("corporate_visitor_info"))
    tagger = Tagger(category, category_columns("corporate_visitor_info"), policy.version)
    fresh = Tagger(category, category_columns("corporate_visitor_info"), policy.version)
    rows = [fresh.row(r) for r in records]  # a fresh tagger: nothing memoised across records
    table = tagger.table(records, [tagger.tags(r) for r in records], schema)
    assert table.equals(to_arrow_table(rows, schema))


def test_tag_fn_builds_tables_and_dead_letters_what_a_table_cannot_hold(policy, dl_context):
    schemas = {"website_visit": arrow_schema(output_schema("website_visit"))}
    fn = TagFn(
        policy,
        (CategoryOutput("website_visit", category_columns("website_visit")),),
        dl_context,
        schemas=schemas,
    )
    good = {"event_id": "ok", "ip": "1.2.3.4", "visited_at": T, "region": "OTHER"}
    bad = {**good, "event_id": "bad", "url": 12}  # not a string: the table cannot hold it
    no_time = {**good, "event_id": "no-time", "visited_at": None}
    fn.setup()
    outs = list(fn.process([good, bad, no_time]))
    tables = [o for o in outs if not isinstance(o, beam.pvalue.TaggedOutput)]
    dead = sorted(
        (o.value["event_id"], o.value["error"])
        for o in outs
        if isinstance(o, beam.pvalue.TaggedOutput)
    )
    assert dead == [
        ("bad", "unexpected_error:ValueError"),
        ("no-time", "unexpected_error:ValueError"),
    ]
    ((category, table),) = tables
    assert category == "website_visit" and isinstance(table, pa.Table)
    assert table.column("event_id").to_pylist() == ["ok"]
    assert (
        table.column("expires_at").to_pylist()[0].timestamp() * 1_000_000
        == T + 180 * 86_400 * 10**6
    )


# Table mode decides column-wise (transforms.tag_columns.BatchColumns) what the row mode decides
# record by record. Random batches of three shapes: visits (two outputs, one of them when_any, a
# conditional purpose), and the routed sources sdk_logs (when_present) and telemetry
# (when_equals), exclusive.
# Values are mostly what the pipelines carry, sometimes not (ints or bytes where strings belong,
# a text event time, a mapping that is no dict): those must end exactly as record by record.

_TEXT = st.one_of(st.none(), st.just(""), st.text(max_size=4))
_ODD = st.one_of(_TEXT, _TEXT, _TEXT, st.integers(-2, 2), st.sampled_from([b"", b"x"]))
_TIME = st.one_of(st.none(), st.integers(0, T), st.integers(0, T), st.just("soon"))
_COMPANY = ("company_name", "company_size")
_CONTACT = ("contact_name", "business_email", "business_phone", "linkedin_url")

_SHAPES = {
    "visits": st.fixed_dictionaries(
        {
            "ip": st.text(min_size=1, max_size=4),
            "visited_at": _TIME,
            "region": st.sampled_from(["OTHER", "EEA_UK", "UNKNOWN", "MARS", "", None, b"OTHER"]),
        },
        optional={
            "url": _ODD,
            "country": st.one_of(_TEXT, st.sampled_from(["US", "DE", None, b"US"])),
            **dict.fromkeys(_COMPANY + _CONTACT, _ODD),
        },
    ),
    "sdk_logs": st.fixed_dictionaries(
        {"logged_at": _TIME, "sdk_app_id": st.one_of(st.text(min_size=1, max_size=4), _ODD)},
        optional={"client_ip": _ODD, "message": _TEXT, "region": st.sampled_from(["OTHER", 1])},
    ),
    "telemetry": st.fixed_dictionaries(
        {
            "reported_at": _TIME,
            "sdk_app_id": st.text(min_size=1, max_size=4),
            "event_type": st.sampled_from(["quality", "mute", "", None, b"quality", 3]),
        },
        optional={"cpu_usage": st.one_of(st.none(), st.floats(allow_nan=False), st.just("x"))},
    ),
}


# No run time, one that expires part of the drawn event times (0..T), one that expires all.
_RUN_TIMES = st.sampled_from([None, T // 2, T + 200 * DAY])


def _shape(policy, shape):
    """(outputs, exclusive) of a shape, as the pipelines build them."""
    if shape == "visits":
        corp = policy.category("corporate_visitor_info")
        when_any = corp.field_groups["company"] + corp.field_groups["contact"]
        return (
            CategoryOutput("website_visit", category_columns("website_visit")),
            CategoryOutput(
                "corporate_visitor_info",
                category_columns("corporate_visitor_info"),
                when_any=when_any,
            ),
        ), False
    spec = spec_for(policy, source=shape)
    return spec.outputs, spec.exclusive


def _batches(shape):
    """Batches of records of ``shape``, each with its own event id; in a few, one is no dict."""

    def batch(records, proxy):
        batch = [{**r, "event_id": f"e{i}"} for i, r in enumerate(records)]
        if proxy and batch:
            batch[0] = MappingProxyType(batch[0])
        return batch

    proxy = st.sampled_from([False] * 5 + [True])
    return st.builds(batch, st.lists(_SHAPES[shape], max_size=16), proxy)


def _tag(policy, dl_context, shape, batch, *, tables=True, run_time=None):
    """Outputs, dead letters and counter increments of a TagFn over ``batch``: its tables, or
    (``tables=False``) the rows of its record path, the reference."""
    outputs, exclusive = _shape(policy, shape)
    schemas = {o.category: arrow_schema(output_schema(o.category)) for o in outputs}
    fn = TagFn(policy, outputs, dl_context, exclusive, schemas=schemas, run_time=run_time)
    fn.setup()
    counts = Counter()
    add = fn.tally.add

    def count(name, n=1):
        counts[name] += n
        add(name, n)

    fn.tally.add = count
    good, dead = [], []
    for out in fn.process(batch) if tables else fn.process_records(Batch(batch)):
        (dead.append(out.value) if isinstance(out, beam.pvalue.TaggedOutput) else good.append(out))
    return good, dead, counts, schemas


@pytest.mark.parametrize("shape", sorted(_SHAPES))
@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_the_table_mode_writes_what_the_row_mode_would(policy, dl_context, shape, data):
    batch = data.draw(_batches(shape))
    run_time = data.draw(_RUN_TIMES)
    rows, row_dead, row_counts, schemas = _tag(
        policy, dl_context, shape, batch, tables=False, run_time=run_time
    )
    tables, dead, counts, _ = _tag(policy, dl_context, shape, batch, run_time=run_time)
    expired = {k: v for k, v in counts.items() if k.startswith("expired_on_arrival.")}
    assert expired == {k: v for k, v in row_counts.items() if k.startswith("expired_on_arrival.")}

    # The row mode writes no table: a row whose values its schema cannot hold is the table
    # mode's dead letter. Beyond that, a record is dead in both modes or in none.
    rows = [row for batch_rows in rows for row in batch_rows]
    unwritable = set()
    for row in rows:
        try:
            to_arrow_table([row], schemas[row["data_category"]])
        except ValueError:
            unwritable.add(row["event_id"])
    gone = {d["event_id"] for d in row_dead} | unwritable
    assert {d["event_id"] for d in dead} == gone
    for category, schema in schemas.items():
        written = [t for c, t in tables if c == category]
        assert counts[f"tagged.{category}"] == sum(t.num_rows for t in written)
        table = pa.concat_tables(written) if written else schema.empty_table()
        # A record dead in one output of the table mode may still have a row in another.
        alive = pc.invert(pc.is_in(table["event_id"], pa.array(sorted(gone), pa.string())))
        expected = [r for r in rows if r["data_category"] == category and r["event_id"] not in gone]
        assert table.filter(alive).equals(to_arrow_table(expected, schema))


@pytest.mark.parametrize("shape", sorted(_SHAPES))
@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_column_wise_tagging_is_record_by_record_tagging(policy, dl_context, shape, data):
    batch = data.draw(_batches(shape))
    run_time = data.draw(_RUN_TIMES)
    with pytest.MonkeyPatch.context() as mp:  # the columns decide nothing: record by record
        mp.setattr(CategoryOutput, "mask", lambda self, columns: None)
        mp.setattr(Tagger, "column_tags", lambda self, columns, picked: "test")
        expected, expected_dead, expected_counts, _ = _tag(
            policy, dl_context, shape, batch, run_time=run_time
        )
    tables, dead, counts, _ = _tag(policy, dl_context, shape, batch, run_time=run_time)
    assert [c for c, _ in tables] == [c for c, _ in expected]
    for (_, table), (_, want) in zip(tables, expected, strict=True):
        assert table.schema == want.schema and table.equals(want)
    assert dead == expected_dead  # the same dead letters, in the same order
    assert counts == expected_counts


def test_a_plain_batch_is_tagged_column_wise(policy, dl_context, monkeypatch):
    monkeypatch.setenv(STRICT_COLUMNAR_ENV, "1")  # the columns decide: no fallback
    visit = {"ip": "1.2.3.4", "visited_at": T, "region": "OTHER"}
    contact = {"contact_name": "Jane", "business_email": "jane@corp.example", "country": "US"}
    batch = [
        {**visit, "event_id": "a", **contact},
        {**visit, "event_id": "j", **contact, "country": "JP"},  # no direct marketing there
        {**visit, "event_id": "b", "region": "EEA_UK", "company_name": "X"},
        {**visit, "event_id": "c", "url": "", "company_name": ""},
        {**visit, "event_id": "d", "visited_at": None},
        {**visit, "event_id": "e", "region": "", "linkedin_url": "in/e"},  # unknown region
    ]
    tables, dead, counts, _ = _tag(policy, dl_context, "visits", batch)
    by_category = {c: t.to_pydict() for c, t in tables}
    assert by_category["website_visit"]["event_id"] == ["a", "j", "b", "c", "e"]
    corporate = by_category["corporate_visitor_info"]
    assert corporate["event_id"] == ["a", "j", "b", "e"]
    assert corporate["retention_rule"] == [
        "until_opt_out",
        "fixed_180d",
        "fixed_180d",
        "fixed_180d",
    ]
    assert corporate["expires_at"][0] is None and corporate["purposes"][0][-1] == "direct_marketing"
    assert by_category["website_visit"]["expires_at"][1].timestamp() * 10**6 == T + 180 * DAY
    assert [(d["event_id"], d["error"]) for d in dead] == [
        ("d", "unexpected_error:ValueError")  # no event time: no fixed expiry
    ]
    assert counts == {"tagged.website_visit": 5, "tagged.corporate_visitor_info": 4}


def test_a_tag_fallback_is_counted_and_strict_mode_makes_it_an_error(
    policy, dl_context, monkeypatch
):
    """A region that is no text: the columns cannot decide, the record path does (the same
    rows), and that is counted by reason; in strict mode it is an error."""
    import transforms.counters

    counts = Counter()

    class _Counter:
        def __init__(self, name):
            self.name = name

        def inc(self, n=1):
            counts[self.name] += n

    monkeypatch.setattr(transforms.counters, "counter", _Counter)
    batch = [{"event_id": "a", "ip": "1.2.3.4", "visited_at": T, "region": b"OTHER"}]
    tables, dead, _, _ = _tag(policy, dl_context, "visits", batch)
    assert [c for c, _ in tables] == ["website_visit"] and dead == []
    assert counts == {"columnar_fallback.tag.region_not_text": 1}
    monkeypatch.setenv(STRICT_COLUMNAR_ENV, "1")
    with pytest.raises(ColumnarFallbackError, match="tag: 1 rows"):
        _tag(policy, dl_context, "visits", batch)


def test_batch_columns_look_again_at_empty_values():
    """b"" converts to a string column as "", but Python calls it filled."""
    records = [{"x": b""}, {"x": ""}, {"x": "a"}, {}, {"x": None}]
    columns = BatchColumns(records)
    columns.convert([pa.field("x", pa.string())])
    assert columns.filled("x").to_pylist() == [True, False, True, False, False]
    assert BatchColumns(records).filled("x") is None  # not all str: the records decide
    assert BatchColumns([{"x": 1}, {}]).filled("x").to_pylist() == [True, False]
    assert BatchColumns([{"x": "a"}, {"x": b"a"}]).equals("x", "a") is None


@pytest.mark.parametrize("tables", [True, False])
def test_rows_expired_at_the_run_time_are_counted_not_written(policy, dl_context, tables):
    batch = [
        {"event_id": "old", "logged_at": T, "sdk_app_id": "1"},  # expires T + 14 days
        # expires later on the run's UTC day: a purge run now would delete it
        {"event_id": "today", "logged_at": T + 3_600_000_000, "sdk_app_id": "1"},  # +1 h
        {"event_id": "new", "logged_at": T + 10 * DAY, "sdk_app_id": "1"},
    ]
    out, dead, counts, _ = _tag(
        policy, dl_context, "sdk_logs", batch, tables=tables, run_time=T + 14 * DAY
    )
    ids = (
        [e for _, t in out for e in t["event_id"].to_pylist()]
        if tables
        else [r["event_id"] for rows in out for r in rows]
    )
    assert ids == ["new"] and dead == []
    assert counts["expired_on_arrival.sdk_log"] == 2


@pytest.mark.parametrize("tables", [True, False])
@pytest.mark.parametrize(
    "event_time",
    [
        "9999-12-25T00:00:00Z",  # + 14 days: year 10000
        # + 14 days: 9999-12-31, the date of the open-ended partition; such a row would be
        # merged with the open-ended rows and never purged
        "9999-12-17T00:00:00Z",
        "9999-12-17T23:59:59.999999Z",
    ],
)
def test_an_expiry_on_or_after_9999_12_31_is_a_dead_letter(policy, dl_context, tables, event_time):
    late = parse_event_time(event_time)
    batch = [
        {"event_id": "late", "logged_at": late, "sdk_app_id": "1"},
        # + 14 days: 9999-12-30T23:59:59.999999, the last real expiry
        {"event_id": "last", "logged_at": MAX_EXPIRY_MICROS - 14 * DAY, "sdk_app_id": "1"},
    ]
    out, dead, _, _ = _tag(policy, dl_context, "sdk_logs", batch, tables=tables)
    ids = (
        [e for _, t in out for e in t["event_id"].to_pylist()]
        if tables
        else [r["event_id"] for rows in out for r in rows]
    )
    assert ids == ["last"]
    assert [(d["error"], d["event_id"]) for d in dead] == [("expiry_out_of_range", "late")]

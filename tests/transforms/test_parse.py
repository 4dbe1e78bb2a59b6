"""Parse + Validate: the allow-list, every dead-letter reason, JSON Lines, Avro and Parquet
elements; the columns (what production runs) held to the record-by-record reference, and every
row they leave to it counted."""

from __future__ import annotations

import ipaddress
import json
import traceback
from datetime import UTC, date, datetime, timedelta, timezone
from decimal import Decimal

import apache_beam as beam
import pytest
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from schemas.avro import FieldSpec, input_fields
from tests.support.inputs import (
    SAMPLES,
    as_exported,
    clean_sample_lines,
    clean_sample_records,
    write_avro,
    write_parquet,
)
from tests.support.stages import on_records
from transforms.batches import AnyBatch, Batch, TableBatch, records_of
from transforms.counters import (
    FALLBACK_PREFIX,
    NAMESPACE,
    STRICT_COLUMNAR_ENV,
    ColumnarFallbackError,
)
from transforms.deadletter import DEAD_LETTER_TAG
from transforms.inputformats import ByteRange, format_named
from transforms.parse import COLUMN_ERRORS, Parse, ParseFn, decode_json_line
from transforms.rawinput import ReadFailure, RecordError, Withheld
from transforms.timestamps import TimeBounds, parse_event_time
from transforms.validation import (
    FieldKind,
    canonical_ip,
    compile_columns,
    field_plan,
    record_schema,
    validate_planned,
    validate_record,
)

SPECS = input_fields("visit_input")
T = int(datetime(2026, 10, 5, 15, 30, tzinfo=UTC).timestamp()) * 1_000_000
GOOD = {"event_id": "e1", "ip": "8.8.8.8", "visited_at": "2026-10-05T23:30:00+08:00"}


def reason(obj):
    with pytest.raises(RecordError) as err:
        validate_record(obj, SPECS, "visited_at")
    return err.value.error


def test_good_record_is_typed_and_complete():
    record = validate_record({**GOOD, "url": "https://x.example/"}, SPECS, "visited_at")
    assert record["visited_at"] == T
    assert record["url"] == "https://x.example/"
    assert list(record) == [s.name for s in SPECS]  # every declared field, in schema order
    assert record["business_email"] is None


def test_allow_list_drops_undeclared_fields():
    record = validate_record(
        {**GOOD, "password": "hunter2", "user_sig": "sig", "private_key": "k", "extra": 1},
        SPECS,
        "visited_at",
    )
    assert not {"password", "user_sig", "private_key", "extra"} & record.keys()


def test_ip_is_canonical():
    record = validate_record({**GOOD, "ip": " 2001:DB8:0:0::1 "}, SPECS, "visited_at")
    assert record["ip"] == "2001:db8::1"
    mapped = validate_record({**GOOD, "ip": "::FFFF:8.8.8.8"}, SPECS, "visited_at")
    assert mapped["ip"] == "::ffff:8.8.8.8"  # IPv4-mapped: dotted, as written (RFC 5952)


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"event_id": None}, "missing_field:event_id"),
        ({"event_id": ""}, "missing_field:event_id"),
        ({"ip": None}, "missing_field:ip"),
        ({"visited_at": None}, "missing_field:visited_at"),
        ({"visited_at": "last tuesday"}, "malformed_timestamp:visited_at"),
        ({"visited_at": True}, "malformed_timestamp:visited_at"),
        ({"ip": "999.1.1.1"}, "malformed_field:ip"),
        ({"ip": 134744072}, "malformed_field:ip"),
        ({"event_id": 7}, "malformed_field:event_id"),
        ({"url": 42}, "malformed_field:url"),
        ({"business_email": ["a@b"]}, "malformed_field:business_email"),
    ],
)
def test_dead_letter_reasons(change, expected):
    obj = {k: v for k, v in {**GOOD, **change}.items() if v is not None}
    assert reason(obj) == expected


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        (b"\xff\xfe{}", "invalid_encoding"),
        (b"", "empty_line"),
        (b"   ", "empty_line"),
        (b'{"event_id": ', "invalid_json"),
        (b"[1, 2]", "not_an_object"),
        (b'"text"', "not_an_object"),
    ],
)
def test_line_level_reasons(line, expected):
    with pytest.raises(RecordError) as err:
        decode_json_line(line)
    assert err.value.error == expected


# How a test runs a ParseFn: as production does (the columns, what they leave record by record),
# or the reference alone (every element record by record).
PATHS = ("production", "reference")


def _run_fn(fn, *elements, path="production"):
    fn.setup()
    good, dead = [], []
    run = fn.process if path == "production" else fn.record_by_record
    for out in run(Batch(elements)):  # a stage takes a batch and yields a batch
        if isinstance(out, beam.pvalue.TaggedOutput):
            dead.append(out)
        else:
            good.extend(records_of(out))
    return good, [d.value for d in dead if d.tag == DEAD_LETTER_TAG]


def test_parse_fn_dead_letter_is_masked(policy, dl_context):
    fn = ParseFn(SPECS, "visited_at", policy, dl_context)
    line = b'{"event_id": "e9", "password": "hunter2", "business_email": "x@y.example", "ip": 5}'
    good, dead = _run_fn(fn, line)
    assert good == []
    (letter,) = dead
    assert letter["error"] == "malformed_field:ip"
    assert letter["stage"] == "parse" and letter["source"] == "visits"
    assert "hunter2" not in letter["raw"] and "x@y.example" not in letter["raw"]
    assert json.loads(letter["raw"])["event_id"] == "e9"
    assert letter["expires_at"] == 1_000


@pytest.mark.parametrize("path", PATHS)
def test_hostile_lines_end_as_dead_letters_with_their_reason(policy, dl_context, path):
    deep_array = b"[" * 100_000 + b"]" * 100_000
    deep_object = b'{"event_id": "d2", "x": ' + b'{"a":' * 1_000 + b"1" + b"}" * 1_000 + b"}"
    deep_field = b'{"event_id": "d3", "ip": ' + b"[" * 600 + b"]" * 600 + b', "visited_at": 1}'
    big = Withheld.of(b'{"event_id": "big", "url": "' + b"x" * 100 + b'"}')
    lines = [
        deep_array,
        deep_object,
        deep_field,
        big,
        ReadFailure("gs://b/v.avro", 12, "UnicodeDecodeError"),
        json.dumps({**GOOD, "event_id": "s1", "url": "a\ud800"}).encode(),
        b'{"event_id": "s2\\ud800", "ip": "8.8.8.8", "visited_at": 1}',
        b'{"event_id": "s3", "ip": "8.8.8.8", "visited_at": "\\udc00"}',
        json.dumps(GOOD).encode(),
    ]
    fn = ParseFn(SPECS, "visited_at", policy, dl_context)
    good, dead = _run_fn(fn, *lines, path=path)
    assert [r["event_id"] for r in good] == ["e1"]
    dead.sort(key=lambda d: (d["error"], d.get("event_id") or ""))
    assert [(d["error"], d.get("event_id")) for d in dead] == [
        ("line_too_large", "big"),
        ("malformed_text:event_id", None),
        ("malformed_text:url", "s1"),
        ("malformed_text:visited_at", "s3"),
        ("too_deep", None),
        ("too_deep", "d2"),
        ("too_deep", "d3"),
        ("unreadable_file:UnicodeDecodeError", None),
    ]
    assert dead[0]["raw"] is None and dead[0]["raw_sha256"] == big.sha256
    assert json.loads(dead[-1]["raw"]) == {
        "file": "gs://b/v.avro",
        "records_read": 12,
        "error": "UnicodeDecodeError",
    }
    for letter in dead:
        json.dumps(letter).encode("utf-8")  # every letter can be written


def test_parse_fn_accepts_avro_records(policy, dl_context):
    fn = ParseFn(SPECS, "visited_at", policy, dl_context, input_format="avro")
    avro = {**GOOD, "visited_at": datetime(2026, 10, 5, 15, 30, tzinfo=UTC), "url": None}
    good, dead = _run_fn(fn, avro)
    assert dead == [] and good[0]["visited_at"] == T
    assert avro["visited_at"] == datetime(2026, 10, 5, 15, 30, tzinfo=UTC)  # input untouched


def test_parse_composite(policy, dl_context):
    lines = [
        json.dumps(GOOD).encode(),
        json.dumps({**GOOD, "event_id": "e2", "user_sig": "SIGSIG"}).encode(),
        b'{"event_id": "e3", "ip": "8.8.8.8"}',
        b"not json",
    ]
    with TestPipeline(runner="FnApiRunner") as p:
        parse = Parse(SPECS, "visited_at", policy, dl_context, input_format="jsonl")
        good, dead = on_records(p | beam.Create(lines), parse)
        assert_that(
            good | "Ids" >> beam.Map(lambda r: (r["event_id"], r["visited_at"])),
            equal_to([("e1", T), ("e2", T)]),
            label="Good",
        )
        assert_that(
            dead
            | "AllLetters" >> beam.Flatten()
            | "Errors" >> beam.Map(lambda d: (d["error"], d.get("event_id"))),
            equal_to([("missing_field:visited_at", "e3"), ("invalid_json", None)]),
            label="Dead",
        )


@given(st.binary(max_size=200))
def test_any_bytes_parse_or_reject(line):
    try:
        obj = decode_json_line(line)
        validate_record(obj, SPECS, "visited_at")
    except RecordError:
        pass


@given(
    st.dictionaries(
        st.text(max_size=12),
        st.one_of(st.none(), st.integers(), st.text(max_size=12), st.booleans(), st.floats()),
        max_size=8,
    )
)
def test_any_object_validates_or_rejects(obj):
    try:
        record = validate_record({**GOOD, **obj}, SPECS, "visited_at")
    except RecordError:
        return
    assert set(record) == {s.name for s in SPECS}


def _reference_decoding(line: bytes) -> object:
    """The contract's reference: UTF-8, then the standard library's json."""
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError:
        return "invalid_encoding"
    if not text.strip():
        return "empty_line"
    try:
        obj = json.loads(text)
    except ValueError:
        return "invalid_json"
    return obj if isinstance(obj, dict) else "not_an_object"


_JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner),
    max_leaves=8,
)


@settings(max_examples=500)
@given(
    st.one_of(
        st.binary(max_size=120),
        st.dictionaries(st.text(max_size=6), _JSON_VALUES, max_size=5).map(
            lambda d: json.dumps(d).encode()
        ),
        _JSON_VALUES.map(lambda v: json.dumps(v).encode()),
    )
)
def test_decoding_is_the_standard_librarys(line):
    """orjson decodes the common case; whatever it accepts, json accepts identically, and what
    it refuses json decides: the fast path changes no outcome."""
    try:
        got: object = decode_json_line(line)
    except RecordError as err:
        got = err.error
    expected = _reference_decoding(line)
    assert repr(got) == repr(expected)


@given(
    st.one_of(
        st.ip_addresses().map(str),
        st.ip_addresses(v=4).map(lambda a: ".".join(f"{int(p):03d}" for p in str(a).split("."))),
        st.text(alphabet="0123456789.: abcdef", max_size=20),
    )
)
def test_canonical_ip_is_ipaddress(value):
    """What ``ipaddress`` prints, an IPv4-mapped address with its IPv4 part dotted."""
    try:
        address = ipaddress.ip_address(value.strip())
    except ValueError:
        with pytest.raises(ValueError):
            canonical_ip(value)
        return
    mapped = getattr(address, "ipv4_mapped", None)
    expected = f"::ffff:{mapped}" if mapped is not None else str(address)
    assert canonical_ip(value) == expected
    assert ipaddress.ip_address(canonical_ip(value)) == address  # the same address


@pytest.mark.parametrize(
    "written",
    ["::ffff:194.25.2.129", "::FFFF:C219:281", "0:0:0:0:0:ffff:c219:0281", " ::ffff:194.25.2.129"],
)
def test_an_ipv4_mapped_address_is_stored_dotted(written):
    """RFC 5952 section 5, and what Python 3.13 prints: never 3.11's ``::ffff:c219:281``."""
    assert canonical_ip(written) == "::ffff:194.25.2.129"


_FIELD_VALUES = st.one_of(
    st.none(),
    st.just(""),
    st.text(max_size=6),
    st.integers(),
    st.booleans(),
    st.floats(allow_nan=False),
    st.sampled_from(
        [
            "1.2.3.4",
            "::1",
            "::FFFF:1.2.3.4",
            "2026-11-29T10:00:00Z",
            "2026-11-29 10:00:00+05:30",
            "enter_room",
            "quality",
            1790000000000,
            0,
            -(2**70),
            # A Parquet timestamp or an Avro logical type: aware, naive (UTC), year 1 east of UTC.
            datetime(2026, 11, 29, 10, 0, 0, 5, tzinfo=UTC),
            datetime(2026, 11, 29, 10, 0),
            datetime(1, 1, 1, tzinfo=timezone(timedelta(hours=5))),
        ]
    ),
    st.lists(st.integers(), max_size=2),
)
_SCHEMAS = {
    "visit_input": "visited_at",
    "sdk_log_input": "logged_at",
    "telemetry_input": "reported_at",
}


def _valid_value(spec, event_time):
    """Values of the kind a field declares, its edge cases included."""
    if spec.name == event_time:
        return (
            st.integers(-(10**14), 10**14)
            | st.just(2**70)
            | st.sampled_from(
                [
                    "2026-11-29T10:00:00Z",
                    "2026-11-29 10:00:00.5+05:30",
                    " 2026-11-29T10:00Z",
                    "x" * 16,
                ]
            )
            | st.datetimes(timezones=st.none() | st.just(UTC))
        )
    if spec.format == "ip":
        return st.sampled_from(["8.8.8.8", "::1", "::ffff:8.8.4.4", "01.2.3.4", "", " 1.2.3.4"])
    if spec.format == "identifier":
        return st.text(max_size=3) | st.integers() | st.just(-(2**70))
    if spec.symbols:
        return st.sampled_from([*spec.symbols, "", "other"])
    if "double" in spec.avro_types:
        return st.floats() | st.integers() | st.just(2**70 + 1)
    return st.text(min_size=1, max_size=4) | st.just("")


def _nearly_valid(specs, event_time):
    """Objects of valid-looking values, one field of which may be anything or absent."""
    clean = st.fixed_dictionaries({s.name: _valid_value(s, event_time) for s in specs})

    def perturb(obj, name, value, drop):
        obj = dict(obj)
        if drop:
            obj.pop(name, None)
        else:
            obj[name] = value
        return obj

    return clean | st.builds(
        perturb, clean, st.sampled_from([s.name for s in specs]), _FIELD_VALUES, st.booleans()
    )


@settings(max_examples=600)
@given(st.sampled_from(sorted(_SCHEMAS)), st.data())
def test_the_compiled_columns_are_the_reference(schema, data):
    """Batched parsing validates in columns: every row it keeps is the reference's record, and
    no row the reference rejects is kept (the others go to the reference)."""
    specs = input_fields(schema)
    plan = field_plan(specs, _SCHEMAS[schema])
    names = [s.name for s in specs]
    objs = data.draw(
        st.lists(
            st.dictionaries(st.sampled_from([*names, "undeclared"]), _FIELD_VALUES, max_size=14)
            | _nearly_valid(specs, _SCHEMAS[schema]),
            min_size=1,
            max_size=8,
        )
    )
    try:
        table, undecided = compile_columns(plan, record_schema(specs, _SCHEMAS[schema]))(objs)
    except COLUMN_ERRORS:
        return  # a value Arrow refuses: every row goes to the reference
    kept = [obj for i, obj in enumerate(objs) if i not in set(undecided)]
    assert table.num_rows == len(kept)
    for row, obj in zip(table.to_pylist(), kept, strict=True):
        assert repr(row) == repr(validate_planned(obj, plan))


_ODD_LINES = st.sampled_from(
    [
        b"",
        b"   ",
        b"[1]",
        b'{"event_id": "x"',
        b"\xff\xfe",
        b'\xef\xbb\xbf{"event_id": "bom"}',
        b'{"event_id": "big", "sdk_app_id": 123456789012345678901234567890}',
        b'{"event_id": "dup", "event_id": "dup2"}',
        b'{"event_id": "nan", "cpu_usage": NaN}',
        b'{"event_id": "s", "password": "hunter2", "video": "AAAA"}',
    ]
)


def _both_paths(fn, elements, counted) -> list:
    """Records, dead letters and counters of ``fn`` over ``elements``, by the reference and as
    production runs it (which also counts what it read)."""
    outcomes = []
    for run in (fn.record_by_record, fn.process):
        counted.clear()
        good, dead = [], []
        for out in run(Batch(elements)):
            if isinstance(out, AnyBatch):
                good.extend(repr(sorted(r.items())) for r in records_of(out))
            else:
                dead.append((out.value["error"], out.value.get("event_id"), out.value["raw"]))
        if run == fn.process:
            assert counted.pop("read", 0) == len(elements)
        outcomes.append((sorted(good), sorted(dead, key=repr), dict(counted)))
    return outcomes


@settings(max_examples=200, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.sampled_from(sorted(_SCHEMAS)), st.data())
def test_batched_parsing_is_record_parsing(policy, dl_context, counted, schema, data):
    """ParseFn in columns (what production runs) gives the records, dead letters and counters
    of ParseFn record by record (the reference), for any lines."""
    specs = input_fields(schema)
    nearly = _nearly_valid(specs, _SCHEMAS[schema])
    extra = st.builds(lambda o, k: {**o, k: "x"}, nearly, st.sampled_from(["password", "extra"]))
    objs = st.lists(nearly | extra, min_size=1, max_size=12)
    lines = [
        line if isinstance(line, bytes) else json.dumps(line, default=str).encode()
        for line in data.draw(st.lists(objs.flatmap(st.sampled_from) | _ODD_LINES, max_size=12))
    ]
    fn = ParseFn(specs, _SCHEMAS[schema], policy, dl_context)
    fn.setup()
    reference, production = _both_paths(fn, lines, counted)
    assert production == reference


# Values a record format's decoder may give that JSON never does (Avro bytes and logical types,
# Parquet decimals, dates, binary columns), and a reader's summary of a corrupt file.
_RECORD_ONLY_VALUES = st.sampled_from(
    [b"8.8.8.8", bytearray(b"x"), Decimal("1.5"), date(2026, 11, 29), ("a", 1)]
)


@settings(max_examples=200, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.sampled_from(sorted(_SCHEMAS)), st.sampled_from(["avro", "parquet"]), st.data())
def test_record_formats_parse_in_columns_as_record_by_record(
    policy, dl_context, counted, schema, input_format, data
):
    """Avro and Parquet records (dicts) take the columns too, with the same outcome as the
    reference, whatever values their decoders give."""
    specs = input_fields(schema)
    names = [s.name for s in specs]
    nearly = _nearly_valid(specs, _SCHEMAS[schema])
    odd = st.builds(
        lambda o, k, v: {**o, k: v}, nearly, st.sampled_from([*names, "extra"]), _RECORD_ONLY_VALUES
    )
    failure = st.just(ReadFailure("gs://b/x", 3, "OSError"))
    records = data.draw(st.lists(nearly | odd | failure, min_size=1, max_size=12))
    fn = ParseFn(specs, _SCHEMAS[schema], policy, dl_context, input_format=input_format)
    fn.setup()
    reference, production = _both_paths(fn, records, counted)
    assert production == reference


@pytest.mark.parametrize("path", PATHS)
def test_free_text_is_scanned_before_it_is_stored(policy, dl_context, counted, path):
    visits = [
        {
            **GOOD,
            "event_id": "f1",
            "url": "https://x.example/contact?email=hans.mueller@firma.de&utm_source=mail",
            "user_agent": "Mozilla/5.0 (contact: ops@bot.example)",
            "session_id": "hans.mueller@firma.de",
            "business_email": "kept@whole.example",  # contact field: the region gate's
        },
        {**GOOD, "event_id": "f2", "url": "https://x.example/pricing?plan=team&ref=42"},
    ]
    fn = ParseFn(SPECS, "visited_at", policy, dl_context)
    good, dead = _run_fn(fn, *(json.dumps(v).encode() for v in visits), path=path)
    assert dead == []
    first, second = sorted(good, key=lambda r: r["event_id"])
    assert "hans" not in first["url"] and "[redacted:email]" in first["url"]
    assert first["url"].endswith("&utm_source=mail")
    assert first["user_agent"] == "Mozilla/5.0 (contact: [redacted:email])"
    assert first["session_id"] == "[redacted:email]"
    assert first["business_email"] == "kept@whole.example"
    assert second["url"] == visits[1]["url"]  # clean text is left as it is
    assert counted["redacted.email"] == 3


@pytest.mark.parametrize("path", PATHS)
def test_secrets_in_log_messages_are_redacted(policy, dl_context, counted, path):
    specs = input_fields("sdk_log_input")
    base = {"logged_at": "2026-10-05T23:30:00Z", "sdk_app_id": 1, "uin": 2, "user_id": "u"}
    messages = [
        "login failed password=S3cr3t!",
        "Authorization: Bearer abc.def-ghi",
        '{"password": "S3cr3t!"}',
        "userSig=eJyrVkrxS3cr3t",
        "enter room 1234 ok",
    ]
    lines = [
        json.dumps({**base, "event_id": f"m{i}", "message": m, "sdk_version": "token=S3cr3t!"})
        for i, m in enumerate(messages)
    ]
    fn = ParseFn(specs, "logged_at", policy, dl_context)
    good, dead = _run_fn(fn, *(line.encode() for line in lines), path=path)
    assert dead == []
    stored = json.dumps(good)
    assert "S3cr3t" not in stored and "abc.def-ghi" not in stored
    assert {r["message"] for r in good} >= {"enter room 1234 ok"}
    assert sum(v for k, v in counted.items() if k.startswith("redacted.")) >= 9


@pytest.mark.parametrize("path", PATHS)
def test_event_times_outside_the_run_bounds_are_dead_letters(policy, dl_context, path):
    run_time = T + 10 * 86_400_000_000
    bounds = TimeBounds(parse_event_time("2000-01-01T00:00:00Z"), run_time + 86_400_000_000)
    times = {
        "ok": "2026-10-05T23:30:00+08:00",
        "future": "9000-01-01T00:00:00Z",  # would expire in 9000
        "seconds": 1793049276,  # epoch seconds sent as milliseconds: January 1970
        "year1": "0001-01-01T00:00:00Z",
        "skewed": run_time // 1000 + 3_600_000,  # an hour ahead: within the skew
        "too_far": run_time // 1000 + 2 * 86_400_000,
    }
    lines = [
        json.dumps({**GOOD, "event_id": k, "visited_at": v}).encode() for k, v in times.items()
    ]
    fn = ParseFn(SPECS, "visited_at", policy, dl_context, bounds=bounds)
    good, dead = _run_fn(fn, *lines, path=path)
    assert sorted(r["event_id"] for r in good) == ["ok", "skewed"]
    assert sorted((d["error"], d["event_id"]) for d in dead) == [
        ("event_time_out_of_range", k) for k in sorted(["future", "seconds", "year1", "too_far"])
    ]


@pytest.mark.parametrize("path", PATHS)
def test_a_child_is_found_whatever_the_spelling_and_depth(policy, dl_context, path):
    specs = input_fields("sdk_log_input")
    base = {"logged_at": "2026-10-05T23:30:00Z", "sdk_app_id": 1}
    children = [
        {"end_user_age": 12},
        {"End_User_Age": 12},
        {"user": {"end_user_age": 12}},
        {"end_user_age": 12.0, "parental_consent": "true"},
    ]
    lines = [
        json.dumps({**base, "event_id": f"c{i}", **c}).encode() for i, c in enumerate(children)
    ]
    lines.append(b'{"event_id": "nan", "logged_at": 1, "sdk_app_id": 1, "end_user_age": NaN}')
    lines.append(json.dumps({**base, "event_id": "ok", "end_user_age": 17}).encode())
    fn = ParseFn(specs, "logged_at", policy, dl_context)
    good, dead = _run_fn(fn, *lines, path=path)
    assert [r["event_id"] for r in good] == ["ok"]
    assert sorted((d["error"], d["event_id"]) for d in dead) == [
        ("under_minimum_age", i) for i in sorted(["c0", "c1", "c2", "c3", "nan"])
    ]
    assert all(d["raw"] is None and "raw_sha256" not in d for d in dead)  # nothing kept


# ----------------------------------------------------------------- the columns and their fallback


def test_parse_emits_a_table_of_the_record_schema(policy, dl_context):
    lines = [
        b'{"event_id": "a", "ip": "8.8.8.8", "visited_at": 1790000000000, "url": "/x"}',
        b'{"event_id": "b", "ip": "::FFFF:8.8.8.8", "visited_at": "2026-09-21T14:13:20Z"}',
        b'{"event_id": "c", "ip": "8.8.8.8"}',
    ]
    fn = ParseFn(SPECS, "visited_at", policy, dl_context)
    fn.setup()
    out = list(fn.process(Batch(lines)))
    (table,) = [o for o in out if isinstance(o, TableBatch)]
    assert table.table.schema == record_schema(SPECS, "visited_at")
    reference = list(fn.record_by_record(Batch(lines)))
    assert records_of(table) == next(o for o in reference if isinstance(o, Batch))
    assert [o.value["error"] for o in out if not isinstance(o, AnyBatch)] == [
        "missing_field:visited_at"
    ]


def test_parse_keeps_a_list_when_a_value_does_not_fit_the_table(policy, dl_context):
    specs = (FieldSpec("event_id", True, ("string",)), FieldSpec("n", False, ("long",)))
    fn = ParseFn(specs, None, policy, dl_context)
    fn.setup()
    (out,) = fn.process(Batch([b'{"event_id": "a", "n": 1}']))
    assert isinstance(out, TableBatch)
    (out,) = fn.process(Batch([b'{"event_id": "a", "n": 123456789012345678901234567890}']))
    assert isinstance(out, Batch) and out == [
        {"event_id": "a", "n": 123456789012345678901234567890}
    ]


def _decoded_by(input_format: str, path) -> list:
    """The elements the reader hands Parse for a file of ``input_format``."""
    fmt = format_named(input_format)
    with path.open("rb") as fh:
        batches = list(fmt.read(fh, ByteRange(str(path), 0, None), 8192, 1 << 20))
    return [element for batch in batches for element in batch]


def _rows(good) -> list:
    return sorted(repr(sorted(r.items())) for r in good)


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_clean_input_never_falls_back_in_any_format(
    policy, dl_context, monkeypatch, tmp_path, name
):
    """The bundled sample's good lines, and the same records as Avro and as a Parquet export,
    are decided by the columns alone: strict mode turns any fallback into an error. Each gives
    the reference's rows."""
    schema, event_time = SAMPLES[name]
    specs = input_fields(schema)
    lines = clean_sample_lines(name, policy)
    assert len(lines) > 190  # all but the sample's few bad lines
    records = clean_sample_records(name, policy)
    elements = {
        "jsonl": lines,
        "avro": _decoded_by("avro", write_avro(records, tmp_path / "in.avro", name)),
        "parquet": _decoded_by(
            "parquet", write_parquet(as_exported(records, name), tmp_path / "in.parquet")
        ),
    }
    reference_fn = ParseFn(specs, event_time, policy, dl_context)
    expected, expected_dead = _run_fn(reference_fn, *lines, path="reference")
    assert expected_dead == [] and len(expected) == len(lines)
    monkeypatch.setenv(STRICT_COLUMNAR_ENV, "1")
    for input_format, batch in elements.items():
        fn = ParseFn(specs, event_time, policy, dl_context, input_format=input_format)
        good, dead = _run_fn(fn, *batch)  # raises ColumnarFallbackError on any fallback
        assert dead == [], input_format
        assert _rows(good) == _rows(expected), input_format


def test_a_bad_value_falls_back_counted_by_reason(policy, dl_context, monkeypatch):
    """A number where a string is declared: the columns leave that line (only it) to the
    reference, which makes its dead letter; the run's counters say so by reason. In strict mode
    the fallback is an error."""
    lines = [json.dumps({**GOOD, "event_id": f"g{i}"}).encode() for i in range(20)]
    lines.append(json.dumps({**GOOD, "event_id": "bad", "url": 42}).encode())
    lines.append(b"not json")
    pipeline = TestPipeline(runner="FnApiRunner")
    parse = Parse(SPECS, "visited_at", policy, dl_context, input_format="jsonl")
    good, dead = pipeline | beam.Create([Batch(lines)]) | parse
    assert_that(good | beam.Map(len), equal_to([20]), label="OneTableOfTheGoodLines")
    assert_that(
        dead | beam.Flatten() | beam.Map(lambda d: d["error"]),
        equal_to(["malformed_field:url", "invalid_json"]),
        label="Dead",
    )
    result = pipeline.run()
    result.wait_until_finish()
    counters = {
        c.key.metric.name: c.committed
        for c in result.metrics().query(MetricsFilter().with_namespace(NAMESPACE))["counters"]
        if c.key.metric.name.startswith(FALLBACK_PREFIX)
    }
    assert counters == {
        "columnar_fallback.parse.undecided_value": 1,
        "columnar_fallback.parse.refused_by_decoder": 1,
    }
    monkeypatch.setenv(STRICT_COLUMNAR_ENV, "1")
    fn = ParseFn(SPECS, "visited_at", policy, dl_context)
    with pytest.raises(ColumnarFallbackError, match="parse: 1 rows"):
        _run_fn(fn, *lines[:-1])


def test_an_error_the_columns_do_not_expect_surfaces(policy, dl_context):
    """Only what Arrow refuses sends a batch to the reference (COLUMN_ERRORS): anything else
    is a bug, and fails the batch instead of hiding in a fallback. No decoder of ours gives a
    lone surrogate, so Arrow's encoding error is such a bug."""
    fn = ParseFn(SPECS, "visited_at", policy, dl_context, input_format="avro")
    with pytest.raises(UnicodeEncodeError):
        _run_fn(fn, {**GOOD, "url": "a\ud800"})


def test_generated_columns_show_their_source_in_a_traceback():
    """The compiled validation registers its source with linecache: a traceback through it
    shows the generated line, not an empty one."""
    columns = compile_columns(field_plan(SPECS, "visited_at"), record_schema(SPECS, "visited_at"))
    with pytest.raises(AttributeError) as failure:
        columns([None])  # not an object: the generated code reads fields with o.get
    text = "".join(traceback.format_exception(failure.value))
    assert "<transforms.validation columns " in text
    assert "[o.get('ip') for o in objs]" in text


def test_a_field_plan_is_named():
    first = field_plan(SPECS, "visited_at")[2]
    assert (first.name, first.required, first.kind) == ("visited_at", True, FieldKind.TIME)
    assert first.spec.name == "visited_at"

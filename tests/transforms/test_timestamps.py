"""The three accepted timestamp forms, offsets, and everything that is rejected."""

from __future__ import annotations

import contextlib
from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from transforms.timestamps import (
    TimestampError,
    format_utc,
    iso_micros,
    parse_event_time,
    utc_date,
)
from transforms.validation import event_time_column

US = 1_000_000
T0 = int(datetime(2026, 10, 5, 15, 30, tzinfo=UTC).timestamp()) * US


@pytest.mark.parametrize(
    "value",
    [
        "2026-10-05T15:30:00Z",
        "2026-10-05T15:30:00z",
        "2026-10-05T15:30:00+00:00",
        "2026-10-05T23:30:00+08:00",
        "2026-10-05T10:30:00-05:00",
        "2026-10-05T21:00:00+05:30",
        "2026-10-05T15:30:00",  # naive = UTC
        "2026-10-05 15:30:00",
        "2026-10-05T15:30",
        " 2026-10-05T15:30:00Z ",
        "2026-10-05T15:30:00.000000Z",
        T0 // 1000,  # epoch milliseconds
        datetime(2026, 10, 5, 15, 30, tzinfo=UTC),
        datetime(2026, 10, 5, 15, 30),  # naive datetime from Avro = UTC
        datetime(2026, 10, 5, 23, 30, tzinfo=timezone(timedelta(hours=8))),
    ],
)
def test_accepted_forms_give_the_same_instant(value):
    assert parse_event_time(value) == T0


def test_sub_second_precision_is_kept():
    assert parse_event_time("2026-10-05T15:30:00.123456Z") == T0 + 123456
    assert parse_event_time(T0 // 1000 + 7) == T0 + 7000


def test_offset_moves_the_utc_date():
    # 23:30 at +08:00 is 15:30 UTC the same day; 01:30 at +08:00 is the previous UTC day.
    assert utc_date(parse_event_time("2026-10-05T23:30:00+08:00")) == "2026-10-05"
    assert utc_date(parse_event_time("2026-10-06T01:30:00+08:00")) == "2026-10-05"
    assert utc_date(parse_event_time("2026-10-05T23:30:00-08:00")) == "2026-10-06"


@pytest.mark.parametrize(
    "value",
    [
        "yesterday",
        "2026-10-05",  # a date is not an event time
        "20261005T153000Z",
        "1791169879000",  # digits in a string are not epoch milliseconds
        "2026-13-05T15:30:00Z",
        "2026-10-05T25:30:00Z",
        "2026-10-05T23:59:60Z",
        "",
        True,
        1.5e12,
        [],
        {"t": 1},
        10**16,  # beyond year 9999 in milliseconds
    ],
)
def test_rejected(value):
    with pytest.raises(TimestampError):
        parse_event_time(value)


def test_format_and_date_helpers():
    assert format_utc(T0 + 1) == "2026-10-05T15:30:00.000001Z"
    assert utc_date(0) == "1970-01-01"


@given(
    st.datetimes(
        min_value=datetime(1900, 1, 2), max_value=datetime(9998, 12, 30), timezones=st.timezones()
    )
)
def test_iso_round_trip_any_zone(moment):
    expected = (moment.astimezone(UTC) - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(
        microseconds=1
    )
    assert parse_event_time(moment.isoformat()) == expected


@given(st.integers(min_value=-(10**13), max_value=253402300799999))
def test_epoch_millis_round_trip(millis):
    assert parse_event_time(millis) == millis * 1000


@given(st.text(max_size=40))
def test_any_text_parses_or_raises_timestamp_error(text):
    with contextlib.suppress(TimestampError):
        parse_event_time(text)


def _reference(text):
    try:
        return parse_event_time(text)
    except TimestampError:
        return "rejected"


_DATE_TIMES = st.builds(
    lambda moment, sep, spec, pad, zulu: (
        pad
        + moment.isoformat(sep=sep, timespec=spec).replace("+00:00", "Z" if zulu else "+00:00")
        + pad
    ),
    st.datetimes(
        min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30), timezones=st.timezones()
    )
    | st.datetimes(min_value=datetime(1, 1, 1), max_value=datetime(9999, 12, 31)),
    st.sampled_from(["T", "t", " ", "_"]),
    st.sampled_from(["auto", "minutes", "seconds", "milliseconds", "microseconds"]),
    st.sampled_from(["", " ", "\t", "\u3000"]),
    st.booleans(),
)


@given(_DATE_TIMES | st.text(max_size=40))
def test_the_fast_iso_path_is_the_reference(text):
    """iso_micros (the parser's fast path) answers only what parse_event_time answers, and
    answers every well-formed date-time without surrounding whitespace."""
    fast = iso_micros(text)
    if fast is not None:
        assert fast == _reference(text)


_EVENT_TIMES = (
    _DATE_TIMES
    | st.sampled_from(
        [
            "0000-01-01T00:00:00Z",
            "0001-01-01T00:00:00+01:00",
            "0001-01-01T00:00:00-01:00",
            "9999-12-31T23:59:59-01:00",
            "9999-12-31T23:59:59.999999",
            "2026-10-09T18:33:41+24:00",
            "2026-10-09T18:33:41-23:59",
            "2026-02-29T00:00:00Z",
            "2024-02-29 00:00Z",
            "2026-10-09t18:33:41Z",
        ]
    )
    | st.builds(
        "{:04d}-{:02d}-{:02d}T{:02d}:{:02d}:{:02d}{}".format,
        st.integers(0, 9999),
        st.integers(0, 13),
        st.integers(0, 32),
        st.integers(0, 25),
        st.integers(0, 61),
        st.integers(0, 61),
        st.sampled_from(["", "Z", "z", ".5", ".1234567Z", "+23:59", "-24:00", "+05:30", "+0530"]),
    )
    | st.integers(-(2**64), 2**64)
    | st.integers(-62_135_596_800_001, -62_135_596_799_999)
    | st.none()
    | st.booleans()
    | st.floats()
    | st.text(max_size=30)
)


@settings(max_examples=300)
@given(st.lists(_EVENT_TIMES, max_size=12), st.booleans())
def test_the_event_time_column_is_the_reference(values, required):
    """Batched parsing reads event times with Arrow kernels: every value it decides is what
    parse_event_time says, and it never decides one that parse_event_time refuses."""
    micros, undecided = event_time_column(values, required)
    for i, (value, got) in enumerate(zip(values, micros.to_pylist(), strict=True)):
        if i in undecided:
            continue
        if value is None and not required:
            assert got is None
        else:
            assert got == _reference(value) != "rejected"

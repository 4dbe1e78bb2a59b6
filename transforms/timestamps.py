"""Event-time parsing: the three accepted forms of the data contract, to UTC epoch microseconds.

Accepted (the data contract, ``docs/design.md``):
- ISO-8601 with an offset or ``Z`` (``2025-03-01T23:30:00+08:00``, ``2025-03-01T15:30:00Z``);
- naive ISO-8601, taken as UTC (``2025-03-01T15:30:00``, also with a space instead of ``T``);
- epoch milliseconds as an integer (JSON number, or Avro ``long``).
A ``datetime`` (what fastavro returns for a ``timestamp-millis``/``-micros`` logical type) is
accepted too. Anything else raises :class:`TimestampError`: strings of digits are *not* epoch
values (``"20250301"`` is ambiguous), floats are not accepted (precision), booleans are not ints.

Why integers: records travel through Beam as dicts of primitives; an ``int`` encodes with Beam's
fast coders where a ``datetime`` would fall back to pickling, and microseconds are exactly what
Avro ``timestamp-micros`` and Parquet ``timestamp[us]`` store.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

__all__ = [
    "MAX_EPOCH_MS",
    "MAX_MICROS",
    "MIN_EPOCH_MS",
    "TimeBounds",
    "TimestampError",
    "format_utc",
    "iso_micros",
    "parse_event_time",
    "utc_date",
]

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_NAIVE_EPOCH = datetime(1970, 1, 1)
_fromisoformat = datetime.fromisoformat
_ONE_US = timedelta(microseconds=1)
_MICROS_PER_DAY = 86_400_000_000
_EPOCH_ORDINAL = date(1970, 1, 1).toordinal()
# 0001-01-01 .. 9999-12-31, the range every reader of the outputs can represent.
MIN_EPOCH_MS = (datetime(1, 1, 1, tzinfo=UTC) - _EPOCH) // timedelta(milliseconds=1)
MAX_EPOCH_MS = (datetime(9999, 12, 31, 23, 59, 59, 999000, tzinfo=UTC) - _EPOCH) // timedelta(
    milliseconds=1
)
# The last instant any reader (and Python's datetime) can represent: no stored time, expiries
# included, may lie beyond it (``expiry_out_of_range``).
MAX_MICROS = (datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC) - _EPOCH) // _ONE_US


class TimestampError(ValueError):
    """The value is not one of the accepted timestamp forms."""


def _from_datetime(value: datetime) -> int:
    """Epoch microseconds of ``value`` (naive = UTC), by integer arithmetic: ``timedelta //
    timedelta`` costs twice as much, and replacing the time zone of a naive value as much again."""
    delta = value - (_NAIVE_EPOCH if value.tzinfo is None else _EPOCH)
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def iso_micros(text: str) -> int | None:
    """The common case of :func:`parse_event_time` for a string, or None when it is not that
    case (then :func:`parse_event_time` decides, errors included).

    Why: the reference spends most of its time on checks that a well-formed date-time passes;
    this takes the string as it is when it has a time part and no surrounding whitespace. Same
    answers: a property test holds it to :func:`parse_event_time`."""
    if len(text) < 16 or text[10] not in "Tt " or text[0].isspace() or text[-1].isspace():
        return None
    try:
        return _from_datetime(_fromisoformat(text))
    except (ValueError, OverflowError):
        return None


def parse_event_time(value: object) -> int:
    """Parse an accepted timestamp to UTC epoch microseconds, or raise :class:`TimestampError`."""
    if isinstance(value, bool):
        raise TimestampError("a boolean is not a timestamp")
    if isinstance(value, int):
        if not MIN_EPOCH_MS <= value <= MAX_EPOCH_MS:
            raise TimestampError("epoch milliseconds out of range")
        return value * 1000
    if isinstance(value, datetime):
        return _from_datetime(value)
    if isinstance(value, str):
        text = value.strip()
        if text.endswith("z"):  # RFC 3339 allows a lower-case zone designator
            text = text[:-1] + "Z"
        # fromisoformat accepts a few non-ISO shapes (e.g. a bare date); require a time part.
        if len(text) < 16 or text[10] not in "Tt ":
            raise TimestampError("not an ISO-8601 date-time")
        try:
            parsed = datetime.fromisoformat(text)
        except ValueError:
            raise TimestampError("not an ISO-8601 date-time") from None
        try:
            return _from_datetime(parsed)
        except OverflowError:
            raise TimestampError("date-time out of range once converted to UTC") from None
    raise TimestampError(f"unsupported timestamp type {type(value).__name__}")


def format_utc(micros: int) -> str:
    """ISO-8601 UTC with a ``Z`` suffix (microseconds only when non-zero), for JSON outputs."""
    try:
        stamp = _EPOCH + micros * _ONE_US
    except OverflowError as err:
        raise ValueError(f"timestamp {micros} is outside the representable dates") from err
    return stamp.isoformat().replace("+00:00", "Z")


def utc_date(micros: int) -> str:
    """The UTC calendar date ``YYYY-MM-DD`` of an epoch-microsecond timestamp.

    Integer arithmetic (floor division by a day), so it is exact at midnight and before 1970.
    """
    try:
        return date.fromordinal(_EPOCH_ORDINAL + micros // _MICROS_PER_DAY).isoformat()
    except (ValueError, OverflowError) as err:
        raise ValueError(f"timestamp {micros} is outside the representable dates") from err


@dataclass(frozen=True)
class TimeBounds:
    """The event times a run accepts, ``[earliest, latest]`` in epoch microseconds.

    A producer controls its event times, and retention counts from them: a visit dated 9000 would
    be kept for millennia, one dated 1970 (epoch seconds read as milliseconds) would be expired
    before it is stored. So a time is accepted only between a floor (``--min_event_time``) and
    the run time plus the clock skew a producer may have (``--max_clock_skew``); anything else is
    ``event_time_out_of_range``, never guessed at. No stored expiry can then lie later than the
    run time plus the skew plus the retention."""

    earliest: int
    latest: int

    def __contains__(self, micros: object) -> bool:
        return isinstance(micros, int) and self.earliest <= micros <= self.latest

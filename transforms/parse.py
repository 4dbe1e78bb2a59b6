"""Parse + Validate: raw input (JSON Lines bytes or Avro records) to typed, allow-listed records.

The source's input Avro schema is the contract: its fields are the allow-list (anything else is
dropped here, before any other stage sees it: data minimisation), non-null fields are required,
and each value must have one of the declared types. The category's event-time field is parsed
from any of the accepted forms (``transforms.timestamps``) to UTC epoch microseconds, and fields
declared with ``"format": "ip"`` must hold an IP address (kept in canonical form).

Dead-letter reasons: ``invalid_encoding``, ``empty_line``, ``invalid_json``, ``not_an_object``,
``missing_field:<f>``, ``malformed_field:<f>``, ``malformed_timestamp:<f>``, and
``under_minimum_age`` (the DPSA's minimum-age condition, ``policy.minimum_age``): such a record is
not stored at all, so its dead letter keeps only the event id and the reason.
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import apache_beam as beam

from schemas.avro import FieldSpec
from schemas.policy import Policy
from transforms.counters import counter
from transforms.deadletter import DeadLetterContext, ParDoWithDeadLetters, RecordError
from transforms.timestamps import TimestampError, parse_event_time

__all__ = ["Parse", "ParseFn", "canonical_ip", "decode_json_line", "validate_record"]

UNDER_AGE_WITHHELD = "<withheld: the record declares an end user below the minimum age>"


def canonical_ip(value: str) -> str:
    """Canonical text of an IPv4/IPv6 address (``ValueError`` if it is not one)."""
    return str(ipaddress.ip_address(value.strip()))


def decode_json_line(line: bytes | str) -> dict[str, Any]:
    """One JSON Lines line to a JSON object, or :class:`RecordError`."""
    if isinstance(line, bytes):
        try:
            line = line.decode("utf-8")
        except UnicodeDecodeError:
            raise RecordError("invalid_encoding") from None
    if not line.strip():
        raise RecordError("empty_line")
    try:
        obj = json.loads(line)
    except ValueError:
        raise RecordError("invalid_json") from None
    if not isinstance(obj, dict):
        raise RecordError("not_an_object")
    return obj


def validate_record(
    obj: Mapping[str, Any], specs: Sequence[FieldSpec], event_time_field: str | None
) -> dict[str, Any]:
    """The allow-listed, typed record; raises :class:`RecordError` with the first problem found.

    Every declared field is present in the result (None when absent), in schema order.
    """
    record: dict[str, Any] = {}
    for spec in specs:
        value = obj.get(spec.name)
        if value is None or (spec.required and value == ""):
            if spec.required:
                raise RecordError("missing_field", spec.name)
            record[spec.name] = None
            continue
        if spec.name == event_time_field:
            try:
                record[spec.name] = parse_event_time(value)
            except TimestampError:
                raise RecordError("malformed_timestamp", spec.name) from None
            continue
        if not spec.accepts(value):
            raise RecordError("malformed_field", spec.name)
        if spec.format == "ip":
            try:
                value = canonical_ip(value)
            except ValueError:
                raise RecordError("malformed_field", spec.name) from None
        record[spec.name] = spec.coerce(value)
    return record


@beam.typehints.with_output_types(Any, dead_letter=Any)
class ParseFn(beam.DoFn):
    """Raw element (bytes line or Avro dict) -> validated record, or a dead letter."""

    def __init__(
        self,
        specs: Sequence[FieldSpec],
        event_time_field: str | None,
        policy: Policy,
        context: DeadLetterContext,
    ) -> None:
        self._specs = tuple(specs)
        self._event_time_field = event_time_field
        self._declared = frozenset(s.name for s in specs)
        self._secret = policy.is_secret_name
        self._media = policy.is_media_name
        self._minimum_age = policy.minimum_age
        self._context = context
        self._masker = None

    def setup(self) -> None:
        self._masker = self._context.masker()
        self._read = counter("read")
        self._undeclared = counter("parse.undeclared_fields_dropped")
        self._secrets = counter("parse.secret_fields_dropped")
        self._media_dropped = counter("parse.media_fields_dropped")
        self._under_age_count = counter("parse.under_minimum_age")

    def process(self, element: bytes | str | Mapping[str, Any]) -> Iterator[Any]:
        self._read.inc()
        obj: Mapping[str, Any] = {}
        try:
            obj = element if isinstance(element, Mapping) else decode_json_line(element)
            if self._minimum_age is not None and self._minimum_age.blocks(obj):
                # A child's record is not stored, not even as a dead letter: id and reason only.
                self._under_age_count.inc()
                yield self._reject("under_minimum_age", UNDER_AGE_WITHHELD, obj)
                return
            record = validate_record(obj, self._specs, self._event_time_field)
        except RecordError as rejected:
            yield self._reject(rejected.error, element, obj)
            return
        self._count_dropped(obj)
        yield record

    def _reject(self, error: str, raw: Any, obj: Mapping[str, Any]) -> beam.pvalue.TaggedOutput:
        return self._context.rejected(
            stage="parse", error=error, raw=raw, masker=self._masker, event_id=obj.get("event_id")
        )

    def _count_dropped(self, obj: Mapping[str, Any]) -> None:
        for key in obj.keys() - self._declared:
            self._undeclared.inc()
            if self._secret(key):
                self._secrets.inc()
            elif self._media(key):
                self._media_dropped.inc()


class Parse(beam.PTransform):
    """Parse and validate raw elements; yields ``(records, dead_letters)``."""

    def __init__(
        self,
        specs: Sequence[FieldSpec],
        event_time_field: str | None,
        policy: Policy,
        context: DeadLetterContext,
    ) -> None:
        super().__init__()
        self._fn = ParseFn(specs, event_time_field, policy, context)
        self._context = context

    def expand(self, raw):
        return raw | "Validate" >> ParDoWithDeadLetters(self._fn, "parse", self._context)

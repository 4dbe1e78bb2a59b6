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

Batched (``Parse(batched=True)``), the records of a batch leave as one Arrow table
(``transforms.batches.TableBatch``) whose columns are :func:`record_schema`: the later stages
then work column-wise. A schema with a field of several types has no such table, and a batch
whose values do not fit it (an integer beyond 64 bits) leaves as a list of records.
"""

from __future__ import annotations

import ipaddress
import json
import socket
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from typing import Any

import apache_beam as beam
import orjson
import pyarrow as pa

from schemas.avro import FieldSpec
from schemas.policy import Policy
from transforms.batches import ApplyStage, Batch, RecordStage, TableBatch
from transforms.deadletter import DeadLetterContext, RecordError
from transforms.timestamps import (
    MAX_EPOCH_MS,
    MIN_EPOCH_MS,
    TimestampError,
    iso_micros,
    parse_event_time,
)

__all__ = [
    "FieldPlan",
    "Parse",
    "ParseFn",
    "canonical_ip",
    "compile_validator",
    "decode_json_line",
    "field_plan",
    "field_value",
    "record_schema",
    "validate_planned",
    "validate_record",
]

UNDER_AGE_WITHHELD = "<withheld: the record declares an end user below the minimum age>"


# Canonical text of addresses seen, keyed by themselves (the compiled validator reads it
# inline). Bounded: cleared when full, cheaper than an LRU's bookkeeping on every hit.
_CANONICAL_IPS: dict[str, str] = {}
_CANONICAL_IPS_MAX = 131072


def canonical_ip(value: str) -> str:
    """Canonical text of an IPv4/IPv6 address (``ValueError`` if it is not one).

    Cached per process (only canonical forms, keyed by what was read): visitors' addresses repeat
    (1M visits ~ 100k addresses) and ``ipaddress`` parsing costs more than the rest of the
    record's validation. An IPv4 address already in canonical form (what socket's C conversion
    gives back unchanged) is returned as it is, without ``ipaddress``: that is the answer
    ``ipaddress`` would give."""
    known = _CANONICAL_IPS.get(value)
    if known is not None:
        return known
    canonical = _canonical_ip(value)
    if len(_CANONICAL_IPS) >= _CANONICAL_IPS_MAX:
        _CANONICAL_IPS.clear()
    _CANONICAL_IPS[value] = canonical
    return canonical


def _canonical_ip(value: str) -> str:
    try:
        if socket.inet_ntop(socket.AF_INET, socket.inet_pton(socket.AF_INET, value)) == value:
            return value
    except OSError:
        pass
    return str(ipaddress.ip_address(value.strip()))


# orjson reads an integer beyond 64 bits as a float (json keeps the exact integer): a float of at
# least this magnitude may be one.
_BEYOND_INT64 = 2.0**63


def decode_json_line(line: bytes | str) -> dict[str, Any]:
    """One JSON Lines line to a JSON object, or :class:`RecordError`.

    orjson decodes the common case in one C call; json (the contract's reference) decides
    everything orjson refuses, and re-reads a line where orjson may have read an integer as a
    float, so that the result is always json's."""
    try:
        obj = orjson.loads(line)
    except orjson.JSONDecodeError:
        obj = _decode_slowly(line)
    if not isinstance(obj, dict):
        raise RecordError("not_an_object")
    if _may_hold_a_long_integer(obj.values()):
        return _decode_slowly(line)  # an object again: orjson read one
    return obj


_FLOAT_OR_CONTAINER = frozenset({float, list, dict})


def _may_hold_a_long_integer(values: Collection[Any]) -> bool:
    if _FLOAT_OR_CONTAINER.isdisjoint(map(type, values)):
        return False  # the common case, decided in C
    for value in values:
        kind = value.__class__
        if kind is float:
            if not -_BEYOND_INT64 < value < _BEYOND_INT64:
                return True
        elif kind is list:
            if _may_hold_a_long_integer(value):
                return True
        elif kind is dict and _may_hold_a_long_integer(value.values()):
            return True
    return False


def _decode_slowly(line: bytes | str) -> Any:
    """What orjson refused: say why, or decode it with json, which is laxer (NaN, lone
    surrogates, integers beyond 64 bits) and is the contract's reference."""
    if isinstance(line, bytes):
        try:
            line = line.decode("utf-8")
        except UnicodeDecodeError:
            raise RecordError("invalid_encoding") from None
    if not line.strip():
        raise RecordError("empty_line")
    try:
        return json.loads(line)
    except ValueError:
        raise RecordError("invalid_json") from None


# How validate_record treats a field (see FieldPlan).
_OTHER, _STRING, _IDENTIFIER, _TIME = range(4)

# (name, required, kind, spec): the checks of one field, unpacked once per schema rather than
# looked up on the FieldSpec for every field of every record (that lookup cost as much as the
# checks themselves).
FieldPlan = tuple[str, bool, int, FieldSpec]


def field_plan(specs: Sequence[FieldSpec], event_time_field: str | None) -> tuple[FieldPlan, ...]:
    """The validation plan of a schema (what :func:`validate_planned` takes)."""

    def kind(spec: FieldSpec) -> int:
        if spec.name == event_time_field:
            return _TIME
        if spec.plain_string:
            return _STRING
        return _IDENTIFIER if spec.identifier else _OTHER

    return tuple((spec.name, spec.required, kind(spec), spec) for spec in specs)


def validate_record(
    obj: Mapping[str, Any], specs: Sequence[FieldSpec], event_time_field: str | None
) -> dict[str, Any]:
    """The allow-listed, typed record; raises :class:`RecordError` with the first problem found.

    Every declared field is present in the result (None when absent), in schema order.
    """
    return validate_planned(obj, field_plan(specs, event_time_field))


def validate_planned(obj: Mapping[str, Any], plan: Sequence[FieldPlan]) -> dict[str, Any]:
    """:func:`validate_record` with the schema's plan computed beforehand: the reference that
    :func:`compile_validator`'s fast version is held to."""
    return {field[0]: field_value(field, obj.get(field[0])) for field in plan}


def field_value(field: FieldPlan, value: Any) -> Any:
    """The checked, converted value of one field, or :class:`RecordError`."""
    name, required, kind, spec = field
    if value is None or (required and value == ""):
        if required:
            raise RecordError("missing_field", name)
        return None
    if kind == _TIME:
        try:
            return parse_event_time(value)
        except TimestampError:
            raise RecordError("malformed_timestamp", name) from None
    if kind == _STRING and value.__class__ is str:
        return value
    if kind == _IDENTIFIER and (value.__class__ is str or value.__class__ is int):
        return value if value.__class__ is str else str(value)  # = coerce()
    if not spec.accepts(value):
        raise RecordError("malformed_field", name)
    if spec.format == "ip":
        try:
            return canonical_ip(value)
        except ValueError:
            raise RecordError("malformed_field", name) from None
    return spec.coerce(value)


def compile_validator(plan: Sequence[FieldPlan]) -> Callable[[Mapping[str, Any]], dict[str, Any]]:
    """:func:`validate_planned` for one schema as straight-line code, built once per worker.

    Why: validation is the largest cost of parsing, and most of it was the loop itself (one
    iteration per field of every record) and calls for values that need no check. The generated
    function reads each field and keeps the common values inline: an absent optional field, a
    non-empty string where a string is declared, an int identifier turned to text, an IP address
    already seen in canonical form (the process cache of :func:`canonical_ip`), an event time in
    epoch milliseconds within range or a well-formed ISO-8601 string (``iso_micros``).
    Everything else goes to :func:`field_value`, the code the reference uses; a property test
    holds the two to the same results and errors.
    """
    namespace: dict[str, Any] = {
        "slow": field_value,
        "known_ip": _CANONICAL_IPS,
        "MIN_MS": MIN_EPOCH_MS,
        "MAX_MS": MAX_EPOCH_MS,
        "iso": iso_micros,
    }
    lines = ["def validate(obj):", "    get = obj.get"]
    for i, field in enumerate(plan):
        name, required, kind, spec = field
        namespace[f"p{i}"] = field
        fast = "v.__class__ is str" + (" and v" if required else "")
        absent = "" if required else "None if v is None else "
        lines.append(f"    v = get({name!r})")
        if kind == _STRING:
            value = f"v if {fast} else slow(p{i}, v)"
        elif kind == _IDENTIFIER:
            value = f"v if {fast} else str(v) if v.__class__ is int else slow(p{i}, v)"
        elif kind == _TIME:
            value = (
                f"v * 1000 if v.__class__ is int and MIN_MS <= v <= MAX_MS"
                f" else (v.__class__ is str and iso(v)) or slow(p{i}, v)"
            )
        elif spec.format == "ip":
            value = f"(v.__class__ is str and known_ip.get(v)) or slow(p{i}, v)"
        else:
            value = f"slow(p{i}, v)"
        lines.append(f"    f{i} = {absent}{value}")
    lines.append("    return {" + ", ".join(f"{f[0]!r}: f{i}" for i, f in enumerate(plan)) + "}")
    # Only repr() of the schema's field names reaches the code: no value is ever evaluated.
    exec("\n".join(lines), namespace)
    return namespace["validate"]


_ARROW_TYPES = {
    "string": pa.string(),
    "enum": pa.string(),
    "long": pa.int64(),
    "int": pa.int64(),
    "double": pa.float64(),
    "float": pa.float64(),
    "boolean": pa.bool_(),
    "bytes": pa.binary(),
}


def record_schema(specs: Sequence[FieldSpec], event_time_field: str | None) -> pa.Schema | None:
    """The Arrow schema of validated records (what :func:`validate_record` gives, as columns),
    or None when a field may hold values of more than one type.

    The event time is epoch microseconds (``int64``, as in the records); identifiers and IP
    addresses are text."""
    fields = []
    for spec in specs:
        if spec.name == event_time_field:
            type_ = pa.int64()
        elif spec.format in ("identifier", "ip"):
            type_ = pa.string()
        else:
            types = {_ARROW_TYPES.get(t) for t in spec.avro_types}
            if len(types) != 1 or None in types:
                return None
            (type_,) = types
        fields.append(pa.field(spec.name, type_))
    return pa.schema(fields)


class ParseFn(RecordStage):
    """Raw element (bytes line or Avro dict) -> validated record, or a dead letter."""

    stage = "parse"

    def __init__(
        self,
        specs: Sequence[FieldSpec],
        event_time_field: str | None,
        policy: Policy,
        context: DeadLetterContext,
        *,
        columnar: bool = False,
    ) -> None:
        super().__init__(context)
        self._schema = record_schema(specs, event_time_field) if columnar else None
        self._struct = pa.struct(list(self._schema)) if self._schema is not None else None
        self._plan = field_plan(specs, event_time_field)
        self._validate: Callable[[Mapping[str, Any]], dict[str, Any]] | None = None
        self._declared = frozenset(s.name for s in specs)
        self._secret = policy.is_secret_name
        self._media = policy.is_media_name
        self._minimum_age = policy.minimum_age

    def setup(self) -> None:
        super().setup()
        self._validate = compile_validator(self._plan)

    def process(self, batch: Batch) -> Iterator[Any]:
        self.tally.add("read", len(batch))
        return super().process(batch)

    def process_records(self, batch: Batch) -> Iterator[Any]:
        for out in super().process_records(batch):
            yield self._columns(out) if self._struct is not None and out.__class__ is Batch else out

    def _columns(self, records: Batch) -> Batch | TableBatch:
        """The records as a table of :func:`record_schema`, or as they are if a value does not
        fit it."""
        try:
            arrays = pa.array(records, type=self._struct).flatten()
        except (pa.ArrowException, OverflowError, TypeError, ValueError):
            return records
        return TableBatch(pa.Table.from_arrays(arrays, schema=self._schema))

    def one(self, element: bytes | str | Mapping[str, Any]) -> dict[str, Any]:
        # A JSON line is bytes; the ABC check of Mapping is for Avro records (and text lines).
        if element.__class__ is bytes or not isinstance(element, Mapping):
            obj = decode_json_line(element)
        else:
            obj = element
        if self._minimum_age is not None and self._minimum_age.blocks(obj):
            # A child's record is not stored, not even as a dead letter: id and reason only.
            self.tally.add("parse.under_minimum_age")
            raise RecordError(
                "under_minimum_age", raw=UNDER_AGE_WITHHELD, event_id=obj.get("event_id")
            )
        try:
            record = self._validate(obj)
        except RecordError as rejected:
            rejected.event_id = obj.get("event_id")
            raise
        if not self._declared.issuperset(obj):
            self._count_dropped(obj.keys() - self._declared)
        return record

    def _count_dropped(self, undeclared: set[str]) -> None:
        tally = self.tally
        tally.add("parse.undeclared_fields_dropped", len(undeclared))
        for key in undeclared:
            if self._secret(key):
                tally.add("parse.secret_fields_dropped")
            elif self._media(key):
                tally.add("parse.media_fields_dropped")


class Parse(beam.PTransform):
    """Parse and validate raw elements; yields ``(records, dead_letters)``.

    ``batched``: the input is batches of raw elements and the output batches of records
    (``transforms.batches``: tables where the schema allows, see the module docstring);
    otherwise single elements in and out.
    """

    def __init__(
        self,
        specs: Sequence[FieldSpec],
        event_time_field: str | None,
        policy: Policy,
        context: DeadLetterContext,
        *,
        batched: bool = False,
    ) -> None:
        super().__init__()
        self._fn = ParseFn(specs, event_time_field, policy, context, columnar=batched)
        self._batched = batched

    def expand(self, raw):
        return raw | "Validate" >> ApplyStage(self._fn, batched=self._batched)

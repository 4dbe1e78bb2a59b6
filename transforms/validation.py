"""Validation: a decoded record against its source's input schema, in two implementations.

The schema is the contract (``transforms.parse`` says what it means: allow-list, requiredness,
types, the event time, IP addresses in canonical form).

- The reference, record by record: :func:`field_value` for one field, :func:`validate_record`
  (:func:`validate_planned` with the schema's :func:`field_plan`) for a record. Parse uses it for
  every row the columns leave, and it gives their dead letters.
- :func:`compile_columns`, what production runs: a batch of decoded objects to Arrow columns of
  :func:`record_schema`, common values decided inline (event times by Arrow kernels,
  :func:`event_time_column`), compiled per schema; a row it cannot decide is left to the
  reference. A property test holds every row it keeps to the reference's record.

The compiled code's source is registered with ``linecache`` under a name of its own, so that a
traceback through it shows its lines.
"""

from __future__ import annotations

import enum
import hashlib
import ipaddress
import linecache
import socket
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from typing import Any, NamedTuple

import pyarrow as pa
import pyarrow.compute as pc

from schemas.avro import FieldSpec
from transforms.memo import BoundedMemo
from transforms.rawinput import RecordError
from transforms.timestamps import (
    MAX_EPOCH_MS,
    MIN_EPOCH_MS,
    TimestampError,
    parse_event_time,
)

__all__ = [
    "FieldKind",
    "FieldPlan",
    "canonical_ip",
    "compile_columns",
    "event_time_column",
    "field_plan",
    "field_value",
    "record_schema",
    "validate_planned",
    "validate_record",
]


def _canonical_ip(value: str) -> str:
    try:
        if socket.inet_ntop(socket.AF_INET, socket.inet_pton(socket.AF_INET, value)) == value:
            return value
    except OSError:
        pass
    address = ipaddress.ip_address(value.strip())
    mapped = address.ipv4_mapped if isinstance(address, ipaddress.IPv6Address) else None
    if mapped is not None and address.scope_id is None:
        # RFC 5952 section 5: an IPv4-mapped address is written with its IPv4 part dotted
        # (::ffff:194.25.2.129), as Python 3.13 prints it; Python 3.11 prints ::ffff:c219:281.
        return f"::ffff:{mapped}"
    return str(address)


# Canonical text of the addresses seen, keyed by what was read (the compiled validator reads
# it inline with ``get``).
_CANONICAL_IPS = BoundedMemo(_canonical_ip, 131072)


def canonical_ip(value: str) -> str:
    """Canonical text of an IPv4/IPv6 address (``ValueError`` if it is not one): what
    ``ipaddress`` prints, except that an IPv4-mapped IPv6 address keeps its IPv4 part in dotted
    form (``::FFFF:c219:281`` and ``::ffff:194.25.2.129`` are both ``::ffff:194.25.2.129``).

    Cached per process (only canonical forms, keyed by what was read): visitors' addresses repeat
    (1M visits ~ 100k addresses) and ``ipaddress`` parsing costs more than the rest of the
    record's validation. An IPv4 address already in canonical form (what socket's C conversion
    gives back unchanged) is returned as it is, without ``ipaddress``: that is the answer
    ``ipaddress`` would give."""
    return _CANONICAL_IPS[value]


class FieldKind(enum.Enum):
    """How a field is validated: the event time, a plain string, an identifier (string or
    integer, kept as text), or by its spec (IP addresses, enums, numbers, flags...)."""

    TIME = "time"
    STRING = "string"
    IDENTIFIER = "identifier"
    OTHER = "other"


_TIME, _STRING, _IDENTIFIER = FieldKind.TIME, FieldKind.STRING, FieldKind.IDENTIFIER


class FieldPlan(NamedTuple):
    """The checks of one field, unpacked once per schema rather than looked up on the
    FieldSpec for every field of every record (that lookup cost as much as the checks)."""

    name: str
    required: bool
    kind: FieldKind
    spec: FieldSpec


def field_plan(specs: Sequence[FieldSpec], event_time_field: str | None) -> tuple[FieldPlan, ...]:
    """The validation plan of a schema (what :func:`validate_planned` takes)."""

    def kind(spec: FieldSpec) -> FieldKind:
        if spec.name == event_time_field:
            return FieldKind.TIME
        if spec.plain_string:
            return FieldKind.STRING
        return FieldKind.IDENTIFIER if spec.identifier else FieldKind.OTHER

    return tuple(FieldPlan(spec.name, spec.required, kind(spec), spec) for spec in specs)


def validate_record(
    obj: Mapping[str, Any], specs: Sequence[FieldSpec], event_time_field: str | None
) -> dict[str, Any]:
    """The allow-listed, typed record; raises :class:`RecordError` with the first problem found.

    Every declared field is present in the result (None when absent), in schema order.
    """
    return validate_planned(obj, field_plan(specs, event_time_field))


def validate_planned(obj: Mapping[str, Any], plan: Sequence[FieldPlan]) -> dict[str, Any]:
    """:func:`validate_record` with the schema's plan computed beforehand: the reference that
    :func:`compile_columns` is held to, and what Parse validates the rows it leaves with."""
    return {field.name: field_value(field, obj.get(field.name)) for field in plan}


def field_value(field: FieldPlan, value: Any) -> Any:
    """The checked, converted value of one field, or :class:`RecordError`."""
    name, required, kind, spec = field
    if value is None or (required and value == ""):
        if required:
            raise RecordError("missing_field", name)
        return None
    if kind is _TIME:
        try:
            return parse_event_time(value)
        except TimestampError:
            raise RecordError("malformed_timestamp", name) from None
    if kind is _STRING and value.__class__ is str:
        return value
    if kind is _IDENTIFIER and (value.__class__ is str or value.__class__ is int):
        return value if value.__class__ is str else str(value)  # = coerce()
    if not spec.accepts(value):
        raise RecordError("malformed_field", name)
    if spec.format == "ip":
        try:
            return canonical_ip(value)
        except ValueError:
            raise RecordError("malformed_field", name) from None
    return spec.coerce(value)


def _inline(i: int, field: FieldPlan, fallback: str) -> str:
    """The expression of field ``i``'s value ``v`` where the common cases decide it, else
    ``fallback`` (an expression too). What :func:`field_value` gives for those cases. Not for
    the event time: :func:`event_time_column` decides a whole column of those."""
    required, kind, spec = field.required, field.kind, field.spec
    fast = "v.__class__ is str" + (" and v" if required else "")
    absent = "" if required else "None if v is None else "
    types = set(spec.avro_types)
    if kind is _STRING:
        value = f"v if {fast} else {fallback}"
    elif kind is _IDENTIFIER:
        value = f"v if {fast} else str(v) if v.__class__ is int else {fallback}"
    elif spec.format == "ip":
        value = f"(v.__class__ is str and known_ip.get(v)) or {fallback}"
    elif spec.format is None and types == {"enum"}:
        value = f"v if v.__class__ is str and v in p{i}.spec.symbols else {fallback}"
    elif spec.format is None and types and types <= {"double", "float"}:
        value = f"v if v.__class__ is float else float(v) if v.__class__ is int else {fallback}"
    elif spec.format is None and types and types <= {"long", "int"}:
        value = f"v if v.__class__ is int else {fallback}"
    elif spec.format is None and types == {"boolean"}:
        value = f"v if v.__class__ is bool else {fallback}"
    else:
        value = fallback
    return absent + value


# What a column of compile_columns holds for a value its inline cases cannot decide.
UNDECIDED = object()

# ISO-8601 date-times that Arrow's cast and datetime.fromisoformat both read, to the same
# instant (a property test holds them together): extended format, a "T" or space, minutes or
# seconds with 1-6 fraction digits, "Z" or an offset of less than a day; or no zone (UTC).
_ISO_WITH_ZONE = (
    r"^\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}(:\d{2}(\.\d{1,6})?)?(Z|[+-]([01]\d|2[0-3]):[0-5]\d)$"
)
_ISO_NAIVE = r"^\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}(:\d{2}(\.\d{1,6})?)?$"
_MIN_MICROS = MIN_EPOCH_MS * 1000
_MAX_MICROS = MAX_EPOCH_MS * 1000 + 999  # 9999-12-31T23:59:59.999999Z
_NO_TEXT = pa.scalar(None, pa.string())


def _iso_micros_column(text: pa.Array) -> pa.Array:
    """Epoch microseconds of the ISO-8601 strings Arrow and Python read alike, null elsewhere
    (and wherever the instant is outside years 1-9999, which Python refuses)."""
    micros = pc.coalesce(
        pc.if_else(pc.match_substring_regex(text, _ISO_WITH_ZONE), text, _NO_TEXT)
        .cast(pa.timestamp("us", "UTC"))
        .cast(pa.int64()),
        pc.if_else(pc.match_substring_regex(text, _ISO_NAIVE), text, _NO_TEXT)
        .cast(pa.timestamp("us"))
        .cast(pa.int64()),
    )
    in_range = pc.and_(pc.greater_equal(micros, _MIN_MICROS), pc.less_equal(micros, _MAX_MICROS))
    return pc.if_else(in_range, micros, pa.scalar(None, pa.int64()))


def event_time_column(values: list[Any], required: bool) -> tuple[pa.Array, list[int]]:
    """The event times of a batch as ``(int64 epoch microseconds, undecided positions)``: what
    :func:`~transforms.timestamps.parse_event_time` gives for epoch milliseconds and for
    well-formed ISO-8601 strings, computed by Arrow kernels, and for datetimes (a Parquet
    timestamp, an Avro logical type); a value these do not decide (a time zone spelled
    otherwise, a bad date, another type) is left to the reference."""
    text = pa.array([v if v.__class__ is str else None for v in values], pa.string())
    try:
        millis = pa.array([v if v.__class__ is int else None for v in values], pa.int64())
    except OverflowError:  # an integer beyond 64 bits: out of range anyway
        millis = pa.nulls(len(values), pa.int64())
    try:
        from_text = _iso_micros_column(text)
    except pa.ArrowInvalid:  # a date Arrow refuses (Feb 30...) fails the cast of them all
        from_text = pa.nulls(len(values), pa.int64())
    in_range = pc.and_(pc.greater_equal(millis, MIN_EPOCH_MS), pc.less_equal(millis, MAX_EPOCH_MS))
    micros = pc.coalesce(
        pc.if_else(in_range, pc.multiply(millis, 1000), pa.scalar(None, pa.int64())), from_text
    )
    undecided = pc.is_null(micros)
    if not required:  # an absent optional time is a null, decided
        present = pa.array([v is not None for v in values], pa.bool_())
        undecided = pc.and_(undecided, present)
    positions = pc.indices_nonzero(undecided).to_pylist()
    stamps = {i: parse_event_time(values[i]) for i in positions if values[i].__class__ is datetime}
    if not stamps:
        return micros, positions
    column = micros.to_pylist()
    for i, stamp in stamps.items():
        column[i] = stamp
    return pa.array(column, pa.int64()), [i for i in positions if i not in stamps]


def _known_or_undecided(value: Any) -> Any:
    """An IP address's canonical text (cached), or UNDECIDED: the reference will say why not."""
    try:
        return canonical_ip(value)
    except (AttributeError, TypeError, ValueError):
        return UNDECIDED


def _not_text(objs: list[dict[str, Any]], names: Sequence[str]) -> set[int]:
    """The positions of the objects where one of the fields ``names`` holds neither text nor
    None: what Arrow refuses in a string column. Those rows are left to the reference."""
    return {
        j
        for j, obj in enumerate(objs)
        if any(obj.get(name).__class__ not in _TEXT_OR_NONE for name in names)
    }


_TEXT_OR_NONE = (str, type(None))


def compile_columns(
    plan: Sequence[FieldPlan], schema: pa.Schema
) -> Callable[[list[dict[str, Any]]], tuple[pa.Table, list[int]]]:
    """Validation of a batch of decoded objects, column by column: ``objs -> (table, rows)``,
    the table of the rows every column decided (columns of ``schema``, :func:`record_schema`)
    and the positions of the other rows, for the reference to decide one by one.

    Plain string fields are read by Arrow at once (a struct array over the dicts: only a str or
    None converts; when a value of another type makes Arrow refuse the batch, the rows holding
    one go to the reference and the rest are read again), and a required one must not be ""
    (a row that is goes to the reference); every other field is a
    list comprehension of :func:`_inline`'s expression, with :data:`UNDECIDED` where the
    reference must look. Same answers as :func:`validate_planned` for the rows it keeps: a
    property test holds it to it.
    """
    namespace: dict[str, Any] = {
        "UNDECIDED": UNDECIDED,
        "known_ip": _CANONICAL_IPS,
        "ip_or_undecided": _known_or_undecided,
        "event_times": event_time_column,
        "not_text": _not_text,
        "pa": pa,
        "pc": pc,
        "schema": schema,
    }
    namespace.update({f"p{i}": field for i, field in enumerate(plan)})
    plain = [(i, f) for i, f in enumerate(plan) if f.kind is _STRING]
    others = [(i, f) for i, f in enumerate(plan) if f.kind is not _STRING]
    namespace["plain"] = pa.struct([schema.field(f.name) for _, f in plain])
    lines = ["def columns(objs):", "    bad = set()"]
    if plain:
        namespace["plain_names"] = tuple(f.name for _, f in plain)
        lines.append("    try:")
        lines.append("        plain_arrays = pa.array(objs, type=plain).flatten()")
        lines.append("    except (pa.ArrowTypeError, pa.ArrowInvalid):")
        lines.append("        odd = not_text(objs, plain_names)")
        lines.append("        bad.update(odd)")
        lines.append("        objs_as_text = [{} if j in odd else o for j, o in enumerate(objs)]")
        lines.append("        plain_arrays = pa.array(objs_as_text, type=plain).flatten()")
        for k, (_i, field) in enumerate(plain):
            if field.required:  # "" is missing
                lines.append(f"    empty = pc.equal(plain_arrays[{k}], '').fill_null(True)")
                lines.append("    if empty.true_count:")
                lines.append("        bad.update(pc.indices_nonzero(empty).to_pylist())")
    for i, field in others:
        values = f"[o.get({field.name!r}) for o in objs]"
        if field.kind is _TIME:
            lines.append(f"    c{i}, undecided = event_times({values}, {field.required!r})")
            lines.append("    bad.update(undecided)")
            continue
        fallback = "ip_or_undecided(v)" if field.spec.format == "ip" else "UNDECIDED"
        lines.append(f"    c{i} = [{_inline(i, field, fallback)} for v in {values}]")
        lines.append(f"    if UNDECIDED in c{i}:")
        lines.append(f"        bad.update(j for j, v in enumerate(c{i}) if v is UNDECIDED)")
        lines.append(f"        c{i} = [None if v is UNDECIDED else v for v in c{i}]")
    arrays = []
    for i, field in enumerate(plan):
        if field.kind is _STRING:
            arrays.append(f"plain_arrays[{[j for j, _ in plain].index(i)}]")
        elif field.kind is _TIME:
            arrays.append(f"c{i}")
        else:
            arrays.append(f"pa.array(c{i}, type=schema.field({i}).type)")
    lines.append("    table = pa.Table.from_arrays([" + ", ".join(arrays) + "], schema=schema)")
    lines.append("    if bad:")
    lines.append("        keep = [j not in bad for j in range(len(objs))]")
    lines.append("        table = table.filter(pa.array(keep, type=pa.bool_()))")
    lines.append("    return table, sorted(bad)")
    # Only repr() of the schema's field names reaches the code: no value is ever evaluated.
    return _compiled("columns", "\n".join(lines) + "\n", namespace)


def _compiled(name: str, source: str, namespace: dict[str, Any]) -> Callable[..., Any]:
    """The function ``name`` defined by ``source``, compiled under a file name of its own that
    ``linecache`` holds the source of: a traceback through generated code shows its lines
    (``exec`` of a string alone shows none). The name is the source's hash: the same schema
    compiles to the same entry on every worker, whatever the order of compilation."""
    digest = hashlib.sha256(source.encode()).hexdigest()[:12]
    filename = f"<transforms.validation {name} {digest}>"
    # mtime None: linecache.checkcache keeps an entry it cannot stat (the documented way).
    linecache.cache[filename] = (len(source), None, source.splitlines(keepends=True), filename)
    exec(compile(source, filename, "exec"), namespace)
    return namespace[name]


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

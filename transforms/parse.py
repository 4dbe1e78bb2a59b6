"""Parse + Validate: raw input (JSON Lines bytes or Avro records) to typed, allow-listed records.

The source's input Avro schema is the contract: its fields are the allow-list (anything else is
dropped here, before any other stage sees it: data minimisation), non-null fields are required,
and each value must have one of the declared types. The category's event-time field is parsed
from any of the accepted forms (``transforms.timestamps``) to UTC epoch microseconds, and fields
declared with ``"format": "ip"`` must hold an IP address (kept in canonical form).

Dead-letter reasons: ``line_too_large`` (the reader's summary of a line over
``--max_line_bytes``), ``unreadable_file:<error>`` (an Avro file that stopped decoding),
``too_deep``, ``invalid_encoding``, ``empty_line``, ``invalid_json``, ``not_an_object``,
``missing_field:<f>``, ``malformed_field:<f>``, ``malformed_timestamp:<f>``,
``malformed_text:<f>`` (a lone surrogate in a declared string), and
``under_minimum_age`` (the DPSA's minimum-age condition, ``policy.minimum_age``): such a record is
not stored at all, so its dead letter keeps only the event id and the reason.

How (``transforms.validation``): each line is decoded to a dict, then validated against the
schema. Batched (``Parse(batched=True)``), a batch is validated column by column and leaves as
one Arrow table (``transforms.batches.TableBatch``) whose columns are
:func:`~transforms.validation.record_schema`, so that the later stages work column-wise; the
lines the columns cannot decide (bad ones, undeclared keys, unusual values) go through the
record-by-record reference, which gives their dead letters. A schema with a field of several
types has no such table, and records whose values do not fit it (an integer beyond 64 bits)
leave as a list.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from typing import Any

import apache_beam as beam
import orjson
import pyarrow as pa
import pyarrow.compute as pc

from schemas.avro import FieldSpec
from schemas.policy import Policy
from transforms.batches import ApplyStage, Batch, RecordStage, TableBatch
from transforms.deadletter import DeadLetterContext
from transforms.masking import stored_text_kinds
from transforms.rawinput import ReadFailure, RecordError, Withheld, check_text, nesting_exceeds
from transforms.scanning import scan_table, scan_text
from transforms.timestamps import TimeBounds
from transforms.validation import compile_columns, compile_validator, field_plan, record_schema

__all__ = ["Parse", "ParseFn", "decode_json_line"]


# orjson reads an integer beyond 64 bits as a float (json keeps the exact integer): a float of at
# least this magnitude may be one.
_BEYOND_INT64 = 2.0**63


def decode_json_line(line: bytes | str | Withheld | ReadFailure) -> dict[str, Any]:
    """One JSON Lines line to a JSON object, or :class:`RecordError`.

    What the reader hands on instead of a line is rejected with its reason: a line over the
    size limit (``line_too_large``) and an Avro file that stopped decoding
    (``unreadable_file:<error>``).

    A line nesting deeper than :data:`~transforms.rawinput.MAX_DEPTH` is ``too_deep`` before any
    decoder sees it (both recurse). orjson decodes the common case in one C call; json (the
    contract's reference) decides everything orjson refuses, and re-reads a line where orjson may
    have read an integer as a float, so that the result is always json's."""
    if line.__class__ is Withheld:
        raise RecordError("line_too_large", event_id=line.event_id)
    if line.__class__ is ReadFailure:
        raise RecordError("unreadable_file", line.error)
    if nesting_exceeds(line):
        raise RecordError("too_deep")
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


def _never(_values: Any) -> bool:
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
        bounds: TimeBounds | None = None,
    ) -> None:
        super().__init__(context)
        self._schema = record_schema(specs, event_time_field) if columnar else None
        self._event_time = event_time_field
        self._bounds = bounds if event_time_field is not None else None
        self._plan = field_plan(specs, event_time_field)
        self._validate: Callable[[Mapping[str, Any]], dict[str, Any]] | None = None
        self._columns: Callable[[list[dict[str, Any]]], tuple[pa.Table, list[int]]] | None = None
        self._declared = frozenset(s.name for s in specs)
        # orjson reads an integer beyond 64 bits as a float. The columns take a float only
        # where a float is declared: elsewhere it is undecided and goes to the reference, which
        # reads the line again with json. So only such a schema needs the check per object.
        self._floats_accepted = any({"double", "float"} & set(s.avro_types) for s in specs)
        # The minimum-age rule reads a field of the raw record; where the schema does not declare
        # it, a record that has it has an undeclared key and goes to the reference anyway.
        self._age_rule = (
            policy.minimum_age
            if policy.minimum_age is not None and policy.minimum_age.age_field in self._declared
            else None
        )
        self._secret = policy.is_secret_name
        self._media = policy.is_media_name
        self._minimum_age = policy.minimum_age
        self._text_kinds = stored_text_kinds(specs, event_time_field, policy)

    def setup(self) -> None:
        super().setup()
        self._validate = compile_validator(self._plan)
        if self._schema is not None:
            self._columns = compile_columns(self._plan, self._schema)

    def process(self, batch: Batch) -> Iterator[Any]:
        self.tally.add("read", len(batch))
        return super().process(batch)

    def process_records(self, batch: Batch) -> Iterator[Any]:
        if self._columns is None:
            return super().process_records(batch)
        return self._columnar(batch)

    def _columnar(self, batch: Batch) -> Iterator[Any]:
        """A batch validated in columns (see the module docstring); what the columns leave
        goes record by record."""
        objs, lines, others = self._decoded(batch)
        if objs:
            try:
                table, undecided = self._columns(objs)
            except Exception:  # a value Arrow refuses: the reference says which and why
                table, undecided = None, range(len(objs))
            if table is not None and self._bounds is not None:
                table = self._within_bounds(table, undecided, lines, others)
            others.extend(lines[i] for i in undecided)
            if table is not None and table.num_rows:
                yield TableBatch(self._redacted_table(table))
        if others:
            for out in super().process_records(Batch(others)):
                yield self._table_of(out) if out.__class__ is Batch else out
        self.tally.flush()

    def _within_bounds(
        self, table: pa.Table, undecided: Sequence[int], lines: list[Any], others: list[Any]
    ) -> pa.Table:
        """The rows of ``table`` whose event time is within the run's bounds; the lines of the
        others go to ``others`` (the reference gives their dead letters). ``table`` holds the
        objects that are not ``undecided``, in order."""
        times = table.column(self._event_time)
        outside = pc.fill_null(
            pc.or_(pc.less(times, self._bounds.earliest), pc.greater(times, self._bounds.latest)),
            False,
        )
        if not pc.any(outside).as_py():
            return table
        skipped = set(undecided)
        decided = [i for i in range(len(lines)) if i not in skipped]
        others.extend(lines[decided[j]] for j in pc.indices_nonzero(outside).to_pylist())
        return table.filter(pc.invert(outside))

    def _decoded(self, batch: Batch) -> tuple[list[dict[str, Any]], list[bytes], list[Any]]:
        """``(objects, their lines, other elements)``: the JSON lines orjson decodes to an
        object that the columns may take; the rest (lines orjson refuses or may misread, Avro
        records, records with undeclared keys or of a child) is for the reference.

        The common batch, where every line qualifies, is decided by C-level maps over the whole
        batch; otherwise line by line."""
        objs = self._all_decoded(batch)
        if objs is not None:
            return objs, batch, []
        objs, lines, others = [], [], []
        loads, declared = orjson.loads, self._declared
        blocks = self._age_rule.blocks_flat if self._age_rule is not None else None
        misread = _may_hold_a_long_integer if self._floats_accepted else _never
        for element in batch:
            if element.__class__ is not bytes:
                others.append(element)
                continue
            try:
                obj = loads(element)
            except orjson.JSONDecodeError:
                others.append(element)
                continue
            if (
                obj.__class__ is not dict
                or not declared.issuperset(obj)
                or misread(obj.values())
                or (blocks is not None and blocks(obj))
            ):
                others.append(element)
            else:
                objs.append(obj)
                lines.append(element)
        return objs, lines, others

    def _all_decoded(self, batch: Batch) -> list[dict[str, Any]] | None:
        """The objects of every line of ``batch`` if all qualify for the columns, else None."""
        if set(map(type, batch)) != {bytes}:
            return None
        try:
            objs = list(map(orjson.loads, batch))
        except orjson.JSONDecodeError:
            return None
        if set(map(type, objs)) != {dict} or not all(map(self._declared.issuperset, objs)):
            return None
        if self._floats_accepted and any(map(_may_hold_a_long_integer, map(dict.values, objs))):
            return None
        if self._age_rule is not None and any(map(self._age_rule.blocks_flat, objs)):
            return None
        return objs

    def _table_of(self, records: Batch) -> Batch | TableBatch:
        """Records as a table of the record schema, or as they are if a value does not fit."""
        try:
            arrays = pa.array(records, type=pa.struct(list(self._schema))).flatten()
        except (pa.ArrowException, OverflowError, TypeError, ValueError):
            return records
        return TableBatch(pa.Table.from_arrays(arrays, schema=self._schema))

    def one(self, element: bytes | str | Mapping[str, Any] | Withheld | ReadFailure) -> dict:
        # A JSON line is bytes; the ABC check of Mapping is for Avro records (and text lines).
        if element.__class__ is bytes or not isinstance(element, Mapping):
            obj = decode_json_line(element)
        else:
            obj = element
        try:
            check_text(obj, self._declared.intersection(obj))
        except RecordError as rejected:
            rejected.event_id = obj.get("event_id")
            raise
        if self._minimum_age is not None and self._minimum_age.blocks(obj):
            # A child's record is not stored, not even as a dead letter: id and reason only.
            self.tally.add("parse.under_minimum_age")
            raise RecordError(
                "under_minimum_age", raw=Withheld.nothing(), event_id=obj.get("event_id")
            )
        try:
            record = self._validate(obj)
        except RecordError as rejected:
            rejected.event_id = obj.get("event_id")
            raise
        if self._bounds is not None:
            event_time = record[self._event_time]
            if event_time is not None and event_time not in self._bounds:
                raise RecordError("event_time_out_of_range", event_id=obj.get("event_id"))
        if not self._declared.issuperset(obj):
            self._count_dropped(obj.keys() - self._declared)
        return self._redacted(record)

    def _redacted(self, record: dict[str, Any]) -> dict[str, Any]:
        """``record`` with its free text scanned (``masking.stored_text_kinds``): secrets and
        contact data redacted in place, counted ``redacted.<kind>``."""
        for name, kinds in self._text_kinds.items():
            value = record.get(name)
            if value.__class__ is str:
                text, found = scan_text(value, kinds)
                if found:
                    record[name] = text
                    self._count_redacted(found)
        return record

    def _redacted_table(self, table: pa.Table) -> pa.Table:
        """:meth:`_redacted` of every row of ``table``, all text columns in one scan."""
        table, found = scan_table(table, self._text_kinds)
        self._count_redacted(found)
        return table

    def _count_redacted(self, found: Mapping[str, int]) -> None:
        for kind, n in found.items():
            self.tally.add(f"redacted.{kind}", n)

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
        bounds: TimeBounds | None = None,
    ) -> None:
        super().__init__()
        self._fn = ParseFn(
            specs, event_time_field, policy, context, columnar=batched, bounds=bounds
        )
        self._batched = batched

    def expand(self, raw):
        return raw | "Validate" >> ApplyStage(self._fn, batched=self._batched)

"""Parse + Validate: raw input (JSON Lines bytes, Avro or Parquet records) to typed, allow-listed
records.

The source's input Avro schema is the contract: its fields are the allow-list (anything else is
dropped here, before any other stage sees it: data minimisation), non-null fields are required,
and each value must have one of the declared types. The category's event-time field is parsed
from any of the accepted forms (``transforms.timestamps``) to UTC epoch microseconds, and fields
declared with ``"format": "ip"`` must hold an IP address (kept in canonical form).

Dead-letter reasons: ``line_too_large`` (the reader's summary of a line over
``--max_line_bytes``), ``unreadable_file:<error>`` (an Avro or Parquet file that stopped
decoding), ``too_deep``, ``invalid_encoding``, ``empty_line``, ``invalid_json``,
``not_an_object``, ``missing_field:<f>``, ``malformed_field:<f>``, ``malformed_timestamp:<f>``,
``malformed_text:<f>`` (a lone surrogate in a declared string), and ``under_minimum_age`` (the
DPSA's minimum-age condition, ``policy.minimum_age``): such a record is not stored at all, so
its dead letter keeps only the event id and the reason.

How: a batch is decoded by its input format's fast decoder (``transforms.inputformats``: orjson
for JSON Lines; Avro and Parquet records come decoded), validated column by column
(``transforms.validation.compile_columns``) and leaves as one Arrow table
(``transforms.batches.TableBatch``) whose columns are :func:`~transforms.validation.record_schema`,
so that the later stages work column-wise. The elements the columns cannot decide (bad lines,
undeclared keys, unusual values) go through the record-by-record reference
(:meth:`ParseFn.record_by_record`: the format's reference decoder, then
:func:`~transforms.validation.validate_planned`), which gives their dead letters; each is counted
by reason (``transforms.counters.fallback``), so that a fast path that stopped deciding shows in
the run report. A schema with a field of several types has no such table (every element goes
the record way), and records whose values do not fit it (an integer beyond 64 bits) leave as a
list.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import apache_beam as beam
import pyarrow as pa
import pyarrow.compute as pc

from schemas.avro import FieldSpec
from schemas.policy import Policy
from transforms.batches import ApplyStage, Batch, RecordStage, TableBatch
from transforms.counters import fallback
from transforms.deadletter import DeadLetterContext
from transforms.inputformats import DEFAULT_FORMAT, REFUSED, format_named
from transforms.masking import stored_text_kinds
from transforms.rawinput import RecordError, Withheld, check_text, decode_json_line
from transforms.scanning import scan_table, scan_text
from transforms.timestamps import TimeBounds
from transforms.validation import compile_columns, field_plan, record_schema, validate_planned

# decode_json_line lives in transforms.rawinput (no Beam); the retention parsers import it here.
__all__ = ["COLUMN_ERRORS", "Parse", "ParseFn", "decode_json_line"]

# What the compiled columns raise on a batch holding a value Arrow will not take (a string field
# holding a number, a list, a dict: ArrowTypeError; a value it cannot convert: ArrowInvalid; an
# integer beyond 64 bits, or one too large for a float: OverflowError). The whole batch then goes
# the record way, which says which value and why. Anything else is a bug and is raised.
COLUMN_ERRORS = (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError)


def _never(_values: Any) -> bool:
    return False


class ParseFn(RecordStage):
    """Raw element (a line or record of ``input_format``) -> validated record, or a dead letter."""

    stage = "parse"

    def __init__(
        self,
        specs: Sequence[FieldSpec],
        event_time_field: str | None,
        policy: Policy,
        context: DeadLetterContext,
        *,
        input_format: str = DEFAULT_FORMAT,
        bounds: TimeBounds | None = None,
    ) -> None:
        super().__init__(context)
        self._format = format_named(input_format)
        self._schema = record_schema(specs, event_time_field)
        self._event_time = event_time_field
        self._bounds = bounds if event_time_field is not None else None
        self._plan = field_plan(specs, event_time_field)
        self._columns: Callable[[list[dict[str, Any]]], tuple[pa.Table, list[int]]] | None = None
        self._declared = frozenset(s.name for s in specs)
        # orjson reads an integer beyond 64 bits as a float. The columns take a float only
        # where a float is declared: elsewhere it is undecided and goes to the reference, which
        # reads the line again with json. So only such a schema needs the check per object.
        floats = any({"double", "float"} & set(s.avro_types) for s in specs)
        self._misread = (floats and self._format.may_misread) or _never
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
        if self._schema is not None:
            self._columns = compile_columns(self._plan, self._schema)

    def process(self, batch: Batch) -> Iterator[Any]:
        self.tally.add("read", len(batch))
        return super().process(batch)

    def process_records(self, batch: Batch) -> Iterator[Any]:
        if self._columns is None:
            fallback(self.stage, "no_table_schema", len(batch))
            return self.record_by_record(batch)
        return self._columnar(batch)

    def record_by_record(self, batch: Batch) -> Iterator[Any]:
        """The reference: every element through :meth:`one` (a record or a dead letter each).
        What the elements the columns leave go through, and what tests hold the columns to."""
        return super().process_records(batch)

    def _columnar(self, batch: Batch) -> Iterator[Any]:
        """A batch validated in columns (see the module docstring); what the columns leave
        goes record by record, counted by reason."""
        objs, elements, others, reasons = self._decoded(batch)
        if objs:
            try:
                table, undecided = self._columns(objs)
            except COLUMN_ERRORS:  # a value Arrow refuses: the reference says which and why
                table, undecided = None, range(len(objs))
                reasons["arrow_refused"] += len(objs)
            else:
                reasons["undecided_value"] += len(undecided)
            if table is not None and self._bounds is not None:
                table = self._within_bounds(table, undecided, elements, others, reasons)
            others.extend(elements[i] for i in undecided)
            if table is not None and table.num_rows:
                yield TableBatch(self._redacted_table(table))
        if others:
            for reason, rows in reasons.items():
                fallback(self.stage, reason, rows)
            for out in self.record_by_record(Batch(others)):
                yield self._table_of(out) if out.__class__ is Batch else out
        self.tally.flush()

    def _within_bounds(
        self,
        table: pa.Table,
        undecided: Sequence[int],
        elements: list[Any],
        others: list[Any],
        reasons: Counter[str],
    ) -> pa.Table:
        """The rows of ``table`` whose event time is within the run's bounds; the elements of
        the others go to ``others`` (the reference gives their dead letters). ``table`` holds
        the objects that are not ``undecided``, in order."""
        times = table.column(self._event_time)
        outside = pc.fill_null(
            pc.or_(pc.less(times, self._bounds.earliest), pc.greater(times, self._bounds.latest)),
            False,
        )
        if not pc.any(outside).as_py():
            return table
        skipped = set(undecided)
        decided = [i for i in range(len(elements)) if i not in skipped]
        positions = pc.indices_nonzero(outside).to_pylist()
        others.extend(elements[decided[j]] for j in positions)
        reasons["event_time_out_of_range"] += len(positions)
        return table.filter(pc.invert(outside))

    def _decoded(
        self, batch: Batch
    ) -> tuple[list[dict[str, Any]], Sequence[Any], list[Any], Counter[str]]:
        """``(objects, their elements, other elements, why the others)``: the elements the
        format's fast decoder turns into an object that the columns may take; the rest
        (lines it refuses or may misread, records with undeclared keys or of a child) is for
        the reference, counted by reason.

        The common batch, where every element qualifies, is decided by C-level maps over the
        whole batch; otherwise element by element."""
        objs = self._all_decoded(batch)
        if objs is not None:
            return objs, batch, [], Counter()
        objs, elements, others, reasons = [], [], [], Counter()
        decode, declared, misread = self._format.decode_one, self._declared, self._misread
        blocks = self._age_rule.blocks_flat if self._age_rule is not None else None
        for element in batch:
            obj = decode(element)
            if obj is REFUSED:
                reason = "refused_by_decoder"
            elif obj.__class__ is not dict:
                reason = "not_an_object"
            elif not declared.issuperset(obj):
                reason = "undeclared_field"
            elif misread(obj.values()):
                reason = "long_integer"
            elif blocks is not None and blocks(obj):
                reason = "minimum_age"
            else:
                objs.append(obj)
                elements.append(element)
                continue
            others.append(element)
            reasons[reason] += 1
        return objs, elements, others, reasons

    def _all_decoded(self, batch: Batch) -> list[dict[str, Any]] | None:
        """The objects of every element of ``batch`` if all qualify for the columns, else None."""
        objs = self._format.decode_batch(batch)
        if objs is None:
            return None
        if set(map(type, objs)) != {dict} or not all(map(self._declared.issuperset, objs)):
            return None
        if self._misread is not _never and any(map(self._misread, map(dict.values, objs))):
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

    def one(self, element: Any) -> dict:
        obj = self._format.decode(element)
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
            record = validate_planned(obj, self._plan)
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
    """Parse and validate batches of raw elements of ``input_format`` (a name of
    ``transforms.inputformats.FORMATS``: the format the reader read); yields ``(records,
    dead_letters)``, the records in batches (tables where the schema allows, see the module
    docstring)."""

    def __init__(
        self,
        specs: Sequence[FieldSpec],
        event_time_field: str | None,
        policy: Policy,
        context: DeadLetterContext,
        *,
        input_format: str,
        bounds: TimeBounds | None = None,
    ) -> None:
        super().__init__()
        self._fn = ParseFn(
            specs, event_time_field, policy, context, input_format=input_format, bounds=bounds
        )

    def expand(self, raw):
        return raw | "Validate" >> ApplyStage(self._fn)

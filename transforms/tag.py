"""Tag: project each record onto the categories it feeds and stamp the policy on every row.

Each output row gets ``data_category, purposes, legal_basis, retention_rule, expires_at,
policy_version`` from ``schemas/policy.yaml``: nothing here knows a retention period. Purposes are
evaluated per record (direct marketing never applies to EEA/UK or unknown-region records, and only
when a contact field is present) and a purpose's own retention (until opt-out) replaces the
category's while it applies. ``expires_at`` is the event time plus the fixed period, or None for
open-ended retention (written to the open-ended partition, ``expiry_date=9999-12-31``, until a
lifecycle event sets it).

Expiry is bounded: a row whose expiry lies on or after 9999-12-31 is an ``expiry_out_of_range``
dead letter (``transforms.sinks.layout.MAX_EXPIRY_MICROS``: that date names the open-ended
partition, and a real expiry there would be merged with the open-ended rows, never purged;
beyond it no reader can hold the date), and a row that is already due at the run time (its expiry
date is on or before the run's UTC date, when a purge would delete it: a backfill older than its
retention) is not written at all but counted as ``expired_on_arrival.<category>``: storing it
would keep it past its retention.

A row is projected onto exactly its category's columns, so nothing outside the schema reaches a
sink even if an earlier stage let it through.

Tables are built column-wise: each field a batch needs is read once for the whole batch
(:class:`~transforms.tag_columns.BatchColumns`), and which output takes a row, its tags and its
expiry are computed with ``pyarrow.compute``; ``Category.effective`` still decides the tags, once
per distinct (region, conditional purposes) combination. Whenever the columns cannot decide
exactly what the per-record code would (a value of another type than expected, a value Arrow
cannot convert: ``transforms.columns.ARROW_ERRORS``), that output of that batch goes record by
record, so a bad record still becomes its own dead letter; that is counted as
``columnar_fallback.tag.<reason>`` (an error in strict mode). The record-wise code (``TagFn.one``,
:func:`tag_row`) is the reference the tests hold the tables to.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import reduce
from typing import Any, NamedTuple

import apache_beam as beam
import pyarrow as pa
import pyarrow.compute as pc

from schemas.arrow import arrow_column, check_required
from schemas.avro import tag_columns
from schemas.policy import (
    COUNTRY_FIELD,
    UNKNOWN_REGION,
    Category,
    Policy,
    Retention,
    Route,
    filled_any,
)
from transforms.batches import AnyBatch, ApplyStage, RecordStage, TableBatch
from transforms.columns import ARROW_ERRORS
from transforms.counters import fallback
from transforms.deadletter import DeadLetterContext
from transforms.rawinput import RecordError
from transforms.sinks.layout import MAX_EXPIRY_MICROS
from transforms.tag_columns import BatchColumns

__all__ = ["CategoryOutput", "ColumnTags", "Tag", "TagFn", "TagPolicy", "Tagger", "Tags", "tag_row"]


@dataclass(frozen=True)
class CategoryOutput:
    """One category a source feeds: its columns, and when a record yields a row of it.

    ``when_any``: emit a row only if one of these fields is present (a visit yields a
    corporate_visitor_info row only if it has company or contact data); empty = always.
    ``route``: a source's routing rule (``policy.sources``) that must match too.
    """

    category: str
    columns: tuple[str, ...]
    when_any: tuple[str, ...] = ()
    route: Route | None = None

    def applies(self, record: Mapping[str, Any]) -> bool:
        if self.route is not None and not self.route.matches(record):
            return False
        return not self.when_any or filled_any(record, self.when_any)

    def mask(self, columns: BatchColumns) -> pa.BooleanArray | None:
        """:meth:`applies` for every record of a batch at once, or None when the columns cannot
        decide it exactly (then ask :meth:`applies`, record by record)."""
        parts = []
        if self.route is not None:
            if self.route.when_present:
                parts.append(columns.filled_any(self.route.when_present))
            parts.extend(columns.equals(k, v) for k, v in self.route.when_equals.items())
        if self.when_any:
            parts.append(columns.filled_any(self.when_any))
        if any(part is None for part in parts):
            return None
        return reduce(pc.and_, parts) if parts else columns.every


class Tags(NamedTuple):
    """The tags of a record for a category (:meth:`Tagger.tags`)."""

    purposes: list[str]
    retention_rule: str
    expires_at: int | None  # epoch microseconds; None: open-ended


class TagPolicy(NamedTuple):
    """What ``Category.effective`` gives the records of one combination of what their tags
    depend on (:meth:`Tagger.key`): shared by them, computed once."""

    purposes: list[str]
    retention_rule: str
    retention: Retention


@dataclass(frozen=True)
class ColumnTags:
    """The tags of the picked records of a batch, column-wise (:meth:`Tagger.column_tags`)."""

    rows: pa.Array  # batch indices of the records that get a row
    dead: list[int]  # batch indices of the records whose expiry cannot be computed
    out_of_range: list[int]  # batch indices of the records whose expiry is past MAX_EXPIRY_MICROS
    policies: list[TagPolicy]  # per distinct combination of tags
    combination: pa.Array  # per row: its index in ``policies``
    expires_at: pa.Array  # per row: int64 epoch microseconds, null when open-ended

    def expired(self, due_before: int) -> pa.BooleanArray:
        """Per row: expires before ``due_before`` (open-ended rows never do)."""
        return pc.fill_null(pc.less(self.expires_at, due_before), False)

    def without(self, dropped: pa.BooleanArray) -> ColumnTags:
        """These tags less the ``dropped`` rows."""
        kept = pc.invert(dropped)
        return dataclasses.replace(
            self,
            rows=self.rows.filter(kept),
            combination=self.combination.filter(kept),
            expires_at=self.expires_at.filter(kept),
        )


class Tagger:
    """The policy tags of records for one category, and their rows or table.

    The tags of a record depend only on its region and on which of the category's conditional
    purposes' fields it fills (``Purpose.applies``), so they are computed once per such key and
    reused: ``Category.effective`` stays the one place that decides them.
    """

    def __init__(self, category: Category, columns: Iterable[str], policy_version: str) -> None:
        if not category.stored:
            raise ValueError(f"category {category.name} is never stored")
        self.category = category
        self.columns = tuple(columns)
        self.policy_version = policy_version
        # The field lists of the conditional purposes: whether a record fills one of each is
        # (with its region) all that Purpose.applies looks at.
        self._conditional = tuple(
            p.requires_any_field for p in category.purposes if p.requires_any_field
        )
        # The jurisdiction allow-lists of the purposes that have one: whether a record's country
        # is in each is the rest of what Purpose.applies looks at.
        self._jurisdictions = tuple(
            p.only_in_countries for p in category.purposes if p.only_in_countries
        )
        self._memo: dict[tuple[Any, ...], TagPolicy] = {}

    def key(self, record: Mapping[str, Any]) -> tuple[Any, ...]:
        """What the tags of ``record`` depend on: its region, per conditional purpose whether
        it fills one of the purpose's fields, and per jurisdiction list whether its country is
        in it."""
        region = record.get("region") or UNKNOWN_REGION
        country = record.get(COUNTRY_FIELD)
        return (
            region,
            *[filled_any(record, fields) for fields in self._conditional],
            *[country in countries for countries in self._jurisdictions],
        )

    def _policy(self, key: tuple[Any, ...], record: Mapping[str, Any]) -> TagPolicy:
        """The :class:`TagPolicy` of the records of ``key`` (``record`` is one of them)."""
        hit = self._memo.get(key)
        if hit is None:
            purposes, retention = self.category.effective(key[0], record)
            hit = self._memo[key] = TagPolicy(list(purposes), retention.label, retention)
        return hit

    def tags(self, record: Mapping[str, Any]) -> Tags:
        """The :class:`Tags` of ``record``. The purposes list is shared by the records with the
        same tags: copy it before changing it."""
        policy = self._policy(self.key(record), record)
        event_field = self.category.event_time
        event_time = record.get(event_field) if event_field else None
        expires_at = policy.retention.expires_at(event_time)
        if expires_at is not None and expires_at > MAX_EXPIRY_MICROS:
            raise RecordError("expiry_out_of_range")
        return Tags(policy.purposes, policy.retention_rule, expires_at)

    def row(self, record: Mapping[str, Any], tags: Tags | None = None) -> dict[str, Any]:
        """The output row of ``record``: its columns plus the policy tags (``tags`` if already
        computed)."""
        tags = tags or self.tags(record)
        row = {column: record.get(column) for column in self.columns}
        row["data_category"] = self.category.name
        row["purposes"] = list(tags.purposes)
        row["legal_basis"] = self.category.legal_basis
        row["retention_rule"] = tags.retention_rule
        row["expires_at"] = tags.expires_at
        row["policy_version"] = self.policy_version
        return row

    def table(
        self, records: Sequence[Mapping[str, Any]], tags: Sequence[Tags], schema: pa.Schema
    ) -> pa.Table:
        """The rows of ``records`` (with their ``tags``) as one Arrow table of ``schema``, built
        column by column: what :meth:`row` would give, without a dict per row. Raises ValueError
        like ``schemas.arrow.to_arrow_table`` for a value the schema cannot hold."""
        n = len(records)
        by_name: dict[str, Sequence[Any]] = {
            "data_category": [self.category.name] * n,
            "purposes": [t.purposes for t in tags],
            "legal_basis": [self.category.legal_basis] * n,
            "retention_rule": [t.retention_rule for t in tags],
            "expires_at": [t.expires_at for t in tags],
            "policy_version": [self.policy_version] * n,
        }
        columns = frozenset(self.columns)
        arrays = []
        for field in schema:
            name = field.name
            if name in by_name:
                values = by_name[name]
            elif name in columns:
                values = [r.get(name) for r in records]
            else:
                values = [None] * n
            arrays.append(arrow_column(field, values))
        return pa.Table.from_arrays(arrays, schema=schema)

    def column_tags(self, columns: BatchColumns, picked: pa.BooleanArray) -> ColumnTags | str:
        """:meth:`tags` of the ``picked`` records of a batch, column-wise; or, when the columns
        cannot decide them (then ask :meth:`tags`, record by record), the reason.

        A record's combination (its region and conditional purpose flags, what :meth:`key` is)
        becomes one integer; ``Category.effective`` runs once per combination never seen before,
        on the first record of it, exactly as :meth:`tags` memoises. A fixed retention expires a
        fixed time after the event (``expires_at(0)``); a record without an event time cannot
        have it and is ``dead`` (``Retention.expires_at`` raises ValueError for it).
        """
        regions = columns.regions()
        if regions is None:
            return "region_not_text"
        codes, region_names = regions
        flag_columns = [columns.filled_any(fields) for fields in self._conditional]
        flag_columns += [columns.is_in(COUNTRY_FIELD, c) for c in self._jurisdictions]
        if any(flags is None for flags in flag_columns):
            return "purpose_fields_undecided"
        bits = len(flag_columns)
        combination = pc.multiply(codes, 1 << bits) if bits else codes
        for bit, flags in enumerate(flag_columns):
            combination = pc.add(combination, pc.multiply(flags.cast(pa.int32()), 1 << bit))
        event_field = self.category.event_time
        event_time = columns.inferred(event_field) if event_field else pa.nulls(columns.n)
        if event_time is None:
            return "event_time_not_int"
        if pa.types.is_null(event_time.type):
            event_time = pa.nulls(columns.n, pa.int64())
        elif not pa.types.is_int64(event_time.type):
            return "event_time_not_int"  # not plain ints: let Python add them

        rows = pc.indices_nonzero(picked)
        combination = combination.take(rows)
        event_time = event_time.take(rows)
        distinct = pc.unique(combination)
        policies, offsets = [], []
        for value in distinct.to_pylist():
            key = (region_names[value >> bits], *[bool(value >> b & 1) for b in range(bits)])
            hit = self._memo.get(key)
            if hit is None:
                record = columns.records[rows[pc.index(combination, value).as_py()].as_py()]
                if self.key(record) != key:  # cannot happen; if it does, Python decides
                    return "key_mismatch"
                hit = self._policy(key, record)
            retention = hit.retention
            if retention.rule == "fixed":
                offsets.append(retention.expires_at(0))
            elif retention.open_ended:
                offsets.append(None)
            else:
                return "retention_not_fixed"
            policies.append(hit)
        combination = pc.index_in(combination, value_set=distinct)
        offset = pa.array(offsets, type=pa.int64()).take(combination)
        expires_at = pc.add_checked(event_time, offset)
        dead = pc.and_(offset.is_valid(), event_time.is_null())
        out_of_range = pc.fill_null(pc.greater(expires_at, MAX_EXPIRY_MICROS), False)
        dead_rows: list[int] = []
        late_rows: list[int] = []
        if dead.true_count or out_of_range.true_count:
            dead_rows = rows.filter(dead).to_pylist()
            late_rows = rows.filter(out_of_range).to_pylist()
            kept = pc.invert(pc.or_(dead, out_of_range))
            rows, combination = rows.filter(kept), combination.filter(kept)
            expires_at = expires_at.filter(kept)
        return ColumnTags(rows, dead_rows, late_rows, policies, combination, expires_at)

    def column_table(self, columns: BatchColumns, tags: ColumnTags, schema: pa.Schema) -> pa.Table:
        """What :meth:`table` gives for the records of ``tags.rows`` with their tags, from the
        batch's columns. Raises ValueError for a value the schema cannot hold (then build the
        table record-wise, with :meth:`table`, and find the records at fault)."""
        n = len(tags.rows)
        whole = n == columns.n  # every record of the batch: nothing to take

        def constant(field: pa.Field, value: Any) -> pa.Array:
            return pa.repeat(arrow_column(field, [value])[0], n)

        def per_policy(field: pa.Field, values: list[Any]) -> pa.Array:
            return arrow_column(field, values).take(tags.combination)

        def expires_at(field: pa.Field) -> pa.Array:
            if pa.types.is_timestamp(field.type) or pa.types.is_int64(field.type):
                return tags.expires_at.cast(field.type)  # ints are the timestamps' raw values
            return arrow_column(field, tags.expires_at.to_pylist())

        by_name = {
            "data_category": lambda f: constant(f, self.category.name),
            "purposes": lambda f: per_policy(f, [p.purposes for p in tags.policies]),
            "legal_basis": lambda f: constant(f, self.category.legal_basis),
            "retention_rule": lambda f: per_policy(f, [p.retention_rule for p in tags.policies]),
            "expires_at": expires_at,
            "policy_version": lambda f: constant(f, self.policy_version),
        }
        own = frozenset(self.columns)
        arrays = []
        for field in schema:
            name = field.name
            if name in by_name:
                array = by_name[name](field)
            elif name in own:
                array = columns.typed(field)
                if array is None:  # a value somewhere in the batch does not convert
                    values = columns.values(name)
                    array = arrow_column(field, [values[i] for i in tags.rows.to_pylist()])
                elif not whole:
                    array = array.take(tags.rows)
            else:
                array = arrow_column(field, [None] * n)
            arrays.append(check_required(field, array))
        return pa.Table.from_arrays(arrays, schema=schema)


def tag_row(
    record: Mapping[str, Any], category: Category, columns: Iterable[str], policy_version: str
) -> dict[str, Any]:
    """The output row of ``record`` for ``category``: its columns plus the policy tags."""
    return Tagger(category, columns, policy_version).row(record)


class TagFn(RecordStage):
    """Rows of every output that applies, or with ``exclusive`` of the first one only (a routed
    source: one record, one category). A record no output takes is an error, never dropped.

    A batch (of either kind) becomes ``(category, pa.Table)`` elements of the categories' Arrow
    ``schemas``: what a sink of ``transforms.store.Store`` takes. The record path
    (:meth:`one`, through ``process_records``: a batch of row dicts) is the reference.
    """

    stage = "tag"
    many = True

    def __init__(
        self,
        policy: Policy,
        outputs: Iterable[CategoryOutput],
        context: DeadLetterContext,
        exclusive: bool = False,
        *,
        schemas: Mapping[str, pa.Schema],
        run_time: int | None = None,
    ) -> None:
        super().__init__(context)
        # A row is due on its expiry date (the purge deletes a partition on or before the UTC
        # date of its run): one that expires before the end of the run's UTC day would be
        # deleted by a purge run now, so it is not written.
        self._due_before = None if run_time is None else (run_time // _DAY + 1) * _DAY
        self._outputs = tuple(
            (o, Tagger(policy.category(o.category), o.columns, policy.version)) for o in outputs
        )
        self._exclusive = exclusive
        self._schemas = dict(schemas)
        self._fields = _fields_to_convert(self._outputs, self._schemas)

    def one(self, record: Mapping[str, Any]) -> list[dict[str, Any]]:
        """The rows of one record (the reference; tables are built batch-wise)."""
        chosen = [tagger for output, tagger in self._outputs if output.applies(record)]
        if self._exclusive:
            if not chosen:
                raise ValueError("no route of the source matches the record")
            chosen = chosen[:1]
        rows = []
        for tagger in chosen:
            tags = tagger.tags(record)
            if self._expired(tags.expires_at):
                self.tally.add(f"expired_on_arrival.{tagger.category.name}")
                continue
            rows.append(tagger.row(record, tags))
            self.tally.add(f"tagged.{tagger.category.name}")
        return rows

    def _expired(self, expires_at: int | None) -> bool:
        """True when a row expiring at ``expires_at`` is already due at the run time (its expiry
        date is on or before the run's UTC date): it is not written (storing it would keep it
        past its retention), only counted."""
        due_before = self._due_before
        return due_before is not None and expires_at is not None and expires_at < due_before

    def process(self, batch: AnyBatch) -> Iterator[Any]:
        if batch:
            yield from self._tables(batch)
        self.tally.flush()

    def _tables(self, batch: AnyBatch) -> Iterator[Any]:
        """Tables: each step runs over the whole batch, column-wise where the columns decide
        (see :class:`BatchColumns`), else record by record; a record that fails a step (an
        exception from applies/tags, or a value the schema cannot hold) is found and becomes a
        dead letter, exactly as in the row mode."""
        columns = (
            BatchColumns.of_table(batch.table)
            if isinstance(batch, TableBatch)
            else BatchColumns(batch)
        )
        columns.convert(self._fields)
        remaining = columns.every  # exclusive: the records no output took yet
        for output, tagger in self._outputs:
            candidates = remaining if self._exclusive else columns.every
            try:
                applies = output.mask(columns)
            except ARROW_ERRORS:
                applies = None
            if applies is None:
                fallback(self.stage, "route_undecided", candidates.true_count)
                picked, rest = yield from self._split(columns.records, candidates, output)
            else:
                picked = pc.and_(candidates, applies)
                rest = pc.and_not(candidates, applies)
            if self._exclusive:
                remaining = rest
            if picked.true_count:
                yield from self._output(output.category, tagger, columns, picked)
        if self._exclusive:  # no route of the source matches these records
            for i in pc.indices_nonzero(remaining).to_pylist():
                yield self._reject("unexpected_error:ValueError", columns.records[i], None)

    def _split(
        self,
        batch: Sequence[Mapping[str, Any]],
        candidates: pa.BooleanArray,
        output: CategoryOutput,
    ) -> Iterator[Any]:
        """Generator returning the masks ``(candidates output applies to, the others)``, asking
        ``applies`` record by record; yields the dead letters of records it fails on (in
        neither mask)."""
        index = pc.indices_nonzero(candidates).to_pylist()
        flags = yield from self._each(output.applies, [batch[i] for i in index])
        picked, rest = [False] * len(batch), [False] * len(batch)
        for i, flag in zip(index, flags, strict=True):
            if flag is not _FAILED:
                (picked if flag else rest)[i] = True
        return pa.array(picked, type=pa.bool_()), pa.array(rest, type=pa.bool_())

    def _each(self, fn: Any, records: list[Mapping[str, Any]]) -> Iterator[Any]:
        """Generator returning ``[fn(record) ...]``, with ``_FAILED`` for the records ``fn``
        raises on; yields their dead letters. The whole list is tried first: a failure is rare,
        and only then is each record tried alone."""
        try:
            return [fn(r) for r in records]
        except Exception:  # find the record(s) at fault
            results = []
            for record in records:
                try:
                    results.append(fn(record))
                except RecordError as rejected:
                    results.append(_FAILED)
                    yield self._reject(rejected.error, record, rejected)
                except Exception as err:  # its own dead letter
                    results.append(_FAILED)
                    yield self._reject(f"unexpected_error:{type(err).__name__}", record, None)
            return results

    def _output(
        self, category: str, tagger: Tagger, columns: BatchColumns, picked: pa.BooleanArray
    ) -> Iterator[Any]:
        """The table of the ``picked`` records for ``category``, and their dead letters."""
        try:
            tags = tagger.column_tags(columns, picked)
        except ARROW_ERRORS:
            tags = "arrow_error"
        if isinstance(tags, str):  # the reason the columns cannot decide: record by record
            fallback(self.stage, tags, picked.true_count)
            rows = pc.indices_nonzero(picked).to_pylist()
            yield from self._rows_table(category, tagger, [columns.records[i] for i in rows])
            return
        for i in tags.dead:
            yield self._reject("unexpected_error:ValueError", columns.records[i], None)
        for i in tags.out_of_range:
            yield self._reject("expiry_out_of_range", columns.records[i], None)
        if self._due_before is not None:
            expired = tags.expired(self._due_before)
            if expired.true_count:
                self.tally.add(f"expired_on_arrival.{category}", expired.true_count)
                tags = tags.without(expired)
        if not len(tags.rows):
            return
        try:
            table = tagger.column_table(columns, tags, self._schemas[category])
        except _UNCONVERTIBLE:  # a value the schema cannot hold: record by record
            fallback(self.stage, "value_not_convertible", len(tags.rows))
            rows = tags.rows.to_pylist()
            yield from self._rows_table(category, tagger, [columns.records[i] for i in rows])
            return
        self.tally.add(f"tagged.{category}", table.num_rows)
        yield category, table

    def _rows_table(
        self, category: str, tagger: Tagger, records: list[Mapping[str, Any]]
    ) -> Iterator[Any]:
        """The table of ``records`` built record-wise; records whose tags fail are dead."""
        tags = yield from self._each(tagger.tags, records)
        kept = [(r, t) for r, t in zip(records, tags, strict=True) if t is not _FAILED]
        expired = sum(1 for _, t in kept if self._expired(t.expires_at))
        if expired:
            self.tally.add(f"expired_on_arrival.{category}", expired)
            kept = [(r, t) for r, t in kept if not self._expired(t.expires_at)]
        if kept:
            yield from self._table(category, tagger, [r for r, _ in kept], [t for _, t in kept])

    def _table(
        self, category: str, tagger: Tagger, records: list[Mapping[str, Any]], tags: list[Tags]
    ) -> Iterator[Any]:
        schema = self._schemas[category]
        try:
            table = tagger.table(records, tags, schema)
        except ValueError:
            # A value the schema cannot hold: find the records at fault.
            table, bad = _salvage(tagger, records, tags, schema)
            for record in bad:
                yield self._reject("unexpected_error:ValueError", record, None)
        if table.num_rows:
            self.tally.add(f"tagged.{category}", table.num_rows)
            yield category, table


# The columns Tagger.table fills with the tags, whatever the record holds.
_TAG_COLUMNS = frozenset(tag_columns())

_DAY = 86_400_000_000  # microseconds

# What TagFn._each gives for a record its function raised on.
_FAILED = object()

# What building a table column-wise raises for a value its schema cannot hold: ValueError from
# ``schemas.arrow`` (which wraps Arrow's conversion errors), or Arrow's own.
_UNCONVERTIBLE = (ValueError, *ARROW_ERRORS)


def _fields_to_convert(
    outputs: Sequence[tuple[CategoryOutput, Tagger]], schemas: Mapping[str, pa.Schema]
) -> list[pa.Field]:
    """The record fields the tables of ``outputs`` hold, to convert at once per batch: all but
    those whose Python values decide something that a schema's type could blur (the region, the
    event time, a route's ``when_equals``): those are inferred alone (see BatchColumns)."""
    inferred = {"region"}
    for output, tagger in outputs:
        inferred.add(tagger.category.event_time)
        if output.route is not None:
            inferred.update(output.route.when_equals)
    fields: dict[str, pa.Field] = {}
    for output, _ in outputs:
        schema = schemas.get(output.category)
        for field in schema or ():
            name = field.name
            if name in output.columns and name not in _TAG_COLUMNS | inferred:
                fields.setdefault(name, field)
    return list(fields.values())


def _salvage(
    tagger: Tagger, records: list[Mapping[str, Any]], tags: list[Tags], schema: pa.Schema
) -> tuple[pa.Table, list[Mapping[str, Any]]]:
    """The table of the records that convert, and the records that do not (``records`` do not
    convert together).

    A record converts alone exactly when every value of it does, and a group when every record
    of it does: so the groups are halved until the failing records are alone, and a few bad
    records in a batch cost a few dozen tables, not one table per record."""
    good, good_tags, bad = [], [], []

    def halve(lo: int, hi: int) -> None:  # records[lo:hi] do not convert together
        if hi - lo == 1:
            bad.append(records[lo])
            return
        mid = (lo + hi) // 2
        for start, stop in ((lo, mid), (mid, hi)):
            try:
                tagger.table(records[start:stop], tags[start:stop], schema)
            except ValueError:
                halve(start, stop)
            else:
                good.extend(records[start:stop])
                good_tags.extend(tags[start:stop])

    if records:
        halve(0, len(records))
    return tagger.table(good, good_tags, schema), bad


class Tag(beam.PTransform):
    """Batches of records -> ``(category, pa.Table)`` elements of every category they feed, of
    the categories' Arrow ``schemas``; yields ``(tables, dead_letters)``."""

    def __init__(
        self,
        policy: Policy,
        outputs: Iterable[CategoryOutput],
        context: DeadLetterContext,
        exclusive: bool = False,
        *,
        schemas: Mapping[str, pa.Schema],
        run_time: int | None = None,
    ) -> None:
        super().__init__()
        self._fn = TagFn(policy, outputs, context, exclusive, schemas=schemas, run_time=run_time)

    def expand(self, batches: beam.PCollection) -> tuple[beam.PCollection, Any]:
        # The output is (category, table) pairs, not batches.
        return batches | "StampPolicy" >> ApplyStage(self._fn, output_type=Any)

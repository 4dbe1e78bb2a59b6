"""Tag: project each record onto the categories it feeds and stamp the policy on every row.

Each output row gets ``data_category, purposes, legal_basis, retention_rule, expires_at,
policy_version`` from ``schemas/policy.yaml``: nothing here knows a retention period. Purposes are
evaluated per record (direct marketing never applies to EEA/UK or unknown-region records, and only
when a contact field is present) and a purpose's own retention (until opt-out) replaces the
category's while it applies. ``expires_at`` is the event time plus the fixed period, or None for
open-ended retention (the Hive null partition, until a lifecycle event sets it).

A row is projected onto exactly its category's columns, so nothing outside the schema reaches a
sink even if an earlier stage let it through.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import apache_beam as beam
import pyarrow as pa

from schemas.arrow import arrow_column
from schemas.policy import UNKNOWN_REGION, Category, Policy, Route
from transforms.batches import ApplyStage, Batch, RecordStage
from transforms.deadletter import DeadLetterContext

__all__ = ["CategoryOutput", "Tag", "TagFn", "tag_row"]


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


def filled_any(record: Mapping[str, Any], fields: Iterable[str]) -> bool:
    """True if one of ``fields`` has a value (neither None nor ""). A plain loop: this runs for
    every record and every category, where a generator costs twice as much."""
    for value in map(record.get, fields):  # noqa: SIM110 (see the docstring)
        if value is not None and value != "":
            return True
    return False


# (purposes, retention_rule, expires_at) of a record for a category.
Tags = tuple[list[str], str, int | None]


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
        self._memo: dict[Any, tuple[list[str], str, Any]] = {}

    def tags(self, record: Mapping[str, Any]) -> Tags:
        """``(purposes, retention_rule, expires_at)`` of ``record``. The purposes list is shared
        by the records with the same tags: copy it before changing it."""
        region = record.get("region") or UNKNOWN_REGION
        key = (region, *[filled_any(record, fields) for fields in self._conditional])
        hit = self._memo.get(key)
        if hit is None:
            purposes, retention = self.category.effective(region, record)
            hit = self._memo[key] = (list(purposes), retention.label, retention)
        purposes, label, retention = hit
        event_field = self.category.event_time
        event_time = record.get(event_field) if event_field else None
        return purposes, label, retention.expires_at(event_time)

    def row(self, record: Mapping[str, Any], tags: Tags | None = None) -> dict[str, Any]:
        """The output row of ``record``: its columns plus the policy tags (``tags`` if already
        computed)."""
        purposes, rule, expires_at = tags or self.tags(record)
        row = {column: record.get(column) for column in self.columns}
        row["data_category"] = self.category.name
        row["purposes"] = list(purposes)
        row["legal_basis"] = self.category.legal_basis
        row["retention_rule"] = rule
        row["expires_at"] = expires_at
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
            "purposes": [t[0] for t in tags],
            "legal_basis": [self.category.legal_basis] * n,
            "retention_rule": [t[1] for t in tags],
            "expires_at": [t[2] for t in tags],
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


def tag_row(
    record: Mapping[str, Any], category: Category, columns: Iterable[str], policy_version: str
) -> dict[str, Any]:
    """The output row of ``record`` for ``category``: its columns plus the policy tags."""
    return Tagger(category, columns, policy_version).row(record)


# What a record yields for one of its categories: the category's tagger, the record, its tags.
Chosen = tuple[Tagger, Mapping[str, Any], Tags]


class TagFn(RecordStage):
    """Rows of every output that applies, or with ``exclusive`` of the first one only (a routed
    source: one record, one category). A record no output takes is an error, never dropped.

    With ``schemas`` (category -> Arrow schema) a batch becomes ``(category, pa.Table)``
    elements instead of a batch of row dicts: what ``transforms.sinks.WriteTables`` takes.
    """

    stage = "tag"
    many = True

    def __init__(
        self,
        policy: Policy,
        outputs: Iterable[CategoryOutput],
        context: DeadLetterContext,
        exclusive: bool = False,
        schemas: Mapping[str, pa.Schema] | None = None,
    ) -> None:
        super().__init__(context)
        self._outputs = tuple(
            (o, Tagger(policy.category(o.category), o.columns, policy.version)) for o in outputs
        )
        self._exclusive = exclusive
        self._schemas = dict(schemas) if schemas is not None else None

    def one(self, record: Mapping[str, Any]) -> list[Chosen]:
        chosen = [tagger for output, tagger in self._outputs if output.applies(record)]
        if self._exclusive:
            if not chosen:
                raise ValueError("no route of the source matches the record")
            chosen = chosen[:1]
        # Tags are computed here so that a record whose tags cannot be fails alone.
        return [(tagger, record, tagger.tags(record)) for tagger in chosen]

    def process(self, batch: Batch) -> Iterator[Any]:
        for out in super().process(batch):
            if isinstance(out, beam.pvalue.TaggedOutput):
                yield out
            elif self._schemas is None:
                yield self._rows(out)
            else:
                yield from self._tables(out)
        self.tally.flush()

    def _rows(self, chosen: list[Chosen]) -> list[dict[str, Any]]:
        rows = [tagger.row(record, tags) for tagger, record, tags in chosen]
        for tagger, _, _ in chosen:
            self.tally.add(f"tagged.{tagger.category.name}")
        return rows

    def _tables(self, chosen: list[Chosen]) -> Iterator[Any]:
        by_category: dict[str, list[Chosen]] = {}
        for item in chosen:
            by_category.setdefault(item[0].category.name, []).append(item)
        for category, items in by_category.items():
            tagger, schema = items[0][0], self._schemas[category]
            records = [record for _, record, _ in items]
            tags = [t for _, _, t in items]
            try:
                table = tagger.table(records, tags, schema)
            except ValueError:
                # A value the schema cannot hold: find the records at fault, one by one.
                table, bad = _salvage(tagger, records, tags, schema)
                for record in bad:
                    yield self._reject("unexpected_error:ValueError", record, None)
            if table.num_rows:
                self.tally.add(f"tagged.{category}", table.num_rows)
                yield category, table


def _salvage(
    tagger: Tagger, records: list[Mapping[str, Any]], tags: list[Tags], schema: pa.Schema
) -> tuple[pa.Table, list[Mapping[str, Any]]]:
    """The table of the records that convert, and the records that do not."""
    good, good_tags, bad = [], [], []
    for record, tag in zip(records, tags, strict=True):
        try:
            tagger.table([record], [tag], schema)
        except ValueError:
            bad.append(record)
        else:
            good.append(record)
            good_tags.append(tag)
    return tagger.table(good, good_tags, schema), bad


class Tag(beam.PTransform):
    """Records -> tagged rows of every category they feed; yields ``(rows, dead_letters)``.

    ``batched``: batches of records in; out come ``(category, pa.Table)`` elements of the
    categories' Arrow ``schemas`` (required then), ready for ``WriteTables``.
    """

    def __init__(
        self,
        policy: Policy,
        outputs: Iterable[CategoryOutput],
        context: DeadLetterContext,
        exclusive: bool = False,
        *,
        batched: bool = False,
        schemas: Mapping[str, pa.Schema] | None = None,
    ) -> None:
        super().__init__()
        if batched and schemas is None:
            raise ValueError("a batched Tag writes tables: give the categories' Arrow schemas")
        self._fn = TagFn(policy, outputs, context, exclusive, schemas if batched else None)
        self._batched = batched

    def expand(self, records):
        return records | "StampPolicy" >> ApplyStage(self._fn, batched=self._batched)

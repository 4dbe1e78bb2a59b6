"""SuppressRestrictedContacts: remove the fields a record's region forbids, before enrichment.

"We do not receive or process EEA and UK based companies corporate contact information": for a
visitor in a restricted region (EEA/UK, or UNKNOWN because we cannot tell) the corporate contact
fields a producer may have sent are removed here, so that neither the enrichment request nor any
later stage ever holds them. Which fields a region forbids is the policy's
``restrictions.forbidden_fields_in_regions``; a region the policy does not know forbids the union
of all of them (fail closed).

On a columnar batch (``transforms.batches.TableBatch``) the same rule runs on whole columns: a
forbidden field of a row that has any forbidden value becomes null (the record-wise version
drops the key; a table has no per-row keys, and null is what every later stage reads as absent).
A table whose ``region`` column is not text goes record by record, counted as the fallback
``columnar_fallback.suppress.region_not_text``. :func:`forbidding_rows` (which rows a region
forbids a field in) is the guard's too.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from functools import reduce
from typing import Any

import apache_beam as beam
import pyarrow as pa
import pyarrow.compute as pc

from schemas.policy import Category
from transforms.batches import ApplyStage, RecordStage, TableBatch
from transforms.columns import count, present, text_column, with_column

__all__ = [
    "SuppressRestrictedContacts",
    "SuppressRestrictedFn",
    "forbidden_by_region",
    "forbidding_rows",
]


def forbidden_by_region(categories: Iterable[Category]) -> dict[str, frozenset[str]]:
    """Region -> fields forbidden for it, across the given categories."""
    out: dict[str, set[str]] = {}
    for category in categories:
        for region, fields in category.forbidden_fields_in_regions.items():
            out.setdefault(region, set()).update(fields)
    return {region: frozenset(fields) for region, fields in out.items()}


def forbidding_rows(
    regions: pa.ChunkedArray,
    forbidden: Mapping[str, frozenset[str]],
    known: Iterable[str],
    fields: Iterable[str],
) -> dict[str, pa.ChunkedArray]:
    """Per field: the rows whose region forbids it. A region the policy does not know (None
    included) forbids every field of ``forbidden`` (fail closed), as in the per-record stages.

    ``regions`` must be a string (or all-null) column."""
    known = frozenset(known)
    every = frozenset().union(*forbidden.values()) if forbidden else frozenset()
    distinct = [r for r in pc.unique(regions).to_pylist() if r is not None]
    by_regions: dict[tuple[tuple[str, ...], bool], pa.ChunkedArray] = {}  # fields share masks
    masks = {}
    for field in fields:
        unknown_forbids = field in every
        forbidding = tuple(
            r
            for r in distinct
            if (field in forbidden.get(r, frozenset()) if r in known else unknown_forbids)
        )
        key = (forbidding, unknown_forbids)
        if key not in by_regions:
            mask = pc.is_in(regions, value_set=pa.array(forbidding, pa.string()))
            by_regions[key] = pc.or_(mask, pc.is_null(regions)) if unknown_forbids else mask
        masks[field] = by_regions[key]
    return masks


class SuppressRestrictedFn(RecordStage):
    """Yields a copy of each record without the fields its region forbids."""

    stage = "suppress"

    def __init__(self, forbidden: Mapping[str, frozenset[str]], known_regions: Iterable[str]):
        super().__init__()
        self._forbidden = dict(forbidden)
        self._known = frozenset(known_regions)
        self._all = frozenset().union(*self._forbidden.values()) if self._forbidden else frozenset()

    def one(self, record: Mapping[str, Any]) -> dict[str, Any]:
        region = record.get("region")
        forbidden = self._forbidden.get(region, frozenset()) if region in self._known else self._all
        present = [f for f in forbidden if record.get(f) not in (None, "")]
        if not present:
            return record if isinstance(record, dict) else dict(record)
        self.tally.add("suppressed.records")
        self.tally.add("suppressed.contact_fields", len(present))
        return {k: v for k, v in record.items() if k not in forbidden}

    def process_table(self, table: pa.Table) -> Iterator[TableBatch]:
        regions = text_column(table, "region")
        if regions is None:  # regions Python must judge one by one
            return self.fall_back(table, "region_not_text")
        fields = [f for f in sorted(self._all) if f in table.column_names]
        forbids = forbidding_rows(regions, self._forbidden, self._known, fields)
        found = {f: pc.and_(forbids[f], present(table.column(f))) for f in fields}
        rows = reduce(pc.or_, found.values()) if found else None
        if rows is not None and pc.any(rows).as_py():
            self.tally.add("suppressed.records", count(rows))
            self.tally.add("suppressed.contact_fields", sum(map(count, found.values())))
            self.tally.flush()
            for f in fields:
                column = table.column(f)
                drop = pc.and_(forbids[f], rows)
                kept = pc.if_else(drop, pa.scalar(None, column.type), column)
                table = with_column(table, f, kept)
        return iter((TableBatch(table),) if table.num_rows else ())


class SuppressRestrictedContacts(beam.PTransform):
    """Remove region-forbidden (corporate contact) fields from every record of a PCollection of
    batches (``transforms.batches``)."""

    def __init__(self, categories: Iterable[Category], known_regions: Iterable[str]) -> None:
        super().__init__()
        self._fn = SuppressRestrictedFn(forbidden_by_region(categories), known_regions)

    def expand(self, batches: beam.PCollection) -> beam.PCollection:
        return batches | "DropForbiddenFields" >> ApplyStage(self._fn)

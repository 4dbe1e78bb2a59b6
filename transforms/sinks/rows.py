"""Python rows gathered into Arrow tables for the spill: ``WritePartitioned`` (tagged row dicts
through :class:`WriteTables`) and, in ``deadletters``, the dead letters.

Rows are gathered per kind (category, source) and bundle into tables of up to
``DEFAULT_TABLE_ROWS`` rows, so that they take the same columnar, bounded-memory path as
tables built upstream.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import apache_beam as beam
import pyarrow as pa
from apache_beam.transforms.window import GlobalWindows

from schemas.arrow import to_arrow_table
from transforms.sinks.tables import WriteTables, no_schema

# Rows per table built from Python rows, per kind and bundle.
DEFAULT_TABLE_ROWS = 8192


class GatherTables(beam.DoFn):
    """Python rows -> ``(kind, table)`` per kind and bundle, of up to ``rows_per_table`` rows
    and, where :meth:`gather` knows the size of what it keeps, ``bytes_per_table`` bytes.

    What a row's kind is, what is kept of it until its table is built and how the kept items
    become a table is the subclass's."""

    def __init__(self, rows_per_table: int, bytes_per_table: int | None = None) -> None:
        self.rows_per_table = rows_per_table
        self.bytes_per_table = bytes_per_table

    def gather(self, row: Any) -> tuple[str, Any, int]:
        """``(kind, item, bytes)`` of ``row`` (bytes 0 if unknown); raise on a row that cannot
        be written."""
        raise NotImplementedError

    def table(self, kind: str, items: Sequence[Any]) -> pa.Table:
        raise NotImplementedError

    def start_bundle(self) -> None:
        self._items: dict[str, list[Any]] = {}
        self._bytes: dict[str, int] = {}

    def process(self, row: Any):
        kind, item, size = self.gather(row)
        items = self._items.get(kind)
        if items is None:
            items = self._items[kind] = []
            self._bytes[kind] = 0
        items.append(item)
        held = self._bytes[kind] = self._bytes[kind] + size
        full = self.bytes_per_table is not None and held >= self.bytes_per_table
        if full or len(items) >= self.rows_per_table:
            del self._items[kind], self._bytes[kind]
            yield self._emit(kind, items)

    def _emit(self, kind: str, items: Sequence[Any]):
        return GlobalWindows.windowed_value_at_end_of_window((kind, self.table(kind, items)))

    def finish_bundle(self):
        items, self._items, self._bytes = self._items, {}, {}
        for kind, batch in items.items():
            yield self._emit(kind, batch)


class _RowsToTables(GatherTables):
    """Row dicts -> ``(category, table)`` of the category's Arrow schema."""

    def __init__(self, arrow: Mapping[str, pa.Schema], rows_per_table: int) -> None:
        super().__init__(rows_per_table)
        self.arrow = dict(arrow)

    def gather(self, row: Any) -> tuple[str, Mapping[str, Any], int]:
        category = row.get("data_category") if isinstance(row, Mapping) else None
        if not isinstance(category, str) or category not in self.arrow:
            raise no_schema(
                "WritePartitioned", category, self.arrow, f"event_id={_event_id(row)!r}"
            )
        return category, row, 0

    def table(self, kind: str, rows: Sequence[Mapping[str, Any]]) -> pa.Table:
        return to_arrow_table(rows, self.arrow[kind])


def _event_id(row: object) -> object:
    return row.get("event_id") if isinstance(row, Mapping) else None


class WritePartitioned(WriteTables):
    """Write tagged rows as ``data_category=/expiry_date=`` Hive partitions.

    :class:`WriteTables` with row dicts in (its parameters, files and results): each category
    is written with its own Avro record schema (Parquet columns derived by
    ``schemas.arrow.arrow_schema``); columns not in a category's schema are dropped, which
    keeps the output to the policy's allow-list even if an upstream step added a field.
    The rows are turned into Arrow tables per category (up to ``DEFAULT_TABLE_ROWS`` rows per
    table and bundle) first.

    A row whose ``data_category`` has no schema raises ``ValueError`` and fails the
    pipeline: the Guard routes unknown categories to the dead letters earlier, so such a
    row here is a programming error, and failing closed beats writing it silently.
    """

    def to_tables(self, pcoll: beam.PCollection, suffix: str) -> beam.PCollection:
        gather = _RowsToTables(self.output.arrow, DEFAULT_TABLE_ROWS)
        return pcoll | f"ToTables{suffix}" >> beam.ParDo(gather)

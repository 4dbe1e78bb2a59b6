"""``WritePartitioned``: tagged row dicts written through :class:`WriteTables`.

Rows are gathered per category and bundle into Arrow tables of the category's schema, so the
data takes the same columnar, bounded-memory path as tables built upstream.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import apache_beam as beam
from apache_beam.transforms.window import GlobalWindows

from schemas.arrow import arrow_schema, to_arrow_table
from transforms.sinks.tables import WriteTables, _no_schema

# Rows per table WritePartitioned builds from row dicts, per category and bundle.
DEFAULT_TABLE_ROWS = 8192


class _RowsToTables(beam.DoFn):
    """Row dicts -> ``(category, table)`` of up to ``rows_per_table`` rows, per bundle."""

    def __init__(self, schemas: Mapping[str, Mapping[str, Any]], rows_per_table: int) -> None:
        self.schemas = {category: dict(schema) for category, schema in schemas.items()}
        self.rows_per_table = rows_per_table

    def setup(self) -> None:
        self._arrow = {c: arrow_schema(s) for c, s in self.schemas.items()}

    def start_bundle(self) -> None:
        self._rows: dict[str, list[Mapping[str, Any]]] = {}

    def process(self, row: Mapping[str, Any]):
        category = row.get("data_category") if isinstance(row, Mapping) else None
        if not isinstance(category, str) or category not in self._arrow:
            raise _no_schema(
                "WritePartitioned", category, self._arrow, f"event_id={_event_id(row)!r}"
            )
        rows = self._rows.get(category)
        if rows is None:
            rows = self._rows[category] = []
        rows.append(row)
        if len(rows) >= self.rows_per_table:
            del self._rows[category]
            yield self._table(category, rows)

    def _table(self, category: str, rows: list[Mapping[str, Any]]):
        table = to_arrow_table(rows, self._arrow[category])
        return GlobalWindows.windowed_value_at_end_of_window((category, table))

    def finish_bundle(self):
        rows, self._rows = self._rows, {}
        for category, batch in rows.items():
            yield self._table(category, batch)


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

    def expand(self, rows):
        tables = rows | "ToTables" >> beam.ParDo(_RowsToTables(self.schemas, DEFAULT_TABLE_ROWS))
        return super().expand(tables)

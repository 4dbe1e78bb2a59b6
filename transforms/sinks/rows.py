"""``WritePartitioned``: tagged row dicts written through :class:`WriteTables`.

Rows are gathered per category and bundle into Arrow tables of the category's schema, so the
data takes the same columnar, bounded-memory path as tables built upstream.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import apache_beam as beam
from apache_beam.transforms.window import GlobalWindows

from schemas.arrow import arrow_schema, to_arrow_table
from transforms.sinks.files import DEFAULT_AVRO_CODEC, DEFAULT_PARQUET_CODEC, DEFAULT_ROW_GROUP_SIZE
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


class WritePartitioned(beam.PTransform):
    """Write tagged rows as ``data_category=/expiry_date=`` Hive partitions.

    Each category is written with its own Avro record schema (Parquet columns derived by
    ``schemas.arrow.arrow_schema``); columns not in a category's schema are dropped, which
    keeps the output to the policy's allow-list even if an upstream step added a field.
    The rows are turned into Arrow tables per category (up to ``DEFAULT_TABLE_ROWS`` rows per
    table and bundle) and written by :class:`WriteTables`.

    A row whose ``data_category`` has no schema raises ``ValueError`` and fails the
    pipeline: the Guard routes unknown categories to the dead letters earlier, so such a
    row here is a programming error, and failing closed beats writing it silently.

    Returns the ``fileio.FileResult`` of every file written, all formats flattened, with
    ``file_name`` the full path.
    """

    def __init__(
        self,
        output_dir: str,
        schemas: Mapping[str, dict],
        formats: Sequence[str] = ("parquet",),
        shards_per_partition: int | None = None,
        *,
        parquet_codec: str = DEFAULT_PARQUET_CODEC,
        avro_codec: str = DEFAULT_AVRO_CODEC,
        row_group_size: int = DEFAULT_ROW_GROUP_SIZE,
        run_token: str | None = None,
    ) -> None:
        super().__init__()
        if not schemas:
            raise ValueError("WritePartitioned needs at least one category schema")
        self._tables = WriteTables(
            output_dir,
            schemas,
            formats,
            shards_per_partition,
            parquet_codec=parquet_codec,
            avro_codec=avro_codec,
            row_group_size=row_group_size,
            run_token=run_token,
        )
        self.output_dir = output_dir
        self.schemas = self._tables.schemas
        self.formats = self._tables.formats
        self.shards = self._tables.shards
        self.run_token = self._tables.run_token
        self.parquet_codec = parquet_codec
        self.avro_codec = avro_codec
        self.row_group_size = row_group_size

    def expand(self, rows):
        tables = rows | "ToTables" >> beam.ParDo(_RowsToTables(self.schemas, DEFAULT_TABLE_ROWS))
        return tables | "WriteTables" >> self._tables

"""Read and rewrite single files of the layout, keeping their own schema and codec.

A rewrite must leave every row it keeps identical in content: a Parquet file is filtered as an
Arrow table and written back with the schema read from the file and the codec of its column
chunks; an Avro file is written back with its own writer schema and codec; a dead-letter file
keeps its lines byte for byte. New files (rows a lifecycle event moves to another partition)
are written by the project's own sinks (``transforms.sinks``), with the category's current
output schema.

Everything goes through Beam's ``FileSystems``: local disks, ``gs://``, ``s3://``.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from typing import Any

import fastavro
import pyarrow as pa
import pyarrow.parquet as pq
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

from transforms.retention.matching import string_table
from transforms.sinks import DEFAULT_PARQUET_CODEC, DEFAULT_ROW_GROUP_SIZE

__all__ = [
    "AvroContent",
    "TableFile",
    "ensure_parent",
    "micros",
    "parquet_codec",
    "read_avro",
    "read_bytes",
    "read_lines",
    "read_parquet",
    "rows_with_micros",
    "write_avro",
    "write_lines",
    "write_parquet",
]

_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_ONE_US = dt.timedelta(microseconds=1)


def ensure_parent(path: str) -> None:
    """Create the directory ``path`` goes into (only where the filesystem has directories:
    object stores need none)."""
    if not FileSystems.get_filesystem(path).has_dirs():
        return
    parent, _ = FileSystems.split(path)
    if parent and not FileSystems.exists(parent):
        try:
            FileSystems.mkdirs(parent)
        except OSError:
            if not FileSystems.exists(parent):  # a concurrent worker may have made it
                raise


def _open(path: str):
    return FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED)


def _create(path: str):
    ensure_parent(path)
    return FileSystems.create(path, compression_type=CompressionTypes.UNCOMPRESSED)


def read_bytes(path: str) -> bytes:
    with _open(path) as fh:
        return fh.read()


# ----------------------------------------------------------------------------------- Parquet


def read_parquet(path: str, columns: Sequence[str] | None = None) -> pa.Table:
    """The file as a table; with ``columns``, only those of them the file has (projection)."""
    with _open(path) as fh:
        parquet = pq.ParquetFile(fh)
        if columns is not None:
            present = set(parquet.schema_arrow.names)
            columns = [c for c in columns if c in present]
        return parquet.read(columns=columns)


def _codec_of(meta: pq.FileMetaData) -> str:
    if meta.num_row_groups == 0 or meta.num_columns == 0:
        return DEFAULT_PARQUET_CODEC
    return str(meta.row_group(0).column(0).compression).lower()


def parquet_codec(path: str) -> str:
    """The compression codec of the file's first column chunk (what the rewrite keeps)."""
    with _open(path) as fh:
        return _codec_of(pq.ParquetFile(fh).metadata)


def read_parquet_with_codec(path: str) -> tuple[pa.Table, str]:
    """The whole file and its codec, in one read."""
    with _open(path) as fh:
        parquet = pq.ParquetFile(fh)
        return parquet.read(), _codec_of(parquet.metadata)


def write_parquet(path: str, table: pa.Table, codec: str = DEFAULT_PARQUET_CODEC) -> None:
    """Write ``table`` with its own schema (create-or-overwrite ``path``)."""
    with _create(path) as fh:
        writer = pq.ParquetWriter(fh, table.schema, compression=codec)
        writer.write_table(table, row_group_size=DEFAULT_ROW_GROUP_SIZE)
        writer.close()


# -------------------------------------------------------------------------------------- Avro


class AvroContent:
    """An Avro container file read whole: its records, writer schema and codec."""

    def __init__(self, records: list[dict[str, Any]], schema: dict[str, Any], codec: str):
        self.records = records
        self.schema = schema
        self.codec = codec


def read_avro(path: str) -> AvroContent:
    with _open(path) as fh:
        reader = fastavro.reader(fh)
        records = list(reader)
        codec = reader.metadata.get("avro.codec", "null")
        if isinstance(codec, bytes):
            codec = codec.decode("ascii")
        return AvroContent(records, reader.writer_schema, codec)


def write_avro(
    path: str, schema: Mapping[str, Any], records: Sequence[Mapping[str, Any]], codec: str
) -> None:
    with _create(path) as fh:
        fastavro.writer(fh, fastavro.parse_schema(dict(schema)), list(records), codec=codec)


# ------------------------------------------------------------------------------ JSON Lines


def read_lines(path: str) -> list[bytes]:
    """The file's lines, each without its newline (empty trailing line dropped)."""
    data = read_bytes(path)
    lines = data.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    return lines


def write_lines(path: str, lines: Sequence[bytes]) -> None:
    with _create(path) as fh:
        for line in lines:
            fh.write(line)
            fh.write(b"\n")


# ------------------------------------------------------------------------- rows for Beam


def micros(value: Any) -> Any:
    """A timestamp as int epoch microseconds (the pipeline convention); others unchanged."""
    if isinstance(value, dt.datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=dt.UTC)
        return (value - _EPOCH) // _ONE_US
    return value


def rows_with_micros(table: pa.Table) -> list[dict[str, Any]]:
    """Rows of ``table`` as dicts of primitives, timestamps as int epoch microseconds.

    Casting the timestamp columns to int64 keeps the exact stored value (no datetime round trip).
    """
    columns = []
    for field, column in zip(table.schema, table.columns, strict=True):
        if pa.types.is_timestamp(field.type):
            column = column.cast(pa.int64())
        columns.append(column)
    return pa.Table.from_arrays(columns, names=table.column_names).to_pylist()


# ------------------------------------------------------------------ one file, matched and cut


class TableFile:
    """A Parquet or Avro file of the layout read whole, to be matched and rewritten without
    some of its rows (the kept rows stay identical, with the file's own schema and codec)."""

    def __init__(self, path: str, fmt: str) -> None:
        if fmt not in ("parquet", "avro"):
            raise ValueError(f"not a table format: {fmt!r}")
        self.path = path
        self.format = fmt
        if fmt == "parquet":
            self._table, self._codec = read_parquet_with_codec(path)
            self._avro = None
        else:
            self._avro = read_avro(path)
            self._table = None

    @property
    def num_rows(self) -> int:
        return self._table.num_rows if self._table is not None else len(self._avro.records)

    @property
    def column_names(self) -> list[str]:
        if self._table is not None:
            return list(self._table.column_names)
        return [f["name"] for f in self._avro.schema.get("fields", [])]

    def columns(self, names: Sequence[str]) -> pa.Table:
        """The named columns the file has, for matching (Avro values as text)."""
        present = [n for n in names if n in self.column_names]
        if self._table is not None:
            return self._table.select(present)
        return string_table(self._avro.records, present)

    def values(self, column: str, rows: Sequence[int]) -> list[Any]:
        if self._table is not None:
            if column not in self._table.column_names:
                return [None] * len(rows)
            return self._table.column(column).take(pa.array(rows, pa.int64())).to_pylist()
        return [self._avro.records[r].get(column) for r in rows]

    def rows(self, rows: Sequence[int]) -> list[dict[str, Any]]:
        """Those rows as dicts of primitives, timestamps as int epoch microseconds."""
        if self._table is not None:
            return rows_with_micros(self._table.take(pa.array(rows, pa.int64())))
        return [{k: micros(v) for k, v in self._avro.records[r].items()} for r in rows]

    def records(self, rows: Sequence[int]) -> list[dict[str, Any]]:
        """Those rows as stored, for people to read (timestamps as datetimes, not micros)."""
        if self._table is not None:
            return self._table.take(pa.array(rows, pa.int64())).to_pylist()
        return [dict(self._avro.records[r]) for r in rows]

    def write_without(self, path: str, drop: set[int]) -> int:
        """Write the file minus the rows ``drop`` to ``path``; returns the rows kept."""
        keep = [i for i in range(self.num_rows) if i not in drop]
        if self._table is not None:
            write_parquet(path, self._table.take(pa.array(keep, pa.int64())), self._codec)
        else:
            records = self._avro.records
            write_avro(path, self._avro.schema, [records[i] for i in keep], self._avro.codec)
        return len(keep)

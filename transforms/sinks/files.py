"""The file writers: Parquet, Avro and JSON Lines files from Arrow data, and codec checks.

Every writer takes a handle it does not own (a Beam ``FileSystems`` handle or a local file)
and finishes the file without closing it, so the caller decides where the bytes go. Parquet
is written in row groups of exactly ``row_group_size`` rows; Avro gets the values the row
path gave fastavro, so both formats hold the same instants; JSON Lines (dead letters) are
lines already encoded, written as they are.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Mapping
from typing import Any

import fastavro
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from apache_beam.io import fileio
from apache_beam.io.fileio import FileMetadata
from apache_beam.io.filesystem import CompressionTypes

from schemas.arrow import to_arrow_table

_LOG = logging.getLogger(__name__)

MIME_TYPES = {
    "parquet": "application/vnd.apache.parquet",
    "avro": "application/avro",
    "jsonl": "application/x-ndjson",
}

DEFAULT_ROW_GROUP_SIZE = 64 * 1024
DEFAULT_PARQUET_CODEC = "snappy"
# fastavro's snappy codec needs the optional `cramjam` package; deflate needs nothing.
DEFAULT_AVRO_CODEC = "deflate"
DEFAULT_AVRO_SYNC_INTERVAL = 256 * 1024  # bytes per Avro block before it is compressed
# Rows converted to Python at a time for fastavro (bounds the Python objects alive).
_AVRO_CHUNK_ROWS = 4096
# Lines converted to Python at a time for a JSON Lines file.
_TEXT_CHUNK_ROWS = 4096


def check_parquet_codec(codec: str) -> str:
    codec = codec.lower()
    if codec in ("none", "uncompressed"):
        return codec
    try:
        available = pa.Codec.is_available(codec)
    except ValueError:  # a name pyarrow does not know at all
        available = False
    if not available:
        raise ValueError(f"Parquet codec {codec!r} is not available in this pyarrow build")
    return codec


def check_row_group_size(row_group_size: int) -> int:
    if row_group_size < 1:
        raise ValueError(f"row_group_size must be >= 1, got {row_group_size}")
    return row_group_size


def check_avro_codec(codec: str) -> str:
    """Write one tiny block: fastavro only reports a missing codec library when used."""
    try:
        fastavro.writer(io.BytesIO(), {"type": "string"}, ["x"], codec=codec)
    except ValueError as err:
        raise ValueError(
            f"Avro codec {codec!r} is not usable with this fastavro installation "
            f"({err}); use 'deflate'"
        ) from err
    return codec


def floor_div(values: Any, divisor: int) -> Any:
    """Integer floor division (Arrow's ``divide`` truncates toward zero); nulls stay null."""
    quotient = pc.divide(values, divisor)
    below = pc.less(values, pc.multiply(quotient, divisor))
    return pc.subtract(quotient, pc.cast(below, pa.int64()))


def micros_column(column: Any) -> Any:
    """Epoch microseconds (int64) of a timestamp or integer column."""
    if pa.types.is_timestamp(column.type):
        if column.type.unit != "us":
            column = pc.cast(column, pa.timestamp("us", tz=column.type.tz))
        return pc.cast(column, pa.int64())
    if pa.types.is_integer(column.type):
        return pc.cast(column, pa.int64())
    raise TypeError(f"expected a timestamp or integer column, got {column.type}")


# Rows of a file's first row group that decide which of its columns are dictionary-encoded.
_DICTIONARY_SAMPLE_ROWS = 4096


def _dictionary_columns(sample: pa.Table) -> list[str] | bool:
    """The columns worth dictionary-encoding: at most one distinct value per two rows in the
    sample (and those whose values Arrow cannot count, as Parquet's default would).

    Why: Parquet dictionary-encodes every column by default, and for mostly distinct values
    (event ids, timestamps, e-mail addresses) it builds the dictionary only to fall back to
    plain encoding; choosing per column wrote the 1M-visit outputs in 25% less time, and
    smaller."""
    sample = sample.slice(0, _DICTIONARY_SAMPLE_ROWS)
    if not sample.num_rows:
        return True
    chosen = []
    for name in sample.column_names:
        try:
            distinct = pc.count_distinct(sample.column(name)).as_py()
        except pa.ArrowNotImplementedError:
            distinct = 0
        if 2 * distinct <= sample.num_rows:
            chosen.append(name)
    return chosen


class ParquetFileWriter:
    """A Parquet file written from Arrow data in row groups of exactly ``row_group_size`` rows
    (the last one excepted): small inputs are coalesced, so memory is about one row group.
    The writer opens with the first row group, whose rows choose the dictionary-encoded
    columns (:func:`_dictionary_columns`)."""

    def __init__(self, handle, schema: pa.Schema, codec: str, row_group_size: int) -> None:
        self._handle = handle
        self._schema = schema
        self._codec = codec
        self._writer: pq.ParquetWriter | None = None
        self._size = row_group_size
        self._pending: list[pa.Table] = []
        self._rows = 0

    def _write(self, table: pa.Table) -> None:
        if self._writer is None:
            self._writer = pq.ParquetWriter(
                self._handle,
                self._schema,
                compression=self._codec,
                use_dictionary=_dictionary_columns(table),
            )
        self._writer.write_table(table, row_group_size=self._size)

    def write(self, data: pa.Table | pa.RecordBatch) -> None:
        if isinstance(data, pa.RecordBatch):
            data = pa.Table.from_batches([data])
        self._pending.append(data)
        self._rows += data.num_rows
        if self._rows < self._size:
            return
        table = pa.concat_tables(self._pending)
        full = self._rows - self._rows % self._size
        self._write(table.slice(0, full))
        rest = table.slice(full)
        self._pending = [rest] if rest.num_rows else []
        self._rows = rest.num_rows

    def close(self) -> None:
        if self._pending:
            self._write(pa.concat_tables(self._pending))
            self._pending = []
        elif self._writer is None:  # no rows at all: a file of the schema only
            self._writer = pq.ParquetWriter(self._handle, self._schema, compression=self._codec)
        self._writer.close()  # writes the footer; does not close the file handle

    def abort(self) -> None:
        """Release the writer after a failure (the file is garbage and will be deleted)."""
        try:
            if self._writer is not None:
                self._writer.close()
        except Exception:  # whatever it is, the original error is the one to report
            _LOG.debug("closing an aborted Parquet writer failed", exc_info=True)


class ParquetSink(fileio.FileSink):
    """Buffers rows and writes them as compressed Parquet row groups (a ``fileio.FileSink``).

    The pipelines write Parquet columnar (``WriteTables``); this row-at-a-time sink stays for
    writing a file of row dicts through ``fileio.WriteToFiles`` or by hand (the tests write
    sample partitions with it), with the same codec and row-group defaults. Rows are buffered
    up to ``row_group_size`` and converted column-wise (``schemas.arrow.to_arrow_table``), so
    memory is bounded by one row group, and each row group goes to :class:`ParquetFileWriter`.

    ``flush`` finishes the file (Parquet has a footer); call it once, right before closing
    the handle (``WriteToFiles`` does).
    """

    def __init__(
        self,
        schema: pa.Schema,
        codec: str = DEFAULT_PARQUET_CODEC,
        row_group_size: int = DEFAULT_ROW_GROUP_SIZE,
    ) -> None:
        self.row_group_size = check_row_group_size(row_group_size)
        self.codec = check_parquet_codec(codec)
        self.schema = schema
        self._file: ParquetFileWriter | None = None
        self._rows: list[Mapping[str, Any]] = []
        self._closed = False

    def create_metadata(self, destination: str, full_file_name: str) -> FileMetadata:
        # Compression is inside the file (per column chunk), never around it.
        return FileMetadata(
            mime_type=MIME_TYPES["parquet"], compression_type=CompressionTypes.UNCOMPRESSED
        )

    def open(self, fh) -> None:
        self._file = ParquetFileWriter(fh, self.schema, self.codec, self.row_group_size)
        self._rows = []
        self._closed = False

    def write(self, record: Mapping[str, Any]) -> None:
        if self._closed:
            raise RuntimeError("ParquetSink.write after flush: a Parquet file cannot be appended")
        self._rows.append(record)
        if len(self._rows) >= self.row_group_size:
            self._write_rows()

    def _write_rows(self) -> None:
        self._file.write(to_arrow_table(self._rows, self.schema))
        self._rows = []

    def flush(self) -> None:
        if self._closed or self._file is None:
            return
        if self._rows:
            self._write_rows()
        self._file.close()  # writes the footer; does not close the Beam file handle
        self._closed = True


def _timestamp_millis_fields(avro_schema: Mapping[str, Any]) -> tuple[str, ...]:
    def is_millis(avro_type: Any) -> bool:
        if isinstance(avro_type, list):
            return any(is_millis(branch) for branch in avro_type)
        return isinstance(avro_type, Mapping) and avro_type.get("logicalType") == (
            "timestamp-millis"
        )

    return tuple(f["name"] for f in avro_schema.get("fields", ()) if is_millis(f.get("type")))


def _avro_records(data: pa.Table | pa.RecordBatch, millis: frozenset[str]) -> list[dict]:
    """Row dicts for fastavro, with the values the row path gives it: top-level timestamps as
    int micros (floored to millis for ``timestamp-millis`` fields), dates as int days."""
    names = data.schema.names
    columns = []
    for name, column in zip(names, data.columns, strict=True):
        if pa.types.is_timestamp(column.type):
            column = micros_column(column)
            if name in millis:
                column = floor_div(column, 1000)
        elif pa.types.is_date32(column.type):
            column = pc.cast(column, pa.int32())
        columns.append(column.to_pylist())
    return [dict(zip(names, values, strict=True)) for values in zip(*columns, strict=True)]


class AvroFileWriter:
    """An Avro container file written from Arrow data with fastavro.

    Blocks are buffered by fastavro up to ``sync_interval`` bytes and compressed with
    ``codec`` (deflate by default: it needs no extra package; snappy requires ``cramjam``).
    Fields declared ``timestamp-millis`` get the instant floored to the millisecond, so Avro
    holds the same instant as Parquet, to the millisecond.
    """

    def __init__(
        self,
        handle,
        avro_schema: Mapping[str, Any],
        codec: str = DEFAULT_AVRO_CODEC,
        sync_interval: int = DEFAULT_AVRO_SYNC_INTERVAL,
        parsed: Any = None,
    ) -> None:
        if parsed is None:
            parsed = fastavro.parse_schema(dict(avro_schema))
        self._handle = handle
        self._millis = frozenset(_timestamp_millis_fields(avro_schema))
        self._writer = fastavro.write.Writer(
            handle, parsed, codec=codec, sync_interval=sync_interval
        )

    def write(self, data: pa.Table | pa.RecordBatch) -> None:
        write = self._writer.write
        for start in range(0, data.num_rows, _AVRO_CHUNK_ROWS):
            for record in _avro_records(data.slice(start, _AVRO_CHUNK_ROWS), self._millis):
                write(record)

    def close(self) -> None:
        self._writer.flush()  # Avro has no footer: flushing the last block finishes it
        self._handle.flush()

    def abort(self) -> None:
        """Nothing to release: fastavro holds no resource besides the handle."""


class JsonLinesFileWriter:
    """A JSON Lines file of the ``column`` of Arrow data: each value is one line, written
    UTF-8 as it is (the producer made it a JSON object), followed by a newline. Converted to
    Python ``_TEXT_CHUNK_ROWS`` values at a time (bounds the Python objects alive)."""

    def __init__(self, handle, column: str) -> None:
        self._handle = handle
        self._column = column

    def write(self, data: pa.Table | pa.RecordBatch) -> None:
        column = data.column(self._column)
        for start in range(0, data.num_rows, _TEXT_CHUNK_ROWS):
            lines = column.slice(start, _TEXT_CHUNK_ROWS).to_pylist()
            self._handle.write("\n".join(lines).encode("utf-8") + b"\n")

    def close(self) -> None:
        self._handle.flush()

    def abort(self) -> None:
        """Nothing to release: the lines go straight to the handle."""

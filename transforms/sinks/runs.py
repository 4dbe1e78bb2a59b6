"""Destination keys of Arrow rows, and the sorted runs the spill writes them into.

A destination key is one int64 per row, ``expiry day * shards + shard``, computed with Arrow
kernels, so that a bundle is sorted by destination with one sort and one ``take`` instead of
Python per row. A sorted run is an Arrow IPC *file*: random access, so ``Compact`` reads the
record batches of its destination (a :data:`RunSlice`) without the others'. Data rows and
dead letters alike: only the directory of a destination and the column a row is sharded by
differ (``tables.TableOutput``).
"""

from __future__ import annotations

import datetime as dt
import json
import zlib
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

from transforms.sinks.files import floor_div, micros_column
from transforms.sinks.layout import Destination

_MICROS_PER_DAY = 86_400_000_000
# Day key of open-ended rows (null expires_at; written to layout.OPEN_ENDED_EXPIRY_DATE): beyond
# any day an int64 of microseconds can reach (~1e8), so never the key of a real expiry day.
_NULL_DAY = 1 << 32
# Rows per record batch in a temp file.
_RUN_BATCH_ROWS = 64 * 1024
_IPC_MIME = "application/vnd.apache.arrow.file"
IPC_EXTENSION = ".arrow"
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)

# Where a destination's rows are in a temp file: (path, first record batch, batch count).
RunSlice = tuple[str, int, int]


def _key_row(table: pa.Table, index: int) -> dict[str, Any]:
    """One row as the row path had it (timestamps as int micros), to shard it by its JSON."""
    row = table.slice(index, 1).to_pylist()[0]
    return {
        name: (value - _EPOCH) // dt.timedelta(microseconds=1)
        if isinstance(value, dt.datetime)
        else value
        for name, value in row.items()
    }


def _row_shards(table: pa.Table, shards: int, shard_key: str) -> pa.Array:
    """Shard of every row: CRC32 of its ``shard_key`` column (of its canonical JSON where that
    is not a string)."""
    if shard_key in table.column_names:
        ids = table.column(shard_key).to_pylist()
    else:
        ids = [None] * table.num_rows
    crc32 = zlib.crc32
    out = []
    for index, key in enumerate(ids):
        if not isinstance(key, str):
            key = json.dumps(_key_row(table, index), sort_keys=True, default=str)
        out.append(crc32(key.encode("utf-8", "surrogatepass")) % shards)
    return pa.array(out, pa.int64())


def destination_keys(table: pa.Table, shards: int, shard_key: str) -> pa.ChunkedArray:
    """One int64 per row: ``expiry day * shards + shard`` (the day of open-ended rows is
    ``_NULL_DAY``), computed with Arrow kernels; Python per row only when ``shards`` > 1."""
    if "expires_at" in table.column_names:
        days = floor_div(micros_column(table.column("expires_at")), _MICROS_PER_DAY)
        days = pc.fill_null(days, _NULL_DAY)
    else:
        days = pc.fill_null(pa.nulls(table.num_rows, pa.int64()), _NULL_DAY)
    if shards > 1:
        days = pc.add(pc.multiply(days, shards), _row_shards(table, shards, shard_key))
    return days if isinstance(days, pa.ChunkedArray) else pa.chunked_array([days])


def destination_of_key(
    kind: str, key: int, shards: int, directory: Callable[[str | None, int | None], str]
) -> Destination:
    """The destination of a key; ``directory`` is the storage layout's ``data_path`` or
    ``dead_letter_path`` (``tables.directory_of``)."""
    day, shard = divmod(key, shards)
    expires_at = None if day == _NULL_DAY else day * _MICROS_PER_DAY
    return kind, directory(kind, expires_at), shard, shards


def sort_run(
    tables: Sequence[pa.Table], keys: Sequence[pa.ChunkedArray]
) -> tuple[pa.Table, list[tuple[int, int, int]]]:
    """The rows of ``tables`` sorted (stably) by destination key, and ``(key, offset, rows)``
    of every key in that order: one sort and one ``take`` for the whole run, no Python per
    row; a run with a single key is not copied at all."""
    table = tables[0] if len(tables) == 1 else pa.concat_tables(tables)
    keys = pa.chunked_array([chunk for k in keys for chunk in k.chunks], type=pa.int64())
    counts = pc.value_counts(keys)
    if len(counts) > 1:
        table = table.take(pc.sort_indices(keys))
        by_value = pc.sort_indices(counts.field("values"))
        counts = counts.take(by_value)
    spans = []
    offset = 0
    for value, size in zip(
        counts.field("values").to_pylist(), counts.field("counts").to_pylist(), strict=True
    ):
        spans.append((value, offset, size))
        offset += size
    return table, spans


def write_run(path: str, table: pa.Table, spans: Sequence[tuple[int, int, int]]):
    """Write a sorted run as an Arrow IPC *file* (random access: a destination's batches are
    read without the others'); returns ``(key, first batch, batch count)`` per key."""
    handle = FileSystems.create(
        path, mime_type=_IPC_MIME, compression_type=CompressionTypes.UNCOMPRESSED
    )
    placed = []
    try:
        with pa.ipc.new_file(handle, table.schema) as writer:
            index = 0
            for key, offset, size in spans:
                first = index
                for batch in table.slice(offset, size).to_batches(max_chunksize=_RUN_BATCH_ROWS):
                    if batch.num_rows:
                        writer.write_batch(batch)
                        index += 1
                placed.append((key, first, index - first))
    finally:
        handle.close()
    return placed


def read_run(path: str, first: int, count: int) -> Iterator[pa.RecordBatch]:
    handle = FileSystems.open(
        path, mime_type=_IPC_MIME, compression_type=CompressionTypes.UNCOMPRESSED
    )
    try:
        reader = pa.ipc.open_file(handle)
        for index in range(first, first + count):
            yield reader.get_batch(index)
    finally:
        handle.close()

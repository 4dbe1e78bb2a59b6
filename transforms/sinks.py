"""Hive-partitioned sinks: the last step of every pipeline.

Layout under the output directory (DESIGN.md section 3)::

    data_category=<category>/expiry_date=<YYYY-MM-DD>/part-<shard>-of-<n>-<token>.parquet|.avro
    data_category=<category>/expiry_date=__HIVE_DEFAULT_PARTITION__/...   (expires_at is None)
    _dead_letter/source=<source>/expiry_date=<YYYY-MM-DD>/part-<shard>-of-<n>-<token>.jsonl

Why partition by expiry date: retention is enforced by deleting whole directories
(``pipelines.purge``), never by rewriting files, so every file must hold rows that expire
on the same UTC day. ``expiry_date`` is the UTC calendar date of ``expires_at`` (int epoch
microseconds); open-ended retention (``expires_at`` None) goes to Hive's null partition.

How files are bounded (DESIGN.md section 5): a destination is ``(partition, shard)``, the
shard a CRC32 of the row's ``event_id`` (always 0 with one shard per partition, the default),
and every destination gets exactly one file per format per run, whatever the bundling of the
runner; a given row always lands in the same shard.

The data is written columnar (:class:`WriteTables`; :class:`WritePartitioned` turns its rows
into Arrow tables first), in two steps, so that memory stays flat however much data comes in:

1. ``BufferPartitions`` computes the destination of every row with Arrow compute kernels (no
   Python per row unless rows are sharded) and buffers the tables of the bundle. When they
   hold half of ``buffer_bytes`` (64 MiB by default; sorting them makes a copy of the same
   size), and at the end of the bundle, it sorts them by destination (one sort, one ``take``)
   and spills them as one Arrow IPC file per category, a *sorted run* under
   ``<output_dir>/.temp-<token>-tables-<formats>/``, and emits ``(destination, (file, first
   record batch, batch count))`` for every destination in the run.
2. Only these references cross the ``GroupByKey`` (the previous design sent every *row*
   through it: on the FnApiRunner a GroupByKey is held in memory, ~2 KB per row, 5 GiB at
   1M rows). ``Compact`` then reads the batches of its destination from every run (IPC files
   are random access: the other destinations' batches are not read) and streams them into
   one final file per format: Parquet row groups of exactly ``row_group_size`` rows (small
   pieces coalesced), Avro blocks via fastavro. The files are written in the temp directory
   and renamed into the layout (the partition directory is created first where the file
   system has directories; object stores need none). The temp directory is deleted once
   every destination is written, so a retried ``Compact`` bundle finds its runs again.

A worker therefore holds about ``buffer_bytes`` plus one row group per destination being
compacted, whatever the input size; the shuffle is a few bytes per destination and run; and
there is one temp file per category and run, not one per destination, which matters on
object stores. The price is disk (or bucket) space: the runs, uncompressed Arrow, stay until
the end of the write.

Dead letters are few and keep the simpler row path (Beam's ``fileio.WriteToFiles`` with every
record grouped by destination); two things ``WriteToFiles`` does not do on its own are
handled there:

- Its final rename does not create sub-directories and, on a hierarchical file system,
  *swallows* the failed rename (the file silently stays in the temp directory). The file
  naming therefore creates the partition directory through ``FileSystems.mkdirs`` (only
  where ``has_dirs()``; object stores need none), and every moved file is checked with
  ``FileSystems.exists`` afterwards, so a lost file fails the pipeline loudly.
- Its temp directory is left behind; it is removed once it is empty.

File names carry a short run token so that a later run writing into the same partition
(late events expire on the same day) adds files instead of overwriting earlier ones.
"""

from __future__ import annotations

import base64
import datetime as dt
import io
import json
import logging
import operator
import urllib.parse
import uuid
import zlib
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

import apache_beam as beam
import fastavro
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from apache_beam.io import fileio
from apache_beam.io.fileio import FileMetadata
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems
from apache_beam.options.value_provider import StaticValueProvider
from apache_beam.transforms.window import GlobalWindow, GlobalWindows

from schemas.arrow import arrow_schema, to_arrow_table
from transforms.counters import counter
from transforms.timestamps import format_utc, utc_date

__all__ = [
    "DEAD_LETTER_DIR",
    "FORMATS",
    "HIVE_NULL_PARTITION",
    "JsonLinesSink",
    "ParquetSink",
    "WriteDeadLetters",
    "WritePartitioned",
    "WriteTables",
    "dead_letter_json",
    "dead_letter_path",
    "dead_letter_reason",
    "expiry_date",
    "micros_to_iso",
    "partition_path",
]

_LOG = logging.getLogger(__name__)

HIVE_NULL_PARTITION = "__HIVE_DEFAULT_PARTITION__"
DEAD_LETTER_DIR = "_dead_letter"
FORMATS = ("parquet", "avro")
EXTENSIONS = {"parquet": ".parquet", "avro": ".avro", "jsonl": ".jsonl"}
MIME_TYPES = {"parquet": "application/vnd.apache.parquet", "avro": "application/avro"}

DEFAULT_ROW_GROUP_SIZE = 64 * 1024
DEFAULT_PARQUET_CODEC = "snappy"
# fastavro's snappy codec needs the optional `cramjam` package; deflate needs nothing.
DEFAULT_AVRO_CODEC = "deflate"
DEFAULT_AVRO_SYNC_INTERVAL = 256 * 1024  # bytes per Avro block before it is compressed
# Bytes of Arrow data one BufferPartitions instance (one bundle) keeps before it spills.
DEFAULT_BUFFER_BYTES = 64 * 1024 * 1024
# Rows per table WritePartitioned builds from row dicts, per category and bundle.
DEFAULT_TABLE_ROWS = 8192

# --------------------------------------------------------------------------- helpers


def _check_micros(value: object, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{what} must be int epoch microseconds or None, got {value!r}")
    return value


def expiry_date(expires_at_micros: int | None) -> str:
    """UTC calendar date ``YYYY-MM-DD`` of ``expires_at``, or Hive's null partition name."""
    if expires_at_micros is None:
        return HIVE_NULL_PARTITION
    return utc_date(_check_micros(expires_at_micros, "expires_at"))


def micros_to_iso(micros: int) -> str:
    """ISO-8601 UTC string with a ``Z`` suffix (microseconds only when non-zero)."""
    return format_utc(_check_micros(micros, "timestamp"))


def _hive_value(value: object) -> str:
    """Partition value: None/empty -> Hive's null partition, else URI-escaped.

    Escaping keeps a value from adding a directory level ('/') or a bogus key ('=');
    pyarrow's hive partitioning (segment_encoding="uri") decodes it back.
    """
    if value is None or value == "":
        return HIVE_NULL_PARTITION
    return urllib.parse.quote(str(value), safe="")


def partition_path(category: str, expires_at: int | None) -> str:
    """Relative directory of a data row: ``data_category=<c>/expiry_date=<d>``."""
    return f"data_category={_hive_value(category)}/expiry_date={expiry_date(expires_at)}"


def dead_letter_path(source: str | None, expires_at: int | None) -> str:
    """Relative directory of a dead letter: ``_dead_letter/source=<s>/expiry_date=<d>``."""
    return f"{DEAD_LETTER_DIR}/source={_hive_value(source)}/expiry_date={expiry_date(expires_at)}"


# ----------------------------------------------------------------------------- sinks


def _check_parquet_codec(codec: str) -> str:
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


class ParquetSink(fileio.FileSink):
    """Buffers rows and writes them as compressed Parquet row groups (a ``fileio.FileSink``).

    The pipelines write Parquet columnar (:class:`WriteTables`); this row-at-a-time sink
    stays for writing a file of row dicts through ``fileio.WriteToFiles`` or by hand (tests
    and tools write sample partitions with it), with the same codec and row-group defaults.
    Rows are buffered up to ``row_group_size`` and converted column-wise
    (``schemas.arrow.to_arrow_table``), so memory is bounded by one row group, and each row
    group is one ``write_table`` call.

    ``flush`` finishes the file (Parquet has a footer); call it once, right before closing
    the handle (``WriteToFiles`` does).
    """

    def __init__(
        self,
        schema: pa.Schema,
        codec: str = DEFAULT_PARQUET_CODEC,
        row_group_size: int = DEFAULT_ROW_GROUP_SIZE,
    ) -> None:
        if row_group_size < 1:
            raise ValueError(f"row_group_size must be >= 1, got {row_group_size}")
        codec = _check_parquet_codec(codec)
        self.schema = schema
        self.codec = codec
        self.row_group_size = row_group_size
        self._writer: pq.ParquetWriter | None = None
        self._rows: list[Mapping[str, Any]] = []
        self._closed = False

    def create_metadata(self, destination: str, full_file_name: str) -> FileMetadata:
        # Compression is inside the file (per column chunk), never around it.
        return FileMetadata(
            mime_type="application/vnd.apache.parquet",
            compression_type=CompressionTypes.UNCOMPRESSED,
        )

    def open(self, fh) -> None:
        self._writer = pq.ParquetWriter(fh, self.schema, compression=self.codec)
        self._rows = []
        self._closed = False

    def write(self, record: Mapping[str, Any]) -> None:
        if self._closed:
            raise RuntimeError("ParquetSink.write after flush: a Parquet file cannot be appended")
        self._rows.append(record)
        if len(self._rows) >= self.row_group_size:
            self._write_row_group()

    def _write_row_group(self) -> None:
        table = to_arrow_table(self._rows, self.schema)
        self._writer.write_table(table, row_group_size=self.row_group_size)
        self._rows = []

    def flush(self) -> None:
        if self._closed or self._writer is None:
            return
        if self._rows:
            self._write_row_group()
        self._writer.close()  # writes the footer; does not close the Beam file handle
        self._closed = True


def _check_avro_codec(codec: str) -> str:
    """Write one tiny block: fastavro only reports a missing codec library when used."""
    try:
        fastavro.writer(io.BytesIO(), {"type": "string"}, ["x"], codec=codec)
    except ValueError as err:
        raise ValueError(
            f"Avro codec {codec!r} is not usable with this fastavro installation "
            f"({err}); use 'deflate'"
        ) from err
    return codec


def _timestamp_millis_fields(avro_schema: Mapping[str, Any]) -> tuple[str, ...]:
    def is_millis(avro_type: Any) -> bool:
        if isinstance(avro_type, list):
            return any(is_millis(branch) for branch in avro_type)
        return isinstance(avro_type, Mapping) and avro_type.get("logicalType") == (
            "timestamp-millis"
        )

    return tuple(f["name"] for f in avro_schema.get("fields", ()) if is_millis(f.get("type")))


def _json_default(value: object) -> object:
    """Dead letters must never be lost to an encoding error: degrade, do not raise."""
    if isinstance(value, bytes | bytearray | memoryview):
        raw = bytes(value)
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            return {"base64": base64.b64encode(raw).decode("ascii")}
    if isinstance(value, dt.datetime | dt.date):
        return value.isoformat()
    if isinstance(value, set | frozenset):
        return sorted(value, key=str)
    return str(value)


def dead_letter_json(record: Mapping[str, Any]) -> str:
    """One JSON line (no newline): sorted keys, ``expires_at`` as ISO-8601 UTC ``...Z``.

    Non-ASCII text stays readable; a string that is not encodable as UTF-8 (a lone
    surrogate) makes the whole line fall back to ASCII escapes rather than fail.
    """
    out = dict(record)
    expires_at = out.get("expires_at")
    if isinstance(expires_at, int) and not isinstance(expires_at, bool):
        out["expires_at"] = micros_to_iso(expires_at)
    text = json.dumps(out, sort_keys=True, ensure_ascii=False, default=_json_default)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        text = json.dumps(out, sort_keys=True, ensure_ascii=True, default=_json_default)
    return text


class JsonLinesSink(fileio.FileSink):
    """UTF-8 JSON Lines of dead-letter dicts (see :func:`dead_letter_json`)."""

    def create_metadata(self, destination: str, full_file_name: str) -> FileMetadata:
        return FileMetadata(
            mime_type="application/x-ndjson", compression_type=CompressionTypes.UNCOMPRESSED
        )

    def open(self, fh) -> None:
        self._fh = fh

    def write(self, record: Mapping[str, Any]) -> None:
        self._fh.write(dead_letter_json(record).encode("utf-8"))
        self._fh.write(b"\n")

    def flush(self) -> None:
        self._fh.flush()


# ------------------------------------------------------------ WriteToFiles plumbing

# A destination is (kind, relative_dir, shard, num_shards); kind is the data category, or
# the dead letter's source. Tuples of str/int have a deterministic coder, as a GroupByKey
# on them needs.
Destination = tuple[str, str, int, int]


class _ValueSink(fileio.FileSink):
    """Feeds the row of a ``(destination, row)`` element to the real sink."""

    def __init__(self, inner: fileio.FileSink) -> None:
        self.inner = inner

    def create_metadata(self, destination, full_file_name) -> FileMetadata:
        return self.inner.create_metadata(destination, full_file_name)

    def open(self, fh) -> None:
        self.inner.open(fh)

    def write(self, record) -> None:
        self.inner.write(record[1])

    def flush(self) -> None:
        self.inner.flush()


class _SinkFactory:
    """Picklable ``sink=`` factory: builds the sink for a destination's kind."""

    def __init__(self, make: Callable[[str], fileio.FileSink]) -> None:
        self.make = make

    def __call__(self, destination: Destination) -> fileio.FileSink:
        return _ValueSink(self.make(destination[0]))


def _make_jsonl(_kind: str) -> JsonLinesSink:
    return JsonLinesSink()


def _ensure_dir(path: str) -> None:
    if not FileSystems.get_filesystem(path).has_dirs():
        return  # object stores: a key with slashes needs no directory
    try:
        FileSystems.mkdirs(path)
    except OSError:
        if not FileSystems.exists(path):
            raise


class _PartitionFileNaming:
    """``file_naming=`` for WriteToFiles: ``<dir>/part-<shard>-of-<n>-<token><ext>``.

    WriteToFiles renames its temp files to ``path/<name>`` without creating the
    sub-directories of ``name``, so the directory is created here, right before the move.
    """

    def __init__(self, output_dir: str, token: str, extension: str) -> None:
        self.output_dir = output_dir
        self.token = token
        self.extension = extension

    def __call__(self, window, pane, shard_index, total_shards, compression, destination):
        _kind, rel_dir, shard, shards = destination
        name = f"part-{shard:05d}-of-{shards:05d}-{self.token}"
        if window is not None and window != GlobalWindow():
            start = window.start.to_utc_datetime().strftime("%Y%m%dT%H%M%S")
            end = window.end.to_utc_datetime().strftime("%Y%m%dT%H%M%S")
            name += f"-{start}-{end}"
        if total_shards and total_shards > 1:  # only if a destination got several temp files
            name += f"-{shard_index}"
        _ensure_dir(FileSystems.join(self.output_dir, rel_dir))
        return f"{rel_dir}/{name}{self.extension}"


class _VerifyMoved(beam.DoFn):
    """WriteToFiles logs and ignores a failed rename; make a missing file fail loudly."""

    def __init__(self, output_dir: str) -> None:
        self.output_dir = output_dir

    def process(self, result: fileio.FileResult):
        full = FileSystems.join(self.output_dir, result.file_name)
        if not FileSystems.exists(full):
            raise OSError(
                f"written file {full} is missing: WriteToFiles could not move it out of "
                "its temp directory (see DEBUG logs of apache_beam.io.fileio)"
            )
        _kind, _rel_dir, shard, shards = result.destination
        yield result._replace(file_name=full, shard_index=shard, total_shards=shards)


def _remove_temp_dir(_count: int, temp_dir: str) -> None:
    """Remove WriteToFiles' temp directory once it holds no file any more."""
    try:
        if not FileSystems.exists(temp_dir):
            return
        leftovers = FileSystems.match([FileSystems.join(temp_dir, "*")])[0].metadata_list
        if leftovers:
            _LOG.warning("leaving %s: %d temp files remain", temp_dir, len(leftovers))
            return
        FileSystems.delete([temp_dir])
    except OSError as err:  # BeamIOError is an OSError; cleanup is best effort
        _LOG.warning("could not remove temp directory %s: %s", temp_dir, err)


class _WriteKeyed(beam.PTransform):
    """``(Destination, row)`` -> one file per destination, moved into the Hive layout."""

    def __init__(
        self,
        output_dir: str,
        make_sink: Callable[[str], fileio.FileSink],
        extension: str,
        token: str,
    ) -> None:
        super().__init__()
        self.output_dir = output_dir
        self.make_sink = make_sink
        self.extension = extension
        self.token = token

    def expand(self, keyed):
        temp_dir = FileSystems.join(
            self.output_dir, f".temp-{self.token}-{self.extension.lstrip('.')}"
        )
        files = (
            keyed
            | "WriteToFiles"
            >> fileio.WriteToFiles(
                path=self.output_dir,
                file_naming=_PartitionFileNaming(self.output_dir, self.token, self.extension),
                destination=operator.itemgetter(0),
                sink=_SinkFactory(self.make_sink),
                temp_directory=StaticValueProvider(str, temp_dir),
                # The shard is part of the destination; WriteToFiles must not add its own.
                shards=1,
                # 0 writers per bundle: every record takes the grouped (spilled) path, so
                # the number of files per destination does not depend on bundling.
                max_writers_per_bundle=0,
            )
            | "VerifyMoved" >> beam.ParDo(_VerifyMoved(self.output_dir))
        )
        _ = (
            files
            | "CountFiles" >> beam.combiners.Count.Globally().without_defaults()
            | "RemoveTempDir" >> beam.Map(_remove_temp_dir, temp_dir)
        )
        return files


def _new_token() -> str:
    return uuid.uuid4().hex[:8]


def _check_shards(shards: int | None) -> int:
    if shards is None:
        return 1
    if isinstance(shards, bool) or not isinstance(shards, int) or shards < 1:
        raise ValueError(f"shards_per_partition must be a positive int or None, got {shards!r}")
    return shards


# ----------------------------------------------------------- columnar data partitions

_MICROS_PER_DAY = 86_400_000_000
# Day key of the null partition: beyond any day an int64 of microseconds can reach (~1e8).
_NULL_DAY = 1 << 32
# Rows per record batch in a temp file.
_RUN_BATCH_ROWS = 64 * 1024
# Rows converted to Python at a time for fastavro (bounds the Python objects alive).
_AVRO_CHUNK_ROWS = 4096
_IPC_MIME = "application/vnd.apache.arrow.file"
_IPC_EXTENSION = ".arrow"
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)

# Where a destination's rows are in a temp file: (path, first record batch, batch count).
RunSlice = tuple[str, int, int]


def _floor_div(values: Any, divisor: int) -> Any:
    """Integer floor division (Arrow's ``divide`` truncates toward zero); nulls stay null."""
    quotient = pc.divide(values, divisor)
    below = pc.less(values, pc.multiply(quotient, divisor))
    return pc.subtract(quotient, pc.cast(below, pa.int64()))


def _micros_column(column: Any) -> Any:
    """Epoch microseconds (int64) of a timestamp or integer column."""
    if pa.types.is_timestamp(column.type):
        if column.type.unit != "us":
            column = pc.cast(column, pa.timestamp("us", tz=column.type.tz))
        return pc.cast(column, pa.int64())
    if pa.types.is_integer(column.type):
        return pc.cast(column, pa.int64())
    raise TypeError(f"expected a timestamp or integer column, got {column.type}")


def _check_expires_at(schema: pa.Schema, category: str) -> None:
    if "expires_at" not in schema.names:
        return
    kind = schema.field("expires_at").type
    if not (pa.types.is_timestamp(kind) or pa.types.is_integer(kind)):
        raise ValueError(
            f"category {category!r}: expires_at must be a timestamp (or int micros) column, "
            f"got {kind}"
        )


def _key_row(table: pa.Table, index: int) -> dict[str, Any]:
    """One row as the row path had it (timestamps as int micros), to shard it by its JSON."""
    row = table.slice(index, 1).to_pylist()[0]
    return {
        name: (value - _EPOCH) // dt.timedelta(microseconds=1)
        if isinstance(value, dt.datetime)
        else value
        for name, value in row.items()
    }


def _row_shards(table: pa.Table, shards: int) -> pa.Array:
    """Shard of every row: CRC32 of its event_id (of its canonical JSON if it has none)."""
    if "event_id" in table.column_names:
        ids = table.column("event_id").to_pylist()
    else:
        ids = [None] * table.num_rows
    crc32 = zlib.crc32
    out = []
    for index, key in enumerate(ids):
        if not isinstance(key, str):
            key = json.dumps(_key_row(table, index), sort_keys=True, default=str)
        out.append(crc32(key.encode("utf-8", "surrogatepass")) % shards)
    return pa.array(out, pa.int64())


def _destination_keys(table: pa.Table, shards: int) -> pa.ChunkedArray:
    """One int64 per row: ``expiry day * shards + shard`` (the null partition's day is
    ``_NULL_DAY``), computed with Arrow kernels; Python per row only when ``shards`` > 1."""
    if "expires_at" in table.column_names:
        days = _floor_div(_micros_column(table.column("expires_at")), _MICROS_PER_DAY)
        days = pc.fill_null(days, _NULL_DAY)
    else:
        days = pc.fill_null(pa.nulls(table.num_rows, pa.int64()), _NULL_DAY)
    if shards > 1:
        days = pc.add(pc.multiply(days, shards), _row_shards(table, shards))
    return days if isinstance(days, pa.ChunkedArray) else pa.chunked_array([days])


def _destination(category: str, key: int, shards: int) -> Destination:
    day, shard = divmod(key, shards)
    expires_at = None if day == _NULL_DAY else day * _MICROS_PER_DAY
    return category, partition_path(category, expires_at), shard, shards


def _sort_run(
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


def _write_run(path: str, table: pa.Table, spans: Sequence[tuple[int, int, int]]):
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


def _read_run(path: str, first: int, count: int) -> Iterator[pa.RecordBatch]:
    handle = FileSystems.open(
        path, mime_type=_IPC_MIME, compression_type=CompressionTypes.UNCOMPRESSED
    )
    try:
        reader = pa.ipc.open_file(handle)
        for index in range(first, first + count):
            yield reader.get_batch(index)
    finally:
        handle.close()


def _no_schema(what: str, category: object, known: Iterable[str], detail: str) -> ValueError:
    # Fail closed: the Guard dead-letters rows of unknown categories, so reaching here is a
    # wiring bug; writing the rows with a guessed schema would be worse.
    return ValueError(
        f"{what}: no schema for data_category {category!r} (known: {sorted(known)}); {detail}"
    )


class _BufferPartitions(beam.DoFn):
    """``(category, table)`` -> ``(destination, RunSlice)``; counts ``written.<category>``.

    Buffers the tables of the bundle with their destination keys. Once they hold half of
    ``buffer_bytes`` (sorting them makes a copy of the same size), and at the end of the
    bundle, they are sorted by destination and spilled as one temp file per category (a
    sorted run), which is emitted once per destination it holds.
    """

    def __init__(
        self,
        schemas: Mapping[str, Mapping[str, Any]],
        shards: int,
        temp_dir: str,
        buffer_bytes: int,
    ) -> None:
        self.schemas = {category: dict(schema) for category, schema in schemas.items()}
        self.shards = shards
        self.temp_dir = temp_dir
        self.buffer_bytes = buffer_bytes

    def setup(self) -> None:
        self._arrow = {c: arrow_schema(s) for c, s in self.schemas.items()}
        self._counters: dict[str, Any] = {}

    def start_bundle(self) -> None:
        # category -> ([tables], [keys]); the bytes of Arrow data they hold
        self._buffer: dict[str, tuple[list[pa.Table], list[pa.ChunkedArray]]] = {}
        self.held = 0
        # Runs named <bundle>-<sequence>: Compact reads them in name order, so the rows of a
        # bundle keep their order in the final file.
        self._bundle = uuid.uuid4().hex
        self._runs = 0

    def process(self, element: tuple[str, pa.Table]):
        category, table = element
        schema = self._arrow.get(category) if isinstance(category, str) else None
        if schema is None:
            rows = getattr(table, "num_rows", "?")
            raise _no_schema("WriteTables", category, self._arrow, f"{rows} rows")
        table = self._check(category, table, schema)
        written = self._counters.get(category)
        if written is None:
            written = self._counters[category] = counter(f"written.{category}")
        written.inc(table.num_rows)
        if table.num_rows == 0:
            return
        tables, keys = self._buffer.setdefault(category, ([], []))
        tables.append(table)
        keys.append(_destination_keys(table, self.shards))
        self.held += table.nbytes
        if self.held * 2 > self.buffer_bytes:
            yield from self._spill()

    def _check(self, category: str, table: Any, schema: pa.Schema) -> pa.Table:
        if isinstance(table, pa.RecordBatch):
            table = pa.Table.from_batches([table])
        if not isinstance(table, pa.Table):
            raise TypeError(
                f"WriteTables takes (category, pyarrow.Table) elements, got a "
                f"{type(table).__name__} for {category!r}"
            )
        if not table.schema.equals(schema, check_metadata=False):
            raise ValueError(
                f"WriteTables: the table of {category!r} does not have the category's Arrow "
                f"schema (schemas.arrow.arrow_schema):\n{table.schema}\nexpected:\n{schema}"
            )
        for field in schema:
            if not field.nullable:
                nulls = table.column(field.name).null_count
                if nulls:
                    raise ValueError(
                        f"column {field.name!r} is required (non-null) but {nulls} of "
                        f"{table.num_rows} rows have no value"
                    )
        if "data_category" in schema.names and table.num_rows:
            same = pc.all(
                pc.equal(table.column("data_category"), pa.scalar(category)), skip_nulls=False
            ).as_py()
            if not same:
                raise ValueError(
                    f"WriteTables: the table of {category!r} has rows of another data_category"
                )
        return table

    def _spill(self):
        buffered, self._buffer = self._buffer, {}
        self.held = 0
        while buffered:
            category, (tables, keys) = buffered.popitem()
            table, spans = _sort_run(tables, keys)
            del tables[:], keys[:]  # the sorted copy is all that is needed now
            name = f"{self._bundle}-{self._runs:06d}{_IPC_EXTENSION}"
            self._runs += 1
            path = FileSystems.join(self.temp_dir, name)
            for key, first, count in _write_run(path, table, spans):
                destination = _destination(category, key, self.shards)
                yield GlobalWindows.windowed_value_at_end_of_window(
                    (destination, (path, first, count))
                )

    def finish_bundle(self):
        yield from self._spill()


class _ParquetFile:
    """A Parquet file written from Arrow data in row groups of exactly ``row_group_size`` rows
    (the last one excepted): small inputs are coalesced, so memory is about one row group."""

    def __init__(self, handle, schema: pa.Schema, codec: str, row_group_size: int) -> None:
        self._writer = pq.ParquetWriter(handle, schema, compression=codec)
        self._size = row_group_size
        self._pending: list[pa.Table] = []
        self._rows = 0

    def write(self, data: pa.Table | pa.RecordBatch) -> None:
        if isinstance(data, pa.RecordBatch):
            data = pa.Table.from_batches([data])
        self._pending.append(data)
        self._rows += data.num_rows
        if self._rows < self._size:
            return
        table = pa.concat_tables(self._pending)
        full = self._rows - self._rows % self._size
        self._writer.write_table(table.slice(0, full), row_group_size=self._size)
        rest = table.slice(full)
        self._pending = [rest] if rest.num_rows else []
        self._rows = rest.num_rows

    def close(self) -> None:
        if self._pending:
            self._writer.write_table(pa.concat_tables(self._pending), row_group_size=self._size)
            self._pending = []
        self._writer.close()  # writes the footer; does not close the file handle

    def abort(self) -> None:
        """Release the writer after a failure (the file is garbage and will be deleted)."""
        try:
            self._writer.close()
        except Exception:  # whatever it is, the original error is the one to report
            _LOG.debug("closing an aborted Parquet writer failed", exc_info=True)


def _avro_records(data: pa.Table | pa.RecordBatch, millis: frozenset[str]) -> list[dict]:
    """Row dicts for fastavro, with the values the row path gives it: top-level timestamps as
    int micros (floored to millis for ``timestamp-millis`` fields), dates as int days."""
    names = data.schema.names
    columns = []
    for name, column in zip(names, data.columns, strict=True):
        if pa.types.is_timestamp(column.type):
            column = _micros_column(column)
            if name in millis:
                column = _floor_div(column, 1000)
        elif pa.types.is_date32(column.type):
            column = pc.cast(column, pa.int32())
        columns.append(column.to_pylist())
    return [dict(zip(names, values, strict=True)) for values in zip(*columns, strict=True)]


class _AvroFile:
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


class _Compact(beam.DoFn):
    """``(destination, [RunSlice])`` -> one final file per format, as ``FileResult``s.

    Streams the destination's batches of every temp file into one writer per format, in the
    temp directory; then creates the partition directory (where the file system has
    directories) and renames the files into the layout. The temp files are only deleted
    once every destination is written, so a retried bundle simply writes its files again.
    """

    def __init__(
        self,
        output_dir: str,
        temp_dir: str,
        token: str,
        schemas: Mapping[str, Mapping[str, Any]],
        formats: Sequence[str],
        parquet_codec: str,
        avro_codec: str,
        row_group_size: int,
    ) -> None:
        self.output_dir = output_dir
        self.temp_dir = temp_dir
        self.token = token
        self.schemas = {category: dict(schema) for category, schema in schemas.items()}
        self.formats = tuple(formats)
        self.parquet_codec = parquet_codec
        self.avro_codec = avro_codec
        self.row_group_size = row_group_size

    def setup(self) -> None:
        self._arrow: dict[str, pa.Schema] = {}
        self._avro: dict[str, Any] = {}

    def _writer(self, fmt: str, category: str, handle):
        if fmt == "parquet":
            if category not in self._arrow:
                self._arrow[category] = arrow_schema(self.schemas[category])
            return _ParquetFile(
                handle, self._arrow[category], self.parquet_codec, self.row_group_size
            )
        if category not in self._avro:
            self._avro[category] = fastavro.parse_schema(dict(self.schemas[category]))
        return _AvroFile(
            handle, self.schemas[category], self.avro_codec, parsed=self._avro[category]
        )

    def process(self, element: tuple[Destination, Iterable[RunSlice]]):
        destination, runs = element
        category, rel_dir, shard, shards = destination
        runs = sorted(set(runs))  # the same row order whatever order the slices came in
        name = f"part-{shard:05d}-of-{shards:05d}-{self.token}"
        finals = {
            fmt: FileSystems.join(self.output_dir, rel_dir, name + EXTENSIONS[fmt])
            for fmt in self.formats
        }
        staged = {
            fmt: FileSystems.join(self.temp_dir, f"{uuid.uuid4().hex}{EXTENSIONS[fmt]}")
            for fmt in self.formats
        }
        try:
            self._write(category, runs, staged)
            _ensure_dir(FileSystems.join(self.output_dir, rel_dir))
            FileSystems.rename(list(staged.values()), [finals[fmt] for fmt in staged])
        except BaseException:
            leftovers = [path for path in staged.values() if FileSystems.exists(path)]
            if leftovers:
                try:
                    FileSystems.delete(leftovers)
                except OSError as err:  # best effort: the cleanup step warns about them
                    _LOG.warning("could not delete %s: %s", leftovers, err)
            raise
        for final in finals.values():
            yield fileio.FileResult(
                file_name=final,
                shard_index=shard,
                total_shards=shards,
                window=GlobalWindow(),
                pane=None,
                destination=destination,
            )

    def _write(self, category: str, runs: Sequence[RunSlice], staged: Mapping[str, str]):
        handles = []
        writers = []
        try:
            for fmt, path in staged.items():
                handle = FileSystems.create(
                    path, mime_type=MIME_TYPES[fmt], compression_type=CompressionTypes.UNCOMPRESSED
                )
                handles.append(handle)
                writers.append(self._writer(fmt, category, handle))
            for path, first, count in runs:
                for batch in _read_run(path, first, count):
                    for writer in writers:
                        writer.write(batch)
            while writers:
                writers.pop().close()
        finally:
            for writer in writers:  # left open by a failure
                writer.abort()
            for handle in handles:
                handle.close()


def _remove_temp_files(_count: int, temp_dir: str) -> None:
    """Delete the temp files and their directory once every destination is written."""
    try:
        found = FileSystems.match([FileSystems.join(temp_dir, "*")])[0].metadata_list
        if found:
            FileSystems.delete([m.path for m in found])
        if FileSystems.get_filesystem(temp_dir).has_dirs() and FileSystems.exists(temp_dir):
            FileSystems.delete([temp_dir])
    except OSError as err:  # BeamIOError is an OSError; cleanup is best effort
        _LOG.warning("could not remove temp directory %s: %s", temp_dir, err)


def _check_buffer_bytes(buffer_bytes: int) -> int:
    if isinstance(buffer_bytes, bool) or not isinstance(buffer_bytes, int) or buffer_bytes < 1:
        raise ValueError(f"buffer_bytes must be a positive int, got {buffer_bytes!r}")
    return buffer_bytes


class WriteTables(beam.PTransform):
    """Write ``(category, pyarrow.Table)`` elements as ``data_category=/expiry_date=`` Hive
    partitions, columnar and in bounded memory (see the module docstring).

    Every table must have exactly the Arrow schema of its category
    (``schemas.arrow.arrow_schema(schemas[category])``, tag columns included); its rows go to
    the partition of their ``expires_at`` and, with ``shards_per_partition`` > 1, to the shard
    of their ``event_id``. A category without a schema, a table of another schema, a null in a
    required column or a ``data_category`` column that disagrees with the category raises and
    fails the pipeline (fail closed). Counts ``written.<category>`` per row.

    Each partition and shard gets exactly one file per format per run, named
    ``part-<shard>-of-<shards>-<run_token>.<ext>``. Returns the ``fileio.FileResult`` of every
    file written, all formats, with ``file_name`` the full path.
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
        buffer_bytes: int = DEFAULT_BUFFER_BYTES,
    ) -> None:
        super().__init__()
        if not schemas:
            raise ValueError(f"{type(self).__name__} needs at least one category schema")
        formats = tuple(dict.fromkeys(formats))
        unknown = [f for f in formats if f not in FORMATS]
        if not formats or unknown:
            raise ValueError(f"formats must be a non-empty subset of {FORMATS}, got {formats!r}")
        self.output_dir = output_dir
        self.schemas = {category: dict(schema) for category, schema in schemas.items()}
        self.formats = formats
        self.shards = _check_shards(shards_per_partition)
        self.run_token = run_token or _new_token()
        self.buffer_bytes = _check_buffer_bytes(buffer_bytes)
        # Fail at construction, not on a worker: every schema must map and every codec exist.
        # Tables are Arrow whatever the formats, so every schema needs its Arrow mapping.
        for category, schema in self.schemas.items():
            _check_expires_at(arrow_schema(schema), category)
        if "parquet" in formats:
            _check_parquet_codec(parquet_codec)
            if row_group_size < 1:
                raise ValueError(f"row_group_size must be >= 1, got {row_group_size}")
        if "avro" in formats:
            for schema in self.schemas.values():
                fastavro.parse_schema(dict(schema))
            _check_avro_codec(avro_codec)
        self.parquet_codec = parquet_codec
        self.avro_codec = avro_codec
        self.row_group_size = row_group_size

    @property
    def temp_dir(self) -> str:
        """Where the temp files go; per format set, as two writers may share a run token."""
        suffix = "-".join(self.formats)
        return FileSystems.join(self.output_dir, f".temp-{self.run_token}-tables-{suffix}")

    def expand(self, tables):
        temp_dir = self.temp_dir
        files = (
            tables
            | "GlobalWindow" >> beam.WindowInto(GlobalWindows())
            | "BufferPartitions"
            >> beam.ParDo(
                _BufferPartitions(self.schemas, self.shards, temp_dir, self.buffer_bytes)
            ).with_output_types(tuple[tuple[str, str, int, int], tuple[str, int, int]])
            | "GroupTempFiles" >> beam.GroupByKey()
            | "Compact"
            >> beam.ParDo(
                _Compact(
                    self.output_dir,
                    temp_dir,
                    self.run_token,
                    self.schemas,
                    self.formats,
                    self.parquet_codec,
                    self.avro_codec,
                    self.row_group_size,
                )
            )
        )
        _ = (
            files
            | "CountFiles" >> beam.combiners.Count.Globally().without_defaults()
            | "RemoveTempFiles" >> beam.Map(_remove_temp_files, temp_dir)
        )
        return files


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


# ---------------------------------------------------------------------- dead letters


def dead_letter_reason(dead_letter: Mapping[str, Any]) -> str:
    """Counter suffix: the dead letter's ``error`` up to the first ':' ("unknown" if none)."""
    error = dead_letter.get("error")
    reason = str(error).split(":", 1)[0].strip() if error is not None else ""
    return reason or "unknown"


class _AssignDeadLetter(beam.DoFn):
    def __init__(self, shards: int) -> None:
        self.shards = shards
        self._counters: dict[str, Any] = {}

    def process(self, dead_letter: Mapping[str, Any]):
        if not isinstance(dead_letter, Mapping):
            raise TypeError(f"a dead letter must be a dict, got {type(dead_letter).__name__}")
        reason = dead_letter_reason(dead_letter)
        letters = self._counters.get(reason)
        if letters is None:
            letters = self._counters[reason] = counter(f"dead_letter.{reason}")
        letters.inc()
        source = dead_letter.get("source")
        source = None if source is None else str(source)
        shard = 0
        if self.shards > 1:
            shard = zlib.crc32(dead_letter_json(dead_letter).encode("utf-8", "surrogatepass"))
            shard %= self.shards
        rel_dir = dead_letter_path(source, dead_letter.get("expires_at"))
        yield (source or "", rel_dir, shard, self.shards), dead_letter


class WriteDeadLetters(beam.PTransform):
    """Write dead letters as JSON Lines under ``_dead_letter/source=/expiry_date=``.

    Dead letters hold personal data too (the raw input, already masked by the producer),
    so they are partitioned by expiry date like the data and purged the same way. Counts
    ``dead_letter.<reason>`` per letter. Returns the ``FileResult`` of every file written.
    """

    def __init__(
        self,
        output_dir: str,
        shards_per_partition: int | None = None,
        *,
        run_token: str | None = None,
    ) -> None:
        super().__init__()
        self.output_dir = output_dir
        self.shards = _check_shards(shards_per_partition)
        self.run_token = run_token or _new_token()

    def expand(self, dead_letters):
        return (
            dead_letters
            | "AssignPartition" >> beam.ParDo(_AssignDeadLetter(self.shards))
            | "WriteJsonLines"
            >> _WriteKeyed(self.output_dir, _make_jsonl, EXTENSIONS["jsonl"], self.run_token)
        )

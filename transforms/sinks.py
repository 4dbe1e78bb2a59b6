"""Hive-partitioned sinks: the last step of every pipeline.

Layout under the output directory (DESIGN.md section 3)::

    data_category=<category>/expiry_date=<YYYY-MM-DD>/part-<shard>-of-<n>-<token>.parquet|.avro
    data_category=<category>/expiry_date=__HIVE_DEFAULT_PARTITION__/...   (expires_at is None)
    _dead_letter/source=<source>/expiry_date=<YYYY-MM-DD>/part-<shard>-of-<n>-<token>.jsonl

Why partition by expiry date: retention is enforced by deleting whole directories
(``pipelines.purge``), never by rewriting files, so every file must hold rows that expire
on the same UTC day. ``expiry_date`` is the UTC calendar date of ``expires_at`` (int epoch
microseconds); open-ended retention (``expires_at`` None) goes to Hive's null partition.

How files are bounded (DESIGN.md section 5): writing per bundle multiplies files, so every
row is keyed by ``(partition, shard)`` with a deterministic shard (a CRC32 of the row's
``event_id``) and Beam's ``fileio.WriteToFiles`` is run with ``max_writers_per_bundle=0``,
which sends every record through its group-by-destination path. Each partition therefore
gets exactly ``shards_per_partition`` files at most (default 1) per format, whatever the
bundling of the runner, and a given row always lands in the same shard.

Two things ``WriteToFiles`` does not do on its own, handled here:

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
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import apache_beam as beam
import fastavro
import pyarrow as pa
import pyarrow.parquet as pq
from apache_beam.io import fileio
from apache_beam.io.fileio import FileMetadata
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems
from apache_beam.options.value_provider import StaticValueProvider
from apache_beam.transforms.window import GlobalWindow

from schemas.arrow import arrow_schema, to_arrow_table
from transforms.counters import counter
from transforms.timestamps import format_utc, utc_date

__all__ = [
    "DEAD_LETTER_DIR",
    "FORMATS",
    "HIVE_NULL_PARTITION",
    "AvroSink",
    "JsonLinesSink",
    "ParquetSink",
    "WriteDeadLetters",
    "WritePartitioned",
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

DEFAULT_ROW_GROUP_SIZE = 64 * 1024
DEFAULT_PARQUET_CODEC = "snappy"
# fastavro's snappy codec needs the optional `cramjam` package; deflate needs nothing.
DEFAULT_AVRO_CODEC = "deflate"
DEFAULT_AVRO_SYNC_INTERVAL = 256 * 1024  # bytes per Avro block before it is compressed


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


def _shard_of(row: Mapping[str, Any], shards: int) -> int:
    """Deterministic shard: CRC32 of event_id (or of the canonical JSON of the row)."""
    if shards == 1:
        return 0
    key = row.get("event_id")
    if not isinstance(key, str):
        key = json.dumps(row, sort_keys=True, default=str)
    return zlib.crc32(key.encode("utf-8", "surrogatepass")) % shards


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
    """Buffers rows and writes them as compressed Parquet row groups.

    Why not Beam's ``WriteToParquet``: it writes uncompressed unless told otherwise and
    cannot take a schema per dynamic destination. Rows are buffered up to
    ``row_group_size`` and converted column-wise (``schemas.arrow.to_arrow_table``), so
    memory is bounded by one row group, and each row group is one ``write_table`` call.

    ``flush`` finishes the file (Parquet has a footer); ``WriteToFiles`` calls it once,
    right before closing the handle.
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


class AvroSink(fileio.FileSink):
    """fastavro container-file writer with block compression.

    Blocks are buffered by fastavro up to ``sync_interval`` bytes and compressed with
    ``codec`` (deflate by default: it needs no extra package; snappy requires ``cramjam``
    and is rejected at construction when missing). Keys not in the schema are ignored by
    fastavro; a missing required field fails the write.

    Timestamps in the pipeline are int micros; fields declared ``timestamp-millis`` are
    converted (floor division), so Avro holds the same instant as Parquet, to the millisecond.
    """

    def __init__(
        self,
        avro_schema: Mapping[str, Any],
        codec: str = DEFAULT_AVRO_CODEC,
        sync_interval: int = DEFAULT_AVRO_SYNC_INTERVAL,
    ) -> None:
        self.codec = _check_avro_codec(codec)
        self.avro_schema = avro_schema
        self.sync_interval = sync_interval
        self._parsed = None
        self._millis = _timestamp_millis_fields(avro_schema)
        self._writer = None
        self._fh = None

    def create_metadata(self, destination: str, full_file_name: str) -> FileMetadata:
        return FileMetadata(
            mime_type="application/avro", compression_type=CompressionTypes.UNCOMPRESSED
        )

    def open(self, fh) -> None:
        if self._parsed is None:
            self._parsed = fastavro.parse_schema(dict(self.avro_schema))
        self._fh = fh
        self._writer = fastavro.write.Writer(
            fh, self._parsed, codec=self.codec, sync_interval=self.sync_interval
        )

    def write(self, record: Mapping[str, Any]) -> None:
        if self._millis:
            record = {
                **record,
                **{
                    name: record[name] // 1000
                    for name in self._millis
                    if isinstance(record.get(name), int)
                },
            }
        self._writer.write(record)

    def flush(self) -> None:
        if self._writer is not None:
            self._writer.flush()  # Avro has no footer: flushing the last block finishes it
            self._fh.flush()


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

# A destination is (kind, relative_dir, shard, num_shards); kind picks the sink
# (the data category, or the dead letter's source). Tuples of str/int have a
# deterministic coder, as WriteToFiles' GroupByKey needs.
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


class _ParquetFor:
    def __init__(self, schemas: Mapping[str, Mapping[str, Any]], codec: str, row_group_size: int):
        self.schemas = dict(schemas)
        self.codec = codec
        self.row_group_size = row_group_size
        self._arrow: dict[str, pa.Schema] = {}

    def __call__(self, category: str) -> ParquetSink:
        if category not in self._arrow:
            self._arrow[category] = arrow_schema(self.schemas[category])
        return ParquetSink(self._arrow[category], self.codec, self.row_group_size)


class _AvroFor:
    def __init__(self, schemas: Mapping[str, Mapping[str, Any]], codec: str):
        self.schemas = dict(schemas)
        self.codec = codec

    def __call__(self, category: str) -> AvroSink:
        return AvroSink(self.schemas[category], self.codec)


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


# ------------------------------------------------------------------ data partitions


class _AssignPartition(beam.DoFn):
    """Row -> ``(Destination, row)``; counts ``written.<category>`` once per row."""

    def __init__(self, categories: Sequence[str], shards: int) -> None:
        self.categories = frozenset(categories)
        self.shards = shards
        self._counters: dict[str, Any] = {}

    def process(self, row: Mapping[str, Any]):
        category = row.get("data_category") if isinstance(row, Mapping) else None
        if not isinstance(category, str) or category not in self.categories:
            # Fail closed: the Guard dead-letters rows of unknown categories, so reaching
            # here is a wiring bug; writing the row with a guessed schema would be worse.
            raise ValueError(
                f"WritePartitioned: no schema for data_category {category!r} "
                f"(known: {sorted(self.categories)}); event_id={_event_id(row)!r}"
            )
        destination = (
            category,
            partition_path(category, row.get("expires_at")),
            _shard_of(row, self.shards),
            self.shards,
        )
        rows = self._counters.get(category)
        if rows is None:
            rows = self._counters[category] = counter(f"written.{category}")
        rows.inc()
        yield destination, row


def _event_id(row: object) -> object:
    return row.get("event_id") if isinstance(row, Mapping) else None


class WritePartitioned(beam.PTransform):
    """Write tagged rows as ``data_category=/expiry_date=`` Hive partitions.

    Each category is written with its own Avro record schema (Parquet columns derived by
    ``schemas.arrow.arrow_schema``); columns not in a category's schema are dropped, which
    keeps the output to the policy's allow-list even if an upstream step added a field.

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
        formats = tuple(dict.fromkeys(formats))
        unknown = [f for f in formats if f not in FORMATS]
        if not formats or unknown:
            raise ValueError(f"formats must be a non-empty subset of {FORMATS}, got {formats!r}")
        self.output_dir = output_dir
        self.schemas = {category: dict(schema) for category, schema in schemas.items()}
        self.formats = formats
        self.shards = _check_shards(shards_per_partition)
        self.run_token = run_token or _new_token()
        # Fail at construction, not on a worker: every schema must map and every codec exist.
        if "parquet" in formats:
            for schema in self.schemas.values():
                arrow_schema(schema)
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

    def expand(self, rows):
        keyed = rows | "AssignPartition" >> beam.ParDo(
            _AssignPartition(sorted(self.schemas), self.shards)
        )
        makers = {
            "parquet": _ParquetFor(self.schemas, self.parquet_codec, self.row_group_size),
            "avro": _AvroFor(self.schemas, self.avro_codec),
        }
        results = [
            keyed
            | f"Write{fmt.capitalize()}"
            >> _WriteKeyed(self.output_dir, makers[fmt], EXTENSIONS[fmt], self.run_token)
            for fmt in self.formats
        ]
        if len(results) == 1:
            return results[0]
        return tuple(results) | "FlattenResults" >> beam.Flatten()


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

"""Input formats: how a file of each format is cut into ranges, read, and decoded.

Why one place: the reader (``transforms.read``), the parser (``transforms.parse``) and the command
line (``--input_format``) each had to know every format, and a new one meant a branch in each.
Now each format is one :class:`InputFormat`, registered by name (:func:`register`; the built-in
ones are JSON Lines, Avro and Parquet); they ask it. A format from outside the package is
registered by its own module, imported before the job's options are parsed.

A format says:

- ``name`` (the value of ``--input_format``) and ``suffixes`` (``auto`` reads a pattern ending in
  one of them in this format; JSON Lines, :data:`DEFAULT_FORMAT`, is the rest);
- :meth:`~InputFormat.ranges`: the pieces a file is read in, spread over the workers (by default
  the whole file; JSON Lines are cut into byte ranges);
- :meth:`~InputFormat.read`: batches of raw elements from an open file, in bounded memory. A file
  that stops decoding part-way ends with a :class:`~transforms.rawinput.ReadFailure` for the rest
  (Parse: one ``unreadable_file:<error>`` dead letter), never a failed job;
- :meth:`~InputFormat.decode`: the reference, one raw element to its object (a dict) or a
  :class:`~transforms.rawinput.RecordError` with the reason, what Parse's record path uses;
- :meth:`~InputFormat.decode_batch` and :meth:`~InputFormat.decode_one`: the fast decoding that
  Parse's columns take, which may refuse (``None``, :data:`REFUSED`) what the reference then
  decides; and ``may_misread``, a check of a decoded object that the fast decoder may have read
  differently from the reference (orjson reads an integer beyond 64 bits as a float).

Record formats (Avro, Parquet) decode in the reader: their elements are dicts of plain values
already. Their fast decoding takes a record only when every value is of a type the columns
decide as the reference does (:data:`PLAIN_TYPES`): Arrow would read ``bytes`` as text, where the
reference calls it a malformed string.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from datetime import datetime
from typing import Any, ClassVar, NamedTuple

import fastavro
import orjson
import pyarrow.parquet as pq
from apache_beam.io.filesystem import CompressionTypes

from transforms.elements import Batch
from transforms.lines import read_line_batches
from transforms.named import Registry
from transforms.rawinput import ReadFailure, decode_json_line, may_hold_a_long_integer

__all__ = [
    "AUTO",
    "DEFAULT_FORMAT",
    "PLAIN_TYPES",
    "REFUSED",
    "AvroFormat",
    "ByteRange",
    "InputFormat",
    "JsonLinesFormat",
    "ParquetFormat",
    "format_named",
    "format_names",
    "input_format_choices",
    "register",
    "resolve_input_format",
    "unregister",
]


class ByteRange(NamedTuple):
    """A piece of a file read by one worker: ``end`` None is to the end of the file (read as one
    stream, decompressed if the file is compressed)."""

    path: str
    start: int
    end: int | None


# What a fast decoder returns for an element it leaves to the reference.
REFUSED = object()
# Value types of a decoded record that the columns decide as the reference does: what a JSON
# decoder gives, and the datetime of a timestamp column or Avro logical type.
PLAIN_TYPES = frozenset({str, int, float, bool, type(None), list, dict, datetime})


class InputFormat:
    """One input format; the defaults are those of a record format read whole (see the module
    docstring for what each member means)."""

    name: ClassVar[str]
    suffixes: ClassVar[tuple[str, ...]] = ()
    may_misread: ClassVar[Callable[[Collection[Any]], bool] | None] = None

    def ranges(self, path: str, size: int, chunk_bytes: int) -> Iterator[ByteRange]:
        """The ranges a file of ``size`` bytes is read in: the whole file."""
        yield ByteRange(path, 0, None)

    def read(
        self, fh: Any, byte_range: ByteRange, batch_size: int, max_line_bytes: int
    ) -> Iterator[Batch]:
        """Batches of at most ``batch_size`` raw elements of ``byte_range`` of the open ``fh``."""
        raise NotImplementedError

    def decode(self, element: Any) -> Mapping[str, Any]:
        """The reference: a record as it is; anything else (a reader's summary, or a value of a
        file whose schema is not a record) is read as the JSON text it may hold, which gives
        its reason."""
        if isinstance(element, Mapping):
            return element
        return decode_json_line(element)

    def decode_batch(self, batch: Sequence[Any]) -> list[Any] | None:
        """The objects of every element of ``batch``, or None when the fast decoder refuses
        one: records whose values are all :data:`PLAIN_TYPES`."""
        if set(map(type, batch)) != {dict} or not all(map(_plain, batch)):
            return None
        return batch

    def decode_one(self, element: Any) -> Any:
        """One element's object, or :data:`REFUSED`."""
        if element.__class__ is dict and _plain(element):
            return element
        return REFUSED


def _plain(record: dict[str, Any]) -> bool:
    return PLAIN_TYPES.issuperset(map(type, record.values()))


class JsonLinesFormat(InputFormat):
    """JSON Lines (UTF-8, one object a line, a byte order mark at the start ignored), read as
    bytes lines in byte ranges (``transforms.lines``) and decoded at Parse: orjson first, json
    (the contract's reference, :func:`~transforms.rawinput.decode_json_line`) for the rest."""

    name = "jsonl"
    suffixes = (".jsonl",)
    may_misread = staticmethod(may_hold_a_long_integer)

    def ranges(self, path: str, size: int, chunk_bytes: int) -> Iterator[ByteRange]:
        """Ranges of ``chunk_bytes``; a compressed file (no seeking) or a small one is one."""
        compressed = CompressionTypes.detect_compression_type(path) != CompressionTypes.UNCOMPRESSED
        if compressed or size <= chunk_bytes:
            yield ByteRange(path, 0, None)
            return
        for start in range(0, size, chunk_bytes):
            yield ByteRange(path, start, min(start + chunk_bytes, size))

    def read(
        self, fh: Any, byte_range: ByteRange, batch_size: int, max_line_bytes: int
    ) -> Iterator[Batch]:
        _path, start, end = byte_range
        return read_line_batches(fh, start, end, batch_size, max_line_bytes)

    def decode(self, element: Any) -> Mapping[str, Any]:
        return decode_json_line(element)

    def decode_batch(self, batch: Sequence[Any]) -> list[Any] | None:
        """Every line decoded by orjson in one C-level map, or None if one is not a bytes line
        or orjson refuses it."""
        if set(map(type, batch)) != {bytes}:
            return None
        try:
            return list(map(orjson.loads, batch))
        except orjson.JSONDecodeError:
            return None

    def decode_one(self, element: Any) -> Any:
        if element.__class__ is not bytes:
            return REFUSED
        try:
            return orjson.loads(element)
        except orjson.JSONDecodeError:
            return REFUSED


class AvroFormat(InputFormat):
    """Avro object container files, each read whole by fastavro (its writer schema; logical
    types as Python values, a ``timestamp-millis`` as a datetime)."""

    name = "avro"
    suffixes = (".avro",)

    def read(
        self, fh: Any, byte_range: ByteRange, batch_size: int, max_line_bytes: int
    ) -> Iterator[Batch]:
        batch, records = Batch(), 0
        try:
            for record in fastavro.reader(fh):
                batch.append(record)
                records += 1
                if len(batch) >= batch_size:
                    yield batch
                    batch = Batch()
        # A corrupt file fails fastavro with any of a dozen types (EOFError, ValueError,
        # UnicodeDecodeError, IndexError, its own...): all of them end the file as a dead letter.
        except Exception as err:
            batch.append(ReadFailure(byte_range.path, records, type(err).__name__))
        if batch:
            yield batch


class ParquetFormat(InputFormat):
    """Parquet files (BigQuery and data-lake exports), read whole, a batch of ``batch_size``
    rows at a time (``iter_batches``: one row group decoded at a time, so memory is bounded by
    the file's row groups, not its size).

    A row is decoded into the record a JSON Lines producer would have written: a null is an
    absent key (every row has every column of the file; a null column the schema does not
    declare is no undeclared field of that row). Timestamps are datetimes (Spark's INT96 ones
    read to microseconds), which the event time accepts."""

    name = "parquet"
    suffixes = (".parquet",)

    def read(
        self, fh: Any, byte_range: ByteRange, batch_size: int, max_line_bytes: int
    ) -> Iterator[Batch]:
        records = 0
        try:
            parquet = pq.ParquetFile(fh, coerce_int96_timestamp_unit="us")
            for part in parquet.iter_batches(batch_size=batch_size):
                rows = part.to_pylist()
                records += len(rows)
                yield Batch([{k: v for k, v in row.items() if v is not None} for row in rows])
        # As for Avro: whatever a corrupt file raises (ArrowInvalid, OSError, a UnicodeDecodeError
        # of a string column...) ends it as a dead letter.
        except Exception as err:
            yield Batch([ReadFailure(byte_range.path, records, type(err).__name__)])


DEFAULT_FORMAT = JsonLinesFormat.name
AUTO = "auto"  # not a format: --input_format's choice of a format by the pattern's suffix
_FORMATS: Registry[InputFormat] = Registry(
    "input format",
    (JsonLinesFormat(), AvroFormat(), ParquetFormat()),
    "--input_format",
    kind=InputFormat,
    reserved=(AUTO,),
)
# Adds a format to what --input_format (and auto, by its suffixes) reads; removes one (a
# test's); the registered names; the format of a name (not auto: resolve_input_format).
register = _FORMATS.register
unregister = _FORMATS.unregister
format_names = _FORMATS.names
format_named = _FORMATS.named


def input_format_choices() -> tuple[str, ...]:
    """The values of ``--input_format``: ``auto`` and every format's name."""
    return (AUTO, *format_names())


def resolve_input_format(pattern: str, name: str = AUTO) -> str:
    """The format ``name`` itself; ``auto``: the format whose suffix ends ``pattern`` (trailing
    ``*`` ignored: ``*.avro*``), JSON Lines otherwise."""
    if name != AUTO:
        return format_named(name).name
    stem = pattern.rstrip("*")
    return next(
        (f.name for f in _FORMATS.entries() if f.suffixes and stem.endswith(f.suffixes)),
        DEFAULT_FORMAT,
    )

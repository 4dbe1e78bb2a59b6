"""Read: files on local disk or any Beam filesystem (gs://, s3://) as raw elements for Parse.

JSON Lines are read as *bytes* (not text) so that a line that is not valid UTF-8 becomes an
``invalid_encoding`` dead letter instead of failing the bundle; Avro files yield the records
fastavro decodes (dicts). The format is chosen by the caller or from the file extension.

Two shapes of output:

- single elements (the default): Beam's ``ReadFromText`` / ``ReadFromAvro``;
- ``batched=True``: lists of up to ``BATCH_SIZE`` elements (``transforms.batches``), what the
  pipelines use. Files are matched with ``fileio.MatchFiles`` and cut into byte ranges of
  ``chunk_bytes`` (uncompressed JSON Lines; a compressed or Avro file is one range), the ranges
  are spread over the workers (``Reshuffle``) and each is read in one piece and cut into batches. A
  range owns the lines that *start* inside it, so every line is read exactly once whatever the
  chunk size. Memory per worker is one range of raw input and one batch in flight.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import apache_beam as beam
import fastavro
from apache_beam.coders import BytesCoder
from apache_beam.io import fileio
from apache_beam.io.filesystem import CompressionTypes, FileMetadata
from apache_beam.io.filesystems import FileSystems

from transforms.batches import BATCH_SIZE, Batch

__all__ = ["DEFAULT_CHUNK_BYTES", "INPUT_FORMATS", "ReadRecords", "resolve_input_format"]

INPUT_FORMATS = ("auto", "jsonl", "avro")

# 4 MiB: 1M visits (~300 MB) make ~75 ranges, so that the workers share the input evenly (the
# runner hands each worker a share of the ranges); a range costs one open and one seek, and is
# read in one piece, so this is also the most a worker holds of the raw input.
DEFAULT_CHUNK_BYTES = 4 * 1024 * 1024

# (path, start, end): end None = to the end of the file (compressed and Avro files).
ByteRange = tuple[str, int, int | None]


def resolve_input_format(pattern: str, input_format: str = "auto") -> str:
    """``jsonl`` or ``avro``; ``auto`` picks Avro for ``*.avro`` patterns, JSON Lines otherwise."""
    if input_format not in INPUT_FORMATS:
        raise ValueError(f"input format must be one of {INPUT_FORMATS}, got {input_format!r}")
    if input_format != "auto":
        return input_format
    return "avro" if pattern.rstrip("*").endswith(".avro") else "jsonl"


def byte_ranges(metadata: FileMetadata, input_format: str, chunk_bytes: int) -> Iterator[ByteRange]:
    """The ranges a matched file is read in: one for a compressed or Avro file."""
    path, size = metadata.path, metadata.size_in_bytes
    compressed = CompressionTypes.detect_compression_type(path) != CompressionTypes.UNCOMPRESSED
    if input_format == "avro" or compressed or size <= chunk_bytes:
        yield path, 0, None
        return
    for start in range(0, size, chunk_bytes):
        yield path, start, min(start + chunk_bytes, size)


def _strip_newline(line: bytes) -> bytes:
    if line.endswith(b"\n"):
        line = line[:-1]
        if line.endswith(b"\r"):
            line = line[:-1]
    return line


def _in_batches(lines: list[bytes], batch_size: int) -> Iterator[Batch]:
    for first in range(0, len(lines), batch_size):
        yield Batch(lines[first : first + batch_size])


def read_line_batches(fh: Any, start: int, end: int | None, batch_size: int) -> Iterator[Batch]:
    """Batches of the lines that start in ``[start, end)`` of the open file ``fh`` (without
    their line ending; blank lines included: Parse makes them dead letters).

    A bounded range is read in one piece and split in C (``bytes.split``): a Python loop per
    line costs more than the rest of reading. ``end`` None (a compressed file) streams.
    """
    if start:
        # The line in progress at ``start`` belongs to the range before (a line starting right
        # at ``start`` follows the newline at ``start - 1`` and is ours).
        fh.seek(start - 1)
        position = start - 1 + len(fh.readline())
    else:
        position = 0
    if end is None:
        yield from _stream_line_batches(fh, batch_size)
        return
    if position >= end:
        return
    data = fh.read(end - position)
    if data and not data.endswith(b"\n"):
        data += fh.readline()  # the last line starts in the range: read it to its end
    lines = data.split(b"\n")
    unterminated = lines.pop()  # b"" after a final newline, else the file's last line
    if b"\r" in data:
        lines = [line[:-1] if line.endswith(b"\r") else line for line in lines]
    if unterminated:
        lines.append(unterminated)
    yield from _in_batches(lines, batch_size)


def _stream_line_batches(fh: Any, batch_size: int) -> Iterator[Batch]:
    batch = Batch()
    for line in iter(fh.readline, b""):
        batch.append(_strip_newline(line))
        if len(batch) >= batch_size:
            yield batch
            batch = Batch()
    if batch:
        yield batch


class _ReadBatches(beam.DoFn):
    """A byte range of a file -> batches of lines (JSON Lines) or records (Avro)."""

    def __init__(self, input_format: str, batch_size: int) -> None:
        self._format = input_format
        self._batch_size = batch_size

    def process(self, byte_range: ByteRange) -> Iterator[Batch]:
        path, start, end = byte_range
        compression = CompressionTypes.AUTO if end is None else CompressionTypes.UNCOMPRESSED
        with FileSystems.open(path, compression_type=compression) as fh:
            if self._format == "avro":
                yield from self._avro(fh)
            else:
                yield from read_line_batches(fh, start, end, self._batch_size)

    def _avro(self, fh: Any) -> Iterator[Batch]:
        batch = Batch()
        for record in fastavro.reader(fh):
            batch.append(record)
            if len(batch) >= self._batch_size:
                yield batch
                batch = Batch()
        if batch:
            yield batch


class ReadRecords(beam.PTransform):
    """Raw elements of every file matching ``pattern``: bytes lines or Avro dicts, one by one or
    (``batched``) in batches."""

    def __init__(
        self,
        pattern: str,
        input_format: str = "auto",
        *,
        batched: bool = False,
        chunk_bytes: int = DEFAULT_CHUNK_BYTES,
        batch_size: int = BATCH_SIZE,
    ) -> None:
        super().__init__()
        if chunk_bytes < 1 or batch_size < 1:
            raise ValueError("chunk_bytes and batch_size must be >= 1")
        self._pattern = pattern
        self._format = resolve_input_format(pattern, input_format)
        self._batched = batched
        self._chunk_bytes = chunk_bytes
        self._batch_size = batch_size

    def expand(self, pbegin):
        if self._batched:
            return (
                pbegin
                | "MatchFiles"
                >> fileio.MatchFiles(
                    self._pattern, empty_match_treatment=fileio.EmptyMatchTreatment.DISALLOW
                )
                | "SplitFiles" >> beam.FlatMap(byte_ranges, self._format, self._chunk_bytes)
                | "Distribute" >> beam.Reshuffle()
                | "ReadBatches"
                >> beam.ParDo(_ReadBatches(self._format, self._batch_size)).with_output_types(Batch)
            )
        if self._format == "avro":
            return pbegin | "ReadAvro" >> beam.io.ReadFromAvro(self._pattern)
        return pbegin | "ReadJsonLines" >> beam.io.ReadFromText(self._pattern, coder=BytesCoder())

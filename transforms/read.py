"""Read: files on local disk or any Beam filesystem (gs://, s3://) as raw elements for Parse.

JSON Lines are read as *bytes* (not text) so that a line that is not valid UTF-8 becomes an
``invalid_encoding`` dead letter instead of failing the bundle; Avro files yield the records
fastavro decodes (dicts). The format is chosen by the caller or from the file extension.

Files are read in batches: lists of up to ``BATCH_SIZE`` elements (``transforms.batches``),
what the pipelines use (``batched=False`` unbatches them for the retention jobs and tests, after
the same bounded read). Files are matched with ``fileio.MatchFiles`` and cut into byte ranges of
  ``chunk_bytes`` (uncompressed JSON Lines; a compressed or Avro file is one range), the ranges
  are spread over the workers (``Reshuffle``) and each is read in one piece and cut into batches. A
  range owns the lines that *start* inside it, so every line is read exactly once whatever the
  chunk size. Memory per worker is one range of raw input and one batch in flight.

No line is held whole beyond ``max_line_bytes`` (``transforms.rawinput``): a longer line is
streamed past in pieces, hashed, and handed on as a ``Withheld`` summary, and an Avro file that
stops decoding part-way ends with a ``ReadFailure`` element, so that Parse makes both dead
letters instead of the job failing. Ranges never split a line: beyond ``end`` the reader reads
only to the end of the line that started inside its range.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import apache_beam as beam
import fastavro
from apache_beam.io import fileio
from apache_beam.io.filesystem import CompressionTypes, FileMetadata
from apache_beam.io.filesystems import FileSystems

from transforms.batches import BATCH_SIZE, Batch, Unbatch
from transforms.rawinput import DEFAULT_MAX_LINE_BYTES, ReadFailure, Withheld, WithheldBuilder

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


_BOM = b"\xef\xbb\xbf"
# Pieces an oversized line is read in: a line is never held whole once it is known to be too
# large, so memory per worker stays one range plus one piece whatever the input holds.
PIECE_BYTES = 1024 * 1024


def _finish(line: bytes, max_line_bytes: int) -> bytes | Withheld:
    """A line as read (without its newline), as Parse gets it: without a CR before the newline,
    or its :class:`Withheld` summary if it is longer than ``max_line_bytes`` (counting the CR:
    the limit and the hash are of the bytes between two newlines)."""
    if len(line) > max_line_bytes:
        return Withheld.of(line)
    return line[:-1] if line.endswith(b"\r") else line


def _without_bom(first_line: bytes | Withheld) -> bytes | Withheld:
    """The first line of a file without a UTF-8 byte order mark (Windows exports start so)."""
    if first_line.__class__ is bytes and first_line.startswith(_BOM):
        return first_line[len(_BOM) :]
    return first_line


def _rest_of_line(head: bytes, fh: Any, max_line_bytes: int, piece_bytes: int) -> bytes | Withheld:
    """``head`` and the rest of its line from ``fh`` (to the newline or the end of the file),
    read in pieces: held whole only while it fits ``max_line_bytes``, then hashed piece by
    piece into its :class:`Withheld` summary."""
    parts, size, builder = [head], len(head), None
    while True:
        piece = fh.readline(piece_bytes)
        ends = piece.endswith(b"\n")
        if ends:
            piece = piece[:-1]
        if builder is None:
            parts.append(piece)
            size += len(piece)
            if size > max_line_bytes:
                builder = WithheldBuilder()
                for part in parts:
                    builder.add(part)
        else:
            builder.add(piece)
        if ends or not piece:
            break
    return builder.build() if builder is not None else _finish(b"".join(parts), max_line_bytes)


def _skip_line(fh: Any, piece_bytes: int) -> int:
    """Read past the line in progress, in pieces; the number of bytes skipped."""
    skipped = 0
    while True:
        piece = fh.readline(piece_bytes)
        skipped += len(piece)
        if not piece or piece.endswith(b"\n"):
            return skipped


def _in_batches(lines: list[Any], batch_size: int) -> Iterator[Batch]:
    for first in range(0, len(lines), batch_size):
        yield Batch(lines[first : first + batch_size])


def read_line_batches(
    fh: Any,
    start: int,
    end: int | None,
    batch_size: int,
    max_line_bytes: int = DEFAULT_MAX_LINE_BYTES,
    piece_bytes: int = PIECE_BYTES,
) -> Iterator[Batch]:
    """Batches of the lines that start in ``[start, end)`` of the open file ``fh`` (without
    their line ending; blank lines included: Parse makes them dead letters). A line longer than
    ``max_line_bytes`` is a :class:`~transforms.rawinput.Withheld` summary instead (Parse: a
    ``line_too_large`` dead letter); a UTF-8 byte order mark at the start of the file is not
    part of its first line. ``piece_bytes``: what is read at a time of a stream (a compressed
    file) and past the end of a range.

    A bounded range is read in one piece and split in C (``bytes.split``): a Python loop per
    line costs more than the rest of reading. ``end`` None (a compressed file) streams.
    """
    if start:
        # The line in progress at ``start`` belongs to the range before (a line starting right
        # at ``start`` follows the newline at ``start - 1`` and is ours).
        fh.seek(start - 1)
        position = start - 1 + _skip_line(fh, piece_bytes)
    else:
        position = 0
    if end is None:
        lines = list(_stream_lines(fh, max_line_bytes, piece_bytes))
        lines[:1] = map(_without_bom, lines[:1])
        yield from _in_batches(lines, batch_size)
        return
    if position >= end:
        return
    data = fh.read(end - position)
    lines: list[Any] = data.split(b"\n")
    last = lines.pop()  # b"" after a final newline, else a line that may go on past ``end``
    if b"\r" in data or (lines and max(map(len, lines)) > max_line_bytes):
        lines = [_finish(line, max_line_bytes) for line in lines]
    if last:
        lines.append(_rest_of_line(last, fh, max_line_bytes, piece_bytes))
    if position == 0:
        lines[:1] = map(_without_bom, lines[:1])
    yield from _in_batches(lines, batch_size)


def _stream_lines(fh: Any, max_line_bytes: int, piece_bytes: int) -> Iterator[bytes | Withheld]:
    """The lines of a stream read in pieces (a compressed file), each bounded like a range's."""
    current, builder = b"", None
    while piece := fh.read(piece_bytes):
        *complete, rest = piece.split(b"\n")
        for part in complete:
            if builder is not None:
                builder.add(part)
                yield builder.build()
                builder = None
            else:
                yield _finish(current + part, max_line_bytes)
            current = b""
        if builder is not None:
            builder.add(rest)
        else:
            current += rest
            if len(current) > max_line_bytes:
                builder = WithheldBuilder()
                builder.add(current)
                current = b""
    if builder is not None:
        yield builder.build()
    elif current:
        yield _finish(current, max_line_bytes)


class _ReadBatches(beam.DoFn):
    """A byte range of a file -> batches of lines (JSON Lines) or records (Avro)."""

    def __init__(self, input_format: str, batch_size: int, max_line_bytes: int) -> None:
        self._format = input_format
        self._batch_size = batch_size
        self._max_line_bytes = max_line_bytes

    def process(self, byte_range: ByteRange) -> Iterator[Batch]:
        path, start, end = byte_range
        compression = CompressionTypes.AUTO if end is None else CompressionTypes.UNCOMPRESSED
        with FileSystems.open(path, compression_type=compression) as fh:
            if self._format == "avro":
                yield from self._avro(fh, path)
            else:
                yield from read_line_batches(fh, start, end, self._batch_size, self._max_line_bytes)

    def _avro(self, fh: Any, path: str) -> Iterator[Batch]:
        """The records of an Avro file; a file that stops decoding part-way ends with a
        :class:`~transforms.rawinput.ReadFailure` for the rest (Parse: a dead letter), so a
        corrupt file is reported instead of failing the job."""
        batch, records = Batch(), 0
        try:
            for record in fastavro.reader(fh):
                batch.append(record)
                records += 1
                if len(batch) >= self._batch_size:
                    yield batch
                    batch = Batch()
        except Exception as err:  # any decoding failure of a corrupt file
            batch.append(ReadFailure(path, records, type(err).__name__))
        if batch:
            yield batch


class ReadRecords(beam.PTransform):
    """Raw elements of every file matching ``pattern``: bytes lines (or, for a line over
    ``max_line_bytes``, its :class:`~transforms.rawinput.Withheld` summary) or Avro dicts, in
    batches, or (``batched=False``) one by one after the same bounded read."""

    def __init__(
        self,
        pattern: str,
        input_format: str = "auto",
        *,
        batched: bool = False,
        chunk_bytes: int = DEFAULT_CHUNK_BYTES,
        batch_size: int = BATCH_SIZE,
        max_line_bytes: int = DEFAULT_MAX_LINE_BYTES,
    ) -> None:
        super().__init__()
        if chunk_bytes < 1 or batch_size < 1 or max_line_bytes < 1:
            raise ValueError("chunk_bytes, batch_size and max_line_bytes must be >= 1")
        self._pattern = pattern
        self._format = resolve_input_format(pattern, input_format)
        self._batched = batched
        self._chunk_bytes = chunk_bytes
        self._batch_size = batch_size
        self._max_line_bytes = max_line_bytes

    def expand(self, pbegin):
        read = _ReadBatches(self._format, self._batch_size, self._max_line_bytes)
        batches = (
            pbegin
            | "MatchFiles"
            >> fileio.MatchFiles(
                self._pattern, empty_match_treatment=fileio.EmptyMatchTreatment.DISALLOW
            )
            | "SplitFiles" >> beam.FlatMap(byte_ranges, self._format, self._chunk_bytes)
            | "Distribute" >> beam.Reshuffle()
            | "ReadBatches" >> beam.ParDo(read).with_output_types(Batch)
        )
        return batches if self._batched else batches | "Unbatch" >> Unbatch()

"""Read: files on local disk or any Beam filesystem (gs://, s3://) as raw elements for Parse.

What a file holds and how it is read is its input format's (``transforms.inputformats``: JSON
Lines as bytes lines, Avro and Parquet as decoded records); the format is chosen by the caller or
from the pattern's suffix. Here is what every format shares: files are matched with
``fileio.MatchFiles``, cut into the format's ranges (byte ranges of ``chunk_bytes`` for
uncompressed JSON Lines, a whole file otherwise), the ranges are spread over the workers
(``Reshuffle``) and each is read by its format in batches of up to ``BATCH_SIZE`` elements
(``transforms.elements``). Memory per worker is one range of raw input (a row group for
Parquet) and one batch in flight.

:class:`ReadBatches` is what the ingestion pipelines read with: batches, as every stage takes
them. :class:`ReadRecords` is the same read, one element at a time, for the retention jobs'
requests and events, which are parsed one by one.

No line is held whole beyond ``max_line_bytes`` (``transforms.rawinput``), and a file that
stops decoding part-way ends with a ``ReadFailure`` element, so that Parse makes dead letters of
both instead of the job failing.
"""

from __future__ import annotations

from collections.abc import Iterator

import apache_beam as beam
from apache_beam.io import fileio
from apache_beam.io.filesystem import CompressionTypes, FileMetadata
from apache_beam.io.filesystems import FileSystems

from transforms.batches import BATCH_SIZE, Batch, Unbatch
from transforms.inputformats import ByteRange, InputFormat, format_named, resolve_input_format
from transforms.rawinput import DEFAULT_MAX_LINE_BYTES

__all__ = ["DEFAULT_CHUNK_BYTES", "ReadBatches", "ReadRecords"]

# 4 MiB: 1M visits (~300 MB) make ~75 ranges, so that the workers share the input evenly (the
# runner hands each worker a share of the ranges); a range costs one open and one seek, and is
# read in one piece, so this is also the most a worker holds of the raw input.
DEFAULT_CHUNK_BYTES = 4 * 1024 * 1024


def _ranges(metadata: FileMetadata, fmt: InputFormat, chunk_bytes: int) -> Iterator[ByteRange]:
    return fmt.ranges(metadata.path, metadata.size_in_bytes, chunk_bytes)


class _ReadBatches(beam.DoFn):
    """A range of a file -> batches of its format's raw elements."""

    def __init__(self, fmt: InputFormat, batch_size: int, max_line_bytes: int) -> None:
        self._format = fmt
        self._batch_size = batch_size
        self._max_line_bytes = max_line_bytes

    def process(self, byte_range: ByteRange) -> Iterator[Batch]:
        byte_range = ByteRange(*byte_range)
        # A whole file is opened as it is stored (decompressed if it is compressed); a range of
        # bytes only exists in an uncompressed one.
        compression = (
            CompressionTypes.AUTO if byte_range.end is None else CompressionTypes.UNCOMPRESSED
        )
        with FileSystems.open(byte_range.path, compression_type=compression) as fh:
            yield from self._format.read(fh, byte_range, self._batch_size, self._max_line_bytes)


class ReadBatches(beam.PTransform):
    """Raw elements of every file matching ``pattern``, in batches: bytes lines (or, for a line
    over ``max_line_bytes``, its :class:`~transforms.rawinput.Withheld` summary) or decoded
    records, by the input format (``auto``: from the pattern's suffix)."""

    def __init__(
        self,
        pattern: str,
        input_format: str = "auto",
        *,
        chunk_bytes: int = DEFAULT_CHUNK_BYTES,
        batch_size: int = BATCH_SIZE,
        max_line_bytes: int = DEFAULT_MAX_LINE_BYTES,
    ) -> None:
        super().__init__()
        if chunk_bytes < 1 or batch_size < 1 or max_line_bytes < 1:
            raise ValueError("chunk_bytes, batch_size and max_line_bytes must be >= 1")
        self._pattern = pattern
        self._format = format_named(resolve_input_format(pattern, input_format))
        self._chunk_bytes = chunk_bytes
        self._batch_size = batch_size
        self._max_line_bytes = max_line_bytes

    def expand(self, pbegin):
        read = _ReadBatches(self._format, self._batch_size, self._max_line_bytes)
        return (
            pbegin
            | "MatchFiles"
            >> fileio.MatchFiles(
                self._pattern, empty_match_treatment=fileio.EmptyMatchTreatment.DISALLOW
            )
            | "SplitFiles" >> beam.FlatMap(_ranges, self._format, self._chunk_bytes)
            | "Distribute" >> beam.Reshuffle()
            | "ReadBatches" >> beam.ParDo(read).with_output_types(Batch)
        )


class ReadRecords(beam.PTransform):
    """:class:`ReadBatches`, one element at a time (the same bounded read, then unbatched): for
    the retention jobs, whose requests and events are parsed one by one."""

    def __init__(self, pattern: str, input_format: str = "auto", **read: int) -> None:
        super().__init__()
        self._read = ReadBatches(pattern, input_format, **read)

    def expand(self, pbegin):
        return pbegin | "Read" >> self._read | "Unbatch" >> Unbatch()

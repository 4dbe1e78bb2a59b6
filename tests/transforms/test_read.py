"""Read: the input formats (JSON Lines in byte ranges, Avro, Parquet), each file read in bounded
memory, every line or record once, a corrupt file ending as one element Parse makes a dead
letter of; and the registry that picks a format."""

from __future__ import annotations

import gzip
import json

import apache_beam as beam
import fastavro
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from apache_beam.io.filesystem import CompressionTypes, FileMetadata
from apache_beam.io.filesystems import FileSystems
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to
from hypothesis import given, settings
from hypothesis import strategies as st

from pipelines.options import IngestOptions, flags_of
from schemas.avro import load_avsc
from transforms.inputformats import (
    format_named,
    format_names,
    input_format_choices,
    resolve_input_format,
)
from transforms.lines import read_line_batches
from transforms.rawinput import ReadFailure, Withheld
from transforms.read import ReadBatches, ReadRecords

JSON_LINES = format_named("jsonl")


def _expected_lines(data: bytes, max_line_bytes: int) -> list:
    """The contract of the reader: the lines without their ending ("\n" or "\r\n"), no extra
    line after a final newline, a line longer than the limit (CR included) as its summary, the
    file's byte order mark not part of its first line."""
    expected = data.split(b"\n")
    last = expected.pop()
    if last:
        expected.append(last)
    lines = [
        Withheld.of(line)
        if len(line) > max_line_bytes
        else line[:-1]
        if line.endswith(b"\r")
        else line
        for line in expected
    ]
    if lines and isinstance(lines[0], bytes) and lines[0].startswith(b"\xef\xbb\xbf"):
        lines[0] = lines[0][3:]
    return lines


_LINES = st.lists(
    st.binary(max_size=12).map(lambda b: b.replace(b"\n", b""))
    | st.sampled_from([b"ab\r", b"\xef\xbb\xbf{}"]),
    max_size=30,
)


@settings(max_examples=200, deadline=None)
@given(
    lines=_LINES,
    chunk=st.integers(min_value=1, max_value=64),
    final_newline=st.booleans(),
    batch_size=st.integers(min_value=1, max_value=5),
    max_line_bytes=st.integers(min_value=1, max_value=14),
)
def test_byte_ranges_read_every_line_exactly_once(
    tmp_path_factory, lines, chunk, final_newline, batch_size, max_line_bytes
):
    data = b"\n".join(lines) + (b"\n" if final_newline and lines else b"")
    path = tmp_path_factory.mktemp("ranges") / "in.jsonl"
    path.write_bytes(data)
    meta = FileMetadata(str(path), len(data))
    read = []
    for p, start, end in JSON_LINES.ranges(meta.path, meta.size_in_bytes, chunk):
        with open(p, "rb") as fh:
            for batch in read_line_batches(
                fh, start, end, batch_size, max_line_bytes, piece_bytes=3
            ):
                assert 1 <= len(batch) <= batch_size
                read.extend(batch)
    assert read == _expected_lines(data, max_line_bytes)


@settings(max_examples=100, deadline=None)
@given(lines=_LINES, final_newline=st.booleans(), max_line_bytes=st.integers(1, 14))
def test_a_compressed_file_streams_the_same_lines(
    tmp_path_factory, lines, final_newline, max_line_bytes
):
    data = b"\n".join(lines) + (b"\n" if final_newline and lines else b"")
    path = tmp_path_factory.mktemp("stream") / "in.jsonl.gz"
    path.write_bytes(gzip.compress(data))
    with FileSystems.open(str(path), compression_type=CompressionTypes.AUTO) as fh:
        batches = read_line_batches(fh, 0, None, 4, max_line_bytes, piece_bytes=5)
        read = [line for batch in batches for line in batch]  # lines cross pieces
    assert read == _expected_lines(data, max_line_bytes)


def test_an_oversized_line_is_never_held_whole(tmp_path):
    big = b'{"event_id": "big-1", "url": "' + b"x" * 5_000_000 + b'"}'
    data = b'{"event_id": "a"}\n' + big + b"\n" + b'\xef\xbb\xbf{"event_id": "b"}\n'
    path = tmp_path / "in.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + data)
    meta = FileMetadata(str(path), len(data) + 3)
    read = []
    for p, start, end in JSON_LINES.ranges(meta.path, meta.size_in_bytes, 1 << 20):
        with open(p, "rb") as fh:
            for batch in read_line_batches(fh, start, end, 100, 1 << 20):
                read.extend(batch)
    # the file's BOM is not part of its first line; a BOM inside the file is the line's own
    assert read == [b'{"event_id": "a"}', Withheld.of(big), b'\xef\xbb\xbf{"event_id": "b"}']
    assert read[1].event_id == "big-1" and read[1].length == len(big)


def test_a_compressed_file_is_one_range(tmp_path):
    path = tmp_path / "in.jsonl.gz"
    path.write_bytes(gzip.compress(b"a\nb\n"))
    meta = FileMetadata(str(path), 10**9)
    assert list(JSON_LINES.ranges(meta.path, meta.size_in_bytes, 1)) == [(str(path), 0, None)]


def test_batched_read_matches_the_per_line_read(tmp_path):
    lines = [f'{{"n": {i}}}'.encode() for i in range(500)] + [b"", b"\xff\xfe"]
    (tmp_path / "a.jsonl").write_bytes(b"\n".join(lines[:300]) + b"\n")
    (tmp_path / "b.jsonl.gz").write_bytes(gzip.compress(b"\n".join(lines[300:])))
    pattern = str(tmp_path / "*.jsonl*")
    with TestPipeline(runner="FnApiRunner") as p:
        batched = (
            p
            | "Batched" >> ReadBatches(pattern, chunk_bytes=512, batch_size=7)
            | beam.FlatMap(lambda b: b)
        )
        single = p | "Single" >> ReadRecords(pattern)
        assert_that(batched, equal_to(lines), label="BatchedAll")
        assert_that(single, equal_to(lines), label="SingleAll")


def test_batched_read_of_no_file_fails(tmp_path):
    pipeline = TestPipeline(runner="FnApiRunner")
    _ = pipeline | ReadBatches(str(tmp_path / "missing-*.jsonl"))
    with pytest.raises(Exception, match=r"Empty match"):
        pipeline.run().wait_until_finish()


# ------------------------------------------------------------------------------- the registry


# (pattern, --input_format) -> the format read
FORMAT_OF = {
    ("in/*.jsonl", "auto"): "jsonl",
    ("in/*", "auto"): "jsonl",
    ("in/v.avro", "auto"): "avro",
    ("gs://b/v/*.avro*", "auto"): "avro",
    ("gs://lake/export/*.parquet", "auto"): "parquet",
    ("gs://lake/export/part-*", "parquet"): "parquet",
    ("in/v.avro", "jsonl"): "jsonl",
}


def test_the_format_is_the_flag_or_the_patterns_suffix():
    assert {given: resolve_input_format(*given) for given in FORMAT_OF} == FORMAT_OF


def test_an_unknown_format_is_an_error():
    with pytest.raises(
        ValueError, match=r"--input_format: unknown input format 'csv' \(registered"
    ):
        resolve_input_format("in/*.csv", "csv")


def test_the_command_line_offers_every_registered_format():
    """``--input_format``'s help lists the registry's formats: a new one needs no flag edit."""
    action = flags_of([IngestOptions])["--input_format"]
    assert input_format_choices() == ("auto", *format_names())
    assert {"jsonl", "avro", "parquet"} <= set(format_names())
    assert all(name in action.help for name in format_names())


def _read_file(path, input_format: str, batch_size: int = 4) -> list:
    """Every element a format reads of ``path``, as the reader's DoFn opens it."""
    fmt = format_named(input_format)
    elements = []
    for byte_range in fmt.ranges(str(path), path.stat().st_size, 1 << 20):
        with FileSystems.open(byte_range.path, compression_type=CompressionTypes.AUTO) as fh:
            for batch in fmt.read(fh, byte_range, batch_size, 1 << 20):
                assert 1 <= len(batch) <= batch_size
                elements.extend(batch)
    return elements


VISITS = [
    {"event_id": "a", "ip": "8.8.8.8", "visited_at": "2026-10-05T23:30:00+08:00", "url": "/x"},
    {"event_id": "b", "ip": "::1", "visited_at": "1790000000000", "url": None},
    {"event_id": "c", "ip": "1.2.3.4", "visited_at": "1790000000001"},
]


def test_parquet_rows_are_the_records_a_json_producer_writes(tmp_path):
    """A null is an absent key (every row of a Parquet file has every column); the file is
    read a batch at a time, row group by row group."""
    path = tmp_path / "v.parquet"
    pq.write_table(pa.Table.from_pylist(VISITS), path, row_group_size=2)
    assert pq.ParquetFile(path).metadata.num_row_groups == 2
    expected = [{k: v for k, v in visit.items() if v is not None} for visit in VISITS]
    assert _read_file(path, "parquet", batch_size=2) == expected


def _damaged_pages(data: bytes) -> bytes:
    """The file with its column data overwritten, header and footer intact."""
    return data[:4] + b"\xff" * 400 + data[404:]


@pytest.mark.parametrize(
    ("input_format", "damage"),
    [
        ("parquet", lambda data: b"not a parquet file at all"),
        ("parquet", lambda data: data[: len(data) // 2]),  # cut short: no footer
        ("parquet", _damaged_pages),
        ("avro", lambda data: data[: len(data) - 40]),
    ],
)
def test_a_corrupt_file_ends_in_one_read_failure(tmp_path, input_format, damage):
    """Whatever the decoder raises, the file ends with one ReadFailure (Parse: one
    ``unreadable_file:<error>`` dead letter) after the records read before it."""
    path = tmp_path / f"v.{input_format}"
    records = [
        {"event_id": f"e{i}", "ip": "8.8.8.8", "visited_at": str(i), "url": None}
        for i in range(500)
    ]
    if input_format == "parquet":
        pq.write_table(pa.Table.from_pylist(records), path, compression="NONE")
    else:
        schema = fastavro.parse_schema(load_avsc("visit_input"))
        with path.open("wb") as fh:
            fastavro.writer(fh, schema, records, codec="null", sync_interval=1000)
    path.write_bytes(damage(path.read_bytes()))
    elements = _read_file(path, input_format, batch_size=100)
    (failure,) = [e for e in elements if isinstance(e, ReadFailure)]
    assert elements[-1] is failure
    assert failure.path == str(path) and failure.records == len(elements) - 1
    assert failure.error.isidentifier()  # the exception's type, never its message


def test_read_batches_reads_each_format_and_read_records_one_by_one(tmp_path):
    lines = [json.dumps(v).encode() for v in VISITS]
    (tmp_path / "v.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    pq.write_table(pa.Table.from_pylist([{"event_id": "p", "n": None}]), tmp_path / "v.parquet")
    with TestPipeline(runner="FnApiRunner") as p:
        parquet = p | "Parquet" >> ReadBatches(str(tmp_path / "*.parquet"))
        assert_that(parquet, equal_to([[{"event_id": "p"}]]), label="ParquetBatches")
        single = p | "Single" >> ReadRecords(str(tmp_path / "*.jsonl"), batch_size=2)
        assert_that(single, equal_to(lines), label="JsonLinesOneByOne")

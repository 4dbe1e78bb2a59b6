"""transforms.sinks: Hive-partitioned Parquet/Avro data and JSON Lines dead letters.

Every pipeline test runs on the FnApiRunner and reads the written files back with
pyarrow (per file and as a Hive-partitioned dataset) and fastavro. The DoFns of the
columnar writer (``WriteTables``) are also driven directly, to see its spills.
"""

from __future__ import annotations

import collections
import datetime as dt
import importlib.util
import io
import json
import zlib
from pathlib import Path

import apache_beam as beam
import fastavro
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.testing.test_pipeline import TestPipeline as BeamTestPipeline
from apache_beam.testing.util import assert_that, equal_to
from apache_beam.transforms.window import GlobalWindow
from apache_beam.utils.windowed_value import WindowedValue
from hypothesis import given
from hypothesis import strategies as st

from schemas.arrow import arrow_schema, to_arrow_table
from tests.support.objectstore import OBJECTS  # registers the memstore:// filesystem
from transforms.sinks import (
    HIVE_NULL_PARTITION,
    MAX_EXPIRY_MICROS,
    OPEN_ENDED_EXPIRY_DATE,
    JsonLinesSink,
    ParquetSink,
    WriteDeadLetters,
    WritePartitioned,
    WriteTables,
    dead_letter_json,
    dead_letter_path,
    dead_letter_reason,
    expiry_date,
    micros_to_iso,
    partition_path,
)
from transforms.sinks.deadletters import LETTER_SCHEMA, DeadLetterLines, LettersToTables
from transforms.sinks.files import AvroFileWriter, ParquetFileWriter
from transforms.sinks.runs import _row_shards, destination_keys, destination_of_key, sort_run
from transforms.sinks.tables import (
    METRICS_NAMESPACE,
    DataTables,
    _BufferPartitions,
    _Compact,
    _remove_temp_files,
)

EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
TS = {"type": "long", "logicalType": "timestamp-micros"}

# Tiny test schemas (the real .avsc files are not a dependency of these tests).
VISIT_SCHEMA = {
    "type": "record",
    "name": "TestVisit",
    "namespace": "tests.sinks",
    "fields": [
        {"name": "event_id", "type": "string"},
        {"name": "visited_at", "type": TS},
        {"name": "url", "type": ["null", "string"], "default": None},
        {"name": "data_category", "type": "string"},
        {"name": "purposes", "type": {"type": "array", "items": "string"}},
        {"name": "expires_at", "type": ["null", TS], "default": None},
    ],
}
COMPANY_SCHEMA = {
    "type": "record",
    "name": "TestCompany",
    "fields": [
        {"name": "event_id", "type": "string"},
        {"name": "company_name", "type": ["null", "string"], "default": None},
        {"name": "company_size", "type": ["null", "int"], "default": None},
        {"name": "data_category", "type": "string"},
        {"name": "expires_at", "type": ["null", TS], "default": None},
    ],
}
SCHEMAS = {"visit": VISIT_SCHEMA, "company": COMPANY_SCHEMA}


def micros(iso: str) -> int:
    """Exact epoch micros of an ISO-8601 string with offset."""
    return (dt.datetime.fromisoformat(iso) - EPOCH) // dt.timedelta(microseconds=1)


def as_utc(us: int) -> dt.datetime:
    return EPOCH + dt.timedelta(microseconds=us)


# Expiry instants around UTC midnight, with the partition each must land in.
BOUNDARIES = [
    ("2025-01-01T23:30:00+00:00", "2025-01-01"),
    ("2025-01-02T00:30:00+08:00", "2025-01-01"),  # = 2025-01-01T16:30Z
    ("2025-01-01T23:59:59.999999+00:00", "2025-01-01"),
    ("2025-01-02T00:00:00+00:00", "2025-01-02"),
    ("2025-01-01T19:30:00-05:00", "2025-01-02"),  # = 2025-01-02T00:30Z
    ("1969-12-31T23:59:59.999999+00:00", "1969-12-31"),
]


def visit(i: int, expires_at: int | None, **extra) -> dict:
    return {
        "event_id": f"v{i:04d}",
        "visited_at": micros("2024-07-05T10:00:00+00:00") + i,
        "url": None if i % 4 == 0 else f"https://example.com/{i}",
        "data_category": "visit",
        "purposes": ["analytics"] if i % 2 else ["analytics", "marketing"],
        "expires_at": expires_at,
        **extra,
    }


def company(i: int, expires_at: int | None) -> dict:
    return {
        "event_id": f"v{i:04d}",
        "company_name": f"Acme {i}",
        "company_size": i,
        "data_category": "company",
        "expires_at": expires_at,
        "ip": "203.0.113.9",  # not in the schema: must not be written
    }


def run(build, workers: int = 1) -> beam.runners.runner.PipelineResult:
    """Run on the FnApiRunner; ``workers`` > 1 splits each stage's input into that many
    bundles (threads), which is what makes a per-bundle writer multiply files."""
    args = ["--runner=FnApiRunner"]
    if workers > 1:
        args += [f"--direct_num_workers={workers}", "--direct_running_mode=multi_threading"]
    pipeline = BeamTestPipeline(options=PipelineOptions(args), blocking=False)
    build(pipeline)
    result = pipeline.run()
    result.wait_until_finish()
    return result


def counters(result) -> dict[str, int]:
    found: dict[str, int] = {}
    query = result.metrics().query(MetricsFilter().with_namespace("compliance"))
    for item in query["counters"]:
        found[item.key.metric.name] = found.get(item.key.metric.name, 0) + item.committed
    return found


def files_under(root: Path, suffix: str) -> list[Path]:
    return sorted(p for p in root.rglob(f"*{suffix}") if p.is_file())


def partitions(root: Path, suffix: str) -> dict[str, list[Path]]:
    found: dict[str, list[Path]] = {}
    for path in files_under(root, suffix):
        found.setdefault(path.parent.relative_to(root).as_posix(), []).append(path)
    return found


def create_in_bundles(pipeline, rows: list[dict], bundles: int, label: str = "Rows"):
    """Several Create transforms flattened: the writer's input comes from several
    sources (with ``run(workers=...)`` also from several bundles)."""
    parts = [pipeline | f"{label}{k}" >> beam.Create(rows[k::bundles]) for k in range(bundles)]
    return tuple(parts) | f"{label}Flatten" >> beam.Flatten()


# --------------------------------------------------------------------- pure helpers


@pytest.mark.parametrize(("iso", "day"), BOUNDARIES)
def test_expiry_date_is_the_utc_date(iso, day):
    assert expiry_date(micros(iso)) == day


def test_expiry_date_open_ended_is_the_end_of_time():
    """Open-ended rows go to a date every reader types like the other partitions, not to
    Hive's null partition (which pyarrow, Spark and Polars cannot type when it is alone)."""
    assert expiry_date(None) == OPEN_ENDED_EXPIRY_DATE == "9999-12-31"


def test_no_real_expiry_lands_in_the_open_ended_partition():
    """The last real expiry is the end of 9999-12-30; a later one would be merged with the
    open-ended rows and never purged, so it is an error, not a partition."""
    assert expiry_date(MAX_EXPIRY_MICROS) == "9999-12-30"
    assert as_utc(MAX_EXPIRY_MICROS + 1) == dt.datetime(9999, 12, 31, tzinfo=dt.UTC)
    for late in (MAX_EXPIRY_MICROS + 1, micros("9999-12-31T23:59:59.999999+00:00")):
        with pytest.raises(ValueError, match="open-ended partition"):
            expiry_date(late)


@pytest.mark.parametrize("bad", [True, 1.5, "2025-01-01", dt.datetime(2025, 1, 1)])
def test_expiry_date_rejects_non_micros(bad):
    with pytest.raises(TypeError, match="epoch microseconds"):
        expiry_date(bad)


def test_expiry_date_out_of_range_is_a_clear_error():
    with pytest.raises(ValueError, match="outside the representable dates"):
        expiry_date(2**62)


@given(st.integers(-62_135_596_800_000_000, MAX_EXPIRY_MICROS))
def test_expiry_date_agrees_with_datetime(us):
    assert expiry_date(us) == as_utc(us).date().isoformat()


def test_partition_paths():
    at = micros("2025-01-02T00:30:00+08:00")
    assert (
        partition_path("website_visit", at) == "data_category=website_visit/expiry_date=2025-01-01"
    )
    assert partition_path("website_visit", None) == (
        "data_category=website_visit/expiry_date=9999-12-31"
    )
    # Values are escaped like Hive does, so a value can never add a directory level.
    assert partition_path("a/b=c", at) == "data_category=a%2Fb%3Dc/expiry_date=2025-01-01"
    assert dead_letter_path("visits", at) == "_dead_letter/source=visits/expiry_date=2025-01-01"
    assert dead_letter_path(None, None) == (
        "_dead_letter/source=__HIVE_DEFAULT_PARTITION__/expiry_date=9999-12-31"
    )


def test_micros_to_iso():
    assert micros_to_iso(micros("2025-01-02T00:30:00+08:00")) == "2025-01-01T16:30:00Z"
    assert micros_to_iso(1) == "1970-01-01T00:00:00.000001Z"
    assert micros_to_iso(-1) == "1969-12-31T23:59:59.999999Z"


def test_dead_letter_json_sorted_iso_and_lossless():
    letter = {
        "source": "visits",
        "stage": "parse",
        "error": "malformed_timestamp:visited_at",
        "raw": '{"visited_at": "yesterday", "name": "Zoë ***"}',
        "expires_at": micros("2025-01-02T00:30:00+08:00"),
        "bytes": b"\xff\x00",
        "event_id": None,
    }
    line = dead_letter_json(letter)
    decoded = json.loads(line)
    assert list(decoded) == sorted(decoded)
    assert decoded["expires_at"] == "2025-01-01T16:30:00Z"
    assert decoded["raw"] == letter["raw"]  # verbatim, including non-ASCII
    assert "Zoë" in line
    assert decoded["bytes"] == {"base64": "/wA="}
    assert letter["expires_at"] == micros("2025-01-01T16:30:00+00:00")  # input not mutated
    # A lone surrogate cannot be UTF-8: the line falls back to escapes instead of failing.
    odd = dead_letter_json({"raw": "bad \udcff byte"})
    assert json.loads(odd) == {"raw": "bad \udcff byte"}
    odd.encode("utf-8")


@pytest.mark.parametrize(
    ("error", "reason"),
    [
        ("missing_field:visited_at", "missing_field"),
        ("guard: contact field on restricted record", "guard"),
        ("json_decode", "json_decode"),
        ("", "unknown"),
        (None, "unknown"),
    ],
)
def test_dead_letter_reason(error, reason):
    assert dead_letter_reason({"error": error}) == reason


# ------------------------------------------------------------- sinks, used directly


def test_parquet_sink_bounds_row_groups_and_compresses(tmp_path):
    sink = ParquetSink(arrow_schema(VISIT_SCHEMA), codec="zstd", row_group_size=4)
    path = tmp_path / "direct.parquet"
    with open(path, "wb") as fh:
        sink.open(fh)
        for i in range(10):
            sink.write(visit(i, None))
        sink.flush()
        assert not fh.closed  # the handle belongs to WriteToFiles
        with pytest.raises(RuntimeError, match="cannot be appended"):
            sink.write(visit(11, None))
    meta = pq.ParquetFile(path).metadata
    assert [meta.row_group(g).num_rows for g in range(meta.num_row_groups)] == [4, 4, 2]
    assert {meta.row_group(0).column(c).compression for c in range(meta.num_columns)} == {"ZSTD"}
    assert pq.read_table(path).column("event_id").to_pylist() == [f"v{i:04d}" for i in range(10)]


def test_parquet_files_dictionary_encode_only_repetitive_columns(tmp_path):
    """Columns with few distinct values are dictionary-encoded; mostly distinct ones plain."""
    schema = pa.schema([("event_id", pa.string()), ("region", pa.string())])
    table = pa.table(
        {"event_id": [f"e{i}" for i in range(1000)], "region": ["EEA_UK", "OTHER"] * 500},
        schema=schema,
    )
    path = tmp_path / "chosen.parquet"
    with open(path, "wb") as fh:
        writer = ParquetFileWriter(fh, schema, "snappy", 300)
        writer.write(table)
        writer.close()
    meta = pq.ParquetFile(path).metadata
    encodings = {meta.schema.column(c).name: meta.row_group(0).column(c).encodings for c in (0, 1)}
    assert not any("DICTIONARY" in e for e in encodings["event_id"])
    assert any("DICTIONARY" in e for e in encodings["region"])
    assert [meta.row_group(g).num_rows for g in range(meta.num_row_groups)] == [300] * 3 + [100]
    assert pq.read_table(path).equals(table)


def test_parquet_sink_rejects_unknown_codec():
    with pytest.raises(ValueError, match="not available"):
        ParquetSink(pa.schema([]), codec="nope")


MILLIS_SCHEMA = {
    "type": "record",
    "name": "Millis",
    "fields": [
        {"name": "id", "type": "string"},
        {"name": "at_ms", "type": {"type": "long", "logicalType": "timestamp-millis"}},
        {
            "name": "maybe_ms",
            "type": ["null", {"type": "long", "logicalType": "timestamp-millis"}],
        },
        {"name": "at_us", "type": TS},
        {"name": "day", "type": ["null", {"type": "int", "logicalType": "date"}]},
    ],
}


def test_avro_writer_writes_blocks_and_converts_millis(tmp_path):
    at = micros("2025-01-01T23:30:00.123456+00:00")
    before_1970 = micros("1969-12-31T23:59:59.998500+00:00")
    rows = [
        {
            "id": f"r{i}",
            "at_ms": at,
            "maybe_ms": None if i % 2 else before_1970,
            "at_us": at + i,
            "day": i if i % 3 else None,
        }
        for i in range(50)
    ]
    table = to_arrow_table(rows, arrow_schema(MILLIS_SCHEMA))
    path = tmp_path / "direct.avro"
    with open(path, "wb") as fh:
        writer = AvroFileWriter(fh, MILLIS_SCHEMA, sync_interval=64)
        writer.write(table.slice(0, 20))
        writer.write(table.slice(20).to_batches()[0])  # tables and record batches alike
        writer.close()
        assert not fh.closed  # the handle belongs to the caller
    with open(path, "rb") as fh:
        blocks = list(fastavro.block_reader(fh))
    assert len(blocks) > 1  # small sync interval: several compressed blocks
    with open(path, "rb") as fh:
        reader = fastavro.reader(fh)
        assert reader.codec == "deflate"
        records = list(reader)
    expected = dt.datetime(2025, 1, 1, 23, 30, 0, 123000, tzinfo=dt.UTC)  # millis precision
    assert {r["at_ms"] for r in records} == {expected}
    # Floored, not truncated toward zero, before 1970 (as ``micros // 1000`` did).
    assert records[0]["maybe_ms"] == dt.datetime(1969, 12, 31, 23, 59, 59, 998000, tzinfo=dt.UTC)
    assert records[1]["maybe_ms"] is None
    assert [r["at_us"] for r in records] == [as_utc(at + i) for i in range(50)]  # exact
    assert records[1]["day"] == dt.date(1970, 1, 2) and records[3]["day"] is None
    assert [r["id"] for r in records] == [f"r{i}" for i in range(50)]


def test_avro_snappy_needs_cramjam(tmp_path):
    def make():
        return WritePartitioned(
            str(tmp_path), SCHEMAS, formats=("avro",), avro_codec="snappy"
        ).output.avro_codec

    if importlib.util.find_spec("cramjam") is None:
        with pytest.raises(ValueError, match="cramjam"):
            make()
    else:
        assert make() == "snappy"


def test_json_lines_sink(tmp_path):
    sink = JsonLinesSink()
    buffer = io.BytesIO()
    sink.open(buffer)
    sink.write({"b": 1, "a": "ü", "expires_at": 0})
    sink.flush()
    assert (
        buffer.getvalue() == '{"a": "ü", "b": 1, "expires_at": "1970-01-01T00:00:00Z"}\n'.encode()
    )


# ------------------------------------------------------------------- WritePartitioned


def _boundary_rows() -> list[dict]:
    rows = [visit(k, micros(iso)) for k, (iso, _day) in enumerate(BOUNDARIES)]
    rows += [visit(100 + k, None) for k in range(3)]  # open-ended retention
    rows += [
        visit(200 + k, micros("2025-03-01T12:00:00+00:00") + k * 86_400_000_000 // 2)
        for k in range(40)
    ]
    return rows


def test_parquet_layout_rows_timestamps_codec_and_counters(tmp_path):
    out = tmp_path / "out"
    visits = _boundary_rows()
    companies = [company(k, micros("2025-01-02T00:30:00+08:00")) for k in range(5)]
    companies.append(company(9, None))

    def build(p):
        rows = create_in_bundles(p, visits + companies, bundles=6)
        results = rows | "Write" >> WritePartitioned(str(out), SCHEMAS, run_token="tok1")
        assert_that(results | beam.Map(lambda r: r.file_name), _SameAsFilesOnDisk(out))

    result = run(build, workers=3)

    # Layout: exactly one Parquet file per partition (3 bundles notwithstanding).
    layout = partitions(out, ".parquet")
    expected_visit_days = {day for _iso, day in BOUNDARIES} | {
        as_utc(r["expires_at"]).date().isoformat()
        for r in visits[len(BOUNDARIES) :]
        if r["expires_at"]
    }
    expected_dirs = {f"data_category=visit/expiry_date={d}" for d in expected_visit_days}
    expected_dirs |= {
        f"data_category=visit/expiry_date={OPEN_ENDED_EXPIRY_DATE}",
        "data_category=company/expiry_date=2025-01-01",
        f"data_category=company/expiry_date={OPEN_ENDED_EXPIRY_DATE}",
    }
    assert set(layout) == expected_dirs
    assert all(len(files) == 1 for files in layout.values())
    for files in layout.values():
        assert files[0].name == "part-00000-of-00001-tok1.parquet"
    # WriteToFiles' temp directory is gone and nothing else was left behind.
    assert [p.name for p in out.iterdir() if p.name.startswith(".")] == []
    assert files_under(out, "") == files_under(out, ".parquet")

    # Rows per partition, read file by file.
    for rel_dir, files in layout.items():
        table = pq.read_table(files[0])
        category = rel_dir.split("/")[0].split("=")[1]
        day = rel_dir.split("=")[-1]
        source = visits if category == "visit" else companies
        assert sorted(table.column("event_id").to_pylist()) == sorted(
            r["event_id"] for r in source if expiry_date(r["expires_at"]) == day
        )
        assert table.schema.field("expires_at").type == pa.timestamp("us", tz="UTC")
        assert "ip" not in table.column_names  # not in the category's schema

    # Boundary rows: each in the UTC-day partition, instant preserved, tz UTC.
    boundary = pq.read_table(layout["data_category=visit/expiry_date=2025-01-01"][0]).to_pylist()
    by_id = {r["event_id"]: r for r in boundary}
    assert by_id["v0001"]["expires_at"] == dt.datetime(2025, 1, 1, 16, 30, tzinfo=dt.UTC)
    assert by_id["v0002"]["expires_at"] == dt.datetime(
        2025, 1, 1, 23, 59, 59, 999999, tzinfo=dt.UTC
    )
    assert by_id["v0001"]["visited_at"] == as_utc(visits[1]["visited_at"])
    assert by_id["v0000"]["url"] is None and by_id["v0000"]["purposes"] == [
        "analytics",
        "marketing",
    ]

    # Compression: snappy on every column chunk of every file (Beam's default is none).
    for path in files_under(out, ".parquet"):
        meta = pq.ParquetFile(path).metadata
        for g in range(meta.num_row_groups):
            for c in range(meta.num_columns):
                assert meta.row_group(g).column(c).compression == "SNAPPY"

    # The whole output as a Hive-partitioned dataset, per category (schemas differ).
    dataset = ds.dataset(
        files_under(out / "data_category=visit", ".parquet"),
        format="parquet",
        partitioning="hive",
        partition_base_dir=str(out),
    )
    table = dataset.to_table()
    assert table.num_rows == len(visits)
    open_ended = table.filter(pa.compute.equal(table.column("expiry_date"), OPEN_ENDED_EXPIRY_DATE))
    assert sorted(open_ended.column("event_id").to_pylist()) == ["v0100", "v0101", "v0102"]
    assert open_ended.column("expires_at").null_count == 3  # the rows' own expiry stays null
    assert table.column("expiry_date").null_count == 0

    assert counters(result) == {"written.visit": len(visits), "written.company": len(companies)}


class _SameAsFilesOnDisk:
    """assert_that matcher: the FileResults name exactly the files that exist."""

    def __init__(self, root: Path) -> None:
        self.root = str(root)

    def __call__(self, names):
        on_disk = sorted(str(p) for p in Path(self.root).rglob("*.parquet"))
        assert sorted(names) == on_disk, (sorted(names), on_disk)
        assert all(name.startswith(self.root + "/data_category=") for name in names)


def test_both_formats_hold_the_same_rows(tmp_path):
    out = tmp_path / "both"
    visits = _boundary_rows()

    def build(p):
        _ = (
            p
            | beam.Create(visits)
            | WritePartitioned(
                str(out),
                {"visit": VISIT_SCHEMA},
                formats=("parquet", "avro"),
                parquet_codec="zstd",
                run_token="both",
            )
        )

    result = run(build)
    parquet = partitions(out, ".parquet")
    avro = partitions(out, ".avro")
    assert set(parquet) == set(avro)
    assert all(len(f) == 1 for f in avro.values())
    for rel_dir, (avro_file,) in avro.items():
        assert avro_file.name == "part-00000-of-00001-both.avro"
        with open(avro_file, "rb") as fh:
            reader = fastavro.reader(fh)
            assert reader.codec == "deflate"
            assert reader.writer_schema["name"] == "tests.sinks.TestVisit"
            from_avro = sorted(reader, key=lambda r: r["event_id"])
        from_parquet = sorted(
            pq.read_table(parquet[rel_dir][0]).to_pylist(), key=lambda r: r["event_id"]
        )
        assert from_avro == from_parquet  # same rows, same UTC instants
        for r in from_avro:
            assert r["visited_at"].tzinfo is not None
            assert r["visited_at"].utcoffset() == dt.timedelta(0)
        meta = pq.ParquetFile(parquet[rel_dir][0]).metadata
        assert meta.row_group(0).column(0).compression == "ZSTD"
    total = sum(len(pq.read_table(f[0])) for f in parquet.values())
    assert total == len(visits)
    assert counters(result) == {"written.visit": len(visits)}  # once per row, not per format


def _write_sharded(out: Path, rows: list[dict], token: str) -> None:
    def build(p):
        _ = create_in_bundles(p, rows, bundles=4) | WritePartitioned(
            str(out), {"visit": VISIT_SCHEMA}, shards_per_partition=3, run_token=token
        )

    run(build, workers=3)


def test_shards_bound_files_per_partition_and_assignment_is_deterministic(tmp_path):
    day = micros("2025-06-01T08:00:00+00:00")
    rows = [visit(i, day) for i in range(300)] + [visit(1000, None)]
    _write_sharded(tmp_path / "a", rows, "runa")
    _write_sharded(tmp_path / "b", rows, "runb")

    def shard_contents(root: Path) -> dict[str, list[str]]:
        return {
            f"{p.parent.name}/{p.name.rsplit('-', 1)[0]}": sorted(
                pq.read_table(p).column("event_id").to_pylist()
            )
            for p in files_under(root, ".parquet")
        }

    first, second = shard_contents(tmp_path / "a"), shard_contents(tmp_path / "b")
    assert first == second  # same rows in the same shard files, run after run
    full_day = [k for k in first if k.startswith("expiry_date=2025-06-01/")]
    assert sorted(full_day) == [f"expiry_date=2025-06-01/part-0000{s}-of-00003" for s in range(3)]
    assert sum(len(first[k]) for k in full_day) == 300
    assert all(len(first[k]) > 50 for k in full_day)  # CRC32 spreads the rows
    # A partition with one row gets one file, not three (two of them empty).
    null_files = [k for k in first if OPEN_ENDED_EXPIRY_DATE in k]
    assert len(null_files) == 1
    assert first[null_files[0]] == ["v1000"]


def test_second_run_into_same_partition_adds_files(tmp_path):
    day = micros("2025-06-01T08:00:00+00:00")
    for token, ids in (("first", range(3)), ("second", range(3, 6))):

        def build(p, ids=ids, token=token):
            _ = (
                p
                | beam.Create([visit(i, day) for i in ids])
                | WritePartitioned(str(tmp_path), {"visit": VISIT_SCHEMA}, run_token=token)
            )

        run(build)
    files = files_under(tmp_path, ".parquet")
    assert [f.name for f in files] == [
        "part-00000-of-00001-first.parquet",
        "part-00000-of-00001-second.parquet",
    ]
    assert sum(pq.read_metadata(f).num_rows for f in files) == 6


def test_unknown_category_fails_the_pipeline_and_writes_nothing(tmp_path):
    rows = [visit(1, None), {**visit(2, None), "data_category": "not_in_policy"}]

    def build(p):
        _ = p | beam.Create(rows) | WritePartitioned(str(tmp_path), {"visit": VISIT_SCHEMA})

    with pytest.raises(Exception, match=r"no schema for data_category 'not_in_policy'"):
        run(build)
    assert files_under(tmp_path, ".parquet") == []


def test_missing_required_value_fails_loudly(tmp_path):
    row = {k: v for k, v in visit(1, None).items() if k != "visited_at"}

    def build(p):
        _ = p | beam.Create([row]) | WritePartitioned(str(tmp_path), {"visit": VISIT_SCHEMA})

    with pytest.raises(Exception, match=r"column 'visited_at' is required"):
        run(build)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"schemas": {}}, "at least one category"),
        ({"formats": ("csv",)}, "formats must be"),
        ({"formats": ()}, "formats must be"),
        ({"shards_per_partition": 0}, "positive int"),
        ({"parquet_codec": "nope"}, "not available"),
        (
            {
                "schemas": {
                    "x": {
                        "type": "record",
                        "name": "X",
                        "fields": [{"name": "m", "type": {"type": "map", "values": "string"}}],
                    }
                }
            },
            "not supported",
        ),
    ],
)
def test_construction_errors(tmp_path, kwargs, message):
    args = {"output_dir": str(tmp_path), "schemas": SCHEMAS, **kwargs}
    with pytest.raises(ValueError, match=message):
        WritePartitioned(**args)


# -------------------------------------------------------------------- dead letters


def test_dead_letters_layout_content_and_counters(tmp_path):
    at = micros("2025-01-02T00:30:00+08:00")  # 2025-01-01T16:30Z
    letters = [
        {
            "source": "visits",
            "stage": "parse",
            "error": "missing_field:visited_at",
            "raw": '{"a": 1}',
            "expires_at": at,
        },
        {
            "source": "visits",
            "stage": "parse",
            "error": "missing_field:ip",
            "raw": "Zoë ***",
            "expires_at": at,
        },
        {
            "source": "visits",
            "stage": "guard",
            "error": "guard:contact_on_restricted",
            "raw": {"event_id": "e9"},
            "expires_at": micros("2025-01-02T00:00:00+00:00"),
        },
        {
            "source": "sdk_logs",
            "stage": "parse",
            "error": "json_decode",
            "raw": "{",
            "expires_at": None,
        },
    ]

    def build(p):
        results = create_in_bundles(p, letters, bundles=3) | WriteDeadLetters(
            str(tmp_path), run_token="dl"
        )
        assert_that(
            results | beam.Map(lambda r: Path(r.file_name).parent.name),
            equal_to(
                [
                    "expiry_date=2025-01-01",
                    "expiry_date=2025-01-02",
                    f"expiry_date={OPEN_ENDED_EXPIRY_DATE}",
                ]
            ),
        )

    result = run(build)
    layout = partitions(tmp_path, ".jsonl")
    assert set(layout) == {
        "_dead_letter/source=visits/expiry_date=2025-01-01",
        "_dead_letter/source=visits/expiry_date=2025-01-02",
        f"_dead_letter/source=sdk_logs/expiry_date={OPEN_ENDED_EXPIRY_DATE}",
    }
    assert all(len(files) == 1 for files in layout.values())
    (first,) = layout["_dead_letter/source=visits/expiry_date=2025-01-01"]
    assert first.name == "part-00000-of-00001-dl.jsonl"
    lines = first.read_text(encoding="utf-8").splitlines()
    decoded = sorted((json.loads(line) for line in lines), key=lambda d: d["error"])
    assert decoded == [
        {
            "source": "visits",
            "stage": "parse",
            "error": "missing_field:ip",
            "raw": "Zoë ***",
            "expires_at": "2025-01-01T16:30:00Z",
        },
        {
            "source": "visits",
            "stage": "parse",
            "error": "missing_field:visited_at",
            "raw": '{"a": 1}',
            "expires_at": "2025-01-01T16:30:00Z",
        },
    ]
    for line in lines:  # sorted keys, one object per line
        assert line == json.dumps(json.loads(line), sort_keys=True, ensure_ascii=False)
    (guard,) = layout["_dead_letter/source=visits/expiry_date=2025-01-02"]
    assert json.loads(guard.read_text())["raw"] == {"event_id": "e9"}
    (open_ended,) = layout[f"_dead_letter/source=sdk_logs/expiry_date={OPEN_ENDED_EXPIRY_DATE}"]
    assert json.loads(open_ended.read_text())["expires_at"] is None
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
    assert counters(result) == {
        "dead_letter.missing_field": 2,
        "dead_letter.guard": 1,
        "dead_letter.json_decode": 1,
    }


def _many_letters(count: int, surrogates: bool = False) -> list[dict]:
    """Letters of three sources (one unnamed: the null partition) over four expiry days and
    the open end, four reasons (one empty: ``unknown``); some with bytes that are not UTF-8,
    bytes that are and, with ``surrogates``, a lone surrogate in their raw line (which Beam's
    coders cannot encode, not even to estimate an element's size, so such letters are only
    driven through the DoFns by hand)."""
    day = micros("2025-03-01T06:00:00+00:00")
    sources = ("visits", "sdk_logs", None)
    errors = ("malformed_timestamp:visited_at", "json_decode", "guard:contact_on_restricted", "")
    letters = []
    for i in range(count):
        letter = {
            "source": sources[i % 3],
            "stage": "parse",
            "error": errors[i % 4],
            "event_id": f"e{i:05d}",
            "raw": f'{{"event_id": "e{i:05d}", "visited_at": "Mon, 05 Oct 2026", "n": {i}}}',
            "expires_at": None if i % 5 == 4 else day + (i % 4) * DAY_US,
        }
        if surrogates and i % 11 == 0:
            letter["raw"] = f"Zoë \udcff {i}"
        if i % 13 == 0:
            letter["blob"] = b"\xff\x00" + bytes([i % 256])
        if i % 17 == 0:
            letter["note"] = "Zoë".encode()
        letters.append(letter)
    return letters


def _spilled_runs(result, step: str | None = None) -> int:
    """Temp files written (by ``step`` only, if given)."""
    wanted = MetricsFilter().with_namespace(METRICS_NAMESPACE).with_name("spilled_runs")
    if step is not None:
        wanted = wanted.with_step(step)
    return sum(item.committed for item in result.metrics().query(wanted)["counters"])


def _letters_on_disk(root: Path) -> dict[str, list[dict]]:
    """Every partition's letters, read back line by line (strict UTF-8)."""
    found = {}
    for rel_dir, (path,) in partitions(root, ".jsonl").items():
        lines = path.read_bytes().decode("utf-8").split("\n")
        assert lines.pop() == ""  # every line ends with a newline
        found[rel_dir] = [json.loads(line) for line in lines]
    return found


def test_dead_letters_spill_through_a_small_buffer(tmp_path):
    """Many spills of a few letters each still make one file per partition, with every
    letter exactly once, as ``dead_letter_json`` wrote it; nothing temporary is left."""
    letters = _many_letters(600)
    buffer_bytes = 4096

    def build(p):
        _ = create_in_bundles(p, letters, bundles=3) | WriteDeadLetters(
            str(tmp_path), run_token="small", buffer_bytes=buffer_bytes
        )

    result = run(build, workers=2)
    by_id = _check_letters(tmp_path, letters, "small")
    assert by_id["e00000"]["blob"] == {"base64": "/wAA"}
    assert by_id["e00017"]["note"] == "Zoë"
    assert counters(result) == _letter_counters(letters)
    # The spill path was taken: far more runs than bundles; a run holds at most about
    # half the buffer.
    total = sum(len(dead_letter_json(letter)) for letter in letters)
    assert _spilled_runs(result) >= total // buffer_bytes > 10


def _check_letters(root: Path, letters: list[dict], token: str) -> dict[str, dict]:
    """One file per partition holding exactly its letters, each as ``dead_letter_json``
    wrote it, and nothing else under ``root``; returns the letters read, by event id."""
    expected: dict[str, list[dict]] = {}
    for letter in letters:
        rel_dir = dead_letter_path(letter["source"], letter["expires_at"])
        expected.setdefault(rel_dir, []).append(json.loads(dead_letter_json(letter)))
    assert len(expected) == 15  # 3 sources x (4 days + the open end)
    assert {d.split("/")[1] for d in expected} == {
        "source=visits",
        "source=sdk_logs",
        f"source={HIVE_NULL_PARTITION}",
    }
    found = _letters_on_disk(root)
    assert set(found) == set(expected)
    for rel_dir, got in found.items():
        assert sorted(got, key=lambda d: d["event_id"]) == expected[rel_dir]
    assert {p.name for p in files_under(root, ".jsonl")} == {f"part-00000-of-00001-{token}.jsonl"}
    by_id = {d["event_id"]: d for got in found.values() for d in got}
    assert len(by_id) == len(letters)  # every letter exactly once
    # Neither the runs nor the temp directory are left behind.
    assert [p.name for p in root.iterdir() if p.name.startswith(".")] == []
    assert files_under(root, "") == files_under(root, ".jsonl")
    return by_id


def _letter_counters(letters: list[dict]) -> dict[str, int]:
    reasons = collections.Counter(map(dead_letter_reason, letters))
    return {f"dead_letter.{reason}": count for reason, count in reasons.items()}


def test_dead_letters_with_lone_surrogates_spill_and_compact(tmp_path):
    """The steps of WriteDeadLetters driven by hand (no runner, no coder): letters with a
    lone surrogate or bytes are gathered, spilled in many runs and compacted, none lost."""
    letters = _many_letters(120, surrogates=True)
    out = tmp_path / "out"
    temp_dir = str(out / ".temp-sur-dead-letters")
    output = DeadLetterLines(1)
    gather = LettersToTables(rows_per_table=8, bytes_per_table=1 << 20)
    buffer = _BufferPartitions(output, temp_dir, 2000)
    for dofn in (gather, buffer):
        dofn.setup()
        dofn.start_bundle()
    tables = [t.value for letter in letters for t in gather.process(letter)]
    tables += [t.value for t in gather.finish_bundle()]
    slices = [r.value for table in tables for r in buffer.process(table)]
    slices += [r.value for r in buffer.finish_bundle()]
    by_destination: dict[tuple, list] = {}
    for destination, run_slice in slices:
        by_destination.setdefault(destination, []).append(run_slice)
    assert max(map(len, by_destination.values())) > 3  # a partition spread over many runs
    compact = _Compact(output, str(out), temp_dir, "sur")
    for element in by_destination.items():
        (result,) = compact.process(element)
        assert Path(result.file_name).parent == out / element[0][1]
    _remove_temp_files(len(by_destination), temp_dir)
    by_id = _check_letters(out, letters, "sur")
    assert by_id["e00000"]["raw"] == "Zoë \udcff 0"  # escaped in the line, read back whole
    assert by_id["e00000"]["blob"] == {"base64": "/wAA"}
    assert by_id["e00017"]["note"] == "Zoë"


def test_dead_letters_of_several_pcollections_are_spilled_apart(tmp_path):
    """Branches given as a tuple (not flattened first) are each spilled in their own stage,
    and still make one file per partition."""
    letters = _many_letters(300)

    def build(p):
        branches = tuple(
            p | f"Branch{k}" >> beam.Create(letters[k * 100 : k * 100 + 100]) for k in range(3)
        )
        _ = branches | WriteDeadLetters(str(tmp_path), run_token="br")

    result = run(build)
    _check_letters(tmp_path, letters, "br")
    assert counters(result) == _letter_counters(letters)
    # Each branch was spilled by its own step (one run per source): no letter was flattened.
    for k in range(3):
        assert _spilled_runs(result, f"WriteDeadLetters/BufferPartitions{k}") == 3
    with pytest.raises(ValueError, match="at least one PCollection"):
        WriteDeadLetters(str(tmp_path)).expand(())


def test_dead_letters_default_buffer_spills_once_per_bundle(tmp_path):
    """With the default buffer, a few letters are spilled at the end of their bundle only."""
    letters = _many_letters(30)

    def build(p):
        _ = p | beam.Create(letters) | WriteDeadLetters(str(tmp_path), run_token="one")

    result = run(build)
    assert _spilled_runs(result) == 3  # one run per source
    assert sum(len(got) for got in _letters_on_disk(tmp_path).values()) == len(letters)


def test_dead_letters_shard_by_their_line(tmp_path):
    day = micros("2025-06-01T08:00:00+00:00")
    letters = [
        {"source": "visits", "error": "json_decode", "raw": f"{{{i}", "expires_at": day}
        for i in range(90)
    ]

    def build(p):
        _ = create_in_bundles(p, letters, bundles=3) | WriteDeadLetters(
            str(tmp_path), shards_per_partition=3, run_token="sh", buffer_bytes=512
        )

    run(build, workers=2)
    files = files_under(tmp_path, ".jsonl")
    assert [f.name for f in files] == [f"part-0000{s}-of-00003-sh.jsonl" for s in range(3)]
    seen = []
    for shard, path in enumerate(files):
        for line in path.read_text(encoding="utf-8").splitlines():
            assert zlib.crc32(line.encode("utf-8")) % 3 == shard
            seen.append(json.loads(line)["raw"])
    assert sorted(seen) == sorted(letter["raw"] for letter in letters)


def test_letters_to_tables_cut_by_bytes_and_rows():
    """A table of lines holds at most ``bytes_per_table`` bytes (plus its last line) and
    ``rows_per_table`` letters; every letter is in one table, its line as written."""
    letters = [{**letter, "source": "visits"} for letter in _many_letters(200)]
    gather = LettersToTables(rows_per_table=16, bytes_per_table=1000)
    gather.setup()
    gather.start_bundle()
    emitted = [v.value for letter in letters for v in gather.process(letter)]
    emitted += [v.value for v in gather.finish_bundle()]
    lines = []
    for kind, table in emitted:
        assert kind == "visits"
        assert table.schema.equals(LETTER_SCHEMA)
        assert table.num_rows <= 16
        cut = table.column("line").to_pylist()
        assert sum(map(len, cut[:-1])) < 1000
        lines += cut
    assert len(emitted) > len(letters) // 16  # some tables were cut by their bytes
    assert lines == [dead_letter_json(letter) for letter in letters]
    with pytest.raises(TypeError, match="must be a dict"):
        list(gather.process(["not", "a", "letter"]))
    with pytest.raises(TypeError, match="epoch microseconds"):
        list(gather.process({"source": "visits", "expires_at": "2025-01-01"}))


# ------------------------------------------- object-store semantics (no directories)


def test_object_store_without_directories():
    OBJECTS.clear()
    root = "memstore://bucket/out"
    rows = [visit(i, micros("2025-01-02T00:30:00+08:00")) for i in range(5)] + [visit(9, None)]
    letters = [
        {"source": "visits", "stage": "parse", "error": "x:y", "raw": "r", "expires_at": None}
    ]

    def build(p):
        _ = (
            p
            | beam.Create(rows)
            | WritePartitioned(
                root, {"visit": VISIT_SCHEMA}, formats=("parquet", "avro"), run_token="obj"
            )
        )
        _ = p | "Letters" >> beam.Create(letters) | WriteDeadLetters(root, run_token="obj")

    run(build)
    assert sorted(OBJECTS) == [
        f"{root}/_dead_letter/source=visits/expiry_date={OPEN_ENDED_EXPIRY_DATE}/part-00000-of-00001-obj.jsonl",
        f"{root}/data_category=visit/expiry_date=2025-01-01/part-00000-of-00001-obj.avro",
        f"{root}/data_category=visit/expiry_date=2025-01-01/part-00000-of-00001-obj.parquet",
        f"{root}/data_category=visit/expiry_date={OPEN_ENDED_EXPIRY_DATE}/part-00000-of-00001-obj.avro",
        f"{root}/data_category=visit/expiry_date={OPEN_ENDED_EXPIRY_DATE}/part-00000-of-00001-obj.parquet",
    ]
    table = pq.read_table(
        pa.BufferReader(
            OBJECTS[
                f"{root}/data_category=visit/expiry_date=2025-01-01/part-00000-of-00001-obj.parquet"
            ]
        )
    )
    assert sorted(table.column("event_id").to_pylist()) == [f"v{i:04d}" for i in range(5)]
    avro_rows = list(
        fastavro.reader(
            io.BytesIO(
                OBJECTS[
                    f"{root}/data_category=visit/expiry_date={OPEN_ENDED_EXPIRY_DATE}/part-00000-of-00001-obj.avro"
                ]
            )
        )
    )
    assert [r["event_id"] for r in avro_rows] == ["v0009"]
    OBJECTS.clear()


# ---------------------------------------------------- WriteTables (columnar, bounded)

VISIT_ARROW = arrow_schema(VISIT_SCHEMA)
COMPANY_ARROW = arrow_schema(COMPANY_SCHEMA)
DAY_US = 86_400_000_000


def visit_table(rows: list[dict]) -> pa.Table:
    return to_arrow_table(rows, VISIT_ARROW)


def company_table(rows: list[dict]) -> pa.Table:
    return to_arrow_table(rows, COMPANY_ARROW)


def _table_inputs() -> tuple[list[dict], list[dict], list[tuple[str, pa.Table]]]:
    """Visits over the boundary instants, 30 days and open-ended rows; companies over 3 days
    (15 rows each, from 9 tables) and open-ended rows; cut into tables of a few rows."""
    visits = _boundary_rows()
    visits += [
        visit(300 + k, micros("2025-05-01T06:00:00+00:00") + (k % 30) * DAY_US) for k in range(90)
    ]
    companies = [
        company(k, micros("2025-02-01T00:00:00+00:00") + (k % 3) * DAY_US) for k in range(45)
    ]
    companies += [company(50 + k, None) for k in range(4)]
    elements = [("visit", visit_table(visits[k : k + 17])) for k in range(0, len(visits), 17)]
    elements += [
        ("company", company_table(companies[k : k + 5])) for k in range(0, len(companies), 5)
    ]
    return visits, companies, elements


def _by_id(rows: list[dict]) -> dict[str, dict]:
    return {r["event_id"]: r for r in rows}


def _expected_arrow_rows(rows: list[dict], schema: pa.Schema) -> dict[str, dict]:
    """What a row reads back as: its schema columns, timestamps as UTC datetimes."""
    return _by_id(to_arrow_table(rows, schema).to_pylist())


def _check_written(out: Path, visits: list[dict], companies: list[dict], token: str) -> None:
    """One file per partition and format, named by the token, holding exactly its rows."""
    for suffix in (".parquet", ".avro"):
        layout = partitions(out, suffix)
        expected_dirs = {partition_path("visit", r["expires_at"]) for r in visits}
        expected_dirs |= {partition_path("company", r["expires_at"]) for r in companies}
        assert set(layout) == expected_dirs
        assert all(len(files) == 1 for files in layout.values())
        for rel_dir, (path,) in layout.items():
            assert path.name == f"part-00000-of-00001-{token}{suffix}"
            category = rel_dir.split("/")[0].split("=")[1]
            source, schema = (
                (visits, VISIT_ARROW) if category == "visit" else (companies, COMPANY_ARROW)
            )
            expected = _expected_arrow_rows(
                [r for r in source if partition_path(category, r["expires_at"]) == rel_dir],
                schema,
            )
            if suffix == ".parquet":
                table = pq.read_table(path)
                assert table.schema.equals(schema, check_metadata=False)
                got = table.to_pylist()
            else:
                with open(path, "rb") as fh:
                    got = list(fastavro.reader(fh))
            assert _by_id(got) == expected
            assert len(got) == len(expected)
    # No temp directory, nothing but data files.
    assert [p.name for p in out.iterdir() if p.name.startswith(".")] == []
    assert set(files_under(out, "")) == set(files_under(out, ".parquet")) | set(
        files_under(out, ".avro")
    )


def test_write_tables_two_categories_both_formats(tmp_path):
    out = tmp_path / "tables"
    visits, companies, elements = _table_inputs()

    def build(p):
        tables = p | beam.Create(elements)
        results = tables | WriteTables(
            str(out), SCHEMAS, formats=("parquet", "avro"), run_token="tbl"
        )
        assert_that(
            results | beam.Map(lambda r: (r.file_name, r.shard_index, r.total_shards)),
            _FileResultsMatchDisk(out),
        )

    result = run(build, workers=2)
    _check_written(out, visits, companies, "tbl")
    # Boundary instants land in their UTC day, the instant preserved.
    (path,) = partitions(out, ".parquet")["data_category=visit/expiry_date=2025-01-01"]
    by_id = _by_id(pq.read_table(path).to_pylist())
    assert by_id["v0001"]["expires_at"] == dt.datetime(2025, 1, 1, 16, 30, tzinfo=dt.UTC)
    assert "v0003" not in by_id  # 2025-01-02T00:00Z is the next day
    (path,) = partitions(out, ".parquet")["data_category=visit/expiry_date=1969-12-31"]
    assert pq.read_table(path).column("event_id").to_pylist() == ["v0005"]
    assert counters(result) == {"written.visit": len(visits), "written.company": len(companies)}


class _FileResultsMatchDisk:
    def __init__(self, root: Path) -> None:
        self.root = root

    def __call__(self, results):
        on_disk = sorted(str(p) for p in self.root.rglob("part-*") if p.is_file())
        assert sorted(name for name, _shard, _shards in results) == on_disk
        assert {(shard, shards) for _name, shard, shards in results} == {(0, 1)}


def test_write_tables_tiny_buffer_spills_and_still_writes_one_file_per_partition(tmp_path):
    out = tmp_path / "spilled"
    visits, companies, elements = _table_inputs()

    def build(p):
        _ = (
            p
            | beam.Create(elements)
            | WriteTables(
                str(out),
                SCHEMAS,
                formats=("parquet", "avro"),
                run_token="spill",
                buffer_bytes=1,  # every table is spilled as soon as it is buffered
                row_group_size=7,
            )
        )

    result = run(build, workers=2)
    _check_written(out, visits, companies, "spill")
    # The rows of a partition, spilled in many runs of a few rows, are coalesced into full
    # row groups.
    (path,) = partitions(out, ".parquet")["data_category=company/expiry_date=2025-02-01"]
    meta = pq.read_metadata(path)
    assert [meta.row_group(g).num_rows for g in range(meta.num_row_groups)] == [7, 7, 1]
    sizes = [
        [meta.row_group(g).num_rows for g in range(meta.num_row_groups)]
        for meta in (pq.read_metadata(p) for p in files_under(out, ".parquet"))
    ]
    assert all(all(n == 7 for n in groups[:-1]) and 0 < groups[-1] <= 7 for groups in sizes)
    assert counters(result) == {"written.visit": len(visits), "written.company": len(companies)}


def _drain(results) -> list:
    return list(results or ())


def _buffer_dofn(temp_dir: str, buffer_bytes: int, shards: int = 1) -> _BufferPartitions:
    dofn = _BufferPartitions(DataTables(SCHEMAS, shards=shards), temp_dir, buffer_bytes)
    dofn.setup()
    dofn.start_bundle()
    return dofn


def _read_slice(path: str, first: int, count: int) -> pa.Table:
    with pa.OSFile(path) as source:
        reader = pa.ipc.open_file(source)
        return pa.Table.from_batches([reader.get_batch(i) for i in range(first, first + count)])


def test_buffer_partitions_spills_sorted_runs_within_budget(tmp_path):
    temp_dir = str(tmp_path / ".temp")
    big_day = micros("2025-03-01T00:00:00+00:00")
    # Each table: 90 rows expiring on one day, 10 spread over five other days.
    tables = []
    for t in range(12):
        rows = [visit(t * 100 + k, big_day) for k in range(90)]
        rows += [visit(t * 100 + 90 + k, big_day + (1 + k % 5) * DAY_US) for k in range(10)]
        tables.append(visit_table(rows))
    budget = 3 * tables[0].nbytes  # a spill every second table
    dofn = _buffer_dofn(temp_dir, budget)
    emitted = []
    for table in tables:
        for value in dofn.process(("visit", table)):
            assert isinstance(value, WindowedValue)
            assert list(value.windows) == [GlobalWindow()]
            emitted.append(value.value)
        assert 2 * dofn.held <= budget  # after every element, whatever it spilled
    assert emitted, "the budget must have been exceeded"
    for value in dofn.finish_bundle():
        assert isinstance(value, WindowedValue)
        assert list(value.windows) == [GlobalWindow()]
        emitted.append(value.value)
    assert dofn.held == 0

    # One temp file per spill (a sorted run), each naming all six destinations once.
    runs = sorted({path for _dest, (path, _first, _count) in emitted})
    assert sorted(str(p) for p in Path(temp_dir).iterdir()) == runs
    assert len(runs) == 6
    big_dir = partition_path("visit", big_day)
    dirs = {partition_path("visit", big_day + d * DAY_US) for d in range(6)}
    for run_path in runs:
        assert sorted(d[1] for d, (p, _f, _c) in emitted if p == run_path) == sorted(dirs)

    # Every slice holds the rows of its destination only; together, every row once.
    seen = []
    for dest, (path, first, count) in emitted:
        table = _read_slice(path, first, count)
        assert table.schema.equals(VISIT_ARROW, check_metadata=False)
        instants = table.column("expires_at").cast(pa.int64()).to_pylist()
        assert {partition_path("visit", at) for at in instants} == {dest[1]}
        seen += table.column("event_id").to_pylist()
    assert sorted(seen) == sorted(e for t in tables for e in t.column("event_id").to_pylist())

    # Compact streams the slices of a destination into one file per format, in row groups
    # of exactly row_group_size rows, the rows in input order.
    big = next(dest for dest, _run in emitted if dest[1] == big_dir)
    slices = [run for dest, run in emitted if dest == big]
    out = tmp_path / "out"
    output = DataTables(SCHEMAS, ("parquet", "avro"), parquet_codec="zstd", row_group_size=256)
    compact = _Compact(output, str(out), temp_dir, "cmp")
    parquet_result, avro_result = compact.process((big, list(reversed(slices))))
    assert parquet_result.file_name == str(out / big_dir / "part-00000-of-00001-cmp.parquet")
    assert avro_result.file_name == str(out / big_dir / "part-00000-of-00001-cmp.avro")
    assert (parquet_result.shard_index, parquet_result.total_shards) == (0, 1)
    assert parquet_result.destination == big and parquet_result.window == GlobalWindow()
    meta = pq.read_metadata(parquet_result.file_name)
    assert [meta.row_group(g).num_rows for g in range(meta.num_row_groups)] == [256] * 4 + [56]
    assert meta.row_group(0).column(0).compression == "ZSTD"
    ids = pq.read_table(parquet_result.file_name).column("event_id").to_pylist()
    assert ids == [f"v{t * 100 + k:04d}" for t in range(12) for k in range(90)]
    with open(avro_result.file_name, "rb") as fh:
        assert [r["event_id"] for r in fastavro.reader(fh)] == ids

    # A retried bundle writes the same files again (the temp files stay until the end).
    again = list(compact.process((big, slices)))
    assert [r.file_name for r in again] == [parquet_result.file_name, avro_result.file_name]
    assert pq.read_table(parquet_result.file_name).column("event_id").to_pylist() == ids
    # A temp file that is gone fails loudly, and leaves no half-written file behind.
    Path(slices[0][0]).unlink()
    with pytest.raises(OSError):
        list(compact.process((big, slices)))
    assert all(p.suffix == ".arrow" for p in Path(temp_dir).iterdir())
    # Once every destination is written, the temp files and their directory go.
    _remove_temp_files(1, temp_dir)
    assert not Path(temp_dir).exists()


def test_destination_keys_match_partition_path():
    """The vectorised expiry day is ``expiry_date`` of every instant, including around
    midnight, before 1970, the last real expiry and open-ended rows."""
    instants = [micros(iso) for iso, _day in BOUNDARIES] + [None, 0, -1, 1, DAY_US, -DAY_US]
    instants += [micros("0001-01-01T00:00:00+00:00"), MAX_EXPIRY_MICROS]
    table = visit_table([visit(i, at) for i, at in enumerate(instants)])
    keys = destination_keys(table, 1, "event_id").to_pylist()
    assert [destination_of_key("visit", k, 1, partition_path)[1] for k in keys] == [
        partition_path("visit", at) for at in instants
    ]
    # A real expiry on the open-ended partition's date never gets a directory.
    (late,) = destination_keys(visit_table([visit(0, MAX_EXPIRY_MICROS + 1)]), 1, "event_id")
    with pytest.raises(ValueError, match="open-ended partition"):
        destination_of_key("visit", late.as_py(), 1, partition_path)


@given(
    st.lists(
        st.one_of(st.none(), st.integers(-62_135_596_800_000_000, MAX_EXPIRY_MICROS)),
        min_size=1,
        max_size=20,
    ),
    st.integers(1, 3),
)
def test_sorted_runs_agree_with_expiry_date(instants, cut):
    rows = [visit(i, at) for i, at in enumerate(instants)]
    tables = [visit_table(rows[k : k + cut]) for k in range(0, len(rows), cut)]
    keys = [destination_keys(t, 1, "event_id") for t in tables]
    table, spans = sort_run(tables, keys)
    assert [key for key, _offset, _size in spans] == sorted(
        {k for ks in keys for k in ks.to_pylist()}
    )
    for key, offset, size in spans:
        day = destination_of_key("visit", key, 1, partition_path)[1].rsplit("=", 1)[1]
        piece = table.slice(offset, size)
        instants_here = piece.column("expires_at").cast(pa.int64()).to_pylist()
        assert {expiry_date(at) for at in instants_here} == {day}
        ids = piece.column("event_id").to_pylist()
        assert ids == sorted(ids)  # stable: input order within a destination
    assert sum(size for _key, _offset, size in spans) == len(instants)


def test_write_tables_shards_by_event_id_crc32(tmp_path):
    out = tmp_path / "sharded"
    day = micros("2025-06-01T08:00:00+00:00")
    rows = [visit(i, day) for i in range(200)] + [visit(1000 + i, None) for i in range(3)]
    elements = [("visit", visit_table(rows[k : k + 23])) for k in range(0, len(rows), 23)]

    def build(p):
        _ = (
            p
            | beam.Create(elements)
            | WriteTables(str(out), {"visit": VISIT_SCHEMA}, shards_per_partition=4, run_token="sh")
        )

    run(build, workers=2)
    found = {}
    for path in files_under(out, ".parquet"):
        shard, shards = path.name.split("-")[1], path.name.split("-")[3]
        assert shards == "00004"
        for event_id in pq.read_table(path).column("event_id").to_pylist():
            assert event_id not in found
            found[event_id] = int(shard)
    assert found == {r["event_id"]: zlib.crc32(r["event_id"].encode()) % 4 for r in rows}
    day_files = partitions(out, ".parquet")[partition_path("visit", day)]
    assert len(day_files) == 4  # 200 rows: every shard got some
    # The shard of a row does not depend on how the rows were cut into tables.
    assert _row_shards(visit_table(rows), 4, "event_id").to_pylist() == [
        zlib.crc32(r["event_id"].encode()) % 4 for r in rows
    ]


def test_write_tables_unknown_category_fails(tmp_path):
    elements = [
        ("visit", visit_table([visit(1, None)])),
        ("not_in_policy", visit_table([visit(2, None)])),
    ]

    def build(p):
        _ = p | beam.Create(elements) | WriteTables(str(tmp_path), {"visit": VISIT_SCHEMA})

    with pytest.raises(Exception, match=r"no schema for data_category 'not_in_policy'"):
        run(build)
    assert files_under(tmp_path, ".parquet") == []


@pytest.mark.parametrize(
    ("element", "message"),
    [
        (("visit", company_table([company(1, None)])), "does not have the category's Arrow schema"),
        (
            ("company", company_table([{**company(1, None), "data_category": "visit"}])),
            "another data_category",
        ),
        (
            # Arrow does not enforce a non-nullable field; the writer does.
            (
                "visit",
                visit_table([visit(1, None)]).set_column(
                    1, VISIT_ARROW.field(1), pa.nulls(1, VISIT_ARROW.field(1).type)
                ),
            ),
            "column 'visited_at' is required",
        ),
        (("visit", [visit(1, None)]), "pyarrow.Table"),
    ],
)
def test_write_tables_rejects_bad_tables(tmp_path, element, message):
    dofn = _buffer_dofn(str(tmp_path / ".temp"), 1 << 20)
    with pytest.raises((ValueError, TypeError), match=message):
        _drain(dofn.process(element))


def test_write_tables_construction_errors(tmp_path):
    with pytest.raises(ValueError, match="buffer_bytes must be a positive int"):
        WriteTables(str(tmp_path), SCHEMAS, buffer_bytes=0)
    with pytest.raises(ValueError, match="at least one category"):
        WriteTables(str(tmp_path), {})
    odd = {
        **VISIT_SCHEMA,
        "fields": [*VISIT_SCHEMA["fields"][:-1], {"name": "expires_at", "type": "string"}],
    }
    with pytest.raises(ValueError, match="expires_at must be a timestamp"):
        WriteTables(str(tmp_path), {"visit": odd})


def test_write_tables_object_store_with_spills():
    OBJECTS.clear()
    root = "memstore://bucket/tables"
    visits, companies, elements = _table_inputs()

    def build(p):
        _ = (
            p
            | beam.Create(elements)
            | WriteTables(
                root, SCHEMAS, formats=("parquet", "avro"), run_token="obj", buffer_bytes=1
            )
        )

    result = run(build)
    expected_dirs = {partition_path("visit", r["expires_at"]) for r in visits}
    expected_dirs |= {partition_path("company", r["expires_at"]) for r in companies}
    assert sorted(OBJECTS) == sorted(
        f"{root}/{d}/part-00000-of-00001-obj{ext}"
        for d in expected_dirs
        for ext in (".parquet", ".avro")
    )  # no temp object left
    for rel_dir in expected_dirs:
        category = rel_dir.split("/")[0].split("=")[1]
        source, schema = (
            (visits, VISIT_ARROW) if category == "visit" else (companies, COMPANY_ARROW)
        )
        expected = _expected_arrow_rows(
            [r for r in source if partition_path(category, r["expires_at"]) == rel_dir], schema
        )
        table = pq.read_table(
            pa.BufferReader(OBJECTS[f"{root}/{rel_dir}/part-00000-of-00001-obj.parquet"])
        )
        assert _by_id(table.to_pylist()) == expected
        records = list(
            fastavro.reader(io.BytesIO(OBJECTS[f"{root}/{rel_dir}/part-00000-of-00001-obj.avro"]))
        )
        assert _by_id(records) == expected
    assert counters(result) == {"written.visit": len(visits), "written.company": len(companies)}
    OBJECTS.clear()


def test_write_tables_millis_fields_in_avro_and_parquet(tmp_path):
    rows = [
        {
            "id": f"r{i}",
            "at_ms": micros("1969-12-31T23:59:59.998500+00:00") + i,
            "maybe_ms": None if i % 2 else micros("2025-01-01T23:30:00.123456+00:00"),
            "at_us": micros("2025-01-01T23:30:00.123456+00:00") + i,
            "day": i,
        }
        for i in range(4)
    ]
    table = to_arrow_table(rows, arrow_schema(MILLIS_SCHEMA))

    def build(p):
        _ = (
            p
            | beam.Create([("m", table)])
            | WriteTables(
                str(tmp_path), {"m": MILLIS_SCHEMA}, formats=("parquet", "avro"), run_token="ms"
            )
        )

    run(build)
    (avro_file,) = files_under(tmp_path, ".avro")
    assert avro_file.parent.name == f"expiry_date={OPEN_ENDED_EXPIRY_DATE}"  # no expires_at
    with open(avro_file, "rb") as fh:
        records = list(fastavro.reader(fh))
    assert [r["at_ms"] for r in records] == [
        dt.datetime(1969, 12, 31, 23, 59, 59, 998000, tzinfo=dt.UTC)
    ] * 4
    assert records[0]["maybe_ms"] == dt.datetime(2025, 1, 1, 23, 30, 0, 123000, tzinfo=dt.UTC)
    assert [r["at_us"] for r in records] == [as_utc(r["at_us"]) for r in rows]
    (parquet_file,) = files_under(tmp_path, ".parquet")
    assert pq.read_table(parquet_file).column("at_ms").cast(pa.int64()).to_pylist() == [
        r["at_ms"] for r in rows
    ]  # Parquet keeps microseconds

"""transforms.sinks: Hive-partitioned Parquet/Avro data and JSON Lines dead letters.

Every pipeline test runs on the FnApiRunner and reads the written files back with
pyarrow (per file and as a Hive-partitioned dataset) and fastavro.
"""

from __future__ import annotations

import datetime as dt
import importlib.util
import io
import json
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
from hypothesis import given
from hypothesis import strategies as st

from tests.support.objectstore import OBJECTS  # registers the memstore:// filesystem
from transforms.sinks import (
    HIVE_NULL_PARTITION,
    AvroSink,
    JsonLinesSink,
    ParquetSink,
    WriteDeadLetters,
    WritePartitioned,
    dead_letter_json,
    dead_letter_path,
    dead_letter_reason,
    expiry_date,
    micros_to_iso,
    partition_path,
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


def test_expiry_date_open_ended_is_the_hive_null_partition():
    assert expiry_date(None) == HIVE_NULL_PARTITION == "__HIVE_DEFAULT_PARTITION__"


@pytest.mark.parametrize("bad", [True, 1.5, "2025-01-01", dt.datetime(2025, 1, 1)])
def test_expiry_date_rejects_non_micros(bad):
    with pytest.raises(TypeError, match="epoch microseconds"):
        expiry_date(bad)


def test_expiry_date_out_of_range_is_a_clear_error():
    with pytest.raises(ValueError, match="outside the representable dates"):
        expiry_date(2**62)


@given(st.integers(-62_135_596_800_000_000, 253_402_300_799_999_999))
def test_expiry_date_agrees_with_datetime(us):
    assert expiry_date(us) == as_utc(us).date().isoformat()


def test_partition_paths():
    at = micros("2025-01-02T00:30:00+08:00")
    assert (
        partition_path("website_visit", at) == "data_category=website_visit/expiry_date=2025-01-01"
    )
    assert partition_path("website_visit", None) == (
        "data_category=website_visit/expiry_date=__HIVE_DEFAULT_PARTITION__"
    )
    # Values are escaped like Hive does, so a value can never add a directory level.
    assert partition_path("a/b=c", at) == "data_category=a%2Fb%3Dc/expiry_date=2025-01-01"
    assert dead_letter_path("visits", at) == "_dead_letter/source=visits/expiry_date=2025-01-01"
    assert dead_letter_path(None, None) == (
        "_dead_letter/source=__HIVE_DEFAULT_PARTITION__/expiry_date=__HIVE_DEFAULT_PARTITION__"
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
    from schemas.arrow import arrow_schema

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


def test_parquet_sink_rejects_unknown_codec():
    with pytest.raises(ValueError, match="not available"):
        ParquetSink(pa.schema([]), codec="nope")


def test_avro_sink_writes_blocks_and_converts_millis(tmp_path):
    schema = {
        "type": "record",
        "name": "Millis",
        "fields": [
            {"name": "id", "type": "string"},
            {"name": "at_ms", "type": {"type": "long", "logicalType": "timestamp-millis"}},
            {
                "name": "maybe_ms",
                "type": ["null", {"type": "long", "logicalType": "timestamp-millis"}],
            },
        ],
    }
    at = micros("2025-01-01T23:30:00.123456+00:00")
    sink = AvroSink(schema, sync_interval=64)
    path = tmp_path / "direct.avro"
    with open(path, "wb") as fh:
        sink.open(fh)
        for i in range(50):
            sink.write({"id": f"r{i}", "at_ms": at, "maybe_ms": None if i % 2 else at})
        sink.flush()
    with open(path, "rb") as fh:
        blocks = list(fastavro.block_reader(fh))
    assert len(blocks) > 1  # small sync interval: several compressed blocks
    with open(path, "rb") as fh:
        reader = fastavro.reader(fh)
        assert reader.codec == "deflate"
        records = list(reader)
    expected = dt.datetime(2025, 1, 1, 23, 30, 0, 123000, tzinfo=dt.UTC)  # millis precision
    assert {r["at_ms"] for r in records} == {expected}
    assert records[0]["maybe_ms"] == expected
    assert records[1]["maybe_ms"] is None


def test_avro_sink_snappy_needs_cramjam():
    if importlib.util.find_spec("cramjam") is None:
        with pytest.raises(ValueError, match="cramjam"):
            AvroSink(VISIT_SCHEMA, codec="snappy")
    else:
        assert AvroSink(VISIT_SCHEMA, codec="snappy").codec == "snappy"


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
        f"data_category=visit/expiry_date={HIVE_NULL_PARTITION}",
        "data_category=company/expiry_date=2025-01-01",
        f"data_category=company/expiry_date={HIVE_NULL_PARTITION}",
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
    nulls = table.filter(pa.compute.is_null(table.column("expiry_date")))
    assert sorted(nulls.column("event_id").to_pylist()) == ["v0100", "v0101", "v0102"]
    assert nulls.column("expires_at").null_count == 3

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
    null_files = [k for k in first if HIVE_NULL_PARTITION in k]
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
                    f"expiry_date={HIVE_NULL_PARTITION}",
                ]
            ),
        )

    result = run(build)
    layout = partitions(tmp_path, ".jsonl")
    assert set(layout) == {
        "_dead_letter/source=visits/expiry_date=2025-01-01",
        "_dead_letter/source=visits/expiry_date=2025-01-02",
        f"_dead_letter/source=sdk_logs/expiry_date={HIVE_NULL_PARTITION}",
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
    (open_ended,) = layout[f"_dead_letter/source=sdk_logs/expiry_date={HIVE_NULL_PARTITION}"]
    assert json.loads(open_ended.read_text())["expires_at"] is None
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
    assert counters(result) == {
        "dead_letter.missing_field": 2,
        "dead_letter.guard": 1,
        "dead_letter.json_decode": 1,
    }


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
        f"{root}/_dead_letter/source=visits/expiry_date={HIVE_NULL_PARTITION}/part-00000-of-00001-obj.jsonl",
        f"{root}/data_category=visit/expiry_date=2025-01-01/part-00000-of-00001-obj.avro",
        f"{root}/data_category=visit/expiry_date=2025-01-01/part-00000-of-00001-obj.parquet",
        f"{root}/data_category=visit/expiry_date={HIVE_NULL_PARTITION}/part-00000-of-00001-obj.avro",
        f"{root}/data_category=visit/expiry_date={HIVE_NULL_PARTITION}/part-00000-of-00001-obj.parquet",
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
                    f"{root}/data_category=visit/expiry_date={HIVE_NULL_PARTITION}/part-00000-of-00001-obj.avro"
                ]
            )
        )
    )
    assert [r["event_id"] for r in avro_rows] == ["v0009"]
    OBJECTS.clear()

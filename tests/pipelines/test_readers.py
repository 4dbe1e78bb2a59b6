"""The outputs as users open them: pyarrow, DuckDB, Polars and Spark, each with its defaults.

One output root is written by the real pipelines: the bundled samples of visits, SDK logs and
telemetry (dated partitions, and corporate visitor rows kept until opt-out) and two categories
whose rows are *all* open-ended (account information, console configuration: account and
service lifetime). Every category's directory is then opened as a Hive-partitioned dataset by
each reader with its defaults, and must give every row, open-ended ones included, with
``expiry_date`` typed as the reader types dates: ISO date strings in pyarrow (it infers only
integers and strings from partition values), DATE in DuckDB, Date in Polars, DateType in Spark.

Before open-ended rows were dated ``9999-12-31`` they were in Hive's null partition, and a
category with nothing else failed or was mistyped: pyarrow raised "No non-null segments were
available for field 'expiry_date'; couldn't infer type", Spark typed the column ``void``,
Polars ``String`` (and ``Date`` for the other categories).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import subprocess
from pathlib import Path

import duckdb
import polars as pl
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

from pipelines import ingest
from tests.support.outputs import RUN_TIME, run_sample
from transforms.sinks import OPEN_ENDED_EXPIRY_DATE

pytestmark = pytest.mark.e2e
IN_CI = os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")
COMMON = ["--runner=FnApiRunner", f"--run_time={RUN_TIME}"]
OPEN_ENDED = dt.date.fromisoformat(OPEN_ENDED_EXPIRY_DATE)
# Every category whose rows are all open-ended: lifecycle retention, no lifecycle event yet.
ALL_OPEN_ENDED = {
    "account_information": [
        {"event_id": "a1", "uin": 100000009, "registered_at": "2026-11-01T08:00:00Z",
         "name": "Ada", "business_email": "ada@corp.example", "ip": "::ffff:194.25.2.129"},
        # the same kind of address, written in hex: stored dotted all the same
        {"event_id": "a2", "uin": 100000010, "registered_at": "2026-11-02T08:00:00Z",
         "name": "Bob", "ip": "::FFFF:C219:281"},
        {"event_id": "a3", "uin": 100000011, "registered_at": "2026-11-03T08:00:00Z",
         "name": "Cy", "ip": "198.51.100.4"},
    ],
    "console_configuration": [
        {"event_id": "c1", "sdk_app_id": 1400000001, "uin": 100000009,
         "updated_at": 1795000000000, "application_name": "demo"},
        {"event_id": "c2", "sdk_app_id": 1400000002, "uin": 100000010,
         "updated_at": 1795000000000, "application_name": "other"},
    ],
}  # fmt: skip


@pytest.fixture(scope="module")
def output(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("readers")
    out = tmp / "out"
    for category, records in ALL_OPEN_ENDED.items():
        data = tmp / f"{category}.jsonl"
        data.write_text("".join(json.dumps(r) + "\n" for r in records))
        ingest.run([f"--category={category}", f"--input={data}", f"--output={out}", *COMMON])
    for source in ("visits", "sdk_logs", "telemetry"):
        run_sample(source, out)
    return out


def expected(category_dir: Path) -> tuple[int, int]:
    """Rows of a category and how many of them are open-ended (``expires_at`` null), file by
    file, whatever the partition they are in."""
    rows = open_ended = 0
    for path in category_dir.glob("expiry_date=*/*.parquet"):
        expires_at = pq.read_table(path, columns=["expires_at"]).column("expires_at")
        rows += len(expires_at)
        open_ended += expires_at.null_count
    return rows, open_ended


def categories(output: Path) -> dict[str, tuple[int, int]]:
    found = {p.name.split("=", 1)[1]: expected(p) for p in output.glob("data_category=*")}
    # the output is what the readers are tested on: both kinds of category are there
    assert {name for name, (rows, open_ended) in found.items() if rows == open_ended} >= set(
        ALL_OPEN_ENDED
    )
    assert any(0 < open_ended < rows for rows, open_ended in found.values())  # mixed
    assert any(open_ended == 0 for _rows, open_ended in found.values())  # dated only
    return found


def test_the_layout_has_no_null_partition(output):
    """Open-ended rows are under the end-of-time date; the rows' own expiry stays null."""
    assert not list(output.glob("*/expiry_date=__HIVE_DEFAULT_PARTITION__"))
    for category in ALL_OPEN_ENDED:
        (partition,) = (output / f"data_category={category}").iterdir()
        assert partition.name == f"expiry_date={OPEN_ENDED_EXPIRY_DATE}"
        for path in partition.glob("*.parquet"):
            assert pq.read_table(path).column("expires_at").null_count > 0


def test_pyarrow_reads_every_category_with_iso_date_strings(output):
    for name, (rows, open_ended) in categories(output).items():
        table = ds.dataset(output / f"data_category={name}", partitioning="hive").to_table()
        assert table.num_rows == rows, name
        assert table.schema.field("expiry_date").type == pa.string(), name
        days = table.column("expiry_date").to_pylist()
        assert all(dt.date.fromisoformat(day).isoformat() == day for day in days), name
        ended = table.filter(pa.compute.equal(table.column("expiry_date"), OPEN_ENDED_EXPIRY_DATE))
        assert ended.num_rows == open_ended, name
        assert ended.column("expires_at").null_count == open_ended, name


def test_duckdb_reads_every_category_with_dates(output):
    con = duckdb.connect()
    for name, (rows, open_ended) in categories(output).items():
        files = f"{output / f'data_category={name}'}/**/*.parquet"
        source = f"read_parquet('{files}', hive_partitioning=true)"
        ((kind,),) = con.execute(f"SELECT typeof(expiry_date) FROM {source} LIMIT 1").fetchall()
        assert kind == "DATE", name
        ended = f"expiry_date = DATE '{OPEN_ENDED_EXPIRY_DATE}'"
        (got,) = con.execute(
            f"SELECT count(*), count(*) FILTER ({ended}),"
            f" count(*) FILTER ({ended} AND expires_at IS NULL) FROM {source}"
        ).fetchall()
        assert got == (rows, open_ended, open_ended), name


def test_polars_reads_every_category_with_dates(output):
    for name, (rows, open_ended) in categories(output).items():
        frame = pl.scan_parquet(output / f"data_category={name}", hive_partitioning=True)
        assert frame.collect_schema()["expiry_date"] == pl.Date, name
        got = frame.select(
            pl.len().alias("rows"),
            (pl.col("expiry_date") == OPEN_ENDED).sum().alias("open_ended"),
            ((pl.col("expiry_date") == OPEN_ENDED) & pl.col("expires_at").is_null())
            .sum()
            .alias("open_ended_null"),
        ).collect()
        assert got.row(0) == (rows, open_ended, open_ended), name


def java() -> str:
    """The ``java`` Spark runs on; without one, skip locally and fail under CI, as the engine
    tests do (tests/engines): CI has Java 17, and Spark must never drop out of it silently."""
    home = os.environ.get("JAVA_HOME")
    found = str(Path(home) / "bin" / "java") if home else shutil.which("java")
    if not found or not Path(found).exists():
        reason = "Spark: no `java` on PATH (nor JAVA_HOME); Spark 4 needs Java 17 or later"
        if IN_CI:
            pytest.fail(f"{reason} (CI=true: this reader must not be skipped in CI)")
        pytest.skip(reason)
    done = subprocess.run([found, "-version"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return found


@pytest.fixture(scope="module")
def spark():
    java()
    from pyspark.sql import SparkSession

    session = (
        SparkSession.builder.master("local[1]")
        .appName("test_readers")
        .config("spark.driver.memory", "512m")
        .config("spark.ui.enabled", "false")
        .config("spark.sql.shuffle.partitions", "1")
        .config("spark.sql.session.timeZone", "UTC")
        .getOrCreate()
    )
    session.sparkContext.setLogLevel("ERROR")
    yield session
    session.stop()


def test_spark_reads_every_category_with_dates(output, spark):
    from pyspark.sql import functions as sf
    from pyspark.sql.types import DateType

    for name, (rows, open_ended) in categories(output).items():
        frame = spark.read.parquet(str(output / f"data_category={name}"))
        assert isinstance(frame.schema["expiry_date"].dataType, DateType), name
        ended = sf.col("expiry_date") == sf.lit(OPEN_ENDED)
        got = frame.agg(
            sf.count(sf.lit(1)),
            sf.sum(ended.cast("int")),
            sf.sum((ended & sf.col("expires_at").isNull()).cast("int")),
        ).first()
        assert (got[0], got[1] or 0, got[2] or 0) == (rows, open_ended, open_ended), name


def test_ipv4_mapped_addresses_are_stored_dotted(output):
    """As written in dotted form, and a hex spelling of the same address stored dotted too
    (not Python 3.11's ``::ffff:c219:281``)."""
    ips = {
        row["event_id"]: row["ip"]
        for path in output.glob("data_category=account_information/*/*.parquet")
        for row in pq.read_table(path, columns=["event_id", "ip"]).to_pylist()
    }
    assert ips == {"a1": "::ffff:194.25.2.129", "a2": "::ffff:194.25.2.129", "a3": "198.51.100.4"}

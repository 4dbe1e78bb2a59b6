"""Time the retention jobs over an output of 1,000,000 rows: purge, erasure of one subject.

    python -m bench.retention                 # 1,000,000 rows, the numbers on stdout
    python -m bench.retention --rows 200000

The output is built directly with pyarrow, with the real output schemas
(``schemas.avro.output_schema`` -> ``schemas.arrow.arrow_schema``) and the real layout
(``transforms.sinks.partition_path``, Snappy like the sinks). That takes seconds, where the
ingestion pipelines would take minutes, and the retention jobs cannot tell the difference. The
rows are SDK logs, backend logs, dashboard and troubleshooting telemetry, website visits,
corporate visitor information (some until opt-out), accounts, console configurations, temporary
keys and application logs, plus dead letters. Event times spread over 60 days, two files per
partition (two ingestion runs).

Each job runs as a child process, like a user starts it (``--runner=FnApiRunner``), on a fresh
copy of the same 1M-row output: a purge that deletes about half of the partitions, the access
export and then the erasure of one end user (``user_id``: a handful of rows) and of one customer
account (``uin``: hundreds of rows, with its applications' keys and logs), and a lifecycle run
for 50 deleted accounts. An access export must hold exactly the rows the erasure then removes.
Wall times include the interpreter and Beam start-up (about 1 to 2 s).
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from schemas.arrow import arrow_schema
from schemas.avro import output_schema
from schemas.policy import load_policy
from transforms.sinks import partition_path
from transforms.timestamps import format_utc, parse_event_time

WORK = Path(__file__).resolve().parent / "work" / "retention"
DAY = 86_400_000_000
T0 = parse_event_time("2026-09-01T00:00:00Z")
RUN_TIME = "2026-11-29T00:00:00Z"
SHARE = {  # category -> share of the rows
    "sdk_log": 0.30,
    "backend_log": 0.06,
    "dashboard_information": 0.15,
    "troubleshooting_data": 0.09,
    "website_visit": 0.25,
    "corporate_visitor_info": 0.10,
    "account_information": 0.02,
    "console_configuration": 0.02,
    "customer_temporary_key": 0.005,
    "customer_application_log": 0.005,
}
USERS, ACCOUNTS, APPS, IPS = 50_000, 2_000, 4_000, 100_000


def _value(name: str, i: int, rng: random.Random, event_time: int) -> object:
    if name == "user_id":
        return f"user-{rng.randrange(USERS)}"
    if name == "uin":
        return str(100_000_000 + rng.randrange(ACCOUNTS))
    if name == "sdk_app_id":
        return str(1_400_000_000 + rng.randrange(APPS))
    if name in ("ip", "client_ip"):
        n = rng.randrange(IPS)
        return f"198.{n >> 16 & 255}.{n >> 8 & 255}.{n & 255}"
    if name in ("business_email", "google_email"):
        return f"person{rng.randrange(20_000)}@company{rng.randrange(500)}.example"
    if name == "room_id":
        return f"room-{rng.randrange(10_000)}"
    return None


def build(root: Path, rows: int, seed: int = 7) -> dict[str, int]:
    """Write ``rows`` rows (+1% dead letters) under ``root``; returns rows per category."""
    policy = load_policy()
    rng = random.Random(seed)
    written = {}
    for name, share in SHARE.items():
        category = policy.category(name)
        schema = arrow_schema(output_schema(name))
        n = int(rows * share)
        columns = [f.name for f in schema]
        records: dict[str, list[dict]] = {}
        for i in range(n):
            event_time = T0 + rng.randrange(60 * DAY)
            row = {c: _value(c, i, rng, event_time) for c in columns}
            row["event_id"] = f"{name[:4]}-{i}"
            row[category.event_time] = event_time
            region = "OTHER" if rng.random() < 0.7 else "EEA_UK"
            row.update(country="US" if region == "OTHER" else "DE", region=region)
            purposes, retention = category.effective(region, row)
            row.update(
                data_category=name,
                purposes=list(purposes),
                legal_basis=category.legal_basis,
                retention_rule=retention.label,
                expires_at=retention.expires_at(event_time),
                policy_version=policy.version,
            )
            for column in columns:  # fill the required text columns
                field = schema.field(column)
                if row.get(column) is None and not field.nullable:
                    row[column] = f"{column}-{i % 97}"
            shard = i % 2
            records.setdefault(f"{partition_path(name, row['expires_at'])}|{shard}", []).append(row)
        for key, part in records.items():
            rel_dir, shard = key.split("|")
            table = pa.Table.from_pylist(part, schema=schema)
            path = root / rel_dir / f"part-00000-of-00001-run{shard}bench.parquet"
            path.parent.mkdir(parents=True, exist_ok=True)
            pq.write_table(table, path, compression="snappy")
        written[name] = n
    letters = root / "_dead_letter/source=sdk_logs/expiry_date=2026-12-13"
    letters.mkdir(parents=True, exist_ok=True)
    with (letters / "part-00000-of-00001-bench.jsonl").open("w") as fh:
        for i in range(rows // 100):
            raw = {"event_id": f"bad-{i}", "user_id": f"user-{rng.randrange(USERS)}", "uin": "x"}
            fh.write(
                json.dumps(
                    {
                        "source": "sdk_logs",
                        "stage": "parse",
                        "error": "malformed_field:uin",
                        "raw": json.dumps(raw),
                        "expires_at": "2026-12-13T00:00:00Z",
                    },
                    sort_keys=True,
                )
                + "\n"
            )
    (root / "_reports").mkdir(exist_ok=True)
    return written


def timed(*args: str) -> tuple[float, dict]:
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", *args, "--runner=FnApiRunner"], capture_output=True, text=True
    )
    elapsed = time.perf_counter() - start
    if done.returncode != 0:
        sys.exit(f"{args[0]} failed:\n{done.stderr[-4000:]}")
    report = next(
        line.split(": ", 1)[1] for line in done.stdout.splitlines() if line.startswith("report: ")
    )
    return elapsed, json.loads(Path(report).read_text())


def fresh(base: Path, name: str) -> Path:
    target = WORK / name
    shutil.rmtree(target, ignore_errors=True)
    shutil.copytree(base, target)
    return target


def most_common(base: Path, column: str, category: str) -> str:
    table = pq.read_table(base / f"data_category={category}", columns=[column], partitioning=None)
    counts = table.column(column).value_counts().to_pylist()
    return max(counts, key=lambda c: c["counts"])["values"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    args = parser.parse_args()
    base = WORK / f"base-{args.rows}"
    if not base.exists():
        start = time.perf_counter()
        tmp = base.with_suffix(".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        written = build(tmp, args.rows)
        tmp.rename(base)
        print(f"built {sum(written.values()):,} rows in {time.perf_counter() - start:.1f}s")
    files = sum(1 for _ in base.glob("data_category=*/*/*.parquet"))
    size = sum(p.stat().st_size for p in base.rglob("*") if p.is_file())
    print(f"output: {files} Parquet files, {size / 1e6:.0f} MB, under {base}")

    out = fresh(base, "purge")
    now = format_utc(T0 + 45 * DAY)
    seconds, audit = timed("pipelines.purge", f"--output={out}", f"--now={now}")
    counts = audit["counts"]
    print(
        f"purge --now={now}: {seconds:.2f}s wall, {counts['partitions']} partitions, "
        f"{counts['files']} files, {counts['bytes'] / 1e6:.0f} MB deleted"
    )

    for field, category in (("user_id", "sdk_log"), ("uin", "sdk_log")):
        value = most_common(base, field, category)
        out = fresh(base, f"erase-{field}")
        requests = WORK / f"requests-{field}.jsonl"
        requests.write_text(
            json.dumps({"request_id": "BENCH-1", "received_at": RUN_TIME, field: value}) + "\n"
        )
        seconds, audit = timed(
            "pipelines.access",
            f"--output={out}",
            f"--requests={requests}",
            f"--export={WORK / f'export-{field}'}",
            f"--run_time={RUN_TIME}",
        )
        (exported,) = audit["requests"]
        print(
            f"access one {field}: {seconds:.2f}s wall, {exported['rows_total']} rows and "
            f"{exported['dead_letters']} dead letters exported from "
            f"{audit['counts']['files_with_rows']} files (of {audit['counts']['files_scanned']})"
        )
        seconds, audit = timed(
            "pipelines.erase", f"--output={out}", f"--requests={requests}", f"--run_time={RUN_TIME}"
        )
        (request,) = audit["requests"]
        if (exported["rows"], exported["dead_letters"]) != (
            request["rows_erased"],
            request["dead_letters_erased"],
        ):
            sys.exit(f"access exported {exported} but erase removed {request}")
        print(
            f"erase one {field}: {seconds:.2f}s wall, {request['rows_erased_total']} rows and "
            f"{request['dead_letters_erased']} dead letters erased in "
            f"{len(request['files'])} files (of {audit['counts']['files_scanned']} scanned), "
            f"verified={audit['verification']['verified']}"
        )

    out = fresh(base, "lifecycle")
    uins = pq.read_table(
        base / "data_category=account_information", columns=["uin"], partitioning=None
    )
    deleted = sorted(set(uins.column("uin").to_pylist()))[:50]
    events = WORK / "events.jsonl"
    events.write_text(
        "".join(
            json.dumps({"event": "account_deleted", "uin": u, "at": "2026-11-28T00:00:00Z"}) + "\n"
            for u in deleted
        )
    )
    seconds, audit = timed(
        "pipelines.lifecycle", f"--output={out}", f"--events={events}", f"--run_time={RUN_TIME}"
    )
    counts = audit["counts"]
    print(
        f"lifecycle, {len(deleted)} accounts deleted: {seconds:.2f}s wall, rows moved "
        f"{sum(counts['rows_moved'].values())}, files {counts['files_rewritten']} rewritten "
        f"+ {counts['files_added']} added"
    )


if __name__ == "__main__":
    main()

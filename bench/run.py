"""Throughput of the pipelines on generated input: records/s and peak memory.

    python -m bench.run                         # every pipeline, 1,000,000 records each
    python -m bench.run --pipeline visits --records 200000 --workers 2

The input is generated deterministically (``tools.synthetic``) into ``bench/work/`` and reused
while its parameters do not change. Visits: ~5% IPv6, ~30% with contact fields, 100,000 distinct
IPs drawn from the bundled country database, an AroundDeal snapshot of 3,000 networks. SDK logs:
20% backend logs (with a client IP), identifiers as numbers or strings. Telemetry: ~27% quality
reports. The pipeline
runs as a child process, exactly as a user would start it; peak memory is the largest sum of RSS
over that process and all its descendants (Beam worker processes included), sampled every 100 ms.
Numbers only compare within one run on one machine (a loaded machine is a third slower or more).
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

import psutil

from pipelines.options import bundled
from tools.synthetic import (
    COUNTRY_WEIGHTS,
    AddressPool,
    VisitMix,
    ip_population,
    sdk_log_lines,
    snapshot_csv,
    telemetry_lines,
    visit_lines,
)

WORK = Path(__file__).resolve().parent / "work"
PIPELINES = ("visits", "sdk_logs", "telemetry")
SEED = 7


def _write(path: Path, lines) -> None:
    tmp = path.with_suffix(".tmp")
    with tmp.open("w") as fh:
        for line in lines:
            fh.write(line + "\n")
    tmp.rename(path)


def generate(pipeline: str, records: int, networks: int) -> tuple[Path, list[str]]:
    """The input file for ``pipeline`` (generated once, then reused) and its extra arguments."""
    WORK.mkdir(parents=True, exist_ok=True)
    data = WORK / f"{pipeline}-{records}-{SEED}.jsonl"
    if pipeline != "visits":
        if not data.exists():
            generator = sdk_log_lines if pipeline == "sdk_logs" else telemetry_lines
            _write(data, generator(records, SEED))
        return data, []
    snapshot = WORK / f"snapshot-{networks}-{SEED}.csv"
    if not (data.exists() and snapshot.exists()):
        mix = VisitMix()
        pool = AddressPool(bundled("country.mmdb"), list(COUNTRY_WEIGHTS))
        population = ip_population(pool, mix, random.Random(SEED))
        _write(data, visit_lines(records, population, mix, SEED))
        snapshot.write_text(snapshot_csv(population, networks, SEED))
    return data, [f"--enrichment_snapshot={snapshot}"]


def run_measured(command: list[str]) -> tuple[float, int, str]:
    """Wall seconds, peak RSS bytes (process tree) and stdout of ``command``."""
    start = time.perf_counter()
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    root = psutil.Process(proc.pid)
    peak = 0
    while proc.poll() is None:
        try:
            tree = [root, *root.children(recursive=True)]
            peak = max(peak, sum(p.memory_info().rss for p in tree if p.is_running()))
        except psutil.Error:
            pass
        time.sleep(0.1)
    out, err = proc.communicate()
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(f"pipeline failed ({proc.returncode}):\n{err[-4000:]}")
    return elapsed, peak, out


def bench(pipeline: str, records: int, networks: int, workers: int) -> dict[str, object]:
    t = time.perf_counter()
    data, extra = generate(pipeline, records, networks)
    ready = time.perf_counter() - t
    out = WORK / f"out-{pipeline}"
    shutil.rmtree(out, ignore_errors=True)
    runner = (
        ["--runner=FnApiRunner"]
        if workers == 1
        else [
            "--runner=DirectRunner",
            f"--direct_num_workers={workers}",
            "--direct_running_mode=multi_processing",
        ]
    )
    command = [
        sys.executable,
        "-m",
        f"pipelines.{pipeline}",
        f"--input={data}",
        f"--output={out}",
        *extra,
        *runner,
    ]
    elapsed, peak, _ = run_measured(command)
    (report,) = out.glob("_reports/*.json")
    counts = json.loads(report.read_text())["counts"]
    print(
        f"{pipeline:10s} records={counts['read']}  workers={workers}  wall={elapsed:.1f}s  "
        f"records/s={counts['read'] / elapsed:,.0f}  peak_rss={peak / 2**20:,.0f} MiB  "
        f"written={counts['written']}  dead_lettered={counts['dead_lettered_total']}  "
        f"(input {data.stat().st_size / 1e6:.0f} MB, ready in {ready:.1f}s)",
        flush=True,
    )
    return counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pipeline", choices=(*PIPELINES, "all"), default="all")
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--networks", type=int, default=3_000)
    parser.add_argument(
        "--workers",
        type=int,
        default=1,
        help="1: FnApiRunner in process; >1: multi_processing with that many workers",
    )
    args = parser.parse_args()
    for pipeline in PIPELINES if args.pipeline == "all" else (args.pipeline,):
        bench(pipeline, args.records, args.networks, args.workers)


if __name__ == "__main__":
    main()

"""Throughput of ``python -m pipelines.visits`` on generated visits: records/s and peak memory.

    python -m bench.visits                      # 1,000,000 visits, FnApiRunner, one process
    python -m bench.visits --records 200000 --workers 2

The input is generated deterministically (``tools.synthetic``: ~5% IPv6, ~30% with contact
fields, 100,000 distinct IPs drawn from the bundled country database, an AroundDeal snapshot of
3,000 networks) into ``bench/work/`` and reused while its parameters do not change. The pipeline
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
    snapshot_csv,
    visit_lines,
)

WORK = Path(__file__).resolve().parent / "work"
SEED = 7


def generate(records: int, networks: int) -> tuple[Path, Path]:
    """The benchmark input for these parameters (generated once, then reused)."""
    WORK.mkdir(parents=True, exist_ok=True)
    visits = WORK / f"visits-{records}-{SEED}.jsonl"
    snapshot = WORK / f"snapshot-{networks}-{SEED}.csv"
    if visits.exists() and snapshot.exists():
        return visits, snapshot
    mix = VisitMix()
    pool = AddressPool(bundled("country.mmdb"), list(COUNTRY_WEIGHTS))
    population = ip_population(pool, mix, random.Random(SEED))
    tmp = visits.with_suffix(".tmp")
    with tmp.open("w") as fh:
        for line in visit_lines(records, population, mix, SEED):
            fh.write(line + "\n")
    tmp.rename(visits)
    snapshot.write_text(snapshot_csv(population, networks, SEED))
    return visits, snapshot


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--networks", type=int, default=3_000)
    parser.add_argument(
        "--workers",
        type=int,
        default=1,
        help="1: FnApiRunner in process; >1: multi_processing with that many workers",
    )
    args = parser.parse_args()

    t = time.perf_counter()
    visits, snapshot = generate(args.records, args.networks)
    print(
        f"input: {visits} ({visits.stat().st_size / 1e6:.0f} MB), ready in "
        f"{time.perf_counter() - t:.1f}s"
    )
    out = WORK / "out"
    shutil.rmtree(out, ignore_errors=True)
    runner = (
        ["--runner=FnApiRunner"]
        if args.workers == 1
        else [
            "--runner=DirectRunner",
            f"--direct_num_workers={args.workers}",
            "--direct_running_mode=multi_processing",
        ]
    )
    command = [
        sys.executable,
        "-m",
        "pipelines.visits",
        f"--input={visits}",
        f"--output={out}",
        f"--enrichment_snapshot={snapshot}",
        *runner,
    ]
    elapsed, peak, _ = run_measured(command)
    (report,) = out.glob("_reports/visits-*.json")
    counts = json.loads(report.read_text())["counts"]
    print(
        f"pipelines.visits  records={counts['read']}  workers={args.workers}  "
        f"wall={elapsed:.1f}s  records/s={counts['read'] / elapsed:,.0f}  "
        f"peak_rss={peak / 2**20:,.0f} MiB  written={counts['written']}  "
        f"dead_lettered={counts['dead_lettered_total']}"
    )


if __name__ == "__main__":
    main()

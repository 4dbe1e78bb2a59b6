"""Throughput and peak memory of each pipeline next to a columnar pyarrow baseline, same input.

    python -m bench.run                                   # every pipeline, 1,000,000 records each
    python -m bench.run --pipeline visits --distinct_ips 1.0   # every visit from its own address
    python -m bench.run --pipeline visits --records 100000
    python -m bench.run --pipeline visits --flatness      # also 10x the records: is the peak flat?
    python -m bench.run --pipeline visits_bad_times       # every line a dead letter

Per pipeline, one invocation generates the input (deterministic, ``tools.synthetic``, cached in
``bench/work/`` under its parameters and a hash of the generator), then runs as child processes,
one after the other: ``python -m bench.baseline`` (read, tag and write the same file with pyarrow
alone: the practical upper limit) and ``python -m pipelines.<name>`` exactly as a user starts it
(``--workers 2``, the default: DirectRunner in multi_processing mode with two workers; ``--workers
1``: FnApiRunner in process). Visits: ~5% IPv6, ~30% with contact fields, ~1% private
addresses, the others drawn from the networks the bundled country database assigns to the
countries of ``tools.synthetic.COUNTRY_WEIGHTS``, 0.5% lines the contract rejects (an address
missing or none, the event id missing, an event time at the epoch or decades ahead), an
AroundDeal snapshot of ``--networks`` networks. SDK logs: 20% backend logs, identifiers as
numbers or strings. Telemetry: ~27% quality reports. Every source mixes the three time forms
(ISO-8601 with Z, with an offset or naive, epoch milliseconds).

Address profiles (visits): ``--distinct_ips FRACTION`` is the share of the visits whose address
is distinct: ``FRACTION x records`` distinct addresses, each visited at least once, new ones
arriving over the whole file (the bad lines that lose their address aside: 0.1% fewer at 1.0).
At 0.1 (100,000 addresses in 1M visits, each ~10 times: the shape of the earlier benchmark,
which drew 1M visits from 100,000 addresses) the pipeline's caches are warm after the first
part of the file; at 1.0 every visit comes from an address never seen before, so every
geolocation and snapshot lookup is a miss. Without the flag
``visits`` runs both profiles, 0.1 then 1.0, each reported on its own lines (``visits@0.1``,
``visits@1.0``); the flag takes one fraction or several. ``visits_bad_times`` takes 0.1 unless
told otherwise (its lines never reach a lookup). The baseline of visits looks up each distinct
address once in the same country database (``bench/baseline.py``): the one cost the 1.0
profile adds that no pipeline can avoid, so that the ratio measures the pipeline's own cost on
either profile. Its line is followed by the addresses it counted in the input: distinct values,
their share of the records, and how many the database resolved to a country.

Each prints one line: records/s (records read / wall time of the child, imports included), wall,
CPU seconds (user + system of the child and its descendants, Beam workers included: what the
run costs, which other jobs on the machine disturb far less than its wall time), peak RSS
(largest sum of RSS over the child and all its descendants, sampled every 100 ms). The
pipeline's line adds its ratio to the baseline's records/s with the target (visits 0.4, the
others 0.5) and, for visits, the 1.5 GiB memory ceiling, each PASS/FAIL, and ``NOT RECONCILED``
if a run's report does not account for every record read (a fast run that lost records proves
nothing). ``--flatness`` runs the pipeline again on 10x the records and prints both peaks and
their ratio (flat: at most 1.10; 10M visits are 3 GB of input, written line by line). The
targets are meant for 1M records: on fewer, start-up (imports, Beam's workers) weighs more in
the ratio. Numbers only compare within one run on one machine: a loaded machine is a third
slower or more, which is why the baseline runs next to the pipeline every time, ``--repeat``
times (3 by default, interleaved): the fastest run of each counts, the least CPU time, and the
highest peak.

``visits_bad_times`` is the visits pipeline on the same visits after a producer broke its time
format on every line: ``visited_at`` is written as RFC 2822 (``Mon, 05 Oct 2026 15:13:23 -0300``),
which the data contract does not accept, so every record is a dead letter. It has no baseline
(there is nothing to tag) and is held to the visits memory ceiling: it exists to show that dead
letters, however many, are written in bounded memory (1M of them peaked at 6.0 GiB when Beam's
``WriteToFiles`` grouped every letter in memory; ``bench/RESULTS.md``).
"""

from __future__ import annotations

import argparse
import email.utils
import hashlib
import inspect
import json
import resource
import shutil
import subprocess
import sys
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import psutil

import tools.synthetic
from pipelines.options import bundled
from tools.inputs import write_lines, write_source, write_visits
from tools.synthetic import VisitMix

ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT / "bench" / "work"
PIPELINES = ("visits", "sdk_logs", "telemetry")
# Benchmark cases beyond the pipelines themselves: case -> the pipeline it runs.
CASES = {"visits_bad_times": "visits"}
SEED = 7
# Address profiles (share of the visits whose address is distinct) when --distinct_ips is not given.
DISTINCT_IPS = {"visits": (0.1, 1.0), "visits_bad_times": (0.1,)}
BAD_SHARE = 0.005  # visits the contract rejects (tools.synthetic.BAD_VISITS)
SPEED_TARGETS = {"visits": 0.4, "sdk_logs": 0.5, "telemetry": 0.5}  # x the baseline's records/s
MEMORY_CEILINGS_MIB = {"visits": 1536, "visits_bad_times": 1536}
FLAT_TOLERANCE = 1.10  # peak at 10x records / peak at 1x
MIB = 2**20


@dataclass(frozen=True)
class Measure:
    records: int
    wall: float
    peak: int  # bytes, whole process tree
    cpu: float  # user + system seconds, whole process tree
    reconciled: bool = True  # the run report's read = written + dead-lettered

    @property
    def rate(self) -> float:
        return self.records / self.wall

    def line(self, label: str) -> str:
        line = (
            f"{label}  records={self.records:,}  wall={self.wall:.1f}s  "
            f"records/s={self.rate:,.0f}  cpu={self.cpu:.1f}s  peak_rss={self.peak / MIB:,.0f} MiB"
        )
        return line if self.reconciled else f"{line}  NOT RECONCILED"


def _broken_time(value: object) -> str:
    """An accepted event time (epoch milliseconds or ISO-8601) as RFC 2822, which is not."""
    if isinstance(value, int):
        moment = datetime.fromtimestamp(value / 1000, UTC)
    else:
        moment = datetime.fromisoformat(value)
        moment = moment if moment.tzinfo else moment.replace(tzinfo=UTC)
    return email.utils.format_datetime(moment)


def bad_time_lines(lines: Iterable[str]) -> Iterator[str]:
    """The visits of ``lines`` with ``visited_at`` in a format the contract rejects."""
    for line in lines:
        visit = json.loads(line)
        if "visited_at" in visit:
            visit["visited_at"] = _broken_time(visit["visited_at"])
        yield json.dumps(visit, separators=(",", ":"))


def visit_mix(records: int, distinct_ips: float) -> VisitMix:
    """The benchmark's visits: ``distinct_ips`` of ``records`` from distinct addresses."""
    return VisitMix(
        distinct_ips=max(1, round(distinct_ips * records)),
        exact_distinct=True,
        bad_share=BAD_SHARE,
    )


def generate(
    case: str, records: int, networks: int, distinct_ips: float = 0.1
) -> tuple[Path, list[str]]:
    """The input file of ``case`` (generated once, then reused) and its pipeline's extra
    arguments. ``distinct_ips``: the visits' address profile (ignored by the other sources)."""
    WORK.mkdir(parents=True, exist_ok=True)
    version = hashlib.sha256(Path(tools.synthetic.__file__).read_bytes()).hexdigest()[:8]
    if case == "visits_bad_times":
        data, extra = generate("visits", records, networks, distinct_ips)
        source = inspect.getsource(_broken_time) + inspect.getsource(bad_time_lines)
        rewrite = hashlib.sha256(source.encode()).hexdigest()[:8]
        bad = WORK / f"{case}-{records}-ips{distinct_ips}-{SEED}-{version}-{rewrite}.jsonl"
        if not bad.exists():
            with data.open() as lines:
                write_lines(bad, bad_time_lines(line.rstrip("\n") for line in lines))
        # Every line is rejected on purpose: the run must not stop at the dead-letter ratio.
        return bad, [*extra, "--max_dead_letter_ratio=1"]
    pipeline = case
    if pipeline != "visits":
        data = WORK / f"{pipeline}-{records}-{SEED}-{version}.jsonl"
        return write_source(data, pipeline, records, SEED), []
    mix = visit_mix(records, distinct_ips)
    data = WORK / f"{pipeline}-{records}-ips{distinct_ips}-{SEED}-{version}.jsonl"
    snapshot = WORK / f"snapshot-{networks}-{mix.distinct_ips}-{SEED}-{version}.csv"
    write_visits(
        data,
        snapshot,
        records=records,
        mix=mix,
        networks=networks,
        seed=SEED,
        mmdb=bundled("country.mmdb"),
    )
    return data, [f"--enrichment_snapshot={snapshot}"]


def run_measured(command: list[str], log: Path) -> tuple[float, int, float, str]:
    """Wall seconds, peak RSS bytes, CPU seconds (process tree) and stdout of ``command``.

    Its stdout and stderr go to files (``log``.out and ``log``), never to a pipe that could fill.
    The CPU time is that of the child and every descendant it waited for (Beam's workers), from
    ``getrusage(RUSAGE_CHILDREN)`` around the run.
    """
    out = log.with_suffix(".out")
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    with out.open("w") as stdout, log.open("w") as stderr:
        proc = subprocess.Popen(command, cwd=ROOT, stdout=stdout, stderr=stderr)
        root = psutil.Process(proc.pid)
        peak = 0
        while proc.poll() is None:
            try:
                tree = [root, *root.children(recursive=True)]
                peak = max(peak, sum(p.memory_info().rss for p in tree if p.is_running()))
            except psutil.Error:
                pass
            time.sleep(0.1)
    elapsed = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    if proc.returncode != 0:
        sys.exit(f"{' '.join(command)} failed ({proc.returncode}):\n{log.read_text()[-4000:]}")
    return elapsed, peak, cpu, out.read_text()


def baseline(pipeline: str, data: Path) -> tuple[Measure, dict[str, int]]:
    """The baseline's measure and the addresses it counted (visits; else empty)."""
    out = WORK / f"out-baseline-{pipeline}"
    shutil.rmtree(out, ignore_errors=True)
    command = [sys.executable, "-m", "bench.baseline", pipeline, str(data), str(out)]
    if pipeline == "visits":
        command.append(f"--geoip_db={bundled('country.mmdb')}")  # the pipeline's default
    elapsed, peak, cpu, stdout = run_measured(command, WORK / f"baseline-{pipeline}.log")
    result = json.loads(stdout)
    return Measure(result["records"], elapsed, peak, cpu), result.get("addresses", {})


# The generated events span the 30 days after their source's base date (tools/synthetic.py:
# visits from 2026-10-01, logs and telemetry from 2026-11-20). The runs are pinned to the logs'
# base date with a clock skew that admits the whole window, so that every generated record is
# within the run's time bounds and none is expired on arrival: the benchmark measures records
# written, as production's near-real-time input is, not a backfill's dead letters.
RUN_WINDOW = ("--run_time=2026-11-20T00:00:00Z", "--max_clock_skew=31d")


def pipeline_run(case: str, data: Path, extra: list[str], workers: int) -> tuple[Measure, str]:
    """The measure of the case's pipeline and a summary of its run report."""
    out = WORK / f"out-{case}"
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
        f"pipelines.{CASES.get(case, case)}",
        f"--input={data}",
        f"--output={out}",
        *RUN_WINDOW,
        *extra,
        *runner,
    ]
    elapsed, peak, cpu, _ = run_measured(command, WORK / f"{case}.log")
    (path,) = out.glob("_reports/*.json")
    report = json.loads(path.read_text())
    counts = report["counts"]
    summary = (
        f"workers={workers}  rows_written={sum(counts['written'].values()):,}  "
        f"dead_lettered={counts['dead_lettered_total']:,}"
    )
    reconciled = report["reconciliation"]["reconciled"]
    return Measure(counts["read"], elapsed, peak, cpu, reconciled), summary


def verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def best_of(measures: list[Measure]) -> Measure:
    """The fastest run's records and wall time, with the highest peak of all runs (memory is
    judged on the worst case, speed on what the machine can do when nothing disturbs it) and
    the least CPU time (other jobs on the cores inflate it too, if less than the wall time);
    reconciled only if every run was."""
    fastest = min(measures, key=lambda m: m.wall)
    return Measure(
        fastest.records,
        fastest.wall,
        max(m.peak for m in measures),
        min(m.cpu for m in measures),
        all(m.reconciled for m in measures),
    )


def addresses_line(name: str, records: int, addresses: dict[str, int]) -> str:
    """What the baseline counted of the input's addresses."""
    distinct, resolved = addresses["distinct"], addresses["resolved"]
    return (
        f"{name} addresses  distinct={distinct:,} of {records:,} records "
        f"({distinct / records:.3f})  resolved to a country={resolved:,} "
        f"({resolved / max(distinct, 1):.1%})"
    )


def bench(
    case: str,
    records: int,
    networks: int,
    workers: int,
    flatness: bool,
    repeat: int,
    distinct_ips: float | None = None,
) -> None:
    """Measure ``case`` (at the visits' address profile ``distinct_ips``) and print its lines."""
    name = case if distinct_ips is None else f"{case}@{distinct_ips}"
    profile = () if distinct_ips is None else (distinct_ips,)
    t = time.perf_counter()
    data, extra = generate(case, records, networks, *profile)
    print(
        f"{name}: input {data.name}, {data.stat().st_size / 1e6:,.0f} MB, "
        f"ready in {time.perf_counter() - t:.1f}s",
        flush=True,
    )
    target = SPEED_TARGETS.get(case)  # a case without a speed target has no baseline either
    bases, runs, addresses = [], [], {}
    for _ in range(repeat):  # interleaved, so that a disturbance hits both alike
        if target is not None:
            measure, addresses = baseline(case, data)
            bases.append(measure)
        measure, summary = pipeline_run(case, data, extra, workers)
        runs.append(measure)
    run = best_of(runs)
    label = f"best of {repeat}" if repeat > 1 else ""
    checks = ""
    if target is not None:
        base = best_of(bases)
        print(base.line(f"{name:10s} baseline"), label, flush=True)
        if addresses:
            print(addresses_line(f"{name:10s}", base.records, addresses), flush=True)
        ratio = run.rate / base.rate
        checks += f"  ratio={ratio:.2f} (target {target}) {verdict(ratio >= target)}"
    if ceiling := MEMORY_CEILINGS_MIB.get(case):
        checks += f"  peak<{ceiling} MiB {verdict(run.peak < ceiling * MIB)}"
    print(f"{run.line(f'{name:10s} pipeline')}  {summary}{checks}", label, flush=True)
    if flatness:
        big_data, big_extra = generate(case, records * 10, networks, *profile)
        big, _ = pipeline_run(case, big_data, big_extra, workers)
        print(big.line(f"{name:10s} pipeline 10x"), flush=True)
        growth = big.peak / run.peak
        print(
            f"{name:10s} flatness  peak {run.peak / MIB:,.0f} -> {big.peak / MIB:,.0f} MiB "
            f"at 10x the records: x{growth:.2f} (flat: <= {FLAT_TOLERANCE}) "
            f"{verdict(growth <= FLAT_TOLERANCE)}",
            flush=True,
        )


def fraction(value: str) -> float:
    """A ``--distinct_ips`` value: a share of the records, above 0 and at most 1."""
    try:
        share = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {value!r}") from None
    if not 0 < share <= 1:
        raise argparse.ArgumentTypeError(f"a share of the records, in (0, 1]: {value}")
    return share


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--pipeline",
        choices=(*PIPELINES, *CASES, "all"),
        default="all",
        help="a pipeline, a case (visits_bad_times), or all (the pipelines)",
    )
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--networks", type=int, default=3_000)
    parser.add_argument(
        "--workers",
        type=int,
        default=2,
        help="1: FnApiRunner in process; >1: DirectRunner multi_processing with that many workers",
    )
    parser.add_argument(
        "--flatness",
        action="store_true",
        help="also run each pipeline on 10x the records and compare the peak memory",
    )
    parser.add_argument(
        "--repeat",
        type=int,
        default=3,
        help="runs of the baseline and the pipeline, interleaved; the fastest of each counts "
        "(a 3-second baseline varies by 15%% from run to run on a shared machine)",
    )
    parser.add_argument(
        "--distinct_ips",
        type=fraction,
        nargs="+",
        metavar="FRACTION",
        help="visits' address profiles: share of the visits whose address is distinct "
        "(1.0: every visit from its own address); each is run and reported on its own "
        "(default: 0.1 and 1.0 for visits, 0.1 for visits_bad_times)",
    )
    args = parser.parse_args(argv)
    if args.distinct_ips and args.pipeline not in ("all", *DISTINCT_IPS):
        parser.error(f"--distinct_ips applies to the visits, not to {args.pipeline}")
    return args


def profiles(case: str, distinct_ips: Sequence[float] | None) -> tuple[float | None, ...]:
    """The address profiles ``case`` runs at (``None``: the case has none)."""
    if case not in DISTINCT_IPS:
        return (None,)
    return tuple(dict.fromkeys(distinct_ips or DISTINCT_IPS[case]))


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    for case in PIPELINES if args.pipeline == "all" else (args.pipeline,):
        for distinct_ips in profiles(case, args.distinct_ips):
            bench(
                case,
                args.records,
                args.networks,
                args.workers,
                args.flatness,
                args.repeat,
                distinct_ips,
            )


if __name__ == "__main__":
    main()

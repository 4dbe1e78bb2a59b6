"""Time the free-text scanner on 1,000,000 realistic values; false positives on clean text.

    python -m bench.scanning                        # 1,000,000 values, 1% dirty, best of 3
    python -m bench.scanning --values 200000 --dirty 0.05 --repeat 1

The clean values are the lines of the clean corpora the tests use
(``tests/transforms/data/clean_text``: website URLs, browser and SDK user agents, TRTC-like SDK log
messages), drawn at random. A dirty value is a fresh secret or contact value in its usual setting:
a password in a log line, a Bearer token, a UserSig, a JWT, a private key, an AWS key id, an email
in a contact URL, a user agent or a session id, a phone number, a LinkedIn profile URL.

Printed: the false-positive rate of :func:`transforms.scanning.scan_text` on each clean corpus
(lines changed / lines), then for an all-clean column and for a column with ``--dirty`` of dirty
values: the time of :func:`transforms.scanning.scan_array` on the whole column (a ChunkedArray of
8,192-value chunks, the batch size of the columnar stages) in values/s and ns/value, the same
column scanned batch by batch (one call per chunk, as a stage would: Arrow compiles the
pre-filter and warms its automaton up on every call), the time of the Arrow pre-filter alone
(chunks joined, as scan_array does), the share of values the pre-filter passed to Python, the
findings by kind and how many dirty values were redacted. Times are the best of ``--repeat`` runs,
wall clock and CPU time of this process: on a machine shared with other work, the CPU time is the
figure to compare.
"""

from __future__ import annotations

import argparse
import random
import string
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from transforms.scanning import PREFILTER, scan_array, scan_text

CORPORA = Path(__file__).resolve().parent.parent / "tests" / "transforms" / "data" / "clean_text"
CHUNK = 8192


def clean_lines() -> dict[str, list[str]]:
    return {
        path.stem: path.read_text(encoding="utf-8").splitlines()
        for path in sorted(CORPORA.glob("*.txt"))
    }


def _text(rng: random.Random, alphabet: str, n: int) -> str:
    return "".join(rng.choice(alphabet) for _ in range(n))


def _dirty_makers(rng: random.Random) -> list[Callable[[], str]]:
    alnum = string.ascii_letters + string.digits
    b64 = alnum + "+/"

    def name() -> str:
        return rng.choice(["hans", "anna", "li.wei", "maria", "j.smith", "kenji"]) + str(
            rng.randrange(1000)
        )

    def company() -> str:
        return rng.choice(["firma", "corp", "acme", "example-gmbh", "studio"]) + str(
            rng.randrange(100)
        )

    def digits(n: int) -> str:
        return str(rng.randrange(1, 10)) + _text(rng, string.digits, n - 1)

    def jwt() -> str:
        return "eyJhbGciOiJIUzI1NiJ9." + "eyJ" + _text(rng, alnum, 40) + "." + _text(rng, alnum, 43)

    return [
        lambda: (
            f"login failed password={_text(rng, alnum + '!#$', 12)} for user_{rng.randrange(10**5)}"
        ),
        lambda: f"Authorization: Bearer {_text(rng, alnum, 32)}",
        lambda: f'{{"password": "{_text(rng, alnum, 10)}"}}',
        lambda: f"enterRoom userSig={_text(rng, b64, 120)} roomId={rng.randrange(10**6)}",
        lambda: f"token={_text(rng, string.hexdigits.lower(), 16)}",
        lambda: (
            f"https://trtc.example.com/contact?email={name()}@{company()}.de"
            f"&phone=+49%2030%20{digits(7)}"
        ),
        lambda: f"Mozilla/5.0 (compatible; Crawler/1.0; +mailto:{name()}@{company()}.com)",
        lambda: f"{name()}@{company()}.com",
        lambda: f"id_token={jwt()}",
        lambda: f"https://www.linkedin.com/in/{name().replace('.', '-')}-{digits(6)}",
        lambda: f"please call +49 30 {digits(7)} tomorrow",
        lambda: f"tel:+86 138 {digits(4)} {digits(4)}",
        lambda: (
            f"key -----BEGIN PRIVATE KEY-----\n{_text(rng, b64, 64)}\n-----END PRIVATE KEY-----"
        ),
        lambda: "aws AKIA" + _text(rng, string.ascii_uppercase + string.digits, 16),
    ]


def column(values: int, dirty: float, seed: int) -> tuple[pa.ChunkedArray, int]:
    """``values`` values drawn from the clean corpora, ``dirty`` of them replaced by dirty ones;
    returns the column (8,192-value chunks) and the number of dirty values."""
    rng = random.Random(seed)
    pool = [line for lines in clean_lines().values() for line in lines]
    makers = _dirty_makers(rng)
    rows, n_dirty = [], 0
    for _ in range(values):
        if rng.random() < dirty:
            rows.append(rng.choice(makers)())
            n_dirty += 1
        else:
            rows.append(rng.choice(pool))
    chunks = [pa.array(rows[i : i + CHUNK], pa.string()) for i in range(0, len(rows), CHUNK)]
    return pa.chunked_array(chunks, pa.string()), n_dirty


def best_of(repeat: int, work: Callable[[], object]) -> tuple[float, float, object]:
    """The best wall time and the best CPU time of ``repeat`` runs of ``work``, and its result.
    The CPU time is what a busy shared machine does not inflate."""
    walls, cpus, result = [], [], None
    for _ in range(repeat):
        wall, cpu = time.perf_counter(), time.process_time()
        result = work()
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
    return min(walls), min(cpus), result


def report_false_positives() -> None:
    for name, lines in clean_lines().items():
        changed = sum(1 for line in lines if scan_text(line)[1])
        print(
            f"false positives  {name:<13} {changed:>3} / {len(lines)} lines changed "
            f"= {changed / len(lines):.2%}"
        )


def _timing(label: str, n: int, wall: float, cpu: float, note: str = "") -> None:
    print(
        f"  {label:<24} {wall:6.3f} s wall {n / wall:>10,.0f} values/s {wall / n * 1e9:5.0f} ns"
        f" | {cpu:6.3f} s CPU {n / cpu:>10,.0f} values/s {cpu / n * 1e9:5.0f} ns/value{note}"
    )


def report_throughput(label: str, values: pa.ChunkedArray, n_dirty: int, repeat: int) -> None:
    n = len(values)
    wall, cpu, (out, counts) = best_of(repeat, lambda: scan_array(values))
    batch_wall, batch_cpu, _ = best_of(repeat, lambda: [scan_array(c) for c in values.chunks])
    filter_wall, filter_cpu, flagged = best_of(
        repeat,
        lambda: pc.sum(
            pc.match_substring_regex(values.combine_chunks(), PREFILTER.pattern)
        ).as_py(),
    )
    changed = n - pc.sum(pc.equal(out, values)).as_py() - values.null_count
    print(f"\n{label}: {n:,} values, {n_dirty:,} dirty")
    _timing("scan_array, one call", n, wall, cpu)
    _timing("scan_array, per batch", n, batch_wall, batch_cpu, f" ({values.num_chunks} calls)")
    _timing("Arrow pre-filter alone", n, filter_wall, filter_cpu)
    print(f"  passed the pre-filter    {flagged:,} = {flagged / n:.2%}")
    print(f"  values changed           {changed:,} (dirty values: {n_dirty:,})")
    print(f"  findings                 {dict(sorted(Counter(counts).items()))}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--values", type=int, default=1_000_000)
    parser.add_argument("--dirty", type=float, default=0.01, help="share of dirty values")
    parser.add_argument("--repeat", type=int, default=3, help="best of this many runs")
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()

    report_false_positives()
    clean, _ = column(args.values, 0.0, args.seed)
    report_throughput("clean column", clean, 0, args.repeat)
    mixed, n_dirty = column(args.values, args.dirty, args.seed)
    report_throughput(f"{args.dirty:.0%} dirty column", mixed, n_dirty, args.repeat)


if __name__ == "__main__":
    main()

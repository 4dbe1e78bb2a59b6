"""Digest of everything the ingestion pipelines write, to prove a refactoring changed nothing.

    python -m tools.output_digest --save before.json          # on the old tree
    python -m tools.output_digest --save after.json           # on the new tree
    python -m tools.output_digest --compare before.json after.json

Runs ``python -m pipelines`` on the bundled samples and each pipeline on ``--records`` generated
records (``tools.synthetic``, the benchmark's generator and seed, at the benchmark's pinned run
time), then digests every output: per category the row count and the SHA-256 of its rows in a
canonical order, per dead-letter source the same of its lines, and every counter of the run
reports. What differs between two runs of the same tree by design is left out: file names (they
carry the run id), ``policy_version`` (a policy edit is not a refactoring's business; compare
the policy separately) and the reports' identity, times and paths.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from pipelines.__main__ import SAMPLE_RUN_TIME
from pipelines.options import bundled
from tools.inputs import write_source, write_visits
from tools.synthetic import VisitMix

WORK = Path(__file__).resolve().parent.parent / "bench" / "work" / "digest"
SEED = 20261120
RUN_WINDOW = ("--run_time=2026-11-20T00:00:00Z", "--max_clock_skew=31d")
# Report keys that name the run rather than describe what it wrote.
REPORT_IDENTITY = {
    "run_id",
    "run_time",
    "output",
    "input",
    "report_path",
    "policy_version",
    "policy_source",
    "attempt",
    "commit",
    "state",
}


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str, separators=(",", ":"))


def _digest(items: Iterable[str]) -> dict[str, Any]:
    ordered = sorted(items)
    sha = hashlib.sha256("\n".join(ordered).encode("utf-8", "surrogatepass")).hexdigest()
    return {"count": len(ordered), "sha256": sha}


def digest_root(root: Path) -> dict[str, Any]:
    """Rows by category, dead letters by source, report counters by pipeline."""
    rows: dict[str, list[str]] = {}
    for path in root.glob("data_category=*/expiry_date=*/*.parquet"):
        category = path.parent.parent.name.split("=", 1)[1]
        expiry = path.parent.name.split("=", 1)[1]
        for row in pq.read_table(path).to_pylist():
            row.pop("policy_version", None)
            rows.setdefault(category, []).append(_canonical({**row, "_expiry_dir": expiry}))
    letters: dict[str, list[str]] = {}
    for path in root.glob("_dead_letter/source=*/expiry_date=*/*.jsonl"):
        source = path.parent.parent.name.split("=", 1)[1]
        letters.setdefault(source, []).extend(path.read_text().splitlines())
    reports = {}
    for path in root.glob("_reports/*.json"):
        report = json.loads(path.read_text())
        reports[report["pipeline"]] = {k: v for k, v in report.items() if k not in REPORT_IDENTITY}
    return {
        "rows": {c: _digest(v) for c, v in sorted(rows.items())},
        "dead_letters": {s: _digest(v) for s, v in sorted(letters.items())},
        "reports": reports,
    }


def generated_inputs(records: int) -> dict[str, tuple[Path, list[str]]]:
    """The generated input of each pipeline (made once per size) and its extra flags."""
    WORK.mkdir(parents=True, exist_ok=True)
    inputs = {}
    for name in ("sdk_logs", "telemetry"):
        inputs[name] = (write_source(WORK / f"{name}-{records}.jsonl", name, records, SEED), [])
    visits = WORK / f"visits-{records}.jsonl"
    snapshot = WORK / f"snapshot-{records}.csv"
    write_visits(
        visits,
        snapshot,
        records=records,
        mix=VisitMix(),
        networks=3_000,
        seed=SEED,
        mmdb=bundled("country.mmdb"),
    )
    inputs["visits"] = (visits, [f"--enrichment_snapshot={snapshot}"])
    return inputs


def _run(args: list[str]) -> None:
    done = subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(args[:2])} failed:\n{done.stderr[-2000:]}")


def collect(records: int) -> dict[str, Any]:
    out = WORK / "out"
    shutil.rmtree(out, ignore_errors=True)
    _run(["pipelines", f"--output={out / 'sample'}", f"--run_time={SAMPLE_RUN_TIME}"])
    result = {"sample": digest_root(out / "sample")}
    for name, (path, extra) in generated_inputs(records).items():
        root = out / f"generated-{name}"
        _run([f"pipelines.{name}", f"--input={path}", f"--output={root}", *RUN_WINDOW, *extra])
        result[f"generated-{name}"] = digest_root(root)
    return result


def differences(before: Any, after: Any, path: str = "") -> list[str]:
    """Where two digests differ, as ``path: before -> after`` lines."""
    if isinstance(before, dict) and isinstance(after, dict):
        found = []
        for key in sorted(set(before) | set(after)):
            found += differences(before.get(key), after.get(key), f"{path}/{key}")
        return found
    return [] if before == after else [f"{path}: {before!r} -> {after!r}"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--save", type=Path, help="write the digest of this tree's outputs here")
    parser.add_argument(
        "--records", type=int, default=100_000, help="generated records per pipeline"
    )
    parser.add_argument("--compare", nargs=2, type=Path, metavar=("BEFORE", "AFTER"))
    args = parser.parse_args()
    if args.compare:
        before, after = (json.loads(p.read_text()) for p in args.compare)
        found = differences(before, after)
        print("\n".join(found) or "identical: every row, dead letter and report counter")
        raise SystemExit(1 if found else 0)
    if not args.save:
        parser.error("give --save FILE or --compare BEFORE AFTER")
    args.save.write_text(json.dumps(collect(args.records), indent=1, sort_keys=True))
    print(f"digest written to {args.save}")


if __name__ == "__main__":
    main()

"""``python -m pipelines``: every source on its bundled sample, embedded defaults, into ./output.

Visits (with the bundled country database and AroundDeal snapshot), SDK logs and dashboard
telemetry, one after the other, then one summary across them.

No network and no cloud account: the bundled country database and AroundDeal snapshot are used,
and the job runs locally (FnApiRunner, in-process) unless Beam options say otherwise. Any extra
argument is passed on to each pipeline (e.g. ``--output /tmp/out`` or ``--format both``).
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence

from pipelines import sdk_logs, telemetry, visits
from pipelines.options import bundled
from pipelines.report import summary_lines

__all__ = ["main"]


SOURCES = (
    (
        "visits",
        visits.run,
        {
            "--input": bundled("sample/visits.jsonl"),
            "--enrichment_snapshot": bundled("sample/arounddeal_snapshot.csv"),
        },
    ),
    ("sdk_logs", sdk_logs.run, {"--input": bundled("sample/sdk_logs.jsonl")}),
    ("telemetry", telemetry.run, {"--input": bundled("sample/telemetry.jsonl")}),
)
# The sample is a fixed snapshot (tools/make_sample.py): its run time is pinned to the day it
# describes, so that its 14-day logs are not expired on arrival whenever it is run, and every run
# of it writes the same rows. Pass --run_time to see what a later run would keep.
SAMPLE_RUN_TIME = "2026-11-29T00:00:00Z"
COMMON = {"--output": "output", "--runner": "FnApiRunner", "--run_time": SAMPLE_RUN_TIME}


def sample_args(defaults: dict[str, str], extra: Sequence[str]) -> list[str]:
    """A pipeline's arguments on its bundled sample; ``extra`` wins over the defaults."""
    given = {arg.split("=", 1)[0] for arg in extra if arg.startswith("--")}
    args = [
        f"{flag}={value}" for flag, value in {**COMMON, **defaults}.items() if flag not in given
    ]
    return args + list(extra)


def main(argv: Sequence[str] | None = None) -> None:
    logging.getLogger().setLevel(logging.WARNING)
    extra = sys.argv[1:] if argv is None else argv
    reports = [run(sample_args(defaults, extra)) for _name, run, defaults in SOURCES]
    for report in reports:
        print("\n".join(summary_lines(report)))
    total_read = sum(r["counts"]["read"] for r in reports)
    reconciled = all(r["reconciliation"]["reconciled"] for r in reports)
    print(f"all sources: read={total_read} reconciled={reconciled}")
    for report in reports:
        print(f"report: {report['report_path']}")


if __name__ == "__main__":
    main()

"""``python -m pipelines``: every source on its bundled sample, embedded defaults, into ./output.

Visits (with the bundled country database and AroundDeal snapshot), SDK logs and dashboard
telemetry, one after the other, then one summary across them.

No network and no cloud account: the bundled country database and AroundDeal snapshot are used,
and the job runs locally (FnApiRunner, in-process) unless Beam options say otherwise. The flags are
those of ``pipelines.visits``, passed on to each pipeline (e.g. ``--output /tmp/out`` or ``--format
both``; the SDK logs and telemetry ignore the visits' own). Each source is held to
``--max_dead_letter_ratio`` on its own: every source runs and is summarised, then the command
exits non-zero naming each one above it.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from pipelines import sdk_logs, telemetry, visits
from pipelines.launch import Cli, configuration_errors, start_cli
from pipelines.options import IngestOptions, bundled
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
# The sample is a fixed snapshot (tools/make_sample.py): its run time is pinned to the end of the
# period it describes (SDK logs and telemetry of 2026-11-20 to 2026-12-19), so that every run of it
# writes the same rows, none of its events lies in the future, and what it drops as expired is
# what a run on that day would drop. Pass --run_time to see what another day would keep.
SAMPLE_RUN_TIME = "2026-12-20T00:00:00Z"
COMMON = {"--output": "output", "--runner": "FnApiRunner", "--run_time": SAMPLE_RUN_TIME}


def sample_args(defaults: dict[str, str], extra: Sequence[str]) -> list[str]:
    """A pipeline's arguments on its bundled sample; ``extra`` wins over the defaults."""
    given = {arg.split("=", 1)[0] for arg in extra if arg.startswith("--")}
    args = [
        f"{flag}={value}" for flag, value in {**COMMON, **defaults}.items() if flag not in given
    ]
    return args + list(extra)


def main(argv: Sequence[str] | None = None) -> None:
    extra = list(sys.argv[1:] if argv is None else argv)
    start_cli(Cli.of(sys.modules[__name__], (IngestOptions, visits.VisitsOptions)), extra)
    with configuration_errors():
        reports = [run(sample_args(defaults, extra)) for _name, run, defaults in SOURCES]
    for report in reports:
        print("\n".join(summary_lines(report)))
    total_read = sum(r["counts"]["read"] for r in reports)
    reconciled = all(r["reconciliation"]["reconciled"] for r in reports)
    print(f"all sources: read={total_read} reconciled={reconciled}")
    for report in reports:
        print(f"report: {report['report_path']}")
    failed = [f"{r['pipeline']}: {r['error']}" for r in reports if r.get("error")]
    if failed:
        raise SystemExit(f"error: {'; '.join(failed)}")


if __name__ == "__main__":
    main()

"""``python -m pipelines``: every source on its bundled sample, embedded defaults, into ./output.

No network and no cloud account: the bundled country database and AroundDeal snapshot are used,
and the job runs locally (FnApiRunner, in-process) unless Beam options say otherwise. Any extra
argument is passed on to each pipeline (e.g. ``--output /tmp/out`` or ``--format both``).
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence

from pipelines import visits
from pipelines.options import bundled
from pipelines.report import summary_lines

__all__ = ["main"]


def sample_args(extra: Sequence[str]) -> list[str]:
    """The visits pipeline's arguments on the bundled sample; ``extra`` wins over the defaults."""
    defaults = {
        "--input": bundled("sample/visits.jsonl"),
        "--enrichment_snapshot": bundled("sample/arounddeal_snapshot.csv"),
        "--output": "output",
        "--runner": "FnApiRunner",
    }
    given = {arg.split("=", 1)[0] for arg in extra if arg.startswith("--")}
    args = [f"{flag}={value}" for flag, value in defaults.items() if flag not in given]
    return args + list(extra)


def main(argv: Sequence[str] | None = None) -> None:
    logging.getLogger().setLevel(logging.WARNING)
    extra = sys.argv[1:] if argv is None else argv
    report = visits.run(sample_args(extra))
    print("\n".join(summary_lines(report)))
    print(f"report: {report['report_path']}")


if __name__ == "__main__":
    main()

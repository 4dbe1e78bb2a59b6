"""What every ingestion entry point does around its transforms: run, wait, report.

Each pipeline module builds its composite from its options; :func:`run_and_report` runs it on the
runner the options name, waits for it, and writes the run report from the job's counters.
"""

from __future__ import annotations

import logging
import sys
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions

from pipelines.report import build_report, counters_of, summary_lines, write_report
from schemas.policy import Policy, PolicyError
from transforms.deadletter import DeadLetterContext
from transforms.timestamps import format_utc

__all__ = ["RunContext", "cli_main", "dead_letter_context", "run_and_report"]

LOG = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunContext:
    """Identity of one run: written into the report and the dead letters' expiry."""

    pipeline: str
    primary_categories: tuple[str, ...]
    input: str
    output: str
    policy: Policy
    run_time: int  # epoch micros
    run_id: str = ""

    def with_id(self) -> RunContext:
        if self.run_id:
            return self
        return RunContext(**{**self.__dict__, "run_id": uuid.uuid4().hex[:12]})


def dead_letter_context(run: RunContext, mask_names: tuple[str, ...]) -> DeadLetterContext:
    """Dead letters of this run: masked with ``mask_names`` plus every secret and media name,
    expiring the policy's dead-letter period after the run time."""
    policy = run.policy
    names = tuple(sorted(set(mask_names) | policy.secret_names | policy.media_names))
    return DeadLetterContext(
        source=run.pipeline,
        mask_names=names,
        expires_at=policy.dead_letter_retention.expires_at(run.run_time),
    )


def run_and_report(
    options: PipelineOptions,
    run: RunContext,
    build: Callable[[beam.Pipeline], Any],
) -> dict[str, Any]:
    """Build the pipeline with ``build(p)``, run it to completion and write its report."""
    run = run.with_id()
    pipeline = beam.Pipeline(options=options)
    build(pipeline)
    result = pipeline.run()
    result.wait_until_finish()
    report = build_report(
        counters_of(result),
        pipeline=run.pipeline,
        primary_categories=run.primary_categories,
        run={
            "run_id": run.run_id,
            "input": run.input,
            "output": run.output,
            "policy_version": run.policy.version,
            "policy_source": run.policy.source,
            "run_time": format_utc(run.run_time),
            "state": str(result.state),
        },
    )
    path = write_report(report, run.output, run.run_id)
    LOG.info("run report written to %s", path)
    report["report_path"] = path
    return report


def cli_main(
    run: Callable[[Sequence[str]], dict[str, Any]],
    argv: Sequence[str] | None = None,
    *,
    preset: Sequence[str] = (),
) -> None:
    """Command-line entry point of a pipeline: run it, print the report's summary.

    Configuration problems (malformed policy, missing input, missing key) end with a one-line
    message and a non-zero exit, not a traceback. ``preset`` are arguments a specialised
    pipeline fixes (``--source=sdk_logs``).
    """
    logging.getLogger().setLevel(logging.WARNING)
    try:
        report = run([*preset, *(sys.argv[1:] if argv is None else argv)])
    except (PolicyError, ValueError, OSError) as exc:
        raise SystemExit(f"error: {exc}") from None
    print("\n".join(summary_lines(report)))
    print(f"report: {report['report_path']}")

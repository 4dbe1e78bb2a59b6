"""What every ingestion entry point does around its transforms: run, wait, report.

Each pipeline module builds its composite from its options; :func:`run_and_report` runs it on the
runner the options name, waits for it, and writes the run report from the job's counters.
"""

from __future__ import annotations

import dataclasses
import logging
import sys
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import GoogleCloudOptions, PipelineOptions, TestOptions

from pipelines.options import (
    IngestOptions,
    event_time_bounds,
    output_formats,
    run_time_micros,
)
from pipelines.report import build_report, counters_of, summary_lines, write_report
from schemas.policy import Policy, PolicyError, load_policy
from transforms.deadletter import DeadLetterContext
from transforms.masking import Exposure
from transforms.rawinput import DEFAULT_MAX_LINE_BYTES
from transforms.retention.layout import check_output_root, normalise_root, require_matches
from transforms.timestamps import TimeBounds, format_utc

__all__ = [
    "RunContext",
    "cli_main",
    "dead_letter_context",
    "launch_only",
    "retention_context",
    "run_and_report",
    "run_context",
    "run_pipeline",
]

LOG = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunContext:
    """What every ingestion run resolves from the common options (``IngestOptions``): its
    identity for the report, where to read and write, the policy, and the run time."""

    pipeline: str
    primary_categories: tuple[str, ...]
    input: str
    input_format: str
    output: str
    formats: tuple[str, ...]
    policy: Policy
    run_time: int  # epoch micros
    run_id: str = ""
    max_line_bytes: int = DEFAULT_MAX_LINE_BYTES
    bounds: TimeBounds | None = None  # the event times the run accepts

    def header(self) -> dict[str, Any]:
        """The identity every report and audit record of the run starts with."""
        return {
            "pipeline": self.pipeline,
            "run_id": self.run_id,
            "run_time": format_utc(self.run_time),
            "policy_version": self.policy.version,
            "policy_source": self.policy.source,
            "output": self.output,
        }

    def with_id(self) -> RunContext:
        if self.run_id:
            return self
        return dataclasses.replace(self, run_id=uuid.uuid4().hex[:12])


def run_context(
    options: PipelineOptions, *, pipeline: str, primary_categories: tuple[str, ...], policy: Policy
) -> RunContext:
    """The :class:`RunContext` of the common flags; ``--input`` is required."""
    common = options.view_as(IngestOptions)
    if not common.input:
        raise ValueError("--input is required (a file pattern of JSON Lines or Avro records)")
    run_time = run_time_micros(common.run_time)
    return RunContext(
        pipeline=pipeline,
        primary_categories=primary_categories,
        input=common.input,
        input_format=common.input_format,
        output=common.output,
        formats=output_formats(common.output_format),
        policy=policy,
        run_time=run_time,
        max_line_bytes=max_line_bytes(common),
        bounds=event_time_bounds(common, run_time),
    )


def max_line_bytes(common: IngestOptions) -> int:
    """``--max_line_bytes``, checked."""
    if common.max_line_bytes < 1:
        raise ValueError(f"--max_line_bytes must be at least 1, got {common.max_line_bytes}")
    return common.max_line_bytes


def dead_letter_context(
    run: RunContext,
    declared: Iterable[str],
    *,
    masked: Iterable[str] = (),
    id_field: str = "event_id",
) -> DeadLetterContext:
    """Dead letters of this run: readable only in the ``declared`` fields of its input that are
    neither contact, secret nor media data, nor ``masked`` (closed world:
    :class:`~transforms.masking.Exposure`), expiring the policy's dead-letter period after the
    run time."""
    policy = run.policy
    return DeadLetterContext(
        source=run.pipeline,
        exposure=Exposure.of_source(policy, declared, masked=masked, id_field=id_field),
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
    if launch_only(options):
        # A Dataflow template build or dry run: the runner describes the job instead of running
        # it, so there is nothing to wait for and no counters to report (the job's own metrics,
        # namespace "compliance", are the report of a template launch).
        pipeline.run()
        return {"pipeline": run.pipeline, "launched_only": True, "report_path": None}
    result = pipeline.run()
    result.wait_until_finish()
    report = build_report(
        counters_of(result),
        pipeline=run.pipeline,
        primary_categories=run.primary_categories,
        run={**run.header(), "input": run.input, "state": str(result.state)},
    )
    path = write_report(report, run.output, run.run_id)
    LOG.info("run report written to %s", path)
    report["report_path"] = path
    return report


def retention_context(
    options: PipelineOptions,
    *,
    pipeline: str,
    pattern: str | None = None,
    flag: str | None = None,
) -> RunContext:
    """The :class:`RunContext` of a retention job rewriting the output root (purge; lifecycle
    and erase, which also read ``pattern``, the value of ``flag``): everything is checked
    before any data is read, and the run gets its id now (it names the job's transaction)."""
    FileSystems.set_options(options)
    common = options.view_as(IngestOptions)
    if flag is not None:
        if not pattern:
            raise ValueError(f"{flag} is required (a file pattern of JSON Lines records)")
        require_matches(pattern, flag)
    policy = load_policy(common.policy)
    root = normalise_root(common.output)
    check_output_root(root)
    run_time = run_time_micros(common.run_time)
    return RunContext(
        pipeline=pipeline,
        primary_categories=(),
        input=pattern or "",
        input_format="jsonl",
        output=root,
        formats=(),
        policy=policy,
        run_time=run_time,
        max_line_bytes=max_line_bytes(common),
        bounds=event_time_bounds(common, run_time),
    ).with_id()


def launch_only(options: PipelineOptions) -> bool:
    """True when the runner will only build the job (``--template_location``, ``--dry_run``)."""
    return bool(
        options.view_as(GoogleCloudOptions).template_location
        or options.view_as(TestOptions).dry_run
    )


def run_pipeline(
    argv: Sequence[str] | None,
    config_from: Callable[[PipelineOptions], Any],
    transform: Callable[[Any], beam.PTransform],
) -> dict[str, Any]:
    """Parse ``argv``, resolve the configuration (failing before any data is read), run
    ``transform(config)`` from the pipeline root and return the run report."""
    options = PipelineOptions(list(argv or []))
    config = config_from(options)
    return run_and_report(options, config.run, lambda p: p | transform(config))


def cli_main(
    run: Callable[[Sequence[str]], dict[str, Any]],
    argv: Sequence[str] | None = None,
    *,
    preset: Sequence[str] = (),
    summary: Callable[[dict[str, Any]], list[str]] = summary_lines,
) -> None:
    """Command-line entry point of a job: run it, print the summary of its report.

    Configuration problems (malformed policy, missing input, missing key, a busy output root)
    end with a one-line message and a non-zero exit, not a traceback; so does a report that
    carries an ``error`` (e.g. an erasure whose verification found a remaining match).
    ``preset`` are arguments a specialised pipeline fixes (``--source=sdk_logs``).
    """
    logging.getLogger().setLevel(logging.WARNING)
    try:
        report = run([*preset, *(sys.argv[1:] if argv is None else argv)])
    except (PolicyError, ValueError, OSError) as exc:
        raise SystemExit(f"error: {exc}") from None
    if report.get("launched_only"):
        print(f"[{report['pipeline']}] job built and handed to the runner; no run report here")
        return
    print("\n".join(summary(report)))
    if report.get("report_path"):
        print(f"report: {report['report_path']}")
    if report.get("error"):
        raise SystemExit(f"error: {report['error']}")

"""What every entry point does around its transforms: read the command line, check the
configuration, run, wait, report.

Each pipeline module builds its composite from its options; :func:`run_and_report` runs it on the
runner the options name, waits for it, and writes the run report from the job's counters.
:func:`cli_main` is the command line of every job (``python -m pipelines`` has its own loop over
the sources, on the same pieces): strict flags (:func:`~pipelines.options.parse_job_flags`), quiet
logs unless ``--log_level`` asks, and a configuration problem as one line and a non-zero exit,
found before any data is read, instead of a traceback from the middle of a running job.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import logging
import sys
import tempfile
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import apache_beam as beam
from apache_beam.io.filesystem import BeamIOError
from apache_beam.io.filesystems import FileSystems
from apache_beam.io.localfilesystem import LocalFileSystem
from apache_beam.options.pipeline_options import GoogleCloudOptions, PipelineOptions, TestOptions

from pipelines.options import (
    DEFAULT_OUTPUT,
    CommandFlags,
    IngestOptions,
    JobOptions,
    StorageOptions,
    duration_micros,
    event_time_bounds,
    max_dead_letter_ratio,
    output_formats,
    parse_job_flags,
    run_time_micros,
)
from pipelines.report import (
    build_report,
    counters_of,
    dead_letter_ratio_error,
    summary_lines,
    write_report,
)
from pipelines.runs import Attempt, begin_attempt, check_run_id, recorded_run_time, run_identity
from schemas.policy import Policy, PolicyError, load_policy
from transforms.commit import CommitRun, RunStaging, sweep
from transforms.deadletter import DeadLetterContext
from transforms.inputformats import format_names, resolve_input_format
from transforms.masking import Exposure
from transforms.rawinput import DEFAULT_MAX_LINE_BYTES
from transforms.retention.layout import check_output_root, normalise_root
from transforms.sinks.marker import check_root_layout
from transforms.sinks.registry import DEFAULT_SINK, sink_named
from transforms.sinks.storage import HIVE, StorageLayout, layout_named
from transforms.timestamps import TimeBounds, format_utc

__all__ = [
    "Cli",
    "RunContext",
    "cli_main",
    "command_main",
    "configuration_errors",
    "configure_logging",
    "dead_letter_context",
    "launch_only",
    "require_input",
    "require_writable_output",
    "retention_context",
    "run_and_report",
    "run_context",
    "run_pipeline",
    "start_cli",
]

LOG = logging.getLogger(__name__)
BEAM_LOGGER = "apache_beam"
# What a configuration problem raises (a SnapshotError or a NotAnOutputRootError is a ValueError).
CONFIGURATION_ERRORS = (PolicyError, ValueError, OSError)


@dataclass(frozen=True)
class RunContext:
    """What every run resolves from the common options (``JobOptions``, and ``IngestOptions``
    for an ingestion run): its identity for the report, where to read and write, the policy,
    and the run time."""

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
    max_dead_letter_ratio: float | None = None  # of an ingestion run (None: not checked)
    # Of an ingestion run: where its attempts stage their files until the commit
    # (transforms.commit); None for a retention job, which journals its own changes.
    staging: RunStaging | None = None
    layout: StorageLayout = HIVE  # --layout, checked against the root's
    sink_name: str = DEFAULT_SINK  # --sink, a registered one (transforms.sinks.registry)

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

    def sink(self) -> dict[str, Any]:
        """Keyword arguments of the run's sinks (:meth:`table_sink`, ``WriteDeadLetters``):
        write into the staging folder, in the run's storage layout, name the files after the
        run, leave the temp files to the commit."""
        if self.staging is None:
            return {"output_dir": self.output, "layout": self.layout}
        return {
            "output_dir": self.staging.staged_root,
            "run_token": self.run_id,
            "remove_temp": False,
            "layout": self.layout,
        }

    def table_sink(self, schemas: Mapping[str, Mapping[str, Any]]) -> beam.PTransform:
        """The sink of the run's data (``Store(sink=...)``): the one ``--sink`` selects from
        ``transforms.sinks.registry``, for the categories of ``schemas`` in the run's
        formats, with :meth:`sink`'s arguments. The pipelines build their sink here and never
        name one, so a new sink is a registration, not an edit of every pipeline."""
        return sink_named(self.sink_name).sink(schemas=schemas, formats=self.formats, **self.sink())

    def commit(self, categories: Iterable[str]) -> CommitRun:
        """The run's commit of the files its sinks staged (the data of ``categories`` and the
        dead letters of the run's source)."""
        if self.staging is None:
            raise ValueError(f"{self.pipeline}: a run without staging has nothing to commit")
        return CommitRun(self.staging, {"data": categories, "dead_letter": (self.pipeline,)})

    def with_id(self) -> RunContext:
        if self.run_id:
            return self
        return dataclasses.replace(self, run_id=uuid.uuid4().hex[:12])


def run_context(
    options: PipelineOptions,
    *,
    pipeline: str,
    primary_categories: tuple[str, ...],
    policy: Policy,
    option_classes: Sequence[type[PipelineOptions]] = (),
) -> RunContext:
    """The :class:`RunContext` of an ingestion run's common flags, checked before any data is
    read: ``--input`` must match files, ``--output`` must be a directory that can be written,
    ``--sink`` and ``--layout`` must be registered, and the layout must be the root's
    (``transforms.sinks.marker``).

    The run's id is ``--run_id`` or the hash of its identity (``pipelines.runs``), over the
    values of ``JobOptions``, ``IngestOptions`` and the job's own ``option_classes``; its run
    time is ``--run_time``, else the one its first attempt recorded, else now."""
    FileSystems.set_options(options)
    common = options.view_as(JobOptions)
    ingest = options.view_as(IngestOptions)
    storage = options.view_as(StorageOptions)
    if not ingest.input:
        raise ValueError(
            f"--input is required (a file pattern of {'/'.join(format_names())} files)"
        )
    formats = output_formats(ingest.output_format)
    ratio = max_dead_letter_ratio(ingest)
    limit = max_line_bytes(common)
    pattern = input_pattern(ingest.input)
    inputs = require_input(pattern, "--input")
    output = output_root(common.output or DEFAULT_OUTPUT)
    require_writable_output(output)
    input_format = resolve_input_format(pattern, ingest.input_format)
    sink_name = sink_named(storage.sink).name
    layout = layout_named(storage.layout)
    check_root_layout(output, layout)
    run_id = check_run_id(ingest.run_id) if ingest.run_id else ""
    run_id = run_id or run_identity(
        options,
        pipeline=pipeline,
        policy_version=policy.version,
        inputs=inputs,
        option_classes=(JobOptions, IngestOptions, *option_classes),
        resolved={"input_format": input_format, **_spelling_free_bounds(common)},
    )
    staging = RunStaging(output, pipeline, run_id, layout)
    if common.run_time:
        run_time = run_time_micros(common.run_time)
    else:
        run_time = recorded_run_time(staging) or run_time_micros(None)
    bounds = event_time_bounds(common, run_time)
    return RunContext(
        pipeline=pipeline,
        primary_categories=primary_categories,
        input=pattern,
        input_format=input_format,
        output=output,
        formats=formats,
        policy=policy,
        run_time=run_time,
        max_line_bytes=limit,
        bounds=bounds,
        max_dead_letter_ratio=ratio,
        run_id=run_id,
        staging=staging,
        layout=layout,
        sink_name=sink_name,
    )


def _spelling_free_bounds(common: JobOptions) -> dict[str, Any]:
    """``--min_event_time`` and ``--max_clock_skew`` in micros, for the run's identity: the
    bounds a run applies, however they are spelt (``31d`` is ``744h``; ``...Z`` is
    ``...+00:00``). An empty flag stays as given (its error comes with the bounds)."""
    bounds: dict[str, Any] = {}
    if common.min_event_time:
        bounds["min_event_time"] = run_time_micros(common.min_event_time, "--min_event_time")
    if common.max_clock_skew:
        bounds["max_clock_skew"] = duration_micros(common.max_clock_skew, "--max_clock_skew")
    return bounds


def output_root(path: str) -> str:
    """The output root in one spelling: a local one absolute (``out``, ``out/`` and ``./out``
    are one root, whose files the commit and the retention jobs find by their path under it),
    an object store's without a trailing slash."""
    if _is_local(path):
        return str(Path(normalise_root(path)).resolve())
    return normalise_root(path)


def input_pattern(pattern: str) -> str:
    """``pattern`` as Beam's local filesystem matches it: a bare ``*.jsonl`` (no directory)
    matches nothing there, so a local pattern without one is read in the working directory
    (``./*.jsonl``), as a shell would."""
    if _is_local(pattern) and "/" not in pattern:
        return f"./{pattern}"
    return pattern


def require_input(pattern: str, flag: str) -> list[Any]:
    """The files ``pattern`` matches (Beam ``FileMetadata``); fail at start-up, naming
    ``flag``, when it matches no file or a directory (a directory is read as if it were a file,
    and fails only once the job runs). Object stores have no directories there to check."""
    local = _is_local(pattern)
    try:
        (result,) = FileSystems.match([pattern])
    except BeamIOError as exc:
        raise ValueError(f"{flag}: cannot list {pattern}: {exc}") from exc
    if not result.metadata_list:
        raise ValueError(f"{flag}: no file matches {pattern}")
    for meta in result.metadata_list if local else ():
        if Path(meta.path).is_dir():
            raise ValueError(
                f"{flag}: {meta.path} is a directory; give a file pattern such as "
                f"{meta.path.rstrip('/')}/*.jsonl"
            )
    return list(result.metadata_list)


def require_writable_output(output: str, flag: str = "--output") -> None:
    """Fail at start-up when a local ``output`` (the value of ``flag``) is a file or cannot be
    created or written.

    Nothing is created: a temporary file is opened (and removed) in ``output`` or in its
    nearest existing parent. On an object store (``gs://``, ``s3://``) there is no directory to
    check and no write without a trace (a probe object would outlive its deletion in a bucket
    with soft delete or a retention policy), so the first write tells."""
    if not _is_local(output):
        return
    path = Path(output).absolute()
    if path.exists() and not path.is_dir():
        raise ValueError(f"{flag} {output} is a file, not a directory")
    existing = next(p for p in (path, *path.parents) if p.exists())
    if not existing.is_dir():
        raise ValueError(f"{flag} {output}: {existing} is a file, not a directory")
    try:
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise ValueError(f"{flag} {output} cannot be written ({existing}: {reason})") from None


def _is_local(path: str) -> bool:
    return isinstance(FileSystems.get_filesystem(path), LocalFileSystem)


def max_line_bytes(common: JobOptions) -> int:
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
    """Build the pipeline with ``build(p)``, start the run's attempt (an ingestion run:
    ``pipelines.runs.begin_attempt``), run it to completion and write its report."""
    run = run.with_id()
    attempt: Attempt | None = None
    if run.staging is not None:
        attempt = begin_attempt(run.staging, run.run_time, waits=not launch_only(options))
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
        run={
            **run.header(),
            "input": run.input,
            "state": str(result.state),
            "max_dead_letter_ratio": run.max_dead_letter_ratio,
            "attempt": attempt.report() if attempt else None,
        },
    )
    error = dead_letter_ratio_error(report)
    if error:
        report["error"] = error
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
    before any data is read, and the run gets its id now (it names the job's transaction).

    ``--output`` is required: these jobs delete and rewrite files, so they never fall back to a
    default directory."""
    FileSystems.set_options(options)
    common = options.view_as(JobOptions)
    if not common.output:
        raise ValueError(
            f"--output is required: the output root {pipeline} changes (there is no default)"
        )
    if flag is not None:
        if not pattern:
            raise ValueError(f"{flag} is required (a file pattern of JSON Lines records)")
        pattern = input_pattern(pattern)
        require_input(pattern, flag)
    policy = load_policy(common.policy)
    root = output_root(common.output)
    check_output_root(root)
    # What killed ingestion runs left: committed ones are finished, the rest removed, before
    # this job reads or changes the layout (transforms.commit).
    sweep(root)
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


@dataclass(frozen=True)
class Cli:
    """A job's command line: how it is called, what ``--help`` says, and its options classes
    (``JobOptions``, which every job has, first; ``StorageOptions`` after ``IngestOptions``,
    which every ingestion job has with it; ``CommandFlags`` for a command that runs no
    pipeline, whose command line takes no Beam option: ``beam`` False)."""

    prog: str
    description: str
    options: tuple[type[PipelineOptions] | type[CommandFlags], ...]
    beam: bool = True

    @classmethod
    def of(cls, module: ModuleType, options: Sequence[type[PipelineOptions]] | None = None) -> Cli:
        """The command line of the job ``module`` runs (``python -m <module>``): its docstring
        is the description; ``options`` are the job's classes besides ``JobOptions`` (default:
        the ones ``module`` defines)."""
        if options is None:
            options = [
                value
                for value in vars(module).values()
                if isinstance(value, type)
                and issubclass(value, PipelineOptions)
                and value.__module__ == module.__name__
            ]
        name = module.__spec__.name if module.__spec__ else module.__name__
        classes = [o for o in options if o not in (JobOptions, StorageOptions)]
        if IngestOptions in classes:
            classes.insert(classes.index(IngestOptions) + 1, StorageOptions)
        return cls(
            prog=f"python -m {name.removesuffix('.__main__')}",
            description=module.__doc__ or "",
            options=(JobOptions, *classes),
        )

    @classmethod
    def command(cls, module: ModuleType, flags: Sequence[type[CommandFlags]]) -> Cli:
        """The command line of a command that runs no pipeline (``python -m <module>``):
        ``CommandFlags`` and its own ``flags`` classes, no Beam option."""
        job = cls.of(module, ())
        return cls(job.prog, job.description, (CommandFlags, *flags), beam=False)


def configure_logging(level: str | None) -> tuple[int, int]:
    """Set the levels of ``--log_level``: the project's loggers (the root logger) and Beam's;
    without the flag WARNING and ERROR. Returns both levels (ours, Beam's)."""
    ours = logging.getLevelNamesMapping()[level or "WARNING"]
    beams = ours if level else logging.ERROR
    logging.basicConfig(format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger().setLevel(ours)
    logging.getLogger(BEAM_LOGGER).setLevel(beams)
    return ours, beams


def start_cli(cli: Cli, argv: Sequence[str]) -> argparse.Namespace:
    """Check ``argv`` (``--help`` and a wrong flag end the process here) and set the log levels
    it asks for; returns the parsed flags. (What the worker processes of a local runner log
    reaches the console through Beam's loggers here, so their levels hold for it too.)"""
    args = parse_job_flags(
        argv, cli.options, prog=cli.prog, description=cli.description, beam=cli.beam
    )
    configure_logging(args.log_level)
    return args


@contextlib.contextmanager
def configuration_errors() -> Iterator[None]:
    """A configuration problem (malformed policy, missing input, missing key, a busy output
    root...) ends the process with one line and exit status 1; its traceback is logged at
    DEBUG."""
    try:
        yield
    except CONFIGURATION_ERRORS as exc:
        LOG.debug("configuration problem", exc_info=True)
        raise SystemExit(f"error: {exc}") from None


def command_main(
    produce: Callable[[argparse.Namespace], str],
    argv: Sequence[str] | None = None,
    *,
    flags: Sequence[type[CommandFlags]] = (),
    module: ModuleType | None = None,
) -> None:
    """Command-line entry point of a command that runs no pipeline and writes one document
    (``pipelines.ropa``, ``pipelines.storage_rules``): the strict flags of the jobs without
    Beam's (``CommandFlags`` and the command's ``flags``), a configuration problem as one line
    and exit status 1, and ``produce(flags)`` written to ``--out`` (replaced whole: the file is
    complete or untouched) or to standard output. ``module``: the command (default: the module
    ``produce`` comes from), whose docstring is its ``--help``."""
    args = list(sys.argv[1:] if argv is None else argv)
    parsed = start_cli(Cli.command(module or sys.modules[produce.__module__], flags), args)
    with configuration_errors():
        text = produce(parsed)
        if parsed.out:
            _replace_file(Path(parsed.out), text)
            LOG.info("written to %s", parsed.out)
        else:
            sys.stdout.write(text)


def _replace_file(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file renamed over it (a reader sees the
    old file or the new one, never half of it)."""
    if not path.parent.is_dir():
        raise ValueError(f"--out {path}: {path.parent} is not a directory")
    with tempfile.NamedTemporaryFile(
        "w", encoding="utf-8", dir=path.parent, prefix=f".{path.name}.", delete=False
    ) as fh:
        fh.write(text)
    Path(fh.name).replace(path)


def cli_main(
    run: Callable[[Sequence[str]], dict[str, Any]],
    argv: Sequence[str] | None = None,
    *,
    preset: Sequence[str] = (),
    summary: Callable[[dict[str, Any]], list[str]] = summary_lines,
    options: Sequence[type[PipelineOptions]] | None = None,
    module: ModuleType | None = None,
) -> None:
    """Command-line entry point of a job: check the flags, run it, print the summary of its
    report.

    A report that carries an ``error`` (a dead-letter ratio above the limit, an erasure whose
    verification found a remaining match) ends with its one line and a non-zero exit, after
    the summary. ``preset`` are arguments a specialised pipeline fixes (``--source=sdk_logs``);
    ``options`` and ``module`` describe the job (:meth:`Cli.of`; default: the module ``run``
    comes from).
    """
    args = list(sys.argv[1:] if argv is None else argv)
    start_cli(Cli.of(module or sys.modules[run.__module__], options), args)
    with configuration_errors():
        report = run([*preset, *args])
    if report.get("launched_only"):
        print(f"[{report['pipeline']}] job built and handed to the runner; no run report here")
        return
    print("\n".join(summary(report)))
    if report.get("report_path"):
        print(f"report: {report['report_path']}")
    if report.get("error"):
        raise SystemExit(f"error: {report['error']}")

"""The flags of the jobs, declared once, and the strict command line every job shares.

Beam builds its argument parser from the *direct* subclasses of ``PipelineOptions``, so each flag
is declared in exactly one such class: ``JobOptions`` (every job: ``--output``, ``--policy``,
``--log_level``...), ``IngestOptions`` (every ingestion pipeline: ``--input``, ``--format``...),
``StorageOptions`` (every ingestion pipeline too: ``--layout``, ``--sink``; apart from
``IngestOptions`` because they are not part of a run's identity, ``pipelines.runs``), and a
sibling class per job (``VisitsOptions``, ``PurgeOptions``...). Declaring a flag in two
classes would make argparse fail as soon as both are imported (``python -m pipelines``).

Beam's own parser drops what it does not know with a warning, so a misspelled flag
(``--geoip-db``) would silently run with the default. :func:`parse_job_flags` is the command line
of one job instead: its own flags with their types and help, Beam's options accepted by name, and
anything else an error naming the closest flag.

The commands that run no pipeline (``pipelines.ropa``, ``pipelines.storage_rules``) have the same
command line without Beam's options: their flags are declared by plain classes with the same
``_add_argparse_args`` (``CommandFlags``), *not* ``PipelineOptions`` subclasses, so that Beam's
parser never sees them (their ``--format`` is not the ingestion pipelines' ``--format``).
"""

from __future__ import annotations

import argparse
import difflib
import re
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from importlib import resources

from apache_beam.options.pipeline_options import PipelineOptions, _BeamArgumentParser

from transforms.inputformats import AUTO, DEFAULT_FORMAT, format_named, format_names
from transforms.rawinput import DEFAULT_MAX_LINE_BYTES
from transforms.sinks.registry import DEFAULT_SINK, sinks
from transforms.sinks.storage import DEFAULT_LAYOUT, layouts
from transforms.timestamps import TimeBounds, TimestampError, parse_event_time

__all__ = [
    "DEFAULT_OUTPUT",
    "LOG_LEVELS",
    "OUTPUT_FORMATS",
    "CommandFlags",
    "IngestOptions",
    "JobOptions",
    "StorageOptions",
    "beam_flags",
    "bundled",
    "closest_flag",
    "duration_micros",
    "event_time_bounds",
    "flags_of",
    "max_dead_letter_ratio",
    "output_formats",
    "parse_job_flags",
    "run_time_micros",
]

OUTPUT_FORMATS = ("parquet", "avro", "both")
DEFAULT_OUTPUT = "output"  # of the ingestion pipelines; the retention jobs have no default
DEFAULT_MAX_DEAD_LETTER_RATIO = 0.5
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
DEFAULT_MIN_EVENT_TIME = "2000-01-01T00:00:00Z"
DEFAULT_MAX_CLOCK_SKEW = "1d"
_DURATION = re.compile(r"(?P<n>\d{1,9})(?P<unit>[smhd])")
_UNIT_MICROS = {"s": 1_000_000, "m": 60_000_000, "h": 3_600_000_000, "d": 86_400_000_000}
_BEAM_PACKAGE = "apache_beam."


def output_formats(output_format: str) -> tuple[str, ...]:
    """The sink formats of ``--format``."""
    if output_format not in OUTPUT_FORMATS:
        raise ValueError(f"--format must be one of {OUTPUT_FORMATS}, got {output_format!r}")
    return ("parquet", "avro") if output_format == "both" else (output_format,)


def bundled(relative: str) -> str:
    """Path of a file shipped in ``pipelines/data/`` (sample inputs, country DB, snapshot)."""
    return str(resources.files("pipelines").joinpath("data", relative))


def duration_micros(value: str, flag: str) -> int:
    """A duration flag (``90s``, ``30m``, ``6h``, ``1d``) in microseconds."""
    match = _DURATION.fullmatch(value.strip())
    if match is None:
        raise ValueError(f"{flag}: expected a number with a unit s, m, h or d, got {value!r}")
    return int(match["n"]) * _UNIT_MICROS[match["unit"]]


def event_time_bounds(common: JobOptions, run_time: int) -> TimeBounds:
    """The event times a run accepts: ``--min_event_time`` .. run time + ``--max_clock_skew``."""
    earliest = run_time_micros(common.min_event_time, "--min_event_time")
    latest = run_time + duration_micros(common.max_clock_skew, "--max_clock_skew")
    if earliest > run_time:
        raise ValueError("--min_event_time is after the run time: no event could be accepted")
    return TimeBounds(earliest, latest)


def max_dead_letter_ratio(ingest: IngestOptions) -> float:
    """``--max_dead_letter_ratio``, checked."""
    ratio = ingest.max_dead_letter_ratio
    if not 0 <= ratio <= 1:
        raise ValueError(f"--max_dead_letter_ratio must be between 0 and 1, got {ratio}")
    return ratio


def run_time_micros(value: str | None, flag: str = "--run_time") -> int:
    """A reference time flag (``--run_time``, purge's ``--now``) in epoch micros; now when not
    given."""
    if not value:
        return int(datetime.now(UTC).timestamp() * 1_000_000)
    try:
        return parse_event_time(value)
    except TimestampError as exc:
        raise ValueError(f"{flag}: {exc}: {value!r}") from None


def flags_of(options: Iterable[type[PipelineOptions]]) -> dict[str, argparse.Action]:
    """Every flag the ``options`` classes declare (``--input``...), with its argparse action."""
    parser = _BeamArgumentParser(allow_abbrev=False, add_help=False)
    for cls in options:
        cls._add_argparse_args(parser)
    return {flag: action for action in parser._actions for flag in action.option_strings}


def beam_flags() -> frozenset[str]:
    """Every flag of Beam's own options classes (``--runner``, ``--direct_num_workers``,
    ``--project``, ``--temp_location``, ``--setup_file``...)."""
    return _loaded_flags(beam=True)


def _loaded_flags(*, beam: bool) -> frozenset[str]:
    """The flags of Beam's options classes or of the project's, as far as they are loaded: the
    direct subclasses of ``PipelineOptions``, one per name, which Beam's own parser is built
    from."""
    found = {str(cls): cls for cls in PipelineOptions.__subclasses__()}
    return frozenset(
        flags_of(c for c in found.values() if c.__module__.startswith(_BEAM_PACKAGE) == beam)
    )


def closest_flag(flag: str, own: Iterable[str], known: Iterable[str]) -> str | None:
    """The flag ``flag`` most likely meant: itself spelled with underscores if that is a known
    flag (``--geoip-db`` -> ``--geoip_db``), else the closest of the job's ``own`` flags, else
    the closest of all ``known`` ones; None when nothing is close."""
    spelled = "--" + flag.lstrip("-").replace("-", "_").lower()
    known = sorted(known)
    if spelled in known:
        return spelled
    for pool in (sorted(own), known):
        close = difflib.get_close_matches(spelled, pool, n=1, cutoff=0.75)
        if close:
            return close[0]
    return None


class _JobParser(_BeamArgumentParser):
    """A job's command line: an error is one line on stderr and exit status 2."""

    def error(self, message: str) -> None:
        self.exit(2, f"error: {message}\n")


def parse_job_flags(
    argv: Sequence[str],
    options: Sequence[type[PipelineOptions] | type[CommandFlags]],
    *,
    prog: str,
    description: str,
    beam: bool = True,
) -> argparse.Namespace:
    """Check ``argv`` against the job's ``options`` classes and Beam's options.

    ``--help`` prints the job's flags with their help and exits 0. A flag neither the job nor
    Beam declares, a stray value, or a value of the wrong type or choice exits 2 with one line
    (an unknown flag names the closest known one). Beam's options are checked by name only:
    Beam parses their values when the pipeline is built. ``beam=False``: a command that runs no
    pipeline, where a Beam option would do nothing, so it is unknown like any other."""
    parser = _JobParser(
        prog=prog,
        usage=f"{prog} [flags]",
        description=description,
        epilog="Every standard Apache Beam pipeline option is accepted too (--runner,\n"
        "--direct_num_workers, --direct_running_mode, --project, --region, --temp_location,\n"
        "--setup_file, ...)."
        if beam
        else None,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,
    )
    for cls in reversed(options):  # the job's own flags first, the shared ones last
        cls._add_argparse_args(parser)
    own = {flag for action in parser._actions for flag in action.option_strings}
    accepted = (beam_flags() - own) if beam else frozenset()
    for flag in sorted(accepted):
        parser.add_argument(flag, nargs="?", help=argparse.SUPPRESS)
    args, extra = parser.parse_known_args(list(argv))
    unknown = [arg.split("=", 1)[0] for arg in extra if arg.startswith("-")]
    if unknown:
        parser.error(
            "; ".join(_unknown(flag, own, accepted, prog) for flag in dict.fromkeys(unknown))
        )
    if extra:
        parser.error(f"unexpected argument {extra[0]!r} (flags take the form --name=value)")
    return args


def _unknown(flag: str, own: set[str], beam: frozenset[str], prog: str) -> str:
    if flag in _loaded_flags(beam=False):
        return f"unknown flag {flag}: a flag of other jobs, {prog} does not take it"
    hint = closest_flag(flag, own, own | beam)
    return f"unknown flag {flag} " + (f"(did you mean {hint}?)" if hint else "(see --help)")


class JobOptions(PipelineOptions):
    """Flags of every job, ingestion and retention alike."""

    @classmethod
    def _add_argparse_args(cls, parser) -> None:
        parser.add_argument(
            "--output",
            default=None,
            help="Output root directory: data_category=<c>/expiry_date=<YYYY-MM-DD>/ partitions, "
            "_dead_letter/ and _reports/ are under it. The ingestion pipelines write into it "
            f"(default: ./{DEFAULT_OUTPUT}); purge, lifecycle and erase change it and have no "
            "default.",
        )
        _add_policy_flag(parser)
        parser.add_argument(
            "--run_time",
            default=None,
            help="Reference time of the run, ISO-8601. Default: for an ingestion run, the time "
            "its first attempt recorded (a rerun keeps it), else now; for purge, lifecycle and "
            "erase, now. Dead letters expire a fixed period after it; an ingestion rerun with "
            "another --run_time replaces the run with one at that time.",
        )
        parser.add_argument(
            "--max_line_bytes",
            type=int,
            default=DEFAULT_MAX_LINE_BYTES,
            help="Longest input line read, in bytes (default 1 MiB). A longer line is never held "
            "whole: it becomes a line_too_large dead letter with its length and SHA-256.",
        )
        parser.add_argument(
            "--min_event_time",
            default=DEFAULT_MIN_EVENT_TIME,
            help="Earliest event time accepted, ISO-8601 (default 2000-01-01T00:00:00Z). An "
            "earlier one (or epoch seconds sent as milliseconds) is an event_time_out_of_range "
            "dead letter.",
        )
        parser.add_argument(
            "--max_clock_skew",
            default=DEFAULT_MAX_CLOCK_SKEW,
            help="How far past the run time an event time may lie (producers' clocks drift), as "
            "a number with a unit: 90s, 30m, 6h, 1d (default 1d). A later one is an "
            "event_time_out_of_range dead letter.",
        )
        _add_log_level_flag(parser)


def _add_policy_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--policy",
        default=None,
        help="Policy file (YAML, see schemas/policy.yaml, the default). Validated at startup.",
    )


def _add_log_level_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--log_level",
        type=str.upper,
        choices=LOG_LEVELS,
        default=None,
        help="Log level of every logger, Apache Beam's included, with the traceback of a "
        "configuration error at DEBUG. Default: WARNING for this project's loggers and ERROR "
        "for Beam's, whose warnings (type hints, filesystems it cannot load, its workers' "
        "start-up) are nothing a user of these jobs can act on.",
    )


class CommandFlags:
    """Flags of every command that runs no pipeline and writes one document: ``--policy`` and
    ``--log_level`` as every job has them, and ``--out``. A plain class, not a
    ``PipelineOptions``: see the module docstring."""

    @classmethod
    def _add_argparse_args(cls, parser: argparse.ArgumentParser) -> None:
        _add_policy_flag(parser)
        parser.add_argument(
            "--out",
            default=None,
            help="File to write (local path; its directory must exist). Default: standard output.",
        )
        _add_log_level_flag(parser)


class IngestOptions(PipelineOptions):
    """Flags of every ingestion pipeline."""

    @classmethod
    def _add_argparse_args(cls, parser) -> None:
        # The help lists what is registered when the command line is parsed; the value is
        # checked by pipelines.launch.run_context, not by argparse choices, so that a worker
        # that parses the options before importing a format registered by your own code
        # accepts it (as --layout and --sink).
        formats = [format_named(name) for name in format_names()]
        parser.add_argument(
            "--input",
            help="Input file pattern, local or on any Beam filesystem (gs://bucket/v/*.jsonl): "
            f"files of one input format ({', '.join(format_names())}), one record each. "
            "Required.",
        )
        parser.add_argument(
            "--input_format",
            default=AUTO,
            help=f"{', '.join(format_names())}; auto (default) reads a pattern by its suffix ("
            + ", ".join(f"*{s} as {f.name}" for f in formats for s in f.suffixes)
            + f"), anything else as {DEFAULT_FORMAT}.",
        )
        parser.add_argument(
            "--format",
            dest="output_format",
            choices=OUTPUT_FORMATS,
            default="parquet",
            help="Sink file format: parquet (default), avro, or both side by side.",
        )
        parser.add_argument(
            "--max_dead_letter_ratio",
            type=float,
            default=DEFAULT_MAX_DEAD_LETTER_RATIO,
            help="Largest share of the records read that may become dead letters (0 to 1, "
            f"default {DEFAULT_MAX_DEAD_LETTER_RATIO}). A run above it still writes everything, "
            "then exits non-zero: most of its input was not what the pipeline expects.",
        )
        parser.add_argument(
            "--run_id",
            default=None,
            help="Name of the run (letters, digits, '_' and '.'). Default: a hash of the input "
            "files (paths, sizes, modification times), the policy version and this job's flags "
            "other than --run_time, so the same command run again is the same run. A run's "
            "files are named after it and a rerun replaces them: it never adds to them.",
        )


class StorageOptions(PipelineOptions):
    """Flags of every ingestion pipeline that choose how its data is stored: ``--layout`` and
    ``--sink``, both from a registry (``transforms.sinks.storage``,
    ``transforms.sinks.registry``), so a layout or a sink registered by your own code is
    listed and selectable with no change here.

    Not part of the run's identity (``pipelines.runs.run_identity`` hashes ``IngestOptions``):
    an output root has one layout (a run in another is refused), and the same run written by
    another sink replaces its files like any rerun. Their values are checked by
    ``pipelines.launch.run_context`` (not by argparse ``choices``), before any data is read."""

    @classmethod
    def _add_argparse_args(cls, parser) -> None:
        # The help lists what is registered when the command line is parsed.
        layout = (
            f"Storage layout of the partitions under --output: {', '.join(layouts())} (default "
            f"{DEFAULT_LAYOUT}: data_category=<c>/expiry_date=<YYYY-MM-DD>/). The first run "
            "records a layout other than hive in <output>/_layout.json; a run in another "
            "layout than its root's is refused, and the retention jobs read the root in its "
            "recorded layout."
        )
        sink = (
            "Sink of the data: "
            + "; ".join(f"{s.name}: {s.description}" for s in sinks())
            + f" (default {DEFAULT_SINK}). Dead letters are always JSON Lines."
        )
        parser.add_argument("--layout", default=DEFAULT_LAYOUT, help=layout)
        parser.add_argument("--sink", default=DEFAULT_SINK, help=sink)

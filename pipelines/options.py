"""Options shared by every ingestion pipeline, and the bundled defaults.

Beam builds its argument parser from the *direct* subclasses of ``PipelineOptions``, so the flags
every source has (``--input``, ``--output``, ``--format``...) are declared once here and each
pipeline adds its own in a sibling class (``VisitsOptions``); declaring ``--input`` in two classes
would make argparse fail as soon as both pipelines are imported (``python -m pipelines``).
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from importlib import resources

from apache_beam.options.pipeline_options import PipelineOptions

from transforms.rawinput import DEFAULT_MAX_LINE_BYTES
from transforms.read import INPUT_FORMATS
from transforms.timestamps import TimeBounds, TimestampError, parse_event_time

__all__ = [
    "OUTPUT_FORMATS",
    "IngestOptions",
    "bundled",
    "duration_micros",
    "event_time_bounds",
    "output_formats",
    "run_time_micros",
]

OUTPUT_FORMATS = ("parquet", "avro", "both")
DEFAULT_MIN_EVENT_TIME = "2000-01-01T00:00:00Z"
DEFAULT_MAX_CLOCK_SKEW = "1d"
_DURATION = re.compile(r"(?P<n>\d{1,9})(?P<unit>[smhd])")
_UNIT_MICROS = {"s": 1_000_000, "m": 60_000_000, "h": 3_600_000_000, "d": 86_400_000_000}


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


def event_time_bounds(common: IngestOptions, run_time: int) -> TimeBounds:
    """The event times a run accepts: ``--min_event_time`` .. run time + ``--max_clock_skew``."""
    earliest = run_time_micros(common.min_event_time, "--min_event_time")
    latest = run_time + duration_micros(common.max_clock_skew, "--max_clock_skew")
    if earliest > run_time:
        raise ValueError("--min_event_time is after the run time: no event could be accepted")
    return TimeBounds(earliest, latest)


def run_time_micros(value: str | None, flag: str = "--run_time") -> int:
    """A reference time flag (``--run_time``, purge's ``--now``) in epoch micros; now when not
    given."""
    if not value:
        return int(datetime.now(UTC).timestamp() * 1_000_000)
    try:
        return parse_event_time(value)
    except TimestampError as exc:
        raise ValueError(f"{flag}: {exc}: {value!r}") from None


class IngestOptions(PipelineOptions):
    """Flags of every ingestion pipeline (all standard Beam options are accepted too)."""

    @classmethod
    def _add_argparse_args(cls, parser) -> None:
        parser.add_argument(
            "--input",
            help="Input file pattern, local or on any Beam filesystem (gs://bucket/v/*.jsonl): "
            "JSON Lines or Avro files, one record each.",
        )
        parser.add_argument(
            "--output",
            default="output",
            help="Output root directory: data_category=<c>/expiry_date=<YYYY-MM-DD>/ partitions, "
            "_dead_letter/ and _reports/ are written under it. Default: ./output.",
        )
        parser.add_argument(
            "--format",
            dest="output_format",
            choices=OUTPUT_FORMATS,
            default="parquet",
            help="Sink file format: parquet (default), avro, or both side by side.",
        )
        parser.add_argument(
            "--input_format",
            choices=INPUT_FORMATS,
            default="auto",
            help="jsonl or avro; auto (default) reads *.avro patterns as Avro, anything else as "
            "JSON Lines.",
        )
        parser.add_argument(
            "--policy",
            default=None,
            help="Policy file (YAML, see schemas/policy.yaml, the default). Validated at startup.",
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
        parser.add_argument(
            "--run_time",
            default=None,
            help="Reference time of the run, ISO-8601 (default: now). Dead letters expire a fixed "
            "period after it; pin it to make reruns byte-for-byte comparable.",
        )

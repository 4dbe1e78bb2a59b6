"""What the sinks' files are named and dated by: expiry dates, file names, run tokens.

Shared by every writer of the package and by the retention code that deletes and rewrites
what they wrote (``transforms.retention``). Where a partition's directory is, is the storage
layout's (``transforms.sinks.storage``), spelled out once there.
"""

from __future__ import annotations

import datetime as dt
import uuid

from apache_beam.io.filesystems import FileSystems

from transforms.timestamps import format_utc, utc_date

# Hive's name for a null partition value. Only a null category or dead-letter source gets it;
# open-ended rows get OPEN_ENDED_EXPIRY_DATE. Outputs written before that change have their
# open-ended rows under expiry_date=__HIVE_DEFAULT_PARTITION__: the retention jobs still read
# that partition as open-ended (transforms.retention.layout), never as due.
HIVE_NULL_PARTITION = "__HIVE_DEFAULT_PARTITION__"
# The partition of open-ended rows (null expires_at: direct marketing until opt-out, account and
# service lifetime): "end of time", no fixed expiry; kept until an event or a request ends it.
# A date, not Hive's null partition, because a reader that infers the partition column's type
# from its values fails or types it apart when a category has only the null partition (pyarrow:
# "No non-null segments were available for field 'expiry_date'"; Spark: void; Polars: String
# where the others are Date). The rows' own expires_at stays null; no real expiry can fall on
# this date (MAX_EXPIRY_MICROS), and the purge never deletes the partition, whatever --now says.
OPEN_ENDED_EXPIRY_DATE = "9999-12-31"
# The last instant a real expiry may have: the end of the day before OPEN_ENDED_EXPIRY_DATE.
# Later is an ``expiry_out_of_range`` dead letter (transforms.tag, transforms.retention.lifecycle),
# never a row merged into the open-ended partition.
MAX_EXPIRY_MICROS = (
    dt.datetime.fromisoformat(OPEN_ENDED_EXPIRY_DATE).replace(tzinfo=dt.UTC)
    - dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
) // dt.timedelta(microseconds=1) - 1
DEAD_LETTER_DIR = "_dead_letter"
FORMATS = ("parquet", "avro")
EXTENSIONS = {"parquet": ".parquet", "avro": ".avro", "jsonl": ".jsonl"}

# A destination is (kind, relative_dir, shard, num_shards); kind is the data category, or
# the dead letter's source. Tuples of str/int have a deterministic coder, as a GroupByKey
# on them needs.
Destination = tuple[str, str, int, int]


def check_micros(value: object, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{what} must be int epoch microseconds or None, got {value!r}")
    return value


def expiry_date(expires_at_micros: int | None) -> str:
    """UTC calendar date ``YYYY-MM-DD`` of ``expires_at``, or :data:`OPEN_ENDED_EXPIRY_DATE`
    when it is None (open-ended retention).

    A real expiry past :data:`MAX_EXPIRY_MICROS` is a ``ValueError``: its rows would be merged
    with the open-ended ones and never purged (the stages before the sinks make such a record
    an ``expiry_out_of_range`` dead letter, so this is a last check, not a route)."""
    if expires_at_micros is None:
        return OPEN_ENDED_EXPIRY_DATE
    day = utc_date(check_micros(expires_at_micros, "expires_at"))
    if expires_at_micros > MAX_EXPIRY_MICROS:
        raise ValueError(
            f"expires_at {expires_at_micros} is on or after {OPEN_ENDED_EXPIRY_DATE}, the date of "
            "the open-ended partition"
        )
    return day


def micros_to_iso(micros: int) -> str:
    """ISO-8601 UTC string with a ``Z`` suffix (microseconds only when non-zero)."""
    return format_utc(check_micros(micros, "timestamp"))


def part_name(shard: int, shards: int, token: str) -> str:
    """File name stem of a destination: the run token keeps a later run from overwriting it."""
    return f"part-{shard:05d}-of-{shards:05d}-{token}"


def new_token() -> str:
    return uuid.uuid4().hex[:8]


def check_shards(shards: int | None) -> int:
    if shards is None:
        return 1
    if isinstance(shards, bool) or not isinstance(shards, int) or shards < 1:
        raise ValueError(f"shards_per_partition must be a positive int or None, got {shards!r}")
    return shards


def ensure_dir(path: str) -> None:
    """Create a partition directory before a file is renamed into it (renames do not)."""
    if not FileSystems.get_filesystem(path).has_dirs():
        return  # object stores: a key with slashes needs no directory
    try:
        FileSystems.mkdirs(path)
    except OSError:
        if not FileSystems.exists(path):
            raise

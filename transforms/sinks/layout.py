"""Where the sinks put things: partition and dead-letter directories, file names, run tokens.

Shared by every writer of the package and by the retention code that deletes and rewrites
what they wrote (``transforms.retention``), so the layout is spelled out once, here.
"""

from __future__ import annotations

import urllib.parse
import uuid

from apache_beam.io.filesystems import FileSystems

from transforms.timestamps import format_utc, utc_date

HIVE_NULL_PARTITION = "__HIVE_DEFAULT_PARTITION__"
DEAD_LETTER_DIR = "_dead_letter"
FORMATS = ("parquet", "avro")
EXTENSIONS = {"parquet": ".parquet", "avro": ".avro", "jsonl": ".jsonl"}

# A destination is (kind, relative_dir, shard, num_shards); kind is the data category, or
# the dead letter's source. Tuples of str/int have a deterministic coder, as a GroupByKey
# on them needs.
Destination = tuple[str, str, int, int]


def _check_micros(value: object, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{what} must be int epoch microseconds or None, got {value!r}")
    return value


def expiry_date(expires_at_micros: int | None) -> str:
    """UTC calendar date ``YYYY-MM-DD`` of ``expires_at``, or Hive's null partition name."""
    if expires_at_micros is None:
        return HIVE_NULL_PARTITION
    return utc_date(_check_micros(expires_at_micros, "expires_at"))


def micros_to_iso(micros: int) -> str:
    """ISO-8601 UTC string with a ``Z`` suffix (microseconds only when non-zero)."""
    return format_utc(_check_micros(micros, "timestamp"))


def _hive_value(value: object) -> str:
    """Partition value: None/empty -> Hive's null partition, else URI-escaped.

    Escaping keeps a value from adding a directory level ('/') or a bogus key ('=');
    pyarrow's hive partitioning (segment_encoding="uri") decodes it back.
    """
    if value is None or value == "":
        return HIVE_NULL_PARTITION
    return urllib.parse.quote(str(value), safe="")


def partition_path(category: str, expires_at: int | None) -> str:
    """Relative directory of a data row: ``data_category=<c>/expiry_date=<d>``."""
    return f"data_category={_hive_value(category)}/expiry_date={expiry_date(expires_at)}"


def dead_letter_path(source: str | None, expires_at: int | None) -> str:
    """Relative directory of a dead letter: ``_dead_letter/source=<s>/expiry_date=<d>``."""
    return f"{DEAD_LETTER_DIR}/source={_hive_value(source)}/expiry_date={expiry_date(expires_at)}"


def _part_name(shard: int, shards: int, token: str) -> str:
    """File name stem of a destination: the run token keeps a later run from overwriting it."""
    return f"part-{shard:05d}-of-{shards:05d}-{token}"


def _new_token() -> str:
    return uuid.uuid4().hex[:8]


def _check_shards(shards: int | None) -> int:
    if shards is None:
        return 1
    if isinstance(shards, bool) or not isinstance(shards, int) or shards < 1:
        raise ValueError(f"shards_per_partition must be a positive int or None, got {shards!r}")
    return shards


def _ensure_dir(path: str) -> None:
    """Create a partition directory before a file is renamed into it (renames do not)."""
    if not FileSystems.get_filesystem(path).has_dirs():
        return  # object stores: a key with slashes needs no directory
    try:
        FileSystems.mkdirs(path)
    except OSError:
        if not FileSystems.exists(path):
            raise

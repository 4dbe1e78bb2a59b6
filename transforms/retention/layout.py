"""The output layout as the retention jobs see it (README "Output layout", ``transforms.sinks``).

Only these files belong to the layout, and only they are ever deleted or rewritten::

    data_category=<category>/expiry_date=<YYYY-MM-DD>/<file>
    _dead_letter/source=<source>/expiry_date=<YYYY-MM-DD>/<file>

Open-ended rows are in ``expiry_date=9999-12-31`` (``transforms.sinks.OPEN_ENDED_EXPIRY_DATE``),
and in outputs written before that date was chosen, in Hive's null partition
``expiry_date=__HIVE_DEFAULT_PARTITION__``. Both are *open-ended*: never due, whatever the date,
only a lifecycle event or an erasure takes rows out of them.

Everything else under the root (``_reports/``, ``_retention/``, the sinks' ``.temp-*`` folders,
files a user put there) is outside the layout and never touched. A partition whose
``expiry_date`` is neither a calendar date nor an open-ended value is *unrecognised*: it is
reported, never deleted (fail closed: we do not guess what a malformed name means).

The root is always taken literally, glob characters and all (``out[x]`` is not ``outx``:
``transforms.paths``): a local root is walked with ``os``, an object-store root is listed with
one ``FileSystems.match`` of its escaped ``<root>/**`` (one prefix listing), so the same code
runs on local paths, ``gs://`` and ``s3://``.
"""

from __future__ import annotations

import datetime as dt
import re
import urllib.parse
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from apache_beam.io.filesystems import FileSystems

from transforms.paths import is_local, list_files, literal_pattern, match
from transforms.sinks import (
    DEAD_LETTER_DIR,
    EXTENSIONS,
    HIVE_NULL_PARTITION,
    OPEN_ENDED_EXPIRY_DATE,
)

__all__ = [
    "DATA",
    "DEAD_LETTER",
    "OPEN_ENDED_VALUES",
    "LayoutFile",
    "NotAnOutputRootError",
    "Partition",
    "check_output_root",
    "classify",
    "due",
    "full_path",
    "has_partition_files",
    "is_local",
    "list_layout",
    "normalise_root",
    "remove_empty_dirs",
    "require_matches",
]

DATA = "data"
DEAD_LETTER = "dead_letter"
REPORTS_DIR = "_reports"
FORMATS_BY_EXTENSION = {extension: fmt for fmt, extension in EXTENSIONS.items()}

_LAYOUT = re.compile(
    r"^(?P<dir>(?:data_category=(?P<category>[^/]+)|"
    + re.escape(DEAD_LETTER_DIR)
    + r"/source=(?P<source>[^/]+))/expiry_date=(?P<expiry>[^/]+))/(?P<rest>.+)$"
)
_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
# The expiry_date values of open-ended partitions: the layout's, and the Hive null partition
# that outputs written before it hold. Never due.
OPEN_ENDED_VALUES = frozenset({OPEN_ENDED_EXPIRY_DATE, HIVE_NULL_PARTITION})


def due(expiry_date: dt.date, today: dt.date) -> bool:
    """The schedule's one rule: data goes on its expiry date (UTC), never later.

    "Within N days" means at most N days, so a row is deleted on the UTC date of its
    ``expires_at`` (the day its partition is named after), not after it: the purge deletes the
    partitions due on the date of its ``--now``, and the lifecycle job deletes at once a row
    whose new expiry is due on the date of its run time. A purge run daily at 00:00 UTC thus
    never keeps a row past its ``expires_at``.
    """
    return expiry_date <= today


class NotAnOutputRootError(ValueError):
    """The directory does not look like an output root of these pipelines."""


@dataclass(frozen=True)
class Partition:
    """One ``expiry_date=`` partition: of a data category or of a dead-letter source."""

    kind: str  # DATA or DEAD_LETTER
    name: str  # the category or the source, unescaped
    expiry: str  # the directory value: a date, an OPEN_ENDED_VALUES one, or unrecognised
    rel_dir: str  # relative to the root, as written (escaped)

    @property
    def open_ended(self) -> bool:
        """Rows with no fixed expiry: ``9999-12-31``, or the legacy Hive null partition."""
        return self.expiry in OPEN_ENDED_VALUES

    @property
    def expiry_date(self) -> dt.date | None:
        """The partition's date; None for open-ended partitions (``9999-12-31`` names "no
        date", it is not one) and for unrecognised values."""
        if self.open_ended or not _DATE.match(self.expiry):
            return None
        try:
            return dt.date.fromisoformat(self.expiry)
        except ValueError:
            return None

    @property
    def recognised(self) -> bool:
        return self.open_ended or self.expiry_date is not None

    def expired(self, today: dt.date) -> bool:
        """True when the partition is :func:`due` on ``today`` (a UTC date). Never true for an
        open-ended partition (explicitly, not by comparing its date) or an unrecognised value."""
        if self.open_ended:
            return False
        date = self.expiry_date
        return date is not None and due(date, today)


@dataclass(frozen=True)
class LayoutFile:
    """A file of the layout: full path, path relative to the root, its partition and size."""

    path: str
    rel: str
    partition: Partition
    size: int = 0

    def element(self) -> dict[str, str]:
        """The file as a Beam element: plain strings, cheap to encode, easy to read."""
        key = "category" if self.partition.kind == DATA else "source"
        return {
            "path": self.path,
            "rel": self.rel,
            "format": self.format or "",
            "kind": self.partition.kind,
            key: self.partition.name,
        }

    @property
    def format(self) -> str | None:
        """``parquet``, ``avro`` or ``jsonl`` (dead letters); None for any other file."""
        if self.rel.rsplit("/", 1)[-1].startswith((".", "_")):
            return None  # hidden and marker files (_SUCCESS, .crc) are not data
        ext = PurePosixPath(self.rel).suffix
        fmt = FORMATS_BY_EXTENSION.get(ext)
        if fmt == "jsonl" and self.partition.kind != DEAD_LETTER:
            return None
        if fmt in ("parquet", "avro") and self.partition.kind != DATA:
            return None
        return fmt


def normalise_root(root: str) -> str:
    """The root without a trailing slash (``gs://bucket/out/`` -> ``gs://bucket/out``)."""
    if not root or not root.strip():
        raise NotAnOutputRootError("the output root is empty")
    stripped = root.rstrip("/")
    return stripped if stripped and not stripped.endswith(":") else root


def full_path(root: str, rel: str) -> str:
    return FileSystems.join(root, rel)


def classify(rel: str) -> Partition | None:
    """The partition of a path relative to the root, or None when it is outside the layout."""
    found = _LAYOUT.match(rel)
    if not found:
        return None
    if found["category"] is not None:
        kind, raw = DATA, found["category"]
    else:
        kind, raw = DEAD_LETTER, found["source"]
    return Partition(kind, urllib.parse.unquote(raw), found["expiry"], found["dir"])


def _relative(root: str, path: str) -> str | None:
    prefix = root.rstrip("/") + "/"
    if not path.startswith(prefix):
        return None
    return path[len(prefix) :]


def list_layout(root: str) -> list[LayoutFile]:
    """Every file of the layout under ``root``, the root taken literally (sorted by relative
    path)."""
    files = []
    for meta in list_files(root):
        rel = _relative(root, meta.path)
        if rel is None:
            continue
        partition = classify(rel)
        if partition is not None:
            files.append(LayoutFile(meta.path, rel, partition, int(meta.size_in_bytes or 0)))
    return sorted(files, key=lambda f: f.rel)


_PARTITION_FILES = [
    ("data_category=*", "expiry_date=*", "*"),
    (DEAD_LETTER_DIR, "source=*", "expiry_date=*", "*"),
]


def _any_file(root: str, globs: Sequence[Sequence[str]]) -> bool:
    """Whether any file matches one of ``globs`` (path segments) under ``root``, the root taken
    literally: pathlib's glob below a local root, an escaped pattern elsewhere."""
    if is_local(root):
        found = (p for parts in globs for p in Path(root).glob("/".join(parts)) if p.is_file())
        return next(found, None) is not None
    patterns = [literal_pattern(root, *parts) for parts in globs]
    return any(result.metadata_list for result in match(patterns, limits=[1] * len(patterns)))


def has_partition_files(root: str) -> bool:
    """Whether any partition (data or dead letters) under ``root`` holds a file: a probe by
    other means than :func:`list_layout`, so that an erasure whose listing found nothing can
    tell an empty layout from a listing that missed it."""
    return _any_file(root, _PARTITION_FILES)


def _top_level_names(root: str) -> set[str]:
    """Names directly under a local root (cheap: no recursive walk of a wrong directory)."""
    if not Path(root).is_dir():
        raise NotAnOutputRootError(f"{root} is not a directory")
    return {child.name for child in Path(root).iterdir()}


def check_output_root(root: str) -> None:
    """Refuse a directory that is not an output root of these pipelines.

    An output root holds at least one ``data_category=*/expiry_date=*/`` or
    ``_dead_letter/source=*/expiry_date=*/`` partition, or a JSON report under ``_reports/``.
    On a local disk the top level is checked first, so that pointing a job at ``/`` or a home
    directory fails at once instead of walking it.
    """
    if is_local(root):
        names = _top_level_names(root)
        if not any(
            n.startswith("data_category=") or n in (DEAD_LETTER_DIR, REPORTS_DIR) for n in names
        ):
            raise NotAnOutputRootError(
                f"{root} does not look like an output root (no data_category=*/, "
                f"{DEAD_LETTER_DIR}/ or {REPORTS_DIR}/ in it): refusing to touch it"
            )
    if _any_file(root, [*_PARTITION_FILES, (REPORTS_DIR, "*.json")]):
        return
    raise NotAnOutputRootError(
        f"{root} does not look like an output root (no partition files and no run reports): "
        "refusing to touch it"
    )


def remove_empty_dirs(root: str, rel_dirs: Iterable[str]) -> None:
    """On a local disk, remove partition directories (and their parents up to the root) that
    deletions left empty. Object stores have no directories: nothing to do there."""
    if not is_local(root):
        return
    top = Path(root).resolve()
    for rel_dir in sorted(set(rel_dirs), key=lambda d: -d.count("/")):
        path = (Path(root) / rel_dir).resolve()
        while path != top and top in path.parents:
            try:
                path.rmdir()  # only ever removes an empty directory
            except OSError:
                break
            path = path.parent


def require_matches(pattern: str, flag: str) -> None:
    """Fail at start-up, with the flag's name, when an input pattern matches no file."""
    (result,) = FileSystems.match([pattern], limits=[1])
    if not result.metadata_list:
        raise ValueError(f"{flag}: no file matches {pattern}")

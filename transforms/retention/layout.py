"""The output layout as the retention jobs see it (README "Output layout", ``transforms.sinks``).

A root is in one storage layout (``transforms.sinks.storage``), the one its marker names, or
Hive's when it has none (``transforms.sinks.marker``): every function here that takes a root
reads that root in its own layout, so purge, lifecycle, erase and access follow a second
layout with no change of their own. Only the files of the layout are ever deleted or
rewritten; in the Hive layout::

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

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from apache_beam.io.filesystems import FileSystems

from transforms.paths import is_local, list_files
from transforms.sinks import DEAD_LETTER_DIR, EXTENSIONS
from transforms.sinks.marker import (
    LAYOUT_MARKER,
    REPORTS_DIR,
    any_file,
    holds_unmarked_output,
    layout_of_root,
    recorded_layout,
)
from transforms.sinks.storage import (
    DATA,
    DEAD_LETTER,
    HIVE,
    OPEN_ENDED_VALUES,
    Partition,
    StorageLayout,
    due,
)

__all__ = [
    "DATA",
    "DEAD_LETTER",
    "OPEN_ENDED_VALUES",
    "LayoutFile",
    "NotAnOutputRootError",
    "Partition",
    "StorageLayout",
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

FORMATS_BY_EXTENSION = {extension: fmt for fmt, extension in EXTENSIONS.items()}


class NotAnOutputRootError(ValueError):
    """The directory does not look like an output root of these pipelines."""


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


def classify(rel: str, layout: StorageLayout = HIVE) -> Partition | None:
    """The partition of a path relative to the root, or None when it is outside ``layout``
    (default: Hive's; :func:`list_layout` classifies in the root's own)."""
    return layout.classify(rel)


def _relative(root: str, path: str) -> str | None:
    prefix = root.rstrip("/") + "/"
    if not path.startswith(prefix):
        return None
    return path[len(prefix) :]


def list_layout(root: str, layout: StorageLayout | None = None) -> list[LayoutFile]:
    """Every file of the layout under ``root``, the root taken literally (sorted by relative
    path). ``layout``: the root's own (its marker's) unless given (a staging folder is read
    in the layout of the root it stages for)."""
    layout = layout or layout_of_root(root)
    files = []
    for meta in list_files(root):
        rel = _relative(root, meta.path)
        if rel is None:
            continue
        partition = layout.classify(rel)
        if partition is not None:
            files.append(LayoutFile(meta.path, rel, partition, int(meta.size_in_bytes or 0)))
    return sorted(files, key=lambda f: f.rel)


def has_partition_files(root: str) -> bool:
    """Whether any partition (data or dead letters) under ``root`` holds a file: a probe by
    other means than :func:`list_layout` (the globs of the root's layout), so that an erasure
    whose listing found nothing can tell an empty layout from a listing that missed it."""
    return any_file(root, layout_of_root(root).partition_globs())


def _top_level_names(root: str) -> set[str]:
    """Names directly under a local root (cheap: no recursive walk of a wrong directory)."""
    if not Path(root).is_dir():
        raise NotAnOutputRootError(f"{root} is not a directory")
    return {child.name for child in Path(root).iterdir()}


def check_output_root(root: str) -> None:
    """Refuse a directory that is not an output root of these pipelines.

    An output root holds a layout marker (``_layout.json``, which must name a registered
    layout: a ``LayoutError`` otherwise), or at least one partition of its layout with a file
    in it (``data_category=*/expiry_date=*/`` or ``_dead_letter/source=*/expiry_date=*/`` in
    the Hive layout), or a JSON report under ``_reports/``. On a local disk the top level is
    checked first, so that pointing a job at ``/`` or a home directory fails at once instead
    of walking it.
    """
    local = is_local(root)
    names = _top_level_names(root) if local else set()
    if recorded_layout(root) is not None:
        layout_of_root(root)  # a marker naming no registered layout is refused
        return
    if local and not any(HIVE.owns_top_level(n) or n == REPORTS_DIR for n in names):
        raise NotAnOutputRootError(
            f"{root} does not look like an output root (no data_category=*/, "
            f"{DEAD_LETTER_DIR}/, {REPORTS_DIR}/ or {LAYOUT_MARKER} in it): refusing to "
            "touch it"
        )
    if holds_unmarked_output(root):
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

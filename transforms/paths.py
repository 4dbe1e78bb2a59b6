"""Paths taken literally on every Beam filesystem: listing, matching and deleting under a root.

Beam's ``FileSystems`` reads a path in several calls as a *pattern*: ``match`` always, and
``delete`` on local disks and GCS, which match their argument before deleting what it matched.
``[``, ``*`` and ``?`` are glob characters there (``FileSystem.translate_pattern``), and the
docstring of that method says "There is no way to quote meta-characters". So an output root
named ``out[x]`` was read as ``outx``: a purge listed nothing and deleted nothing, an erasure
scanned no file, and a delete of ``out[x]/f`` could remove ``outx/f``, someone else's file.

What works, read from Beam 2.77's source:

- ``translate_pattern`` turns a bracket expression into a regex character class, so ``[[]``,
  ``[*]`` and ``[?]`` each match exactly that one character: :func:`glob_escape`. Every
  filesystem that inherits ``FileSystem.match`` (local, GCS, S3, Azure, HDFS) filters its
  listing with that regex, so an escaped root matches itself only. The listing is taken under
  the text before the first glob character, so on an object store it is wider than the root
  (``gs://b/out`` for ``gs://b/out[x]/**``): correct, only slower on a crowded bucket.
- ``exists``, ``open``, ``create`` and ``rename`` take their paths literally everywhere.
- ``delete`` differs per filesystem: local and GCS match their argument (give them the escaped
  path), S3 and Azure delete their argument as it is (give them the path itself; escaped, they
  would delete nothing, and say nothing). :func:`delete_paths` knows which is which.

Local roots are never globbed at all: they are listed and deleted with ``os`` (a glob of a
root with a ``[`` lists the whole parent directory to filter it).
"""

from __future__ import annotations

import os
import shutil
import warnings
from collections.abc import Sequence
from pathlib import Path

from apache_beam.io.filesystem import BeamIOError, FileMetadata, MatchResult
from apache_beam.io.filesystems import FileSystems
from apache_beam.io.localfilesystem import LocalFileSystem

__all__ = [
    "GLOB_CHARACTERS",
    "delete_paths",
    "glob_escape",
    "has_glob",
    "is_local",
    "list_files",
    "literal_pattern",
    "match",
]

GLOB_CHARACTERS = frozenset("[*?")
# Schemes whose FileSystem.delete matches its argument as a pattern (Beam 2.77:
# GCSFileSystem.delete calls self.match on every path that does not end in '/').
_DELETE_MATCHES_PATTERNS = frozenset({"gs"})


def has_glob(path: str) -> bool:
    """True when Beam would read ``path`` as a pattern."""
    return any(c in GLOB_CHARACTERS for c in path)


def glob_escape(path: str) -> str:
    """``path`` as a Beam pattern that matches exactly ``path`` (``out[x]`` -> ``out[[]x]``)."""
    return "".join(f"[{c}]" if c in GLOB_CHARACTERS else c for c in path)


def literal_pattern(root: str, *glob_parts: str) -> str:
    """A pattern of ``root`` taken literally, joined with ``glob_parts`` read as globs:
    ``literal_pattern("out[x]", "data_category=*", "*")`` matches ``out[x]/data_category=a/f``
    and never ``outx/...``."""
    return FileSystems.join(glob_escape(root), *glob_parts) if glob_parts else glob_escape(root)


def match(patterns: Sequence[str], limits: Sequence[int] | None = None) -> list[MatchResult]:
    """``FileSystems.match``, without the FutureWarning ("Possible nested set") that Python's
    ``re`` gives for the ``[[]`` of an escaped ``[``: the class is what we mean."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        return FileSystems.match(list(patterns), limits=None if limits is None else list(limits))


def is_local(path: str) -> bool:
    return isinstance(FileSystems.get_filesystem(path), LocalFileSystem)


def _walk(root: str) -> list[FileMetadata]:
    """Files under a local ``root`` as Beam's local listing names them (``dir/name``)."""
    files = []
    for dirpath, _, names in os.walk(root):
        for name in names:
            path = Path(dirpath) / name
            try:
                stat = path.stat()
            except OSError:  # removed while we listed
                continue
            files.append(FileMetadata(str(path), stat.st_size, stat.st_mtime))
    return files


def list_files(root: str) -> list[FileMetadata]:
    """Every file under ``root``, the root taken literally (on a local disk, a walk of the root
    only; elsewhere one listing of the escaped ``<root>/**``)."""
    if is_local(root):
        return _walk(root)
    (result,) = match([literal_pattern(root, "**")])
    return list(result.metadata_list)


def _delete_local(path: str) -> bool:
    """Remove a file or a directory tree; False when there was nothing to remove."""
    target = Path(path)
    try:
        if target.is_dir() and not target.is_symlink():
            shutil.rmtree(target)
        else:
            target.unlink()
    except FileNotFoundError:
        return False
    return True


def delete_paths(paths: Sequence[str]) -> int:
    """Delete files (or, on a local disk, directory trees) at exactly ``paths``; a path already
    gone is not an error. Returns how many existed and were deleted by this call.

    Raises ``BeamIOError`` naming every path that is still there afterwards."""
    if not paths:
        return 0
    if is_local(paths[0]):
        return sum(_delete_local(p) for p in paths)
    scheme = paths[0].split("://", 1)[0] if "://" in paths[0] else ""
    escape = scheme in _DELETE_MATCHES_PATTERNS
    existed = [p for p in paths if FileSystems.exists(p)] if any(map(has_glob, paths)) else None
    try:
        FileSystems.delete([glob_escape(p) if escape else p for p in paths])
        failed: dict[str, Exception] = {}
    except BeamIOError as err:
        failed = {str(k): v for k, v in err.exception_details.items()}
    if existed is not None:
        # A glob character in a path: check literally that each one is gone, whatever the
        # filesystem's delete did with it.
        still = {p: failed.get(p, OSError("still exists after delete")) for p in existed}
        still = {p: e for p, e in still.items() if FileSystems.exists(p)}
        if still:
            raise BeamIOError("Delete operation failed", still)
        return len(existed)
    if failed:  # no glob character anywhere: the failed paths are the paths themselves
        still = {p: e for p, e in failed.items() if FileSystems.exists(p)}
        if still:
            raise BeamIOError("Delete operation failed", still)
    return len(paths) - len(failed)

"""The JSON records and deletes of the retention journal and lock (and the run records of
``transforms.commit``): small documents written whole through Beam's ``FileSystems``, so the
same code serves local disks, ``gs://`` and ``s3://``; deletes take paths literally and treat a
path already gone as done (every step of the journal may run twice)."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Mapping, Sequence
from typing import Any

from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

from transforms.paths import delete_paths, list_files
from transforms.retention.files import ensure_parent
from transforms.retention.layout import REPORTS_DIR, full_path, is_local

__all__ = [
    "delete_existing",
    "delete_tree",
    "read_json",
    "utc_now_iso",
    "write_audit",
    "write_json",
]


def utc_now_iso() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def write_json(path: str, doc: Any) -> None:
    """Create or overwrite ``path`` with ``doc`` as JSON (sorted keys, for readable diffs)."""
    ensure_parent(path)
    data = json.dumps(doc, indent=2, sort_keys=True, default=str).encode("utf-8")
    with FileSystems.create(path, compression_type=CompressionTypes.UNCOMPRESSED) as fh:
        fh.write(data)


def read_json(path: str) -> Any:
    with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as fh:
        return json.loads(fh.read().decode("utf-8"))


def write_audit(
    root: str, pipeline: str, run_id: str, doc: Mapping[str, Any], *, overwrite: bool = True
) -> str:
    """The audit record ``_reports/<pipeline>-<run_id>.json``; returns its path.

    With ``overwrite=False`` an existing record is kept (a recovered transaction whose own
    run already wrote its audit before it died)."""
    path = full_path(root, f"{REPORTS_DIR}/{pipeline}-{run_id}.json")
    if overwrite or not FileSystems.exists(path):
        write_json(path, dict(doc))
    return path


def delete_existing(paths: Sequence[str]) -> int:
    """Delete exactly ``paths`` (taken literally: ``transforms.paths``); a path already gone is
    not an error (idempotent).

    Returns how many were deleted by this call."""
    return delete_paths(list(paths))


def delete_tree(path: str) -> None:
    """Delete every file under ``path`` and, on a local disk, the directory itself."""
    if is_local(path):
        delete_paths([path])
        return
    delete_existing([m.path for m in list_files(path)])

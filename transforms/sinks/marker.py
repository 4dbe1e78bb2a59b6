"""Which storage layout an output root is written in: its marker, ``<root>/_layout.json``.

Why a marker and not a flag of every job: the retention jobs (purge, lifecycle, erase, access)
must read a root in the layout it was *written* in. A layout given again on their command line
could be the wrong one, and a wrong layout does not fail: it finds no file, so a purge deletes
nothing and an erasure verifies a false success. So the root says it, fail closed:

- an ingestion run's commit (``transforms.commit``) writes ``{"layout": "<name>"}`` when the
  root has no marker, and refuses a run whose ``--layout`` is not the root's (the launcher
  checks it first, before any data is read: :func:`check_root_layout`);
- a root without a marker is in the Hive layout (every output written before markers existed);
  a non-Hive run into such a root that already holds output is refused;
- a marker naming a layout that is not registered, or that cannot be read, is refused
  (:class:`~transforms.sinks.storage.LayoutError`): never a guess.

The marker starts with ``_``: no layout classifies it, and no retention job deletes it.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Sequence
from pathlib import Path

from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

from transforms.paths import is_local, literal_pattern, match
from transforms.sinks.storage import DEFAULT_LAYOUT, HIVE, LayoutError, StorageLayout, layout_named

__all__ = [
    "LAYOUT_MARKER",
    "REPORTS_DIR",
    "any_file",
    "check_root_layout",
    "holds_unmarked_output",
    "layout_for_output",
    "layout_of_root",
    "recorded_layout",
    "write_marker",
]

LAYOUT_MARKER = "_layout.json"
REPORTS_DIR = "_reports"  # the jobs' reports and audits (transforms.retention.jsonio)
# The staging folders whose content lands at the same relative paths under the root above
# them: an ingestion run's (``transforms.commit``, ``_runs/<run>/staged``) and a retention
# transaction's (``transforms.retention.txn``, ``_retention/txn-<id>/staged``).
_STAGED = re.compile(r"^(?P<root>.+)/(?:_runs|_retention)/[^/]+/staged/?$")


def _marker_path(root: str) -> str:
    return FileSystems.join(root, LAYOUT_MARKER)


def recorded_layout(root: str) -> str | None:
    """The layout name the root's marker records; None when the root has no marker. A marker
    that cannot be read or names nothing is a :class:`LayoutError`."""
    path = _marker_path(root)
    if not FileSystems.exists(path):
        return None
    try:
        with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as fh:
            doc = json.loads(fh.read().decode("utf-8"))
    except (OSError, ValueError) as exc:
        raise LayoutError(f"{path}: unreadable layout marker ({exc}): refusing to guess") from None
    name = doc.get("layout") if isinstance(doc, dict) else None
    if not isinstance(name, str) or not name:
        raise LayoutError(f"{path}: the layout marker names no layout: refusing to guess")
    return name


def layout_of_root(root: str) -> StorageLayout:
    """The layout ``root`` is written in: its marker's (which must be registered), else Hive."""
    name = recorded_layout(root)
    if name is None:
        return HIVE
    return layout_named(name, f"the layout marker of {root}")


def layout_for_output(output_dir: str) -> StorageLayout:
    """The layout files written to ``output_dir`` must follow: the root's, where
    ``output_dir`` is a staging folder (``<root>/_runs/<run>/staged``,
    ``<root>/_retention/<txn>/staged``) whose files land at the same paths under the root
    (the lifecycle job's moved rows, the dead letters of a retention job); else
    ``output_dir``'s own."""
    found = _STAGED.match(output_dir)
    return layout_of_root(found["root"] if found else output_dir)


def any_file(root: str, globs: Sequence[Sequence[str]]) -> bool:
    """Whether any file matches one of ``globs`` (path segments) under ``root``, the root taken
    literally: pathlib's glob below a local root, an escaped pattern elsewhere."""
    if is_local(root):
        found = (p for parts in globs for p in Path(root).glob("/".join(parts)) if p.is_file())
        return next(found, None) is not None
    patterns = [literal_pattern(root, *parts) for parts in globs]
    return any(result.metadata_list for result in match(patterns, limits=[1] * len(patterns)))


def holds_unmarked_output(root: str) -> bool:
    """Whether ``root`` already holds output written without a marker (Hive partitions, or
    run reports)."""
    if is_local(root) and not Path(root).is_dir():
        return False
    return any_file(root, [*HIVE.partition_globs(), (REPORTS_DIR, "*.json")])


def check_root_layout(root: str, layout: StorageLayout) -> None:
    """Refuse to write ``layout`` into a root written in another one (see the module
    docstring); a root with no output yet takes any registered layout."""
    name = recorded_layout(root)
    if name is None:
        if layout.name != DEFAULT_LAYOUT and holds_unmarked_output(root):
            raise LayoutError(
                f"{root} holds output in the {DEFAULT_LAYOUT} layout (it has no "
                f"{LAYOUT_MARKER}): refusing to write the {layout.name} layout into it"
            )
        return
    layout_named(name, f"the layout marker of {root}")
    if name != layout.name:
        raise LayoutError(
            f"{root} is written in the {name} layout ({LAYOUT_MARKER}): refusing to write the "
            f"{layout.name} layout into it (one root, one layout; use another --output)"
        )


def write_marker(root: str, layout: StorageLayout) -> None:
    """Record ``layout`` as the root's (the commit of its first run), after
    :func:`check_root_layout`. The default layout on a root without a marker records
    nothing: outputs keep their bytes, and no marker means Hive. The marker is written under
    another name and renamed, so a reader sees it whole or not at all."""
    check_root_layout(root, layout)
    if layout.name == DEFAULT_LAYOUT or recorded_layout(root) is not None:
        return
    path = _marker_path(root)
    temp = FileSystems.join(root, f".{LAYOUT_MARKER}.{uuid.uuid4().hex}")
    with FileSystems.create(temp, compression_type=CompressionTypes.UNCOMPRESSED) as fh:
        fh.write(json.dumps({"layout": layout.name}, sort_keys=True).encode("utf-8") + b"\n")
    FileSystems.rename([temp], [path])

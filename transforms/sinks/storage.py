"""Storage layouts: where, under an output root, the partition of a category or of a dead-letter
source for one expiry date is, and which partition a path is in.

Writers (the sinks, the lifecycle job's moved rows) and readers (purge, lifecycle, erase,
access, the object-store rules) meet here, through one interface, :class:`StorageLayout`, so
that a second layout is one class and its registration (:func:`register`), not an edit of every
job. The built-in layout is Hive's (:class:`HiveLayout`, ``hive``)::

    data_category=<category>/expiry_date=<YYYY-MM-DD>/<file>
    _dead_letter/source=<source>/expiry_date=<YYYY-MM-DD>/<file>

Whatever the layout, a partition holds the rows of one category (or dead-letter source) that
expire on one UTC date, so that retention deletes whole partitions; open-ended rows have their
own partition, which no date makes due. How a root's layout is known (its marker) is
``transforms.sinks.marker``.
"""

from __future__ import annotations

import datetime as dt
import fnmatch
import re
import urllib.parse
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass

from transforms.named import Registry
from transforms.sinks.layout import (
    DEAD_LETTER_DIR,
    HIVE_NULL_PARTITION,
    OPEN_ENDED_EXPIRY_DATE,
    expiry_date,
)

__all__ = [
    "BUILT_IN",
    "DATA",
    "DEAD_LETTER",
    "DEFAULT_LAYOUT",
    "OPEN_ENDED_VALUES",
    "HiveLayout",
    "LayoutError",
    "Partition",
    "StorageLayout",
    "dead_letter_path",
    "due",
    "layout_named",
    "layouts",
    "partition_path",
    "register",
    "unregister",
]

DATA = "data"
DEAD_LETTER = "dead_letter"
DEFAULT_LAYOUT = "hive"
# The expiry values of open-ended partitions: the layouts' (9999-12-31), and the Hive null
# partition that outputs written before it hold. Never due.
OPEN_ENDED_VALUES = frozenset({OPEN_ENDED_EXPIRY_DATE, HIVE_NULL_PARTITION})
_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")


class LayoutError(ValueError):
    """A layout that is not registered, or that cannot do what is asked of it."""


def due(expiry: dt.date, today: dt.date) -> bool:
    """The schedule's one rule: data goes on its expiry date (UTC), never later.

    "Within N days" means at most N days, so a row is deleted on the UTC date of its
    ``expires_at`` (the day its partition is named after), not after it: the purge deletes the
    partitions due on the date of its ``--now``, and the lifecycle job deletes at once a row
    whose new expiry is due on the date of its run time. A purge run daily at 00:00 UTC thus
    never keeps a row past its ``expires_at``.
    """
    return expiry <= today


@dataclass(frozen=True)
class Partition:
    """One partition: of a data category or of a dead-letter source, for one expiry."""

    kind: str  # DATA or DEAD_LETTER
    name: str  # the category or the source, unescaped
    # The expiry as ``YYYY-MM-DD``, an OPEN_ENDED_VALUES one, or an unrecognised value as the
    # path spells it (a layout maps its own spelling of a date or of open-ended to these).
    expiry: str
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


class StorageLayout(ABC):
    """Where partitions are under an output root, for writers and readers alike.

    A layout names its partitions by *expiry*: ``YYYY-MM-DD``, or
    :data:`~transforms.sinks.layout.OPEN_ENDED_EXPIRY_DATE` for the open-ended partition (which
    it may spell as it likes, as long as :meth:`classify` maps it back). Everything it does not
    classify is outside the layout: never deleted, never rewritten. Names starting with ``_``
    or ``.`` at the top level (``_reports/``, ``_runs/``, ``_retention/``, the marker) are the
    project's and must stay outside it (:data:`DEAD_LETTER_DIR` aside, if the layout uses it).
    Instances travel to the workers inside the sinks: keep them small and picklable.
    """

    #: The name ``--layout`` selects it by and the root's marker records.
    name: str

    @abstractmethod
    def data_dir(self, category: str | None, expiry: str) -> str:
        """Relative directory of the rows of ``category`` expiring on ``expiry``."""

    @abstractmethod
    def dead_letter_dir(self, source: str | None, expiry: str) -> str:
        """Relative directory of the dead letters of ``source`` expiring on ``expiry``."""

    @abstractmethod
    def classify(self, rel: str) -> Partition | None:
        """The partition of a file's path relative to the root, or None when the path is
        outside the layout."""

    @abstractmethod
    def partition_globs(self) -> Sequence[tuple[str, ...]]:
        """Glob segments under the root that match the files of every partition (and little
        else): a probe of a root that does not list it (``has_partition_files``,
        ``check_output_root``)."""

    def owns_top_level(self, name: str) -> bool:
        """Whether a name directly under the root can belong to the layout (the cheap first
        look ``check_output_root`` takes at a local directory)."""
        return any(fnmatch.fnmatchcase(name, globs[0]) for globs in self.partition_globs())

    def prefix(self, kind: str, name: str, expiry: str) -> str:
        """The object-store key prefix (relative to the root, ending in ``/``) that holds the
        partition and nothing else, for lifecycle rules. A layout whose partitions cannot be
        told apart by prefix raises :class:`LayoutError`."""
        rel = self.data_dir(name, expiry) if kind == DATA else self.dead_letter_dir(name, expiry)
        return rel.rstrip("/") + "/"

    def data_path(self, category: str | None, expires_at: int | None) -> str:
        """Relative directory of a data row by its ``expires_at`` (epoch micros or None)."""
        return self.data_dir(category, expiry_date(expires_at))

    def dead_letter_path(self, source: str | None, expires_at: int | None) -> str:
        """Relative directory of a dead letter by its ``expires_at`` (epoch micros or None)."""
        return self.dead_letter_dir(source, expiry_date(expires_at))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, StorageLayout) and (type(self), self.name) == (
            type(other),
            other.name,
        )

    def __hash__(self) -> int:
        return hash((type(self), self.name))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r})"


def _hive_value(value: object) -> str:
    """Partition value of a category or source: None/empty -> Hive's null partition, else
    URI-escaped.

    Escaping keeps a value from adding a directory level ('/') or a bogus key ('=');
    pyarrow's hive partitioning (segment_encoding="uri") decodes it back.
    """
    if value is None or value == "":
        return HIVE_NULL_PARTITION
    return urllib.parse.quote(str(value), safe="")


class HiveLayout(StorageLayout):
    """Hive partitions, ``key=value`` directories every reader infers columns from
    (README "Output layout")::

        data_category=<category>/expiry_date=<YYYY-MM-DD>/<file>
        _dead_letter/source=<source>/expiry_date=<YYYY-MM-DD>/<file>

    Open-ended rows are in ``expiry_date=9999-12-31``, and in outputs written before that date
    was chosen, in Hive's null partition ``expiry_date=__HIVE_DEFAULT_PARTITION__``: both are
    classified open-ended.
    """

    name = "hive"
    _PATH = re.compile(
        r"^(?P<dir>(?:data_category=(?P<category>[^/]+)|"
        + re.escape(DEAD_LETTER_DIR)
        + r"/source=(?P<source>[^/]+))/expiry_date=(?P<expiry>[^/]+))/(?P<rest>.+)$"
    )

    def data_dir(self, category: str | None, expiry: str) -> str:
        return f"data_category={_hive_value(category)}/expiry_date={expiry}"

    def dead_letter_dir(self, source: str | None, expiry: str) -> str:
        return f"{DEAD_LETTER_DIR}/source={_hive_value(source)}/expiry_date={expiry}"

    def classify(self, rel: str) -> Partition | None:
        found = self._PATH.match(rel)
        if not found:
            return None
        if found["category"] is not None:
            kind, raw = DATA, found["category"]
        else:
            kind, raw = DEAD_LETTER, found["source"]
        return Partition(kind, urllib.parse.unquote(raw), found["expiry"], found["dir"])

    def partition_globs(self) -> Sequence[tuple[str, ...]]:
        return (
            ("data_category=*", "expiry_date=*", "*"),
            (DEAD_LETTER_DIR, "source=*", "expiry_date=*", "*"),
        )


HIVE = HiveLayout()
# The layouts of this package.
BUILT_IN: tuple[StorageLayout, ...] = (HIVE,)
# Reading a root in the wrong layout finds none of its files (an erasure would verify a false
# success), so an unknown name is a LayoutError, never a guess.
_LAYOUTS: Registry[StorageLayout] = Registry(
    "storage layout", BUILT_IN, "--layout", error=LayoutError, kind=StorageLayout
)
# Adds a layout (--layout <name> then selects it, and the retention jobs read roots whose
# marker names it); removes one (a test's); the registered names; the layout of a name.
register = _LAYOUTS.register
unregister = _LAYOUTS.unregister
layouts = _LAYOUTS.names
layout_named = _LAYOUTS.named


def partition_path(category: str, expires_at: int | None) -> str:
    """Relative directory of a data row in the Hive layout:
    ``data_category=<c>/expiry_date=<d>``."""
    return HIVE.data_path(category, expires_at)


def dead_letter_path(source: str | None, expires_at: int | None) -> str:
    """Relative directory of a dead letter in the Hive layout:
    ``_dead_letter/source=<s>/expiry_date=<d>``."""
    return HIVE.dead_letter_path(source, expires_at)

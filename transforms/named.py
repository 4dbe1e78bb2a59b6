"""A registry of things selected by name on the command line (input formats, storage layouts,
table sinks).

One rule for all, so that ``--input_format``, ``--layout`` and ``--sink`` behave alike: the
built-in entries are always there, registering the same entry again is a no-op (a module
imported twice), another entry under a taken name is refused, and an unknown name is an error
that lists the known ones.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Generic, Protocol, TypeVar

__all__ = ["NAME", "Named", "Registry"]

# What a name may be: a command-line value that needs no quoting, cannot be a path, and is what
# the Dataflow template's parameters accept (deploy/dataflow/metadata.json has the same regex).
NAME = re.compile(r"[a-z][a-z0-9_]{0,31}")


class Named(Protocol):
    name: str


T = TypeVar("T", bound=Named)


class Registry(Generic[T]):
    """Entries by name, built-in first, in registration order. ``what`` names an entry in
    messages (``storage layout``), ``flag`` is the command-line flag that selects one;
    ``error`` is the exception of a refusal; ``kind``, when given, is the class every entry
    must be an instance of (a ``TypeError`` otherwise), and ``reserved`` are names no entry
    may take (``auto`` of ``--input_format``).

    The modules of each registry expose its bound methods (``register = _FORMATS.register``)
    rather than wrapping them: one rule, written once."""

    def __init__(
        self,
        what: str,
        built_in: Iterable[T],
        flag: str,
        *,
        error: type[ValueError] = ValueError,
        kind: type | None = None,
        reserved: Iterable[str] = (),
    ) -> None:
        self.what = what
        self.flag = flag
        self.error = error
        self.kind = kind
        self.reserved = frozenset(reserved)
        self.built_in = tuple(built_in)
        self._entries: dict[str, T] = {entry.name: entry for entry in self.built_in}

    def register(self, entry: T) -> T:
        """Adds ``entry`` and returns it (``--<flag> <name>`` then selects it). The same entry
        again is a no-op (a module imported twice); another under a taken name is refused."""
        if self.kind is not None and not isinstance(entry, self.kind):
            raise TypeError(
                f"a {self.what} must be a {self.kind.__name__}, got {type(entry).__name__}"
            )
        if entry.name in self.reserved:
            raise self.error(f"{self.what} name {entry.name!r} is {self.flag}'s own")
        if not isinstance(entry.name, str) or not NAME.fullmatch(entry.name):
            raise self.error(
                f"{self.what} name {entry.name!r} must match {NAME.pattern} (a command-line value)"
            )
        known = self._entries.get(entry.name)
        if known is not None and known != entry:
            raise self.error(f"{self.what} {entry.name!r} is already registered")
        self._entries[entry.name] = entry
        return entry

    def unregister(self, name: str) -> None:
        """Removes the entry ``name`` (a test's, when it is done); the built-in ones stay."""
        if name not in {entry.name for entry in self.built_in}:
            self._entries.pop(name, None)

    def entries(self) -> tuple[T, ...]:
        """The registered entries, built-in first."""
        return tuple(self._entries.values())

    def names(self) -> tuple[str, ...]:
        """The registered entries' names, built-in first."""
        return tuple(self._entries)

    def named(self, name: str, flag: str | None = None) -> T:
        """The entry ``name``; an unknown one is refused, naming the registered ones and the
        flag (or what asked, e.g. a commit record) it came from."""
        entry = self._entries.get(name)
        if entry is None:
            known = ", ".join(self._entries)
            raise self.error(
                f"{flag or self.flag}: unknown {self.what} {name!r} (registered: {known})"
            )
        return entry

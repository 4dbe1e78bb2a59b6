"""What an input line may be before it is a record, and the bounds that keep any line harmless.

No input stops a job: a line of any size, depth or encoding ends as a row or as a dead letter
with a reason. This module holds the bounds and the pieces that enforce them without Beam, so
that the reader, the parser, the dead-letter builder and the retention jobs share one definition:

- :data:`DEFAULT_MAX_LINE_BYTES` (1 MiB, ``--max_line_bytes``): a longer line is never held whole
  or decoded. The reader hashes it as it streams past and hands on a :class:`Withheld` summary;
  Parse makes it a ``line_too_large`` dead letter. 1 MiB is ~3,000 times a typical record.
- :data:`MAX_DEPTH` (64): nesting deeper than this is ``too_deep``. Every record of the contract
  is flat; 64 leaves room for any plausible undeclared payload while keeping every walk over a
  decoded value far from Python's recursion limit (json's decoder and a recursive walk both
  fail near 1,000 levels, and orjson refuses past 1,024).
- :class:`Withheld`: what a dead letter keeps of a line whose text may not be kept: its length,
  its SHA-256 (to find the line again in the source) and the event id when a bounded scan finds
  it. No raw text.
- :class:`RecordError`: a stage's rejection of one record with a reason code; it lives here,
  without Beam, because pure modules (validation, the retention parsers) raise it.
- :func:`decode_json_line`: a JSON Lines line to its object, or the reason it is none; here,
  without Beam, because ingestion (Parse), lifecycle events and erase requests all read lines.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from itertools import accumulate
from typing import Any

import orjson

__all__ = [
    "DEFAULT_MAX_LINE_BYTES",
    "EVENT_ID_SCAN_BYTES",
    "MAX_DEPTH",
    "ReadFailure",
    "RecordError",
    "Withheld",
    "WithheldBuilder",
    "check_text",
    "decode_json_line",
    "find_id",
    "has_surrogate",
    "may_hold_a_long_integer",
    "nesting_exceeds",
]

DEFAULT_MAX_LINE_BYTES = 1024 * 1024
MAX_DEPTH = 64
# How much of a withheld line is searched for its id: ids come first in every producer we know;
# a bounded prefix keeps the scan O(1) whatever the line's size.
EVENT_ID_SCAN_BYTES = 64 * 1024
# An id longer than this is not an id worth keeping in a dead letter.
MAX_ID_CHARS = 256


class RecordError(Exception):
    """Raised inside a stage to reject a record with a reason code and optional detail.

    ``raw``: what the dead letter shows instead of the element (e.g. a :class:`Withheld`);
    ``event_id``: the record's id when the element itself does not carry it (a raw line).
    """

    def __init__(
        self, error: str, detail: str | None = None, *, raw: Any = None, event_id: Any = None
    ) -> None:
        super().__init__(f"{error}:{detail}" if detail else error)
        self.error = f"{error}:{detail}" if detail else error
        self.raw = raw
        self.event_id = event_id


def _id_pattern(id_field: str) -> re.Pattern[bytes]:
    key = re.escape(id_field.encode())
    # "<id_field>" : "<value>" with a bounded value; escapes are kept as written.
    value = rb'"((?:[^"\\\r\n]|\\.){1,%d})"' % MAX_ID_CHARS
    return re.compile(rb'"' + key + rb'"\s{0,16}:\s{0,16}' + value)


_ID_PATTERNS: dict[str, re.Pattern[bytes]] = {}


def find_id(head: bytes | str, id_field: str = "event_id") -> str | None:
    """The value of ``"<id_field>": "..."`` in the first :data:`EVENT_ID_SCAN_BYTES` of a line,
    if a bounded scan finds one in the top-level object that is valid UTF-8 without escapes;
    else None."""
    if isinstance(head, str):
        head = head.encode("utf-8", "surrogatepass")
    pattern = _ID_PATTERNS.get(id_field)
    if pattern is None:
        pattern = _ID_PATTERNS[id_field] = _id_pattern(id_field)
    for found in pattern.finditer(head, 0, EVENT_ID_SCAN_BYTES):
        # Only the record's own id: the key must sit in the top-level object, not in a value
        # nested under another key (which may be anything, a secret included).
        if b"\\" in found[1] or _depth(head[: found.start()]) != 1:
            continue
        try:
            return found[1].decode("utf-8")
        except UnicodeDecodeError:
            return None
    return None


def _depth(prefix: bytes) -> int:
    """The nesting depth at the end of ``prefix`` of a JSON text (strings skipped); an
    unterminated string makes it unknowable, and an unknowable depth is no depth (-1)."""
    if prefix.count(b'"') - prefix.count(b'\\"') == 0:
        return prefix.count(b"{") + prefix.count(b"[") - prefix.count(b"}") - prefix.count(b"]")
    brackets = _STRING.sub(b"", prefix)
    if b'"' in brackets:
        return -1
    return brackets.count(b"{") + brackets.count(b"[") - brackets.count(b"}") - brackets.count(b"]")


@dataclass(frozen=True)
class Withheld:
    """A line that may not travel or be kept as text: its length in bytes, its SHA-256 and the
    id a bounded scan found (None if none). :meth:`nothing` keeps not even the length and hash
    (a record that may not be stored at all, such as a child's)."""

    length: int | None
    sha256: str | None
    event_id: str | None = None

    @classmethod
    def nothing(cls, event_id: str | None = None) -> Withheld:
        return cls(None, None, event_id)

    @classmethod
    def of(cls, data: bytes | str, id_field: str = "event_id") -> Withheld:
        raw = data.encode("utf-8", "surrogatepass") if isinstance(data, str) else bytes(data)
        return cls(len(raw), hashlib.sha256(raw).hexdigest(), find_id(raw, id_field))


class WithheldBuilder:
    """Builds a :class:`Withheld` from a line that arrives in pieces (the reader streams an
    oversized line instead of holding it): hashes every piece, keeps only the scanned head."""

    def __init__(self, id_field: str = "event_id") -> None:
        self._hash = hashlib.sha256()
        self._head = bytearray()
        self._length = 0
        self._id_field = id_field

    def add(self, piece: bytes) -> None:
        self._hash.update(piece)
        self._length += len(piece)
        if len(self._head) < EVENT_ID_SCAN_BYTES:
            self._head += piece[: EVENT_ID_SCAN_BYTES - len(self._head)]

    def build(self) -> Withheld:
        return Withheld(
            self._length, self._hash.hexdigest(), find_id(bytes(self._head), self._id_field)
        )


# Strings first (a bracket inside a string is not nesting), then only the brackets remain.
_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"')
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")
_STEP = {ord("["): 1, ord("{"): 1, ord("]"): -1, ord("}"): -1}


def nesting_exceeds(line: bytes | str, limit: int = MAX_DEPTH) -> bool:
    """True when the JSON text ``line`` nests deeper than ``limit`` (textually, without decoding:
    decoding is what a deep line breaks).

    Decided by two C-level counts for every ordinary line (fewer opening brackets than the
    limit); only a line with many brackets is scanned. An unterminated string makes the scan
    count the brackets after it: such a line is invalid JSON anyway, and calling it too deep
    is still a dead letter."""
    if isinstance(line, str):
        line = line.encode("utf-8", "surrogatepass")
    if line.count(b"[") + line.count(b"{") <= limit:
        return False
    brackets = _STRING.sub(b"", line).translate(None, _NOT_BRACKETS)
    return max(accumulate(map(_STEP.__getitem__, brackets)), default=0) > limit


_SURROGATE = re.compile("[\ud800-\udfff]")


def has_surrogate(text: str) -> bool:
    """True when ``text`` holds a lone surrogate (JSON's ``\\ud800`` escape decodes to one):
    such text cannot be written as UTF-8 by any sink."""
    return not text.isascii() and _SURROGATE.search(text) is not None


def check_text(obj: Mapping[str, Any], fields: Iterable[str]) -> None:
    """``malformed_text:<field>`` (:class:`RecordError`) for the first of ``fields`` whose value
    in ``obj`` is a string holding a lone surrogate: no sink, coder or reader can carry it."""
    for name in fields:
        value = obj.get(name)
        if value.__class__ is str and has_surrogate(value):
            raise RecordError("malformed_text", name)


@dataclass(frozen=True)
class ReadFailure:
    """A file that stopped decoding after ``records`` records (``error``: the exception type; a
    corrupt Avro or Parquet file): the reader's last element for that file, a dead letter at
    Parse (``unreadable_file:<error>``)."""

    path: str
    records: int
    error: str


# orjson reads an integer beyond 64 bits as a float (json keeps the exact integer): a float of at
# least this magnitude may be one.
_BEYOND_INT64 = 2.0**63
_FLOAT_OR_CONTAINER = frozenset({float, list, dict})


def decode_json_line(line: bytes | str | Withheld | ReadFailure) -> dict[str, Any]:
    """One JSON Lines line to a JSON object, or :class:`RecordError`.

    What the reader hands on instead of a line is rejected with its reason: a line over the
    size limit (``line_too_large``) and a file that stopped decoding (``unreadable_file:<error>``).

    A line nesting deeper than :data:`MAX_DEPTH` is ``too_deep`` before any decoder sees it (both
    recurse). orjson decodes the common case in one C call; json (the contract's reference)
    decides everything orjson refuses, and re-reads a line where orjson may have read an integer
    as a float, so that the result is always json's."""
    if line.__class__ is Withheld:
        raise RecordError("line_too_large", event_id=line.event_id)
    if line.__class__ is ReadFailure:
        raise RecordError("unreadable_file", line.error)
    if nesting_exceeds(line):
        raise RecordError("too_deep")
    try:
        obj = orjson.loads(line)
    except orjson.JSONDecodeError:
        obj = _decode_slowly(line)
    if not isinstance(obj, dict):
        raise RecordError("not_an_object")
    if may_hold_a_long_integer(obj.values()):
        return _decode_slowly(line)  # an object again: orjson read one
    return obj


def may_hold_a_long_integer(values: Collection[Any]) -> bool:
    """True when orjson may have read one of ``values`` (at any depth) from an integer beyond
    64 bits: it reads those as floats, where json keeps the integer."""
    if _FLOAT_OR_CONTAINER.isdisjoint(map(type, values)):
        return False  # the common case, decided in C
    for value in values:
        kind = value.__class__
        if kind is float:
            if not -_BEYOND_INT64 < value < _BEYOND_INT64:
                return True
        elif kind is list:
            if may_hold_a_long_integer(value):
                return True
        elif kind is dict and may_hold_a_long_integer(value.values()):
            return True
    return False


def _decode_slowly(line: bytes | str) -> Any:
    """What orjson refused: say why, or decode it with json, which is laxer (NaN, lone
    surrogates, integers beyond 64 bits) and is the contract's reference."""
    if isinstance(line, bytes):
        try:
            line = line.decode("utf-8")
        except UnicodeDecodeError:
            raise RecordError("invalid_encoding") from None
    if not line.strip():
        raise RecordError("empty_line")
    try:
        return json.loads(line)
    except ValueError:
        raise RecordError("invalid_json") from None

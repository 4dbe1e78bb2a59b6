"""Which rows of a file carry given values: normalisation, and vectorised matching with Arrow.

Lifecycle events and erasure requests name a value (a UIN, an SDK app id, a user id, an e-mail,
an IP address); the stored rows must be found by it however it was spelt on either side:

- identifiers (``uin``, ``sdk_app_id``, ``user_id``, ``event_id``...) are stored as text
  whatever type they arrived in, so a request's ``100000009`` and ``"100000009"`` are the same;
  surrounding white space is ignored on both sides;
- e-mail addresses (``business_email``, ``google_email``) compare case-insensitively (the local
  part is case-sensitive in theory, never in practice: erring towards a match is erring towards
  deletion);
- IP addresses (``ip``, ``client_ip``) are stored in canonical form (``transforms.validation``); an
  IPv4 address also matches its IPv4-mapped IPv6 spelling and the other way round.

A :class:`ColumnIndex` holds normalised values per column with a payload each (the requests or
events they belong to). :meth:`ColumnIndex.match` runs one ``pyarrow.compute.is_in`` per column
over a whole file and only looks at the few candidate rows in Python.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

__all__ = [
    "EMAIL_COLUMNS",
    "IP_COLUMNS",
    "ColumnIndex",
    "column_kind",
    "ip_forms",
    "normalise",
    "normalise_array",
    "string_table",
]

EMAIL_COLUMNS = frozenset({"business_email", "google_email"})
IP_COLUMNS = frozenset({"ip", "client_ip"})


def column_kind(column: str) -> str:
    """``email``, ``ip`` or ``identifier``: how values of that column are compared."""
    if column in EMAIL_COLUMNS:
        return "email"
    if column in IP_COLUMNS:
        return "ip"
    return "identifier"


def _text(value: Any) -> str | None:
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, int | str):
        text = str(value).strip()
        return text or None
    return None


def ip_forms(value: Any) -> tuple[str, ...]:
    """The canonical spellings an IP address may be stored under (``()`` if not an IP).

    ``203.0.113.9`` -> itself and its IPv4-mapped IPv6 address in both spellings Python has
    printed it in; an IPv4-mapped IPv6 address -> the same set."""
    text = _text(value)
    if text is None:
        return ()
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return ()
    v4 = address if isinstance(address, ipaddress.IPv4Address) else address.ipv4_mapped
    forms = {str(address)}
    if v4 is not None:
        # Python < 3.13 prints a mapped address in hex (::ffff:cb00:7109), later ones dotted.
        forms |= {str(v4), str(ipaddress.IPv6Address(f"::ffff:{v4}")), f"::ffff:{v4}"}
    return tuple(sorted(forms))


def normalise(value: Any, kind: str) -> str | None:
    """One value as stored values are compared (None: it cannot match anything)."""
    text = _text(value)
    if text is None:
        return None
    if kind == "email":
        return text.lower() if "@" in text else None
    if kind == "ip":
        forms = ip_forms(text)
        return forms[0] if forms else None
    return text


def normalise_array(array: pa.Array | pa.ChunkedArray, kind: str) -> pa.ChunkedArray:
    """A stored column as text, trimmed (and lower-cased for e-mails), nulls kept."""
    if isinstance(array, pa.Array):
        array = pa.chunked_array([array])
    if not pa.types.is_string(array.type) and not pa.types.is_large_string(array.type):
        array = array.cast(pa.string())
    array = pc.utf8_trim_whitespace(array)
    if kind == "email":
        array = pc.utf8_lower(array)
    return array


class ColumnIndex:
    """Normalised values per column, each with a payload; finds the rows that carry them.

    ``entries`` maps a column name to ``{normalised value: payload}``. Normalise the values with
    :func:`normalise` (or list every form from :func:`ip_forms` for an IP) before building it.
    """

    def __init__(self, entries: Mapping[str, Mapping[str, Any]]) -> None:
        self.entries = {column: dict(values) for column, values in entries.items() if values}
        self._sets = {
            column: pa.array(sorted(values), type=pa.string())
            for column, values in self.entries.items()
        }

    @property
    def columns(self) -> frozenset[str]:
        return frozenset(self.entries)

    def __bool__(self) -> bool:
        return bool(self.entries)

    def match(self, table: pa.Table) -> dict[int, dict[str, Any]]:
        """Rows of ``table`` holding an indexed value: ``{row: {column: payload}}``."""
        present = [c for c in self._sets if c in table.column_names]
        if not present or table.num_rows == 0:
            return {}
        normalised = {}
        mask = None
        for column in present:
            values = normalise_array(table.column(column), column_kind(column))
            normalised[column] = values
            hit = pc.is_in(values, value_set=self._sets[column])
            mask = hit if mask is None else pc.or_(mask, hit)
        rows = pc.indices_nonzero(pc.fill_null(mask, False)).to_pylist()
        if not rows:
            return {}
        found: dict[int, dict[str, Any]] = {row: {} for row in rows}
        take = pa.array(rows, type=pa.int64())
        for column, values in normalised.items():
            lookup = self.entries[column]
            for row, value in zip(rows, values.take(take).to_pylist(), strict=True):
                if value in lookup:
                    found[row][column] = lookup[value]
        return found


def string_table(records: Iterable[Mapping[str, Any]], columns: Iterable[str]) -> pa.Table:
    """A table of the given columns of row dicts, as text (for Avro records)."""
    records = list(records)
    arrays = {}
    for column in columns:
        arrays[column] = pa.array(
            [None if (v := r.get(column)) is None else str(v) for r in records], type=pa.string()
        )
    return pa.table(arrays) if arrays else pa.table({"_": pa.nulls(len(records))})

"""Which rows of a file carry given values: normalisation, and vectorised matching with Arrow.

Lifecycle events, erasure and access requests name a value (a UIN, an SDK app id, a user id, an
e-mail, a phone number, a LinkedIn URL, an IP address); the stored rows must be found by it
however it was spelt on either side. One function, :func:`normalise`, says what a value is
compared as (its *comparison*: the policy's ``SUBJECT_KINDS`` give each subject kind one; which
columns hold which kind is the policy's ``subjects``, applied by
``transforms.retention.subjects``), and it is applied to the request and to the stored column
alike (the stored values are compared normalised, never rewritten):

- identifiers (``uin``, ``sdk_app_id``, ``user_id``, ``event_id``...) are stored as text
  whatever type they arrived in, so a request's ``100000009`` and ``"100000009"`` are the same;
  surrounding white space is ignored on both sides;
- e-mail addresses compare trimmed and case-insensitively (the local part is case-sensitive in
  theory, never in practice: erring towards a match is erring towards deletion);
- phone numbers compare in E.164 (``+14155552671``), with an extension as
  ``;ext=<digits>`` (another line, another person). Only a number that carries its country code
  (``+`` or ``00``, optionally after ``tel:``) has an E.164 form: a national number
  (``(415) 555-2671``) could belong to any country, and guessing one could erase or end someone
  else's data, so it is no key (fail closed: a request naming one is rejected as malformed, a
  stored one matches no phone number). Separators are spaces, ``-``, ``.``, ``/`` and
  parentheses; anything else (words, letters, two numbers) is not one phone number;
- LinkedIn profile URLs compare as their canonical profile path ``linkedin.com/in/<slug>``: any
  scheme (http, https or none), any subdomain (``www.``, ``uk.``), the query, the fragment, the
  trailing slash and anything after the slug dropped, the slug percent-decoded and lower-cased.
  Anything else (another host, a company page, user information or a port in the URL) is no key;
- IP addresses compare as one key per address: an IPv4 address and its IPv4-mapped IPv6 form
  (``::ffff:194.25.2.129``, or in hex ``::ffff:c219:281``) are the same address and compare as
  the dotted IPv4 address (``194.25.2.129``), whichever of them a request names and whichever is
  stored; any other IPv6 address compares in its compressed lower-case form (RFC 5952). Other
  embeddings of an IPv4 address (IPv4-compatible ``::194.25.2.129``, 6to4, NAT64) are other
  addresses: they are not the same host, and are compared as written.

A :class:`ColumnIndex` holds normalised values per column with a payload each (the requests or
events they belong to) and how each column compares. :meth:`ColumnIndex.match` normalises each
column of a whole file once (Arrow kernels for identifiers and dotted IPv4 addresses, which are
stored canonical, :func:`normalise` once per distinct value otherwise), runs one
``pyarrow.compute.is_in`` per column and only looks at the few candidate rows in Python.
"""

from __future__ import annotations

import ipaddress
import re
import unicodedata
import urllib.parse
from collections.abc import Iterable, Mapping
from typing import Any

import phonenumbers
import pyarrow as pa
import pyarrow.compute as pc

__all__ = [
    "COMPARISONS",
    "IDENTIFIER",
    "TOKENS",
    "ColumnIndex",
    "ip_forms",
    "normalise",
    "normalise_array",
    "string_table",
]

IDENTIFIER = "identifier"
# How values can be compared: the comparisons of the policy's subject kinds.
COMPARISONS = ("identifier", "email", "phone", "linkedin", "ip")
# A phone number as written: the country code (+ or 00), digits and separators, and an optional
# extension. A value must be exactly one such number (two numbers, or words, are not one).
_PHONE_START = r"(?:\+|00)[ \-.(]*\d"
_PHONE_EXT = r"\s*(?:;ext=|ext\.?|extension|x|#)\s*(?P<ext>\d{1,10})"
_PHONE = re.compile(
    rf"(?:tel:)?(?P<number>{_PHONE_START}[\d \-./()]*?)(?:{_PHONE_EXT})?", re.IGNORECASE
)
_LINKEDIN_HOST = re.compile(r"(?:[a-z0-9-]+\.)*linkedin\.com")
_LINKEDIN_SCHEMES = ("", "http", "https")
# Where a phone number or a LinkedIn URL may be in free text (what :func:`normalise` then reads).
TOKENS = {
    "phone": re.compile(
        rf"(?<![\w.+]){_PHONE_START}(?:[\d \-./()]*\d)?(?:{_PHONE_EXT}(?!\d))?", re.IGNORECASE
    ),
    "linkedin": re.compile(
        r"(?:https?://)?(?:[\w-]+\.)*linkedin\.com/in/[^\s\"'<>?#/\\]+", re.IGNORECASE
    ),
}


def _text(value: Any) -> str | None:
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, int | str):
        text = str(value).strip()
        return text or None
    return None


def ip_forms(value: Any) -> tuple[str, ...]:
    """The spellings an IP address may be written in (``()`` if not an IP), to look for it in
    raw text (a dead letter's line) where nothing is normalised.

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
        # Ingestion stores a mapped address dotted (transforms.validation); Python < 3.13 prints
        # it in hex (::ffff:cb00:7109), as outputs written before that hold it.
        forms |= {str(v4), str(ipaddress.IPv6Address(f"::ffff:{v4}")), f"::ffff:{v4}"}
    return tuple(sorted(forms))


def normalise_email(text: str) -> str | None:
    """``Jane.Doe@Corp.Example`` -> ``jane.doe@corp.example``; None without a local part and a
    domain."""
    local, at, domain = text.strip().lower().rpartition("@")
    return f"{local}@{domain}" if at and local and domain else None


def normalise_phone(text: str) -> str | None:
    """A phone number with its country code -> E.164 (``+14155552671``, ``;ext=12`` added for
    an extension); None for a national number or anything that is not one phone number."""
    found = _PHONE.fullmatch(unicodedata.normalize("NFKC", text).strip())
    if found is None:
        return None
    number = found["number"]
    if number.startswith("00"):
        number = "+" + number[2:]
    try:
        parsed = phonenumbers.parse(number, None)
    except phonenumbers.NumberParseException:
        return None
    if not phonenumbers.is_possible_number(parsed):
        return None
    e164 = phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164)
    return f"{e164};ext={found['ext']}" if found["ext"] else e164


def normalise_linkedin(text: str) -> str | None:
    """A LinkedIn profile URL -> ``linkedin.com/in/<slug>``; None for anything else."""
    text = text.strip()
    try:
        url = urllib.parse.urlsplit(text if "//" in text else f"//{text}")
        port = url.port
    except ValueError:
        return None
    host = (url.hostname or "").rstrip(".")
    if (
        url.scheme.lower() not in _LINKEDIN_SCHEMES
        or url.username is not None
        or port is not None
        or not _LINKEDIN_HOST.fullmatch(host)
    ):
        return None
    segments = [s for s in url.path.split("/") if s]
    if len(segments) < 2 or segments[0].lower() != "in":
        return None
    slug = unicodedata.normalize("NFC", urllib.parse.unquote(segments[1])).strip().lower()
    if not slug or any(c.isspace() or c in "/?#" for c in slug):
        return None
    return f"linkedin.com/in/{slug}"


def normalise(value: Any, kind: str) -> str | None:
    """One value as values of its ``kind`` are compared (None: it cannot match anything)."""
    text = _text(value)
    if text is None:
        return None
    if kind == "email":
        return normalise_email(text)
    if kind == "phone":
        return normalise_phone(text)
    if kind == "linkedin":
        return normalise_linkedin(text)
    if kind == "ip":
        return normalise_ip(text)
    return text


def normalise_ip(text: str) -> str | None:
    """One key per address (see the module docstring): an IPv4 address, or the IPv4 address an
    IPv4-mapped IPv6 address maps, dotted; any other IPv6 address compressed and lower-cased;
    None for anything that is not an IP address."""
    try:
        address = ipaddress.ip_address(text.strip())
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return str(address.ipv4_mapped)
    return str(address)


def normalise_array(array: pa.Array | pa.ChunkedArray, kind: str) -> pa.ChunkedArray:
    """A stored column as its values are compared, nulls kept: identifiers as trimmed text, the
    other kinds through :func:`normalise`, once per distinct value. A dotted IPv4 address is
    kept as it is, trimmed: the pipelines store it canonical (``transforms.validation``), and a
    visitors' column holds ~100k distinct of them per million rows; an address with a colon
    (IPv6, IPv4-mapped in either spelling) is normalised."""
    if isinstance(array, pa.Array):
        array = pa.chunked_array([array])
    if not pa.types.is_string(array.type) and not pa.types.is_large_string(array.type):
        array = array.cast(pa.string())
    array = pc.utf8_trim_whitespace(array)
    if kind == IDENTIFIER:
        return array
    distinct = pc.unique(array)
    values = distinct.to_pylist()
    if kind == "ip":
        keys = pa.array([normalise(v, kind) if v and ":" in v else v for v in values], pa.string())
    else:
        keys = pa.array([normalise(v, kind) for v in values], type=pa.string())
    return pa.chunked_array(
        [keys.take(pc.index_in(chunk, value_set=distinct)) for chunk in array.chunks],
        type=pa.string(),
    )


class ColumnIndex:
    """Normalised values per column, each with a payload; finds the rows that carry them.

    ``entries`` maps a column name to ``{normalised value: payload}``; ``comparisons`` says how
    each column compares (default: as identifiers). Normalise the values with :func:`normalise`
    under the column's comparison before building it.
    """

    def __init__(
        self,
        entries: Mapping[str, Mapping[str, Any]],
        comparisons: Mapping[str, str] | None = None,
    ) -> None:
        self.entries = {column: dict(values) for column, values in entries.items() if values}
        self.comparisons = {c: (comparisons or {}).get(c, IDENTIFIER) for c in self.entries}
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
            values = normalise_array(table.column(column), self.comparisons[column])
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

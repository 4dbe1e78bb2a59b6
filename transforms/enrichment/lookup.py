"""What a lookup answers and the values it works on, shared by every enrichment module.

A handler (the snapshot, the HTTP client, a provider of your own) answers each request record
with a :class:`LookupResult`: found or not, the fields, and what it cost. Why a result and not
counters: the handler may run in another thread than the bundle's (``transforms.enrichment.
enrich`` bounds each call with a deadline), where Beam's counters are lost; the join, which runs
in the bundle's thread, turns the results into counters.

No Beam in this module: what it defines is plain data and functions, for a handler of any
source.
"""

from __future__ import annotations

import functools
import ipaddress
import socket
from dataclasses import dataclass, field
from typing import Any

from schemas.policy import OTHER_REGION

__all__ = [
    "COMPANY_COUNTRY_FIELD",
    "FAILED",
    "IP_FIELD",
    "MATCHED",
    "NO_MATCH",
    "REGION_FIELD",
    "IpAddress",
    "LookupResult",
    "clean_value",
    "ipv4_int",
    "is_empty",
    "is_restricted",
    "parse_ip",
]

IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

MATCHED = "matched"
NO_MATCH = "no_match"
FAILED = "failed"

# The request fields a handler reads: from Parse (ip) and Geolocate (region).
IP_FIELD = "ip"
REGION_FIELD = "region"
# The company's own country: the snapshot loader, the join and the contact gate read it.
COMPANY_COUNTRY_FIELD = "company_country"


@dataclass(frozen=True, slots=True)
class LookupResult:
    """What a handler found for one request record, plus what it cost.

    Slotted: a lookup that misses the handler's memo creates one, and a frozen dataclass
    without slots cost more to build than the lookup itself.

    Attributes:
      status: ``MATCHED``, ``NO_MATCH`` or ``FAILED`` (the source could not be reached after all
        retries; the record still flows on, unenriched).
      fields: company fields, and contact fields only if they were requested (non-empty values
        only). The join keeps nothing else.
      contact_requested: False for a restricted visitor: the source was asked for (or read for)
        company data only.
      source_calls: lookups this result accounts for: 1 per snapshot lookup; for HTTP, the number
        of HTTP requests of the batch (retries included), carried by the batch's first result.
      retries: HTTP retries of the batch (on the first result, like ``source_calls``).
      cache_hit: the answer came from the handler's in-process cache.
      contact_fields_discarded: contact values the source returned although not requested,
        dropped by the handler.
      invalid_ip: the record had no usable IP; nothing was looked up.
    """

    status: str
    fields: dict[str, Any] = field(default_factory=dict)
    contact_requested: bool = False
    source_calls: int = 0
    retries: int = 0
    cache_hit: bool = False
    contact_fields_discarded: int = 0
    invalid_ip: bool = False


def is_restricted(record: dict[str, Any]) -> bool:
    """Restricted = region is not ``OTHER``, the policy's only unrestricted region (``EEA_UK``,
    ``UNKNOWN``, any other restricted region; a missing region fails closed)."""
    return record.get(REGION_FIELD) != OTHER_REGION


def parse_ip(value: object) -> IpAddress | None:
    """The address to look up, or None if ``value`` is not an IP address.

    IPv4-mapped IPv6 addresses (``::ffff:1.2.3.4``) are returned as their IPv4 address, so they
    match IPv4 networks and share cache entries with the plain IPv4 form.
    """
    if not isinstance(value, str):
        return None
    return _parse_ip(value)


def ipv4_int(value: str) -> int | None:
    """The integer of an IPv4 address written in canonical dotted-quad form (what Parse makes
    of every address), else None (then :func:`parse_ip` decides).

    Why: ``ipaddress`` costs more than the rest of a snapshot lookup; socket's C conversion,
    accepted only when it gives the text back unchanged, is the answer ``ipaddress`` gives."""
    try:
        packed = socket.inet_pton(socket.AF_INET, value)
    except (OSError, TypeError, ValueError):
        return None
    if socket.inet_ntop(socket.AF_INET, packed) != value:
        return None
    return int.from_bytes(packed, "big")


@functools.lru_cache(maxsize=131072)
def _parse_ip(value: str) -> IpAddress | None:
    """Cached (addresses repeat; the objects are immutable)."""
    try:
        address = ipaddress.ip_address(value.strip())
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def is_empty(value: object) -> bool:
    """No value: None, an empty or blank string, an empty list. A record's own value that is
    empty is filled from the source; one that is not is kept."""
    return (
        value is None
        or value == ""
        or value == []
        or (isinstance(value, str) and not value.strip())
    )


def clean_value(value: object) -> str | None:
    """A source value as the record's primitive: a stripped ``str``, or None when empty.

    Sources disagree on types (a size may come as a number, skills as a list); records carry
    strings. Lists are joined with ``", "``; anything else that is not a scalar is dropped.
    """
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, str):
        text = value.strip()
    elif isinstance(value, (int, float)):
        text = str(value)
    elif isinstance(value, (list, tuple)):
        parts = [clean_value(v) for v in value]
        text = ", ".join(p for p in parts if p)
    else:
        return None
    return text or None

"""AroundDeal enrichment: "Corporate Website Visitor Information" looked up by IP address.

The policy lets us receive company data for every visitor but corporate *contact* data only for
visitors outside the EEA/UK, and only for a company whose country is known and outside the
EEA/UK (``Policy.region_for`` of its country is ``OTHER``). This package turns that into Beam's
own :class:`apache_beam.transforms.enrichment.Enrichment` with two source handlers:

- :mod:`transforms.enrichment.snapshot`: ``SnapshotHandler``, an offline CSV of networks
  (longest-prefix match, built once per worker process);
- :mod:`transforms.enrichment.http_client`: ``HttpHandler``, batches of IPs posted to the
  AroundDeal endpoint (retries, backoff, rate limit, in-process cache);
- :mod:`transforms.enrichment.enrich`: ``EnrichAroundDeal``, the composite the pipeline applies,
  and ``build_handler``, which picks the handler from the two command-line choices.

This module holds what the three share: the response type and the small IP/value helpers.

Why the handlers return a :class:`LookupResult` instead of counting themselves: Beam's
RequestResponseIO runs every handler call in a fresh thread (to enforce its timeout), and Beam
metrics are thread-local to the bundle, so a counter incremented inside the handler is silently
lost. The handler therefore reports what happened in the result and the join function, which runs
in the bundle's thread, turns it into counters.
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
    "MATCHED",
    "NO_MATCH",
    "IpAddress",
    "LookupResult",
    "clean_value",
    "ipv4_int",
    "is_restricted",
    "parse_ip",
]

IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

MATCHED = "matched"
NO_MATCH = "no_match"
FAILED = "failed"

# The record fields the handlers read. The values come from Parse (ip) and Geolocate (region).
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

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        # Pickled by value, in one C-level tuple: the slotted dataclass's own state functions
        # look its fields up on every call, and Beam pickles batches of results to size them.
        return LookupResult, tuple(getattr(self, f) for f in self.__slots__)


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


def __getattr__(name: str) -> Any:
    # Lazy re-exports: importing the package does not import Beam's enrichment machinery, and
    # the submodules can import the shared names above without an import cycle.
    if name in ("EnrichAroundDeal", "build_handler"):
        from transforms.enrichment import enrich

        return getattr(enrich, name)
    if name == "SnapshotHandler":
        from transforms.enrichment.snapshot import SnapshotHandler

        return SnapshotHandler
    if name == "HttpHandler":
        from transforms.enrichment.http_client import HttpHandler

        return HttpHandler
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

"""The AroundDeal HTTP protocol (version 1): what is sent, what comes back, and what it means.

Request: ``POST <url>`` with headers ``Content-Type: application/json``, ``Accept:
application/json`` and the API key in ``X-API-Key`` (header name configurable; the key is read
from an environment variable on the worker, default ``AROUNDDEAL_API_KEY``, and never logged)::

    {"items": [{"id": "0", "ip": "203.0.113.7", "fields": "company"},
               {"id": "1", "ip": "198.51.100.9", "fields": "company+contact"}]}

- ``id`` is opaque and only valid within the request (the item's position among the distinct
  lookups of the batch): no event id or other record data leaves the pipeline.
- ``ip`` is the visitor's address; an IPv4-mapped IPv6 address is sent as IPv4.
- ``fields`` is what we are allowed to receive: ``"company"`` for a restricted visitor (region
  ``EEA_UK`` or ``UNKNOWN``), ``"company+contact"`` otherwise. The same IP can appear twice in a
  batch with different ``fields`` (it is not deduplicated across the two modes).

Response ``200``::

    {"results": [{"id": "0", "match": true, "company_name": "Acme", "company_domain": "acme.test",
                  "company_industry": "...", "company_country": "US", "company_size": "51-200"},
                 {"id": "1", "match": false}]}

- One result per item, flat: the company fields and, for ``company+contact`` items, the nine
  contact fields; missing, ``null`` or empty values mean unknown. Other keys are ignored.
- ``match`` (optional): false means no company is known for the IP; when absent, a result with
  any non-empty field is a match.
- A contact field in the result of a ``"company"`` item is discarded (and counted): we must not
  keep what we did not ask for.
- An item without a result is marked failed (the response is incomplete); unknown ids are ignored.

Statuses: ``429`` and ``5xx`` are transient (:data:`TRANSIENT_STATUSES`: retried, honouring
``Retry-After``); any other status (``400``, ``401``, ``403``, ``404``...), a redirect, or a body
that is not a response of this protocol fails the batch (:func:`status_problem`,
:func:`decode_response`). How requests are retried and bounded in time is
``transforms.enrichment.http_resilience``'s business.

Where the key and the batch go: only to the configured endpoint (:func:`check_endpoint`). The
endpoint must be ``https://``: plain ``http://`` would put the key and visitor IPs on the wire in
clear, and is accepted only on loopback (``127.0.0.0/8``, ``::1``, ``localhost``), for tests.

No I/O here: this module turns lookups into bytes and bytes into results.
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Iterable, Sequence
from typing import Any
from urllib.parse import urlsplit

from transforms.enrichment.lookup import MATCHED, NO_MATCH, clean_value

__all__ = [
    "DEFAULT_API_KEY_ENV",
    "DEFAULT_API_KEY_HEADER",
    "MODE_COMPANY",
    "MODE_COMPANY_CONTACT",
    "TRANSIENT_STATUSES",
    "ResponseError",
    "check_endpoint",
    "decode_response",
    "encode_request",
    "parse_result",
    "status_problem",
]

DEFAULT_API_KEY_ENV = "AROUNDDEAL_API_KEY"
DEFAULT_API_KEY_HEADER = "X-API-Key"
MODE_COMPANY = "company"
MODE_COMPANY_CONTACT = "company+contact"
TRANSIENT_STATUSES = frozenset({429, *range(500, 600)})


class ResponseError(ValueError):
    """A response body that is not a response of the protocol."""


def check_endpoint(url: str) -> None:
    """Raise ValueError unless ``url`` is an ``https://`` URL, or ``http://`` on loopback."""
    parts = urlsplit(url or "")
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"AroundDeal endpoint must be an https:// URL, got {url!r}")
    if parts.scheme == "http" and not _is_loopback(parts.hostname):
        raise ValueError(
            f"AroundDeal endpoint http://{parts.hostname}: plain http would send the API key "
            "and visitor IPs in clear; use https (http is accepted on loopback only)"
        )


def _is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def encode_request(lookups: Iterable[tuple[str, str]]) -> bytes:
    """The body asking for ``(ip, mode)`` lookups, their ids their positions."""
    items = [{"id": str(n), "ip": ip, "fields": mode} for n, (ip, mode) in enumerate(lookups)]
    return json.dumps({"items": items}, separators=(",", ":")).encode("utf-8")


def status_problem(status: int, api_key_env: str) -> str | None:
    """None for a ``200``; else why the batch failed (for the log: no key, no visitor data)."""
    if status == 200:
        return None
    if status in (401, 403):
        return f"HTTP {status} (check the API key in ${api_key_env})"
    if 300 <= status < 400:
        return f"HTTP {status}: redirect refused (not sent anywhere else)"
    return f"HTTP {status}"


def decode_response(payload: bytes) -> dict[str, dict[str, Any]]:
    """The results of a ``200`` body by item id (the first of an id wins); raises
    :class:`ResponseError` for a body that is not a response of the protocol."""
    try:
        document = json.loads(payload)
    except (UnicodeDecodeError, ValueError):
        raise ResponseError("response is not JSON") from None
    results = document.get("results") if isinstance(document, dict) else None
    if not isinstance(results, list):
        raise ResponseError('response has no "results" list')
    by_id: dict[str, dict[str, Any]] = {}
    for result in results:
        if isinstance(result, dict) and isinstance(result.get("id"), str):
            by_id.setdefault(result["id"], result)
    return by_id


def parse_result(
    raw: dict[str, Any],
    contact: bool,
    company_fields: Sequence[str],
    contact_fields: Sequence[str],
) -> tuple[str, dict[str, Any], int]:
    """``(status, fields, contact values discarded)`` of one result; ``contact``: the item
    asked for ``company+contact``. Only declared fields are kept, contact ones only if asked."""
    fields: dict[str, Any] = {}
    for name in company_fields:
        value = clean_value(raw.get(name))
        if value is not None:
            fields[name] = value
    discarded = 0
    for name in contact_fields:
        value = clean_value(raw.get(name))
        if value is None:
            continue
        if contact:
            fields[name] = value
        else:
            discarded += 1  # sent although not requested: never kept
    match = raw.get("match")
    if match is False or (match is not True and not fields):
        return NO_MATCH, {}, discarded
    return MATCHED, fields, discarded

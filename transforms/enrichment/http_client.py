"""AroundDeal over HTTP: batches of IPs posted to a configurable endpoint.

Protocol (version 1)
--------------------
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

Failures: ``429`` and ``5xx`` (honouring ``Retry-After``, seconds or HTTP-date, on both),
timeouts and connection errors are retried with exponential backoff and jitter, within a total
time budget per batch (``deadline``); any other status (``400``, ``401``, ``403``, ``404``...)
or a malformed body is not retried. When the budget or the attempts run out the batch's results
are ``FAILED``: the handler never raises for a remote failure, because Beam's RequestResponseIO
turns any exception into a failed pipeline, and an unenriched record is better than none.

Deadlines: a socket timeout bounds one read, not a response: a server that announces a large
body and sends a byte a second never trips it. So each request has one deadline over the whole
exchange (connect, TLS, headers and body: ``request_timeout``, clamped to what is left of the
batch's budget), enforced by a timer that shuts the request's socket down when it passes (the
blocked read then ends at once); the batch has one deadline over every attempt and wait.

Where the key and the batch go: only to the configured endpoint. Redirects are never followed
(``requests`` would re-post the body and the ``X-API-Key`` header to whatever host a ``307``
names); a ``3xx`` fails the batch, unretried. The endpoint must be ``https://``: plain
``http://`` would put the key and visitor IPs on the wire in clear, and is accepted only on
loopback (``127.0.0.0/8``, ``::1``, ``localhost``), for tests.

Client-side limits: a token bucket (requests per second, burst), shared by every handler of the
process for the same endpoint; a ``Retry-After`` pauses the whole bucket. An in-process LRU cache
of answers (by IP and mode) lives as long as the handler and is dropped in ``__exit__``: visitor
IPs, restricted ones included, are never cached beyond the run (memory only, never on disk or in
Redis).
"""

from __future__ import annotations

import contextlib
import email.utils
import ipaddress
import json
import logging
import math
import os
import random
import socket
import threading
import time
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

import requests
from apache_beam.transforms.enrichment import EnrichmentSourceHandler
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

from transforms.enrichment import (
    FAILED,
    IP_FIELD,
    MATCHED,
    NO_MATCH,
    LookupResult,
    clean_value,
    is_restricted,
    parse_ip,
)

__all__ = [
    "DEFAULT_API_KEY_ENV",
    "DEFAULT_API_KEY_HEADER",
    "MODE_COMPANY",
    "MODE_COMPANY_CONTACT",
    "HttpHandler",
    "TokenBucket",
    "check_endpoint",
    "parse_retry_after",
]

_LOGGER = logging.getLogger(__name__)

DEFAULT_API_KEY_ENV = "AROUNDDEAL_API_KEY"
DEFAULT_API_KEY_HEADER = "X-API-Key"
MODE_COMPANY = "company"
MODE_COMPANY_CONTACT = "company+contact"
_SAFETY_MARGIN_S = 5.0


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


class _Deadline:
    """One request's deadline over the whole exchange: when it passes, every socket the request
    opened or used is shut down, which ends a read blocked on it at once.

    The sockets are registered by the connections of :class:`_DeadlineAdapter` (a new socket as
    it is created, before connecting; a pooled one as a request starts on it), for the deadline
    the current thread set with ``with``."""

    _current = threading.local()

    def __init__(self, seconds: float) -> None:
        self.expired = False
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        self._timer = threading.Timer(max(seconds, 0.0), self._expire)
        self._timer.daemon = True

    def __enter__(self) -> _Deadline:
        _Deadline._current.deadline = self
        self._timer.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._timer.cancel()
        _Deadline._current.deadline = None

    @classmethod
    def watch(cls, sock: socket.socket | None) -> None:
        """Put ``sock`` under the current thread's deadline (if any)."""
        deadline = getattr(cls._current, "deadline", None)
        if deadline is None or sock is None:
            return
        with deadline._lock:
            deadline._sockets.append(sock)
            expired = deadline.expired
        if expired:
            _shut(sock)

    def _expire(self) -> None:
        with self._lock:
            self.expired = True
            sockets = list(self._sockets)
        for sock in sockets:
            _shut(sock)


def _shut(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):  # already closed
        sock.shutdown(socket.SHUT_RDWR)


class _Watched:
    """Connection mixin: registers its sockets with the thread's :class:`_Deadline`."""

    def _new_conn(self) -> socket.socket:
        sock = super()._new_conn()
        _Deadline.watch(sock)
        return sock

    def request(self, *args: Any, **kwargs: Any) -> None:
        _Deadline.watch(self.sock)  # a pooled connection's socket (None: connects in there)
        return super().request(*args, **kwargs)


class _WatchedHTTPConnection(_Watched, HTTPConnection):
    pass


class _WatchedHTTPSConnection(_Watched, HTTPSConnection):
    pass


class _WatchedHTTPPool(HTTPConnectionPool):
    ConnectionCls = _WatchedHTTPConnection


class _WatchedHTTPSPool(HTTPSConnectionPool):
    ConnectionCls = _WatchedHTTPSConnection


class _DeadlineAdapter(HTTPAdapter):
    """``requests``' adapter with connections whose sockets a :class:`_Deadline` can cut."""

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = {
            "http": _WatchedHTTPPool,
            "https": _WatchedHTTPSPool,
        }


class TokenBucket:
    """A rate limiter (GCRA form of a token bucket): ``rate`` requests/s, bursts of ``burst``.

    Thread-safe. :meth:`reserve` books the next free slot and says how long to wait for it, so
    concurrent callers are spaced out instead of all waking at once. :meth:`pause_until` holds
    every caller back, which is how a ``Retry-After`` from the server applies process-wide.
    """

    def __init__(self, rate: float, burst: int = 1) -> None:
        if rate <= 0 or not math.isfinite(rate):
            raise ValueError(f"rate must be a positive number of requests/s, got {rate}")
        if burst < 1:
            raise ValueError(f"burst must be >= 1, got {burst}")
        self.rate = rate
        self.burst = burst
        self._interval = 1.0 / rate
        self._tolerance = (burst - 1) * self._interval
        self._tat = 0.0  # theoretical arrival time of the next request (monotonic clock)
        self._paused_until = 0.0
        self._lock = threading.Lock()

    def reserve(self, max_wait: float) -> float | None:
        """Books a slot; returns the seconds to wait before using it, or None (nothing booked)
        if the wait would exceed ``max_wait``."""
        with self._lock:
            now = time.monotonic()
            start = max(now, self._paused_until)
            tat = max(self._tat, start)
            send_at = max(start, tat - self._tolerance)
            wait = send_at - now
            if wait > max_wait:
                return None
            self._tat = tat + self._interval
            return wait

    def pause_until(self, when: float) -> None:
        """No slot before ``when`` (a ``time.monotonic()`` value)."""
        with self._lock:
            self._paused_until = max(self._paused_until, when)


_BUCKETS: dict[tuple[str, float, int], TokenBucket] = {}
_BUCKETS_LOCK = threading.Lock()


def _shared_bucket(url: str, rate: float, burst: int) -> TokenBucket:
    """The process-wide bucket for an endpoint: all DoFn instances of a worker share one limit."""
    with _BUCKETS_LOCK:
        key = (url, rate, burst)
        bucket = _BUCKETS.get(key)
        if bucket is None:
            bucket = _BUCKETS[key] = TokenBucket(rate, burst)
        return bucket


def parse_retry_after(value: str | None, now: datetime | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds or HTTP-date), or None."""
    if value is None:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        seconds = (when - (now or datetime.now(UTC))).total_seconds()
    if not math.isfinite(seconds):
        return None
    return max(0.0, seconds)


@dataclass(frozen=True)
class _Outcome:
    results: dict[str, dict[str, Any]] | None  # None: the batch failed
    requests: int
    retries: int


class _RetryableError(Exception):
    def __init__(self, reason: str, retry_after: float | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retry_after = retry_after


class _FatalError(Exception):
    pass


class HttpHandler(EnrichmentSourceHandler[Any, Any]):
    """Looks visit records up at the AroundDeal HTTP endpoint (protocol: module docstring).

    Args:
      url: the endpoint: ``https://`` (``http://`` on loopback only, for tests).
      company_fields, contact_fields: the fields to keep (from the policy); contact fields are
        requested, and kept, for unrestricted visitors only.
      batch_size: records per HTTP request (Beam's BatchElements builds the batches).
      api_key_env: environment variable holding the API key, read on the worker in
        ``__enter__``; a missing key fails the setup with a clear error rather than sending
        thousands of unauthenticated requests.
      api_key_header: the header carrying the key.
      connect_timeout, read_timeout: per socket operation, seconds (clamped to the request's
        deadline).
      request_timeout: the deadline of one request over the whole exchange (connect, headers,
        body), seconds; default ``connect_timeout + read_timeout``.
      max_attempts: attempts per batch, the first included.
      backoff_base, backoff_cap: exponential backoff ``min(cap, base * 2**n)`` with jitter (a
        random half of it), seconds.
      max_retry_after: a longer ``Retry-After`` fails the batch instead of stalling the worker.
      deadline: total budget per batch, seconds, waits and attempts included; default every
        attempt's ``request_timeout`` plus a ``backoff_cap`` between two of them.
      requests_per_second, burst: the client-side rate limit, per worker process.
      cache_size: LRU entries of the in-process answer cache (0 disables it).
      max_response_bytes: a larger response body fails the attempt.

    Called with a list of records (the normal, batched case) it returns a list of
    ``(record, LookupResult)`` in order; with one record, one pair.
    """

    use_custom_types = True

    def __init__(
        self,
        url: str,
        company_fields: Iterable[str],
        contact_fields: Iterable[str],
        *,
        batch_size: int = 100,
        api_key_env: str = DEFAULT_API_KEY_ENV,
        api_key_header: str = DEFAULT_API_KEY_HEADER,
        connect_timeout: float = 3.05,
        read_timeout: float = 10.0,
        request_timeout: float | None = None,
        max_attempts: int = 4,
        backoff_base: float = 0.5,
        backoff_cap: float = 8.0,
        max_retry_after: float = 30.0,
        deadline: float | None = None,
        requests_per_second: float = 10.0,
        burst: int = 1,
        cache_size: int = 65536,
        max_response_bytes: int = 16 * 1024 * 1024,
    ) -> None:
        check_endpoint(url)
        if request_timeout is None:
            request_timeout = connect_timeout + read_timeout
        if deadline is None:
            deadline = max_attempts * request_timeout + (max_attempts - 1) * backoff_cap
        for name, value in (
            ("connect_timeout", connect_timeout),
            ("read_timeout", read_timeout),
            ("request_timeout", request_timeout),
            ("deadline", deadline),
            ("requests_per_second", requests_per_second),
        ):
            if not value > 0:
                raise ValueError(f"HttpHandler: {name} must be > 0, got {value}")
        for name, value in (
            ("backoff_base", backoff_base),
            ("backoff_cap", backoff_cap),
            ("max_retry_after", max_retry_after),
        ):
            if value < 0:
                raise ValueError(f"HttpHandler: {name} must be >= 0, got {value}")
        if max_attempts < 1 or batch_size < 1 or burst < 1:
            raise ValueError("HttpHandler: max_attempts, batch_size and burst must be >= 1")
        if cache_size < 0 or max_response_bytes < 1:
            raise ValueError("HttpHandler: cache_size must be >= 0, max_response_bytes >= 1")
        if not api_key_env or not api_key_header:
            raise ValueError("HttpHandler: api_key_env and api_key_header are required")
        self.url = url
        self.company_fields = tuple(company_fields)
        self.contact_fields = tuple(contact_fields)
        self.batch_size = batch_size
        self.api_key_env = api_key_env
        self.api_key_header = api_key_header
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self.request_timeout = request_timeout
        self.max_attempts = max_attempts
        self.backoff_base = backoff_base
        self.backoff_cap = backoff_cap
        self.max_retry_after = max_retry_after
        self.deadline = deadline
        self.requests_per_second = requests_per_second
        self.burst = burst
        self.cache_size = cache_size
        self.max_response_bytes = max_response_bytes
        self._reset_runtime()

    def _reset_runtime(self) -> None:
        self._session: requests.Session | None = None
        self._api_key: str | None = None
        self._bucket: TokenBucket | None = None
        self._cache: OrderedDict[tuple[str, str], tuple[str, dict[str, Any]]] = OrderedDict()
        self._cache_lock = threading.Lock()

    # -- lifecycle -------------------------------------------------------------------------

    def __getstate__(self) -> dict[str, Any]:
        # Ship configuration only: no key, session, cache (visitor IPs) or lock.
        runtime = ("_session", "_api_key", "_bucket", "_cache", "_cache_lock")
        return {k: v for k, v in self.__dict__.items() if k not in runtime}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._reset_runtime()

    def __enter__(self) -> HttpHandler:
        api_key = os.environ.get(self.api_key_env, "").strip()
        if not api_key:
            raise RuntimeError(
                f"AroundDeal HTTP enrichment: environment variable {self.api_key_env} "
                "(the API key) is not set on this worker"
            )
        session = requests.Session()
        adapter = _DeadlineAdapter(pool_connections=1, pool_maxsize=4, max_retries=0)
        session.mount("http://", adapter)
        session.mount("https://", adapter)
        session.headers.update(
            {
                "Content-Type": "application/json",
                "Accept": "application/json",
                "User-Agent": "compliance-ingestion-arounddeal/1",
            }
        )
        self._api_key = api_key
        self._session = session
        self._bucket = _shared_bucket(self.url, self.requests_per_second, self.burst)
        return self

    def __exit__(self, exc_type: Any, exc_val: Any, exc_tb: Any) -> None:
        if self._session is not None:
            self._session.close()
        with self._cache_lock:
            self._cache.clear()
        self._session = None
        self._api_key = None

    def __str__(self) -> str:
        # RequestResponseIO names its metrics namespace after str(caller): no URL with secrets.
        return "HttpHandler"

    __repr__ = __str__

    def batch_elements_kwargs(self) -> Mapping[str, Any]:
        return {"min_batch_size": self.batch_size, "max_batch_size": self.batch_size}

    def max_call_seconds(self) -> float:
        """Upper bound for one call (a batch): every wait and attempt is kept within
        ``deadline`` (an attempt's own deadline is clamped to what is left of it)."""
        return self.deadline + _SAFETY_MARGIN_S

    def get_cache_key(self, request: Any) -> str:
        # Enrichment's Redis cache must not be used: it would persist visitor IPs beyond the run.
        raise NotImplementedError("the AroundDeal HTTP handler does not support a Redis cache")

    # -- lookups ---------------------------------------------------------------------------

    def __call__(self, request: Any, *args: Any, **kwargs: Any) -> Any:
        if self._session is None:
            self.__enter__()
        if isinstance(request, list):
            return list(zip(request, self._lookup_batch(request), strict=True))
        return request, self._lookup_batch([request])[0]

    def _mode(self, record: dict[str, Any]) -> str:
        if self.contact_fields and not is_restricted(record):
            return MODE_COMPANY_CONTACT
        return MODE_COMPANY

    def _lookup_batch(self, records: list[dict[str, Any]]) -> list[LookupResult]:
        results: list[LookupResult | None] = [None] * len(records)
        pending: dict[tuple[str, str], list[int]] = {}
        for i, record in enumerate(records):
            mode = self._mode(record)
            contact = mode == MODE_COMPANY_CONTACT
            address = parse_ip(record.get(IP_FIELD))
            if address is None:
                results[i] = LookupResult(NO_MATCH, contact_requested=contact, invalid_ip=True)
                continue
            key = (str(address), mode)
            cached = self._cache_get(key)
            if cached is not None:
                status, fields = cached
                results[i] = LookupResult(
                    status, dict(fields), contact_requested=contact, cache_hit=True
                )
                continue
            pending.setdefault(key, []).append(i)

        if pending:
            items = [
                {"id": str(n), "ip": ip, "fields": mode} for n, (ip, mode) in enumerate(pending)
            ]
            outcome = self._post(items)
            missing = 0
            first = True
            for n, (key, positions) in enumerate(pending.items()):
                contact = key[1] == MODE_COMPANY_CONTACT
                raw = None if outcome.results is None else outcome.results.get(str(n))
                if raw is None:
                    missing += outcome.results is not None
                    status, fields, discarded = FAILED, {}, 0
                else:
                    status, fields, discarded = self._parse_result(raw, contact)
                    self._cache_put(key, (status, fields))
                for j, i in enumerate(positions):
                    results[i] = LookupResult(
                        status,
                        dict(fields),
                        contact_requested=contact,
                        source_calls=outcome.requests if first else 0,
                        retries=outcome.retries if first else 0,
                        contact_fields_discarded=discarded if j == 0 else 0,
                    )
                    first = False
            if missing:
                _LOGGER.warning(
                    "AroundDeal response had no result for %d of %d items; marked failed",
                    missing,
                    len(items),
                )
        return [r for r in results if r is not None]

    def _parse_result(self, raw: dict[str, Any], contact: bool) -> tuple[str, dict[str, Any], int]:
        fields: dict[str, Any] = {}
        for name in self.company_fields:
            value = clean_value(raw.get(name))
            if value is not None:
                fields[name] = value
        discarded = 0
        for name in self.contact_fields:
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

    # -- cache -----------------------------------------------------------------------------

    def _cache_get(self, key: tuple[str, str]) -> tuple[str, dict[str, Any]] | None:
        if not self.cache_size:
            return None
        with self._cache_lock:
            value = self._cache.get(key)
            if value is not None:
                self._cache.move_to_end(key)
            return value

    def _cache_put(self, key: tuple[str, str], value: tuple[str, dict[str, Any]]) -> None:
        if not self.cache_size:
            return
        with self._cache_lock:
            self._cache[key] = value
            self._cache.move_to_end(key)
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)

    # -- HTTP ------------------------------------------------------------------------------

    def _backoff(self, retry: int) -> float:
        delay = min(self.backoff_cap, self.backoff_base * (2**retry))
        return delay / 2 + random.uniform(0, delay / 2)

    def _post(self, items: list[dict[str, str]]) -> _Outcome:
        """Sends one batch with retries; never raises for a remote failure."""
        assert self._bucket is not None
        body = json.dumps({"items": items}, separators=(",", ":")).encode("utf-8")
        deadline = time.monotonic() + self.deadline
        requests_made = 0
        reason = "not sent"
        for attempt in range(self.max_attempts):
            wait = self._bucket.reserve(max_wait=deadline - time.monotonic())
            if wait is None:
                reason = f"{reason}; rate limit wait exceeds the time budget"
                break
            time.sleep(wait)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                reason = f"{reason}; time budget exhausted"
                break
            requests_made += 1
            try:
                results = self._attempt(body, remaining)
            except _FatalError as e:
                reason = str(e)
                break
            except _RetryableError as e:
                reason = e.reason
                if attempt + 1 >= self.max_attempts:
                    break
                if e.retry_after is not None:
                    if e.retry_after > self.max_retry_after:
                        reason = f"{reason}; Retry-After {e.retry_after:.0f}s too long"
                        break
                    self._bucket.pause_until(time.monotonic() + e.retry_after)
                    delay = e.retry_after
                else:
                    delay = self._backoff(attempt)
                if time.monotonic() + delay >= deadline:
                    reason = f"{reason}; time budget exhausted"
                    break
                time.sleep(delay)
                continue
            return _Outcome(results, requests_made, requests_made - 1)
        _LOGGER.warning(
            "AroundDeal lookup failed for a batch of %d items after %d request(s): %s",
            len(items),
            requests_made,
            reason,
        )
        return _Outcome(None, requests_made, max(0, requests_made - 1))

    def _attempt(self, body: bytes, remaining: float) -> dict[str, dict]:
        """One request, cut at its deadline: ``request_timeout`` or what is ``remaining`` of the
        batch's budget, whichever is sooner."""
        budget = min(self.request_timeout, remaining)
        with _Deadline(budget) as deadline:
            try:
                return self._exchange(body, budget)
            except _RetryableError:
                if deadline.expired:
                    raise _RetryableError(f"no complete response within {budget:.1f}s") from None
                raise

    def _exchange(self, body: bytes, budget: float) -> dict[str, dict]:
        assert self._session is not None and self._api_key is not None
        timeout = (min(self.connect_timeout, budget), min(self.read_timeout, budget))
        transient = (
            requests.exceptions.Timeout,
            requests.exceptions.ConnectionError,
            requests.exceptions.ChunkedEncodingError,
        )
        try:
            response = self._session.post(
                self.url,
                data=body,
                headers={self.api_key_header: self._api_key},
                timeout=timeout,
                stream=True,
                allow_redirects=False,  # the key and the batch go to this endpoint only
            )
        except transient as e:
            raise _RetryableError(type(e).__name__) from None
        except requests.exceptions.RequestException as e:
            raise _FatalError(type(e).__name__) from None
        with response:
            status = response.status_code
            if status == 429 or status >= 500:
                retry_after = parse_retry_after(response.headers.get("Retry-After"))
                raise _RetryableError(f"HTTP {status}", retry_after)
            if status in (401, 403):
                raise _FatalError(f"HTTP {status} (check the API key in ${self.api_key_env})")
            if 300 <= status < 400:
                raise _FatalError(f"HTTP {status}: redirect refused (not sent anywhere else)")
            if status != 200:
                raise _FatalError(f"HTTP {status}")
            try:
                chunks = []
                size = 0
                for chunk in response.iter_content(chunk_size=65536):
                    size += len(chunk)
                    if size > self.max_response_bytes:
                        raise _FatalError(f"response larger than {self.max_response_bytes} bytes")
                    chunks.append(chunk)
            except transient as e:
                raise _RetryableError(type(e).__name__) from None
        return self._decode(b"".join(chunks))

    @staticmethod
    def _decode(payload: bytes) -> dict[str, dict]:
        try:
            document = json.loads(payload)
        except (UnicodeDecodeError, ValueError):
            raise _FatalError("response is not JSON") from None
        results = document.get("results") if isinstance(document, dict) else None
        if not isinstance(results, list):
            raise _FatalError('response has no "results" list')
        by_id: dict[str, dict] = {}
        for result in results:
            if isinstance(result, dict) and isinstance(result.get("id"), str):
                by_id.setdefault(result["id"], result)
        return by_id

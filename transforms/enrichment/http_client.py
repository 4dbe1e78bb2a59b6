"""AroundDeal over HTTP: the handler that looks visitors up at the endpoint, and its provider.

The handler (:class:`HttpHandler`) turns a call's request records into distinct lookups (an IP
and a mode, company data only for a restricted visitor), answers repeats from its cache, and
posts the rest as one request. What goes over the wire and what a response means is
:mod:`transforms.enrichment.http_protocol`; retries, deadlines and the rate limit are
:mod:`transforms.enrichment.http_resilience`. ``EnrichAroundDeal`` calls the handler with at
most ``batch_size`` records at a time (``--enrichment_batch_size``): one HTTP request each, plus
its retries.

A failed batch (the budget or the attempts ran out, a status that is not retried, a malformed
body) gives ``FAILED`` results: the handler never raises for a remote failure, since an
unenriched record is better than a failed pipeline.

Cache: an in-process LRU of answers (by IP and mode) lives as long as the handler is entered
and is dropped in ``__exit__``: visitor IPs, restricted ones included, are never cached beyond
the run (memory only, never on disk or in a shared cache such as Beam's Redis one). The API key
is read from the environment on the worker in ``__enter__`` and is never pickled or logged.

The provider (:class:`HttpProvider`) is chosen by ``--enrichment_url``.
"""

from __future__ import annotations

import argparse
import logging
import os
import threading
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from apache_beam.utils.shared import Shared

from transforms.enrichment.http_protocol import (
    DEFAULT_API_KEY_ENV,
    DEFAULT_API_KEY_HEADER,
    MODE_COMPANY,
    MODE_COMPANY_CONTACT,
    ResponseError,
    check_endpoint,
    decode_response,
    encode_request,
    parse_result,
    status_problem,
)
from transforms.enrichment.http_resilience import Endpoint, TokenBucket
from transforms.enrichment.lookup import (
    FAILED,
    IP_FIELD,
    NO_MATCH,
    LookupResult,
    is_restricted,
    parse_ip,
)
from transforms.enrichment.providers import EnrichmentFields

__all__ = ["HttpHandler", "HttpProvider"]

_LOGGER = logging.getLogger(__name__)

# What one call may take beyond its batch's budget (the rate-limit and thread handoffs).
_SAFETY_MARGIN_S = 5.0
# The handler's settings that are its Endpoint's (http_resilience), by the same names.
_RESILIENCE = (
    "connect_timeout",
    "read_timeout",
    "request_timeout",
    "max_attempts",
    "backoff_base",
    "backoff_cap",
    "max_retry_after",
    "deadline",
    "max_response_bytes",
)


class HttpHandler:
    """Looks visit records up at the AroundDeal HTTP endpoint (see the module docstring).

    Args:
      url: the endpoint: ``https://`` (``http://`` on loopback only, for tests).
      company_fields, contact_fields: the fields to keep (from the policy); contact fields are
        requested, and kept, for unrestricted visitors only.
      batch_size: request records per call, hence per HTTP request.
      api_key_env: environment variable holding the API key, read on the worker in
        ``__enter__``; a missing key fails the setup with a clear error rather than sending
        thousands of unauthenticated requests.
      api_key_header: the header carrying the key.
      connect_timeout, read_timeout: per socket operation, seconds (within the request's
        deadline).
      request_timeout: the deadline of one request over the whole exchange (connect, headers,
        body), seconds; default ``connect_timeout + read_timeout``.
      max_attempts: attempts per batch, the first included.
      backoff_base, backoff_cap: urllib3's exponential backoff (no wait before the first retry,
        then ``backoff_base * 2**(n-1)`` plus up to ``backoff_base`` of jitter), at most
        ``backoff_cap`` seconds.
      max_retry_after: a longer ``Retry-After`` fails the batch instead of stalling the worker.
      deadline: total budget per batch, seconds, waits and attempts included; default every
        attempt's ``request_timeout`` plus a ``backoff_cap`` between two of them.
      requests_per_second, burst: the client-side rate limit, per worker process.
      cache_size: LRU entries of the in-process answer cache (0 disables it).
      max_response_bytes: a larger response body fails the batch.
    """

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
        # One rate limit per handler, shared by its pickled copies (one per DoFn instance).
        self._shared_bucket = Shared()
        self._reset_runtime()

    def _reset_runtime(self) -> None:
        self._endpoint: Endpoint | None = None
        self._api_key: str | None = None
        self._bucket: TokenBucket | None = None
        self._cache: OrderedDict[tuple[str, str], tuple[str, dict[str, Any]]] = OrderedDict()
        self._cache_lock = threading.Lock()

    # -- lifecycle -------------------------------------------------------------------------

    def __getstate__(self) -> dict[str, Any]:
        # Ship configuration only: no key, connections, cache (visitor IPs) or lock.
        runtime = ("_endpoint", "_api_key", "_bucket", "_cache", "_cache_lock")
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
        rate, burst = self.requests_per_second, self.burst
        self._bucket = self._shared_bucket.acquire(lambda: TokenBucket(rate, burst))
        resilience = {name: getattr(self, name) for name in _RESILIENCE}
        self._endpoint = Endpoint(self.url, self._bucket, **resilience)
        self._api_key = api_key
        return self

    def __exit__(self, exc_type: Any, exc_val: Any, exc_tb: Any) -> None:
        if self._endpoint is not None:
            self._endpoint.close()
        with self._cache_lock:
            self._cache.clear()
        self._endpoint = None
        self._api_key = None

    def __str__(self) -> str:
        # Never the URL: it may carry secrets.
        return "HttpHandler"

    __repr__ = __str__

    def max_call_seconds(self) -> float:
        """Upper bound for one call (a batch): every wait and attempt is kept within
        ``deadline`` (an attempt's own deadline is clamped to what is left of it)."""
        return self.deadline + _SAFETY_MARGIN_S

    # -- lookups ---------------------------------------------------------------------------

    def lookup(self, requests: Sequence[Mapping[str, Any]]) -> list[LookupResult]:
        """One result per request record (``ip`` and ``region``), in order: one HTTP request
        for the distinct lookups the cache cannot answer."""
        if self._endpoint is None:
            self.__enter__()
        results: list[LookupResult | None] = [None] * len(requests)
        pending: dict[tuple[str, str], list[int]] = {}
        for i, record in enumerate(requests):
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
            self._ask(pending, results)
        return [r for r in results if r is not None]

    def _mode(self, record: Mapping[str, Any]) -> str:
        if self.contact_fields and not is_restricted(record):
            return MODE_COMPANY_CONTACT
        return MODE_COMPANY

    def _ask(
        self, pending: dict[tuple[str, str], list[int]], results: list[LookupResult | None]
    ) -> None:
        """Posts the ``pending`` lookups and fills in the results of their positions."""
        answers, calls = self._post(list(pending))
        missing = 0
        first = True
        for n, (key, positions) in enumerate(pending.items()):
            contact = key[1] == MODE_COMPANY_CONTACT
            raw = None if answers is None else answers.get(str(n))
            if raw is None:
                missing += answers is not None
                status, fields, discarded = FAILED, {}, 0
            else:
                status, fields, discarded = parse_result(
                    raw, contact, self.company_fields, self.contact_fields
                )
                self._cache_put(key, (status, fields))
            for j, i in enumerate(positions):
                results[i] = LookupResult(
                    status,
                    dict(fields),
                    contact_requested=contact,
                    source_calls=calls if first else 0,
                    retries=max(0, calls - 1) if first else 0,
                    contact_fields_discarded=discarded if j == 0 else 0,
                )
                first = False
        if missing:
            _LOGGER.warning(
                "AroundDeal response had no result for %d of %d items; marked failed",
                missing,
                len(pending),
            )

    def _post(self, lookups: list[tuple[str, str]]) -> tuple[dict[str, dict] | None, int]:
        """The results by item id (None: the batch failed) and the HTTP requests it took."""
        assert self._endpoint is not None and self._api_key is not None
        headers = {
            "Content-Type": "application/json",
            "Accept": "application/json",
            "User-Agent": "compliance-ingestion-arounddeal/1",
            self.api_key_header: self._api_key,
        }
        outcome = self._endpoint.post(encode_request(lookups), headers)
        problem = outcome.failure
        if not problem and outcome.status is not None:
            problem = status_problem(outcome.status, self.api_key_env) or ""
        if not problem:
            try:
                return decode_response(outcome.body or b""), outcome.requests
            except ResponseError as e:
                problem = str(e)
        _LOGGER.warning(
            "AroundDeal lookup failed for a batch of %d items after %d request(s): %s",
            len(lookups),
            outcome.requests,
            problem or "not sent",
        )
        return None, outcome.requests

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


class HttpProvider:
    """The HTTP endpoint as an enrichment source: ``--enrichment_url URL`` and its options."""

    name = "http"
    flag = "enrichment_url"

    def add_flags(self, parser: argparse.ArgumentParser) -> None:
        """``--enrichment_url`` and the HTTP options."""
        parser.add_argument(
            "--enrichment_url",
            default=None,
            help="AroundDeal HTTP endpoint that takes batches of IPs (protocol: "
            "transforms/enrichment/http_protocol.py). Mutually exclusive with "
            "--enrichment_snapshot.",
        )
        parser.add_argument(
            "--enrichment_api_key_env",
            default=DEFAULT_API_KEY_ENV,
            help="Environment variable holding the AroundDeal API key (never pass the key itself "
            f"on the command line). Default: {DEFAULT_API_KEY_ENV}.",
        )
        parser.add_argument(
            "--enrichment_timeout",
            type=float,
            default=5.0,
            help="Seconds one HTTP enrichment request may take in all (connect, headers and "
            "body) before it is cut and retried.",
        )
        parser.add_argument(
            "--enrichment_max_retries",
            type=int,
            default=3,
            help="Retries of a failed HTTP enrichment request (timeouts, 429, 5xx), with "
            "exponential backoff; after them the visits are written without enrichment.",
        )
        parser.add_argument(
            "--enrichment_rate_limit",
            type=float,
            default=10.0,
            help="Maximum HTTP enrichment requests per second, per worker process.",
        )
        parser.add_argument(
            "--enrichment_batch_size",
            type=int,
            default=100,
            help="IPs per HTTP enrichment request.",
        )

    def build(self, options: Any, fields: EnrichmentFields) -> HttpHandler:
        """The handler of the options (the endpoint and every value checked now)."""
        return HttpHandler(
            options.enrichment_url,
            fields.company_fields,
            fields.contact_fields,
            batch_size=options.enrichment_batch_size,
            api_key_env=options.enrichment_api_key_env,
            read_timeout=options.enrichment_timeout,
            request_timeout=options.enrichment_timeout,
            max_attempts=options.enrichment_max_retries + 1,
            requests_per_second=options.enrichment_rate_limit,
        )

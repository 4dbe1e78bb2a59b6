"""HttpHandler against a real HTTP server on 127.0.0.1 (tests/support/arounddeal_server.py): the
protocol, the cache, urllib3's retries held to the batch's budget, the deadlines, the rate limit
and the secrets.

Nothing here measures wall-clock speed: spacing and back-off are asserted on the arrival times
the server records, and short timeouts keep the whole module quick."""

from __future__ import annotations

import itertools
import pickle
import socket
import threading
import time
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import pytest

from tests.support.arounddeal_server import (
    COMPANY_FIELDS,
    CONTACT_FIELDS,
    Action,
    AroundDealServer,
)
from transforms.enrichment import FAILED, MATCHED, NO_MATCH, LookupResult
from transforms.enrichment.http_client import HttpHandler
from transforms.enrichment.http_protocol import MODE_COMPANY, MODE_COMPANY_CONTACT
from transforms.enrichment.http_resilience import BatchRetry, TokenBucket

KEY_ENV = "AROUNDDEAL_TEST_KEY"
KEY = "test-key-3f9c1a"

ACME = {
    "company_name": "Acme",
    "company_domain": "acme.test",
    "company_industry": "Software",
    "company_country": "US",
    "company_size": "51-200",
}
ACME_CONTACT = {
    "contact_name": "Ada Example",
    "business_email": "ada@acme.test",
    "business_phone": "+1 555 0100",
    "business_location": "Austin, TX",
    "business_function": "Engineering",
    "seniority_level": "C-Level",
    "job_title": "CTO",
    "linkedin_url": "https://linkedin.test/in/ada",
    "business_skills": "Python, Beam",
}
COMPANIES = {
    "203.0.113.7": {**ACME, **ACME_CONTACT},
    "203.0.113.8": {**ACME, "company_name": "Acme Two", "job_title": "VP"},
    "2001:db8::7": {**ACME, "company_name": "Acme Six"},
}


@pytest.fixture()
def server():
    with AroundDealServer(COMPANIES) as s:
        yield s


@pytest.fixture(autouse=True)
def api_key(monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv(KEY_ENV, KEY)
    return KEY


def make_handler(url: str, **overrides) -> HttpHandler:
    options = {
        "api_key_env": KEY_ENV,
        "connect_timeout": 1.0,
        "read_timeout": 0.5,
        "max_attempts": 4,
        "backoff_base": 0.01,
        "backoff_cap": 0.05,
        "max_retry_after": 2.0,
        "deadline": 10.0,
        "requests_per_second": 1000.0,
        "burst": 1000,
        **overrides,
    }
    return HttpHandler(url, COMPANY_FIELDS, CONTACT_FIELDS, **options)


def visit(ip: str | None, region: str | None = "OTHER", n: int = 0) -> dict:
    return {"event_id": f"evt-{n}-{ip}", "ip": ip, "region": region}


def results_of(handler: HttpHandler, records: list[dict]):
    results = handler.lookup(records)
    assert len(results) == len(records)
    return results


# -- protocol --------------------------------------------------------------------------------


def test_restricted_visitors_ask_for_company_data_only(server: AroundDealServer) -> None:
    records = [
        visit("203.0.113.7", "OTHER", 1),
        visit("203.0.113.7", "EEA_UK", 2),
        visit("203.0.113.8", "UNKNOWN", 3),
        visit("2001:db8::7", None, 4),
    ]
    with make_handler(server.url) as handler:
        results = results_of(handler, records)

    (request,) = server.requests
    assert request.headers["X-API-Key"] == KEY
    assert request.headers["Content-Type"] == "application/json"
    sent = {(item["ip"], item["fields"]) for item in request.items}
    assert sent == {
        ("203.0.113.7", MODE_COMPANY_CONTACT),
        ("203.0.113.7", MODE_COMPANY),
        ("203.0.113.8", MODE_COMPANY),
        ("2001:db8::7", MODE_COMPANY),
    }
    # Ids are opaque: nothing of the record but the IP leaves the pipeline.
    assert all(set(item) == {"id", "ip", "fields"} for item in request.items)
    assert not any("evt" in item["id"] for item in request.items)

    assert results[0].status == MATCHED
    assert results[0].contact_requested
    assert results[0].fields == {**ACME, **ACME_CONTACT}
    for result in results[1:]:
        assert result.status == MATCHED
        assert not result.contact_requested
        assert not set(result.fields) & set(CONTACT_FIELDS)
    assert results[1].fields == ACME
    assert results[0].source_calls == 1
    assert sum(r.source_calls for r in results) == 1  # one HTTP request for the batch


def test_contact_fields_sent_although_not_asked_are_discarded(server: AroundDealServer) -> None:
    server.set_leak_contact(True)
    records = [visit("203.0.113.7", "EEA_UK"), visit("203.0.113.8", "UNKNOWN")]
    with make_handler(server.url) as handler:
        restricted, unknown = results_of(handler, records)
    assert all(item["fields"] == MODE_COMPANY for item in server.requests[0].items)
    assert restricted.fields == ACME
    assert restricted.contact_fields_discarded == len(ACME_CONTACT)
    assert unknown.fields == {**ACME, "company_name": "Acme Two"}
    assert unknown.contact_fields_discarded == 1


def test_undeclared_keys_in_results_are_dropped(server: AroundDealServer) -> None:
    server.set_extra_keys({"visitor_email": "someone@private.test", "score": 99})
    with make_handler(server.url) as handler:
        (result,) = results_of(handler, [visit("203.0.113.7")])
    assert set(result.fields) <= set(COMPANY_FIELDS) | set(CONTACT_FIELDS)


def test_no_match_and_invalid_ip(server: AroundDealServer) -> None:
    records = [visit("198.51.100.1"), visit("not-an-ip"), visit(None)]
    with make_handler(server.url) as handler:
        unknown, invalid, missing = results_of(handler, records)
    assert unknown.status == NO_MATCH
    assert unknown.fields == {}
    assert invalid.status == missing.status == NO_MATCH
    assert invalid.invalid_ip and missing.invalid_ip
    assert [item["ip"] for item in server.requests[0].items] == ["198.51.100.1"]


def test_ipv4_mapped_addresses_are_sent_as_ipv4(server: AroundDealServer) -> None:
    with make_handler(server.url) as handler:
        (result,) = results_of(handler, [visit("::ffff:203.0.113.7")])
    assert server.requests[0].items[0]["ip"] == "203.0.113.7"
    assert result.fields["company_name"] == "Acme"


def test_incomplete_response_marks_missing_items_failed(server: AroundDealServer) -> None:
    server.set_omit_ids({"1"})
    records = [visit("203.0.113.7"), visit("203.0.113.8")]
    with make_handler(server.url) as handler:
        first, second = results_of(handler, records)
    assert first.status == MATCHED
    assert second.status == FAILED
    assert len(server.requests) == 1


def test_duplicates_in_a_batch_are_sent_once(server: AroundDealServer) -> None:
    records = [visit("203.0.113.7", n=1), visit("203.0.113.7", n=2), visit("203.0.113.7", n=3)]
    with make_handler(server.url) as handler:
        results = results_of(handler, records)
    assert len(server.requests[0].items) == 1
    assert [r.status for r in results] == [MATCHED] * 3
    assert sum(r.source_calls for r in results) == 1


# -- cache -----------------------------------------------------------------------------------


def test_cache_answers_repeats_and_is_dropped_on_exit(server: AroundDealServer) -> None:
    handler = make_handler(server.url)
    with handler:
        (first,) = results_of(handler, [visit("203.0.113.7")])
        (second,) = results_of(handler, [visit("203.0.113.7", n=2)])
        (restricted,) = results_of(handler, [visit("203.0.113.7", "EEA_UK")])
    assert len(server.requests) == 2  # the restricted lookup is its own cache entry
    assert not first.cache_hit and second.cache_hit
    assert second.fields == first.fields
    assert second.source_calls == 0
    assert restricted.fields == ACME
    assert handler._cache == {}  # dropped in __exit__: no visitor IP outlives the handler
    with handler:
        results_of(handler, [visit("203.0.113.7")])
    assert len(server.requests) == 3


def test_cache_can_be_disabled(server: AroundDealServer) -> None:
    with make_handler(server.url, cache_size=0) as handler:
        results_of(handler, [visit("203.0.113.7")])
        results_of(handler, [visit("203.0.113.7")])
    assert len(server.requests) == 2


def test_cache_is_bounded(server: AroundDealServer) -> None:
    with make_handler(server.url, cache_size=1) as handler:
        results_of(handler, [visit("203.0.113.7")])
        results_of(handler, [visit("203.0.113.8")])  # evicts .7
        results_of(handler, [visit("203.0.113.7")])
        assert len(handler._cache) == 1
    assert len(server.requests) == 3


# -- retries ---------------------------------------------------------------------------------


def test_429_honours_retry_after_then_succeeds(server: AroundDealServer) -> None:
    server.script(Action(status=429, retry_after="0.3"))
    with make_handler(server.url) as handler:
        (result,) = results_of(handler, [visit("203.0.113.7")])
    first, second = server.requests
    assert second.received_at - first.received_at >= 0.3
    assert result.status == MATCHED
    assert result.source_calls == 2
    assert result.retries == 1


def test_retry_after_as_http_date(server: AroundDealServer) -> None:
    when = datetime.now(UTC) + timedelta(seconds=1)
    server.script(Action(status=503, retry_after=format_datetime(when, usegmt=True)))
    with make_handler(server.url) as handler:
        (result,) = results_of(handler, [visit("203.0.113.7")])
    assert result.status == MATCHED
    assert len(server.requests) == 2


def test_5xx_sequence_is_retried_then_succeeds(server: AroundDealServer) -> None:
    server.script(Action(status=500), Action(status=502), Action(status=503))
    with make_handler(server.url, max_attempts=4) as handler:
        (result,) = results_of(handler, [visit("203.0.113.7")])
    assert [r.action.status for r in server.requests] == [500, 502, 503, 200]
    assert all(r.body == server.requests[0].body for r in server.requests)  # same batch
    assert result.status == MATCHED
    assert result.retries == 3


def test_read_timeout_is_retried(server: AroundDealServer) -> None:
    server.script(Action(delay=2.0))
    with make_handler(server.url, read_timeout=0.2) as handler:
        (result,) = results_of(handler, [visit("203.0.113.7")])
    assert len(server.requests) == 2
    assert result.status == MATCHED


def test_dropped_connection_is_retried(server: AroundDealServer) -> None:
    server.script(Action(drop=True))
    with make_handler(server.url) as handler:
        (result,) = results_of(handler, [visit("203.0.113.7")])
    assert len(server.requests) == 2
    assert result.status == MATCHED


def test_persistent_failure_marks_the_batch_failed_without_raising(
    server: AroundDealServer,
) -> None:
    server.script(*[Action(status=503)] * 10)
    records = [visit("203.0.113.7"), visit("203.0.113.8", "EEA_UK")]
    with make_handler(server.url, max_attempts=3) as handler:
        results = results_of(handler, records)
        assert handler._cache == {}  # failures are not cached
    assert len(server.requests) == 3
    assert [r.status for r in results] == [FAILED, FAILED]
    assert all(r.fields == {} for r in results)
    assert results[0].source_calls == 3 and results[0].retries == 2


def test_persistent_timeouts_stay_within_the_budget(server: AroundDealServer) -> None:
    server.script(*[Action(delay=2.0)] * 10)
    handler = make_handler(server.url, read_timeout=0.2, max_attempts=3)
    with handler:
        (result,) = results_of(handler, [visit("203.0.113.7")])
    assert result.status == FAILED
    assert len(server.requests) == 3


def test_unreachable_endpoint_fails_without_raising() -> None:
    with AroundDealServer() as gone:
        url = gone.url
    with make_handler(url, max_attempts=2) as handler:
        (result,) = results_of(handler, [visit("203.0.113.7")])
    assert result.status == FAILED
    assert result.source_calls == 2


@pytest.mark.parametrize("status", [400, 401, 403, 404, 422])
def test_other_4xx_are_not_retried(server: AroundDealServer, status: int) -> None:
    server.script(Action(status=status))
    with make_handler(server.url) as handler:
        (result,) = results_of(handler, [visit("203.0.113.7")])
    assert len(server.requests) == 1
    assert result.status == FAILED


def test_malformed_body_is_not_retried(server: AroundDealServer) -> None:
    server.script(Action(status=200, body=b"<html>oops</html>"))
    with make_handler(server.url) as handler:
        (result,) = results_of(handler, [visit("203.0.113.7")])
    assert len(server.requests) == 1
    assert result.status == FAILED


def test_oversized_body_fails(server: AroundDealServer) -> None:
    server.script(Action(status=200, body=b'{"results": []}' + b" " * 5000))
    with make_handler(server.url, max_response_bytes=1024) as handler:
        (result,) = results_of(handler, [visit("203.0.113.7")])
    assert result.status == FAILED


def test_retry_after_beyond_the_limit_fails_at_once(server: AroundDealServer) -> None:
    server.script(Action(status=429, retry_after="3600"))
    with make_handler(server.url, max_retry_after=1.0) as handler:
        (result,) = results_of(handler, [visit("203.0.113.7")])
    assert len(server.requests) == 1
    assert result.status == FAILED


# -- where the key and the batch may go -------------------------------------------------------


@pytest.mark.parametrize("where", ["other-port", "localhost"])
def test_a_cross_origin_redirect_is_refused(server: AroundDealServer, where: str) -> None:
    """Neither the API key nor the visitors' IPs ever reach another origin: the redirect is
    not followed and the batch is a failed call (written unenriched, counted)."""
    with AroundDealServer(COMPANIES) as other:
        target = other.url
        if where == "localhost":  # same port, other host name: another origin too
            target = server.url.replace("127.0.0.1", "localhost")
        server.script(*[Action(redirect_to=target)] * 4)
        with make_handler(server.url) as handler:
            records = [visit("203.0.113.7"), visit("203.0.113.8", "EEA_UK")]
            results = results_of(handler, records)
        assert other.requests == []
    assert [r.status for r in results] == [FAILED, FAILED]
    assert len(server.requests) == 1  # refused, not retried
    if where == "localhost":
        assert all(r.headers["Host"].startswith("127.0.0.1") for r in server.requests)


@pytest.mark.parametrize(
    "url",
    [
        "http://arounddeal.invalid/v1/lookup",
        "http://192.0.2.1/v1/lookup",
        "http://127.0.0.1.nip.invalid/v1/lookup",
        "http://localhost.invalid/v1/lookup",
        "http://[2001:db8::1]/v1/lookup",
    ],
)
def test_plain_http_is_refused_except_on_loopback(url: str) -> None:
    with pytest.raises(ValueError, match="https"):
        make_handler(url)


@pytest.mark.parametrize(
    "url",
    [
        "https://arounddeal.invalid/v1/lookup",
        "http://127.0.0.1:9/x",
        "http://127.4.5.6/x",
        "http://localhost:8080/x",
        "http://LOCALHOST/x",
        "http://[::1]:9/x",
    ],
)
def test_https_and_loopback_http_are_accepted(url: str) -> None:
    assert make_handler(url).url == url


def timed_lookup(url: str, **overrides) -> tuple[LookupResult, float]:
    """One visitor looked up by a fresh handler: its result and the seconds it took."""
    started = time.monotonic()
    with make_handler(url, **overrides) as handler:
        (result,) = results_of(handler, [visit("203.0.113.7")])
    return result, time.monotonic() - started


def test_a_slow_drip_response_is_cut_at_the_request_deadline() -> None:
    """A large Content-Length, then one byte a second: every socket read returns in time, so
    only a deadline over the whole response (connect + headers + body) ends it."""
    with AroundDealServer(COMPANIES, default_action=Action(drip=0.2)) as server:
        result, elapsed = timed_lookup(
            server.url, read_timeout=0.5, request_timeout=1.0, max_attempts=2, deadline=30.0
        )
        assert len(server.requests) == 2  # the deadline is a timeout: retried once
    assert result.status == FAILED
    assert result.source_calls == 2
    assert elapsed < 2 * 1.0 + 1.5, elapsed


def test_the_batch_deadline_bounds_every_attempt_and_wait() -> None:
    with AroundDealServer(COMPANIES, default_action=Action(drip=0.2)) as server:
        result, elapsed = timed_lookup(
            server.url, read_timeout=0.5, request_timeout=1.0, max_attempts=10, deadline=2.5
        )
    assert result.status == FAILED
    assert elapsed < 2.5 + 1.0, elapsed


def test_the_connection_is_usable_after_a_cut_response() -> None:
    with AroundDealServer(COMPANIES) as server:
        server.script(Action(drip=0.2))
        with make_handler(server.url, read_timeout=0.5, request_timeout=0.8) as handler:
            (result,) = results_of(handler, [visit("203.0.113.7")])
            (again,) = results_of(handler, [visit("203.0.113.8")])
    assert result.status == MATCHED and result.retries == 1
    assert again.status == MATCHED and again.retries == 0


class SilentServer:
    """A TCP server on 127.0.0.1 that accepts connections and never says a word: a TLS
    handshake with it never ends."""

    def __enter__(self) -> SilentServer:
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._accepted: list[socket.socket] = []
        self.connections = 0
        threading.Thread(target=self._accept, daemon=True).start()
        return self

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return  # closed
            self.connections += 1
            self._accepted.append(conn)

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self._listener.getsockname()[1]}/v1/visitors/lookup"

    def __exit__(self, *exc: object) -> None:
        self._listener.close()
        for conn in self._accepted:
            conn.close()


def test_an_https_handshake_is_under_the_request_deadline_and_counted() -> None:
    """urllib3 connects an HTTPS connection before its request: the attempt (its deadline, its
    count) starts there."""
    with SilentServer() as silent:
        result, elapsed = timed_lookup(
            silent.url, connect_timeout=5.0, read_timeout=5.0, request_timeout=0.5, max_attempts=2
        )
        assert silent.connections == 2
    assert result.status == FAILED
    assert (result.source_calls, result.retries) == (2, 1)
    assert elapsed < 2 * 0.5 + 1.0, elapsed


# -- rate limit ------------------------------------------------------------------------------


def assert_spaced(times: list[float], rate: float) -> None:
    """The server saw at most ``rate`` requests/s: over the whole run (robust to a late send)
    and between any two requests (with slack for one delayed by the scheduler)."""
    assert len(times) == 6
    assert times[-1] - times[0] >= 0.95 * (len(times) - 1) / rate, times
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert min(gaps) >= 0.5 / rate, gaps


def test_rate_limit_spaces_requests(server: AroundDealServer) -> None:
    rate = 20.0
    with make_handler(server.url, requests_per_second=rate, burst=1, cache_size=0) as handler:
        for n in range(6):
            results_of(handler, [visit("203.0.113.7", n=n)])
    times = [r.received_at for r in server.requests]
    assert_spaced(times, rate)


def test_rate_limit_is_shared_by_the_copies_of_a_handler(server: AroundDealServer) -> None:
    """Beam makes one copy of the handler per DoFn instance (by pickling it): the copies in a
    process share one limit (``apache_beam.utils.shared.Shared``)."""
    rate = 20.0
    handler = make_handler(server.url, requests_per_second=rate, burst=1, cache_size=0)
    first, second = pickle.loads(pickle.dumps(handler)), pickle.loads(pickle.dumps(handler))
    with first, second:
        for n in range(3):
            results_of(first, [visit("203.0.113.7", n=n)])
            results_of(second, [visit("203.0.113.8", n=n)])
    times = [r.received_at for r in server.requests]
    assert_spaced(times, rate)


def test_token_bucket_books_consecutive_slots() -> None:
    bucket = TokenBucket(rate=10.0, burst=2)
    waits = [bucket.reserve(max_wait=10.0) for _ in range(4)]
    assert waits[0] == pytest.approx(0.0, abs=0.02)
    assert waits[1] == pytest.approx(0.0, abs=0.02)  # burst of 2
    assert waits[2] == pytest.approx(0.1, abs=0.02)
    assert waits[3] == pytest.approx(0.2, abs=0.02)
    assert bucket.reserve(max_wait=0.05) is None  # too far ahead: nothing booked
    assert bucket.reserve(max_wait=10.0) == pytest.approx(0.3, abs=0.02)


def test_token_bucket_pause() -> None:
    import time

    bucket = TokenBucket(rate=1000.0)
    bucket.pause_until(time.monotonic() + 0.5)
    assert bucket.reserve(max_wait=10.0) == pytest.approx(0.5, abs=0.05)


# -- configuration and secrets ---------------------------------------------------------------


def test_missing_api_key_fails_setup_naming_the_variable(
    server: AroundDealServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(KEY_ENV)
    with pytest.raises(RuntimeError, match=KEY_ENV):
        make_handler(server.url).__enter__()
    assert server.requests == []


def test_custom_api_key_header(server: AroundDealServer) -> None:
    with make_handler(server.url, api_key_header="Authorization-Key") as handler:
        results_of(handler, [visit("203.0.113.7")])
    assert server.requests[0].headers["Authorization-Key"] == KEY
    assert "X-API-Key" not in server.requests[0].headers


def test_pickled_handler_carries_no_key_and_no_visitor_ip(server: AroundDealServer) -> None:
    with make_handler(server.url) as handler:
        results_of(handler, [visit("203.0.113.7", "EEA_UK")])
        blob = pickle.dumps(handler)
    assert KEY.encode() not in blob
    assert b"203.0.113.7" not in blob
    clone = pickle.loads(blob)
    with clone:
        (result,) = results_of(clone, [visit("203.0.113.7")])
    assert result.status == MATCHED


def test_key_is_not_logged(server: AroundDealServer, caplog: pytest.LogCaptureFixture) -> None:
    server.script(*[Action(status=401)])
    caplog.set_level("DEBUG")
    with make_handler(server.url) as handler:
        results_of(handler, [visit("203.0.113.7")])
    assert "failed" in caplog.text
    assert KEY not in caplog.text
    assert "203.0.113.7" not in caplog.text


@pytest.mark.parametrize(
    "kwargs",
    [
        {"url": "ftp://example.test"},
        {"url": ""},
        {"read_timeout": 0},
        {"requests_per_second": 0},
        {"max_attempts": 0},
        {"batch_size": 0},
        {"cache_size": -1},
        {"api_key_env": ""},
    ],
)
def test_constructor_validates(kwargs) -> None:
    url = kwargs.pop("url", "http://127.0.0.1:9/x")
    with pytest.raises(ValueError):
        make_handler(url, **kwargs)


def test_worst_case_exceeds_the_budget() -> None:
    handler = make_handler("http://127.0.0.1:9/x", deadline=10.0)
    assert handler.max_call_seconds() > 10.0


class Answer:
    """A response as ``Retry`` reads it: its headers."""

    def __init__(self, retry_after: str | None) -> None:
        self.headers = {} if retry_after is None else {"Retry-After": retry_after}


@pytest.mark.parametrize(
    ("header", "expected"),
    [("3", 3.0), ("0.25", 0.25), ("-5", 0.0), (None, None), ("soon", None), ("nan", None)],
)
def test_retry_after_is_read_leniently(header, expected) -> None:
    """Fractional seconds count (servers send them); what cannot be read is no Retry-After,
    so the backoff applies."""
    assert BatchRetry().get_retry_after(Answer(header)) == expected


def test_retry_after_as_an_http_date_is_seconds_from_now() -> None:
    when = format_datetime(datetime.now(UTC) + timedelta(seconds=30), usegmt=True)
    assert BatchRetry().get_retry_after(Answer(when)) == pytest.approx(30, abs=2)
    past = format_datetime(datetime.now(UTC) - timedelta(hours=1), usegmt=True)
    assert BatchRetry().get_retry_after(Answer(past)) == 0

"""A scriptable AroundDeal stand-in: a real HTTP server on 127.0.0.1, in a background thread.

It speaks the protocol of :mod:`transforms.enrichment.http_protocol` and records every request
(headers, decoded body, server-side arrival time) so that tests can assert on what the client
actually sent: that restricted IPs never asked for contact data, that the API key header was
there, how far apart the requests were.

Scripting: :meth:`AroundDealServer.script` queues one :class:`Action` per coming request (in
arrival order); once the queue is empty every request gets the normal answer. ``delay`` is
applied before answering (a delay longer than the client's read timeout is a timeout for it);
``drip`` announces a large body and sends it one byte per ``drip`` seconds (no single read ever
waits long, so only a deadline over the whole response stops the client); ``redirect_to`` answers
``307`` with that ``Location`` (a client that follows it re-posts the batch there).

Usage::

    with AroundDealServer(companies={"203.0.113.7": {...}}) as server:
        server.script(Action(status=429, retry_after="0.2"), Action(status=503))
        ... HttpHandler(server.url, ...) ...
        server.requests  # list[RecordedRequest]
"""

from __future__ import annotations

import json
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from schemas.policy import load_policy

__all__ = [
    "COMPANY_FIELDS",
    "CONTACT_FIELDS",
    "Action",
    "AroundDealServer",
    "RecordedRequest",
]

# The field lists are the policy's (one source of truth), not copies.
_CORPORATE = load_policy().category("corporate_visitor_info")
COMPANY_FIELDS = _CORPORATE.field_groups["company"]
CONTACT_FIELDS = _CORPORATE.field_groups["contact"]


@dataclass(frozen=True)
class Action:
    """What to do with one request.

    status: the HTTP status to answer; 200 answers the lookup normally.
    delay: seconds to wait before answering.
    retry_after: value of a ``Retry-After`` header, if any.
    body: raw bytes to send instead of the normal answer (malformed responses).
    drop: close the connection without answering (a connection error for the client).
    drip: seconds between the bytes of a slow-drip answer (0: answer at once): the headers
      announce a megabyte, then one byte comes every ``drip`` seconds until the client gives up
      or the server stops.
    redirect_to: answer ``307 Temporary Redirect`` to this URL.
    """

    status: int = 200
    delay: float = 0.0
    retry_after: str | None = None
    body: bytes | None = None
    drop: bool = False
    drip: float = 0.0
    redirect_to: str | None = None


@dataclass(frozen=True)
class RecordedRequest:
    path: str
    headers: dict[str, str]
    body: Any
    received_at: float  # time.monotonic() on arrival
    action: Action

    @property
    def items(self) -> list[dict[str, Any]]:
        return list(self.body.get("items", [])) if isinstance(self.body, dict) else []


@dataclass
class _State:
    companies: dict[str, dict[str, Any]]
    leak_contact: bool = False
    omit_ids: frozenset[str] = frozenset()
    extra_keys: dict[str, Any] = field(default_factory=dict)
    default_delay: float = 0.0
    default_action: Action | None = None
    actions: deque[Action] = field(default_factory=deque)
    requests: list[RecordedRequest] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    stopping: threading.Event = field(default_factory=threading.Event)


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # keep test output clean
        pass

    def do_POST(self) -> None:
        state = self.server.state
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length)
        try:
            body = json.loads(raw)
        except ValueError:
            body = raw
        with state.lock:
            action = state.actions.popleft() if state.actions else state.default_action
            action = action or Action()
            state.requests.append(
                RecordedRequest(
                    self.path, dict(self.headers.items()), body, time.monotonic(), action
                )
            )
        delay = action.delay or state.default_delay
        if delay and state.stopping.wait(delay):
            return
        if action.drop:
            self.close_connection = True
            self.connection.shutdown(2)
            return
        if action.redirect_to is not None:
            self.send_response(307)
            self.send_header("Location", action.redirect_to)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        if action.drip:
            self._drip(action.drip)
            return
        if action.status != 200 or action.body is not None:
            payload = action.body if action.body is not None else b'{"error":"scripted"}'
            self._send(action.status, payload, action.retry_after)
            return
        self._send(200, json.dumps(self._answer(body)).encode(), None)

    def _answer(self, body: Any) -> dict[str, Any]:
        state = self.server.state
        results = []
        for item in body.get("items", []):
            if item["id"] in state.omit_ids:
                continue
            known = state.companies.get(item["ip"])
            if known is None:
                results.append({"id": item["id"], "match": False})
                continue
            wants_contact = item.get("fields") == "company+contact"
            result = {"id": item["id"], "match": True, **state.extra_keys}
            for key, value in known.items():
                if key.startswith("company_") or wants_contact or state.leak_contact:
                    result[key] = value
            results.append(result)
        return {"results": results}

    def _drip(self, interval: float) -> None:
        """A 200 that announces 1 MiB and sends one byte per ``interval`` until the client goes
        away or the server stops."""
        self.close_connection = True
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(1 << 20))
        self.end_headers()
        self.wfile.flush()
        stopping = self.server.state.stopping
        try:
            self.wfile.write(b"{")
            self.wfile.flush()
            while not stopping.wait(interval):
                self.wfile.write(b" ")
                self.wfile.flush()
        except OSError:
            pass  # the client gave up

    def _send(self, status: int, payload: bytes, retry_after: str | None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        if retry_after is not None:
            self.send_header("Retry-After", retry_after)
        self.end_headers()
        self.wfile.write(payload)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    state: _State

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that gave up (timeout) makes the late answer fail with a broken pipe: expected.
        pass


class AroundDealServer:
    """The server; use as a context manager. ``companies`` maps an IP string to its fields
    (``company_*`` keys are company data, every other key is contact data)."""

    def __init__(
        self,
        companies: dict[str, dict[str, Any]] | None = None,
        *,
        leak_contact: bool = False,
        default_delay: float = 0.0,
        default_action: Action | None = None,
    ) -> None:
        """``default_action`` answers every request that no scripted action is queued for
        (e.g. ``Action(drip=1.0)``: a server that only ever drips)."""
        self._state = _State(
            dict(companies or {}),
            leak_contact=leak_contact,
            default_delay=default_delay,
            default_action=default_action,
        )
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> AroundDealServer:
        server = _Server(("127.0.0.1", 0), _Handler)
        server.state = self._state
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        self._state.stopping.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> AroundDealServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- scripting and inspection ------------------------------------------------------------

    @property
    def url(self) -> str:
        assert self._server is not None, "server not started"
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}/v1/visitors/lookup"

    def script(self, *actions: Action) -> None:
        """Queues actions for the next requests, in order."""
        with self._state.lock:
            self._state.actions.extend(actions)

    def set_leak_contact(self, leak: bool) -> None:
        """Return contact fields even for items that asked for company data only."""
        self._state.leak_contact = leak

    def set_omit_ids(self, ids: set[str]) -> None:
        """Leave these item ids out of the results (an incomplete response)."""
        self._state.omit_ids = frozenset(ids)

    def set_extra_keys(self, extra: dict[str, Any]) -> None:
        """Keys added to every matched result (undeclared fields the client must drop)."""
        self._state.extra_keys = dict(extra)

    @property
    def requests(self) -> list[RecordedRequest]:
        with self._state.lock:
            return list(self._state.requests)

    def clear(self) -> None:
        with self._state.lock:
            self._state.requests.clear()
            self._state.actions.clear()

"""A fixed corpus of hand-written hostile JSON Lines, and the input files each CLI is run on.

Every line has a name and says where contract v2 lets it end: a stored row of the source's
primary categories (``ROW``; for the retention jobs, a valid event or request that is applied), a
dead letter (``DEAD``, with the reasons allowed when the contract names one, any reason
otherwise), or a record counted ``expired_on_arrival`` (``EXPIRED``). Hostile lines carry canary
values (secrets, contacts, free text, undeclared keys) that no written file may contain.

How lines are counted (what ``read`` must be): as both readers split a file (the batched reader
of the ingestion pipelines and Beam's ``ReadFromText`` of the retention jobs): on ``\\n``, a
``\\r`` right before it belongs to the line ending, and a final newline does not start another
line. So a file with ``\\r``-only line endings is *one* line, a UTF-8 BOM is part of the line it
starts, an empty or whitespace-only line between two newlines is a line, and the binary content
of a gzip file named ``.jsonl`` is as many lines as it has ``\\n`` bytes (plus an unterminated
tail). :func:`reader_line_count` is that rule, and :func:`write_inputs` checks every file it
writes against it.

The three huge inputs (a 50 MB ``url``, 50 MB of garbage without a newline, 1,000,000 levels of
nesting) do not depend on the source: :func:`write_big_files` writes them once per test session
and :func:`write_inputs` links them into each CLI's input directory.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import random
import re
import shutil
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path

__all__ = [
    "BIG_FILES",
    "DEAD",
    "EXPIRED",
    "ROW",
    "SOURCES",
    "VALID_TIME",
    "Line",
    "Source",
    "canary",
    "hostile_lines",
    "reader_line_count",
    "write_big_files",
    "write_inputs",
]

ROW, DEAD, EXPIRED = "row", "dead", "expired"
STORED = frozenset({ROW})
REJECTED = frozenset({DEAD})
NOT_STORED = frozenset({DEAD, EXPIRED})
ANYWHERE = frozenset({ROW, DEAD, EXPIRED})

# Event times of the valid lines: the day before the run time the tests pin
# (tests.support.outputs.RUN_TIME, 2026-11-29), inside every fixed retention period.
VALID_TIME = "2026-11-28T10:00:00Z"
MIB = 1024 * 1024
BOM = b"\xef\xbb\xbf"
# Placeholder for a raw JSON value spliced into a serialised record.
_RAW = "@@raw-value@@"

# The output root the retention jobs run on (tests/hostile/conftest.py writes it): accounts by
# UIN. A1's account is deleted by a valid lifecycle event; A2 is erased by a valid request; A3
# must be left alone by every hostile line; A4 is the target of a lifecycle event in year 9999.
ACCOUNTS = {"a1": "100000101", "a2": "100000102", "a3": "100000103", "a4": "100000104"}
RATIO = "--max_dead_letter_ratio=1"


def canary(source: str, tag: str) -> str:
    """A unique value that must never be written anywhere (letters, digits and dashes only, so
    that no JSON or CSV escaping changes it)."""
    tag = re.sub(r"[^A-Za-z0-9]+", "-", tag).strip("-")
    digest = hashlib.sha256(f"{source}/{tag}".encode()).hexdigest()[:8]
    return f"CANARY-{source}-{tag}-{digest}"


@dataclass(frozen=True)
class Line:
    """One input line (without its line ending) and where it may end."""

    name: str
    data: bytes
    outcomes: frozenset[str]
    # The dead-letter reasons allowed (``error``); None: any reason.
    reasons: frozenset[str] | None = None
    # The ids a row or a dead letter of this line carries (``event_id``; a request's id): a
    # line is found by them first; lines without one are matched by reason and count.
    ids: tuple[str, ...] = ()
    canaries: tuple[str, ...] = ()
    # Of the line as read (the huge lines are not held: ``data`` is empty, these are given).
    length: int = -1
    sha256: str = ""

    def __post_init__(self) -> None:
        if b"\n" in self.data:
            raise ValueError(f"line {self.name} holds a newline")
        if self.length < 0:
            object.__setattr__(self, "length", len(self.data))
            object.__setattr__(self, "sha256", hashlib.sha256(self.data).hexdigest())

    def expectation(self) -> str:
        where = "/".join(sorted(self.outcomes))
        if DEAD in self.outcomes and self.reasons is not None:
            where += f" (reason in {sorted(self.reasons)})"
        return where


@dataclass(frozen=True)
class Source:
    """A CLI and the shape of its input lines."""

    name: str
    module: str  # python -m <module>
    # Arguments besides the input, output, runner and run time: what selects the source
    # (--category=...), and for the ingestion CLIs --max_dead_letter_ratio=1: the hostile files
    # are mostly hostile lines by construction, and a run that rejects most of its input exits
    # non-zero on purpose (after writing everything); that guard is not what is tested here.
    flags: tuple[str, ...]
    input_flag: str  # --input, --events, --requests
    letters: str  # _dead_letter/source=<letters>/
    report: str  # _reports/<report>-<run_id>.json
    primary: tuple[str, ...]  # the categories its rows are written to (ingestion)
    id_field: str | None  # the line's own id (None: lifecycle events have none)
    time_field: str
    # Expiry counts from the event time: a record can expire on arrival, and an event in year
    # 9999 has an expiry no date can hold.
    fixed_retention: bool
    retention_job: bool  # lifecycle / erase: run on an output root; valid lines are applied
    text_fields: tuple[str, ...]  # declared string fields
    pad_field: str  # where a long value goes
    contact_field: str | None  # a declared contact field
    free_text_field: str | None  # a declared free-text field
    template: Callable[[str, int], dict] = field(repr=False, compare=False)

    def record(self, ident: str, n: int = 0, **overrides: object) -> dict:
        """A valid record with id ``ident`` (``n`` varies its keys), then ``overrides``
        (``DROP`` removes a field)."""
        rec = self.template(ident, n)
        for key, value in overrides.items():
            if value is DROP:
                rec.pop(key, None)
            else:
                rec[key] = value
        return rec

    def ids(self, ident: str) -> tuple[str, ...]:
        return (ident,) if self.id_field else ()


DROP = object()


def _visit(ident: str, n: int) -> dict:
    return {
        "event_id": ident,
        "ip": f"8.8.{n % 250}.{1 + n % 200}",
        "visited_at": VALID_TIME,
        "url": "https://trtc.example.com/pricing",
        "user_agent": "Mozilla/5.0 (X11; Linux x86_64)",
        "session_id": f"s-{n}",
    }


def _sdk_log(ident: str, n: int) -> dict:
    return {
        "event_id": ident,
        "logged_at": VALID_TIME,
        "sdk_app_id": 1400000001 + n % 7,
        "uin": "100000001",
        "user_id": f"u-{n}",
        "room_id": 8001,
        "sdk_version": "12.1.8",
        "os_type": "iOS",
        "level": "INFO",
        "message": "enterRoom ok",
    }


def _telemetry(ident: str, n: int) -> dict:
    return {
        "event_id": ident,
        "reported_at": VALID_TIME,
        "sdk_app_id": 1400000001 + n % 7,
        "user_id": f"u-{n}",
        "room_id": "room-1",
        "event_type": "quality" if n % 2 else "mute",
        "cpu_usage": 12.5,
        "resolution": "1280x720",
    }


def _account(ident: str, n: int) -> dict:
    return {
        "event_id": ident,
        "uin": str(100000200 + n),
        "registered_at": VALID_TIME,
        "location": "Singapore",
        "company_name": "Example Pte",
        "avatar_url": "https://avatars.example.com/a.png",
    }


def _event(ident: str, n: int) -> dict:
    # A valid event about an application no stored row belongs to: applied, changes nothing.
    return {"event": "service_terminated", "sdk_app_id": str(1499990000 + n), "at": VALID_TIME}


def _request(ident: str, n: int) -> dict:
    # A valid request for a subject no stored row belongs to: applied, erases nothing.
    return {"request_id": ident, "received_at": VALID_TIME, "user_id": f"nobody-{n}"}


SOURCES = {
    s.name: s
    for s in (
        Source(
            name="visits",
            module="pipelines.visits",
            flags=(RATIO,),
            input_flag="--input",
            letters="visits",
            report="visits",
            primary=("website_visit",),
            id_field="event_id",
            time_field="visited_at",
            fixed_retention=True,
            retention_job=False,
            text_fields=("event_id", "ip", "url", "user_agent", "session_id", "business_email"),
            pad_field="url",
            contact_field="business_email",
            free_text_field=None,
            template=_visit,
        ),
        Source(
            name="sdk_logs",
            module="pipelines.sdk_logs",
            flags=(RATIO,),
            input_flag="--input",
            letters="sdk_logs",
            report="sdk_logs",
            primary=("backend_log", "sdk_log"),
            id_field="event_id",
            time_field="logged_at",
            fixed_retention=True,
            retention_job=False,
            text_fields=("event_id", "message", "os_type", "level", "user_id", "sdk_app_id"),
            pad_field="message",
            contact_field=None,
            free_text_field="message",
            template=_sdk_log,
        ),
        Source(
            name="telemetry",
            module="pipelines.telemetry",
            flags=(RATIO,),
            input_flag="--input",
            letters="telemetry",
            report="telemetry",
            primary=("dashboard_information", "troubleshooting_data"),
            id_field="event_id",
            time_field="reported_at",
            fixed_retention=True,
            retention_job=False,
            text_fields=("event_id", "resolution", "user_id", "room_id", "event_type"),
            pad_field="resolution",
            contact_field=None,
            free_text_field=None,
            template=_telemetry,
        ),
        Source(
            name="account_information",
            module="pipelines.ingest",
            flags=("--category=account_information", RATIO),
            input_flag="--input",
            letters="account_information",
            report="account_information",
            primary=("account_information",),
            id_field="event_id",
            time_field="registered_at",
            fixed_retention=False,  # account lifetime: open-ended at ingestion
            retention_job=False,
            text_fields=("event_id", "uin", "location", "company_name", "avatar_url"),
            pad_field="avatar_url",
            contact_field=None,
            free_text_field=None,
            template=_account,
        ),
        Source(
            name="lifecycle",
            module="pipelines.lifecycle",
            flags=(),
            input_flag="--events",
            letters="lifecycle",
            report="lifecycle",
            primary=(),
            id_field=None,
            time_field="at",
            fixed_retention=False,
            retention_job=True,
            text_fields=("event", "sdk_app_id"),
            pad_field="note",
            contact_field="business_email",
            free_text_field=None,
            template=_event,
        ),
        Source(
            name="erase",
            module="pipelines.erase",
            flags=(),
            input_flag="--requests",
            letters="erase",
            report="erase",
            primary=(),
            id_field="request_id",
            time_field="received_at",
            fixed_retention=False,
            retention_job=True,
            text_fields=("request_id", "user_id"),
            pad_field="note",
            contact_field="business_email",
            free_text_field=None,
            template=_request,
        ),
    )
}


# ------------------------------------------------------------------------- serialising lines


def dumps(obj: object) -> bytes:
    return json.dumps(obj, ensure_ascii=False).encode()


def splice(obj: dict, key: str, raw: bytes) -> bytes:
    """``obj`` serialised with ``raw`` (JSON text, or any bytes) as the value of ``key``."""
    text = dumps({**obj, key: _RAW})
    return text.replace(json.dumps(_RAW).encode(), raw, 1)


def append_raw(obj: dict, members: bytes) -> bytes:
    """``obj`` serialised with ``members`` (raw ``"key": value`` text) added at its end."""
    text = dumps(obj)
    return text[:-1] + (b", " if obj else b"") + members + b"}"


def reader_line_count(data: bytes) -> int:
    """How many lines the readers see in a file's bytes (see the module docstring)."""
    if not data:
        return 0
    pieces = data.split(b"\n")
    return len(pieces) - (1 if pieces[-1] == b"" else 0)


# ------------------------------------------------------------------------------- the corpus


def _nest_arrays(depth: int, inner: bytes = b"") -> bytes:
    return b"[" * depth + inner + b"]" * depth


def _nest_objects(depth: int, inner: bytes = b"null") -> bytes:
    return b'{"a":' * depth + inner + b"}" * depth


@dataclass
class _Corpus:
    """Collects the lines of one source."""

    source: Source
    lines: list[Line] = field(default_factory=list)

    def add(
        self,
        name: str,
        data: bytes,
        outcomes: frozenset[str],
        reasons: Iterable[str] | None = None,
        *,
        ids: Iterable[str] | None = None,
        canaries: Iterable[str] = (),
    ) -> None:
        ident = f"h-{name}"
        self.lines.append(
            Line(
                name=name,
                data=data,
                outcomes=outcomes,
                reasons=None if reasons is None else frozenset(reasons),
                ids=tuple(self.source.ids(ident) if ids is None else ids),
                canaries=tuple(canaries),
            )
        )

    def rec(self, name: str, n: int = 0, **overrides: object) -> dict:
        return self.source.record(f"h-{name}", n, **overrides)

    def canary(self, name: str) -> str:
        return canary(self.source.name, name)

    def bare(self, name: str) -> dict:
        """The line's id and nothing else (a record missing its required fields)."""
        return {self.source.id_field or "event_id": f"h-{name}"}


def _time_reasons(source: Source) -> frozenset[str]:
    t = source.time_field
    return frozenset({f"malformed_timestamp:{t}", "event_time_out_of_range"})


def hostile_lines(source: Source) -> list[Line]:
    """The hand-written hostile lines of ``source``, in file order, with a few valid lines
    among them (``ok-*``), for the mixed input file."""
    c = _Corpus(source)
    s = source
    t = s.time_field
    stored_or_applied = STORED
    old_time = NOT_STORED if s.fixed_retention else ANYWHERE  # expired on arrival, or kept
    secret_dead = {t: "soon"}  # what makes a record with a canary a dead letter

    c.add("ok-first", dumps(c.rec("ok-first", 1)), stored_or_applied)

    # --- nesting: deep values in a record missing its required fields, and in a valid record
    for depth in (10, 100, 500, 1000, 10_000, 100_000):
        deep_reasons = {"too_deep"} if depth >= 10_000 else None
        in_valid = STORED if depth <= 10 else frozenset({ROW, DEAD})
        valid_reasons = {"too_deep"} if depth > 10 else None
        for kind, nest in (("arr", _nest_arrays), ("obj", _nest_objects)):
            name = f"deep-{kind}-{depth}-in-bare-record"
            secret = c.canary(name)
            c.add(
                name,
                splice(c.bare(name), "x", nest(depth, json.dumps(secret).encode())),
                REJECTED,
                deep_reasons,
                canaries=[secret],
            )
            name = f"deep-{kind}-{depth}-in-valid-record"
            c.add(
                name,
                splice(c.rec(name, depth), "x", nest(depth)),
                in_valid if depth < 10_000 else REJECTED,
                valid_reasons,
            )

    # --- size: over the 1 MiB default of --max_line_bytes, and a long line under it
    name = "size-2mib-otherwise-valid"
    c.add(name, dumps(c.rec(name, **{s.pad_field: "p" * (2 * MIB)})), REJECTED, {"line_too_large"})
    name = "size-900kib-valid"
    c.add(name, dumps(c.rec(name, **{s.pad_field: "q" * (900 * 1024)})), stored_or_applied)
    # The boundary: a line of exactly --max_line_bytes is not over it; one byte more is.
    for name, size, outcomes, reasons in (
        ("size-exactly-1mib-valid", MIB, stored_or_applied, None),
        ("size-1mib-plus-1-otherwise-valid", MIB + 1, REJECTED, {"line_too_large"}),
    ):
        bare = len(dumps(c.rec(name, **{s.pad_field: ""})))
        padded = dumps(c.rec(name, **{s.pad_field: "r" * (size - bare)}))
        assert len(padded) == size
        c.add(name, padded, outcomes, reasons)
    name = "many-undeclared-keys"
    keys = b", ".join(b'"k%d": %d' % (i, i) for i in range(60_000))
    c.add(name, append_raw(c.rec(name), keys), stored_or_applied)
    name = "many-undeclared-keys-dead"
    secret = c.canary(name)
    keys += b', "k_last": "' + secret.encode() + b'"'
    c.add(name, append_raw(c.rec(name, **secret_dead), keys), REJECTED, canaries=[secret])

    c.add("ok-second", dumps(c.rec("ok-second", 2)), stored_or_applied)

    # --- text that is not text: lone surrogates, invalid UTF-8, NUL, BOM
    for f in s.text_fields:
        name = f"surrogate-escaped-in-{f}"
        c.add(name, splice(c.rec(name), f, b'"a\\ud800b"'), REJECTED, {f"malformed_text:{f}"})
        name = f"surrogate-low-escaped-in-{f}"
        c.add(name, splice(c.rec(name), f, b'"\\udfff"'), REJECTED, {f"malformed_text:{f}"})
        name = f"invalid-utf8-in-{f}"
        c.add(name, splice(c.rec(name), f, b'"a\xff\xfeb"'), REJECTED)
        name = f"utf8-encoded-surrogate-in-{f}"
        c.add(name, splice(c.rec(name), f, b'"a\xed\xa0\x80b"'), REJECTED)
    name = f"surrogate-escaped-in-malformed-{t}"
    c.add(
        name,
        splice(c.rec(name), t, b'"2026-11-28T10:00:00\\ud800Z"'),
        REJECTED,
        {f"malformed_text:{t}", f"malformed_timestamp:{t}"},
    )
    name = "surrogate-escaped-in-undeclared-value"
    c.add(name, splice(c.rec(name), "note", b'"\\ud800"'), ANYWHERE)
    name = "surrogate-escaped-as-undeclared-key"
    c.add(name, append_raw(c.rec(name), b'"\\udc00x": "v"'), ANYWHERE)
    name = "surrogate-with-secret"
    secret = c.canary(name)
    f = s.text_fields[-1]
    c.add(
        name,
        splice({**c.rec(name), "db_password": secret}, f, b'"\\ud800"'),
        REJECTED,
        {f"malformed_text:{f}"},
        canaries=[secret],
    )
    name = "surrogate-pair-is-text"
    c.add(name, splice(c.rec(name), s.pad_field, b'"caf\\u00e9 \\ud83d\\ude00"'), stored_or_applied)
    name = "invalid-utf8-with-secret"
    secret = c.canary(name)
    c.add(
        name,
        append_raw(c.rec(name), b'"db_password": "' + secret.encode() + b'", "n": "\xc0\xaf"'),
        REJECTED,
        canaries=[secret],
    )
    # Lines that are not JSON: nothing but the event id may survive, not even the value of a
    # declared field (each carries a canary in one).
    name = "nul-raw-inside-string"
    secret = c.canary(name)
    raw = b'"https://x.example/' + secret.encode() + b'\x00b"'
    c.add(name, splice(c.rec(name), s.pad_field, raw), REJECTED, canaries=[secret])
    name = "nul-raw-between-tokens"
    secret = c.canary(name)
    declared = {s.pad_field: f"https://x.example/{secret}"}
    c.add(
        name,
        dumps(c.rec(name, **declared)).replace(b", ", b",\x00 ", 1),
        REJECTED,
        canaries=[secret],
    )
    name = "invalid-utf8-with-declared-canary"
    secret = c.canary(name)
    raw = b'"https://x.example/' + secret.encode() + b'/\xff\xfe"'
    c.add(name, splice(c.rec(name), s.pad_field, raw), REJECTED, canaries=[secret])
    c.add("nul-only", b"\x00\x00\x00", REJECTED, ids=())
    name = "nul-escaped-inside-string"
    c.add(name, splice(c.rec(name), s.pad_field, b'"a\\u0000b"'), ANYWHERE)
    name = "bom-at-line-start"
    c.add(name, BOM + dumps(c.rec(name)), ANYWHERE)
    c.add("bom-only", BOM, REJECTED, ids=())
    garbage = bytes(b for b in random.Random(7).randbytes(3000) if b != 0x0A)
    c.add("binary-garbage", garbage, REJECTED, ids=())
    name = "binary-garbage-with-secret"
    secret = c.canary(name)
    c.add(
        name,
        garbage[:500] + b'"password": "' + secret.encode() + b'"' + garbage[500:1000],
        REJECTED,
        ids=(),
        canaries=[secret],
    )
    c.add("empty-line", b"", REJECTED, ids=())
    c.add("whitespace-only", b" \t  \t", REJECTED, ids=())
    c.add("carriage-return-only", b"\r", REJECTED, ids=())

    # --- numbers
    digits400 = b"9" * 400
    name = "digits400-undeclared-value"
    c.add(name, splice(c.rec(name), "n", digits400), ANYWHERE)
    name = "digits5000-undeclared-value"
    c.add(name, splice(c.rec(name), "n", b"7" * 5000), ANYWHERE)
    name = "digits400-negative-undeclared-value"
    c.add(name, splice(c.rec(name), "n", b"-" + digits400 + b".5e-3"), ANYWHERE)
    name = f"digits400-as-{t}"
    c.add(name, splice(c.rec(name), t, digits400), REJECTED, _time_reasons(s))
    name = f"digits400-float-as-{t}"
    c.add(name, splice(c.rec(name), t, b"1" + b"0" * 400 + b".5"), REJECTED, _time_reasons(s))
    if s.id_field:
        name = f"digits400-as-{s.id_field}"
        c.add(name, splice(c.rec(name), s.id_field, digits400), ANYWHERE, ids=("9" * 400,))
    name = f"digits400-in-{s.pad_field}"
    c.add(name, splice(c.rec(name), s.pad_field, digits400), ANYWHERE)
    if s.name == "telemetry":
        for raw in (digits400, b"1e400", b"-1e400", b"NaN", b"Infinity"):
            name = f"cpu_usage-{raw[:8].decode()}"
            c.add(name, splice(c.rec(name, 1), "cpu_usage", raw), ANYWHERE)
    if s.name in ("sdk_logs", "telemetry", "account_information"):
        name = "digits400-as-uin"
        c.add(name, splice(c.rec(name), "uin", digits400), ANYWHERE)

    # --- duplicate keys
    if s.id_field:
        rest = c.rec("dup-id")
        rest.pop(s.id_field)
        c.add(
            "duplicate-id",
            append_raw(rest, f'"{s.id_field}": "h-dup-a", "{s.id_field}": "h-dup-b"'.encode()),
            ANYWHERE,
            ids=("h-dup-a", "h-dup-b"),
        )
    for order, (first, second) in (
        ("bad-first", ("soon", VALID_TIME)),
        ("bad-last", (VALID_TIME, "soon")),
    ):
        name = f"duplicate-{t}-{order}"
        rest = c.rec(name)
        rest.pop(t)
        members = f'"{t}": {json.dumps(first)}, "{t}": {json.dumps(second)}'
        c.add(name, append_raw(rest, members.encode()), ANYWHERE)

    # --- every JSON type where an object is expected
    for name, raw in (
        ("type-null", b"null"),
        ("type-true", b"true"),
        ("type-false", b"false"),
        ("type-int", b"1"),
        ("type-float", b"1.5"),
        ("type-string", b'"s"'),
        ("type-empty-array", b"[]"),
        ("type-array-of-object", b"[{}]"),
        ("type-array-of-record", b"[" + dumps(c.rec("in-array")) + b"]"),
        ("type-empty-object", b"{}"),
        ("type-nan", b"NaN"),
    ):
        c.add(name, raw, REJECTED, ids=())

    # --- event times
    far = NOT_STORED if s.fixed_retention else ANYWHERE
    # An expiry no date can hold; or, where the run bounds event times (clock skew), an event
    # time out of range: both name the line's problem.
    far_reasons = {"expiry_out_of_range", "event_time_out_of_range"} if s.fixed_retention else None
    for name, value in (
        ("time-year-9999-last-day", "9999-12-31T00:00:00Z"),
        ("time-year-9999-last-microsecond", "9999-12-31T23:59:59.999999Z"),
    ):
        c.add(name, dumps(c.rec(name, **{t: value})), far - {EXPIRED}, far_reasons)
    for name, raw in (
        ("time-year-0", b'"0000-01-01T00:00:00Z"'),
        ("time-before-year-1-in-utc", b'"0001-01-01T00:00:00+14:00"'),
        ("time-after-year-9999-in-utc", b'"9999-12-31T23:00:00-14:00"'),
        ("time-epoch-micros", b"1795000000000000"),
        ("time-max-long", b"9223372036854775807"),
        ("time-min-long", b"-9223372036854775808"),
        ("time-nan", b"NaN"),
        ("time-infinity", b"Infinity"),
        ("time-minus-infinity", b"-Infinity"),
        ("time-float-millis", b"1795000000000.5"),
        ("time-true", b"true"),
        ("time-object", b'{"$date": 1795000000000}'),
        ("time-digit-string", b'"1795000000000"'),
    ):
        c.add(name, splice(c.rec(name), t, raw), REJECTED, _time_reasons(s))
    for name, raw in (
        ("time-year-1", b'"0001-01-01T00:00:00Z"'),
        ("time-negative-epoch-millis", b"-1000"),
        ("time-epoch-seconds", b"1795000000"),
        ("time-epoch-zero", b"0"),
    ):
        c.add(name, splice(c.rec(name), t, raw), old_time)
    name = "time-epoch-millis"
    c.add(name, splice(c.rec(name), t, b"1795000000000"), stored_or_applied)  # 2026-11-18
    name = "nan-in-undeclared-value"
    c.add(name, splice(c.rec(name), "n", b"NaN"), ANYWHERE)
    name = "nan-in-undeclared-value-of-a-dead-letter"
    c.add(name, splice(c.rec(name, **secret_dead), "n", b"-Infinity"), REJECTED)

    # --- canaries: secrets, contacts and free text that no output may contain
    for label, key in (
        ("db_password", "db_password"),
        ("x_api_key", "x_api_key"),
        ("authorization", "Authorization"),
        ("work_email", "work_email"),
        ("cyrillic-a-password", "p\u0430ssword"),  # a Cyrillic a: not the ASCII name
    ):
        for fate, overrides, outcomes in (
            ("row", {}, stored_or_applied),
            ("dead", secret_dead, REJECTED),
        ):
            name = f"canary-{label}-{fate}"
            secret = c.canary(name)
            value = f"{secret}@corp.example" if key == "work_email" else secret
            c.add(
                name, dumps({**c.rec(name, **overrides), key: value}), outcomes, canaries=[secret]
            )
    for fate, overrides, outcomes in (
        ("row", {}, stored_or_applied),
        ("dead", secret_dead, REJECTED),
    ):
        name = f"canary-headers-{fate}"
        secret = c.canary(name)
        headers = [["Authorization", f"Bearer {secret}"], ["Accept", "*/*"]]
        c.add(
            name,
            dumps({**c.rec(name, **overrides), "headers": headers}),
            outcomes,
            canaries=[secret],
        )
        name = f"canary-nested-undeclared-{fate}"
        secret = c.canary(name)
        meta = {"client": {"env": [{"k": "DATABASE_URL", "v": f"postgres://u:{secret}@db/x"}]}}
        c.add(name, dumps({**c.rec(name, **overrides), "meta": meta}), outcomes, canaries=[secret])
    name = "canary-escaped-key-name-truncated"
    secret = c.canary(name)
    c.add(
        name,
        dumps(c.rec(name))[:-1] + b', "pass\\u0077ord": "' + secret.encode(),
        REJECTED,
        canaries=[secret],
    )
    name = "canary-escaped-key-name-dead"
    secret = c.canary(name)
    c.add(
        name,
        append_raw(c.rec(name, **secret_dead), b'"pass\\u0077ord": "' + secret.encode() + b'"'),
        REJECTED,
        canaries=[secret],
    )
    name = "canary-escaped-key-name-row"
    secret = c.canary(name)
    c.add(
        name,
        append_raw(c.rec(name), b'"pass\\u0077ord": "' + secret.encode() + b'"'),
        stored_or_applied,
        canaries=[secret],
    )
    name = f"canary-declared-{s.pad_field}-in-truncated-line"
    secret = c.canary(name)
    whole = dumps(c.rec(name, **{s.pad_field: f"https://x.example/{secret}"}))
    cut = whole.index(secret.encode()) + len(secret) + 1
    c.add(name, whole[:cut] + b', "ip": ', REJECTED, canaries=[secret])
    name = "canary-unterminated-secret-at-end"
    secret = c.canary(name)
    c.add(
        name,
        dumps(c.rec(name))[:-1] + b', "token": "' + secret.encode(),
        REJECTED,
        canaries=[secret],
    )
    name = "canary-secret-as-bare-word"
    secret = c.canary(name)
    c.add(
        name,
        dumps(c.rec(name))[:-1] + b", password: " + secret.encode() + b"}",
        REJECTED,
        canaries=[secret],
    )
    if s.contact_field:
        name = f"canary-contact-{s.contact_field}-dead"
        secret = c.canary(name)
        bad = {"event": "account_reopened"} if s.name == "lifecycle" else secret_dead
        c.add(
            name,
            dumps(c.rec(name, **bad, **{s.contact_field: f"{secret}@corp.example"})),
            REJECTED,
            canaries=[secret],
        )
    if s.free_text_field:
        # Free text in a dead letter is kept as a stored row would keep it: scanned, secrets and
        # contact data redacted (an ordinary word is no finding, so it is no canary).
        name = f"canary-free-text-{s.free_text_field}-dead"
        secret = c.canary(name)
        text = f"login failed for alice, password was {secret}"
        c.add(
            name,
            dumps(c.rec(name, **secret_dead, **{s.free_text_field: text})),
            REJECTED,
            canaries=[secret],
        )

    # --- characters str.splitlines() ends a line at (U+2028, U+2029, U+0085 raw; VT, FF,
    # FS, GS, RS escaped): JSON allows them in strings, so a line holding them is one line, and
    # so must be its dead letter
    separators = "\u2028|\u2029|\u0085|\u000b|\u000c|\u001c|\u001d|\u001e|"
    name = "unicode-line-separators-valid"
    c.add(name, dumps(c.rec(name, **{s.pad_field: separators})), stored_or_applied)
    name = "unicode-line-separators-dead"
    secret = c.canary(name)
    c.add(
        name,
        dumps({**c.rec(name, **secret_dead, **{s.pad_field: separators}), "x_api_key": secret}),
        REJECTED,
        canaries=[secret],
    )
    # --- JSON dialects that are not JSON
    for name, data in (
        ("trailing-comma", dumps(c.rec("trailing-comma"))[:-1] + b", }"),
        ("single-quotes", dumps(c.rec("single-quotes")).replace(b'"', b"'")),
        ("comment", b"// a comment\t" + dumps(c.rec("comment"))),
        ("two-objects-on-one-line", dumps(c.rec("two-objects-on-one-line")) * 2),
    ):
        c.add(name, data, REJECTED)
    # --- what a bounded scan for the event id must not take for it
    idf = s.id_field or "event_id"
    name = "canary-nested-event-id-truncated"
    secret = c.canary(name)
    c.add(
        name,
        f'{{"meta": {{"{idf}": "{secret}"}}, "{idf}": "h-{name}", "x": "'.encode(),
        REJECTED,
        canaries=[secret],
    )
    name = "canary-event-id-lookalikes-truncated"
    secrets = [c.canary(f"{name}-{i}") for i in range(4)]
    lookalikes = (f"{idf.upper()}", f"x_{idf}", f"{idf} ", idf.replace("_", ""))
    text = ", ".join(f'"{k}": "{v}"' for k, v in zip(lookalikes, secrets, strict=True))
    c.add(name, ("{" + text + ', "x": [').encode(), REJECTED, ids=(), canaries=secrets)
    name = f"canary-object-as-{idf}"
    secret = c.canary(name)
    outcomes = REJECTED if s.id_field else stored_or_applied  # lifecycle events have no id
    data = dumps({**c.rec(name), idf: {"value": secret}})
    c.add(name, data, outcomes, ids=(), canaries=[secret])
    # --- a nested value under a declared key: masked whatever the key
    name = f"canary-nested-under-declared-{s.pad_field}"
    secret = c.canary(name)
    nested = {"secret_note": secret, "list": [{"token": secret}]}
    # (the retention jobs' pad field is undeclared: there the line is a valid event/request)
    outcomes = stored_or_applied if s.retention_job else REJECTED
    c.add(name, dumps(c.rec(name, **{s.pad_field: nested})), outcomes, canaries=[secret])

    # --- source-specific lines
    if s.name == "lifecycle":
        a4 = ACCOUNTS["a4"]
        c.add(
            "time-year-9999-deleting-a4",
            dumps({"event": "account_deleted", "uin": a4, "at": "9999-12-31T00:00:00Z"}),
            frozenset({ROW, DEAD}),
        )
        for name, obj in (
            (
                "uin-as-list",
                {"event": "account_deleted", "uin": [ACCOUNTS["a3"]], "at": VALID_TIME},
            ),
            ("uin-as-object", {"event": "account_deleted", "uin": {"$ne": 1}, "at": VALID_TIME}),
            (
                "event-as-list",
                {"event": ["account_deleted"], "uin": ACCOUNTS["a3"], "at": VALID_TIME},
            ),
        ):
            c.add(name, dumps(obj), REJECTED)
    if s.name == "erase":
        for name, obj in (
            (
                "uin-as-list",
                {"request_id": "h-uin-as-list", "received_at": VALID_TIME, "uin": [ACCOUNTS["a3"]]},
            ),
            (
                "uin-as-object",
                {"request_id": "h-uin-as-object", "received_at": VALID_TIME, "uin": {"$ne": 1}},
            ),
            (
                "uin-as-bool",
                {"request_id": "h-uin-as-bool", "received_at": VALID_TIME, "uin": True},
            ),
        ):
            c.add(name, dumps(obj), REJECTED)

    # Identifiers that a pattern matcher would read as "everyone": they must match nobody (the
    # valid-lines test checks that no other account moved or went).
    wildcards = (".*", "*", "%", "_", "1000001%", "^1", "[0-9]+", "", " ", "null", "0.0.0.0/0")
    if s.name == "lifecycle":
        for i, value in enumerate(wildcards):
            event = {"event": "account_deleted", "uin": value, "at": VALID_TIME}
            c.add(f"wildcard-uin-{i}", dumps(event), frozenset({ROW, DEAD}))
        event = {"event": "marketing_opt_out", "business_email": "%@%", "at": VALID_TIME}
        c.add("wildcard-email", dumps(event), frozenset({ROW, DEAD}))
    if s.name == "erase":
        fields = ("uin", "user_id", "business_email", "ip")
        for i, value in enumerate(wildcards):
            for f in fields:
                name = f"wildcard-{f}-{i}"
                request = {"request_id": f"h-{name}", "received_at": VALID_TIME, f: value}
                c.add(name, dumps(request), frozenset({ROW, DEAD}))

    c.add("ok-last", dumps(c.rec("ok-last", 3)), stored_or_applied)
    if s.name == "lifecycle":
        c.add(
            "ok-account-deleted-a1",
            dumps({"event": "account_deleted", "uin": ACCOUNTS["a1"], "at": VALID_TIME}),
            STORED,
        )
    if s.name == "erase":
        c.add(
            "ok-erase-a2",
            dumps(
                {"request_id": "h-ok-erase-a2", "received_at": VALID_TIME, "uin": ACCOUNTS["a2"]}
            ),
            STORED,
        )
    names = [line.name for line in c.lines]
    assert len(names) == len(set(names)), "line names must be unique"
    return c.lines


# --------------------------------------------------------------------------------- the files

# The source-independent huge lines: file name -> [(name, data, reasons, id)].
BIG_FILES = ("big-url-50mb.jsonl", "garbage-50mb-no-newline.jsonl", "deep-1000000.jsonl")
BIG_CANARIES = {
    "big-url-50mb": canary("big", "url-50mb"),
    "garbage-50mb": canary("big", "garbage-50mb"),
    "deep-arr-1000000": canary("big", "deep-arr-1000000"),
    "deep-obj-1000000": canary("big", "deep-obj-1000000"),
}


def _big_line_builders() -> dict[str, list[tuple[str, str, Callable[[], bytes]]]]:
    """file name -> [(line name, id, its bytes)]; the garbage file has no final newline."""
    fifty = 50 * MIB
    garbage_block = bytes(b for b in range(256) if b != 0x0A)  # NUL, CR, invalid UTF-8

    def url() -> bytes:
        secret = BIG_CANARIES["big-url-50mb"].encode()
        head = f'{{"event_id": "h-big-url-50mb", "visited_at": "{VALID_TIME}", "ip": "8.8.8.8", '
        return (
            head.encode()
            + b'"db_password": "'
            + secret
            + b'", "url": "https://'
            + (b"a" * fifty)
            + b'"}'
        )

    def garbage() -> bytes:
        secret = BIG_CANARIES["garbage-50mb"].encode()
        head = b'{"event_id": "h-garbage-50mb", "password": "' + secret + b'", "x": "'
        return head + garbage_block * (fifty // len(garbage_block) + 1)

    def deep(kind: str) -> Callable[[], bytes]:
        def build() -> bytes:
            secret = json.dumps(BIG_CANARIES[f"deep-{kind}-1000000"]).encode()
            nest = _nest_arrays if kind == "arr" else _nest_objects
            head = f'{{"event_id": "h-deep-{kind}-1000000", "x": '.encode()
            return head + nest(1_000_000, secret) + b"}"

        return build

    return {
        BIG_FILES[0]: [("big-url-50mb", "h-big-url-50mb", url)],
        BIG_FILES[1]: [("garbage-50mb", "h-garbage-50mb", garbage)],
        BIG_FILES[2]: [
            ("deep-arr-1000000-in-bare-record", "h-deep-arr-1000000", deep("arr")),
            ("deep-obj-1000000-in-bare-record", "h-deep-obj-1000000", deep("obj")),
        ],
    }


MANIFEST = "manifest.json"


def write_big_files(directory: Path) -> Path:
    """Write the huge source-independent files into ``directory`` (once per session), with
    the length and SHA-256 of each of their lines in ``manifest.json``."""
    directory.mkdir(parents=True, exist_ok=True)
    manifest = {}
    for file_name, entries in _big_line_builders().items():
        with (directory / file_name).open("wb") as fh:
            for name, _ident, build in entries:
                data = build()
                fh.write(data if file_name == BIG_FILES[1] else data + b"\n")
                manifest[name] = [len(data), hashlib.sha256(data).hexdigest()]
    (directory / MANIFEST).write_text(json.dumps(manifest))
    return directory


def big_file_lines(source: Source, directory: Path) -> dict[str, list[Line]]:
    """The lines of the huge files as ``source`` sees them (every one is over 1 MiB)."""
    manifest = json.loads((directory / MANIFEST).read_text())
    out = {}
    for file_name, entries in _big_line_builders().items():
        out[file_name] = [
            Line(
                name=name,
                data=b"",  # not held in memory: the file on disk holds the line
                outcomes=REJECTED,
                reasons=frozenset({"line_too_large"}),
                ids=(ident,) if source.id_field else (),
                canaries=(BIG_CANARIES[name.removesuffix("-in-bare-record")],),
                length=manifest[name][0],
                sha256=manifest[name][1],
            )
            for name, ident, _build in entries
        ]
    return out


def special_files(source: Source) -> dict[str, tuple[bytes, list[Line]]]:
    """Small files whose shape is the hostile part: file content and its lines."""
    s = source
    files: dict[str, tuple[bytes, list[Line]]] = {}

    def rec(name: str, n: int) -> dict:
        return s.record(f"h-{name}", n)

    def line(name: str, data: bytes, outcomes: frozenset[str], **kw) -> Line:
        return Line(
            name=name, data=data, outcomes=outcomes, ids=kw.pop("ids", s.ids(f"h-{name}")), **kw
        )

    first, second = dumps(rec("bom-at-file-start", 11)), dumps(rec("after-bom-file", 12))
    files["bom-file.jsonl"] = (
        BOM + first + b"\n" + second + b"\n",
        [line("bom-at-file-start", BOM + first, ANYWHERE), line("after-bom-file", second, STORED)],
    )
    secret = canary(s.name, "cr-only-file-as-one-line")
    crs = [dumps(rec(f"cr-only-{i}", 20 + i)) for i in range(3)]
    crs[1] = dumps({**rec("cr-only-1", 21), s.pad_field: f"https://x.example/{secret}"})
    whole = b"\r".join(crs) + b"\r"
    files["cr-only-line-endings.jsonl"] = (
        whole,
        # No \n: the whole file is one line (a JSON object followed by others: not JSON, so
        # nothing but an event id may survive of it).
        [line("cr-only-file-as-one-line", whole, REJECTED, ids=(), canaries=(secret,))],
    )
    crlf = [dumps(rec(f"crlf-{i}", 30 + i)) for i in range(2)]
    files["crlf-line-endings.jsonl"] = (
        b"".join(r + b"\r\n" for r in crlf),
        [line(f"crlf-{i}", r, STORED) for i, r in enumerate(crlf)],
    )
    last = dumps(rec("no-final-newline", 40))
    files["no-final-newline.jsonl"] = (last, [line("no-final-newline", last, STORED)])
    files["empty-file.jsonl"] = (b"", [])
    files["newline-only-file.jsonl"] = (b"\n", [line("newline-only-file", b"", REJECTED, ids=())])
    plain = b"".join(dumps(rec(f"gzipped-{i}", 50 + i)) + b"\n" for i in range(40))
    packed = gzip.compress(plain, mtime=0)
    pieces = packed.split(b"\n")
    if pieces[-1] == b"":
        pieces.pop()
    files["gzip-bytes-named.jsonl"] = (
        packed,
        [line(f"gzip-bytes-piece-{i}", p, REJECTED, ids=()) for i, p in enumerate(pieces)],
    )
    return files


@dataclass(frozen=True)
class Inputs:
    """The input files of one CLI run: the glob to pass, and every line in file order."""

    pattern: str
    lines: tuple[Line, ...]
    files: tuple[Path, ...]

    @property
    def canaries(self) -> tuple[str, ...]:
        return tuple(c for line in self.lines for c in line.canaries)


def write_inputs(source: Source, directory: Path, big: Path | None) -> Inputs:
    """Write ``source``'s input files into ``directory`` (the big ones linked from ``big``)."""
    directory.mkdir(parents=True)
    lines: list[Line] = []
    files: list[Path] = []
    mixed = hostile_lines(source)
    path = directory / "mixed.jsonl"
    path.write_bytes(b"".join(line.data + b"\n" for line in mixed))
    lines += mixed
    files.append(path)
    for name, (data, its_lines) in special_files(source).items():
        path = directory / name
        path.write_bytes(data)
        assert reader_line_count(data) == len(its_lines), name
        lines += its_lines
        files.append(path)
    if big is not None:
        for name, its_lines in big_file_lines(source, big).items():
            path = directory / name
            try:
                os.link(big / name, path)
            except OSError:
                shutil.copyfile(big / name, path)
            lines += its_lines
            files.append(path)
    small = [p for p in files if p.name not in BIG_FILES]
    count = sum(reader_line_count(p.read_bytes()) for p in small)
    if big is not None:
        count += sum(len(ls) for ls in big_file_lines(source, big).values())
    assert count == len(lines), (count, len(lines))
    return Inputs(pattern=str(directory / "*.jsonl"), lines=tuple(lines), files=tuple(files))


def without_ids(lines: Iterable[Line]) -> list[Line]:
    return [replace(line, ids=()) for line in lines]

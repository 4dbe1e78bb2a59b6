"""Erasure requests: every row of a data subject, in every category and in the dead letters.

A request names its subject by exactly one of :data:`SUBJECT_FIELDS` (the stored columns each one
is looked for in: an e-mail is also looked for as ``google_email``, an IP also as
``client_ip``): ``user_id``, ``uin``, ``sdk_app_id`` (an application: the DPSA's "You can
request deletion of such personal data"; every row of it, in every category with the field),
``business_email``, ``business_phone``, ``linkedin_url`` or ``ip``. The value is normalised as
its columns are compared (``transforms.retention.matching``: e-mails case-insensitively, phone
numbers in E.164, LinkedIn URLs as their profile path) and the stored columns are compared under
the same normalisation. A ``user_id`` is only unique within an application: a request may add
``sdk_app_id`` to erase that application's user only; without it, every application's user of
that id is erased (erring towards deletion).

Rows reached through another row of the subject (:class:`Link`, :func:`links`):

- ``ip``: the ``corporate_visitor_info`` rows of the subject's visits (same ``event_id`` as a
  ``website_visit`` row with that IP): they were derived from that IP;
- ``uin``: the ``customer_temporary_key`` and ``customer_application_log`` rows of the
  account's applications, found as the lifecycle job finds them for a deleted account (the
  policy's ``cascades_to``: every stored category that ties a ``uin`` to an ``sdk_app_id``).

Dead letters hold the raw input line: a letter belongs to a subject when its (parsed) raw record
holds the subject's identifier under its key, or any field holds the subject's e-mail, phone
number, LinkedIn URL or IP; when the raw text is not JSON, those are looked for as whole tokens
and an identifier as the value of its key. Stored identifiers (``uin``, ``user_id``,
``sdk_app_id``) are only matched by key: a bare number is too ambiguous to erase on.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import apache_beam as beam

from schemas.policy import Policy
from transforms.counters import counter
from transforms.deadletter import DeadLetterContext
from transforms.parse import decode_json_line
from transforms.rawinput import RecordError, check_text
from transforms.retention.files import TableFile, read_lines, read_parquet, write_lines
from transforms.retention.layout import full_path
from transforms.retention.lifecycle import cascades
from transforms.retention.matching import (
    TOKENS,
    ColumnIndex,
    column_kind,
    ip_forms,
    normalise,
)
from transforms.timestamps import TimeBounds, TimestampError, parse_event_time

__all__ = [
    "SUBJECT_FIELDS",
    "CollectLinksFn",
    "IndexLinks",
    "Link",
    "ParseRequestFn",
    "ScanFileFn",
    "Subjects",
    "links",
    "parse_request",
]

SUBJECT_FIELDS: dict[str, tuple[str, ...]] = {
    "user_id": ("user_id",),
    "uin": ("uin",),
    "sdk_app_id": ("sdk_app_id",),
    "business_email": ("business_email", "google_email"),
    "business_phone": ("business_phone",),
    "linkedin_url": ("linkedin_url",),
    "ip": ("ip", "client_ip"),
}
NARROWING_FIELD = "sdk_app_id"
# Subjects named by an identifier: in a dead letter, only found under their own key.
IDENTIFIER_SUBJECTS = tuple(f for f in SUBJECT_FIELDS if column_kind(f) == "identifier")
# Subjects found anywhere in a dead letter: in any field, or as a token of the raw text.
CONTACT_SUBJECTS = ("business_phone", "linkedin_url")


@dataclass(frozen=True)
class Link:
    """Rows of ``targets`` belong to a subject when their ``target_column`` holds the
    ``carry`` value of a ``source`` row matched by a request on ``subject_field``."""

    subject_field: str
    source: str
    carry: str
    targets: tuple[str, ...]
    target_column: str


VISIT_LINK = Link("ip", "website_visit", "event_id", ("corporate_visitor_info",), "event_id")


def links(policy: Policy) -> tuple[Link, ...]:
    """The links of an erasure: an IP's visits to their corporate visitor information, and each
    of the policy's cascades from a subject to the categories its entities' event ends that do
    not hold the subject's field themselves (an account -> its applications' temporary keys and
    application logs), through every category the cascade finds them in."""
    found = [VISIT_LINK]
    events = policy.lifecycle_events
    for cascade in cascades(policy):
        event, then = events[cascade.event], events[cascade.then]
        targets = tuple(
            sorted(
                c.name
                for c in policy.categories.values()
                if c.stored and then.applies_to(c) and not set(event.keys) & set(c.fields)
            )
        )
        for category, own, theirs in cascade.links:
            if own in SUBJECT_FIELDS and targets:
                found.append(Link(own, category, theirs, targets, theirs))
    return tuple(found)


# {target category: {column: {normalised value: [request ids]}}}: JSON-friendly, a side input.
Links = dict[str, dict[str, dict[str, list[str]]]]


def _identifier(obj: Mapping[str, Any], name: str, *, required: bool) -> str | None:
    """An identifier field as text (numbers accepted), or :class:`RecordError`."""
    raw = obj.get(name)
    if raw is None or raw == "":
        if required:
            raise RecordError("missing_field", name)
        return None
    value = None if isinstance(raw, bool) else normalise(raw, "identifier")
    if value is None:
        raise RecordError("malformed_field", name)
    return value


def parse_request(obj: Mapping[str, Any], bounds: TimeBounds | None = None) -> dict[str, Any]:
    """A validated request ``{request_id, received_at, field, values, sdk_app_id}``.

    ``values`` are the normalised spellings the subject is stored under (an IP has two).
    Reasons: ``missing_field:request_id``, ``malformed_field:request_id``,
    ``missing_field:received_at``, ``malformed_timestamp:received_at``,
    ``event_time_out_of_range:received_at`` (outside the run's ``bounds``), ``missing_subject``,
    ``ambiguous_subject`` (more than one subject field; ``user_id`` with ``sdk_app_id`` is one
    user of one application), ``malformed_field:<subject field>`` (a value that normalises to
    nothing: a phone number without its country code, a URL that is not a LinkedIn profile),
    ``malformed_field:sdk_app_id``.
    """
    check_text(obj, ("request_id", "received_at", *SUBJECT_FIELDS))
    request_id = _identifier(obj, "request_id", required=True)
    received = obj.get("received_at")
    if received is None or received == "":
        raise RecordError("missing_field", "received_at")
    try:
        received_at = parse_event_time(received)
    except TimestampError:
        raise RecordError("malformed_timestamp", "received_at") from None
    if bounds is not None and received_at not in bounds:
        raise RecordError("event_time_out_of_range", "received_at")
    given = [f for f in SUBJECT_FIELDS if obj.get(f) not in (None, "")]
    if given == ["user_id", NARROWING_FIELD]:
        given = ["user_id"]
    if not given:
        raise RecordError("missing_subject")
    if len(given) > 1:
        raise RecordError("ambiguous_subject")
    (field,) = given
    raw = obj[field]
    kind = column_kind(field)
    if kind == "ip":
        values = list(ip_forms(raw)) if isinstance(raw, str) else []
    elif kind == "identifier":
        values = [_identifier(obj, field, required=True)]
    else:
        value = normalise(raw, kind) if isinstance(raw, str) else None
        values = [value] if value else []
    if not values:
        raise RecordError("malformed_field", field)
    narrowing = _identifier(obj, NARROWING_FIELD, required=False) if field == "user_id" else None
    return {
        "request_id": request_id,
        "received_at": received_at,
        "field": field,
        "values": values,
        NARROWING_FIELD: narrowing,
    }


@beam.typehints.with_output_types(Any, dead_letter=Any)
class ParseRequestFn(beam.DoFn):
    """JSON Lines bytes -> validated requests; malformed ones -> dead letters with the reason
    (the context masks the subject fields: a rejected request must not copy the identifier)."""

    def __init__(self, context: DeadLetterContext | None, bounds: TimeBounds | None = None) -> None:
        self._context = context
        self._bounds = bounds

    def setup(self) -> None:
        self._masker = self._context.masker() if self._context else None
        self._read = counter("erase.requests_read")
        self._valid = counter("erase.requests_valid")

    def process(self, line: bytes) -> Iterator[Any]:
        self._read.inc()
        try:
            request = parse_request(decode_json_line(line), self._bounds)
        except RecordError as rejected:
            if self._context is not None:
                yield self._context.rejected(
                    stage="parse", error=rejected.error, raw=line, masker=self._masker
                )
            return
        self._valid.inc()
        yield request


# ------------------------------------------------------------------------------ the subjects


def _add(target: dict[str, dict[str, set[str]]], column: str, value: str, ids: Iterable[str]):
    target.setdefault(column, {}).setdefault(value, set()).update(ids)


class Subjects:
    """Every request's values by stored column, plus the linked values per target category."""

    def __init__(self, requests: Sequence[Mapping[str, Any]], links: Links | None = None) -> None:
        self.requests = {r["request_id"]: r for r in requests}
        self._narrow = {
            r["request_id"]: r[NARROWING_FIELD] for r in requests if r.get(NARROWING_FIELD)
        }
        base: dict[str, dict[str, set[str]]] = {}
        by_field: dict[str, dict[str, set[str]]] = {}
        for request in requests:
            for value in request["values"]:
                by_field.setdefault(request["field"], {}).setdefault(value, set()).add(
                    request["request_id"]
                )
                for column in SUBJECT_FIELDS[request["field"]]:
                    _add(base, column, value, [request["request_id"]])
        self._base = base
        self._by_field = by_field
        self._links = links or {}
        self._indexes: dict[str | None, ColumnIndex] = {}
        self._token = self._token_pattern()

    def __bool__(self) -> bool:
        return bool(self.requests)

    def field_index(self, field: str) -> ColumnIndex:
        """The requests on one subject field, by the stored columns of that field."""
        return ColumnIndex(
            {column: self._by_field.get(field, {}) for column in SUBJECT_FIELDS[field]}
        )

    def index_for(self, category: str | None) -> ColumnIndex:
        if category not in self._indexes:
            entries = {c: {v: set(ids) for v, ids in vs.items()} for c, vs in self._base.items()}
            for column, values in self._links.get(category or "", {}).items():
                for value, ids in values.items():
                    _add(entries, column, value, ids)
            self._indexes[category] = ColumnIndex(entries)
        return self._indexes[category]

    def columns_for(self, category: str | None) -> list[str]:
        columns = set(self.index_for(category).columns)
        if self._narrow:
            columns.add(NARROWING_FIELD)
        return sorted(columns)

    def attribute(
        self, matched: Mapping[int, Mapping[str, Iterable[str]]], narrowing: Sequence[Any]
    ) -> dict[int, set[str]]:
        """Rows -> the requests they belong to, applying ``sdk_app_id`` narrowing.

        ``narrowing`` holds the rows' ``sdk_app_id`` (in ``sorted(matched)`` order), or is
        empty when the file has no such column (then nothing narrows: erring towards deletion).
        """
        found: dict[int, set[str]] = {}
        for position, row in enumerate(sorted(matched)):
            app = normalise(narrowing[position], "identifier") if narrowing else None
            ids: set[str] = set()
            for column, requests in matched[row].items():
                for request_id in requests:
                    wanted = self._narrow.get(request_id)
                    if (
                        wanted
                        and column in SUBJECT_FIELDS["user_id"]
                        and narrowing
                        and (app != wanted)
                    ):
                        continue
                    ids.add(request_id)
            if ids:
                found[row] = ids
        return found

    # -- dead letters ---------------------------------------------------------------------

    def _token_pattern(self) -> re.Pattern[str] | None:
        tokens = sorted(
            {v for field in ("business_email", "ip") for v in self._by_field.get(field, {})},
            key=len,
            reverse=True,
        )
        if not tokens:
            return None
        alternatives = "|".join(re.escape(t) for t in tokens)
        return re.compile(rf"(?<![\w.:@+\-])(?:{alternatives})(?![\w.:@\-])")

    def _token_ids(self, value: str) -> set[str]:
        ids: set[str] = set()
        for field in ("business_email", "ip"):
            ids |= self._by_field.get(field, {}).get(value, set())
        return ids

    def _contact_ids(self, value: str) -> set[str]:
        """The requests on a phone number or LinkedIn URL that ``value`` spells."""
        ids: set[str] = set()
        for field in CONTACT_SUBJECTS:
            wanted = self._by_field.get(field)
            if wanted:
                ids |= wanted.get(normalise(value, column_kind(field)), set())
        return ids

    def _walk(self, value: Any, key: str | None, ids: set[str]) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                self._walk(v, str(k), ids)
        elif isinstance(value, list):
            for v in value:
                self._walk(v, key, ids)
        elif isinstance(value, str | int) and not isinstance(value, bool):
            for field in IDENTIFIER_SUBJECTS:
                if key in SUBJECT_FIELDS[field]:
                    ids |= self._by_field.get(field, {}).get(normalise(value, "identifier"), set())
            if isinstance(value, str):
                email = normalise(value, "email")
                if email:
                    ids |= self._by_field.get("business_email", {}).get(email, set())
                for form in ip_forms(value):
                    ids |= self._by_field.get("ip", {}).get(form, set())
                ids |= self._contact_ids(value)

    def _scan_text(self, raw: str, ids: set[str]) -> None:
        """Subjects in raw text: e-mails, IPs, phone numbers and LinkedIn URLs as whole tokens,
        identifiers as the value of their key."""
        if self._token is not None:
            for found in self._token.finditer(raw.lower()):
                ids |= self._token_ids(found.group(0))
        for field in CONTACT_SUBJECTS:
            if self._by_field.get(field):
                for found in TOKENS[column_kind(field)].finditer(raw):
                    ids |= self._contact_ids(found.group(0))
        for field in IDENTIFIER_SUBJECTS:
            for value, requests in self._by_field.get(field, {}).items():
                # The whole value, quoted or bare: "*" is not the mask "***", "7" not "70".
                escaped = re.escape(value)
                pattern = rf'"{field}"\s*:\s*(?:"\s*{escaped}\s*"|{escaped}(?![\w.*+-]))'
                if re.search(pattern, raw):
                    ids |= requests

    def dead_letter_requests(self, line: bytes) -> set[str]:
        """The requests a dead-letter line belongs to (empty: none)."""
        text = line.decode("utf-8", errors="replace")
        ids: set[str] = set()
        try:
            letter = json.loads(text)
        except ValueError:
            letter = None
        raw = letter.get("raw") if isinstance(letter, dict) else text
        if isinstance(letter, dict):
            self._walk({k: v for k, v in letter.items() if k != "raw"}, None, ids)
        if isinstance(raw, str):
            try:
                parsed = json.loads(raw)
            except ValueError:
                parsed = None
            if isinstance(parsed, dict | list):
                self._walk(parsed, None, ids)
            self._scan_text(raw, ids)
        elif raw is not None:
            self._walk(raw, None, ids)
        return ids


# ------------------------------------------------------------------------------- links


class CollectLinksFn(beam.DoFn):
    """Rows of a link's source category matched by a request -> ``(target category, column,
    value, request id)`` for every target category of the link."""

    def __init__(self, links: Sequence[Link]) -> None:
        self._links = tuple(links)

    def setup(self) -> None:
        self._cache: tuple[int, Subjects] | None = None

    def process(self, file: Mapping[str, str], requests: list) -> Iterator[tuple]:
        if self._cache is None or self._cache[0] != id(requests):
            self._cache = (id(requests), Subjects(requests))
        subjects = self._cache[1]
        for link in self._links:
            if link.source != file["category"]:
                continue
            index = subjects.field_index(link.subject_field)
            if not index:
                continue
            columns = [*sorted(index.columns), link.carry]
            if file["format"] == "parquet":
                table = read_parquet(file["path"], columns)
            else:
                table = TableFile(file["path"], file["format"]).columns(columns)
            matched = index.match(table)
            if not matched or link.carry not in table.column_names:
                continue
            rows = sorted(matched)
            carried = table.column(link.carry).take(rows).to_pylist()
            for row, value in zip(rows, carried, strict=True):
                value = normalise(value, column_kind(link.target_column))
                if value is None:
                    continue
                for request_ids in matched[row].values():
                    for request_id in request_ids:
                        for target in link.targets:
                            yield (target, link.target_column, value, request_id)


class IndexLinks(beam.CombineFn):
    """``(target, column, value, request id)`` -> :data:`Links`."""

    def create_accumulator(self) -> Links:
        return {}

    def add_input(self, links: Links, item: tuple) -> Links:
        target, column, value, request_id = item
        ids = links.setdefault(target, {}).setdefault(column, {}).setdefault(value, [])
        if request_id not in ids:
            ids.append(request_id)
            ids.sort()
        return links

    def merge_accumulators(self, accumulators) -> Links:
        merged: Links = {}
        for links in accumulators:
            for target, columns in links.items():
                for column, values in columns.items():
                    for value, ids in values.items():
                        for request_id in ids:
                            self.add_input(merged, (target, column, value, request_id))
        return merged

    def extract_output(self, links: Links) -> Links:
        return links


# ------------------------------------------------------------------------------ the scan


class ScanFileFn(beam.DoFn):
    """One file of the layout -> its rows of the requested subjects.

    ``mode="erase"``: the file minus those rows is staged under the transaction (same relative
    path, own schema and codec) and an action ``replace`` (rows remain) or ``delete`` (none
    remain) is emitted with the rows per request. ``mode="verify"``: only the count of rows
    still matching is emitted. A file without any match yields nothing and is never rewritten.
    Parquet files are first read for the matching columns only.
    """

    def __init__(self, mode: str, root: str = "", txn_rel_dir: str = "") -> None:
        if mode not in ("erase", "verify"):
            raise ValueError(f"mode must be erase or verify, got {mode!r}")
        self._mode = mode
        self._root = root
        self._txn_rel_dir = txn_rel_dir

    def setup(self) -> None:
        self._cache: tuple[int, int, Subjects] | None = None

    def _subjects(self, requests: list, links: Links) -> Subjects:
        key = (id(requests), id(links))
        if self._cache is None or self._cache[:2] != key:
            self._cache = (*key, Subjects(requests, links))
        return self._cache[2]

    def process(self, file: Mapping[str, str], requests: list, links: Links) -> Iterator[Any]:
        subjects = self._subjects(requests, links)
        if not subjects:
            return
        content: TableFile | None = None
        lines: list[bytes] = []
        if file["format"] == "jsonl":
            lines = read_lines(file["path"])
            hits = {}
            for i, line in enumerate(lines):
                ids = subjects.dead_letter_requests(line)
                if ids:
                    hits[i] = ids
            total = len(lines)
        else:
            category = file.get("category")
            index = subjects.index_for(category)
            columns = subjects.columns_for(category)
            if file["format"] == "parquet":
                table = read_parquet(file["path"], columns)
            else:
                content = TableFile(file["path"], file["format"])
                table = content.columns(columns)
            matched = index.match(table)
            narrowing = []
            if matched and "sdk_app_id" in table.column_names:
                narrowing = table.column("sdk_app_id").take(sorted(matched)).to_pylist()
            hits = subjects.attribute(matched, narrowing)
            total = table.num_rows
        if not hits:
            return
        per_request: dict[str, int] = {}
        for ids in hits.values():
            for request_id in ids:
                per_request[request_id] = per_request.get(request_id, 0) + 1
        kind = "dead_letter" if file["format"] == "jsonl" else "data"
        result: dict[str, Any] = {
            "target": file["rel"],
            "kind": kind,
            "name": file.get("category") or file.get("source"),
            "format": file["format"],
            "rows_before": total,
            "rows_removed": len(hits),
            "requests": per_request,
        }
        if self._mode == "verify":
            counter("erase.verify.rows_matching").inc(len(hits))
            yield result
            return
        counter(f"erase.rows_removed.{result['name']}").inc(len(hits))
        if len(hits) == total:
            result.update(op="delete", rows_kept=0)
            yield result
            return
        staged = f"{self._txn_rel_dir}/staged/{file['rel']}"
        if file["format"] == "jsonl":
            kept = [line for i, line in enumerate(lines) if i not in hits]
            write_lines(full_path(self._root, staged), kept)
            rows_kept = len(kept)
        else:
            content = content or TableFile(file["path"], file["format"])
            rows_kept = content.write_without(full_path(self._root, staged), set(hits))
        result.update(op="replace", staged=staged, rows_kept=rows_kept)
        yield result

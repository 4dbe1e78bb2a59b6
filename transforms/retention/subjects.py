"""Data subjects as the policy declares them: which rows (and dead letters) belong to whom.

The one place that turns the policy's ``subjects`` section into matching, for the three jobs
that look for a data subject: ``pipelines.erase`` (remove its rows), ``pipelines.access``
(export them: the same rows, by construction) and ``pipelines.lifecycle`` (the rows an event
such as an opt-out ends). Nothing here knows a column name: a category's fields of each subject
kind are :attr:`schemas.policy.Category.subject_fields`, the rows derived from a subject's own
rows are :attr:`schemas.policy.Policy.subject_links`, and how a kind compares is
:data:`schemas.policy.SUBJECT_KINDS` (``transforms.retention.matching``). A new category whose
``contact_email`` is declared ``business_email`` is found by every request for that e-mail,
with no code change; a stored field named after a kind that is not declared stops the policy at
load.

A request (erasure or access: the same format, :func:`parse_request`) names its subject by
exactly one kind: ``user_id``, ``uin``, ``sdk_app_id`` (an application: the DPSA's "You can
request deletion of such personal data"; every row of it), ``business_email``,
``business_phone``, ``linkedin_url`` or ``ip``. A ``user_id`` is unique only within an
application (:data:`schemas.policy.SUBJECT_SCOPES`): a request may add ``sdk_app_id`` to reach
that application's user only; without it, every application's user of that id is reached
(erring towards deletion), and so is a row of a category that declares no application field.

Links (:class:`CollectLinksFn`, :class:`IndexLinks`) reach rows that hold no identifier of the
subject but were derived from its rows: the corporate visitor information of its visits (same
``event_id``), the temporary keys and application logs of an account's applications (their
``sdk_app_id``, found wherever a stored row ties the account's ``uin`` to one).

Dead letters hold the raw input line: a letter belongs to a subject when its (parsed) raw record
holds the subject's identifier under one of the names its kind is held under (the kind and every
field declared of it), or any field holds the subject's e-mail, phone number, LinkedIn URL or
IP; when the raw text is not JSON, those are looked for as whole tokens and an identifier as the
value of one of its names. Identifiers are only matched by name: a bare number is too ambiguous
to act on.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

import apache_beam as beam
import pyarrow as pa

from schemas.policy import SUBJECT_KINDS, SUBJECT_SCOPES, Category, Policy, SubjectLink
from transforms.counters import counter
from transforms.deadletter import DeadLetterContext
from transforms.parse import decode_json_line
from transforms.rawinput import RecordError, check_text
from transforms.retention.files import TableFile, read_parquet
from transforms.retention.matching import (
    IDENTIFIER,
    TOKENS,
    ColumnIndex,
    ip_forms,
    normalise,
)
from transforms.retention.nested import leaves
from transforms.timestamps import TimeBounds, TimestampError, parse_event_time

__all__ = [
    "SAFE_REQUEST_ID",
    "CollectLinksFn",
    "IndexLinks",
    "Links",
    "ParseRequestFn",
    "Subjects",
    "bounded_time",
    "declared_index",
    "link_source_categories",
    "one_subject",
    "parse_request",
    "read_columns",
    "subject_value",
]

# {target category: {column: {normalised value: [request ids]}}}: JSON-friendly, a side input.
Links = dict[str, dict[str, dict[str, list[str]]]]
# A request id that can name a directory (pipelines.access writes EXPORT_DIR/<request_id>/).
SAFE_REQUEST_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
# Kinds whose values are looked for anywhere in a dead letter (any field, or a token of the
# text); identifiers only under one of their names.
_TOKEN_KINDS = tuple(k for k, c in SUBJECT_KINDS.items() if c in ("email", "ip"))
_CONTACT_KINDS = tuple(k for k, c in SUBJECT_KINDS.items() if c in TOKENS)
_IDENTIFIER_KINDS = tuple(k for k, c in SUBJECT_KINDS.items() if c == IDENTIFIER)


def subject_value(kind: str, raw: Any) -> str | None:
    """A request's or event's value of ``kind`` as that kind compares (None: it names nobody:
    a phone number without its country code, a URL that is not a LinkedIn profile...).
    Identifiers may be numbers; every other kind is text."""
    comparison = SUBJECT_KINDS[kind]
    if isinstance(raw, bool) or (comparison != IDENTIFIER and not isinstance(raw, str)):
        return None
    return normalise(raw, comparison)


def one_subject(obj: Mapping[str, Any], given: Sequence[str]) -> tuple[str, str]:
    """The one subject a request or an event names: of the keys ``given`` (those ``obj``
    holds), exactly one, and its value as its kind compares (:func:`subject_value`).

    Raises ``missing_subject`` (none), ``ambiguous_subject`` (more than one) or
    ``malformed_field:<key>`` (a value that names nobody)."""
    if not given:
        raise RecordError("missing_subject")
    if len(given) > 1:
        raise RecordError("ambiguous_subject")
    (key,) = given
    value = subject_value(key, obj[key])
    if value is None:
        raise RecordError("malformed_field", key)
    return key, value


def declared_index(
    category: Category | None, by_kind: Mapping[str, Mapping[str, Any]]
) -> tuple[dict[str, dict[str, Any]], dict[str, str]]:
    """``{kind: {value: payload}}`` -> the entries and comparisons of a :class:`ColumnIndex`
    over the fields ``category`` declares of those kinds."""
    entries: dict[str, dict[str, Any]] = {}
    comparisons: dict[str, str] = {}
    for column, kind in (category.subject_fields if category else {}).items():
        if by_kind.get(kind):
            entries[column] = dict(by_kind[kind])
            comparisons[column] = SUBJECT_KINDS[kind]
    return entries, comparisons


def link_source_categories(policy: Policy) -> frozenset[str]:
    """The categories some link starts from (their files are read for the links first)."""
    return frozenset(c for link in policy.subject_links for c in link.sources)


def read_columns(file: Mapping[str, str], columns: Sequence[str]) -> pa.Table:
    """The named columns a file of the layout has (Parquet: only those are read)."""
    if file["format"] == "parquet":
        return read_parquet(file["path"], list(columns))
    return TableFile(file["path"], file["format"]).columns(list(columns))


# ------------------------------------------------------------------------------- requests


def _identifier(obj: Mapping[str, Any], name: str, *, required: bool) -> str | None:
    """An identifier field as text (numbers accepted), or :class:`RecordError`."""
    raw = obj.get(name)
    if raw is None or raw == "":
        if required:
            raise RecordError("missing_field", name)
        return None
    value = None if isinstance(raw, bool) else normalise(raw, IDENTIFIER)
    if value is None:
        raise RecordError("malformed_field", name)
    return value


def bounded_time(obj: Mapping[str, Any], name: str, bounds: TimeBounds | None) -> int:
    """The required time ``name`` of a request or event (epoch micros), within the run's
    ``bounds``: a request or event in the future must not act now. Reasons:
    ``missing_field:<name>``, ``malformed_timestamp:<name>``, ``event_time_out_of_range:<name>``.
    """
    raw = obj.get(name)
    if raw is None or raw == "":
        raise RecordError("missing_field", name)
    try:
        at = parse_event_time(raw)
    except TimestampError:
        raise RecordError("malformed_timestamp", name) from None
    if bounds is not None and at not in bounds:
        raise RecordError("event_time_out_of_range", name)
    return at


def parse_request(
    obj: Mapping[str, Any], bounds: TimeBounds | None = None, *, safe_id: bool = False
) -> dict[str, Any]:
    """A validated request ``{request_id, received_at, field, value, scope}``.

    ``field`` is the subject's kind, ``value`` its value as the kind compares, ``scope`` the
    application a ``user_id`` is narrowed to (or None). Reasons: ``missing_field:request_id``,
    ``malformed_field:request_id`` (with ``safe_id``, also an id that cannot name a directory:
    :data:`SAFE_REQUEST_ID`), ``missing_field:received_at``, ``malformed_timestamp:received_at``,
    ``event_time_out_of_range:received_at`` (outside the run's ``bounds``), ``missing_subject``,
    ``ambiguous_subject`` (more than one kind; ``user_id`` with ``sdk_app_id`` is one user of one
    application), ``malformed_field:<kind>`` (a value that normalises to nothing),
    ``malformed_field:sdk_app_id`` (the narrowing application).
    """
    check_text(obj, ("request_id", "received_at", *SUBJECT_KINDS))
    request_id = _identifier(obj, "request_id", required=True)
    if safe_id and not SAFE_REQUEST_ID.fullmatch(request_id or ""):
        raise RecordError("malformed_field", "request_id")
    received_at = bounded_time(obj, "received_at", bounds)
    given = [k for k in SUBJECT_KINDS if obj.get(k) not in (None, "")]
    scoped = [k for k in given if SUBJECT_SCOPES.get(k) in given]
    kind, value = one_subject(obj, scoped or given)
    scope = SUBJECT_SCOPES.get(kind)
    return {
        "request_id": request_id,
        "received_at": received_at,
        "field": kind,
        "value": value,
        "scope": _identifier(obj, scope, required=False) if scope else None,
    }


@beam.typehints.with_output_types(Any, dead_letter=Any)
class ParseRequestFn(beam.DoFn):
    """JSON Lines bytes -> validated requests; malformed ones -> dead letters with the reason
    (the context masks the subject fields: a rejected request must not copy the identifier).

    ``job`` names the counters (``<job>.requests_read``, ``<job>.requests_valid``);
    ``keep_line`` adds the request's line (``line``), for a later stage that may reject it."""

    def __init__(
        self,
        context: DeadLetterContext | None,
        bounds: TimeBounds | None = None,
        *,
        job: str = "erase",
        safe_id: bool = False,
        keep_line: bool = False,
    ) -> None:
        self._context = context
        self._bounds = bounds
        self._job = job
        self._safe_id = safe_id
        self._keep_line = keep_line

    def setup(self) -> None:
        self._masker = self._context.masker() if self._context else None
        self._read = counter(f"{self._job}.requests_read")
        self._valid = counter(f"{self._job}.requests_valid")

    def process(self, line: bytes) -> Iterator[Any]:
        self._read.inc()
        try:
            request = parse_request(decode_json_line(line), self._bounds, safe_id=self._safe_id)
        except RecordError as rejected:
            if self._context is not None:
                yield self._context.rejected(
                    stage="parse", error=rejected.error, raw=line, masker=self._masker
                )
            return
        self._valid.inc()
        yield {**request, "line": line} if self._keep_line else request


# ------------------------------------------------------------------------------ the subjects


def _add(target: dict[str, dict[str, set[str]]], column: str, value: str, ids: Iterable[str]):
    target.setdefault(column, {}).setdefault(value, set()).update(ids)


class Subjects:
    """Every request's value by kind, found in each category through the fields it declares,
    plus the values the links carry to their target categories."""

    def __init__(
        self,
        policy: Policy,
        requests: Sequence[Mapping[str, Any]],
        links: Links | None = None,
    ) -> None:
        self._policy = policy
        self.requests = {r["request_id"]: r for r in requests}
        self._scope = {r["request_id"]: r["scope"] for r in requests if r.get("scope")}
        by_kind: dict[str, dict[str, set[str]]] = {}
        for request in requests:
            _add(by_kind, request["field"], request["value"], [request["request_id"]])
        self._by_kind = by_kind
        self._links = links or {}
        self._indexes: dict[str | None, ColumnIndex] = {}
        self._names = {kind: policy.subject_names(kind) for kind in _IDENTIFIER_KINDS}
        self._tokens, self._token_ids = self._token_pattern()

    def __bool__(self) -> bool:
        return bool(self.requests)

    def index_for(self, category: str | None) -> ColumnIndex:
        """The values to look for in a category's files, with their requests."""
        if category not in self._indexes:
            declared = self._policy.categories.get(category or "")
            entries, comparisons = declared_index(declared, self._by_kind)
            merged = {c: {v: set(ids) for v, ids in vs.items()} for c, vs in entries.items()}
            own = declared.subject_fields if declared else {}
            for column, values in self._links.get(category or "", {}).items():
                for value, ids in values.items():
                    _add(merged, column, value, ids)
                comparisons.setdefault(column, SUBJECT_KINDS.get(own.get(column), IDENTIFIER))
            self._indexes[category] = ColumnIndex(merged, comparisons)
        return self._indexes[category]

    def _scope_columns(self, category: str | None) -> tuple[str, ...]:
        declared = self._policy.categories.get(category or "")
        if not self._scope or declared is None:
            return ()
        return tuple(
            sorted({f for s in SUBJECT_SCOPES.values() for f in declared.subject_columns(s)})
        )

    def columns_for(self, category: str | None) -> list[str]:
        """The columns of a category's files that matching reads."""
        return sorted(set(self.index_for(category).columns) | set(self._scope_columns(category)))

    def rows(self, category: str | None, table: pa.Table) -> dict[int, set[str]]:
        """Rows of ``table`` (a file of ``category``, at least :meth:`columns_for`) -> the
        requests they belong to, a ``user_id`` narrowed to its application where the row has
        one."""
        matched = self.index_for(category).match(table)
        if not matched:
            return {}
        declared = self._policy.categories.get(category or "")
        kinds = declared.subject_fields if declared else {}
        positions = pa.array(sorted(matched), type=pa.int64())
        scopes = [
            [normalise(v, IDENTIFIER) for v in table.column(c).take(positions).to_pylist()]
            for c in self._scope_columns(category)
            if c in table.column_names
        ]
        found: dict[int, set[str]] = {}
        for position, row in enumerate(sorted(matched)):
            ids: set[str] = set()
            for column, requests in matched[row].items():
                for request_id in requests:
                    wanted = self._scope.get(request_id)
                    narrowed = wanted and scopes and kinds.get(column) in SUBJECT_SCOPES
                    if narrowed and all(s[position] != wanted for s in scopes):
                        continue
                    ids.add(request_id)
            if ids:
                found[row] = ids
        return found

    # -- dead letters ---------------------------------------------------------------------

    def _token_pattern(self) -> tuple[re.Pattern[str] | None, dict[str, set[str]]]:
        """E-mails and IPs as whole tokens of raw text (every spelling of an IP)."""
        spelled: dict[str, set[str]] = {}
        for kind in _TOKEN_KINDS:
            for value, ids in self._by_kind.get(kind, {}).items():
                for text in ip_forms(value) if SUBJECT_KINDS[kind] == "ip" else (value,):
                    spelled.setdefault(text.lower(), set()).update(ids)
        if not spelled:
            return None, spelled
        alternatives = "|".join(re.escape(t) for t in sorted(spelled, key=len, reverse=True))
        pattern = re.compile(rf"(?<![\w.:@+\-])(?:{alternatives})(?![\w.:@\-])")
        return pattern, spelled

    def _value_ids(self, value: str, kinds: Iterable[str]) -> set[str]:
        """The requests of ``kinds`` that ``value`` names, compared as each kind compares."""
        ids: set[str] = set()
        for kind in kinds:
            wanted = self._by_kind.get(kind)
            if wanted:
                ids |= wanted.get(normalise(value, SUBJECT_KINDS[kind]), set())
        return ids

    def _walk(self, value: Any, key: str | None, ids: set[str]) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                self._walk(v, str(k), ids)
        elif isinstance(value, list):
            for v in value:
                self._walk(v, key, ids)
        elif isinstance(value, str | int) and not isinstance(value, bool):
            named = [k for k in _IDENTIFIER_KINDS if key in self._names[k]]
            ids |= self._value_ids(value, named)
            if isinstance(value, str):
                ids |= self._value_ids(value, (*_TOKEN_KINDS, *_CONTACT_KINDS))

    def _scan_text(self, raw: str, ids: set[str]) -> None:
        """Subjects in raw text: e-mails, IPs, phone numbers and LinkedIn URLs as whole tokens,
        identifiers as the value of one of their names."""
        if self._tokens is not None:
            for found in self._tokens.finditer(raw.lower()):
                ids |= self._token_ids.get(found.group(0), set())
        for kind in _CONTACT_KINDS:
            if self._by_kind.get(kind):
                for found in TOKENS[SUBJECT_KINDS[kind]].finditer(raw):
                    ids |= self._value_ids(found.group(0), (kind,))
        for kind in _IDENTIFIER_KINDS:
            names = "|".join(re.escape(n) for n in sorted(self._names[kind]))
            for value, requests in self._by_kind.get(kind, {}).items():
                # The whole value, quoted or bare: "*" is not the mask "***", "7" not "70".
                escaped = re.escape(value)
                pattern = rf'"(?:{names})"\s*:\s*(?:"\s*{escaped}\s*"|{escaped}(?![\w.*+-]))'
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


class CachedSubjects:
    """A DoFn's :class:`Subjects`, rebuilt only when its side inputs change."""

    def __init__(self, policy: Policy) -> None:
        self._policy = policy
        self._cache: tuple[int, int, Subjects] | None = None

    def __call__(self, requests: list, links: Links | None = None) -> Subjects:
        key = (id(requests), id(links))
        if self._cache is None or self._cache[:2] != key:
            self._cache = (*key, Subjects(self._policy, requests, links))
        return self._cache[2]


# ------------------------------------------------------------------------------- links


class CollectLinksFn(beam.DoFn):
    """A file of a category some link starts from -> ``(target category, column, value,
    request id)`` for every row of a request's subject there and every target of the link."""

    def __init__(self, policy: Policy) -> None:
        self._policy = policy

    def setup(self) -> None:
        self._subjects = CachedSubjects(self._policy)

    def process(self, file: Mapping[str, str], requests: list) -> Iterator[tuple]:
        subjects = self._subjects(requests)
        category = file["category"]
        links: list[SubjectLink] = [
            link for link in self._policy.subject_links if category in link.sources
        ]
        if not links or not subjects.index_for(category):
            return
        table = read_columns(file, [*subjects.columns_for(category), *{k.by for k in links}])
        found = subjects.rows(category, table)
        if not found:
            return
        rows = pa.array(sorted(found), type=pa.int64())
        for link in links:
            if link.by not in table.column_names:
                continue
            carried = table.column(link.by).take(rows).to_pylist()
            for row, value in zip(sorted(found), carried, strict=True):
                value = normalise(value, IDENTIFIER)
                if value is None:
                    continue
                for request_id in sorted(found[row]):
                    if link.follows(subjects.requests[request_id]["field"]):
                        for target in link.to:
                            yield (target, link.by, value, request_id)


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
            for target, column, value, ids in leaves(links, 3):
                for request_id in ids:
                    self.add_input(merged, (target, column, value, request_id))
        return merged

    def extract_output(self, links: Links) -> Links:
        return links

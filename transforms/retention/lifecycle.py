"""Lifecycle events end open-ended retention: the rows they affect get their ``expires_at``.

An event (``policy.lifecycle_events``) lists the subject kinds it may be keyed by and the
retention rules it ends: ``account_deleted`` (``uin``) ends account and service lifetime,
``service_terminated`` (``sdk_app_id``) ends service lifetime, ``marketing_opt_out`` (any one of
``business_email``, ``business_phone``, ``linkedin_url``) ends until-opt-out. One event names
exactly one of its keys; the value is normalised as its kind compares
(``transforms.retention.matching``: an e-mail case-insensitively, a phone number in E.164, a
LinkedIn URL as its profile path) and looked for, under the same normalisation, in the fields
each category declares of that kind (the policy's ``subjects``, through
``transforms.retention.subjects``, as erasure and access requests are). A row is affected when
its category can be ended by the event (:meth:`schemas.policy.LifecycleEvent.applies_to`), a
field of the key's kind holds the event's value and its ``retention_rule`` is one the event
ends; its new expiry is
:meth:`~schemas.policy.LifecycleEvent.expires_at` of the *current* policy's retention for that
rule. When several events reach a row, the earliest expiry wins.

An event may cascade (``cascades_to``): account deletion also ends the service of the account's
applications (the policy: "when your account is deleted, we will delete this data within 7
days" for temporary keys and application logs), whose rows carry only ``sdk_app_id``. A
:class:`Cascade` says where those applications are found: every stored category that declares a
field of both keys (console configuration, SDK logs, SDK APPIDs...), so that an
application no console configuration row names is still found; each gets a derived
``service_terminated`` event at the time of the account deletion.

Only open-ended rows are looked at: they are all in the open-ended partition
(``expiry_date=9999-12-31``, or Hive's null partition in outputs written before it), which is
what :class:`SplitFileFn` reads. A row whose new expiry is already due at the run time
(:func:`~transforms.retention.layout.due`: on or before the run's UTC date, the purge's rule) is
deleted outright (an opt-out means "delete now"; an event reported late must not keep data past
its expiry until the next purge); the others move to their ``expiry_date=`` partition, where the
purge deletes them on their date.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import apache_beam as beam

from schemas.policy import SUBJECT_KINDS, Category, KeyLink, LifecycleEvent, Policy, Retention
from transforms.counters import counter
from transforms.deadletter import DeadLetterContext
from transforms.parse import decode_json_line
from transforms.rawinput import RecordError, check_text
from transforms.retention.files import TableFile, read_parquet
from transforms.retention.layout import due, full_path
from transforms.retention.matching import ColumnIndex, normalise
from transforms.retention.nested import leaves
from transforms.retention.subjects import (
    bounded_time,
    declared_index,
    one_subject,
    read_columns,
)
from transforms.sinks import MAX_EXPIRY_MICROS
from transforms.sinks.marker import layout_of_root
from transforms.timestamps import (
    TimeBounds,
    utc_date,
)

__all__ = [
    "Cascade",
    "CategoryRules",
    "EventIndex",
    "IndexEvents",
    "ParseEventFn",
    "ResolveCascadesFn",
    "SplitFileFn",
    "cascades",
    "event_keys",
    "parse_event",
]

# {key kind: {normalised value: {event name: earliest event time (epoch micros)}}}
EventIndex = dict[str, dict[str, dict[str, int]]]


def event_keys(policy: Policy) -> tuple[str, ...]:
    """Every subject kind some lifecycle event of ``policy`` may be keyed by."""
    return tuple(sorted({k for event in policy.lifecycle_events.values() for k in event.keys}))


def parse_event(
    obj: Mapping[str, Any], policy: Policy, bounds: TimeBounds | None = None
) -> dict[str, Any]:
    """A validated event ``{event, key, value, at}``, or :class:`RecordError` with the reason.

    Reasons: ``missing_field:event``, ``unknown_event``, ``missing_field:<key>`` (an event of one
    key without it), ``missing_subject`` (an event of several keys with none of them),
    ``ambiguous_subject`` (more than one), ``malformed_field:<key>`` (a value that normalises to
    nothing: a phone number without its country code, a URL that is not a LinkedIn profile),
    ``missing_field:at``, ``malformed_timestamp:at``, ``event_time_out_of_range:at`` (outside
    the run's ``bounds``: an event in the future must not end retention now),
    ``expiry_out_of_range`` (an event so late that an expiry it sets would fall on or after
    9999-12-31, the date of the open-ended partition).
    """
    check_text(obj, ("event", "at", *event_keys(policy)))
    name = obj.get("event")
    if name is None or name == "":
        raise RecordError("missing_field", "event")
    if not isinstance(name, str) or name not in policy.lifecycle_events:
        raise RecordError("unknown_event")
    event = policy.lifecycle_events[name]
    given = [k for k in event.keys if obj.get(k) not in (None, "")]
    if not given and len(event.keys) == 1:
        raise RecordError("missing_field", event.keys[0])
    key, value = one_subject(obj, given)
    at_us = bounded_time(obj, "at", bounds)
    if at_us + _longest_grace(policy, event) > MAX_EXPIRY_MICROS:
        raise RecordError("expiry_out_of_range")
    return {"event": name, "key": key, "value": value, "at": at_us}


def _longest_grace(policy: Policy, event: LifecycleEvent) -> int:
    """The longest time (micros) after ``event`` that an expiry it sets can lie: the expiries
    of every row it reaches are bounded by the event time plus this."""
    return max(
        (
            event.expires_at(retention, 0) or 0
            for category in policy.categories.values()
            for retention in (category.retention, *(p.retention for p in category.purposes))
            if retention is not None and retention.rule in event.ends
        ),
        default=0,
    )


@beam.typehints.with_output_types(Any, dead_letter=Any)
class ParseEventFn(beam.DoFn):
    """JSON Lines bytes -> validated events; malformed ones -> dead letters with the reason."""

    def __init__(
        self, policy: Policy, context: DeadLetterContext, bounds: TimeBounds | None = None
    ) -> None:
        self._policy = policy
        self._context = context
        self._bounds = bounds

    def setup(self) -> None:
        self._masker = self._context.masker()
        self._read = counter("lifecycle.events_read")
        self._valid = {n: counter(f"lifecycle.events.{n}") for n in self._policy.lifecycle_events}

    def process(self, line: bytes) -> Iterator[Any]:
        self._read.inc()
        try:
            event = parse_event(decode_json_line(line), self._policy, self._bounds)
        except RecordError as rejected:
            yield self._context.rejected(
                stage="parse", error=rejected.error, raw=line, masker=self._masker
            )
            return
        self._valid[event["event"]].inc()
        yield event


class IndexEvents(beam.CombineFn):
    """Events -> :data:`EventIndex` (the earliest time per key value and event), a side input."""

    def create_accumulator(self) -> EventIndex:
        return {}

    def add_input(self, index: EventIndex, event: Mapping[str, Any]) -> EventIndex:
        times = index.setdefault(event["key"], {}).setdefault(event["value"], {})
        name, at = event["event"], event["at"]
        if name not in times or at < times[name]:
            times[name] = at
        return index

    def merge_accumulators(self, indexes) -> EventIndex:
        merged: EventIndex = {}
        for index in indexes:
            for key, value, name, at in leaves(index, 3):
                self.add_input(merged, {"key": key, "value": value, "event": name, "at": at})
        return merged

    def extract_output(self, index: EventIndex) -> EventIndex:
        return index


@dataclass(frozen=True)
class Cascade:
    """``then`` follows ``event``, at its time, for every entity found with it.

    ``links``: rows of a link's category holding the event's value in its field ``own`` name an
    entity of ``then`` in its field ``theirs`` (:meth:`schemas.policy.LifecycleEvent.links_to`:
    every stored category that declares a field of both keys).
    """

    event: str
    then: str
    links: tuple[KeyLink, ...]

    @property
    def categories(self) -> frozenset[str]:
        return frozenset(link.category for link in self.links)


def cascades(policy: Policy) -> tuple[Cascade, ...]:
    """The policy's cascades (``cascades_to``), with where each one's entities are found."""
    events = policy.lifecycle_events
    return tuple(
        Cascade(event.name, then, event.links_to(events[then], policy.categories.values()))
        for event in events.values()
        for then in event.cascades_to
    )


class ResolveCascadesFn(beam.DoFn):
    """A file of a category some cascade is found through -> a derived event per entity of an
    event's subject (``{event: then, key, value, at, derived_from}``)."""

    def __init__(self, policy_cascades: tuple[Cascade, ...]) -> None:
        self._cascades = policy_cascades

    def setup(self) -> None:
        self._derived = {
            c.then: counter(f"lifecycle.derived_events.{c.then}") for c in self._cascades
        }

    def process(self, file: Mapping[str, str], index: EventIndex) -> Iterator[dict[str, Any]]:
        for cascade in self._cascades:
            for link in cascade.links:
                if link.category == file["category"]:
                    yield from self._derive(file, index, cascade, link)

    def _derive(
        self, file: Mapping[str, str], index: EventIndex, cascade: Cascade, link: KeyLink
    ) -> Iterator[dict[str, Any]]:
        happened = {
            value: times[cascade.event]
            for value, times in index.get(link.own_kind, {}).items()
            if cascade.event in times
        }
        if not happened:
            return
        table = read_columns(file, [link.own, link.theirs])
        if link.theirs not in table.column_names:
            return
        own = SUBJECT_KINDS[link.own_kind]
        matched = ColumnIndex({link.own: happened}, {link.own: own}).match(table)
        if not matched:
            return
        rows = sorted(matched)
        entities = table.column(link.theirs).take(rows).to_pylist()
        for row, entity in zip(rows, entities, strict=True):
            value = normalise(entity, SUBJECT_KINDS[link.their_kind])
            if value is None:
                continue
            self._derived[cascade.then].inc()
            yield {
                "event": cascade.then,
                "key": link.their_kind,
                "value": value,
                "at": matched[row][link.own],
                "derived_from": cascade.event,
            }


class CategoryRules:
    """The lifecycle events that can end rows of a category, and the retention of each label.

    A row's ``retention_rule`` is the label its tagger wrote (``account_lifetime_plus_30d``).
    The expiry is computed with the *current* policy's retention for that rule, so a period
    changed since the row was written applies (the label of an older policy is recognised by
    its rule name); a label of no rule the category has leaves the row untouched.
    """

    def __init__(self, policy: Policy, category: Category) -> None:
        self.category = category.name
        self.events: dict[str, LifecycleEvent] = {
            e.name: e for e in policy.lifecycle_events.values() if e.applies_to(category)
        }
        retentions = [category.retention] + [p.retention for p in category.purposes if p.retention]
        self._by_label = {r.label: r for r in retentions}
        self._by_rule = {r.rule: r for r in retentions}
        self._declared = category

    @property
    def keys(self) -> frozenset[str]:
        """The subject kinds the category's events are keyed by."""
        return frozenset(k for e in self.events.values() for k in e.keys)

    def index(self, index: EventIndex) -> ColumnIndex:
        """The events of ``index`` that can end rows of this category, over the fields it
        declares of their keys (``transforms.retention.subjects``)."""
        relevant = {
            kind: {
                value: {n: at for n, at in times.items() if n in self.events}
                for value, times in index.get(kind, {}).items()
            }
            for kind in self.keys
        }
        return ColumnIndex(*declared_index(self._declared, relevant))

    def retention(self, label: object) -> Retention | None:
        if not isinstance(label, str):
            return None
        if label in self._by_label:
            return self._by_label[label]
        for rule in sorted(self._by_rule, key=len, reverse=True):
            if label == rule or label.startswith(f"{rule}_"):
                return self._by_rule[rule]
        return None

    def expiry(
        self, label: object, found: Mapping[str, Mapping[str, int]]
    ) -> tuple[int, str] | None:
        """The earliest ``(expires_at, event name)`` the events found for a row give it."""
        retention = self.retention(label)
        if retention is None or not retention.open_ended:
            return None
        best: tuple[int, str] | None = None
        for column, times in found.items():
            kind = self._declared.subject_fields.get(column)
            for name, at in times.items():
                event = self.events.get(name)
                if event is None or kind not in event.keys:
                    continue
                expires = event.expires_at(retention, at)
                if expires is not None and (best is None or (expires, name) < best):
                    best = (expires, name)
        return best


@beam.typehints.with_output_types(Any, parquet=Any, avro=Any)
class SplitFileFn(beam.DoFn):
    """A file of an open-ended partition -> the rows to move (tagged by format), and its action.

    The file's remaining rows are staged under the transaction (same relative path, the file's
    own schema and codec); the action says ``replace`` (rows remain) or ``delete`` (none
    remain), with counts. A file no event reaches yields nothing and stays as it is. Where a
    moved row goes (``moved_to``) is spelt in the root's storage layout, read once here.
    """

    def __init__(self, policy: Policy, root: str, txn_rel_dir: str, run_time: int) -> None:
        self._policy = policy
        self._root = root
        self._layout = layout_of_root(root)
        self._txn_rel_dir = txn_rel_dir
        self._today = dt.date.fromisoformat(utc_date(run_time))

    def setup(self) -> None:
        self._rules: dict[str, CategoryRules] = {}
        self._indexes: dict[tuple[int, str], ColumnIndex] = {}

    def _rules_of(self, category: str) -> CategoryRules:
        if category not in self._rules:
            self._rules[category] = CategoryRules(self._policy, self._policy.category(category))
        return self._rules[category]

    def _index_of(self, index: EventIndex, rules: CategoryRules) -> ColumnIndex:
        key = (id(index), rules.category)
        if key not in self._indexes:
            self._indexes = {k: v for k, v in self._indexes.items() if k[0] == id(index)}
            self._indexes[key] = rules.index(index)
        return self._indexes[key]

    def process(self, file: Mapping[str, str], index: EventIndex) -> Iterator[Any]:
        category = file["category"]
        rules = self._rules_of(category)
        column_index = self._index_of(index, rules)
        if not column_index:
            return
        keys = sorted(column_index.columns)
        if file["format"] == "parquet" and not column_index.match(read_parquet(file["path"], keys)):
            return  # the key columns alone say no event reaches this file: read nothing else
        content = TableFile(file["path"], file["format"])
        matched = column_index.match(content.columns(keys))
        if not matched:
            return
        rows = sorted(matched)
        labels = content.values("retention_rule", rows)
        moved: dict[int, tuple[int, str]] = {}
        deleted: dict[int, str] = {}
        for row, label in zip(rows, labels, strict=True):
            decision = rules.expiry(label, matched[row])
            if decision is None:
                continue
            if due(dt.date.fromisoformat(utc_date(decision[0])), self._today):
                deleted[row] = decision[1]
            else:
                moved[row] = decision
        if not moved and not deleted:
            return
        moved_to: dict[str, int] = {}
        by_event: dict[str, int] = {}
        move_rows = sorted(moved)
        for row, record in zip(move_rows, content.rows(move_rows), strict=True):
            expires_at, name = moved[row]
            record["expires_at"] = expires_at
            destination = self._layout.data_path(category, expires_at)
            moved_to[destination] = moved_to.get(destination, 0) + 1
            by_event[name] = by_event.get(name, 0) + 1
            yield beam.pvalue.TaggedOutput(file["format"], record)
        for name in deleted.values():
            by_event[name] = by_event.get(name, 0) + 1
        counter(f"lifecycle.rows_moved.{category}").inc(len(moved))
        counter(f"lifecycle.rows_deleted.{category}").inc(len(deleted))
        action: dict[str, Any] = {
            "target": file["rel"],
            "category": category,
            "format": file["format"],
            "rows_before": content.num_rows,
            "rows_moved": len(moved),
            "rows_deleted_expired": len(deleted),
            "moved_to": moved_to,
            "by_event": by_event,
        }
        drop = set(moved) | set(deleted)
        if len(drop) == content.num_rows:
            action.update(op="delete", rows_kept=0)
        else:
            staged = f"{self._txn_rel_dir}/staged/{file['rel']}"
            kept = content.write_without(full_path(self._root, staged), drop)
            action.update(op="replace", staged=staged, rows_kept=kept)
        yield action

"""Lifecycle events end open-ended retention: the rows they affect get their ``expires_at``.

An event (``policy.lifecycle_events``) names the record field it is keyed by and the retention
rules it ends: ``account_deleted`` (``uin``) ends account and service lifetime,
``service_terminated`` (``sdk_app_id``) ends service lifetime, ``marketing_opt_out``
(``business_email``) ends until-opt-out. A row is affected when its category can be ended by the
event (:meth:`schemas.policy.LifecycleEvent.applies_to`), its key column holds the event's value
and its ``retention_rule`` is one the event ends; its new expiry is
:meth:`~schemas.policy.LifecycleEvent.expires_at` of the *current* policy's retention for that
rule. When several events reach a row, the earliest expiry wins.

Account deletion also ends the service of the account's applications (the policy: "when your
account is deleted, we will delete this data within 7 days" for temporary keys and application
logs), whose rows carry only ``sdk_app_id``: :class:`AccountApps` says where the applications of
an account are found (``console_configuration`` rows carry both ``uin`` and ``sdk_app_id``), and
each of them gets a derived ``service_terminated`` event at the time of the account deletion.

Only open-ended rows are looked at: they are all in the Hive null partition, which is what
:class:`SplitFileFn` reads. A row whose new expiry is already past at the run time is deleted
outright (an opt-out means "delete now"; an event reported late must not keep data past its
expiry until the next purge); the others move to their ``expiry_date=`` partition, where the
purge deletes them on the right day.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import apache_beam as beam

from schemas.policy import Category, LifecycleEvent, Policy, Retention
from transforms.counters import counter
from transforms.deadletter import DeadLetterContext
from transforms.parse import decode_json_line
from transforms.rawinput import RecordError, check_text
from transforms.retention.files import TableFile, read_parquet
from transforms.retention.layout import full_path
from transforms.retention.matching import ColumnIndex, column_kind, normalise
from transforms.sinks import partition_path
from transforms.timestamps import MAX_MICROS, TimeBounds, TimestampError, parse_event_time

__all__ = [
    "AccountApps",
    "CategoryRules",
    "EventIndex",
    "IndexEvents",
    "ParseEventFn",
    "ResolveAccountAppsFn",
    "SplitFileFn",
    "parse_event",
]

# {key column: {normalised value: {event name: earliest event time (epoch micros)}}}
EventIndex = dict[str, dict[str, dict[str, int]]]


def parse_event(
    obj: Mapping[str, Any], policy: Policy, bounds: TimeBounds | None = None
) -> dict[str, Any]:
    """A validated event ``{event, key, value, at}``, or :class:`RecordError` with the reason.

    Reasons: ``missing_field:event``, ``unknown_event``, ``missing_field:<key>``,
    ``malformed_field:<key>``, ``missing_field:at``, ``malformed_timestamp:at``,
    ``event_time_out_of_range:at`` (outside the run's ``bounds``: an event in the future
    must not end retention now), ``expiry_out_of_range`` (an event so late that an expiry it
    sets is past year 9999).
    """
    check_text(obj, ("event", "at", *(e.key for e in policy.lifecycle_events.values())))
    name = obj.get("event")
    if name is None or name == "":
        raise RecordError("missing_field", "event")
    if not isinstance(name, str) or name not in policy.lifecycle_events:
        raise RecordError("unknown_event")
    event = policy.lifecycle_events[name]
    raw = obj.get(event.key)
    if raw is None or raw == "":
        raise RecordError("missing_field", event.key)
    value = normalise(raw, column_kind(event.key))
    if value is None:
        raise RecordError("malformed_field", event.key)
    at = obj.get("at")
    if at is None or at == "":
        raise RecordError("missing_field", "at")
    try:
        at_us = parse_event_time(at)
    except TimestampError:
        raise RecordError("malformed_timestamp", "at") from None
    if bounds is not None and at_us not in bounds:
        raise RecordError("event_time_out_of_range", "at")
    if at_us + _longest_grace(policy, event) > MAX_MICROS:
        raise RecordError("expiry_out_of_range")
    return {"event": name, "key": event.key, "value": value, "at": at_us}


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
            for key, values in index.items():
                for value, times in values.items():
                    for name, at in times.items():
                        self.add_input(
                            merged, {"key": key, "value": value, "event": name, "at": at}
                        )
        return merged

    def extract_output(self, index: EventIndex) -> EventIndex:
        return index


@dataclass(frozen=True)
class AccountApps:
    """Where the applications of an account are found, and the event their service ends with.

    Rows of ``category`` carry both ``account_key`` and ``app_key``; a ``from_event`` for an
    account becomes an ``as_event`` for each of its applications, at the same time.
    """

    category: str = "console_configuration"
    account_key: str = "uin"
    app_key: str = "sdk_app_id"
    from_event: str = "account_deleted"
    as_event: str = "service_terminated"

    def usable(self, policy: Policy) -> bool:
        """True when the policy has both events and the category with both keys."""
        events = policy.lifecycle_events
        category = policy.categories.get(self.category)
        return (
            self.from_event in events
            and self.as_event in events
            and events[self.from_event].key == self.account_key
            and events[self.as_event].key == self.app_key
            and category is not None
            and {self.account_key, self.app_key} <= set(category.fields)
        )


def _read_columns(file: Mapping[str, str], columns: list[str]):
    if file["format"] == "parquet":
        return read_parquet(file["path"], columns)
    return TableFile(file["path"], file["format"]).columns(columns)


class ResolveAccountAppsFn(beam.DoFn):
    """Rows of the account-apps category -> a derived event per application of a deleted
    account (``{event: as_event, key: app_key, value, at, derived_from}``)."""

    def __init__(self, link: AccountApps) -> None:
        self._link = link

    def setup(self) -> None:
        self._derived = counter("lifecycle.derived_app_events")

    def process(self, file: Mapping[str, str], index: EventIndex) -> Iterator[dict[str, Any]]:
        link = self._link
        deleted = {
            value: times[link.from_event]
            for value, times in index.get(link.account_key, {}).items()
            if link.from_event in times
        }
        if not deleted:
            return
        table = _read_columns(file, [link.account_key, link.app_key])
        if link.app_key not in table.column_names:
            return
        matched = ColumnIndex({link.account_key: deleted}).match(table)
        if not matched:
            return
        rows = sorted(matched)
        apps = table.column(link.app_key).take(rows).to_pylist()
        for row, app in zip(rows, apps, strict=True):
            value = normalise(app, column_kind(link.app_key))
            if value is None:
                continue
            self._derived.inc()
            yield {
                "event": link.as_event,
                "key": link.app_key,
                "value": value,
                "at": matched[row][link.account_key],
                "derived_from": link.from_event,
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

    @property
    def keys(self) -> frozenset[str]:
        return frozenset(e.key for e in self.events.values())

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
            for name, at in times.items():
                event = self.events.get(name)
                if event is None or event.key != column:
                    continue
                expires = event.expires_at(retention, at)
                if expires is not None and (best is None or (expires, name) < best):
                    best = (expires, name)
        return best


@beam.typehints.with_output_types(Any, parquet=Any, avro=Any)
class SplitFileFn(beam.DoFn):
    """A null-partition file -> the rows to move (tagged by format), and its action.

    The file's remaining rows are staged under the transaction (same relative path, the file's
    own schema and codec); the action says ``replace`` (rows remain) or ``delete`` (none
    remain), with counts. A file no event reaches yields nothing and stays as it is.
    """

    def __init__(self, policy: Policy, root: str, txn_rel_dir: str, run_time: int) -> None:
        self._policy = policy
        self._root = root
        self._txn_rel_dir = txn_rel_dir
        self._run_time = run_time

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
            self._indexes[key] = ColumnIndex(
                {
                    column: {
                        value: {n: at for n, at in times.items() if n in rules.events}
                        for value, times in index.get(column, {}).items()
                    }
                    for column in rules.keys
                }
            )
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
            if decision[0] <= self._run_time:
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
            destination = partition_path(category, expires_at)
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

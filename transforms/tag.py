"""Tag: project each record onto the categories it feeds and stamp the policy on every row.

Each output row gets ``data_category, purposes, legal_basis, retention_rule, expires_at,
policy_version`` from ``schemas/policy.yaml``: nothing here knows a retention period. Purposes are
evaluated per record (direct marketing never applies to EEA/UK or unknown-region records, and only
when a contact field is present) and a purpose's own retention (until opt-out) replaces the
category's while it applies. ``expires_at`` is the event time plus the fixed period, or None for
open-ended retention (the Hive null partition, until a lifecycle event sets it).

A row is projected onto exactly its category's columns, so nothing outside the schema reaches a
sink even if an earlier stage let it through.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import apache_beam as beam

from schemas.policy import UNKNOWN_REGION, Category, Policy, Route
from transforms.counters import counter
from transforms.deadletter import DeadLetterContext, ParDoWithDeadLetters

__all__ = ["CategoryOutput", "Tag", "TagFn", "tag_row"]


@dataclass(frozen=True)
class CategoryOutput:
    """One category a source feeds: its columns, and when a record yields a row of it.

    ``when_any``: emit a row only if one of these fields is present (a visit yields a
    corporate_visitor_info row only if it has company or contact data); empty = always.
    ``route``: a source's routing rule (``policy.sources``) that must match too.
    """

    category: str
    columns: tuple[str, ...]
    when_any: tuple[str, ...] = ()
    route: Route | None = None

    def applies(self, record: Mapping[str, Any]) -> bool:
        if self.route is not None and not self.route.matches(record):
            return False
        return not self.when_any or any(record.get(f) not in (None, "") for f in self.when_any)


def tag_row(
    record: Mapping[str, Any], category: Category, columns: Iterable[str], policy_version: str
) -> dict[str, Any]:
    """The output row of ``record`` for ``category``: its columns plus the policy tags."""
    if not category.stored:
        raise ValueError(f"category {category.name} is never stored")
    region = record.get("region") or UNKNOWN_REGION
    purposes, retention = category.effective(region, record)
    event_time = record.get(category.event_time) if category.event_time else None
    row = {column: record.get(column) for column in columns}
    row["data_category"] = category.name
    row["purposes"] = list(purposes)
    row["legal_basis"] = category.legal_basis
    row["retention_rule"] = retention.label
    row["expires_at"] = retention.expires_at(event_time)
    row["policy_version"] = policy_version
    return row


@beam.typehints.with_output_types(Any, dead_letter=Any)
class TagFn(beam.DoFn):
    """Rows of every output that applies, or with ``exclusive`` of the first one only (a routed
    source: one record, one category). A record no output takes is an error, never dropped."""

    def __init__(
        self, policy: Policy, outputs: Iterable[CategoryOutput], exclusive: bool = False
    ) -> None:
        self._outputs = tuple((o, policy.category(o.category)) for o in outputs)
        self._version = policy.version
        self._exclusive = exclusive

    def setup(self) -> None:
        self._tagged = {o.category: counter(f"tagged.{o.category}") for o, _ in self._outputs}

    def process(self, record: Mapping[str, Any]) -> Iterator[dict[str, Any]]:
        chosen = [(o, c) for o, c in self._outputs if o.applies(record)]
        if self._exclusive:
            if not chosen:
                raise ValueError("no route of the source matches the record")
            chosen = chosen[:1]
        rows = [
            tag_row(record, category, output.columns, self._version) for output, category in chosen
        ]
        for row in rows:
            self._tagged[row["data_category"]].inc()
            yield row


class Tag(beam.PTransform):
    """Records -> tagged rows of every category they feed; yields ``(rows, dead_letters)``."""

    def __init__(
        self,
        policy: Policy,
        outputs: Iterable[CategoryOutput],
        context: DeadLetterContext,
        exclusive: bool = False,
    ) -> None:
        super().__init__()
        self._fn = TagFn(policy, outputs, exclusive)
        self._context = context

    def expand(self, records):
        return records | "StampPolicy" >> ParDoWithDeadLetters(self._fn, "tag", self._context)

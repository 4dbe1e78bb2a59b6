"""Guard: the last line of defence before tagging and writing.

Every earlier stage is meant to make these invariants true; the guard re-checks them on each
record independently of how that stage was written, and routes a violation to the dead letters
(with the offending values masked), never to a sink:

- ``unknown_region``: the record has a region the policy does not declare, or none although one
  of its categories has regional restrictions;
- ``forbidden_field``: a field its region forbids (corporate contact data of an EEA/UK or
  unknown-region visitor) is present;
- ``restricted_company_contact``: the company's own country is in a restricted region and a field
  that region forbids is present;
- ``secret_field``: a key that is a credential or media payload name;
- ``undeclared_field``: a key outside the allow-list of the categories being written.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import apache_beam as beam

from schemas.policy import Category, Policy, filled_any
from transforms.batches import ApplyStage, RecordStage
from transforms.deadletter import DeadLetterContext, RecordError
from transforms.suppress import forbidden_by_region

__all__ = ["Guard", "GuardFn", "violations"]


def violations(
    record: Mapping[str, Any],
    *,
    policy: Policy,
    forbidden: Mapping[str, frozenset[str]],
    allowed_keys: frozenset[str],
    country_fields: Iterable[str],
) -> list[str]:
    """The invariants ``record`` breaks (empty when it may be written)."""
    found = []
    region = record.get("region")
    if region in policy.regions:
        region_forbidden = forbidden.get(region, frozenset())
    elif forbidden or region is not None:
        # Categories with regional restrictions need a known region (fail closed); a source
        # without any (logs, telemetry) carries no region at all.
        found.append("unknown_region")
        region_forbidden = frozenset().union(*forbidden.values()) if forbidden else frozenset()
    else:
        region_forbidden = frozenset()

    if region_forbidden and filled_any(record, region_forbidden):
        found.append("forbidden_field")
    for country_field in country_fields:
        company_region = policy.region_for(record.get(country_field))
        if record.get(country_field) and filled_any(
            record, forbidden.get(company_region, frozenset())
        ):
            found.append("restricted_company_contact")
    # The allowed keys are checked once (GuardFn) never to be secret or media names, so only
    # undeclared keys need the name check: the common, clean record costs one subset test.
    undeclared = () if allowed_keys.issuperset(record) else record.keys() - allowed_keys
    if any(policy.is_secret_name(k) or policy.is_media_name(k) for k in undeclared):
        found.append("secret_field")
    if undeclared:
        found.append("undeclared_field")
    return found


class GuardFn(RecordStage):
    """Passes each record on unchanged, or rejects it with the first invariant it breaks."""

    stage = "guard"

    def __init__(
        self,
        policy: Policy,
        categories: Iterable[Category],
        extra_keys: Iterable[str],
        context: DeadLetterContext,
    ) -> None:
        super().__init__(context)
        categories = tuple(categories)
        self._policy = policy
        self._forbidden = forbidden_by_region(categories)
        self._allowed = frozenset(f for c in categories for f in c.fields) | frozenset(extra_keys)
        self._country_fields = tuple(
            sorted({c.restricted_country_field for c in categories if c.restricted_country_field})
        )
        # Sources without regional restrictions (logs, telemetry): violations() can only find
        # undeclared keys or a region that should not be there.
        self._regionless = not self._forbidden and not self._country_fields
        clashing = sorted(
            k for k in self._allowed if policy.is_secret_name(k) or policy.is_media_name(k)
        )
        if clashing:
            raise ValueError(
                f"the policy allows fields that it also calls secret/media: {clashing}"
            )

    def one(self, record: Mapping[str, Any]) -> Mapping[str, Any]:
        if self._regionless and record.get("region") is None and self._allowed.issuperset(record):
            return record  # no regional rule applies and nothing is undeclared: nothing to break
        found = violations(
            record,
            policy=self._policy,
            forbidden=self._forbidden,
            allowed_keys=self._allowed,
            country_fields=self._country_fields,
        )
        if found:
            self.tally.add("guard.violations")
            raise RecordError("guard", found[0])
        return record


class Guard(beam.PTransform):
    """Re-check the compliance invariants; yields ``(records, dead_letters)`` (of batches with
    ``batched``)."""

    def __init__(
        self,
        policy: Policy,
        categories: Iterable[Category],
        extra_keys: Iterable[str],
        context: DeadLetterContext,
        *,
        batched: bool = False,
    ) -> None:
        super().__init__()
        self._fn = GuardFn(policy, categories, extra_keys, context)
        self._batched = batched

    def expand(self, records):
        return records | "CheckInvariants" >> ApplyStage(self._fn, batched=self._batched)

"""Guard: the last line of defence before tagging and writing.

Every earlier stage is meant to make these invariants true; the guard re-checks them on each
record independently of how that stage was written, and routes a violation to the dead letters
(with the offending values masked), never to a sink:

- ``unknown_region``: the record has a region the policy does not declare, or none although one
  of its categories has regional restrictions;
- ``forbidden_field``: a field its region forbids (corporate contact data of an EEA/UK or
  unknown-region visitor) is present;
- ``restricted_company_contact``: a field is present that the region of the company's own
  country forbids, by the policy's one country decision (``Policy.region_for``): a restricted
  region in any spelling (``UK``, ``el``), or ``UNKNOWN`` when the country is absent, empty or
  names no country, so contact data without a known, unrestricted company country never passes;
- ``secret_field``: a key that is a credential or media payload name;
- ``undeclared_field``: a key outside the allow-list of the categories being written.

On a columnar batch the invariants are computed on whole columns; the rows that break one go
through the record-wise check, which gives their dead letters exactly as it would alone (the
columns decided them: no fallback). The columns cannot decide a table with a column outside the
allow-list (every row then carries that key, as ``to_pylist`` gives it: ``undeclared_column``),
or whose region or company country is not text (``region_not_text``,
``company_country_not_text``): those go record by record, counted as
``columnar_fallback.guard.<reason>``.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from functools import reduce
from typing import Any

import apache_beam as beam
import pyarrow as pa
import pyarrow.compute as pc

from schemas.policy import Category, Policy, filled_any
from transforms.batches import ApplyStage, Batch, RecordStage, TableBatch
from transforms.columns import column_or_nulls, present, text_column
from transforms.deadletter import DeadLetterContext, RecordError
from transforms.suppress import forbidden_by_region, forbidding_rows

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
        if filled_any(record, forbidden.get(company_region, frozenset())):
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
        # A stored fingerprint column is named after its secret (private_key_fingerprint): the
        # fingerprint stage computed it, so its name is a derivative, not a secret.
        derived = frozenset(f for c in categories for f in c.fingerprints)
        clashing = sorted(
            k
            for k in self._allowed
            if policy.is_secret_name(k, allow_derived=k in derived) or policy.is_media_name(k)
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

    def process_table(self, table: pa.Table) -> Iterator[Any]:
        if not self._allowed.issuperset(table.column_names):
            return self.fall_back(table, "undeclared_column")
        breaking = self._breaking(table)
        if isinstance(breaking, str):  # the reason the columns cannot decide
            return self.fall_back(table, breaking)
        return self._split(table, breaking)

    def _split(self, table: pa.Table, breaking: pa.ChunkedArray) -> Iterator[Any]:
        """The rows that break nothing as a table; the others record by record."""
        if pc.any(breaking).as_py():
            yield from self.process_records(Batch(table.filter(breaking).to_pylist()))
            table = table.filter(pc.invert(breaking))
        if table.num_rows:
            yield TableBatch(table)

    def _breaking(self, table: pa.Table) -> pa.ChunkedArray | str:
        """Per row: does it break an invariant of :func:`violations`; or, when Python must say,
        why the columns cannot."""
        region = text_column(table, "region")
        if region is None:
            return "region_not_text"
        known = pa.array(sorted(self._policy.regions), pa.string())
        parts = []
        if self._forbidden:  # a region is required, and must be one the policy knows
            parts.append(pc.invert(pc.is_in(region, value_set=known)))
        else:  # no region wanted: any region at all is unknown here unless the policy knows it
            parts.append(pc.and_(pc.is_valid(region), pc.invert(pc.is_in(region, value_set=known))))
        fields = sorted({f for names in self._forbidden.values() for f in names})
        filled = {f: present(column_or_nulls(table, f)) for f in fields}
        forbids = forbidding_rows(region, self._forbidden, self._policy.regions, fields)
        parts.extend(pc.and_(forbids[f], filled[f]) for f in fields)
        for country_field in self._country_fields:
            countries = text_column(table, country_field)
            if countries is None:
                return "company_country_not_text"
            by_region: dict[str, list[str | None]] = {}
            for code in pc.unique(countries).to_pylist():  # None included: UNKNOWN's
                by_region.setdefault(self._policy.region_for(code), []).append(code)
            for company_region, codes in by_region.items():
                names = self._forbidden.get(company_region, frozenset())
                if names:
                    # is_in matches a null row to a None of the value set
                    rows = pc.is_in(countries, value_set=pa.array(codes, pa.string()))
                    anything = reduce(pc.or_, (filled[n] for n in sorted(names)))
                    parts.append(pc.and_(rows, anything))
        return reduce(pc.or_, parts)


class Guard(beam.PTransform):
    """Re-check the compliance invariants on a PCollection of batches; yields ``(batches,
    dead_letters)``."""

    def __init__(
        self,
        policy: Policy,
        categories: Iterable[Category],
        extra_keys: Iterable[str],
        context: DeadLetterContext,
    ) -> None:
        super().__init__()
        self._fn = GuardFn(policy, categories, extra_keys, context)

    def expand(self, batches: beam.PCollection) -> tuple[beam.PCollection, Any]:
        return batches | "CheckInvariants" >> ApplyStage(self._fn)

"""The company-country rule: no contact field on a record unless its company's country is known
and of no restricted region.

"We do not receive or process EEA and UK based companies corporate contact information": the
policy's one country decision (``Policy.region_for``: ``UK``, ``el`` or ``FX`` are the EEA/UK,
``ZZ`` or nothing is ``UNKNOWN``) says whether a company's country allows contact data. The join
asks it of the source's answer (:class:`CountryRule`); the contact gate
(:class:`RestrictContactsByCompanyCountry`) asks it of every record after the join, whatever
the source of its contact fields: AroundDeal or the producer's record.

Counters: ``enrichment.company_country_restricted`` (records of a company in a restricted
region), ``enrichment.contact_fields_discarded`` (contact values removed),
``suppressed.company_country_unknown`` (records whose contact fields were dropped for want of a
known company country: the report's ``suppressed`` section).
"""

from __future__ import annotations

from collections.abc import Iterable
from functools import reduce
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from schemas.policy import OTHER_REGION, UNKNOWN_REGION, Policy
from transforms.batches import AnyBatch, Batch, CounterTally, TableBatch
from transforms.columns import count, not_blank, text_column, with_column
from transforms.counters import fallback
from transforms.enrichment.lookup import COMPANY_COUNTRY_FIELD, is_empty

__all__ = ["STAGE", "CountryRule", "RestrictContactsByCompanyCountry"]

# The stage name of the enrichment's columnar fallbacks (``columnar_fallback.enrich.<reason>``).
STAGE = "enrich"


class CountryRule:
    """The policy's region of a company country (``Policy.region_for``), memoised per value for
    the join and the contact gate: a handful of distinct values per run, read on every row."""

    def __init__(self, policy: Policy) -> None:
        self.policy = policy
        self._regions: dict[str | None, str] = {}

    def region(self, value: object) -> str:
        """The region of a company country value (``UNKNOWN`` for anything but a country)."""
        if value is not None and not isinstance(value, str):
            return self.policy.region_for(value)  # UNKNOWN; not memoised (may be unhashable)
        region = self._regions.get(value)
        if region is None:
            region = self._regions[value] = self.policy.region_for(value)
        return region

    def allowed(self, value: object) -> bool:
        """True only for a known country of no restricted region: contact data may be kept."""
        return self.region(value) == OTHER_REGION


class RestrictContactsByCompanyCountry:
    """The contact gate: no contact field on a record unless its company's country is known and
    of no restricted region (``OTHER``), whether the fields came from AroundDeal or the record.

    :meth:`batch` is the production path (columns for a table); calling it with one record is
    the record-by-record reference the columns are held to.
    """

    def __init__(self, contact_fields: Iterable[str], policy: Policy) -> None:
        self.contact_fields = frozenset(contact_fields)
        self.rule = CountryRule(policy)

    def __call__(self, record: dict[str, Any]) -> dict[str, Any]:
        return self.batch([record])[0]

    def batch(self, records: AnyBatch | list[dict[str, Any]]) -> AnyBatch:
        """The rule over a batch: records it does not touch are passed on as they are."""
        if isinstance(records, TableBatch):
            table = self._table(records.table)
            if table is not None:
                return TableBatch(table)
            records = records.table.to_pylist()
        tally = CounterTally()
        out = Batch(self._one(record, tally) for record in records)
        tally.flush()
        return out

    def _table(self, table: pa.Table) -> pa.Table | None:
        """The rule on columns (None, counted as a fallback: a column that is not text, which
        Python must read record by record)."""
        countries = text_column(table, COMPANY_COUNTRY_FIELD)
        contacts = {
            n: text_column(table, n) for n in table.column_names if n in self.contact_fields
        }
        if countries is None or any(column is None for column in contacts.values()):
            fallback(STAGE, "gate_not_text", table.num_rows)
            return None
        by_region: dict[str, list[str | None]] = {}
        for value in pc.unique(countries).to_pylist():  # None included: UNKNOWN's
            by_region.setdefault(self.rule.region(value), []).append(value)
        if set(by_region) <= {OTHER_REGION}:
            return table

        def rows_of(region: str) -> pa.ChunkedArray:
            values = pa.array(by_region.get(region, []), pa.string())
            return pc.is_in(countries, value_set=values)  # a null row matches a None value

        rows = pc.invert(rows_of(OTHER_REGION))  # contacts must go (null company included)
        unknown = rows_of(UNKNOWN_REGION)
        filled = {name: not_blank(column) for name, column in contacts.items()}
        tally = CounterTally()
        tally.add("enrichment.company_country_restricted", count(pc.and_not(rows, unknown)))
        if filled:
            any_filled = reduce(pc.or_, filled.values())
            tally.add("suppressed.company_country_unknown", count(pc.and_(unknown, any_filled)))
        for name, column in contacts.items():
            tally.add("enrichment.contact_fields_discarded", count(pc.and_(rows, filled[name])))
            table = with_column(table, name, pc.if_else(rows, pa.scalar(None, pa.string()), column))
        tally.flush()
        return table

    def _one(self, record: dict[str, Any], tally: CounterTally) -> dict[str, Any]:
        region = self.rule.region(record.get(COMPANY_COUNTRY_FIELD))
        if region == OTHER_REGION:
            return record
        if region != UNKNOWN_REGION:
            tally.add("enrichment.company_country_restricted")
        removed = sum(1 for k, v in record.items() if k in self.contact_fields and not is_empty(v))
        if removed:
            tally.add("enrichment.contact_fields_discarded", removed)
            if region == UNKNOWN_REGION:
                tally.add("suppressed.company_country_unknown")
        return {k: v for k, v in record.items() if k not in self.contact_fields}

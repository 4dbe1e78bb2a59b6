"""The join: company (and, where allowed, contact) data of a lookup joined onto its record.

How the policy is enforced here (fail closed at every step):

1. The handler asks for contact data only for unrestricted visitors (region ``OTHER``), and
   discards any contact value the source returns for a restricted one.
2. The join (:class:`JoinAroundDeal`) builds a new record: the input record, the company fields
   (the input wins where it already has a non-empty value), and contact fields from the response
   only if the visitor is unrestricted *and* the company's country (the response's, and the
   record's after the join) is ``OTHER`` by the company-country rule
   (:mod:`transforms.enrichment.country`). Restricted visitors keep no contact field at all, not
   even one that came with the input. Keys the handler returns that are not company/contact
   fields are dropped.

:meth:`JoinAroundDeal.batch` is the production path: on a table (``TableBatch``) it works on
columns; a table it cannot join exactly on columns (it already has company columns, or a region
or contact column that is not text) goes record by record, counted as
``columnar_fallback.enrich.<reason>``. Calling the join with one record and its response is the
record-by-record reference the columns are held to.

Counters (namespace ``compliance``): ``enrichment.calls`` (snapshot lookups, or HTTP requests
including retries), ``enrichment.matched``, ``enrichment.no_match`` (including records without a
usable IP, also counted as ``enrichment.invalid_ip``), ``enrichment.failed``,
``enrichment.contact_blocked`` (restricted records looked up, contact data not requested),
``enrichment.contact_fields_discarded`` (contact values dropped, from responses or from the
input), ``enrichment.cache_hits``, ``enrichment.retries``. Each record counts once in exactly one
of matched/no_match/failed.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from schemas.policy import OTHER_REGION, Policy
from transforms.batches import AnyBatch, Batch, CounterTally, TableBatch
from transforms.columns import column_or_nulls, count, not_blank, text_column, with_column
from transforms.counters import fallback
from transforms.enrichment.country import STAGE, CountryRule
from transforms.enrichment.lookup import (
    COMPANY_COUNTRY_FIELD,
    FAILED,
    IP_FIELD,
    MATCHED,
    NO_MATCH,
    REGION_FIELD,
    LookupResult,
    clean_value,
    is_empty,
    is_restricted,
)

__all__ = ["JoinAroundDeal", "as_result", "request_records", "restricted_rows"]

_STATUS_COUNTERS = {
    MATCHED: "enrichment.matched",
    NO_MATCH: "enrichment.no_match",
    FAILED: "enrichment.failed",
}


def as_result(response: Any, restricted: bool) -> LookupResult:
    """A handler's answer as a :class:`LookupResult`: one already, or (from a handler that
    does not build them) a mapping or ``beam.Row`` of fields (found if any is non-empty), or
    None (failed)."""
    if isinstance(response, LookupResult):
        return response
    if response is None:
        return LookupResult(FAILED, contact_requested=not restricted)
    fields = response._asdict() if hasattr(response, "_asdict") else dict(response)
    status = MATCHED if any(not is_empty(v) for v in fields.values()) else NO_MATCH
    return LookupResult(status, fields, contact_requested=not restricted, source_calls=1)


# Result objects whose plan JoinAroundDeal keeps (per process; cleared when full).
_PLAN_MEMO_SIZE = 262144


@dataclass(frozen=True)
class _Plan:
    """What one lookup result means for the table rows that have it (``JoinAroundDeal``)."""

    counters: tuple[tuple[str, int], ...]
    company: tuple[str | None, ...]
    contacts: tuple[str | None, ...] | None  # offered contact values, None if none may be kept


class JoinAroundDeal:
    """``(record, response) -> new record``, and :meth:`batch` of a whole batch (see the module
    docstring).

    A callable class rather than a closure so that it pickles by reference to this module.
    """

    def __init__(
        self,
        company_fields: Iterable[str],
        contact_fields: Iterable[str],
        policy: Policy,
    ) -> None:
        self.company_fields = tuple(company_fields)
        self.contact_fields = tuple(contact_fields)
        self._contact_set = frozenset(self.contact_fields)
        self._company_set = frozenset(self.company_fields)
        self._no_company = dict.fromkeys(self.company_fields)
        self.rule = CountryRule(policy)
        self._plans: dict[tuple[int, bool], tuple[Any, _Plan]] = {}
        self._interned: dict[_Plan, _Plan] = {}
        self._fieldless: dict[tuple[Any, ...], _Plan] = {}

    def __getstate__(self) -> dict[str, Any]:
        # The plan memos are per process, rebuilt on a worker.
        return {**self.__dict__, "_plans": {}, "_interned": {}, "_fieldless": {}}

    def __call__(self, request: dict[str, Any], response: Any) -> dict[str, Any]:
        """The record-by-record reference: one record and its handler's response."""
        return self.batch([request], [response])[0]

    def batch(self, requests: AnyBatch | list[dict[str, Any]], responses: list[Any]) -> Any:
        """The join of a whole batch and its responses (one per row, in order): new records,
        in order (a table for a table); counters are added once per batch."""
        if isinstance(requests, TableBatch):
            return self._join_table(requests.table, responses)
        tally = CounterTally()
        joined = [
            self._join(request, response, tally)
            for request, response in zip(requests, responses, strict=True)
        ]
        tally.flush()
        return joined

    def _join(self, request: dict[str, Any], response: Any, tally: CounterTally) -> dict[str, Any]:
        restricted = is_restricted(request)
        result = as_result(response, restricted)
        tally.add(_STATUS_COUNTERS.get(result.status, "enrichment.failed"))
        if result.source_calls:
            tally.add("enrichment.calls", result.source_calls)
        if result.retries:
            tally.add("enrichment.retries", result.retries)
        if result.cache_hit:
            tally.add("enrichment.cache_hits")
        if result.invalid_ip:
            tally.add("enrichment.invalid_ip")
        if restricted and not result.invalid_ip:
            tally.add("enrichment.contact_blocked")
        discarded = result.contact_fields_discarded

        fields = result.fields if result.status == MATCHED else {}
        if restricted:
            # Contact fields should already be gone (SuppressRestrictedContacts); never kept.
            contact = self._contact_set
            record = {k: v for k, v in request.items() if k not in contact}
            discarded += sum(not is_empty(request[k]) for k in contact.intersection(request))
        else:
            record = dict(request)
        if not fields and self._company_set.isdisjoint(record):
            record.update(self._no_company)  # the common case: nothing to fill, nothing found
        else:
            for name in self.company_fields:
                value = record.get(name)
                if value is None or is_empty(value):
                    record[name] = clean_value(fields.get(name)) if fields else None
        if fields:
            discarded += self._add_contacts(record, fields, restricted)
        if discarded:
            tally.add("enrichment.contact_fields_discarded", discarded)
        return record

    def _join_table(self, table: pa.Table, responses: Sequence[Any]) -> AnyBatch:
        """:meth:`_join` of every row, on columns.

        What a result means for a row (counters, company values, contact values the row may
        take) is a :class:`_Plan`, worked out once per distinct (result object, region kind) of
        the batch and memoised per object (handlers hand out the same result objects batch after
        batch), then spread over the rows with ``take``: the rows are grouped by Arrow
        (``dictionary_encode`` of object id and region kind), so no Python runs per row here. A
        table that already has a company column goes record by record: the record's own values
        win there. Contact values are strings here (what Parse gives); other types go record by
        record.
        """
        names = table.column_names
        restricted = restricted_rows(table)
        if COMPANY_COUNTRY_FIELD in names or not self._company_set.isdisjoint(names):
            return self._by_records(table, responses, "company_columns")
        if restricted is None:
            return self._by_records(table, responses, "region_not_text")
        if len(responses) != table.num_rows:
            raise ValueError(f"{len(responses)} responses for {table.num_rows} rows")
        ids = list(map(id, responses))  # unique while alive: responses holds them
        objects = dict(zip(ids, responses, strict=True))
        keys = pc.add(pc.multiply(pa.array(ids, pa.int64()), 2), restricted.cast(pa.int64()))
        groups = pc.dictionary_encode(keys).combine_chunks()
        plans = [
            self._plan_for(objects[key >> 1], bool(key & 1))
            for key in groups.dictionary.to_pylist()
        ]
        take = groups.indices
        counts = pc.value_counts(take)
        rows_per_counters: Counter[tuple[tuple[str, int], ...]] = Counter()
        for i, n in zip(
            counts.field("values").to_pylist(), counts.field("counts").to_pylist(), strict=True
        ):
            rows_per_counters[plans[i].counters] += n  # plans are many, their counters few
        tally = CounterTally()
        for counters, n in rows_per_counters.items():
            for name, each in counters:
                tally.add(name, each * n)
        for j, name in enumerate(self.company_fields):
            values = pa.array([p.company[j] for p in plans], pa.string())
            table = with_column(table, name, values.take(take))
        offers = any(p.contacts is not None for p in plans)
        for j, name in enumerate(self.contact_fields):
            if name not in table.column_names and not offers:
                continue
            own = text_column(table, name)
            if own is None:
                return self._by_records(table, responses, "contact_not_text")
            filled = not_blank(own)
            tally.add("enrichment.contact_fields_discarded", count(pc.and_(restricted, filled)))
            value = own
            if offers:
                offered = pa.array(
                    [None if p.contacts is None else p.contacts[j] for p in plans], pa.string()
                ).take(take)
                value = pc.if_else(filled, own, pc.coalesce(offered, own))
            kept = pc.if_else(restricted, pa.scalar(None, pa.string()), value)
            table = with_column(table, name, kept)
        tally.flush()
        return TableBatch(table)

    def _by_records(self, table: pa.Table, responses: Sequence[Any], reason: str) -> Batch:
        """The rows of a table the columns cannot join exactly, joined record by record (a
        columnar fallback, counted by ``reason``)."""
        fallback(STAGE, reason, table.num_rows)
        return Batch(self.batch(table.to_pylist(), list(responses)))

    def _plan_for(self, response: Any, restricted: bool) -> _Plan:
        """The plan of a response, memoised per object (and region kind) for the process."""
        key = (id(response), restricted)
        known = self._plans.get(key)
        if known is None or known[0] is not response:  # an id is only unique while alive
            plan = self._plan_of(as_result(response, restricted), restricted)
            plan = self._interned.setdefault(plan, plan)
            if len(self._plans) >= _PLAN_MEMO_SIZE:
                self._plans.clear()
                self._interned.clear()
            self._plans[key] = known = (response, plan)  # keeps response alive: its id stays its
        return known[1]

    def _plan_of(self, result: LookupResult, restricted: bool) -> _Plan:
        """:meth:`_plan`, memoised for results without fields (no match, failures: most of
        them), which a few flags decide."""
        if result.status == MATCHED and result.fields:
            return self._plan(result, restricted)
        key = (
            result.status,
            result.source_calls,
            result.retries,
            result.cache_hit,
            result.invalid_ip,
            result.contact_fields_discarded,
            restricted,
        )
        plan = self._fieldless.get(key)
        if plan is None:
            plan = self._fieldless[key] = self._plan(result, restricted)
        return plan

    def _plan(self, result: LookupResult, restricted: bool) -> _Plan:
        """What ``result`` means for a row of a table (which has no company column): the
        record-wise :meth:`_join` for a record that has only its own contact values."""
        counters = [(_STATUS_COUNTERS.get(result.status, "enrichment.failed"), 1)]
        if result.source_calls:
            counters.append(("enrichment.calls", result.source_calls))
        if result.retries:
            counters.append(("enrichment.retries", result.retries))
        if result.cache_hit:
            counters.append(("enrichment.cache_hits", 1))
        if result.invalid_ip:
            counters.append(("enrichment.invalid_ip", 1))
        if restricted and not result.invalid_ip:
            counters.append(("enrichment.contact_blocked", 1))
        discarded = result.contact_fields_discarded
        fields = result.fields if result.status == MATCHED else {}
        company = tuple(clean_value(fields.get(n)) if fields else None for n in self.company_fields)
        contacts = None
        if fields:
            filled_in = dict(zip(self.company_fields, company, strict=True))
            own_country = filled_in.get(COMPANY_COUNTRY_FIELD)
            offered = tuple(clean_value(fields.get(n)) for n in self.contact_fields)
            if (
                not restricted
                and self.rule.allowed(fields.get(COMPANY_COUNTRY_FIELD))
                and self.rule.allowed(own_country)
            ):
                contacts = offered
            else:
                discarded += sum(v is not None for v in offered)
        if discarded:
            counters.append(("enrichment.contact_fields_discarded", discarded))
        return _Plan(tuple(counters), company, contacts)

    def _add_contacts(
        self, record: dict[str, Any], fields: Mapping[str, Any], restricted: bool
    ) -> int:
        """Adds the response's contact fields where allowed; the number of values discarded."""
        contact_allowed = (
            not restricted
            and self.rule.allowed(fields.get(COMPANY_COUNTRY_FIELD))
            and self.rule.allowed(record.get(COMPANY_COUNTRY_FIELD))
        )
        discarded = 0
        for name in self.contact_fields:
            value = clean_value(fields.get(name))
            if value is None:
                continue
            if not contact_allowed:
                discarded += 1
            elif is_empty(record.get(name)):
                record[name] = value
        return discarded


def restricted_rows(table: pa.Table) -> pa.ChunkedArray | None:
    """Per row of a table: is the visitor restricted (``is_restricted``: a region other than
    ``OTHER``, none included); None if the regions are not text."""
    regions = text_column(table, REGION_FIELD)
    if regions is None:
        return None
    return pc.not_equal(regions, OTHER_REGION).fill_null(True)


def request_records(table: pa.Table) -> list[dict[str, Any]]:
    """A handler's requests for the rows of a table: the two fields a handler reads (``ip``
    and ``region``), not the whole row."""
    ips = column_or_nulls(table, IP_FIELD).to_pylist()
    regions = column_or_nulls(table, REGION_FIELD).to_pylist()
    return [{IP_FIELD: ip, REGION_FIELD: region} for ip, region in zip(ips, regions, strict=True)]

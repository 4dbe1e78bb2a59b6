"""``EnrichAroundDeal``: company (and, where allowed, contact) data joined onto visit records.

Why Beam's :class:`~apache_beam.transforms.enrichment.Enrichment` with our own handlers: it
gives batching (``BatchElements``), per-call timeouts and a standard place to plug the source,
and the same composite works with the offline snapshot and the HTTP API.

How the policy is enforced here (fail closed at every step):

1. The handler asks for contact data only for unrestricted visitors (region ``OTHER``), and
   discards any contact value the source returns for a restricted one.
2. The join (:class:`JoinAroundDeal`) builds a new record: the input record, the company fields
   (the input wins where it already has a non-empty value), and contact fields from the response
   only if the visitor is unrestricted *and* the company's country (the response's, and the
   record's after the join) is ``OTHER`` by the policy's one country decision
   (``Policy.region_for``: ``UK``, ``el`` or ``FX`` are the EEA/UK, ``ZZ`` or nothing is
   ``UNKNOWN``). Restricted visitors keep no contact field at all, not even one that came with
   the input. Keys the handler returns that are not company/contact fields are dropped.
3. The contact gate (:class:`RestrictContactsByCompanyCountry`, step ``RestrictByCompanyCountry``)
   removes every contact field from a record whose ``company_country`` is not ``OTHER`` by the
   same decision (a restricted region, or ``UNKNOWN``: absent, empty, not a country), whatever
   the source of those fields: AroundDeal or the producer's record. It runs with or without a
   handler, so producer contact fields never bypass it.

The handlers are never allowed to raise for a remote failure (RequestResponseIO would fail the
pipeline): a failed lookup leaves the record unenriched, counted as ``enrichment.failed``.

Counters (namespace ``compliance``): ``enrichment.calls`` (snapshot lookups, or HTTP requests
including retries), ``enrichment.matched``, ``enrichment.no_match`` (including records without a
usable IP, also counted as ``enrichment.invalid_ip``), ``enrichment.failed``,
``enrichment.contact_blocked`` (restricted records looked up, contact data not requested),
``enrichment.contact_fields_discarded`` (contact values dropped by this stage, from responses or
from the input), ``enrichment.company_country_restricted`` (records of a company in a restricted
region), ``suppressed.company_country_unknown`` (records whose contact fields were dropped for
want of a known company country: the report's ``suppressed`` section),
``enrichment.snapshot_contact_rows_dropped`` (snapshot rows loaded without their contact
columns, once per run), ``enrichment.cache_hits``, ``enrichment.retries``. Each record counts
once in exactly one of matched/no_match/failed.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import reduce
from typing import Any

import apache_beam as beam
import pyarrow as pa
import pyarrow.compute as pc
from apache_beam.io.requestresponse import (
    DEFAULT_TIMEOUT_SECS,
    NoOpsRepeater,
    PreCallThrottler,
)
from apache_beam.transforms.enrichment import Enrichment, EnrichmentSourceHandler

from schemas.policy import OTHER_REGION, UNKNOWN_REGION, Policy
from transforms.batches import (
    BATCH_SIZE,
    AnyBatch,
    Batch,
    CounterTally,
    Rebatch,
    TableBatch,
    Unbatch,
)
from transforms.columns import column_or_nulls, count, not_blank, text_column, with_column
from transforms.counters import counter
from transforms.enrichment import (
    COMPANY_COUNTRY_FIELD,
    FAILED,
    IP_FIELD,
    MATCHED,
    NO_MATCH,
    REGION_FIELD,
    LookupResult,
    clean_value,
    is_restricted,
)
from transforms.enrichment.http_client import HttpHandler
from transforms.enrichment.snapshot import SnapshotHandler

__all__ = [
    "COMPANY_COUNTRY_FIELD",
    "EnrichAroundDeal",
    "JoinAroundDeal",
    "RestrictContactsByCompanyCountry",
    "build_handler",
]

_STATUS_COUNTERS = {
    MATCHED: "enrichment.matched",
    NO_MATCH: "enrichment.no_match",
    FAILED: "enrichment.failed",
}


def _is_empty(value: object) -> bool:
    return (
        value is None
        or value == ""
        or value == []
        or (isinstance(value, str) and not value.strip())
    )


class _CountryRule:
    """The policy's region of a company country (``Policy.region_for``), memoised per value for
    the join and the contact gate: a handful of distinct values per run, read on every row."""

    def __init__(self, policy: Policy) -> None:
        self.policy = policy
        self._regions: dict[str | None, str] = {}

    def region(self, value: object) -> str:
        if value is not None and not isinstance(value, str):
            return self.policy.region_for(value)  # UNKNOWN; not memoised (may be unhashable)
        region = self._regions.get(value)
        if region is None:
            region = self._regions[value] = self.policy.region_for(value)
        return region

    def allowed(self, value: object) -> bool:
        """True only for a known country of no restricted region: contact data may be kept."""
        return self.region(value) == OTHER_REGION


def _as_result(response: Any, restricted: bool) -> LookupResult:
    """Accepts a LookupResult, or (from a foreign handler) a mapping / ``beam.Row`` of fields."""
    if isinstance(response, LookupResult):
        return response
    if response is None:
        return LookupResult(FAILED, contact_requested=not restricted)
    fields = response._asdict() if hasattr(response, "_asdict") else dict(response)
    status = MATCHED if any(not _is_empty(v) for v in fields.values()) else NO_MATCH
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
    """The Enrichment ``join_fn``: ``(record, response) -> new record`` (see module docstring).

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
        self.rule = _CountryRule(policy)
        self._plans: dict[tuple[int, bool], tuple[Any, _Plan]] = {}
        self._interned: dict[_Plan, _Plan] = {}
        self._fieldless: dict[tuple[Any, ...], _Plan] = {}

    def __getstate__(self) -> dict[str, Any]:
        # The plan memos are per process, rebuilt on a worker.
        return {**self.__dict__, "_plans": {}, "_interned": {}, "_fieldless": {}}

    def __call__(self, request: dict[str, Any], response: Any) -> dict[str, Any]:
        """The per-record ``join_fn``."""
        return self.batch([request], [response])[0]

    def batch(self, requests: AnyBatch | list[dict[str, Any]], responses: list[Any]) -> Any:
        """The ``join_fn`` of a whole batch (see :class:`EnrichAroundDeal`): new records, in
        order (a table for a table); counters are added once per batch."""
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
        result = _as_result(response, restricted)
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
            discarded += sum(not _is_empty(request[k]) for k in contact.intersection(request))
        else:
            record = dict(request)
        if not fields and self._company_set.isdisjoint(record):
            record.update(self._no_company)  # the common case: nothing to fill, nothing found
        else:
            for name in self.company_fields:
                value = record.get(name)
                if value is None or _is_empty(value):
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
        restricted = _restricted_rows(table)
        if (
            COMPANY_COUNTRY_FIELD in names
            or not self._company_set.isdisjoint(names)
            or restricted is None
        ):
            return Batch(self.batch(table.to_pylist(), list(responses)))
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
                return Batch(self.batch(table.to_pylist(), list(responses)))
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

    def _plan_for(self, response: Any, restricted: bool) -> _Plan:
        """The plan of a response, memoised per object (and region kind) for the process."""
        key = (id(response), restricted)
        known = self._plans.get(key)
        if known is None or known[0] is not response:  # an id is only unique while alive
            plan = self._plan_of(_as_result(response, restricted), restricted)
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
            elif _is_empty(record.get(name)):
                record[name] = value
        return discarded


class RestrictContactsByCompanyCountry:
    """The contact gate: no contact field on a record unless its company's country is known and
    of no restricted region (``OTHER``), whether the fields came from AroundDeal or the record."""

    def __init__(self, contact_fields: Iterable[str], policy: Policy) -> None:
        self.contact_fields = frozenset(contact_fields)
        self.rule = _CountryRule(policy)

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
        """The rule on columns (None: a column Python must read record by record)."""
        countries = text_column(table, COMPANY_COUNTRY_FIELD)
        contacts = {
            n: text_column(table, n) for n in table.column_names if n in self.contact_fields
        }
        if countries is None or any(column is None for column in contacts.values()):
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
        removed = sum(1 for k, v in record.items() if k in self.contact_fields and not _is_empty(v))
        if removed:
            tally.add("enrichment.contact_fields_discarded", removed)
            if region == UNKNOWN_REGION:
                tally.add("suppressed.company_country_unknown")
        return {k: v for k, v in record.items() if k not in self.contact_fields}


class _WholeBatch(EnrichmentSourceHandler[Any, Any]):
    """Makes one Enrichment call of a whole batch of records: ``batch -> (batch, responses)``.

    The batches already exist (``transforms.batches``), so Enrichment must not batch again; the
    wrapped handler sees its own request size (``batch_size`` records per HTTP request). A
    handler with a ``lookup_columns(ips, restricted)`` method (the snapshot) is given a table's
    columns instead of a request record per row.
    """

    def __init__(self, handler: EnrichmentSourceHandler, max_records: int) -> None:
        self.handler = handler
        self.max_records = max_records

    def __enter__(self) -> _WholeBatch:
        self.handler.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.handler.__exit__(*exc)

    def __str__(self) -> str:
        return str(self.handler)

    def batch_elements_kwargs(self) -> Mapping[str, Any]:
        return {}

    def _chunk(self) -> int:
        return getattr(self.handler, "batch_size", 0) or self.max_records

    def max_call_seconds(self) -> float:
        """The handler's bound for one call, times the calls one batch can need."""
        max_call = getattr(self.handler, "max_call_seconds", None)
        per_call = float(max_call()) if callable(max_call) else float(DEFAULT_TIMEOUT_SECS)
        return per_call * max(1, -(-self.max_records // self._chunk()))

    def get_cache_key(self, request: Any) -> str:
        return self.handler.get_cache_key(request)

    def __call__(self, batch: AnyBatch | list[dict[str, Any]], *args: Any, **kwargs: Any) -> Any:
        restricted = _restricted_rows(batch.table) if isinstance(batch, TableBatch) else None
        if restricted is not None and hasattr(self.handler, "lookup_columns"):
            ips = column_or_nulls(batch.table, IP_FIELD).to_pylist()
            results = self.handler.lookup_columns(ips, restricted.to_pylist())
            return batch, Batch(results)
        requests = _requests(batch.table) if isinstance(batch, TableBatch) else batch
        size = self._chunk()
        responses = []
        for start in range(0, len(requests), size):
            chunk = requests[start : start + size]
            responses.extend(response for _, response in self.handler(chunk))
        # A Batch, not a list: Beam samples the size of this (batch, responses) element by
        # pickling it, a list item by item, a Batch in one go (shared results once).
        return batch, Batch(responses)


def _restricted_rows(table: pa.Table) -> pa.ChunkedArray | None:
    """Per row of a table: is the visitor restricted (:func:`is_restricted`: a region other
    than ``OTHER``, none included); None if the regions are not text."""
    regions = text_column(table, REGION_FIELD)
    if regions is None:
        return None
    return pc.not_equal(regions, OTHER_REGION).fill_null(True)


def _requests(table: pa.Table) -> list[dict[str, Any]]:
    """The handler's requests for the rows of a table: the two fields a handler reads (see
    ``transforms.enrichment``), not the whole row."""
    ips = column_or_nulls(table, IP_FIELD).to_pylist()
    regions = column_or_nulls(table, REGION_FIELD).to_pylist()
    return [{IP_FIELD: ip, REGION_FIELD: region} for ip, region in zip(ips, regions, strict=True)]


class _NoThrottle(PreCallThrottler):
    """Disables RequestResponseIO's adaptive throttler: our handlers never fail a call (so it
    would learn nothing) and rate-limit themselves; its 5-second sleeps would only add latency."""


class EnrichAroundDeal(beam.PTransform):
    """Enriches visit records (after Geolocate) with AroundDeal company data, policy-safe.

    Args:
      handler: a :class:`SnapshotHandler`, an :class:`HttpHandler` (see :func:`build_handler`),
        or None to skip the lookup (the contact gate still applies).
      company_fields, contact_fields: from the policy.
      policy: places the companies' countries (``Policy.region_for``).

    Input and output: ``PCollection[dict]``, one output record per input record; with
    ``batched``, batches of records (``transforms.batches``): each batch is one Enrichment
    request, which the handler serves in requests of its own ``batch_size``. The rows of a
    table (``TableBatch``) reach the handler as request records holding only ``ip`` and
    ``region``, the two fields a handler reads, or as those two columns for a handler with
    ``lookup_columns`` (the snapshot); the join then works on columns.
    """

    def __init__(
        self,
        handler: EnrichmentSourceHandler | None,
        company_fields: Iterable[str],
        contact_fields: Iterable[str],
        policy: Policy,
        *,
        batched: bool = False,
    ) -> None:
        super().__init__()
        self._batched = batched
        self._handler = handler
        self._company_fields = tuple(company_fields)
        self._contact_fields = tuple(contact_fields)
        self._join = JoinAroundDeal(self._company_fields, self._contact_fields, policy)
        self._restrict = RestrictContactsByCompanyCountry(self._contact_fields, policy)

    def expand(self, records: beam.PCollection) -> beam.PCollection:
        batches = records if self._batched else records | "Batch" >> Rebatch()
        if isinstance(self._handler, SnapshotHandler):
            # What the loader kept out of the index is a fact of the file: counted once per run,
            # in a step of its own (the handlers load in DoFn setup, where counters are lost).
            _ = (
                records.pipeline
                | "SnapshotLoad" >> beam.Create([self._handler])
                | "CountDroppedContacts" >> beam.Map(_count_dropped_contacts)
            )
        if self._handler is not None:
            lookup = _WholeBatch(self._handler, BATCH_SIZE)
            batches = batches | "Lookup" >> Enrichment(
                lookup,
                join_fn=self._join.batch,
                use_custom_types=True,
                timeout=lookup.max_call_seconds(),
                repeater=NoOpsRepeater(),
                throttler=_NoThrottle(),
            )
        restricted = batches | "RestrictByCompanyCountry" >> beam.Map(
            self._restrict.batch
        ).with_output_types(AnyBatch)
        return restricted if self._batched else restricted | "Unbatch" >> Unbatch()


def _count_dropped_contacts(handler: SnapshotHandler) -> None:
    counter("enrichment.snapshot_contact_rows_dropped").inc(handler.contact_rows_dropped())


def build_handler(
    snapshot: str | None,
    url: str | None,
    *,
    company_fields: Iterable[str],
    contact_fields: Iterable[str],
    policy: Policy,
    batch_size: int | None = None,
    **http_options: Any,
) -> EnrichmentSourceHandler | None:
    """The handler for the chosen source: a snapshot path, an HTTP endpoint, or neither (None).

    ``policy`` places the snapshot's companies (their contact columns are loaded only for
    companies of a known, unrestricted country); ``http_options`` go to :class:`HttpHandler`
    (``api_key_env``, timeouts, rate limit...).
    Raises ValueError if both a snapshot and a URL are given: silently preferring one would
    hide a configuration mistake.
    """
    snapshot = snapshot or None
    url = url or None
    if snapshot and url:
        raise ValueError(
            "AroundDeal enrichment: give either a snapshot file or an HTTP endpoint, not both"
        )
    if snapshot:
        if http_options:
            raise ValueError(
                f"AroundDeal enrichment: HTTP options {sorted(http_options)} given for a snapshot"
            )
        kwargs = {} if batch_size is None else {"batch_size": batch_size}
        return SnapshotHandler(snapshot, company_fields, contact_fields, policy, **kwargs)
    if url:
        if batch_size is not None:
            http_options["batch_size"] = batch_size
        return HttpHandler(url, company_fields, contact_fields, **http_options)
    return None

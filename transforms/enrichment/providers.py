"""The enrichment seam: what a source of company data is, as ``typing.Protocol`` types.

A *handler* looks request records up (:class:`EnrichmentHandler`, optionally
:class:`ColumnLookup` and :class:`RunCounters`); a *provider* declares the command-line flags of
its source and builds its handler from them (:class:`EnrichmentProvider`).
``transforms.enrichment.registry`` holds the providers the visits pipeline offers.

Adding a source: a module with its handler and provider (``transforms/enrichment/snapshot.py`` is
one), and its provider in ``registry.BUILT_IN``; code outside this package calls
``registry.register`` instead, before the pipeline's options are parsed
(``tests/transforms/test_enrich_provider.py`` does exactly that). The policy still holds
whatever the source: the join keeps only the declared fields, the contact gate applies to every
record, and a handler that answers ``None`` for a record has failed for it (the record flows on
unenriched, counted as ``enrichment.failed``).

Protocols, not base classes: a handler or provider inherits nothing (one written for another
project fits as it is), and ``isinstance`` checks the optional parts.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from schemas.policy import Policy
from transforms.enrichment.lookup import LookupResult

__all__ = [
    "ColumnLookup",
    "EnrichmentFields",
    "EnrichmentHandler",
    "EnrichmentProvider",
    "Response",
    "RunCounters",
]

# What a handler answers for one request record: a LookupResult, a mapping of fields (found if
# any is non-empty), or None (the lookup failed).
Response = LookupResult | Mapping[str, Any] | None


@runtime_checkable
class EnrichmentHandler(Protocol):
    """A source of company data, looked up by visitor (see ``transforms.enrichment.lookup``).

    ``EnrichAroundDeal`` enters it once per worker (``DoFn.setup``), calls :meth:`lookup` with
    up to ``batch_size`` request records at a time (0: a whole batch of the pipeline), each call
    within :meth:`max_call_seconds`, and exits it in ``DoFn.teardown``. A request record holds
    ``ip`` and ``region`` only. A handler is pickled to the workers: it must not carry secrets
    or visitor data in its state, and must never raise for a remote failure (answer ``None``,
    or a ``FAILED`` result, instead).
    """

    batch_size: int

    def max_call_seconds(self) -> float:
        """The deadline of one :meth:`lookup` call: past it the bundle fails (a hung source)."""
        ...

    def __enter__(self) -> Any: ...

    def __exit__(self, *exc_info: object) -> Any: ...

    def lookup(self, requests: Sequence[dict[str, Any]]) -> Sequence[Response]:
        """One answer per request record, in order."""
        ...


@runtime_checkable
class ColumnLookup(Protocol):
    """Optional: a handler that can look a table's rows up from two columns, without a request
    record per row (the snapshot, whose lookups are in memory)."""

    def lookup_columns(self, ips: Sequence[Any], restricted: Sequence[bool]) -> Sequence[Response]:
        """One answer per row: its ``ip`` value and whether its visitor is restricted."""
        ...


@runtime_checkable
class RunCounters(Protocol):
    """Optional: counters that describe the source itself (counted once per run, not per
    record), such as the snapshot's rows whose contact cells the loader dropped."""

    def run_counters(self) -> Mapping[str, int]: ...


@dataclass(frozen=True)
class EnrichmentFields:
    """What a provider's handler is built for: the fields it may return (from the policy) and
    the policy that places companies' countries."""

    company_fields: tuple[str, ...]
    contact_fields: tuple[str, ...]
    policy: Policy


@runtime_checkable
class EnrichmentProvider(Protocol):
    """A source of enrichment data as the command line offers it.

    ``flag`` is the ``dest`` of the flag that selects the provider (``enrichment_snapshot``):
    given a non-empty value, the provider is the run's source. :meth:`add_flags` declares that
    flag and the provider's own options on the visits command line; :meth:`build` makes the
    handler from the parsed options (any object with the flags as attributes), checking what it
    can before any data is read.
    """

    name: str
    flag: str

    def add_flags(self, parser: argparse.ArgumentParser) -> None: ...

    def build(self, options: Any, fields: EnrichmentFields) -> EnrichmentHandler: ...

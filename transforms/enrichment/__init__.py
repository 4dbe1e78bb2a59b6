"""AroundDeal enrichment: "Corporate Website Visitor Information" looked up by IP address.

The policy lets us receive company data for every visitor but corporate *contact* data only for
visitors outside the EEA/UK, and only for a company whose country is known and outside the
EEA/UK (``Policy.region_for`` of its country is ``OTHER``). The modules, one concern each:

- :mod:`~transforms.enrichment.lookup`: what a lookup answers (``LookupResult``) and the IP and
  value helpers; no Beam.
- :mod:`~transforms.enrichment.providers`: the seam, as protocols: a handler (batch size, call
  deadline, optional column lookup) and a provider (its flags, its handler);
  :mod:`~transforms.enrichment.registry`: the providers the visits pipeline offers.
- :mod:`~transforms.enrichment.snapshot`: the offline CSV of networks (longest-prefix match,
  built once per worker process); ``--enrichment_snapshot``.
- :mod:`~transforms.enrichment.http_client`: the AroundDeal HTTP endpoint (``--enrichment_url``),
  over :mod:`~transforms.enrichment.http_protocol` (the wire format) and
  :mod:`~transforms.enrichment.http_resilience` (retries, deadlines, rate limit).
- :mod:`~transforms.enrichment.join`: a lookup's fields joined onto its record;
  :mod:`~transforms.enrichment.country`: the company-country rule and the contact gate.
- :mod:`~transforms.enrichment.enrich`: ``EnrichAroundDeal``, the Beam step the pipeline applies.

The names below are re-exported here for the pipelines and tests.
"""

from __future__ import annotations

from transforms.enrichment.country import CountryRule, RestrictContactsByCompanyCountry
from transforms.enrichment.enrich import EnrichAroundDeal
from transforms.enrichment.http_client import HttpHandler, HttpProvider
from transforms.enrichment.join import JoinAroundDeal
from transforms.enrichment.lookup import FAILED, MATCHED, NO_MATCH, LookupResult
from transforms.enrichment.providers import (
    ColumnLookup,
    EnrichmentFields,
    EnrichmentHandler,
    EnrichmentProvider,
    RunCounters,
)
from transforms.enrichment.registry import add_flags, build_handler, register, unregister
from transforms.enrichment.snapshot import SnapshotHandler, SnapshotProvider

__all__ = [
    "FAILED",
    "MATCHED",
    "NO_MATCH",
    "ColumnLookup",
    "CountryRule",
    "EnrichAroundDeal",
    "EnrichmentFields",
    "EnrichmentHandler",
    "EnrichmentProvider",
    "HttpHandler",
    "HttpProvider",
    "JoinAroundDeal",
    "LookupResult",
    "RestrictContactsByCompanyCountry",
    "RunCounters",
    "SnapshotHandler",
    "SnapshotProvider",
    "add_flags",
    "build_handler",
    "register",
    "unregister",
]

"""Website-visit ingestion: ``python -m pipelines.visits --input GLOB --output DIR [...]``.

    Read -> ParseValidate -> Geolocate -> SuppressRestrictedContacts -> EnrichAroundDeal
         -> Store (Guard -> Tag -> Write), with every rejected record collected into the dead
         letters.

Records travel in batches (``transforms.batches``): Beam's per-element cost is paid once per
batch, the parser hands on Arrow tables, and the stages after it work on whole columns (the
record-by-record code decides what the columns cannot); no stage holds more than a batch.

Writes two categories: ``website_visit`` (one row per good visit) and ``corporate_visitor_info``
(company and contact fields, keyed by ``event_id``, for visits that have any), then a run report
under ``_reports/``. The input contract is ``schemas/avro/visit_input.avsc``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions
from maxminddb import InvalidDatabaseError

from pipelines.launch import RunContext, cli_main, dead_letter_context, run_context, run_pipeline
from pipelines.options import IngestOptions, JobOptions, bundled
from schemas.avro import category_columns, input_fields, output_schema
from schemas.policy import load_policy
from transforms.enrichment import EnrichAroundDeal, add_flags, build_handler
from transforms.geo import Geolocate, shared_lookup
from transforms.parse import Parse
from transforms.read import ReadBatches
from transforms.sinks import WriteDeadLetters
from transforms.store import Store
from transforms.suppress import SuppressRestrictedContacts
from transforms.tag import CategoryOutput

__all__ = ["IngestVisits", "VisitsOptions", "main", "run"]

SOURCE = "visits"
INPUT_SCHEMA = "visit_input"
VISIT = "website_visit"
CORPORATE = "corporate_visitor_info"


class VisitsOptions(PipelineOptions):
    """Flags of the visits pipeline (besides ``JobOptions`` and ``IngestOptions``)."""

    @classmethod
    def _add_argparse_args(cls, parser) -> None:
        parser.add_argument(
            "--geoip_db",
            default=None,
            help="GeoIP2/GeoLite2 Country, City or Enterprise database (.mmdb), local or on a Beam "
            "filesystem. Default: the bundled country database (pipelines/data/country.mmdb).",
        )
        parser.add_argument(
            "--geo_cache_size",
            type=int,
            default=131072,
            help="Answers (one per address) the process caches in front of the GeoIP reader.",
        )
        # Every enrichment provider's flags (--enrichment_snapshot, --enrichment_url...),
        # declared by the providers themselves (transforms.enrichment.registry).
        add_flags(parser)


@dataclass(frozen=True)
class VisitsConfig:
    """Everything :class:`IngestVisits` needs, resolved from the options (no flags below here)."""

    run: RunContext
    geoip_db: str
    geo_cache_size: int
    enrichment: Any  # an EnrichmentHandler, or None when enrichment is off


class IngestVisits(beam.PTransform):
    """The whole visits flow as one composite, from file pattern to written sinks."""

    def __init__(self, config: VisitsConfig) -> None:
        super().__init__()
        self._config = config

    def expand(self, pbegin):
        c = self._config
        run = c.run
        policy = run.policy
        visit, corporate = policy.category(VISIT), policy.category(CORPORATE)
        contact = corporate.field_groups["contact"]
        company = corporate.field_groups["company"]
        input_specs = input_fields(INPUT_SCHEMA)
        dead_letters = dead_letter_context(
            run, [spec.name for spec in input_specs] + ["country", "region"]
        )
        outputs = (
            CategoryOutput(VISIT, category_columns(VISIT)),
            CategoryOutput(CORPORATE, category_columns(CORPORATE), when_any=company + contact),
        )

        raw = pbegin | "Read" >> ReadBatches(
            run.input, run.input_format, max_line_bytes=run.max_line_bytes
        )
        records, parse_dead = raw | "ParseValidate" >> Parse(
            input_specs,
            visit.event_time,
            policy,
            dead_letters,
            input_format=run.input_format,
            bounds=run.bounds,
        )
        located = records | "Geolocate" >> Geolocate(
            c.geoip_db, policy, cache_size=c.geo_cache_size
        )
        minimised = located | "SuppressRestrictedContacts" >> SuppressRestrictedContacts(
            (corporate,), policy.regions
        )
        # Applied with or without a handler: its contact gate is what keeps a producer's
        # contact fields out unless the company's country is known and unrestricted.
        enriched = minimised | "EnrichAroundDeal" >> EnrichAroundDeal(
            c.enrichment, company, contact, policy
        )
        schemas = {o.category: output_schema(o.category) for o in outputs}
        files, *store_dead = enriched | "Store" >> Store(
            policy=policy,
            outputs=outputs,
            schemas=schemas,
            extra_keys=("country", "region"),
            context=dead_letters,
            run_time=run.run_time,
            sink=run.table_sink(schemas),
        )
        # Each stage's letters are spilled where they are produced (transforms.deadletter).
        letters = (*parse_dead, *store_dead) | "WriteDeadLetters" >> WriteDeadLetters(**run.sink())
        # Nothing is visible before this: the run's files replace its earlier attempt's at once.
        return (files, letters) | "Commit" >> run.commit((VISIT, CORPORATE))


def config_from(options: PipelineOptions) -> VisitsConfig:
    """Resolve and validate the options: fails here, before any data is read."""
    visits = options.view_as(VisitsOptions)
    policy = load_policy(options.view_as(JobOptions).policy)
    run = run_context(
        options,
        pipeline=SOURCE,
        primary_categories=(VISIT,),
        policy=policy,
        option_classes=(VisitsOptions,),
    )
    geoip_db = visits.geoip_db or bundled("country.mmdb")
    check_geoip_db(geoip_db, visits.geo_cache_size)
    corporate = policy.category(CORPORATE)
    # The chosen provider's handler, checked now (a snapshot is loaded: a malformed line names
    # itself; its index is shared with the workers of an in-process runner).
    handler = build_handler(
        visits,
        company_fields=corporate.field_groups["company"],
        contact_fields=corporate.field_groups["contact"],
        policy=policy,
    )
    return VisitsConfig(
        run=run, geoip_db=geoip_db, geo_cache_size=visits.geo_cache_size, enrichment=handler
    )


def check_geoip_db(path: str, cache_size: int) -> None:
    """Open the GeoIP database as the workers will (its reader is shared with the workers of an
    in-process runner): a missing file, or one that is no MaxMind database with country data,
    fails here rather than in the first bundle."""
    if cache_size < 0:
        raise ValueError(f"--geo_cache_size must be at least 0, got {cache_size}")
    try:
        shared_lookup(path, cache_size)
    except InvalidDatabaseError:
        raise ValueError(f"--geoip_db {path} is not a MaxMind database (.mmdb)") from None
    except (OSError, ValueError) as exc:
        raise ValueError(f"--geoip_db: {exc}") from None


def run(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run the visits pipeline with command-line style ``argv``; returns the run report."""
    return run_pipeline(argv, config_from, IngestVisits)


def main(argv: Sequence[str] | None = None) -> None:
    cli_main(run, argv, options=(IngestOptions, VisitsOptions))


if __name__ == "__main__":
    main()

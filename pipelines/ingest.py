"""Policy-driven ingestion of any category, or of a routed source.

    python -m pipelines.ingest --category NAME --input GLOB --output DIR
    python -m pipelines.ingest --source NAME --input GLOB --output DIR

``--category``: the records are of one category of ``schemas/policy.yaml``; its input contract is
its own ``schemas/avro/<category>.avsc`` (event time in any accepted form, identifiers as text or
numbers, fingerprinted columns given as their secret input). ``--source``: a source of the
policy's ``sources`` section (``sdk_logs``, ``telemetry``), whose records are routed to one of
several categories; ``python -m pipelines.sdk_logs`` and ``.telemetry`` are exactly this.

    Read -> ParseValidate -> [Fingerprint] -> Store (Guard -> Tag -> Write) + DeadLetters

Nothing here knows a category: adding one is a policy entry and an ``.avsc``. A category whose
rows carry the visitor's region, or to which regional restrictions apply (``website_visit``,
``corporate_visitor_info``), is refused at startup: this pipeline neither geolocates nor gates
contact fields, so every record would be rejected, its contact data in its dead letter.
``python -m pipelines.visits`` ingests them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions

from pipelines.launch import RunContext, cli_main, dead_letter_context, run_context, run_pipeline
from pipelines.options import IngestOptions, JobOptions
from schemas.avro import (
    FieldSpec,
    category_columns,
    category_input_fields,
    input_fields,
    output_schema,
)
from schemas.policy import Policy, load_policy
from transforms.fingerprint import Fingerprint, KeySource, load_key
from transforms.parse import Parse
from transforms.read import ReadBatches
from transforms.sinks import WriteDeadLetters
from transforms.store import Store
from transforms.tag import CategoryOutput

__all__ = [
    "CategoryOptions",
    "IngestRecords",
    "IngestSpec",
    "main",
    "run",
    "source_pipeline",
    "spec_for",
]

DEFAULT_KEY_ENV = "TRTC_FINGERPRINT_KEY"
VISITS_PIPELINE = "pipelines.visits"


class CategoryOptions(PipelineOptions):
    """Flags of the generic ingestion pipeline (besides ``JobOptions`` and ``IngestOptions``)."""

    @classmethod
    def _add_argparse_args(cls, parser) -> None:
        parser.add_argument(
            "--category",
            default=None,
            help="Ingest records of this policy category (e.g. account_information); the input "
            "contract is schemas/avro/<category>.avsc.",
        )
        parser.add_argument(
            "--source",
            default=None,
            help="Ingest a routed source of the policy (sdk_logs, telemetry): each record goes to "
            "the first category whose route matches it.",
        )
        parser.add_argument(
            "--fingerprint_key_env",
            default=DEFAULT_KEY_ENV,
            help="Environment variable holding the HMAC key for categories that store "
            f"fingerprints of credentials (customer_temporary_key). Default: {DEFAULT_KEY_ENV}.",
        )
        parser.add_argument(
            "--fingerprint_key_file",
            default=None,
            help="File (local or Beam filesystem) holding the HMAC key; wins over the variable.",
        )


@dataclass(frozen=True)
class IngestSpec:
    """What to ingest: resolved from the policy for one category or one routed source."""

    name: str
    input_specs: tuple[FieldSpec, ...]
    event_time: str | None
    outputs: tuple[CategoryOutput, ...]
    exclusive: bool
    fingerprints: dict[str, str] = field(default_factory=dict)  # of a single category

    @property
    def categories(self) -> tuple[str, ...]:
        return tuple(o.category for o in self.outputs)


def spec_for(
    policy: Policy, *, category: str | None = None, source: str | None = None
) -> IngestSpec:
    """The :class:`IngestSpec` of ``--category`` or ``--source`` (exactly one of them)."""
    if bool(category) == bool(source):
        raise ValueError("give exactly one of --category and --source")
    names = [category] if category else [r.category for r in policy.source_named(source).routes]
    for name in names:
        if _needs_geolocation(policy, name):
            raise ValueError(
                f"category {name} needs geolocation and the contact gate: ingest it with "
                f"python -m {VISITS_PIPELINE}"
            )
    if category:
        cat = policy.category(category)
        if not cat.stored:
            raise ValueError(f"category {category} is never stored: there is nothing to ingest")
        return IngestSpec(
            name=category,
            input_specs=category_input_fields(category, cat.fingerprints, policy.schema_dirs),
            event_time=cat.event_time,
            outputs=(CategoryOutput(category, category_columns(category, policy.schema_dirs)),),
            exclusive=True,
            fingerprints=dict(cat.fingerprints),
        )
    src = policy.source_named(source)
    times = {policy.category(r.category).event_time for r in src.routes}
    if len(times) != 1:
        raise ValueError(f"the categories of source {source} disagree on the event time: {times}")
    return IngestSpec(
        name=source,
        input_specs=input_fields(src.input_schema, policy.schema_dirs),
        event_time=times.pop(),
        outputs=tuple(
            CategoryOutput(r.category, category_columns(r.category, policy.schema_dirs), route=r)
            for r in src.routes
        ),
        exclusive=True,
    )


def _needs_geolocation(policy: Policy, name: str) -> bool:
    """Rows of ``name`` carry the visitor's region, or regional rules apply to them."""
    category = policy.category(name)
    if category.forbidden_fields_in_regions or category.restricted_country_field:
        return True
    return category.stored and "region" in category_columns(name, policy.schema_dirs)


@dataclass(frozen=True)
class IngestConfig:
    """Everything :class:`IngestRecords` needs (no flags below here)."""

    run: RunContext
    spec: IngestSpec
    key: KeySource


class IngestRecords(beam.PTransform):
    """A category's or a routed source's whole flow, from file pattern to written sinks."""

    def __init__(self, config: IngestConfig) -> None:
        super().__init__()
        self._config = config

    def expand(self, pbegin):
        c = self._config
        run, spec = c.run, c.spec
        dead_letters = dead_letter_context(run, [s.name for s in spec.input_specs])

        raw = pbegin | "Read" >> ReadBatches(
            run.input, run.input_format, max_line_bytes=run.max_line_bytes
        )
        records, parse_dead = raw | "ParseValidate" >> Parse(
            spec.input_specs,
            spec.event_time,
            run.policy,
            dead_letters,
            input_format=run.input_format,
            bounds=run.bounds,
        )
        if spec.fingerprints:
            records = records | "Fingerprint" >> Fingerprint(spec.name, spec.fingerprints, c.key)
        schemas = {name: output_schema(name, run.policy.schema_dirs) for name in spec.categories}
        files, *store_dead = records | "Store" >> Store(
            policy=run.policy,
            outputs=spec.outputs,
            schemas=schemas,
            extra_keys=(),
            context=dead_letters,
            run_time=run.run_time,
            exclusive=spec.exclusive,
            sink=run.table_sink(schemas),
        )
        # Each stage's letters are spilled where they are produced (transforms.deadletter).
        letters = (*parse_dead, *store_dead) | "WriteDeadLetters" >> WriteDeadLetters(**run.sink())
        # Nothing is visible before this: the run's files replace its earlier attempt's at once.
        return (files, letters) | "Commit" >> run.commit(spec.categories)


def config_from(options: PipelineOptions) -> IngestConfig:
    """Resolve and validate the options: fails here, before any data is read."""
    own = options.view_as(CategoryOptions)
    policy = load_policy(options.view_as(JobOptions).policy)
    spec = spec_for(policy, category=own.category, source=own.source)
    run = run_context(
        options,
        pipeline=spec.name,
        primary_categories=spec.categories,
        policy=policy,
        option_classes=(CategoryOptions,),
    )
    key = KeySource(env=own.fingerprint_key_env, file=own.fingerprint_key_file)
    if spec.fingerprints:
        load_key(key)  # fail at startup, not on the workers
    return IngestConfig(run=run, spec=spec, key=key)


def run(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run with command-line style ``argv``; returns the run report."""
    return run_pipeline(argv, config_from, IngestRecords)


def main(argv: Sequence[str] | None = None) -> None:
    cli_main(run, argv, options=(IngestOptions, CategoryOptions))


def source_pipeline(
    source: str, module: ModuleType
) -> tuple[Callable[[Sequence[str] | None], dict[str, Any]], Callable[..., None]]:
    """``(run, main)`` of the pipeline of one routed source: this pipeline with ``--source``.

    ``module`` is the source's own (``pipelines.sdk_logs``): its command line is named after it
    and described by its docstring, and takes the common flags only (the source is fixed, and
    no routed source stores fingerprints)."""
    preset = (f"--source={source}",)

    def run_source(argv: Sequence[str] | None = None) -> dict[str, Any]:
        return run([*preset, *(argv or [])])

    def main_source(argv: Sequence[str] | None = None) -> None:
        cli_main(run, argv, preset=preset, options=(IngestOptions,), module=module)

    return run_source, main_source


if __name__ == "__main__":
    main()

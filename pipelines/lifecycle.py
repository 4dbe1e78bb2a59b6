"""Lifecycle events: open-ended rows get their now-known expiry and leave the open-ended partition.

    python -m pipelines.lifecycle --output DIR --events GLOB [--run_time ISO-8601]

Events are JSON Lines, one per line, each naming its subject by exactly one of the event's keys
(the policy's ``lifecycle_events``)::

    {"event": "account_deleted",    "uin": "100000009",        "at": "2026-11-28T10:00:00Z"}
    {"event": "service_terminated", "sdk_app_id": 1400000001,  "at": "2026-11-28T10:00:00Z"}
    {"event": "marketing_opt_out",  "business_email": "a@b.c", "at": 1795000000000}
    {"event": "marketing_opt_out",  "business_phone": "+1 415 555 2671", "at": ...}
    {"event": "marketing_opt_out",  "linkedin_url": "https://www.linkedin.com/in/jane-doe", ...}

The events, their key fields and the rules they end are the policy's; values are compared
normalised on both sides (``transforms.retention.matching``). Each affected row of an open-ended
partition (``expiry_date=9999-12-31``, ``transforms.sinks.OPEN_ENDED_EXPIRY_DATE``; or Hive's
null partition of outputs written before it) gets ``expires_at`` = the event time plus the grace
period of its rule (account deleted: +30 days for account data, +7 days for service data;
service terminated: +7 days) and moves to its ``expiry_date=`` partition, where the purge
deletes it on its date. A row whose new expiry is already due at ``--run_time`` (default: now),
that is on or before its UTC date as for the purge, is deleted at once: an opt-out means "delete
now", and an event reported late does not keep data past its expiry. An account deletion also
ends the service of the account's applications (the policy's ``cascades_to``), found in every
stored category that ties a ``uin`` to an ``sdk_app_id``, so their temporary keys and
application logs expire 7 days after it, as the policy says (``ResolveCascades``).

    ReadEvents -> ParseEvents -> IndexEvents --------------------+--> SplitFiles (open-ended)
                      |             |                            |       |           |
                      |             +-> ResolveCascades ---------+   moved rows   actions
                      v                 (every linking category)       |
                 DeadLetters                                     WritePartitioned (staged)

Everything is staged in a transaction (``transforms.retention.txn``) and committed in one step
once the job succeeded: a crash leaves the old state or, after the commit, a state the next run
of any retention job completes; never a loss, and no row ends up in two partitions. Malformed
events become dead letters (``_dead_letter/source=lifecycle/``) with their reason and their
contact fields masked. Rerunning with the same events is a no-op; rerunning with the whole event
history also catches rows of a deleted account or application ingested after its event. The
audit record is ``_reports/lifecycle-<run_id>.json``.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions

from pipelines.launch import RunContext, cli_main, dead_letter_context, retention_context
from pipelines.report import counters_with_prefix
from pipelines.staged_job import staged_pipeline
from schemas.avro import output_schema
from schemas.policy import Policy
from transforms.deadletter import ParDoWithDeadLetters
from transforms.read import ReadRecords
from transforms.retention.jsonio import write_json
from transforms.retention.layout import (
    DATA,
    list_layout,
)
from transforms.retention.lifecycle import (
    Cascade,
    IndexEvents,
    ParseEventFn,
    ResolveCascadesFn,
    SplitFileFn,
    cascades,
    event_keys,
)
from transforms.retention.txn import Transaction, added_action, sorted_actions, stage_plan
from transforms.sinks import WriteDeadLetters, WritePartitioned

__all__ = [
    "ApplyLifecycleEvents",
    "LifecycleOptions",
    "lifecycle_categories",
    "main",
    "run",
    "summary",
]

LOG = logging.getLogger(__name__)


class LifecycleOptions(PipelineOptions):
    """``--events``; ``--output``, ``--policy`` and ``--run_time`` are the common options."""

    @classmethod
    def _add_argparse_args(cls, parser) -> None:
        parser.add_argument(
            "--events",
            default=None,
            help="Lifecycle events: a file pattern of JSON Lines (local or any Beam filesystem), "
            'e.g. {"event": "account_deleted", "uin": "100000009", "at": "2026-11-28T10:00:00Z"}.',
        )


def _write_plan(_: object, actions: list, path: str) -> None:
    write_json(path, {"actions": sorted_actions(actions)})


def lifecycle_categories(policy: Policy) -> tuple[str, ...]:
    """Categories some lifecycle event can end rows of (their open-ended partitions are read)."""
    return tuple(
        sorted(
            name
            for name, category in policy.categories.items()
            if category.stored
            and any(e.applies_to(category) for e in policy.lifecycle_events.values())
        )
    )


@dataclass(frozen=True)
class LifecycleConfig:
    run: RunContext
    root: str
    txn: Transaction
    categories: tuple[str, ...]
    null_files: tuple[dict[str, str], ...]
    cascades: tuple[Cascade, ...]
    link_files: tuple[dict[str, str], ...]


class ApplyLifecycleEvents(beam.PTransform):
    """Events -> staged rewrites of the open-ended partitions and the plan of the transaction."""

    def __init__(self, config: LifecycleConfig) -> None:
        super().__init__()
        self._config = config

    def expand(self, pbegin):
        c = self._config
        policy, txn = c.run.policy, c.txn
        context = dead_letter_context(c.run, ["event", "at", *event_keys(policy)])
        token = f"lc{c.run.run_id[:6]}"

        raw = pbegin | "ReadEvents" >> ReadRecords(
            c.run.input, "jsonl", max_line_bytes=c.run.max_line_bytes
        )
        events, dead = raw | "ParseEvents" >> ParDoWithDeadLetters(
            ParseEventFn(policy, context, c.run.bounds), "parse", context
        )
        index = events | "IndexEvents" >> beam.CombineGlobally(IndexEvents())
        if c.link_files:
            derived = (
                pbegin
                | "LinkingFiles" >> beam.Create(list(c.link_files))
                | "ResolveCascades"
                >> beam.ParDo(ResolveCascadesFn(c.cascades), beam.pvalue.AsSingleton(index))
            )
            index = (
                (events, derived)
                | "WithDerivedEvents" >> beam.Flatten()
                | "IndexAllEvents" >> beam.CombineGlobally(IndexEvents())
            )
        split = (
            pbegin
            | "NullPartitionFiles" >> beam.Create(list(c.null_files))
            | "SplitFiles"
            >> beam.ParDo(
                SplitFileFn(policy, c.root, txn.rel_dir, c.run.run_time),
                beam.pvalue.AsSingleton(index),
            ).with_outputs("parquet", "avro", main="actions")
        )
        schemas = {name: output_schema(name, policy.schema_dirs) for name in c.categories}
        written = [
            split[fmt]
            | f"WriteMoved{fmt.capitalize()}"
            >> WritePartitioned(txn.staged_root, schemas, (fmt,), run_token=token)
            for fmt in ("parquet", "avro")
        ]
        letters = dead | "WriteDeadLetters" >> WriteDeadLetters(txn.staged_root, run_token=token)
        added = (
            (*written, letters)
            | "NewFiles" >> beam.Flatten()
            | "AddActions" >> beam.Map(added_action, txn.staged_root, txn.rel_dir)
        )
        actions = (split.actions, added) | "Actions" >> beam.Flatten()
        _ = stage_plan(pbegin, txn, _write_plan, beam.pvalue.AsList(actions))


def config_from(options: PipelineOptions) -> LifecycleConfig:
    """Resolve and validate everything before any data is read."""
    run = retention_context(
        options,
        pipeline="lifecycle",
        pattern=options.view_as(LifecycleOptions).events,
        flag="--events",
    )
    policy, root = run.policy, run.output
    return LifecycleConfig(
        run=run,
        root=root,
        txn=Transaction(root, run.run_id),
        categories=lifecycle_categories(policy),
        null_files=(),
        cascades=cascades(policy),
        link_files=(),
    )


def _with_files(config: LifecycleConfig) -> LifecycleConfig:
    """The files to read, listed once the lock is held (after recovery)."""
    files = [f for f in list_layout(config.root) if f.format in ("parquet", "avro")]
    data = [f for f in files if f.partition.kind == DATA]
    null_files = tuple(
        f.element()
        for f in data
        if f.partition.open_ended and f.partition.name in config.categories
    )
    linking = {category for cascade in config.cascades for category in cascade.categories}
    link_files = tuple(f.element() for f in data if f.partition.name in linking)
    return dataclasses.replace(config, null_files=null_files, link_files=link_files)


def _sum(actions: Sequence[Mapping[str, Any]], key: str, by: str = "category") -> dict[str, int]:
    out: dict[str, int] = {}
    for a in actions:
        if a.get(key):
            out[a[by]] = out.get(a[by], 0) + a[key]
    return dict(sorted(out.items()))


def _merge(actions: Sequence[Mapping[str, Any]], key: str) -> dict[str, int]:
    out: dict[str, int] = {}
    for a in actions:
        for name, n in (a.get(key) or {}).items():
            out[name] = out.get(name, 0) + n
    return dict(sorted(out.items()))


def _audit(
    config: LifecycleConfig, counters: Mapping[str, int], actions: Sequence[Mapping[str, Any]]
) -> dict[str, Any]:
    run = config.run
    rewrites = [a for a in actions if a["op"] != "add"]
    added = [a["target"] for a in actions if a["op"] == "add"]
    events_valid = counters_with_prefix(counters, "lifecycle.events.")
    return {
        **run.header(),
        "events": run.input,
        "counts": {
            "events_read": counters.get("lifecycle.events_read", 0),
            "events_valid": events_valid,
            "dead_lettered": counters_with_prefix(counters, "dead_letter."),
            "derived_events": counters_with_prefix(counters, "lifecycle.derived_events."),
            "rows_moved": _sum(rewrites, "rows_moved"),
            "rows_deleted_expired": _sum(rewrites, "rows_deleted_expired"),
            "files_rewritten": sum(1 for a in rewrites if a["op"] == "replace"),
            "files_deleted": sum(1 for a in rewrites if a["op"] == "delete"),
            "files_added": len(added),
        },
        "rows_by_event": _merge(rewrites, "by_event"),
        "moved_to": _merge(rewrites, "moved_to"),
        "files": {
            "rewritten": [a["target"] for a in rewrites if a["op"] == "replace"],
            "deleted": [a["target"] for a in rewrites if a["op"] == "delete"],
            "added": added,
        },
    }


def run(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Apply the lifecycle events of ``--events``; returns the audit record (plus its path)."""
    options = PipelineOptions(list(argv or []))
    with staged_pipeline(
        options, config_from(options), "lifecycle", _with_files, ApplyLifecycleEvents
    ) as job:
        actions = job.plan["actions"]
        return job.report(job.commit(actions, _audit(job.config, job.counters, actions)))


def summary(report: Mapping[str, Any]) -> list[str]:
    counts = report["counts"]

    def fmt(values: Mapping[str, int]) -> str:
        return ", ".join(f"{k}={v}" for k, v in values.items()) or "none"

    return [
        f"[lifecycle] events read={counts['events_read']} valid: {fmt(counts['events_valid'])} "
        f"(+ derived by cascade: {fmt(counts['derived_events'])})",
        f"[lifecycle] dead letters: {fmt(counts['dead_lettered'])}",
        f"[lifecycle] rows moved to their expiry partition: {fmt(counts['rows_moved'])}",
        f"[lifecycle] rows deleted (already expired): {fmt(counts['rows_deleted_expired'])}",
        f"[lifecycle] files: {counts['files_rewritten']} rewritten, {counts['files_deleted']} "
        f"deleted, {counts['files_added']} added",
    ]


def main(argv: Sequence[str] | None = None) -> None:
    cli_main(run, argv, summary=summary)


if __name__ == "__main__":
    main()

"""Purge: delete every expired partition of an output root.

    python -m pipelines.purge --output DIR [--now ISO-8601] [--dry_run]

Every ``expiry_date=<date>/`` partition (data categories and dead letters alike) whose date is
on or before the UTC date of ``--now`` (default: now) is deleted, file by file, through Beam's
``FileSystems`` (local paths, ``gs://``, ``s3://``). The policy's "within N days" means at most
N days, so a row goes on the UTC date of its ``expires_at``, not after it
(``transforms.retention.layout.due``): run the purge daily at 00:00 UTC and no row is kept past
its ``expires_at`` (a row may go up to a day early, never late).

Never touched: an unexpired partition, an open-ended partition (``expiry_date=9999-12-31``, and
the Hive null partition of outputs written before it: open-ended retention, until a lifecycle
event sets the expiry; never due, whatever ``--now`` says), a partition whose date is not a date,
and anything outside the layout (``_reports/``, ``_retention/``, the sinks' temp folders, foreign
files). A directory that does not look like an output root is refused. ``--output`` is taken
literally: ``out[x]`` is that directory, not a glob (``transforms.paths``).

Safe to interrupt and to rerun: the partitions to delete are committed to a journal
(``transforms.retention.txn``) before the first deletion, every deletion is idempotent, and the
next run of any retention job finishes what a killed one committed and writes its audit. A
second run is a no-op (it finds nothing expired). ``--dry_run`` changes nothing: it lists what
would go. Each real run writes an audit record ``_reports/purge-<run_id>.json``: what was
deleted, when, under which policy version, with file and byte counts.

Purge is a listing and deletions, not a data-parallel job: it runs in the launcher (Beam's
``FileSystems`` batches the deletions on object stores) and starts no Beam pipeline. All standard
Beam options are accepted, so filesystem credentials (``--s3_access_key_id``...) work as usual.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Sequence
from typing import Any

from apache_beam.options.pipeline_options import PipelineOptions, TestOptions

from pipelines.launch import cli_main, retention_context
from pipelines.options import run_time_micros
from transforms.commit import pending_runs
from transforms.retention.jsonio import utc_now_iso
from transforms.retention.layout import (
    DATA,
    LayoutFile,
    list_layout,
)
from transforms.retention.txn import Transaction, staged_change
from transforms.retention.txn import pending_transactions as pending
from transforms.timestamps import format_utc, utc_date

__all__ = ["PurgeOptions", "expired_partitions", "main", "run", "summary"]

LOG = logging.getLogger(__name__)
_TRUE = ("true", "1", "yes", "y", "on")
_FALSE = ("false", "0", "no", "n", "off", "")


class PurgeOptions(PipelineOptions):
    """``--now``; ``--output``/``--policy`` are the common ``IngestOptions`` and ``--dry_run``
    is Beam's own ``TestOptions`` flag (declaring any of them twice would break argparse)."""

    @classmethod
    def _add_argparse_args(cls, parser) -> None:
        parser.add_argument(
            "--now",
            default=None,
            help="Reference time, ISO-8601 (default: now). Partitions whose expiry date is "
            "on or before its UTC date are deleted.",
        )


def _bare_dry_run(argv: Sequence[str]) -> list[str]:
    """``--dry_run`` alone means ``--dry_run=true`` (Beam declares it with a value)."""
    out = list(argv)
    for i, arg in enumerate(out):
        if arg == "--dry_run" and (i + 1 == len(out) or out[i + 1].startswith("--")):
            out[i] = "--dry_run=true"
    return out


def _flag(value: object) -> bool:
    text = str(value).strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE or value is None:
        return False
    raise ValueError(f"--dry_run: expected true or false, got {value!r}")


def expired_partitions(files: Sequence[LayoutFile], today: dt.date) -> list[dict[str, Any]]:
    """The partitions to delete on ``today`` (UTC), each with its files and size."""
    partitions: dict[str, dict[str, Any]] = {}
    for f in files:
        if not f.partition.expired(today):
            continue
        entry = partitions.setdefault(
            f.partition.rel_dir,
            {
                "op": "delete_partition",
                "partition": f.partition.rel_dir,
                "kind": f.partition.kind,
                "name": f.partition.name,
                "expiry_date": f.partition.expiry,
                "targets": [],
                "bytes": 0,
            },
        )
        entry["targets"].append(f.rel)
        entry["bytes"] += f.size
    return [partitions[k] for k in sorted(partitions)]


def _unrecognised(files: Sequence[LayoutFile]) -> list[str]:
    return sorted({f.partition.rel_dir for f in files if not f.partition.recognised})


def _counts(partitions: Sequence[dict[str, Any]]) -> dict[str, Any]:
    by_kind: dict[str, dict[str, int]] = {}
    for p in partitions:
        kind = "categories" if p["kind"] == DATA else "dead_letter_sources"
        by_kind.setdefault(kind, {})
        by_kind[kind][p["name"]] = by_kind[kind].get(p["name"], 0) + len(p["targets"])
    return {
        "partitions": len(partitions),
        "files": sum(len(p["targets"]) for p in partitions),
        "bytes": sum(p["bytes"] for p in partitions),
        "files_by": by_kind,
    }


def run(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Purge with command-line style ``argv``; returns the audit record (plus its path)."""
    options = PipelineOptions(_bare_dry_run(argv or []))
    now = run_time_micros(options.view_as(PurgeOptions).now, "--now")
    dry_run = _flag(options.view_as(TestOptions).dry_run)
    run = retention_context(options, pipeline="purge")
    policy, root, run_id = run.policy, run.output, run.run_id
    today = dt.date.fromisoformat(utc_date(now))
    audit: dict[str, Any] = {
        "pipeline": "purge",
        "run_id": run_id,
        "started_at": utc_now_iso(),
        "now": format_utc(now),
        "deletes_expiry_dates_on_or_before": today.isoformat(),
        "policy_version": policy.version,
        "policy_source": policy.source,
        "output": root,
        "dry_run": dry_run,
    }
    if dry_run:
        files = list_layout(root)
        partitions = expired_partitions(files, today)
        return {
            **audit,
            "partitions": partitions,
            "counts": _counts(partitions),
            "unrecognised_partitions": _unrecognised(files),
            "pending_transactions": pending(root),
            "pending_runs": pending_runs(root),
        }
    with staged_change(Transaction(root, run_id), "purge") as change:
        files = list_layout(root)
        partitions = expired_partitions(files, today)
        audit.update(
            partitions=partitions,
            counts=_counts(partitions),
            unrecognised_partitions=_unrecognised(files),
            recovered_transactions=change.recovered,
            # Runs still writing: their staged rows are not in the layout yet, so this purge
            # cannot delete them; what of them is due goes with the first purge after they
            # commit (transforms.commit).
            pending_runs=pending_runs(root),
        )
        return change.write_report(change.commit_and_record(partitions, audit))


def summary(report: dict[str, Any]) -> list[str]:
    counts = report["counts"]
    verb = "would delete" if report["dry_run"] else "deleted"
    lines = [
        f"[purge] now={report['now']}: {verb} {counts['partitions']} partitions "
        f"({counts['files']} files, {counts['bytes']:,} bytes) with expiry dates on or before "
        f"{report['deletes_expiry_dates_on_or_before']}"
    ]
    if report["dry_run"]:
        lines += [f"  {p['partition']}  ({len(p['targets'])} files)" for p in report["partitions"]]
    for rel_dir in report["unrecognised_partitions"]:
        lines.append(f"[purge] left alone (not a date): {rel_dir}")
    for txn in report.get("recovered_transactions", ()):
        lines.append(f"[purge] recovered transaction {txn['txn']}: {txn['outcome']}")
    for name in report.get("pending_runs", ()):
        lines.append(f"[purge] run {name} is still writing: the next purge covers what it adds")
    for txn in report.get("pending_transactions", ()):
        lines.append(f"[purge] pending transaction {txn} (the next real run recovers it)")
    return lines


def main(argv: Sequence[str] | None = None) -> None:
    cli_main(run, argv, summary=summary)


if __name__ == "__main__":
    main()

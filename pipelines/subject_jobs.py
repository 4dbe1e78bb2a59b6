"""What the jobs on data subject requests share: ``pipelines.erase`` and ``pipelines.access``.

Both read the same requests (``--requests``), hold the same configuration (the run, the
transaction, the files of the output root listed once the lock is held), find their subjects'
rows with the same scan (``transforms.retention.erasure.FindSubjects``) and count the requests
alike; so a request exports exactly the rows its erasure would remove. Each job adds what is
its own: the rewrite and its read-back (erase), the exports (access).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from apache_beam.options.pipeline_options import PipelineOptions

from pipelines.launch import RunContext, dead_letter_context, retention_context
from pipelines.report import counters_with_prefix
from schemas.policy import SUBJECT_KINDS, Policy
from transforms.retention.erasure import SubjectScan
from transforms.retention.layout import DATA, list_layout
from transforms.retention.subjects import link_source_categories
from transforms.retention.txn import Transaction
from transforms.timestamps import format_utc

__all__ = [
    "MASKED",
    "SubjectJobConfig",
    "SubjectRequestOptions",
    "config_from",
    "request_counts",
    "request_summary",
    "scan_files",
    "subject_scan",
    "summary_lines",
    "with_files",
]

Config = TypeVar("Config", bound="SubjectJobConfig")
# Masked in the dead letters of rejected requests: a request must not copy its identifier.
MASKED = tuple(sorted(SUBJECT_KINDS))


class SubjectRequestOptions(PipelineOptions):
    """``--requests`` (of ``pipelines.erase`` and ``pipelines.access``: one format); ``--output``,
    ``--policy`` and ``--run_time`` are the common options."""

    @classmethod
    def _add_argparse_args(cls, parser) -> None:
        parser.add_argument(
            "--requests",
            default=None,
            help="Data subject requests: a file pattern of JSON Lines (local or any Beam "
            'filesystem), e.g. {"request_id": "DSR-1", "received_at": "2026-11-28T09:00:00Z", '
            '"business_email": "a@b.example"}; one subject each, by user_id, uin, sdk_app_id, '
            "business_email, business_phone, linkedin_url or ip.",
        )


@dataclass(frozen=True)
class SubjectJobConfig:
    """A job on data subject requests (erase; access extends it): its run, and the files of
    the output root it scans, listed once the lock is held (``with_files``)."""

    run: RunContext
    root: str
    txn: Transaction
    files: tuple[dict[str, str], ...] = ()
    link_files: tuple[dict[str, str], ...] = ()
    unscanned: tuple[str, ...] = ()


def config_from(options: PipelineOptions, job: str) -> SubjectJobConfig:
    """The run of ``job`` on ``--requests`` and its transaction, checked before any data is
    read."""
    run = retention_context(
        options,
        pipeline=job,
        pattern=options.view_as(SubjectRequestOptions).requests,
        flag="--requests",
    )
    return SubjectJobConfig(run=run, root=run.output, txn=Transaction(run.output, run.run_id))


def request_summary(request: Mapping[str, Any]) -> dict[str, Any]:
    """What the plan and the audit keep of a request: never the identifier itself."""
    return {
        "request_id": request["request_id"],
        "received_at": format_utc(request["received_at"]),
        "subject_field": request["field"],
        "narrowed_to_sdk_app_id": bool(request.get("scope")),
    }


def request_counts(job: str, counters: Mapping[str, int]) -> dict[str, Any]:
    """The audit's counts of the requests read, the valid ones and the dead letters."""
    return {
        "requests_read": counters.get(f"{job}.requests_read", 0),
        "requests_valid": counters.get(f"{job}.requests_valid", 0),
        "dead_lettered": counters_with_prefix(counters, "dead_letter."),
    }


def summary_lines(
    job: str, report: Mapping[str, Any], totals: str, outcome: Callable[[Mapping[str, Any]], str]
) -> list[str]:
    """The summary of a job on requests: the requests read, the valid ones and the dead
    letters; the job's ``totals``; then per request its id, its kind of subject and its
    ``outcome``."""
    counts = report["counts"]
    dead = ", ".join(f"{k}={v}" for k, v in counts["dead_lettered"].items()) or "none"
    return [
        f"[{job}] requests read={counts['requests_read']} valid={counts['requests_valid']} "
        f"dead letters: {dead}",
        f"[{job}] {totals}",
        *(
            f"[{job}] {r['request_id']} ({r['subject_field']}): {outcome(r)}"
            for r in report["requests"]
        ),
    ]


def subject_scan(config: SubjectJobConfig, mode: str, **options: Any) -> SubjectScan:
    """The scan of a job's configuration in ``mode``. Rejected requests are dead letters
    readable in their id and time only: every subject kind is masked, so that a rejected
    request never copies its identifier."""
    run = config.run
    return SubjectScan(
        policy=run.policy,
        requests=run.input,
        context=dead_letter_context(
            run, ["request_id", "received_at", *MASKED], masked=MASKED, id_field="request_id"
        ),
        mode=mode,
        run_token=f"{run.pipeline[:2]}{run.run_id[:6]}",  # er..., ac...
        files=config.files,
        link_files=config.link_files,
        root=config.root,
        txn_rel_dir=config.txn.rel_dir,
        bounds=run.bounds,
        max_line_bytes=run.max_line_bytes,
        **options,
    )


def scan_files(
    root: str, policy: Policy
) -> tuple[tuple[dict[str, str], ...], tuple[dict[str, str], ...], tuple[str, ...]]:
    """Every file of the layout to scan, the ones the policy's links start from, and the
    files of the layout that are no data (listed in the audit as not scanned)."""
    files = list_layout(root)
    scanned = tuple(f.element() for f in files if f.format)
    sources = link_source_categories(policy)
    link_files = tuple(f for f in scanned if f["kind"] == DATA and f.get("category") in sources)
    return scanned, link_files, tuple(f.rel for f in files if not f.format)


def with_files(config: Config) -> Config:
    """``config`` with the files to scan, listed now (call it holding the lock)."""
    files, link_files, unscanned = scan_files(config.root, config.run.policy)
    return dataclasses.replace(config, files=files, link_files=link_files, unscanned=unscanned)

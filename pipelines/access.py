"""Access requests (GDPR Art. 15): export everything held about each data subject.

    python -m pipelines.access --output DIR --requests GLOB --export EXPORT_DIR
                               [--run_time ISO-8601]

Requests are those of ``pipelines.erase``, in the same format (JSON Lines, one subject each by
``user_id``, optionally narrowed with ``sdk_app_id``, ``uin``, ``sdk_app_id``,
``business_email``, ``business_phone``, ``linkedin_url`` or ``ip``)::

    {"request_id": "DSR-7", "received_at": "2026-12-19T09:00:00Z", "ip": "94.46.41.248"}

For each request the job writes ``EXPORT_DIR/<request_id>/``: ``summary.json`` (the categories
held, each with its purposes, legal basis, retention in words, source, recipients and row count;
or that nothing is held), ``records.json`` (every row, with the category, purposes, legal basis,
retention rule and expiry it carries, and the subject's dead letters) and one CSV per category
(``transforms.retention.export``). The rows are found by the erasure's own scan
(``transforms.retention.erasure.FindSubjects`` in ``export`` mode: the policy's subject
declarations, links and dead letters), so a request exports exactly the rows ``pipelines.erase``
would remove for it.

    ReadRequests -> ParseRequests -> UniqueIds -+-> CollectLinks (the links' source categories)
                        |              |        |          |
                        +--------------+---> DeadLetters   +-> ScanFiles (every file, export mode)
                                                                   |
                                          staged rows -> exports on the local disk, audit

The exports hold personal data: they are written on the local disk only, directories 0700 and
files 0600, and ``--export`` may be neither inside the output root nor hold it. A request id
names a directory, so it must be a plain name (letters, digits, ``.``, ``_``, ``-``; a
``malformed_field:request_id`` dead letter otherwise), and one id naming two subjects is a
``conflicting_request_id`` dead letter (an export must never mix two people's data).

The job reads the data and changes none of it, but it takes the output root's retention lock
like the jobs that rewrite it: a purge, lifecycle or erase run moving or rewriting files while it
reads could make a row appear twice or not at all in an export, and it first finishes what a
killed retention run left (so an erasure that was committed is not undone by an export). Its
own writes to the root are the dead letters of rejected requests and the audit
``_reports/access-<run_id>.json``: counts per request and category, never a value.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions

from pipelines.launch import cli_main, require_writable_output
from pipelines.staged_job import staged_pipeline
from pipelines.subject_jobs import (
    SubjectJobConfig,
    SubjectRequestOptions,
    config_from,
    request_counts,
    request_summary,
    subject_scan,
    summary_lines,
    with_files,
)
from transforms.retention.erasure import FindSubjects
from transforms.retention.export import DIR_MODE, write_export
from transforms.retention.jsonio import write_json
from transforms.retention.layout import is_local
from transforms.retention.txn import sorted_actions, stage_plan

__all__ = [
    "AccessConfig",
    "AccessOptions",
    "ExportSubjects",
    "access_config",
    "check_export_dir",
    "main",
    "run",
    "summary",
]


class AccessOptions(PipelineOptions):
    """``--export``; ``--requests`` is the erasure's (``SubjectRequestOptions``), ``--output``,
    ``--policy`` and ``--run_time`` are the common options."""

    @classmethod
    def _add_argparse_args(cls, parser) -> None:
        parser.add_argument(
            "--export",
            default=None,
            help="Local directory the exports are written to, one EXPORT_DIR/<request_id>/ per "
            "request (created owner-only: directories 0700, files 0600); not inside --output.",
        )


@dataclass(frozen=True)
class AccessConfig(SubjectJobConfig):
    export: Path = Path()  # --export, checked (check_export_dir)


def check_export_dir(export: str | None, root: str) -> Path:
    """``--export``, checked before any data is read: a local directory (or one that can be
    created) that is neither inside the output root nor holds it, and can be written."""
    if not export:
        raise ValueError("--export is required (a local directory for the exports)")
    if not is_local(export) or "://" in export:
        raise ValueError(
            f"--export {export}: must be a local directory (owner-only permissions cannot be "
            "set on an object store)"
        )
    require_writable_output(export, "--export")
    path = Path(export).expanduser().resolve()
    if is_local(root):
        output = Path(root).resolve()
        if path == output or output in path.parents:
            raise ValueError(
                f"--export {export} is inside the output root {root}: the exports would be "
                "kept with the data, outside its retention schedule; write them elsewhere"
            )
        if path in output.parents:
            raise ValueError(
                f"--export {export} holds the output root {root}: an export named like it "
                "would replace it; write the exports elsewhere"
            )
    return path


def access_config(options: PipelineOptions) -> AccessConfig:
    """Resolve and validate everything before any data is read."""
    job = config_from(options, "access")
    export = check_export_dir(options.view_as(AccessOptions).export, job.root)
    return AccessConfig(run=job.run, root=job.root, txn=job.txn, export=export)


def _write_plan(_: object, found: list, added: list, requests: list, path: str) -> None:
    write_json(
        path,
        {
            "found": sorted(found, key=lambda f: f["target"]),
            "actions": sorted_actions(added),
            # the requests as the export needs them: their values stay in the Beam job
            "requests": sorted(
                (
                    {
                        "request_id": r["request_id"],
                        "received_at": r["received_at"],
                        "field": r["field"],
                        "scope": bool(r["scope"]),
                    }
                    for r in requests
                ),
                key=lambda r: r["request_id"],
            ),
        },
    )


class ExportSubjects(beam.PTransform):
    """Requests -> every row of their subjects staged under the transaction, the dead letters
    of the rejected ones, and the plan (``found``, ``actions``, ``requests``)."""

    def __init__(self, config: AccessConfig) -> None:
        super().__init__()
        self._config = config

    def expand(self, pbegin):
        found = pbegin | "FindSubjects" >> FindSubjects(
            subject_scan(self._config, "export", job="access", unique_ids=True)
        )
        _ = stage_plan(
            pbegin,
            self._config.txn,
            _write_plan,
            beam.pvalue.AsList(found["found"]),
            beam.pvalue.AsList(found["added"]),
            beam.pvalue.AsList(found["requests"]),
        )


def _audit(
    config: AccessConfig,
    counters: Mapping[str, int],
    plan: Mapping[str, Any],
    exports: Mapping[str, Mapping[str, Any]],
) -> dict[str, Any]:
    """Counts only: per request its kind of subject, and how many rows of which category and
    how many dead letters its export holds; never a value."""
    found = plan["found"]
    return {
        **config.run.header(),
        "requests_input": config.run.input,
        "export_dir": str(config.export),
        "counts": {
            **request_counts("access", counters),
            "requests_exported": len(exports),
            "files_scanned": len(config.files),
            "files_with_rows": len({f["target"] for f in found}),
            "rows_exported": sum(e["rows_total"] for e in exports.values()),
            "dead_letters_exported": sum(e["dead_letters"] for e in exports.values()),
        },
        "requests": [
            {
                **request_summary(r),
                "export": r["request_id"],
                "data_held": exports[r["request_id"]]["data_held"],
                "rows": exports[r["request_id"]]["rows"],
                "rows_total": exports[r["request_id"]]["rows_total"],
                "dead_letters": exports[r["request_id"]]["dead_letters"],
            }
            for r in plan["requests"]
        ],
        "files": {
            "added": [a["target"] for a in plan["actions"]],
            "not_scanned": list(config.unscanned),
        },
    }


def run(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Export what is held about the subject of each request of ``--requests``; returns the
    audit (plus its path)."""
    options = PipelineOptions(list(argv or []))
    with staged_pipeline(
        options, access_config(options), "access", with_files, ExportSubjects
    ) as job:
        config, plan = job.config, job.plan
        if not config.export.exists():
            config.export.parent.mkdir(parents=True, exist_ok=True)
            config.export.mkdir(mode=DIR_MODE)
            config.export.chmod(DIR_MODE)
        exports = {
            request["request_id"]: write_export(
                config.export,
                config.root,
                request,
                plan["found"],
                config.run.policy,
                generated_at=config.run.run_time,
                run_id=config.run.run_id,
            )
            for request in plan["requests"]
        }
        audit = job.commit(plan["actions"], _audit(config, job.counters, plan, exports))
        return job.report(audit)


def _count(n: int, one: str, many: str | None = None) -> str:
    return f"{n} {one if n == 1 else many or one + 's'}"


def _held(request: Mapping[str, Any]) -> str:
    if not request["data_held"]:
        return "nothing held"
    return (
        f"{_count(request['rows_total'], 'row')} in "
        f"{_count(len(request['rows']), 'category', 'categories')}, "
        f"{_count(request['dead_letters'], 'dead letter')}"
    )


def summary(report: Mapping[str, Any]) -> list[str]:
    counts = report["counts"]
    return summary_lines(
        "access",
        report,
        f"exported {counts['requests_exported']} requests to {report['export_dir']}: "
        f"{counts['rows_exported']} rows and {counts['dead_letters_exported']} dead letters, "
        f"from {counts['files_with_rows']} of {counts['files_scanned']} files scanned",
        _held,
    )


def main(argv: Sequence[str] | None = None) -> None:
    cli_main(run, argv, summary=summary, options=[SubjectRequestOptions, AccessOptions])


if __name__ == "__main__":
    main()

"""Erasure requests: remove every row of a data subject, then prove none is left.

    python -m pipelines.erase --output DIR --requests GLOB [--run_time ISO-8601]

Requests are JSON Lines, one per line, naming the subject by exactly one of ``user_id``,
``uin``, ``sdk_app_id`` (a whole application), ``business_email``, ``business_phone``,
``linkedin_url`` or ``ip`` (a ``user_id`` may be narrowed to one application with
``sdk_app_id``)::

    {"request_id": "DSR-1", "received_at": "2026-11-28T09:00:00Z", "business_email": "a@b.c"}
    {"request_id": "DSR-2", "received_at": "2026-11-28T09:05:00Z", "user_id": "u-7",
     "sdk_app_id": 1400000001}
    {"request_id": "DSR-3", "received_at": "2026-11-28T09:06:00Z", "sdk_app_id": 1400000002}
    {"request_id": "DSR-4", "received_at": "2026-11-28T09:07:00Z",
     "business_phone": "+1 415 555 2671"}

A subject's rows are found in the fields the policy declares of its kind (``subjects.fields``),
and values are compared normalised on both sides (``transforms.retention.matching``: e-mails
case-insensitively, phone numbers in E.164, which needs the country code, LinkedIn URLs as their
profile path, an IPv4 address and its IPv4-mapped form as one). Every category and the dead
letters are scanned (Parquet files for the identifying columns only); a file is rewritten only
if it holds a row of a subject: the file minus those rows is staged with the file's own schema
and codec and replaces it in one committed transaction (a file left empty is deleted), so every
other row stays identical. Rows reached through the subject's own rows are erased too, as the
policy's ``subjects.links`` say: the corporate visitor information of an IP's visits, and the
temporary keys and application logs of an account's applications, wherever a stored row ties
them to the account (``transforms.retention.subjects``). ``pipelines.access`` exports exactly
the rows this job removes: the same scan (``transforms.retention.erasure.FindSubjects``).

    ReadRequests -> ParseRequests -+-> CollectLinks (website_visit, every uin/sdk_app_id category)
                        |          |          |
                   DeadLetters     +-> ScanFiles (every file, requests + links as side inputs)
                                                 |
                                      staged rewrites + actions -> commit -> apply -> Verify

After the apply, a second Beam job (``Verify``) reads every file back and counts the rows still
matching any request; the audit ``_reports/erase-<run_id>.json`` holds, per request, the rows
erased by category, the dead letters erased, the files rewritten or deleted and the verified
count (0). The audit names the subject's field, never its value. A malformed request becomes a
dead letter with its reason, its identifier masked. If anything still matches, the job fails.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import PipelineOptions

from pipelines.launch import RunContext, cli_main
from pipelines.staged_job import staged_pipeline
from pipelines.subject_jobs import (
    SubjectJobConfig,
    SubjectRequestOptions,
    config_from,
    request_counts,
    request_summary,
    scan_files,
    subject_scan,
    summary_lines,
    with_files,
)
from transforms.commit import pending_runs, staged_files
from transforms.read import ReadRecords
from transforms.retention.erasure import FindSubjects, ScanFileFn
from transforms.retention.jsonio import read_json, write_json
from transforms.retention.layout import DATA, has_partition_files
from transforms.retention.subjects import ParseRequestFn
from transforms.retention.txn import sorted_actions, stage_plan

__all__ = [
    "EraseSubjects",
    "ReadBack",
    "VerifyErasure",
    "main",
    "run",
    "summary",
]


def _write_plan(_: object, actions: list, links: dict, requests: list, path: str) -> None:
    write_json(
        path,
        {
            "actions": sorted_actions(actions),
            "links": links,
            "requests": sorted(
                (request_summary(r) for r in requests), key=lambda r: r["request_id"]
            ),
        },
    )


def _write_found(_: object, found: list, files_read: int, path: str) -> None:
    write_json(path, {"found": sorted(found, key=lambda f: f["target"]), "files_read": files_read})


class EraseSubjects(beam.PTransform):
    """Requests -> staged rewrites of every file holding a subject's rows, and the plan."""

    def __init__(self, config: SubjectJobConfig) -> None:
        super().__init__()
        self._config = config

    def expand(self, pbegin):
        found = pbegin | "FindSubjects" >> FindSubjects(subject_scan(self._config, "erase"))
        actions = (found["found"], found["added"]) | "Actions" >> beam.Flatten()
        _ = stage_plan(
            pbegin,
            self._config.txn,
            _write_plan,
            beam.pvalue.AsList(actions),
            beam.pvalue.AsSingleton(found["links"]),
            beam.pvalue.AsList(found["requests"]),
        )


class VerifyErasure(beam.PTransform):
    """Read every file back: the rows still matching a request (there must be none)."""

    def __init__(
        self,
        run: RunContext,
        links: Mapping[str, Any],
        files: Sequence[dict],
        path: str,
    ) -> None:
        super().__init__()
        self._run = run
        self._links = dict(links)
        self._files = list(files)
        self._path = path

    def expand(self, pbegin):
        requests = (
            pbegin
            | "ReadRequests"
            >> ReadRecords(self._run.input, "jsonl", max_line_bytes=self._run.max_line_bytes)
            | "ParseRequests" >> beam.ParDo(ParseRequestFn(None, self._run.bounds))
        )
        links = pbegin | "Links" >> beam.Create([self._links])
        files = pbegin | "Files" >> beam.Create(self._files)
        # How many files the read-back covered, as data (not a metric: every runner has it).
        files_read = files | "CountFiles" >> beam.combiners.Count.Globally()
        found = files | "CountMatches" >> beam.ParDo(
            ScanFileFn(self._run.policy, "verify"),
            beam.pvalue.AsList(requests),
            beam.pvalue.AsSingleton(links),
        )
        _ = (
            pbegin
            | "Once" >> beam.Create([None])
            | "WriteFound"
            >> beam.Map(
                _write_found,
                beam.pvalue.AsList(found),
                beam.pvalue.AsSingleton(files_read),
                self._path,
            )
        )


def _per_request(
    requests: Sequence[Mapping[str, Any]],
    actions: Sequence[Mapping[str, Any]],
    found: Sequence[Mapping[str, Any]],
    complete: bool,
) -> list[dict[str, Any]]:
    """One audit record per request: what was erased where, and what the read-back found."""
    records = []
    for request in requests:
        request_id = request["request_id"]
        rows: dict[str, int] = {}
        letters = 0
        files = []
        for action in actions:
            n = (action.get("requests") or {}).get(request_id, 0)
            if not n:
                continue
            files.append({"file": action["target"], "op": action["op"], "rows": n})
            if action["kind"] == DATA:
                rows[action["name"]] = rows.get(action["name"], 0) + n
            else:
                letters += n
        remaining = sum((f.get("requests") or {}).get(request_id, 0) for f in found)
        records.append(
            {
                **request,
                "rows_erased": dict(sorted(rows.items())),
                "rows_erased_total": sum(rows.values()),
                "dead_letters_erased": letters,
                "files": files,
                "verification": {
                    "rows_still_matching": remaining,
                    "verified": remaining == 0 and complete,
                },
            }
        )
    return records


@dataclass(frozen=True)
class ReadBack:
    """What the verification read: the files listed after the apply, the files the read-back
    covered, and whether the layout has files by a probe independent of the listing."""

    files_listed: int
    files_read: int
    layout_has_files: bool
    # Ingestion runs still writing under the root (transforms.commit): their staged files are
    # read back too, but their spilled temp files cannot be, and they commit later.
    pending_runs: tuple[str, ...] = ()

    @property
    def complete(self) -> bool:
        """Every listed file was read back, an empty listing is an empty layout (not a root the
        listing misread, as ``out[x]`` once was), and no run's staging is pending."""
        return (
            self.files_read == self.files_listed
            and (self.files_listed > 0 or not self.layout_has_files)
            and not self.pending_runs
        )


def _audit(
    config: SubjectJobConfig,
    counters: Mapping[str, int],
    plan: Mapping[str, Any],
    found: Sequence[Mapping[str, Any]] | None,
    read_back: ReadBack | None = None,
) -> dict[str, Any]:
    run = config.run
    actions = [a for a in plan["actions"] if a["op"] != "add"]
    remaining = None if found is None else sum(f["rows_removed"] for f in found)
    complete = read_back is not None and read_back.complete
    return {
        **run.header(),
        "requests_input": run.input,
        "counts": {
            **request_counts("erase", counters),
            "files_scanned": len(config.files),
            "files_rewritten": sum(1 for a in actions if a["op"] == "replace"),
            "files_deleted": sum(1 for a in actions if a["op"] == "delete"),
            "rows_erased": sum(a["rows_removed"] for a in actions if a["kind"] == DATA),
            "dead_letters_erased": sum(a["rows_removed"] for a in actions if a["kind"] != DATA),
        },
        "requests": _per_request(plan["requests"], actions, found or [], complete),
        "files": {
            "rewritten": [a["target"] for a in actions if a["op"] == "replace"],
            "deleted": [a["target"] for a in actions if a["op"] == "delete"],
            "added": [a["target"] for a in plan["actions"] if a["op"] == "add"],
            "not_scanned": list(config.unscanned),
        },
        "verification": None
        if found is None
        else {
            "rows_still_matching": remaining,
            "files_still_matching": [f["target"] for f in found],
            "files_listed": read_back.files_listed if read_back else None,
            "files_read_back": read_back.files_read if read_back else None,
            "pending_runs": list(read_back.pending_runs) if read_back else None,
            "verified": remaining == 0 and complete,
        },
    }


def run(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Apply the erasure requests of ``--requests``; returns the audit (plus its path).

    The audit carries ``error`` when the read-back still finds a row of a subject."""
    options = PipelineOptions(list(argv or []))
    with staged_pipeline(
        options, config_from(options, "erase"), "erase", with_files, EraseSubjects
    ) as job:
        config, counters, plan = job.config, job.counters, job.plan
        audit = job.commit(plan["actions"], _audit(config, counters, plan, None))
        files, _, _ = scan_files(config.root, config.run.policy)
        # Staging is data: the files of runs still being written are read back too.
        pending = tuple(pending_runs(config.root))
        files += tuple(f.element() for f in staged_files(config.root) if f.format)
        verify_path = FileSystems.join(config.txn.dir, "verify.json")
        check = beam.Pipeline(options=options)
        _ = check | "Verify" >> VerifyErasure(config.run, plan["links"], files, verify_path)
        check.run().wait_until_finish()
        verify = read_json(verify_path)
        found = verify["found"]
        read_back = ReadBack(
            files_listed=len(files),
            files_read=verify["files_read"],
            layout_has_files=has_partition_files(config.root),
            pending_runs=pending,
        )
        report = job.report(
            {
                **audit,
                **{
                    k: v
                    for k, v in _audit(config, counters, plan, found, read_back).items()
                    if k in ("requests", "verification")
                },
            }
        )
    verification = report["verification"]
    if verification["rows_still_matching"]:
        report["error"] = (
            f"{verification['rows_still_matching']} rows still match an erasure "
            f"request after the rewrite, in {verification['files_still_matching'][:5]}"
        )
    elif verification["pending_runs"]:
        report["error"] = (
            f"ingestion runs are still writing under {config.root} "
            f"({', '.join(verification['pending_runs'][:5])}): what they stage is not verified; "
            "run erase again once they have committed"
        )
    elif not verification["verified"]:
        report["error"] = (
            f"the read-back covered {verification['files_read_back']} of "
            f"{verification['files_listed']} files listed under {config.root}"
            + (
                " although its partitions hold files: the listing missed them"
                if not verification["files_listed"]
                else ""
            )
            + "; nothing is verified"
        )
    return report


def _erased(request: Mapping[str, Any]) -> str:
    return (
        f"{request['rows_erased_total']} rows, {request['dead_letters_erased']} dead letters,"
        f" {len(request['files'])} files; remaining after read-back: "
        f"{request['verification']['rows_still_matching']}"
    )


def summary(report: Mapping[str, Any]) -> list[str]:
    counts = report["counts"]
    verification = report["verification"]
    return [
        *summary_lines(
            "erase",
            report,
            f"erased {counts['rows_erased']} rows and {counts['dead_letters_erased']} dead "
            f"letters: {counts['files_rewritten']} files rewritten, {counts['files_deleted']} "
            f"deleted, of {counts['files_scanned']} scanned",
            _erased,
        ),
        f"[erase] verification: {verification['rows_still_matching']} rows still match "
        f"({'verified' if verification['verified'] else 'NOT VERIFIED'})",
    ]


def main(argv: Sequence[str] | None = None) -> None:
    cli_main(run, argv, summary=summary, options=[SubjectRequestOptions])


if __name__ == "__main__":
    main()

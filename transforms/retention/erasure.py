"""The scan for data subjects' rows, file by file: erase them, count them, or export them.

Which rows belong to which request is :mod:`transforms.retention.subjects` (the policy's
``subjects`` declarations: every category, the links, the dead letters). :class:`ScanFileFn`
reads one file of the layout and applies it; ``pipelines.erase`` and ``pipelines.access`` run
the same scan over the same files with the same requests and links, so the rows an access
request exports are exactly the rows the same erasure request removes.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import apache_beam as beam

from schemas.policy import Policy
from transforms.counters import counter
from transforms.deadletter import DeadLetterContext, ParDoWithDeadLetters
from transforms.rawinput import DEFAULT_MAX_LINE_BYTES
from transforms.read import ReadRecords
from transforms.retention.files import TableFile, read_lines, read_parquet, write_lines
from transforms.retention.layout import full_path
from transforms.retention.subjects import (
    CachedSubjects,
    CollectLinksFn,
    IndexLinks,
    Links,
    ParseRequestFn,
)
from transforms.retention.txn import added_action
from transforms.sinks import WriteDeadLetters
from transforms.timestamps import TimeBounds

__all__ = ["MODES", "FindSubjects", "ScanFileFn", "SubjectScan", "UniqueRequestsFn", "jsonable"]

MODES = ("erase", "verify", "export")


def jsonable(value: Any) -> Any:
    """A stored value as JSON can hold it: timestamps in ISO-8601 UTC (``...Z``, microseconds
    only when non-zero, as every report writes them; a naive one is UTC, as the pipelines write
    them), dates in ISO, bytes in base64, decimals as text."""
    if isinstance(value, dt.datetime):
        if value.tzinfo is not None:
            value = value.astimezone(dt.UTC).replace(tzinfo=None)
        return value.isoformat() + "Z"
    if isinstance(value, dt.date):
        return value.isoformat()
    if isinstance(value, bytes):
        return base64.b64encode(value).decode("ascii")
    if isinstance(value, Decimal):
        return str(value)
    raise TypeError(f"cannot export a {type(value).__name__}")


def _letter(line: bytes) -> Any:
    """A dead-letter line as exported: the letter's JSON, or its text if it is not JSON."""
    text = line.decode("utf-8", errors="replace")
    try:
        return json.loads(text)
    except ValueError:
        return text


class ScanFileFn(beam.DoFn):
    """One file of the layout -> its rows of the requested subjects.

    ``mode="erase"``: the file minus those rows is staged under the transaction (same relative
    path, own schema and codec) and an action ``replace`` (rows remain) or ``delete`` (none
    remain) is emitted with the rows per request. ``mode="verify"``: only the count of rows
    still matching is emitted. ``mode="export"``: the rows themselves (timestamps in ISO-8601)
    or dead letters, each with its requests, are staged as JSON Lines under
    ``<txn>/found/<file>.jsonl`` and the file's counts are emitted with that path. A file
    without any match yields nothing and is never rewritten. Parquet files are first read for
    the matching columns only.
    """

    def __init__(self, policy: Policy, mode: str, root: str = "", txn_rel_dir: str = "") -> None:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        self._policy = policy
        self._mode = mode
        self._root = root
        self._txn_rel_dir = txn_rel_dir

    def setup(self) -> None:
        self._subjects = CachedSubjects(self._policy)

    def process(self, file: Mapping[str, str], requests: list, links: Links) -> Iterator[Any]:
        subjects = self._subjects(requests, links)
        if not subjects:
            return
        content: TableFile | None = None
        lines: list[bytes] = []
        if file["format"] == "jsonl":
            lines = read_lines(file["path"])
            hits = {}
            for i, line in enumerate(lines):
                ids = subjects.dead_letter_requests(line)
                if ids:
                    hits[i] = ids
            total = len(lines)
        else:
            category = file.get("category")
            if not subjects.index_for(category):
                return  # nothing this category declares is asked for: read nothing
            columns = subjects.columns_for(category)
            if file["format"] == "parquet":
                table = read_parquet(file["path"], columns)
            else:
                content = TableFile(file["path"], file["format"])
                table = content.columns(columns)
            hits = subjects.rows(category, table)
            total = table.num_rows
        if not hits:
            return
        per_request: dict[str, int] = {}
        for ids in hits.values():
            for request_id in ids:
                per_request[request_id] = per_request.get(request_id, 0) + 1
        kind = "dead_letter" if file["format"] == "jsonl" else "data"
        result: dict[str, Any] = {
            "target": file["rel"],
            "kind": kind,
            "name": file.get("category") or file.get("source"),
            "format": file["format"],
            "rows_before": total,
            "rows_removed": len(hits),
            "requests": per_request,
        }
        if self._mode == "verify":
            counter("erase.verify.rows_matching").inc(len(hits))
            yield result
            return
        if self._mode == "export":
            counter(f"access.rows_found.{result['name']}").inc(len(hits))
            yield {**result, "staged": self._stage_found(file, hits, lines, content)}
            return
        counter(f"erase.rows_removed.{result['name']}").inc(len(hits))
        if len(hits) == total:
            result.update(op="delete", rows_kept=0)
            yield result
            return
        staged = f"{self._txn_rel_dir}/staged/{file['rel']}"
        if file["format"] == "jsonl":
            kept = [line for i, line in enumerate(lines) if i not in hits]
            write_lines(full_path(self._root, staged), kept)
            rows_kept = len(kept)
        else:
            content = content or TableFile(file["path"], file["format"])
            rows_kept = content.write_without(full_path(self._root, staged), set(hits))
        result.update(op="replace", staged=staged, rows_kept=rows_kept)
        yield result

    def _stage_found(
        self,
        file: Mapping[str, str],
        hits: Mapping[int, set[str]],
        lines: list[bytes],
        content: TableFile | None,
    ) -> str:
        """Stage the rows found, in file order, each with its requests; returns the path."""
        rows = sorted(hits)
        if file["format"] == "jsonl":
            found = [{"letter": _letter(lines[i])} for i in rows]
        else:
            content = content or TableFile(file["path"], file["format"])
            found = [{"row": record} for record in content.records(rows)]
        staged = f"{self._txn_rel_dir}/found/{file['rel']}.jsonl"
        write_lines(
            full_path(self._root, staged),
            [
                json.dumps({**item, "requests": sorted(hits[row])}, default=jsonable).encode()
                for row, item in zip(rows, found, strict=True)
            ],
        )
        return staged


@beam.typehints.with_output_types(Any, dead_letter=Any)
class UniqueRequestsFn(beam.DoFn):
    """``(request id, its requests)`` -> the request; when one id names different subjects,
    every line of it is a dead letter ``conflicting_request_id`` instead: what is written
    under a request id (an access export) must never mix two people's data. The same request
    sent twice is one request."""

    def __init__(self, context: DeadLetterContext) -> None:
        self._context = context

    def setup(self) -> None:
        self._masker = self._context.masker()

    def process(self, element: tuple[str, Any]) -> Iterator[Any]:
        _, requests = element
        requests = list(requests)
        if len({(r["field"], r["value"], r["scope"]) for r in requests}) == 1:
            first = min(requests, key=lambda r: (r["received_at"], r["line"]))
            yield {k: v for k, v in first.items() if k != "line"}
            return
        counter("access.requests_conflicting").inc(len(requests))
        for request in requests:
            yield self._context.rejected(
                stage="requests",
                error="conflicting_request_id",
                raw=request["line"],
                masker=self._masker,
            )


@dataclass(frozen=True)
class SubjectScan:
    """What :class:`FindSubjects` reads, and how it scans (:class:`ScanFileFn`'s ``mode``)."""

    policy: Policy
    requests: str  # the requests' file pattern
    context: DeadLetterContext  # of rejected requests
    mode: str
    files: Sequence[Mapping[str, str]]  # every file of the layout
    link_files: Sequence[Mapping[str, str]]  # the files of the links' source categories
    root: str
    txn_rel_dir: str
    bounds: TimeBounds | None = None
    max_line_bytes: int = DEFAULT_MAX_LINE_BYTES
    job: str = "erase"
    unique_ids: bool = False  # request ids name exports: safe names, one subject each
    run_token: str = ""  # names the dead-letter files of rejected requests


class FindSubjects(beam.PTransform):
    """Requests -> every file's rows of their subjects, as :class:`ScanFileFn` yields them.

    The one Beam graph of ``pipelines.erase`` and ``pipelines.access``: read and parse the
    requests (rejected ones are dead letters), follow the policy's links from the files of
    their source categories, then scan every file with the requests and the links as side
    inputs. The dead letters of rejected requests are staged under the transaction. Applied to
    the pipeline root, it returns ``{"requests", "links", "found", "added"}`` (``added``: the
    ``add`` actions of those dead letters).
    """

    def __init__(self, scan: SubjectScan) -> None:
        super().__init__()
        self._scan = scan

    def expand(self, pbegin):
        s = self._scan
        raw = pbegin | "ReadRequests" >> ReadRecords(
            s.requests, "jsonl", max_line_bytes=s.max_line_bytes
        )
        parse = ParseRequestFn(
            s.context, s.bounds, job=s.job, safe_id=s.unique_ids, keep_line=s.unique_ids
        )
        requests, dead = raw | "ParseRequests" >> ParDoWithDeadLetters(parse, "parse", s.context)
        if s.unique_ids:
            requests, conflicting = (
                requests
                | "ById" >> beam.Map(lambda r: (r["request_id"], r))
                | "GroupById" >> beam.GroupByKey()
                | "UniqueIds"
                >> ParDoWithDeadLetters(UniqueRequestsFn(s.context), "requests", s.context)
            )
            dead = (*dead, *conflicting)
        as_list = beam.pvalue.AsList(requests)
        links = (
            pbegin
            | "LinkSourceFiles" >> beam.Create(list(s.link_files))
            | "CollectLinks" >> beam.ParDo(CollectLinksFn(s.policy), as_list)
            | "IndexLinks" >> beam.CombineGlobally(IndexLinks())
        )
        found = (
            pbegin
            | "Files" >> beam.Create(list(s.files))
            | "ScanFiles"
            >> beam.ParDo(
                ScanFileFn(s.policy, s.mode, s.root, s.txn_rel_dir),
                as_list,
                beam.pvalue.AsSingleton(links),
            )
        )
        staged = full_path(s.root, f"{s.txn_rel_dir}/staged")
        letters = dead | "WriteDeadLetters" >> WriteDeadLetters(staged, run_token=s.run_token)
        added = letters | "AddActions" >> beam.Map(added_action, staged, s.txn_rel_dir)
        return {"requests": requests, "links": links, "found": found, "added": added}

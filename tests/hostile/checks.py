"""What the hostile tests read back from an output root, and the invariants of contract v2.

- :func:`collect` reads a run's report, its primary rows (pyarrow) and its dead letters;
- :func:`account_for` says, line by line, whether every input line ended in exactly one place
  that it may end in (a row, a dead letter with an allowed reason, or expired on arrival);
- :func:`reconciliation_problems` holds the report to the line count and to the files;
- :func:`canary_hits` searches every file (bytes, and Parquet/Avro/JSON decoded) for canaries;
- :func:`leftovers` lists what is under the root outside the output layout (spills, ``.temp-*``).
"""

from __future__ import annotations

import collections
import contextlib
import gzip
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import fastavro
import pyarrow as pa
import pyarrow.parquet as pq

from tests.hostile.corpus import DEAD, EXPIRED, ROW, Line, Source

__all__ = [
    "Collected",
    "account_for",
    "canary_hits",
    "collect",
    "expired_on_arrival",
    "leftovers",
    "reconciliation_problems",
]


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def strict_json(text: str) -> Any:
    """``json.loads`` that refuses NaN and Infinity (not JSON: other readers choke on them)."""
    return json.loads(text, parse_constant=_reject_constant)


def expired_on_arrival(report: Mapping[str, Any]) -> int:
    """The report's ``expired_on_arrival`` count, wherever it keeps it (reconciliation, counts,
    the top level, per category or in total); 0 while no report has it."""
    for holder in (report.get("reconciliation"), report.get("counts"), report):
        if isinstance(holder, Mapping) and "expired_on_arrival" in holder:
            value = holder["expired_on_arrival"]
            if isinstance(value, Mapping):
                return sum(int(v) for v in value.values())
            return int(value)
    return 0


@dataclass
class Collected:
    """What a run left: report, rows by id, anonymous valid lines, dead letters."""

    report: dict[str, Any] | None
    rows_by_id: collections.Counter = field(default_factory=collections.Counter)
    anonymous_rows: int = 0  # valid lines without an id (lifecycle events)
    letters: list[dict[str, Any]] = field(default_factory=list)
    letter_problems: list[str] = field(default_factory=list)  # lines that are not strict JSON
    rows: list[dict[str, Any]] = field(default_factory=list)

    @property
    def expired(self) -> int:
        return expired_on_arrival(self.report) if self.report else 0


def read_report(out: Path, prefix: str) -> dict[str, Any] | None:
    paths = sorted(out.glob(f"_reports/{prefix}-*.json"), key=lambda p: p.stat().st_mtime)
    return json.loads(paths[-1].read_text()) if paths else None


def read_dead_letters(out: Path, source: str) -> tuple[list[dict[str, Any]], list[str]]:
    """Every dead letter of ``source``, and what is wrong with the lines that are not one."""
    letters, problems = [], []
    for path in sorted(out.glob(f"_dead_letter/source={source}/*/*")):
        for number, raw in enumerate(path.read_bytes().split(b"\n"), 1):
            if not raw:
                continue
            where = f"{path.relative_to(out)}:{number}"
            try:
                letter = strict_json(raw.decode("utf-8"))
            except (UnicodeDecodeError, ValueError) as err:
                problems.append(f"{where}: not strict JSON ({err}): {raw[:160]!r}")
                letter = {"error": "<unreadable dead letter>"}
                with contextlib.suppress(ValueError):
                    letter = json.loads(raw.decode("utf-8", "replace"))
            if not isinstance(letter, dict) or not isinstance(letter.get("error"), str):
                problems.append(f"{where}: a dead letter without an error: {raw[:160]!r}")
                letter = {"error": "<no error>"}
            letters.append(letter)
    return letters, problems


def parquet_rows(path: Path) -> list[dict[str, Any]]:
    """A Parquet file's rows, timestamps as integers: a stored time outside the years 1-9999
    must be reported, not crash the reader (``datetime`` cannot hold it)."""
    table = pq.read_table(path)
    for i, column in enumerate(table.schema):
        if pa.types.is_timestamp(column.type):
            table = table.set_column(i, column.name, table.column(i).cast(pa.int64()))
    return table.to_pylist()


def _without_logical_types(schema: Any) -> Any:
    if isinstance(schema, dict):
        return {k: _without_logical_types(v) for k, v in schema.items() if k != "logicalType"}
    if isinstance(schema, list):
        return [_without_logical_types(s) for s in schema]
    return schema


def avro_rows(path: Path) -> list[dict[str, Any]]:
    """An Avro file's records, logical types read as their plain types (see parquet_rows)."""
    with path.open("rb") as fh:
        schema = _without_logical_types(fastavro.reader(fh).writer_schema)
    with path.open("rb") as fh:
        return list(fastavro.reader(fh, reader_schema=schema))


def read_rows(out: Path, categories: Sequence[str]) -> list[dict[str, Any]]:
    """The Parquet rows of ``categories``, with the partition they were found in."""
    rows = []
    for category in categories:
        for path in sorted(out.glob(f"data_category={category}/expiry_date=*/*.parquet")):
            expiry = path.parent.name.split("=", 1)[1]
            rows += [
                {**r, "dir_category": category, "dir_expiry": expiry} for r in parquet_rows(path)
            ]
    return rows


def collect(source: Source, out: Path) -> Collected:
    report = read_report(out, source.report)
    letters, problems = read_dead_letters(out, source.letters)
    got = Collected(report=report, letters=letters, letter_problems=problems)
    if source.name == "lifecycle":
        if report:
            got.anonymous_rows = sum(report["counts"]["events_valid"].values())
    elif source.name == "erase":
        if report:
            got.rows_by_id.update(str(r["request_id"]) for r in report.get("requests", []))
    else:
        got.rows = read_rows(out, source.primary)
        got.rows_by_id.update(str(r.get("event_id")) for r in got.rows)
    return got


# --------------------------------------------------------------------------- line accounting


def _letter_id(letter: Mapping[str, Any]) -> str | None:
    value = letter.get("event_id")
    return value if isinstance(value, str) else None


def reason_allowed(error: str, reasons: frozenset[str] | None) -> bool:
    """``error`` is one of ``reasons``; a reason without a field (``event_time_out_of_range``)
    also allows itself with one (``event_time_out_of_range:at``)."""
    return reasons is None or error in reasons or error.split(":", 1)[0] in reasons


def _allows_letter(line: Line, letter: Mapping[str, Any]) -> bool:
    return DEAD in line.outcomes and reason_allowed(letter["error"], line.reasons)


def account_for(lines: Sequence[Line], got: Collected) -> list[str]:
    """Problems with where the lines ended; empty when every line ended in exactly one place it
    may end in and nothing else was written.

    A line is first looked up by its ids (rows and dead letters carrying one); the lines found
    nowhere by id are then matched to the remaining rows, dead letters (by reason) and the
    ``expired_on_arrival`` count as a maximum bipartite matching, so that the order of the lines
    does not decide which line a reason is credited to.
    """
    problems: list[str] = []
    rows_left = collections.Counter(got.rows_by_id)
    letters_by_id: dict[str, list[int]] = collections.defaultdict(list)
    for i, letter in enumerate(got.letters):
        ident = _letter_id(letter)
        if ident is not None:
            letters_by_id[ident].append(i)
    taken: set[int] = set()
    pool: list[Line] = []
    for line in lines:
        rows = {i: rows_left[i] for i in line.ids if rows_left[i]}
        letters = [j for i in line.ids for j in letters_by_id.get(i, ()) if j not in taken]
        places = sum(rows.values()) + len(letters)
        if places == 0:
            pool.append(line)
            continue
        for i in rows:
            rows_left[i] = 0
        taken.update(letters)
        found = [f"row {i}" for i, n in rows.items() for _ in range(n)] + [
            f"dead letter {got.letters[j]['error']!r}" for j in letters
        ]
        if places > 1:
            problems.append(f"{line.name}: ended in {places} places ({', '.join(found)})")
        elif rows and ROW not in line.outcomes:
            problems.append(f"{line.name}: stored as a row; expected {line.expectation()}")
        elif letters and not _allows_letter(line, got.letters[letters[0]]):
            problems.append(
                f"{line.name}: dead letter {got.letters[letters[0]]['error']!r}; "
                f"expected {line.expectation()}"
            )

    # What no id claimed: right-hand nodes of the matching.
    nodes: list[tuple[str, Any]] = [
        ("letter", j) for j in range(len(got.letters)) if j not in taken
    ]
    unclaimed_rows = [i for i, n in rows_left.items() for _ in range(n)]
    nodes += [("row", i) for i in unclaimed_rows]
    nodes += [("row", None)] * got.anonymous_rows
    nodes += [("expired", None)] * got.expired

    def allowed(line: Line, node: tuple[str, Any]) -> bool:
        kind, ref = node
        if kind == "letter":
            return _allows_letter(line, got.letters[ref])
        if kind == "row":
            return ROW in line.outcomes
        return EXPIRED in line.outcomes

    edges = [[k for k, node in enumerate(nodes) if allowed(line, node)] for line in pool]
    match_of_node: dict[int, int] = {}

    def augment(u: int, seen: set[int]) -> bool:
        for k in edges[u]:
            if k in seen:
                continue
            seen.add(k)
            if k not in match_of_node or augment(match_of_node[k], seen):
                match_of_node[k] = u
                return True
        return False

    for u in range(len(pool)):
        augment(u, set())
    matched_lines = set(match_of_node.values())
    left_letters = collections.Counter(
        got.letters[ref]["error"]
        for k, (kind, ref) in enumerate(nodes)
        if kind == "letter" and k not in match_of_node
    )
    for u, line in enumerate(pool):
        if u not in matched_lines:
            ids = f" (looked up by id {list(line.ids)}: nothing)" if line.ids else ""
            problems.append(
                f"{line.name}: found nowhere; expected {line.expectation()}{ids}; "
                f"dead letters no line took: {dict(left_letters) or 'none'}"
            )
    for k, (kind, ref) in enumerate(nodes):
        if k in match_of_node:
            continue
        if kind == "letter":
            letter = got.letters[ref]
            problems.append(
                f"a dead letter no input line explains: error={letter['error']!r} "
                f"event_id={letter.get('event_id')!r}"
            )
        elif kind == "row":
            problems.append(f"a row no input line explains: event_id={ref!r}")
        else:
            problems.append("an expired_on_arrival count no input line explains")
    return problems


# ----------------------------------------------------------------------------- reconciliation


def reconciliation_problems(source: Source, got: Collected, lines: int) -> list[str]:
    """The report against the number of input lines and against the files written."""
    report = got.report
    if report is None:
        return [f"no report _reports/{source.report}-*.json was written"]
    problems = []
    dead_in_files = len(got.letters)
    if source.retention_job:
        counts = report["counts"]
        if source.name == "lifecycle":
            read, valid = counts.get("events_read"), sum(counts["events_valid"].values())
        else:
            read, valid = counts.get("requests_read"), counts.get("requests_valid")
        dead = sum(counts.get("dead_lettered", {}).values())
        if read != lines:
            problems.append(f"the report read {read} lines; the input has {lines}")
        if read != valid + dead:
            problems.append(f"read {read} != valid {valid} + dead letters {dead}")
        if dead != dead_in_files:
            problems.append(
                f"the report counts {dead} dead letters; the files hold {dead_in_files}"
            )
        return problems
    rec, counts = report["reconciliation"], report["counts"]
    expired = got.expired
    if counts["read"] != lines:
        problems.append(f"the report read {counts['read']} lines; the input has {lines}")
    if rec["read"] != rec["primary_written"] + rec["dead_lettered"] + expired:
        problems.append(
            f"read {rec['read']} != primary rows {rec['primary_written']} + dead letters "
            f"{rec['dead_lettered']} + expired_on_arrival {expired}"
        )
    if rec.get("reconciled") is not True:
        problems.append(f"reconciliation.reconciled is {rec.get('reconciled')!r}")
    if rec["primary_written"] != len(got.rows):
        problems.append(
            f"the report counts {rec['primary_written']} primary rows; the Parquet files hold "
            f"{len(got.rows)}"
        )
    if rec["dead_lettered"] != dead_in_files:
        problems.append(
            f"the report counts {rec['dead_lettered']} dead letters; the files hold {dead_in_files}"
        )
    return problems


# ------------------------------------------------------------------------ canaries, leftovers


def _decoded_views(path: Path, data: bytes) -> Iterable[str]:
    """Text views of a file besides its bytes: decoded rows, unescaped JSON, gunzipped."""
    name = path.name
    try:
        if name.endswith(".parquet"):
            yield json.dumps(parquet_rows(path), default=str, ensure_ascii=False)
        elif name.endswith(".avro"):
            yield json.dumps(avro_rows(path), default=str, ensure_ascii=False)
        elif data[:2] == b"\x1f\x8b":
            yield gzip.decompress(data).decode("utf-8", "replace")
    except Exception as err:  # a file we cannot decode is searched as bytes only
        yield f"<undecodable: {err}>"
    if name.endswith((".json", ".jsonl")):
        for raw in data.split(b"\n"):
            try:
                # unescape \uXXXX, then the raw text inside a dead letter once more
                value = json.loads(raw.decode("utf-8", "replace"))
            except ValueError:
                continue
            yield json.dumps(value, ensure_ascii=False)
            if isinstance(value, dict) and isinstance(value.get("raw"), str):
                with contextlib.suppress(ValueError):
                    yield json.dumps(json.loads(value["raw"]), ensure_ascii=False)


def canary_hits(root: Path, canaries: Iterable[str]) -> dict[str, list[str]]:
    """``{canary: [files holding it]}`` over every file under ``root`` (case-insensitive)."""
    wanted = {c: c.lower() for c in canaries}
    hits: dict[str, list[str]] = collections.defaultdict(list)
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        data = path.read_bytes()
        lowered = data.lower()
        views = [v.lower() for v in _decoded_views(path, data)]
        for secret, low in wanted.items():
            if low.encode() in lowered or any(low in v for v in views):
                hits[secret].append(str(path.relative_to(root)))
    return dict(hits)


_LAYOUT_FILES = (
    re.compile(r"^data_category=[^/]+/expiry_date=[^/]+/(?!\.)[^/]+\.(parquet|avro)$"),
    re.compile(r"^_dead_letter/source=[^/]+/expiry_date=[^/]+/(?!\.)[^/]+\.jsonl$"),
    re.compile(r"^_reports/(?!\.)[^/]+\.json$"),
    re.compile(r"^_runs/(?!\.)[^/]+\.json$"),  # a run's record (its time and attempts)
)


def leftovers(root: Path) -> list[str]:
    """Files outside the output layout, and temporary or staging directories (even empty)."""
    found: list[str] = []
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root).as_posix()
        if any(rel.startswith(f) for f in found if f.endswith("/")):
            continue  # inside a directory already listed
        if path.is_dir():
            name = path.name
            staging = rel.startswith("_runs/")  # a run's staging: gone once it commits
            if staging or name.startswith((".temp", ".tmp", "_retention")) or "spill" in name:
                found.append(rel + "/")
        elif not any(pattern.match(rel) for pattern in _LAYOUT_FILES):
            found.append(rel)
    return found

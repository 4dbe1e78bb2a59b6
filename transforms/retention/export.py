"""Access exports: what is held about one data subject, written for that person to read.

``pipelines.access`` finds a request's rows with the erasure scan
(:class:`transforms.retention.erasure.ScanFileFn` in ``export`` mode stages them under its
transaction); this module turns them into the export, on the launcher's local disk::

    EXPORT_DIR/<request_id>/
      summary.json    the categories held, each with its purposes, legal basis, retention in
                      words, source, recipients and row count (or: nothing is held)
      records.json    every row: its category, purposes, legal basis, retention rule and expiry
                      as the row carries them, the file it is stored in, and its fields
      <category>.csv  the same rows, one file per category (dead_letters.csv for dead letters)

Why local and owner-only: an export is a copy of a person's data made to be handed to them. Its
directories are created 0700 and its files 0600 (exactly: the umask is not trusted, links are
never followed), so that no other account on the machine can read it; object stores have no
such permissions to set, so an export is never written there. Each export is written whole in a
hidden directory next to it and renamed into place: a reader never sees half an export, and a
rerun replaces the previous one.

The texts of a category (retention in words, source, recipients) are those of the records of
processing (``schemas.records``): a data subject and an auditor are told the same thing.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import math
import os
import shutil
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from schemas.policy import Category, Policy
from schemas.records import recipients_in_words, retention_in_words, source_in_words
from transforms.retention.files import read_lines
from transforms.retention.layout import DATA, full_path
from transforms.timestamps import format_utc

__all__ = [
    "DEAD_LETTERS",
    "DIR_MODE",
    "FILE_MODE",
    "csv_cell",
    "make_private_dir",
    "write_export",
]

DIR_MODE = 0o700
FILE_MODE = 0o600
DEAD_LETTERS = "dead_letter"
# The tag columns every stored row carries (schemas/avro/tags.avsc): a record's header.
_TAGS = ("data_category", "purposes", "legal_basis", "retention_rule", "expires_at")
# A spreadsheet runs a cell that starts with one of these as a formula (CSV injection).
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def make_private_dir(path: Path) -> None:
    """Create ``path`` (not its parents) readable by its owner only: 0700 whatever the umask."""
    path.mkdir(mode=DIR_MODE)
    path.chmod(DIR_MODE)


@contextlib.contextmanager
def _private_file(path: Path, *, newline: str | None = None) -> Iterator[io.TextIOWrapper]:
    """A new text file readable by its owner only (0600 whatever the umask; an existing file or
    a link in its place is an error)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, FILE_MODE)
    os.fchmod(fd, FILE_MODE)
    with open(fd, "w", encoding="utf-8", newline=newline) as fh:
        yield fh


def _finite(value: Any) -> Any:
    """NaN and infinities as text: JSON has no number for them."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


def _found(
    root: str, found: Sequence[Mapping[str, Any]], request_id: str, policy: Policy
) -> Iterator[dict]:
    """The request's staged rows and dead letters, file by file (in the order of ``found``),
    each as exported: its header (category, purposes, legal basis, retention, expiry, file)
    then its fields."""
    for entry in found:
        if request_id not in entry.get("requests", {}):
            continue
        for line in read_lines(full_path(root, entry["staged"])):
            item = json.loads(line)
            if request_id not in item["requests"]:
                continue
            if entry["kind"] == DATA:
                yield _row_record(entry, item["row"])
            else:
                yield _letter_record(entry, item["letter"], policy.dead_letter_retention.label)


def _row_record(entry: Mapping[str, Any], row: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "category": row.get("data_category") or entry["name"],
        "purposes": row.get("purposes") or [],
        "legal_basis": row.get("legal_basis"),
        "retention_rule": row.get("retention_rule"),
        "expires_at": row.get("expires_at"),
        "policy_version": row.get("policy_version"),
        "stored_in": entry["target"],
        "fields": {k: v for k, v in row.items() if k not in (*_TAGS, "policy_version")},
    }


def _letter_record(entry: Mapping[str, Any], letter: Any, rule: str) -> dict[str, Any]:
    """A dead letter: a record a pipeline could not process, kept to find out why (``rule``: the
    policy's dead-letter retention). The policy declares no purpose or legal basis of their own
    for them: none is invented here."""
    body = letter if isinstance(letter, dict) else {"raw": letter}
    return {
        "category": DEAD_LETTERS,
        "source": body.get("source") or entry["name"],
        "purposes": [],
        "legal_basis": None,
        "retention_rule": rule,
        "expires_at": body.get("expires_at"),
        "stored_in": entry["target"],
        "fields": {k: v for k, v in body.items() if k not in ("expires_at",)},
    }


def csv_cell(value: Any) -> str:
    """A CSV cell: lists and objects as JSON, None empty, and text a spreadsheet would run as a
    formula made inert with a leading apostrophe (records.json keeps the exact value)."""
    if value is None:
        return ""
    if isinstance(value, list | dict):
        return json.dumps(_finite(value), ensure_ascii=False)
    text = str(value)
    if isinstance(value, str) and text.startswith(_FORMULA_START):
        return "'" + text
    return text


def _csv_name(category: str) -> str:
    return "dead_letters.csv" if category == DEAD_LETTERS else f"{category}.csv"


def _flat(record: Mapping[str, Any]) -> dict[str, Any]:
    """A record as a CSV row: its fields, then its header columns."""
    header = {k: v for k, v in record.items() if k not in ("fields", "category")}
    return {**record["fields"], **header}


def _retention_words(category: Category | None, label: str | None) -> str:
    """A row's retention label (``fixed_180d``, ``until_opt_out``) in the records of
    processing's words. An open-ended rule written under another period (``..._plus_90d``) is
    ended with the current policy's period (the lifecycle job's rule): its current words; a
    fixed period that is no longer the policy's is said as the label says."""
    if category is not None and label:
        for retention in (category.retention, *(p.retention for p in category.purposes)):
            if retention is not None and (
                label == retention.label
                or (retention.open_ended and label.startswith(f"{retention.rule}_"))
            ):
                return retention_in_words(category, retention)
    return f"as its rule {label} says" if label else "not recorded on the row"


def _expiries(records: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    expiries = sorted(r["expires_at"] for r in records if r["expires_at"])
    return {
        "earliest": expiries[0] if expiries else None,
        "latest": expiries[-1] if expiries else None,
        "open_ended_rows": sum(1 for r in records if not r["expires_at"]),
    }


def _dead_letter_summary(policy: Policy, records: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    dead = policy.dead_letter_retention
    return {
        "category": DEAD_LETTERS,
        "rows": len(records),
        "description": "Records a pipeline could not process (dead letters), kept to find out "
        "why; only the plain fields their source declares stay readable, the rest is masked.",
        "sources": sorted({r["source"] for r in records}),
        "purposes": [],
        "legal_basis": [],
        "note": "The policy declares no purpose or legal basis of their own for dead letters.",
        "retention": [
            {"rule": dead.label, "in_words": f"{dead.days} days from the run that rejected it"}
        ],
        "expires": _expiries(records),
        "file": _csv_name(DEAD_LETTERS),
    }


def _category_summary(
    policy: Policy, name: str, records: Sequence[Mapping[str, Any]]
) -> dict[str, Any]:
    """What a data subject is told about one category of their data held: the purposes and
    legal basis its rows carry, their retention in words, where the data comes from and who
    receives it."""
    if name == DEAD_LETTERS:
        return _dead_letter_summary(policy, records)
    category = policy.categories.get(name)  # None: a category the policy no longer has
    declared = [p.name for p in category.purposes] if category else []
    purposes = sorted(
        {p for r in records for p in r["purposes"]},
        key=lambda p: (declared.index(p) if p in declared else len(declared), p),
    )
    return {
        "category": name,
        "rows": len(records),
        "description": category.description if category else None,
        "purposes": purposes,
        "legal_basis": sorted({r["legal_basis"] for r in records if r["legal_basis"]}),
        "retention": [
            {"rule": label, "in_words": _retention_words(category, label)}
            for label in sorted({r["retention_rule"] or "" for r in records} - {""}) or [None]
        ],
        "expires": _expiries(records),
        "source": source_in_words(category) if category else "not declared",
        "recipients": recipients_in_words(policy, category) if category else [],
        "store": category.store if category else None,
        "file": _csv_name(name),
    }


def _write_records(path: Path, head: Mapping[str, Any], records: Iterable[Mapping]) -> None:
    with _private_file(path) as fh:
        fh.write(json.dumps(dict(head), ensure_ascii=False, indent=2)[:-2])
        fh.write(',\n  "records": [')
        for i, record in enumerate(records):
            fh.write(",\n    " if i else "\n    ")
            fh.write(json.dumps(_finite(record), ensure_ascii=False, sort_keys=False))
        fh.write("\n  ]\n}\n")


def _write_csv(path: Path, records: Sequence[Mapping[str, Any]]) -> None:
    columns = list(dict.fromkeys(k for r in records for k in _flat(r)))
    with _private_file(path, newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns)
        writer.writeheader()
        for record in records:
            writer.writerow({k: csv_cell(v) for k, v in _flat(record).items()})


def write_export(
    export_root: Path,
    root: str,
    request: Mapping[str, Any],
    found: Sequence[Mapping[str, Any]],
    policy: Policy,
    *,
    generated_at: int,
    run_id: str,
) -> dict[str, Any]:
    """Write ``EXPORT_DIR/<request_id>/`` from the rows staged under ``root`` (``found``: the
    scan's entries, each with its staged file) and return its counts (no values)."""
    request_id = request["request_id"]
    by_category: dict[str, list[dict[str, Any]]] = {}
    for record in _found(root, found, request_id, policy):
        by_category.setdefault(record["category"], []).append(record)
    head = {
        "request_id": request_id,
        "received_at": format_utc(request["received_at"]),
        "subject_field": request["field"],
        "narrowed_to_sdk_app_id": bool(request.get("scope")),
        "generated_at": format_utc(generated_at),
        "policy": policy.name,
        "policy_version": policy.version,
    }
    final = export_root / request_id
    work = export_root / f".{request_id}.tmp-{run_id}"
    if work.is_symlink():
        work.unlink()
    elif work.exists():
        shutil.rmtree(work)  # a killed run's
    make_private_dir(work)
    try:
        counts = _write(work, head, by_category, policy)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    _replace(work, final, run_id)
    return counts


def _write(
    work: Path,
    head: Mapping[str, Any],
    by_category: Mapping[str, list[dict[str, Any]]],
    policy: Policy,
) -> dict[str, Any]:
    """The export's files in ``work``; returns its counts."""
    ordered = sorted(by_category, key=lambda c: (c == DEAD_LETTERS, c))
    _write_records(work / "records.json", head, (r for c in ordered for r in by_category[c]))
    categories = []
    for name in ordered:
        _write_csv(work / _csv_name(name), by_category[name])
        categories.append(_category_summary(policy, name, by_category[name]))
    rows = sum(len(by_category[c]) for c in ordered if c != DEAD_LETTERS)
    letters = len(by_category.get(DEAD_LETTERS, ()))
    held = bool(by_category)
    with _private_file(work / "summary.json") as fh:
        json.dump(
            {
                **head,
                "data_held": held,
                "message": (
                    f"Data of this subject is held: stored rows {rows} (categories "
                    f"{len(ordered) - (1 if letters else 0)}), dead letters {letters}. Each is "
                    "in records.json and in the CSV file of its category."
                    if held
                    else "Nothing is held about this subject: no stored row of any category "
                    f"and no dead letter holds the {head['subject_field']} of this request."
                ),
                "categories": categories,
                "files": ["summary.json", "records.json", *(c["file"] for c in categories)],
            },
            fh,
            ensure_ascii=False,
            indent=2,
        )
        fh.write("\n")
    return {
        "rows": {c: len(by_category[c]) for c in ordered if c != DEAD_LETTERS},
        "rows_total": rows,
        "dead_letters": letters,
        "data_held": held,
    }


def _replace(work: Path, final: Path, run_id: str) -> None:
    """Move the finished export into place, replacing an earlier one of the same request (a
    hidden name: no request id starts with a dot)."""
    if final.is_symlink() or final.is_file():
        final.unlink()
    if final.exists():
        old = final.with_name(f".{final.name}.old-{run_id}")
        final.rename(old)
        work.rename(final)
        shutil.rmtree(old)
    else:
        work.rename(final)

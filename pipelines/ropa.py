"""Records of processing activities (GDPR Art. 30), generated from the policy alone.

    python -m pipelines.ropa [--policy FILE] [--format markdown|json] [--out FILE]

For every category of the policy: its purposes (with the conditions of a conditional one), legal
basis and categories of data subjects; the fields held and what is never stored; where the data
comes from and who receives it (AroundDeal: what is shared, and what is never requested for
EEA/UK visitors); the store, the retention in words and as the rule the rows carry, and the
partition that deletes them on their expiry date; the restrictions by region and the
minimum-age condition. ``docs/ropa.md`` is this command's Markdown for the bundled policy
(``--out docs/ropa.md``); a test fails when it is stale.

Why generated: the record then describes exactly what the pipelines enforce, from the file they
enforce it from, and carries its version. Nothing else goes in (no date, no path): the same
policy gives the same bytes. A policy without the records' own declarations (data subjects,
source and recipients of every category, ``records_of_processing``) is refused, every missing
piece named. Runs no pipeline.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from pipelines.launch import command_main
from schemas.policy import load_policy
from schemas.records import records_of_processing
from transforms.sinks import OPEN_ENDED_EXPIRY_DATE

__all__ = ["FORMATS", "RopaFlags", "main", "markdown_table", "render", "render_markdown"]

FORMATS = ("markdown", "json")


class RopaFlags:
    """``--format``; ``--policy``, ``--out`` and ``--log_level`` are ``CommandFlags``."""

    @classmethod
    def _add_argparse_args(cls, parser: argparse.ArgumentParser) -> None:
        parser.add_argument(
            "--format",
            choices=FORMATS,
            default="markdown",
            help="markdown (default: the document docs/ropa.md is) or json (the same record as "
            "data).",
        )


def _cell(text: object) -> str:
    """A Markdown table cell: one line, its pipes escaped."""
    return " ".join(str(text).split()).replace("|", "\\|")


def _code(names: Iterable[str]) -> str:
    return ", ".join(f"`{n}`" for n in names) or "none"


def markdown_table(header: Sequence[str], rows: Iterable[Sequence[object]]) -> list[str]:
    """A Markdown table's lines: a header, then a line per row (cells on one line each)."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]
    return lines


def _purposes(activity: Mapping[str, Any]) -> str:
    parts = []
    for p in activity["purposes"]:
        conditions = list(p["conditions"])
        if p.get("retention"):
            conditions.append(f"kept `{p['retention']}` while it applies")
        parts.append(f"`{p['name']}`" + (f" ({'; '.join(conditions)})" if conditions else ""))
    return "; ".join(parts)


def _retention(activity: Mapping[str, Any]) -> str:
    r = activity["retention"]
    text = f"`{r['rule']}`: {r['in_words']}"
    for p in r["while_purposes"]:
        text += f"; while `{p['purpose']}` applies, `{p['rule']}`: {p['in_words']}"
    return text


def _restrictions(activity: Mapping[str, Any]) -> str:
    r = activity["restrictions_by_region"]
    parts = [
        f"{region}: {_code(fields)} never stored"
        for region, fields in r["forbidden_fields"].items()
    ]
    if r["restricted_country_field"]:
        parts.append(
            f"a record whose `{r['restricted_country_field']}` is in a restricted region is "
            "restricted the same way"
        )
    parts += [f"`{name}`: {'; '.join(c)}" for name, c in r["purposes"].items()]
    return "; ".join(parts) or "none"


def _source(activity: Mapping[str, Any]) -> str:
    s = activity["source"]
    text = f"{s['description']} Origin: {' and '.join(s['from'])}"
    if s["based_on"]:
        text += f", based on {_code(s['based_on'])}"
    return text + "."


def _fields(activity: Mapping[str, Any]) -> str:
    text = _code(activity["fields"])
    groups = activity["field_groups"]
    if groups:
        text += "; " + "; ".join(f"{g}: {_code(f)}" for g, f in groups.items())
    return text


def _activity(activity: Mapping[str, Any]) -> list[str]:
    retention = activity["retention"]
    rows: list[tuple[str, object]] = [
        ("Document", activity["document"]),
        ("Purposes", _purposes(activity)),
        ("Legal basis", f"`{activity['legal_basis']}`"),
        (
            "Data subjects",
            "; ".join(f"`{s['name']}`: {s['description']}" for s in activity["data_subjects"]),
        ),
        ("Fields held", _fields(activity)),
        ("Never stored", "; ".join(activity["never_stored"])),
        ("Source", _source(activity)),
        ("Recipients", " ".join(r["in_words"] for r in activity["recipients"]) or "none named"),
        ("Other recipients", activity["other_recipients"]),
        ("Store", f"`{activity['store']}`"),
        ("Retention", _retention(activity)),
    ]
    if "expiry_set_by" in retention:
        rows += [
            ("Expiry set by", retention["expiry_set_by"]),
            ("Partition", retention["partition"]),
        ]
    rows += [
        ("Restrictions by region", _restrictions(activity)),
        ("Minimum age", activity["minimum_age"]),
    ]
    return [
        f"### {activity['category']}",
        "",
        activity["description"],
        "",
        *markdown_table(("", ""), rows),
        "",
    ]


def render_markdown(record: Mapping[str, Any]) -> str:
    """The record as the Markdown document ``docs/ropa.md`` is."""
    regions = [
        f"`{name}` ({'restricted' if r['restricted'] else 'unrestricted'}): "
        + "; ".join(filter(None, (r["countries"] and _code(r["countries"]), r.get("also"))))
        for name, r in record["regions"].items()
    ]
    terms = record["never_in_clear"]
    lines = [
        f"<!-- Generated by `python -m pipelines.ropa` from the policy {record['policy']} "
        f"({record['policy_version']}): change the policy, then regenerate. -->",
        "",
        "# Records of processing activities",
        "",
        f"Policy `{record['policy']}`, version `{record['policy_version']}`, from "
        + "; ".join(record["documents"].values())
        + ".",
        "",
        f"- **Controller**: {record['controller']}",
        f"- **Regions**: {'; '.join(regions)}.",
        f"- **Never stored in clear**: fields whose names mean a credential "
        f"({', '.join(terms['secret_terms'])}) or audio/video content "
        f"({', '.join(terms['media_terms'])}), recognised by meaning, are dropped from every "
        "record, never logged, and masked in dead letters.",
        f"- **Dead letters** (rejected records): `{record['dead_letters']['retention']}`, "
        f"{record['dead_letters']['in_words']}; only declared, non-sensitive fields stay "
        "readable.",
        "- **Deletion**: every row carries its `expires_at`, and is written to the partition of "
        "its UTC date, which is deleted on that date.",
        "",
        "## Categories of data subjects",
        "",
        *markdown_table(("name", "who"), record["data_subjects"].items()),
        "",
        "## Third parties",
        "",
        *markdown_table(
            ("key", "name", "role"),
            ((k, p["name"], p["role"]) for k, p in record["parties"].items()),
        ),
        "",
        "## Activities",
        "",
        *markdown_table(
            ("category", "legal basis", "data subjects", "store", "retention"),
            (
                (
                    a["category"],
                    a["legal_basis"],
                    ", ".join(s["name"] for s in a["data_subjects"]),
                    a["store"],
                    a["retention"]["rule"],
                )
                for a in record["activities"]
            ),
        ),
        "",
    ]
    for activity in record["activities"]:
        lines += _activity(activity)
    return "\n".join(lines)


def render(policy_path: str | None, fmt: str) -> str:
    """The records of processing of the policy at ``policy_path`` (default: the bundled one)
    in ``fmt``."""
    record = records_of_processing(load_policy(policy_path), open_ended=OPEN_ENDED_EXPIRY_DATE)
    if fmt == "json":
        return json.dumps(record, indent=2, ensure_ascii=False) + "\n"
    return render_markdown(record)


def main(argv: Sequence[str] | None = None) -> None:
    command_main(lambda args: render(args.policy, args.format), argv, flags=(RopaFlags,))


if __name__ == "__main__":
    main()

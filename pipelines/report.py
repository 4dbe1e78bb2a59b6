"""The JSON run report under ``<output>/_reports/``, built from the job's Beam counters.

Counters are the runner's own accounting (committed values, aggregated across workers and
retries), so the report says what the job did, not what the launcher believes it did. The report
reconciles: every record read is a row of the source's primary category, a dead letter, or a row
that was already expired at the run time and so not written (``expired_on_arrival``). It also
gives the dead-letter ratio (dead letters / records read), which a run may not exceed
(``--max_dead_letter_ratio``): a run that rejects most of its input is a failed run, even though
everything it read is accounted for.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from apache_beam.metrics.metric import MetricsFilter
from apache_beam.runners.runner import PipelineResult

from transforms.counters import FALLBACK_PREFIX, NAMESPACE
from transforms.retention.jsonio import write_audit

__all__ = [
    "build_report",
    "columnar_fallbacks",
    "counters_of",
    "counters_with_prefix",
    "dead_letter_ratio_error",
    "summary_lines",
    "write_report",
]


def counters_of(result: PipelineResult) -> dict[str, int]:
    """Every counter of the project namespace, summed across steps (committed when available)."""
    totals: dict[str, int] = {}
    query = result.metrics().query(MetricsFilter().with_namespace(NAMESPACE))
    for counter in query["counters"]:
        value = counter.committed if counter.committed is not None else counter.attempted
        name = counter.key.metric.name
        totals[name] = totals.get(name, 0) + int(value or 0)
    return totals


def counters_with_prefix(counters: Mapping[str, int], prefix: str) -> dict[str, int]:
    """The counters named ``<prefix><name>``, by ``<name>``, sorted."""
    return {
        name[len(prefix) :]: value
        for name, value in sorted(counters.items())
        if name.startswith(prefix)
    }


def build_report(
    counters: Mapping[str, int],
    *,
    pipeline: str,
    primary_categories: tuple[str, ...],
    run: Mapping[str, Any],
) -> dict[str, Any]:
    """The report document; ``run`` carries the run's identity (inputs, output, policy, times).

    ``primary_categories`` are the categories every good record yields exactly one row of (one
    for visits, one per route for a routed source)."""
    read = counters.get("read", 0)
    written = counters_with_prefix(counters, "written.")
    dead = counters_with_prefix(counters, "dead_letter.")
    dead_total = sum(dead.values())
    primary = sum(written.get(c, 0) for c in primary_categories)
    expired = counters_with_prefix(counters, "expired_on_arrival.")
    primary_expired = sum(expired.get(c, 0) for c in primary_categories)
    return {
        "pipeline": pipeline,
        **run,
        "counts": {
            "read": read,
            "written": written,
            "dead_lettered": dead,
            "dead_lettered_total": dead_total,
            "dead_letter_ratio": dead_total / read if read else 0.0,
            "expired_on_arrival": expired,
        },
        "reconciliation": {
            "primary_categories": list(primary_categories),
            "read": read,
            "primary_written": primary,
            "dead_lettered": dead_total,
            "expired_on_arrival": primary_expired,
            "reconciled": read == primary + dead_total + primary_expired,
        },
        "regions": counters_with_prefix(counters, "region."),
        "suppressed": counters_with_prefix(counters, "suppressed."),
        "enrichment": counters_with_prefix(counters, "enrichment."),
        "parse": counters_with_prefix(counters, "parse."),
        "redacted": counters_with_prefix(counters, "redacted."),
        "guard": counters_with_prefix(counters, "guard."),
        "fingerprinted": counters.get("fingerprinted", 0),
        "commit": counters_with_prefix(counters, "commit."),
        "columnar_fallbacks": columnar_fallbacks(counters),
    }


def columnar_fallbacks(counters: Mapping[str, int]) -> dict[str, dict[str, int]]:
    """``{stage: {reason: rows}}`` of the rows columnar stages handed to their record path
    (``transforms.counters.fallback``)."""
    found: dict[str, dict[str, int]] = {}
    for name, rows in counters_with_prefix(counters, FALLBACK_PREFIX).items():
        stage, _, reason = name.partition(".")
        found.setdefault(stage, {})[reason] = rows
    return found


def write_report(report: Mapping[str, Any], output_dir: str, run_id: str) -> str:
    """Write the report as ``_reports/<pipeline>-<run_id>.json`` (like the retention jobs'
    audit records); returns its path."""
    return write_audit(output_dir, report["pipeline"], run_id, report)


def dead_letter_ratio_error(report: Mapping[str, Any]) -> str | None:
    """Why the run failed if its dead-letter ratio exceeds its ``max_dead_letter_ratio``."""
    limit = report.get("max_dead_letter_ratio")
    counts = report["counts"]
    ratio = counts["dead_letter_ratio"]
    if limit is None or ratio <= limit:
        return None
    return (
        f"dead-letter ratio {ratio:.4g} ({counts['dead_lettered_total']} of {counts['read']} "
        f"records read) exceeds --max_dead_letter_ratio {limit:g}; the rows and dead letters are "
        "written"
    )


def _ratio(report: Mapping[str, Any]) -> str:
    limit = report.get("max_dead_letter_ratio")
    shown = f"dead-letter ratio {report['counts']['dead_letter_ratio']:.4g}"
    return shown if limit is None else f"{shown} (max {limit:g})"


def _fallbacks(report: Mapping[str, Any]) -> int:
    return sum(sum(reasons.values()) for reasons in report.get("columnar_fallbacks", {}).values())


def summary_lines(report: Mapping[str, Any]) -> list[str]:
    """A short human summary of a report, for the console."""
    counts = report["counts"]
    rec = report["reconciliation"]
    written = ", ".join(f"{k}={v}" for k, v in counts["written"].items()) or "none"
    dead = ", ".join(f"{k}={v}" for k, v in counts["dead_lettered"].items()) or "none"
    name = report["pipeline"]
    lines = [
        f"[{name}] read={counts['read']} written: {written}",
        f"[{name}] dead letters: {dead}; {_ratio(report)}; columnar fallbacks {_fallbacks(report)}",
    ]
    if report["regions"]:
        lines.append(f"[{name}] regions: {report['regions']} suppressed: {report['suppressed']}")
    if report["enrichment"]:
        lines.append(f"[{name}] enrichment: {report['enrichment']}")
    if report["redacted"]:
        found = ", ".join(f"{k}={v}" for k, v in report["redacted"].items())
        lines.append(f"[{name}] redacted in free text: {found}")
    if counts["expired_on_arrival"]:
        expired = ", ".join(f"{k}={v}" for k, v in counts["expired_on_arrival"].items())
        lines.append(f"[{name}] expired on arrival (not written): {expired}")
    attempt = report.get("attempt")
    if attempt and attempt["replaced"]:
        replaced = report.get("commit", {}).get("replaced_files", 0)
        lines.append(
            f"[{name}] run {report.get('run_id')} attempt {attempt['number']}: replaced the "
            f"{attempt['previous_attempt']} earlier attempt ({replaced} files replaced or removed)"
        )
    lines.append(
        f"[{name}] reconciled={rec['reconciled']} ({rec['read']} read = "
        f"{rec['primary_written']} {'+'.join(rec['primary_categories'])} "
        f"+ {rec['dead_lettered']} dead letters + {rec['expired_on_arrival']} expired on arrival)"
    )
    return lines

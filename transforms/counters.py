"""The one Beam metrics namespace of the project; the run report is built from its counters.

Also the one way a columnar stage says it handed rows to its record path (:func:`fallback`):
counted by stage and reason for the report (``columnar_fallbacks``), so that a fast path that
stopped working shows in every run instead of only in a benchmark; and, in strict mode
(``TRTC_STRICT_COLUMNAR=1``, which the tests of clean input set), an error.
"""

from __future__ import annotations

import os

from apache_beam.metrics import Metrics

__all__ = [
    "FALLBACK_PREFIX",
    "NAMESPACE",
    "STRICT_COLUMNAR_ENV",
    "ColumnarFallbackError",
    "counter",
    "fallback",
]

NAMESPACE = "compliance"
FALLBACK_PREFIX = "columnar_fallback."
STRICT_COLUMNAR_ENV = "TRTC_STRICT_COLUMNAR"


class ColumnarFallbackError(BaseException):
    """A columnar stage fell back to its record path in strict mode.

    A ``BaseException``, not an ``Exception``: it is no error of a record, so neither a stage's
    per-record handler nor Beam's ``with_exception_handling`` (which the dead-letter outputs are
    built on, and which catches ``Exception``) may turn it into a dead letter. It fails the
    bundle, and so the run, which is what strict mode is for."""


def counter(name: str) -> Metrics.DelegatingCounter:
    """A counter in the project namespace; names are dotted lowercase (``region.eea_uk``)."""
    return Metrics.counter(NAMESPACE, name)


def fallback(stage: str, reason: str, rows: int) -> None:
    """Record that ``stage`` (``parse``, ``tag``...) hands ``rows`` rows to its record path
    for ``reason`` (a short snake_case word: ``invalid_value``, ``mixed_types``...).

    Counted as ``columnar_fallback.<stage>.<reason>``; raises :class:`ColumnarFallbackError`
    instead when ``TRTC_STRICT_COLUMNAR=1``."""
    if rows <= 0:
        return
    if os.environ.get(STRICT_COLUMNAR_ENV) == "1":
        raise ColumnarFallbackError(
            f"{stage}: {rows} rows fell back to the record path ({reason}) in strict mode"
        )
    counter(f"{FALLBACK_PREFIX}{stage}.{reason}").inc(rows)

"""The one Beam metrics namespace of the project; the run report is built from its counters."""

from __future__ import annotations

from apache_beam.metrics import Metrics

__all__ = ["NAMESPACE", "counter"]

NAMESPACE = "compliance"


def counter(name: str) -> Metrics.DelegatingCounter:
    """A counter in the project namespace; names are dotted lowercase (``region.eea_uk``)."""
    return Metrics.counter(NAMESPACE, name)

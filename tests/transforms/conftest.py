from __future__ import annotations

from collections import Counter

import pytest

import transforms.batches
from schemas.avro import input_fields
from schemas.policy import load_policy
from transforms.deadletter import DeadLetterContext
from transforms.masking import Exposure


@pytest.fixture(scope="session")
def policy():
    return load_policy()


@pytest.fixture(scope="session")
def contact_fields(policy):
    return policy.category("corporate_visitor_info").field_groups["contact"]


@pytest.fixture(scope="session")
def dl_context(policy):
    declared = [spec.name for spec in input_fields("visit_input")] + ["country", "region"]
    return DeadLetterContext(
        source="visits", exposure=Exposure.of_source(policy, declared), expires_at=1_000
    )


class _Recorded:
    def __init__(self, name: str, counts: Counter) -> None:
        self._name, self._counts = name, counts

    def inc(self, n: int = 1) -> None:
        self._counts[self._name] += n


@pytest.fixture
def counted(monkeypatch):
    """The counters the stages add, as a Counter (outside a pipeline Beam keeps none)."""
    counts: Counter = Counter()
    monkeypatch.setattr(transforms.batches, "counter", lambda name: _Recorded(name, counts))
    return counts

from __future__ import annotations

from collections import Counter

import pytest

import transforms.batches
from schemas.policy import load_policy
from transforms.deadletter import DeadLetterContext


@pytest.fixture(scope="session")
def policy():
    return load_policy()


@pytest.fixture(scope="session")
def contact_fields(policy):
    return policy.category("corporate_visitor_info").field_groups["contact"]


@pytest.fixture(scope="session")
def dl_context(policy, contact_fields):
    names = tuple(sorted(set(contact_fields) | policy.secret_names | policy.media_names))
    return DeadLetterContext(source="visits", mask_names=names, expires_at=1_000)


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

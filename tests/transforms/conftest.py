from __future__ import annotations

import pytest

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

"""Temporary policies with one category more, for the tests that prove a new category is a
policy and schema change only (ingested, exported, erased with no code change)."""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from schemas.policy import default_policy_path

# The fields every webinar category starts with, as its Avro schema declares them.
WEBINAR_FIELDS: dict[str, dict[str, Any]] = {
    "event_id": {"type": "string"},
    "registered_at": {"type": {"type": "long", "logicalType": "timestamp-micros"}},
}


def webinar_policy(
    directory: Path,
    name: str,
    *,
    description: str,
    fields: Mapping[str, Mapping[str, Any]],
    subject_fields: Mapping[str, str],
    retention: Mapping[str, Any],
) -> Path:
    """``directory/policy.yaml``: the bundled policy plus the webinar category ``name`` (its
    ``event_id``, ``registered_at`` and ``fields``, each with its Avro type), whose
    ``subject_fields`` identify a data subject; its schema is ``directory/avro/<name>.avsc``."""
    columns = {**WEBINAR_FIELDS, **fields}
    policy = copy.deepcopy(yaml.safe_load(Path(default_policy_path()).read_text()))
    policy["categories"][name] = {
        "module": "privacy_policy",
        "description": description,
        "event_time": "registered_at",
        "fields": list(columns),
        "purposes": ["event_management"],
        "legal_basis": "consent",
        "retention": dict(retention),
        "store": "data_lake",
    }
    policy["subjects"]["fields"][name] = dict(subject_fields)
    (directory / "avro").mkdir()
    (directory / "avro" / f"{name}.avsc").write_text(
        json.dumps(
            {
                "type": "record",
                "name": "".join(part.capitalize() for part in name.split("_")),
                "fields": [{"name": column, **spec} for column, spec in columns.items()],
            }
        )
    )
    path = directory / "policy.yaml"
    path.write_text(yaml.safe_dump(policy))
    return path

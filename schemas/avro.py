"""Avro schemas (``schemas/avro/*.avsc``) as parsed fastavro schemas, plus what the parser needs.

Input schemas describe what producers send; output schemas are ``<category>.avsc`` (the category's
columns) with the policy tag columns of ``tags.avsc`` appended, so the tag columns are written once.
The Parquet schema is derived from these (``schemas.arrow``), never written by hand.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any

import fastavro

__all__ = [
    "FieldSpec",
    "category_columns",
    "input_fields",
    "load_avsc",
    "output_schema",
    "tag_columns",
]

_PY_TYPES: dict[str, tuple[type, ...]] = {
    "string": (str,),
    "long": (int,),
    "int": (int,),
    "double": (float, int),
    "float": (float, int),
    "boolean": (bool,),
    "bytes": (bytes,),
}


@dataclass(frozen=True)
class FieldSpec:
    """What the parser checks for one input field: is it required, which Avro types it accepts."""

    name: str
    required: bool
    avro_types: tuple[str, ...]
    format: str | None = (
        None  # "ip": the value must be an IP address (the .avsc "format" attribute)
    )

    def accepts(self, value: Any) -> bool:
        for avro_type in self.avro_types:
            py_types = _PY_TYPES.get(avro_type, ())
            # bool is an int in Python but never a valid long/double in the data contract
            if isinstance(value, bool) and avro_type != "boolean":
                continue
            if isinstance(value, py_types):
                return True
        return False


def _avsc_text(name: str) -> str:
    return resources.files("schemas").joinpath("avro", f"{name}.avsc").read_text(encoding="utf-8")


@cache
def load_avsc(name: str) -> dict[str, Any]:
    """The raw JSON of ``schemas/avro/<name>.avsc`` (validated by fastavro on first use)."""
    doc = json.loads(_avsc_text(name))
    fastavro.parse_schema(copy.deepcopy(doc))  # raises SchemaParseException if malformed
    return doc


@cache
def output_schema(category: str) -> dict[str, Any]:
    """Parsed output schema of a category: its own columns followed by the policy tag columns."""
    doc = copy.deepcopy(load_avsc(category))
    own = {f["name"] for f in doc["fields"]}
    for tag_field in load_avsc("tags")["fields"]:
        if tag_field["name"] in own:
            raise ValueError(f"{category}.avsc redeclares the tag column {tag_field['name']!r}")
        doc["fields"].append(copy.deepcopy(tag_field))
    return fastavro.parse_schema(doc)


def _branch_types(avro_type: Any) -> tuple[str, ...]:
    branches = avro_type if isinstance(avro_type, list) else [avro_type]
    names = []
    for branch in branches:
        names.append(branch["type"] if isinstance(branch, dict) else branch)
    return tuple(names)


@cache
def input_fields(source_schema: str) -> tuple[FieldSpec, ...]:
    """The allow-listed input fields of a source schema with their requiredness and types."""
    specs = []
    for f in load_avsc(source_schema)["fields"]:
        types = _branch_types(f["type"])
        specs.append(
            FieldSpec(
                f["name"],
                "null" not in types,
                tuple(t for t in types if t != "null"),
                f.get("format"),
            )
        )
    return tuple(specs)


@cache
def category_columns(category: str) -> tuple[str, ...]:
    """The columns a category's rows carry before tagging (its .avsc fields, tags excluded)."""
    return tuple(f["name"] for f in load_avsc(category)["fields"])


@cache
def tag_columns() -> tuple[str, ...]:
    """The policy tag columns every output row carries (``tags.avsc``)."""
    return tuple(f["name"] for f in load_avsc("tags")["fields"])

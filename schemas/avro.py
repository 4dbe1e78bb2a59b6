"""Avro schemas (``schemas/avro/*.avsc``) as parsed fastavro schemas, plus what the parser needs.

Input schemas describe what producers send; output schemas are ``<category>.avsc`` (the category's
columns) with the policy tag columns of ``tags.avsc`` appended, so the tag columns are written once.
The Parquet schema is derived from these (``schemas.arrow``), never written by hand.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

import fastavro

__all__ = [
    "FieldSpec",
    "category_columns",
    "category_input_fields",
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
    """What the parser checks for one input field: is it required, which Avro types it accepts.

    ``format`` is the ``.avsc`` field attribute of the same name: ``"ip"`` (the value must be an
    IP address), ``"identifier"`` (sdk_app_id, uin...: accepted as a string or an integer and
    always written as a string) or ``"email"`` (a plain string the category holds as an e-mail
    address by contract: not scanned as free text, see ``transforms.masking``). ``symbols`` are
    an enum's allowed values.
    """

    name: str
    required: bool
    avro_types: tuple[str, ...]
    format: str | None = None
    symbols: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        # Precomputed once: the parser asks these for every field of every record.
        py_types = tuple(t for a in self.avro_types for t in _PY_TYPES.get(a, ()))
        object.__setattr__(self, "_py_types", py_types)
        object.__setattr__(self, "_bool_ok", "boolean" in self.avro_types)
        object.__setattr__(self, "_enum", "enum" in self.avro_types)
        object.__setattr__(
            self, "plain_string", self.format in (None, "email") and "string" in self.avro_types
        )
        object.__setattr__(self, "identifier", self.format == "identifier")

    def accepts(self, value: Any) -> bool:
        if self.format == "identifier":
            return isinstance(value, (str, int)) and not isinstance(value, bool)
        if self._enum and value in self.symbols:
            return True
        # bool is an int in Python but never a valid long/double in the data contract
        if isinstance(value, bool) and not self._bool_ok:
            return False
        return isinstance(value, self._py_types)

    def coerce(self, value: Any) -> Any:
        """The value as the output column stores it (identifiers as text, numbers as floats)."""
        if self.format == "identifier":
            return str(value)
        if (
            isinstance(value, int)
            and not isinstance(value, bool)
            and ("double" in self.avro_types or "float" in self.avro_types)
            and "long" not in self.avro_types
            and "int" not in self.avro_types
        ):
            return float(value)
        return value


def _avsc_text(name: str, dirs: tuple[str, ...]) -> str:
    for directory in dirs:
        candidate = Path(directory) / f"{name}.avsc"
        if candidate.is_file():
            return candidate.read_text(encoding="utf-8")
    return resources.files("schemas").joinpath("avro", f"{name}.avsc").read_text(encoding="utf-8")


@cache
def load_avsc(name: str, dirs: tuple[str, ...] = ()) -> dict[str, Any]:
    """The raw JSON of ``<name>.avsc`` from the first of ``dirs`` that has it, else from the
    package's ``schemas/avro/`` (validated by fastavro on first use).

    ``dirs`` is how a policy kept outside the package brings its own schemas
    (:attr:`schemas.policy.Policy.schema_dirs`)."""
    doc = json.loads(_avsc_text(name, dirs))
    fastavro.parse_schema(copy.deepcopy(doc))  # raises SchemaParseException if malformed
    return doc


@cache
def output_schema(category: str, dirs: tuple[str, ...] = ()) -> dict[str, Any]:
    """Parsed output schema of a category: its own columns followed by the policy tag columns
    (always the package's ``tags.avsc``: every sink has the same tag columns)."""
    doc = copy.deepcopy(load_avsc(category, dirs))
    own = {f["name"] for f in doc["fields"]}
    for tag_field in load_avsc("tags")["fields"]:
        if tag_field["name"] in own:
            raise ValueError(f"{category}.avsc redeclares the tag column {tag_field['name']!r}")
        doc["fields"].append(copy.deepcopy(tag_field))
    return fastavro.parse_schema(doc)


def _branches(avro_type: Any) -> list[Any]:
    return avro_type if isinstance(avro_type, list) else [avro_type]


def _spec(f: dict[str, Any]) -> FieldSpec:
    branches = [b for b in _branches(f["type"]) if b != "null"]
    types = tuple(b["type"] if isinstance(b, dict) else b for b in branches)
    symbols = tuple(s for b in branches if isinstance(b, dict) for s in b.get("symbols", ()))
    required = len(branches) == len(_branches(f["type"]))
    return FieldSpec(f["name"], required, types, f.get("format"), symbols)


@cache
def input_fields(source_schema: str, dirs: tuple[str, ...] = ()) -> tuple[FieldSpec, ...]:
    """The allow-listed input fields of a source schema with their requiredness and types."""
    return tuple(_spec(f) for f in load_avsc(source_schema, dirs)["fields"])


def category_input_fields(
    category: str, fingerprints: Mapping[str, str], dirs: tuple[str, ...] = ()
) -> tuple[FieldSpec, ...]:
    """Input contract of a category ingested on its own (``python -m pipelines.ingest``).

    It is the category's output schema read as an input: the event time arrives in any accepted
    form (the parser is told which field it is), and a fingerprinted column is replaced by the
    secret input field it is computed from (required, a string), so a new category needs its
    ``.avsc`` and nothing else.
    """
    specs = []
    for spec in input_fields(category, dirs):
        source = fingerprints.get(spec.name)
        specs.append(FieldSpec(source, True, ("string",)) if source else spec)
    return tuple(specs)


@cache
def category_columns(category: str, dirs: tuple[str, ...] = ()) -> tuple[str, ...]:
    """The columns a category's rows carry before tagging (its .avsc fields, tags excluded)."""
    return tuple(f["name"] for f in load_avsc(category, dirs)["fields"])


@cache
def tag_columns() -> tuple[str, ...]:
    """The policy tag columns every output row carries (``tags.avsc``)."""
    return tuple(f["name"] for f in load_avsc("tags")["fields"])

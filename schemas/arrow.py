"""Derive the Parquet (Arrow) schema of a data category from its Avro schema.

The Avro record schemas in ``schemas/avro/`` are the single source of truth for the
columns of every category. The Parquet files are written with an Arrow schema derived
here, so the two formats can never drift apart: a field added to an ``.avsc`` appears in
both, with the same name, type and nullability.

Only the flat shapes the data contract uses are supported (primitives, enums, arrays of
primitives, ``["null", X]`` unions and the timestamp/date logical types). Anything else
raises :class:`UnsupportedAvroSchemaError` at pipeline construction time instead of writing
a column of surprising type.

Pipeline values follow the project's record conventions: timestamps are ``int`` epoch
microseconds (UTC), so every timestamp logical type maps to ``timestamp[us, tz=UTC]``.

This module must not import Beam (``schemas`` is the bottom layer).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import pyarrow as pa

__all__ = [
    "UnsupportedAvroSchemaError",
    "arrow_column",
    "arrow_schema",
    "check_required",
    "to_arrow_table",
]

# Avro primitive -> Arrow type. "null" alone is not a column type and is rejected.
_PRIMITIVES: dict[str, pa.DataType] = {
    "string": pa.string(),
    "long": pa.int64(),
    "int": pa.int32(),
    "double": pa.float64(),
    "float": pa.float32(),
    "boolean": pa.bool_(),
    "bytes": pa.binary(),
}

_TIMESTAMP = pa.timestamp("us", tz="UTC")

# logicalType -> (allowed Avro base types, Arrow type).
_LOGICAL: dict[str, tuple[frozenset[str], pa.DataType]] = {
    "timestamp-micros": (frozenset({"long"}), _TIMESTAMP),
    "timestamp-millis": (frozenset({"long"}), _TIMESTAMP),
    "date": (frozenset({"int"}), pa.date32()),
    "uuid": (frozenset({"string"}), pa.string()),
}


class UnsupportedAvroSchemaError(ValueError):
    """An Avro schema shape that has no Parquet column mapping in this project."""


def _fullname(name: str, namespace: str | None) -> str:
    if "." in name or not namespace:
        return name
    return f"{namespace}.{name}"


class _Converter:
    """Walks one record schema; remembers named types so references resolve."""

    def __init__(self, record: Mapping[str, Any]) -> None:
        self.named: dict[str, Mapping[str, Any]] = {}
        # fastavro.parse_schema output carries every named type here.
        for full, schema in (record.get("__named_schemas") or {}).items():
            self.named[full] = schema
        self.namespace = record.get("namespace")
        if "." in str(record.get("name", "")):
            self.namespace = str(record["name"]).rsplit(".", 1)[0]

    def _register(self, schema: Mapping[str, Any]) -> None:
        name = schema.get("name")
        if isinstance(name, str):
            full = _fullname(name, schema.get("namespace") or self.namespace)
            self.named[full] = schema
            self.named.setdefault(name.rsplit(".", 1)[-1], schema)

    def _resolve(self, name: str, where: str) -> Mapping[str, Any]:
        for candidate in (name, _fullname(name, self.namespace)):
            if candidate in self.named:
                return self.named[candidate]
        raise UnsupportedAvroSchemaError(f"{where}: unknown Avro type {name!r}")

    def value_type(self, avro_type: Any, where: str) -> pa.DataType:
        """Arrow type of a non-union Avro type."""
        if isinstance(avro_type, str):
            if avro_type in _PRIMITIVES:
                return _PRIMITIVES[avro_type]
            if avro_type == "null":
                raise UnsupportedAvroSchemaError(f"{where}: a bare 'null' type is not a column")
            return self.value_type(self._resolve(avro_type, where), where)
        if isinstance(avro_type, list):
            raise UnsupportedAvroSchemaError(
                f"{where}: nested union {avro_type!r} is not supported"
            )
        if not isinstance(avro_type, Mapping):
            raise UnsupportedAvroSchemaError(f"{where}: not an Avro type: {avro_type!r}")

        base = avro_type.get("type")
        logical = avro_type.get("logicalType")
        if logical in _LOGICAL:
            bases, arrow = _LOGICAL[logical]
            if base not in bases:
                raise UnsupportedAvroSchemaError(
                    f"{where}: logicalType {logical!r} needs base type "
                    f"{'/'.join(sorted(bases))}, got {base!r}"
                )
            return arrow
        if logical is not None and base in _PRIMITIVES:
            # Avro spec: unknown logical types are read as their underlying type.
            if logical in {"decimal", "time-millis", "time-micros", "duration"}:
                raise UnsupportedAvroSchemaError(
                    f"{where}: logicalType {logical!r} is not supported"
                )
            return _PRIMITIVES[base]
        if base in _PRIMITIVES:
            return _PRIMITIVES[base]
        if base == "enum":
            self._register(avro_type)
            return pa.string()
        if base == "array":
            items = avro_type.get("items")
            item_nullable, item_type = self.field_type(items, f"{where}[]")
            if pa.types.is_list(item_type):
                raise UnsupportedAvroSchemaError(f"{where}: arrays of arrays are not supported")
            # "element" is the list item name Parquet writes (compliant nested types), so a
            # schema read back from a file compares equal to this one.
            return pa.list_(pa.field("element", item_type, nullable=item_nullable))
        raise UnsupportedAvroSchemaError(
            f"{where}: Avro type {base!r} is not supported "
            "(only primitives, enums, arrays of primitives and ['null', X] unions)"
        )

    def field_type(self, avro_type: Any, where: str) -> tuple[bool, pa.DataType]:
        """(nullable, Arrow type) of a field type, unwrapping ``["null", X]``."""
        if isinstance(avro_type, list):
            branches = [b for b in avro_type if b != "null"]
            if len(avro_type) - len(branches) != 1 or len(branches) != 1:
                raise UnsupportedAvroSchemaError(
                    f"{where}: only ['null', X] unions are supported, got {avro_type!r}"
                )
            return True, self.value_type(branches[0], where)
        return False, self.value_type(avro_type, where)


def arrow_schema(avro_schema: Mapping[str, Any]) -> pa.Schema:
    """Arrow schema for the Parquet files of one Avro record schema.

    Accepts the plain JSON dict of an ``.avsc`` or the output of ``fastavro.parse_schema``.
    ``["null", X]`` fields become nullable columns; every other field is ``nullable=False``
    so that a missing required value fails the write instead of landing as a null.
    """
    if not isinstance(avro_schema, Mapping) or avro_schema.get("type") != "record":
        raise UnsupportedAvroSchemaError(
            f"expected an Avro record schema (a dict with type 'record'), got {avro_schema!r:.200}"
        )
    name = avro_schema.get("name", "<anonymous>")
    fields = avro_schema.get("fields")
    if not isinstance(fields, list) or not fields:
        raise UnsupportedAvroSchemaError(f"record {name}: 'fields' must be a non-empty list")
    converter = _Converter(avro_schema)
    arrow_fields = []
    seen: set[str] = set()
    for field in fields:
        field_name = field.get("name") if isinstance(field, Mapping) else None
        if not isinstance(field_name, str) or not field_name:
            raise UnsupportedAvroSchemaError(f"record {name}: field without a name: {field!r}")
        if field_name in seen:
            raise UnsupportedAvroSchemaError(f"record {name}: duplicate field {field_name!r}")
        seen.add(field_name)
        nullable, arrow_type = converter.field_type(field.get("type"), f"{name}.{field_name}")
        arrow_fields.append(pa.field(field_name, arrow_type, nullable=nullable))
    return pa.schema(arrow_fields)


def arrow_column(field: pa.Field, values: Sequence[Any]) -> pa.Array:
    """One column of ``field`` from Python values; ValueError (naming the column) for a value
    the type cannot hold or a null in a non-nullable column."""
    try:
        array = pa.array(values, type=field.type)
    except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, OverflowError) as err:
        raise ValueError(f"column {field.name!r} ({field.type}): {err}") from err
    return check_required(field, array)


def check_required(field: pa.Field, array: pa.Array | pa.ChunkedArray) -> pa.Array:
    """``array`` itself, or ValueError naming the column if ``field`` is non-nullable and the
    array has nulls."""
    if not field.nullable and array.null_count:
        raise ValueError(
            f"column {field.name!r} is required (non-null) but {array.null_count} of "
            f"{len(array)} rows have no value"
        )
    return array


def to_arrow_table(rows: Iterable[Mapping[str, Any]], schema: pa.Schema) -> pa.Table:
    """Build a table of ``schema`` from row dicts, column by column.

    Keys that are not in the schema are ignored; missing keys are nulls. A null in a
    non-nullable column raises ``ValueError`` naming the column (before any bytes are
    written). Column-wise ``pa.array`` measured ~5-10% faster than
    ``pa.Table.from_pylist`` on 64k visit-shaped rows (~0.85M rows/s, 14 columns) and
    gives the null check for free.
    """
    rows = rows if isinstance(rows, list) else list(rows)
    arrays = [arrow_column(field, [row.get(field.name) for row in rows]) for field in schema]
    return pa.Table.from_arrays(arrays, schema=schema)

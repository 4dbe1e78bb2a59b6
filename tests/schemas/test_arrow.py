"""schemas.arrow: Avro record schema -> Arrow schema, and rows -> Arrow table."""

from __future__ import annotations

import datetime as dt

import fastavro
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from schemas.arrow import UnsupportedAvroSchemaError, arrow_schema, to_arrow_table

TS_MICROS = {"type": "long", "logicalType": "timestamp-micros"}
TS_MILLIS = {"type": "long", "logicalType": "timestamp-millis"}
UTC_US = pa.timestamp("us", tz="UTC")
EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


def record(*fields: tuple[str, object], name: str = "T", namespace: str | None = None) -> dict:
    schema = {"type": "record", "name": name, "fields": [{"name": n, "type": t} for n, t in fields]}
    if namespace:
        schema["namespace"] = namespace
    return schema


@pytest.mark.parametrize(
    ("avro_type", "arrow_type"),
    [
        ("string", pa.string()),
        ("long", pa.int64()),
        ("int", pa.int32()),
        ("double", pa.float64()),
        ("float", pa.float32()),
        ("boolean", pa.bool_()),
        ("bytes", pa.binary()),
        ({"type": "string"}, pa.string()),
        (TS_MICROS, UTC_US),
        (TS_MILLIS, UTC_US),
        ({"type": "int", "logicalType": "date"}, pa.date32()),
        ({"type": "string", "logicalType": "uuid"}, pa.string()),
        # Avro spec: an unknown logical type reads as its underlying type.
        ({"type": "long", "logicalType": "x-custom"}, pa.int64()),
        ({"type": "enum", "name": "Region", "symbols": ["EEA_UK", "OTHER"]}, pa.string()),
        (
            {"type": "array", "items": "string"},
            pa.list_(pa.field("element", pa.string(), nullable=False)),
        ),
        (
            {"type": "array", "items": "long"},
            pa.list_(pa.field("element", pa.int64(), nullable=False)),
        ),
        (
            {"type": "array", "items": ["null", "double"]},
            pa.list_(pa.field("element", pa.float64(), nullable=True)),
        ),
        (
            {"type": "array", "items": TS_MICROS},
            pa.list_(pa.field("element", UTC_US, nullable=False)),
        ),
    ],
)
def test_every_mapping_required_and_nullable(avro_type, arrow_type):
    schema = arrow_schema(record(("req", avro_type), ("opt", ["null", avro_type])))
    assert schema.field("req").type == arrow_type
    assert schema.field("req").nullable is False
    assert schema.field("opt").type == arrow_type
    assert schema.field("opt").nullable is True


def test_union_order_and_field_order_are_kept():
    schema = arrow_schema(record(("b", ["string", "null"]), ("a", "long"), ("c", ["null", "int"])))
    assert schema.names == ["b", "a", "c"]
    assert [f.nullable for f in schema] == [True, False, True]


def test_plain_json_and_fastavro_parsed_schema_agree():
    plain = record(
        ("region", {"type": "enum", "name": "Region", "symbols": ["EEA_UK", "OTHER", "UNKNOWN"]}),
        ("previous_region", ["null", "Region"]),  # reference by short name
        ("at", TS_MICROS),
        ("tags", {"type": "array", "items": "string"}),
        name="Visit",
        namespace="com.example",
    )
    parsed = fastavro.parse_schema(plain)
    assert parsed["fields"][1]["type"] == ["null", "com.example.Region"]  # fullname reference
    assert arrow_schema(plain) == arrow_schema(parsed)
    assert arrow_schema(parsed).field("previous_region").type == pa.string()


@pytest.mark.parametrize(
    ("avro_type", "message"),
    [
        ({"type": "map", "values": "string"}, "'map' is not supported"),
        ({"type": "fixed", "name": "F", "size": 4}, "'fixed' is not supported"),
        ({"type": "record", "name": "Inner", "fields": [{"name": "x", "type": "int"}]}, "record"),
        (["null", "string", "long"], r"only \['null', X\] unions"),
        (["string", "long"], r"only \['null', X\] unions"),
        (["null"], r"only \['null', X\] unions"),
        ("null", "bare 'null'"),
        ({"type": "array", "items": {"type": "array", "items": "string"}}, "arrays of arrays"),
        ({"type": "bytes", "logicalType": "decimal", "precision": 4}, "'decimal' is not supported"),
        ({"type": "string", "logicalType": "timestamp-micros"}, "needs base type long"),
        ({"type": "long", "logicalType": "date"}, "needs base type int"),
        ("NoSuchType", "unknown Avro type 'NoSuchType'"),
        (42, "not an Avro type"),
    ],
)
def test_unsupported_shapes_raise_clearly(avro_type, message):
    with pytest.raises(UnsupportedAvroSchemaError, match=message) as info:
        arrow_schema(record(("bad", avro_type)))
    assert "T.bad" in str(info.value)  # says which field


@pytest.mark.parametrize(
    "schema",
    [
        {"type": "enum", "name": "E", "symbols": ["A"]},
        {"type": "record", "name": "Empty", "fields": []},
        {"type": "record", "name": "Dup", "fields": [{"name": "a", "type": "int"}] * 2},
        {"type": "record", "name": "NoName", "fields": [{"type": "int"}]},
        "string",
    ],
)
def test_not_a_usable_record_raises(schema):
    with pytest.raises(UnsupportedAvroSchemaError):
        arrow_schema(schema)


def test_unsupported_error_is_a_value_error():
    assert issubclass(UnsupportedAvroSchemaError, ValueError)


# ------------------------------------------------------------------ to_arrow_table

ALL_TYPES = record(
    ("event_id", "string"),
    ("n_long", ["null", "long"]),
    ("n_int", ["null", "int"]),
    ("ratio", ["null", "double"]),
    ("ratio32", ["null", "float"]),
    ("flag", ["null", "boolean"]),
    ("blob", ["null", "bytes"]),
    ("tags", {"type": "array", "items": "string"}),
    ("at", TS_MICROS),
    ("expires_at", ["null", TS_MICROS]),
    ("day", ["null", {"type": "int", "logicalType": "date"}]),
)


def test_to_arrow_table_ignores_unknown_keys_and_fills_missing_nullable():
    schema = arrow_schema(ALL_TYPES)
    rows = [
        {"event_id": "e1", "tags": ["a"], "at": 1, "not_in_schema": "dropped", "ip": "1.2.3.4"},
        {"event_id": "e2", "tags": [], "at": 2, "n_long": 7, "flag": True, "blob": b"\x00\xff"},
    ]
    table = to_arrow_table(rows, schema)
    assert table.schema == schema
    assert "not_in_schema" not in table.column_names
    assert table.column("n_long").to_pylist() == [None, 7]
    assert table.column("blob").to_pylist() == [None, b"\x00\xff"]
    assert table.column("at").to_pylist() == [
        EPOCH + dt.timedelta(microseconds=1),
        EPOCH + dt.timedelta(microseconds=2),
    ]
    assert rows[0]["not_in_schema"] == "dropped"  # input rows untouched


def test_to_arrow_table_rejects_null_in_required_column_naming_it():
    schema = arrow_schema(ALL_TYPES)
    with pytest.raises(ValueError, match=r"column 'at' is required .* 1 of 2 rows"):
        to_arrow_table(
            [{"event_id": "e1", "tags": [], "at": 1}, {"event_id": "e2", "tags": []}], schema
        )


def test_to_arrow_table_rejects_wrong_type_naming_the_column():
    schema = arrow_schema(ALL_TYPES)
    with pytest.raises(ValueError, match="column 'n_long'"):
        to_arrow_table([{"event_id": "e1", "tags": [], "at": 1, "n_long": "seven"}], schema)


def test_to_arrow_table_empty_rows():
    schema = arrow_schema(ALL_TYPES)
    table = to_arrow_table([], schema)
    assert table.num_rows == 0
    assert table.schema == schema


def test_matches_from_pylist():
    schema = arrow_schema(ALL_TYPES)
    rows = [
        {"event_id": f"e{i}", "tags": ["x"] * (i % 3), "at": i * 1_000_003, "ratio": i / 7}
        for i in range(100)
    ]
    assert to_arrow_table(rows, schema).equals(pa.Table.from_pylist(rows, schema=schema))


def test_parquet_round_trip_is_exact(tmp_path):
    schema = arrow_schema(ALL_TYPES)
    rows = [
        {
            "event_id": "e1",
            "n_long": -(2**63),
            "n_int": 2**31 - 1,
            "ratio": 0.1,
            "ratio32": 1.5,
            "flag": False,
            "blob": b"\x00",
            "tags": ["a", "b"],
            "at": 1_735_774_200_000_000,  # 2025-01-01T23:30:00Z
            "expires_at": None,
            "day": 20_089,
        },
        {"event_id": "e2", "tags": [], "at": -1, "expires_at": 0},
    ]
    table = to_arrow_table(rows, schema)
    path = tmp_path / "t.parquet"
    pq.write_table(table, path, compression="snappy")
    back = pq.read_table(path)
    assert back.schema.remove_metadata() == schema
    assert back.equals(table)
    at = back.column("at").to_pylist()
    assert at[0] == dt.datetime(2025, 1, 1, 23, 30, tzinfo=dt.UTC)
    assert at[1] == EPOCH - dt.timedelta(microseconds=1)
    assert at[0].utcoffset() == dt.timedelta(0)


# ---------------------------------------------------------------------- hypothesis

_MIN_US = -62_135_596_800_000_000  # 0001-01-01T00:00:00Z
_MAX_US = 253_402_300_799_999_999  # 9999-12-31T23:59:59.999999Z


def _opt(strategy):
    return st.one_of(st.none(), strategy)


_ROW = st.fixed_dictionaries(
    {
        "event_id": st.text(max_size=20),
        "n_long": _opt(st.integers(-(2**63), 2**63 - 1)),
        "n_int": _opt(st.integers(-(2**31), 2**31 - 1)),
        "ratio": _opt(st.floats(allow_nan=False)),
        "ratio32": _opt(st.floats(width=32, allow_nan=False)),
        "flag": _opt(st.booleans()),
        "blob": _opt(st.binary(max_size=16)),
        "tags": st.lists(st.text(max_size=8), max_size=4),
        "at": st.integers(_MIN_US, _MAX_US),
        "expires_at": _opt(st.integers(_MIN_US, _MAX_US)),
        "day": _opt(st.integers(-719_162, 2_932_896)),  # 0001-01-01 .. 9999-12-31
    },
    optional={"extra": st.text(max_size=5)},
)


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(rows=st.lists(_ROW, max_size=30))
def test_random_rows_round_trip_through_parquet(tmp_path, rows):
    schema = arrow_schema(ALL_TYPES)
    table = to_arrow_table(rows, schema)
    path = tmp_path / "h.parquet"
    pq.write_table(table, path)
    back = pq.read_table(path)
    assert back.equals(table)
    expected = [
        {
            **{k: v for k, v in row.items() if k != "extra"},
            "at": EPOCH + dt.timedelta(microseconds=row["at"]),
            "expires_at": None
            if row["expires_at"] is None
            else EPOCH + dt.timedelta(microseconds=row["expires_at"]),
            "day": None if row["day"] is None else dt.date(1970, 1, 1) + dt.timedelta(row["day"]),
        }
        for row in rows
    ]
    assert back.to_pylist() == expected

"""The same records as input files of each format, for the tests that compare formats.

The bundled samples hold deliberately bad lines; :func:`clean_sample_records` keeps the ones the
reference takes as they are (decoded, declared keys only, valid), so that every format can be
written from them and every difference in the output is the format's. A typed export (BigQuery,
a lake) has one type per column: :func:`as_exported` gives the records so, and the JSON Lines
writer spells its timestamps as ISO-8601, the same instants.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import fastavro
import pyarrow as pa
import pyarrow.parquet as pq

from pipelines.options import bundled
from schemas.avro import input_fields, load_avsc
from schemas.policy import Policy
from transforms.rawinput import RecordError, decode_json_line
from transforms.timestamps import parse_event_time
from transforms.validation import validate_record

# sample name -> (input schema, event-time field)
SAMPLES = {
    "visits": ("visit_input", "visited_at"),
    "sdk_logs": ("sdk_log_input", "logged_at"),
    "telemetry": ("telemetry_input", "reported_at"),
}
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def clean_sample_lines(name: str, policy: Policy) -> list[bytes]:
    """The lines of the bundled sample ``name`` that the reference accepts as they are."""
    schema, event_time = SAMPLES[name]
    specs = input_fields(schema)
    declared = {spec.name for spec in specs}
    clean = []
    for line in Path(bundled(f"sample/{name}.jsonl")).read_bytes().splitlines():
        try:
            obj = decode_json_line(line)
            validate_record(obj, specs, event_time)
        except RecordError:
            continue
        if declared.issuperset(obj) and not policy.minimum_age.blocks(obj):
            clean.append(line)
    return clean


def clean_sample_records(name: str, policy: Policy) -> list[dict[str, Any]]:
    """The objects of :func:`clean_sample_lines`."""
    return [json.loads(line) for line in clean_sample_lines(name, policy)]


def _identifiers_as_text(records: list[dict[str, Any]], name: str) -> list[dict[str, Any]]:
    identifiers = {s.name for s in input_fields(SAMPLES[name][0]) if s.format == "identifier"}
    return [{k: str(v) if k in identifiers else v for k, v in r.items()} for r in records]


def as_exported(records: list[dict[str, Any]], name: str) -> list[dict[str, Any]]:
    """``records`` with one type per field, as a typed export holds them: the event time a UTC
    timestamp (microseconds), identifiers text."""
    event_time = SAMPLES[name][1]
    return [
        {**r, event_time: _EPOCH + timedelta(microseconds=parse_event_time(r[event_time]))}
        for r in _identifiers_as_text(records, name)
    ]


def write_parquet(records: list[dict[str, Any]], path: Path, **options: Any) -> Path:
    """The records as one table: a column for every key any record has (null where absent)."""
    columns = dict.fromkeys(key for record in records for key in record)
    rows = [{key: record.get(key) for key in columns} for record in records]
    pq.write_table(pa.Table.from_pylist(rows), path, **options)
    return path


def write_jsonl(records: list[dict[str, Any]], path: Path) -> Path:
    """One JSON object a line; a timestamp as ISO-8601 with its offset."""
    path.write_text(
        "".join(json.dumps(r, default=datetime.isoformat) + "\n" for r in records), "utf-8"
    )
    return path


def write_avro(records: list[dict[str, Any]], path: Path, name: str) -> Path:
    """The records under their source's input schema (absent fields null, identifiers text,
    the event time as it was: the schema takes a string or a long)."""
    schema = fastavro.parse_schema(load_avsc(SAMPLES[name][0]))
    with path.open("wb") as fh:
        fastavro.writer(fh, schema, _identifiers_as_text(records, name))
    return path

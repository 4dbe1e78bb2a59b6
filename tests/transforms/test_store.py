"""Store's sink seam: a store of another kind is one class, plugged in from outside the package.

The sink here lives in a module written by the test (as a data engineer's own module would be):
it writes each ``(category, table)`` element as an Arrow IPC file and returns the file names, and
Store guards, tags and hands it the tables as it hands them to the Hive sink.
"""

from __future__ import annotations

import importlib
import textwrap

import apache_beam as beam
import pyarrow as pa
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to

from schemas.avro import category_columns, output_schema
from transforms.batches import Rebatch
from transforms.store import Store
from transforms.tag import CategoryOutput

T = 1_790_000_000 * 1_000_000  # 2026-09-21T14:13:20Z

SINK_MODULE = '''
"""A sink of Arrow IPC files, one per (category, table) element."""

import uuid
from pathlib import Path

import apache_beam as beam
import pyarrow as pa


class WriteIpc(beam.PTransform):
    def __init__(self, root):
        super().__init__()
        self.root = root

    def expand(self, tables):
        return tables | beam.Map(_write, self.root)


def _write(element, root):
    category, table = element
    path = Path(root) / category / f"{uuid.uuid4().hex}.arrow"
    path.parent.mkdir(parents=True, exist_ok=True)
    with pa.OSFile(str(path), "wb") as out, pa.ipc.new_file(out, table.schema) as writer:
        writer.write_table(table)
    return str(path)
'''


def _visit(event_id: str, region: str, **extra: object) -> dict[str, object]:
    return {"event_id": event_id, "ip": "8.8.8.8", "visited_at": T, "region": region, **extra}


def test_a_sink_from_outside_the_package_receives_the_stores_tables(
    policy, dl_context, tmp_path, monkeypatch
):
    (tmp_path / "modules").mkdir()
    (tmp_path / "modules" / "ipc_sink.py").write_text(textwrap.dedent(SINK_MODULE))
    monkeypatch.syspath_prepend(str(tmp_path / "modules"))
    sink = importlib.import_module("ipc_sink").WriteIpc(str(tmp_path / "out"))

    corporate = policy.category("corporate_visitor_info")
    outputs = (
        CategoryOutput("website_visit", category_columns("website_visit")),
        CategoryOutput(
            "corporate_visitor_info",
            category_columns("corporate_visitor_info"),
            when_any=corporate.field_groups["company"] + corporate.field_groups["contact"],
        ),
    )
    records = [
        _visit("plain", "OTHER", country="US"),
        _visit("company", "OTHER", country="US", company_name="ACME", company_country="US"),
        _visit("contact", "EEA_UK", contact_name="Jane"),  # forbidden there: a dead letter
    ]
    with TestPipeline(runner="FnApiRunner") as p:
        written, *dead = (
            p
            | beam.Create(records)
            | Rebatch()
            | Store(
                policy=policy,
                outputs=outputs,
                schemas={o.category: output_schema(o.category) for o in outputs},
                extra_keys=("country", "region"),
                context=dl_context,
                sink=sink,
            )
        )
        assert_that(
            dead | beam.Flatten() | beam.Map(lambda d: (d["event_id"], d["error"])),
            equal_to([("contact", "guard:forbidden_field")]),
            label="Dead",
        )
        assert_that(
            written | beam.Map(lambda path: path.endswith(".arrow")) | beam.Distinct(),
            equal_to([True]),  # the sink's own output: its files
            label="Written",
        )

    def read(category: str) -> pa.Table:
        files = sorted((tmp_path / "out" / category).glob("*.arrow"))
        return pa.concat_tables(pa.ipc.open_file(str(f)).read_all() for f in files)

    visits = read("website_visit")
    assert sorted(visits.column("event_id").to_pylist()) == ["company", "plain"]
    assert set(visits.column("retention_rule").to_pylist()) == {"fixed_180d"}
    (company,) = read("corporate_visitor_info").to_pylist()
    assert company["event_id"] == "company" and company["company_name"] == "ACME"
    assert company["data_category"] == "corporate_visitor_info"

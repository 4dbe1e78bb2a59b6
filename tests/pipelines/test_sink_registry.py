"""The sink seam, used from outside the package (EXTENDING.md "A sink").

A sink of Arrow IPC files is one class in a temporary module that registers it; ``--sink ipc``
selects it on the ingestion command line, and no pipeline names it. Its files are read back and
hold the rows the built-in sink writes; the run is committed exactly once (a rerun replaces its
files, it never adds to them).
"""

from __future__ import annotations

import hashlib
import json
from functools import partial
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipelines import sdk_logs
from pipelines.options import bundled
from tests.support.modules import module_fixture
from tests.support.outputs import RUN_TIME
from transforms.sinks import registry

pytestmark = pytest.mark.e2e
INPUT = f"--input={bundled('sample/sdk_logs.jsonl')}"
FLAGS = ["--runner=FnApiRunner", f"--run_time={RUN_TIME}", "--max_dead_letter_ratio=1"]

SINK_MODULE = '''
"""A sink of our own: Arrow IPC files, one per partition and run."""

import os

import apache_beam as beam
import pyarrow as pa
import pyarrow.compute as pc
from apache_beam.io import fileio
from apache_beam.io.filesystems import FileSystems
from apache_beam.transforms.window import GlobalWindow

from transforms.sinks import OPEN_ENDED_EXPIRY_DATE
from transforms.sinks.registry import TableSink, register


def by_partition(element, layout):
    category, table = element
    days = pc.cast(table.column("expires_at"), pa.date32())
    for day in pc.unique(days).to_pylist():
        rows = table.filter(pc.is_null(days) if day is None else pc.equal(days, day))
        expiry = OPEN_ENDED_EXPIRY_DATE if day is None else day.isoformat()
        yield layout.data_dir(category, expiry), rows


def write(element, output_dir, token):
    rel_dir, tables = element
    table = pa.concat_tables(sorted(tables, key=lambda t: t.column("event_id")[0].as_py()))
    table = table.sort_by("event_id")
    path = FileSystems.join(output_dir, rel_dir, f"part-00000-of-00001-{token}.arrow")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with pa.OSFile(path, "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
        writer.write_table(table)
    return fileio.FileResult(path, 0, 1, GlobalWindow(), None, rel_dir)


class WriteIpc(beam.PTransform):
    def __init__(self, *, schemas, formats, output_dir, layout, run_token, **_):
        super().__init__()
        self.output_dir, self.layout, self.token = output_dir, layout, run_token

    def expand(self, tables):
        return (
            tables
            | beam.FlatMap(by_partition, self.layout)
            | beam.GroupByKey()
            | beam.Map(write, self.output_dir, self.token)
        )


register(TableSink("ipc", "Arrow IPC files, one per partition (a test's)", WriteIpc))
'''


ipc_sink = module_fixture(
    "ipc_sink", "ipc_table_sink", SINK_MODULE, partial(registry.unregister, "ipc")
)


def rows(root: Path, pattern: str, read) -> list[str]:
    found = []
    for path in sorted(root.glob(f"data_category=*/expiry_date=*/{pattern}")):
        where = [path.parent.parent.name, path.parent.name]
        found += [json.dumps([where, r], sort_keys=True, default=str) for r in read(path)]
    return sorted(found)


def ipc_rows(path: Path) -> list[dict]:
    return pa.ipc.open_file(str(path)).read_all().to_pylist()


def parquet_rows(path: Path) -> list[dict]:
    return pq.read_table(path).to_pylist()


def inventory(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file() and not str(p.relative_to(root)).startswith(("_reports", "_runs"))
    }


def test_a_registered_sink_is_selected_by_flag_and_committed_exactly_once(ipc_sink, tmp_path):
    out, reference = tmp_path / "out", tmp_path / "reference"
    sdk_logs.main([INPUT, f"--output={out}", "--sink=ipc", *FLAGS])
    sdk_logs.main([INPUT, f"--output={reference}", *FLAGS])  # the built-in sink, for reference
    written = rows(out, "*.arrow", ipc_rows)
    assert written and written == rows(reference, "*.parquet", parquet_rows)
    assert not list(out.rglob("*.parquet"))  # the data went through the sink selected
    letters = sorted(p.relative_to(out) for p in out.glob("_dead_letter/*/*/*.jsonl"))
    assert letters == sorted(p.relative_to(reference) for p in reference.glob("_dead_letter/*/*/*"))
    first = inventory(out)

    sdk_logs.main([INPUT, f"--output={out}", "--sink=ipc", *FLAGS])  # the same run again
    assert inventory(out) == first  # replaced, never added to
    assert rows(out, "*.arrow", ipc_rows) == written
    assert not list(out.glob("_runs/*/"))  # committed: no staging left
    (report,) = [json.loads(p.read_text()) for p in out.glob("_reports/sdk_logs-*.json")]
    assert report["attempt"]["number"] == 2 and report["attempt"]["replaced"]
    (expected,) = [json.loads(p.read_text()) for p in reference.glob("_reports/sdk_logs-*.json")]
    assert report["counts"] == expected["counts"]  # written.<category> counted for the sink
    assert report["reconciliation"]["reconciled"]


def test_help_lists_the_registered_sinks_and_layouts(ipc_sink, capsys):
    with pytest.raises(SystemExit) as stop:
        sdk_logs.main(["--help"])
    assert stop.value.code == 0
    shown = " ".join(capsys.readouterr().out.split())
    assert "--sink" in shown and "--layout" in shown
    assert "files: Parquet and/or Avro files" in shown
    assert "ipc: Arrow IPC files, one per partition (a test's)" in shown
    assert "Storage layout of the partitions under --output: hive" in shown


def test_an_unknown_sink_fails_before_anything_is_written(tmp_path):
    with pytest.raises(SystemExit) as stop:
        sdk_logs.main([INPUT, f"--output={tmp_path / 'o'}", "--sink=nope", *FLAGS])
    assert str(stop.value).startswith("error: --sink: unknown sink 'nope' (registered: files")
    assert not (tmp_path / "o").exists()


def test_sinks_are_registered_once():
    (files,) = registry.BUILT_IN
    assert registry.sink_named("files") is files and registry.register(files) is files
    with pytest.raises(ValueError, match="already registered"):
        registry.register(registry.TableSink("files", "another", object))
    registry.unregister("files")  # the built-in sink stays
    assert registry.sinks()[0] is files


@pytest.mark.parametrize("name", ["", "Files", "files-v2", "../x", "a" * 33, "1st", "a b"])
def test_a_sink_or_layout_name_is_a_plain_command_line_value(name):
    """Names are what --sink/--layout (and the Dataflow template's parameters) accept: never a
    path, a flag or a value that needs quoting."""
    with pytest.raises(ValueError, match="must match"):
        registry.register(registry.TableSink(name, "a test's", object))
    assert name not in [s.name for s in registry.sinks()]

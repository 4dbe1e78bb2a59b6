"""Parquet input end to end, the way BigQuery and lake exports arrive: the pipelines read a
Parquet file into the same rows as the same records in JSON Lines, and a corrupt Parquet file
ends as one dead letter, like a corrupt Avro file, while the rest of the input is written."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipelines.__main__ import SOURCES, sample_args
from schemas.policy import load_policy
from tests.support.inputs import as_exported, clean_sample_records, write_jsonl, write_parquet
from tests.support.outputs import dead_letters, read_rows

pytestmark = pytest.mark.e2e


def _run(name: str, pattern: Path | str, out: Path, *extra: str) -> dict:
    """The pipeline ``name`` in process, as ``python -m pipelines`` runs it, on ``pattern``."""
    run, defaults = next((run, defaults) for n, run, defaults in SOURCES if n == name)
    return run(sample_args(defaults, [f"--input={pattern}", f"--output={out}", *extra]))


def _rows(out: Path) -> list[str]:
    return sorted(json.dumps(r, sort_keys=True, default=str) for r in read_rows(out)["parquet"])


@pytest.mark.parametrize("name", ["visits", "sdk_logs"])
def test_parquet_input_gives_the_rows_of_the_same_records_in_json_lines(tmp_path, name):
    """The bundled sample's records as an export holds them (event times as UTC timestamps,
    identifiers as text), written once as Parquet (small row groups: read a batch at a time)
    and once as JSON Lines: the same rows, counters and no dead letter."""
    records = as_exported(clean_sample_records(name, load_policy()), name)
    inputs = {
        "jsonl": write_jsonl(records, tmp_path / "in.jsonl"),
        "parquet": write_parquet(records, tmp_path / "export.parquet", row_group_size=50),
    }
    reports = {fmt: _run(name, path, tmp_path / fmt) for fmt, path in inputs.items()}
    assert _rows(tmp_path / "parquet") == _rows(tmp_path / "jsonl")
    assert len(_rows(tmp_path / "parquet")) > 50
    counts = {fmt: report["counts"] for fmt, report in reports.items()}
    assert counts["parquet"] == counts["jsonl"]
    assert counts["parquet"]["read"] == len(records)
    assert counts["parquet"]["dead_lettered_total"] == 0
    assert reports["parquet"]["columnar_fallbacks"] == {}


def test_a_corrupt_parquet_file_is_one_dead_letter_and_the_rest_is_written(tmp_path):
    """``*.parquet`` is read as Parquet; a file that is no Parquet ends as one
    ``unreadable_file:<error>`` dead letter, without its bytes, and the run reconciles."""
    records = as_exported(clean_sample_records("visits", load_policy()), "visits")
    inputs = tmp_path / "in"
    inputs.mkdir()
    write_parquet(records, inputs / "good.parquet")
    (inputs / "broken.parquet").write_bytes(b"PAR1" + b"\x00 not a page " * 64 + b"PAR1")
    out = tmp_path / "out"
    report = _run("visits", inputs / "*.parquet", out)
    assert report["counts"]["read"] == len(records) + 1
    assert report["reconciliation"]["reconciled"]
    (letter,) = dead_letters(out, "visits")
    assert letter["error"].startswith("unreadable_file:")
    assert json.loads(letter["raw"])["file"].endswith("broken.parquet")
    visits = [r for r in read_rows(out)["parquet"] if r["data_category"] == "website_visit"]
    expired = report["counts"]["expired_on_arrival"].get("website_visit", 0)
    assert len(visits) + expired == len(records)  # every record of the good file

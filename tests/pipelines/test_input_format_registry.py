"""The input-format seam, used from outside the package (EXTENDING.md "An input format").

A format of our own (a file holding one JSON array of records, as some REST exports do) is one
class in a temporary module that registers it; ``auto`` reads ``*.json`` in it and
``--input_format json_array`` names it, with no edit of the reader, the parser or the command
line. Its rows are those of the same records in JSON Lines, and a file it cannot read ends as
one dead letter, never a failed job.
"""

from __future__ import annotations

import json
from functools import partial
from pathlib import Path

import pytest

from pipelines.__main__ import SOURCES, sample_args
from pipelines.options import IngestOptions, flags_of
from schemas.policy import load_policy
from tests.support.inputs import clean_sample_records, write_jsonl
from tests.support.modules import module_fixture
from tests.support.outputs import dead_letters, read_rows
from transforms import inputformats

pytestmark = pytest.mark.e2e

FORMAT_MODULE = '''
"""An input format of our own: one JSON array of records per file, read whole."""

import json

from transforms.elements import Batch
from transforms.inputformats import InputFormat, register
from transforms.rawinput import ReadFailure


class JsonArrayFormat(InputFormat):
    name = "json_array"
    suffixes = (".json",)

    def read(self, fh, byte_range, batch_size, max_line_bytes):
        try:
            records = json.load(fh)
            if not isinstance(records, list):
                raise ValueError("not a JSON array")
        except ValueError as err:  # JSONDecodeError and UnicodeDecodeError included
            yield Batch([ReadFailure(byte_range.path, 0, type(err).__name__)])
            return
        for start in range(0, len(records), batch_size):
            yield Batch(records[start : start + batch_size])


register(JsonArrayFormat())
'''


json_array = module_fixture(
    "json_array", "json_array_format", FORMAT_MODULE, partial(inputformats.unregister, "json_array")
)


def _run(name: str, pattern: Path, out: Path, *extra: str) -> dict:
    run, defaults = next((run, defaults) for n, run, defaults in SOURCES if n == name)
    return run(sample_args(defaults, [f"--input={pattern}", f"--output={out}", *extra]))


def _rows(out: Path) -> list[str]:
    return sorted(json.dumps(r, sort_keys=True, default=str) for r in read_rows(out)["parquet"])


@pytest.mark.parametrize("flag", [(), ("--input_format=json_array",)])
def test_a_registered_format_reads_the_rows_of_the_same_records_in_json_lines(
    json_array, tmp_path, flag
):
    records = clean_sample_records("sdk_logs", load_policy())
    (tmp_path / "export.json").write_text(json.dumps(records))
    reports = {
        "json_array": _run("sdk_logs", tmp_path / "export.json", tmp_path / "array", *flag),
        "jsonl": _run("sdk_logs", write_jsonl(records, tmp_path / "in.jsonl"), tmp_path / "ref"),
    }
    assert _rows(tmp_path / "array") == _rows(tmp_path / "ref") != []
    assert reports["json_array"]["counts"] == reports["jsonl"]["counts"]
    assert reports["json_array"]["counts"]["read"] == len(records)
    assert reports["json_array"]["columnar_fallbacks"] == {}


def test_a_file_the_format_cannot_read_is_one_dead_letter(json_array, tmp_path):
    records = clean_sample_records("sdk_logs", load_policy())
    inputs = tmp_path / "in"
    inputs.mkdir()
    (inputs / "good.json").write_text(json.dumps(records))
    (inputs / "broken.json").write_text('{"not": "an array"')
    report = _run("sdk_logs", inputs / "*.json", tmp_path / "out")
    assert report["counts"]["read"] == len(records) + 1
    assert report["reconciliation"]["reconciled"]
    (letter,) = dead_letters(tmp_path / "out", "sdk_logs")
    assert letter["error"].startswith("unreadable_file:")
    assert json.loads(letter["raw"])["file"].endswith("broken.json")


def test_the_help_lists_a_registered_format(json_array):
    help_text = flags_of([IngestOptions])["--input_format"].help
    assert "json_array" in help_text and "*.json as json_array" in help_text


@pytest.mark.parametrize("name", ["auto", "JSON", "../x", ""])
def test_a_format_name_is_a_plain_value_and_not_auto(name):
    kind = type("Named", (inputformats.InputFormat,), {"name": name})
    with pytest.raises(ValueError):
        inputformats.register(kind())
    assert name not in inputformats.format_names()

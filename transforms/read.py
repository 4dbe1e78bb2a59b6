"""Read: files on local disk or any Beam filesystem (gs://, s3://) as raw elements for Parse.

JSON Lines are read as *bytes* (not text) so that a line that is not valid UTF-8 becomes an
``invalid_encoding`` dead letter instead of failing the bundle; Avro files yield the records
fastavro decodes (dicts). The format is chosen by the caller or from the file extension.
"""

from __future__ import annotations

import apache_beam as beam
from apache_beam.coders import BytesCoder

__all__ = ["INPUT_FORMATS", "ReadRecords", "resolve_input_format"]

INPUT_FORMATS = ("auto", "jsonl", "avro")


def resolve_input_format(pattern: str, input_format: str = "auto") -> str:
    """``jsonl`` or ``avro``; ``auto`` picks Avro for ``*.avro`` patterns, JSON Lines otherwise."""
    if input_format not in INPUT_FORMATS:
        raise ValueError(f"input format must be one of {INPUT_FORMATS}, got {input_format!r}")
    if input_format != "auto":
        return input_format
    return "avro" if pattern.rstrip("*").endswith(".avro") else "jsonl"


class ReadRecords(beam.PTransform):
    """Raw elements of every file matching ``pattern``: bytes lines or Avro dicts."""

    def __init__(self, pattern: str, input_format: str = "auto") -> None:
        super().__init__()
        self._pattern = pattern
        self._format = resolve_input_format(pattern, input_format)

    def expand(self, pbegin):
        if self._format == "avro":
            return pbegin | "ReadAvro" >> beam.io.ReadFromAvro(self._pattern)
        return pbegin | "ReadJsonLines" >> beam.io.ReadFromText(self._pattern, coder=BytesCoder())

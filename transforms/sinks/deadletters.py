"""``WriteDeadLetters``: dead letters as JSON Lines under ``_dead_letter/source=/expiry_date=``.

Dead letters take the data's bounded-memory path (``tables.SpillAndCompact``): each letter
becomes one JSON line (:func:`dead_letter_json`) in an Arrow table of ``{expires_at, line}``
per source and bundle, the tables are spilled as sorted runs, and each partition is compacted
into one ``.jsonl`` file, the lines written as they are.

Why: dead letters are not always few. A producer that breaks its time format turns every
line into one, and the previous row path (Beam's ``fileio.WriteToFiles``, every letter
grouped by destination) held them all in memory: 1M visits with an unparseable time peaked
at 6.0 GiB (all processes). Through the spill the sink holds about its buffer, whatever their
number; the letters must reach it unflattened for the whole job to stay bounded on the
FnApiRunner (:class:`WriteDeadLetters`; ``bench/RESULTS.md``, ``python -m bench.run
--pipeline visits_bad_times``).
"""

from __future__ import annotations

import base64
import datetime as dt
import functools
import json
from collections.abc import Mapping, Sequence
from typing import Any, Unpack

import apache_beam as beam
import pyarrow as pa
from apache_beam.io import fileio
from apache_beam.io.fileio import FileMetadata
from apache_beam.io.filesystem import CompressionTypes

from transforms.counters import counter
from transforms.sinks.files import MIME_TYPES, JsonLinesFileWriter
from transforms.sinks.layout import check_micros, check_shards, micros_to_iso
from transforms.sinks.rows import DEFAULT_TABLE_ROWS, GatherTables
from transforms.sinks.storage import DEAD_LETTER
from transforms.sinks.tables import SpillAndCompact, SpillOptions, TableOutput

# The letters of a run share their expiry (the run time + the policy's period): formatting it
# once instead of per letter took dead_letter_json from 7.1 to 4.9 µs for a 500-byte letter.
_expiry_iso = functools.lru_cache(maxsize=256)(micros_to_iso)

# What a dead letter travels as from its letter to its file: the expiry that partitions it
# and its JSON line.
LETTER_SCHEMA = pa.schema(
    [pa.field("expires_at", pa.int64()), pa.field("line", pa.string(), nullable=False)]
)


def _json_default(value: object) -> object:
    """Dead letters must never be lost to an encoding error: degrade, do not raise."""
    if isinstance(value, bytes | bytearray | memoryview):
        raw = bytes(value)
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            return {"base64": base64.b64encode(raw).decode("ascii")}
    if isinstance(value, dt.datetime | dt.date):
        return value.isoformat()
    if isinstance(value, set | frozenset):
        return sorted(value, key=str)
    return str(value)


def dead_letter_json(record: Mapping[str, Any]) -> str:
    """One JSON line (no newline): sorted keys, ``expires_at`` as ISO-8601 UTC ``...Z``.

    Non-ASCII text stays readable; a string that is not encodable as UTF-8 (a lone
    surrogate) makes the whole line fall back to ASCII escapes rather than fail.
    """
    out = dict(record)
    expires_at = out.get("expires_at")
    if isinstance(expires_at, int) and not isinstance(expires_at, bool):
        out["expires_at"] = _expiry_iso(expires_at)
    text = json.dumps(out, sort_keys=True, ensure_ascii=False, default=_json_default)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        text = json.dumps(out, sort_keys=True, ensure_ascii=True, default=_json_default)
    return text


def dead_letter_reason(dead_letter: Mapping[str, Any]) -> str:
    """Counter suffix: the dead letter's ``error`` up to the first ':' ("unknown" if none)."""
    error = dead_letter.get("error")
    reason = str(error).split(":", 1)[0].strip() if error is not None else ""
    return reason or "unknown"


class JsonLinesSink(fileio.FileSink):
    """UTF-8 JSON Lines of dead-letter dicts (see :func:`dead_letter_json`)."""

    def create_metadata(self, destination: str, full_file_name: str) -> FileMetadata:
        return FileMetadata(
            mime_type=MIME_TYPES["jsonl"], compression_type=CompressionTypes.UNCOMPRESSED
        )

    def open(self, fh) -> None:
        self._fh = fh

    def write(self, record: Mapping[str, Any]) -> None:
        self._fh.write(dead_letter_json(record).encode("utf-8"))
        self._fh.write(b"\n")

    def flush(self) -> None:
        self._fh.flush()


class DeadLetterLines(TableOutput):
    """Dead letters: ``_dead_letter/source=/expiry_date=`` partitions of JSON Lines files,
    tables of :data:`LETTER_SCHEMA` of any source, a letter's shard the CRC32 of its line."""

    name = "dead-letters"
    formats = ("jsonl",)
    shard_key = "line"
    row_counter = None  # counted by reason, in LettersToTables
    partitions = DEAD_LETTER

    def __init__(self, shards: int) -> None:
        self.shards = shards

    def accept(self, kind: object, table: object) -> pa.Table:
        if not (isinstance(table, pa.Table) and table.schema.equals(LETTER_SCHEMA)):
            got = table.schema if isinstance(table, pa.Table) else type(table).__name__
            raise TypeError(f"dead letters travel as tables of LETTER_SCHEMA, got {got}")
        return table

    def writer(self, fmt: str, kind: str, handle) -> JsonLinesFileWriter:
        return JsonLinesFileWriter(handle, "line")


class LettersToTables(GatherTables):
    """Dead-letter dicts -> ``(source, table of LETTER_SCHEMA)``; counts
    ``dead_letter.<reason>`` per letter. A letter is kept as its JSON line only, and a table
    is cut at ``bytes_per_table`` bytes of lines as well as at ``rows_per_table`` letters: a
    dead letter holds a whole input line, and input lines can be long."""

    def setup(self) -> None:
        self._counters: dict[str, Any] = {}

    def gather(self, row: Any) -> tuple[str, tuple[int | None, str], int]:
        if not isinstance(row, Mapping):
            raise TypeError(f"a dead letter must be a dict, got {type(row).__name__}")
        reason = dead_letter_reason(row)
        letters = self._counters.get(reason)
        if letters is None:
            letters = self._counters[reason] = counter(f"dead_letter.{reason}")
        letters.inc()
        source = row.get("source")
        expires_at = row.get("expires_at")
        if expires_at is not None:
            check_micros(expires_at, "expires_at")
        line = dead_letter_json(row)
        # "" and None alike: Hive's null partition
        return ("" if source is None else str(source)), (expires_at, line), len(line)

    def table(self, kind: str, items: Sequence[tuple[int | None, str]]) -> pa.Table:
        expiries, lines = zip(*items, strict=True)
        return pa.Table.from_arrays(
            [pa.array(expiries, pa.int64()), pa.array(lines, pa.string())], schema=LETTER_SCHEMA
        )


class WriteDeadLetters(SpillAndCompact):
    """Write dead letters as JSON Lines under ``_dead_letter/source=/expiry_date=``.

    Dead letters hold personal data too (the raw input, already masked by the producer),
    so they are partitioned by expiry date like the data and purged the same way. Counts
    ``dead_letter.<reason>`` per letter. One file per partition (and shard) per run, whatever
    the number of letters: the sink holds about ``buffer_bytes`` per worker, like the data's.
    Returns the ``fileio.FileResult`` of every file written.

    Takes a PCollection of dead-letter dicts, or several: ``(parse_dead, store_dead) |
    WriteDeadLetters(out)`` spills each where it is produced, where flattening them first
    makes the FnApiRunner hold every letter in memory (see :class:`SpillAndCompact`).
    ``spill``: the options of :class:`SpillAndCompact` (``run_token``, ``buffer_bytes``,
    ``remove_temp``, ``layout``).
    """

    def __init__(
        self,
        output_dir: str,
        shards_per_partition: int | None = None,
        **spill: Unpack[SpillOptions],
    ) -> None:
        output = DeadLetterLines(check_shards(shards_per_partition))
        super().__init__(output, output_dir, **spill)

    def to_tables(self, pcoll: beam.PCollection, suffix: str) -> beam.PCollection:
        # A table of lines is a small part of the buffer it goes to (which spills at half).
        gather = LettersToTables(DEFAULT_TABLE_ROWS, max(1, self.buffer_bytes // 8))
        return pcoll | f"ToTables{suffix}" >> beam.ParDo(gather)

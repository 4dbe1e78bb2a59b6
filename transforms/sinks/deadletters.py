"""``WriteDeadLetters``: dead letters as JSON Lines under ``_dead_letter/source=/expiry_date=``.

Dead letters are few, so they keep the row path: Beam's ``fileio.WriteToFiles`` with every
record grouped by destination. The package docstring says what ``WriteToFiles`` leaves
undone and how it is made up for here: the partition directory is created by the file
naming, every moved file is checked to exist, and the temp directory is removed once empty.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import logging
import operator
import zlib
from collections.abc import Mapping
from typing import Any

import apache_beam as beam
from apache_beam.io import fileio
from apache_beam.io.fileio import FileMetadata
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems
from apache_beam.options.value_provider import StaticValueProvider
from apache_beam.transforms.window import GlobalWindow

from transforms.counters import counter
from transforms.sinks.layout import (
    EXTENSIONS,
    Destination,
    _check_shards,
    _ensure_dir,
    _new_token,
    _part_name,
    dead_letter_path,
    micros_to_iso,
)

_LOG = logging.getLogger(__name__)


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
        out["expires_at"] = micros_to_iso(expires_at)
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
            mime_type="application/x-ndjson", compression_type=CompressionTypes.UNCOMPRESSED
        )

    def open(self, fh) -> None:
        self._fh = fh

    def write(self, record: Mapping[str, Any]) -> None:
        self._fh.write(dead_letter_json(record).encode("utf-8"))
        self._fh.write(b"\n")

    def flush(self) -> None:
        self._fh.flush()


class _KeyedJsonLinesSink(JsonLinesSink):
    """Writes the dead letter of a ``(destination, dead letter)`` element: WriteToFiles hands
    its sink the keyed element whole."""

    def write(self, record: tuple[Destination, Mapping[str, Any]]) -> None:
        super().write(record[1])


class _PartitionFileNaming:
    """``file_naming=`` for WriteToFiles: ``<dir>/part-<shard>-of-<n>-<token>.jsonl``.

    WriteToFiles renames its temp files to ``path/<name>`` without creating the
    sub-directories of ``name``, so the directory is created here, right before the move.
    """

    def __init__(self, output_dir: str, token: str) -> None:
        self.output_dir = output_dir
        self.token = token

    def __call__(self, window, pane, shard_index, total_shards, compression, destination):
        _kind, rel_dir, shard, shards = destination
        name = _part_name(shard, shards, self.token)
        if window is not None and window != GlobalWindow():
            start = window.start.to_utc_datetime().strftime("%Y%m%dT%H%M%S")
            end = window.end.to_utc_datetime().strftime("%Y%m%dT%H%M%S")
            name += f"-{start}-{end}"
        if total_shards and total_shards > 1:  # only if a destination got several temp files
            name += f"-{shard_index}"
        _ensure_dir(FileSystems.join(self.output_dir, rel_dir))
        return f"{rel_dir}/{name}{EXTENSIONS['jsonl']}"


class _VerifyMoved(beam.DoFn):
    """WriteToFiles logs and ignores a failed rename; make a missing file fail loudly."""

    def __init__(self, output_dir: str) -> None:
        self.output_dir = output_dir

    def process(self, result: fileio.FileResult):
        full = FileSystems.join(self.output_dir, result.file_name)
        if not FileSystems.exists(full):
            raise OSError(
                f"written file {full} is missing: WriteToFiles could not move it out of "
                "its temp directory (see DEBUG logs of apache_beam.io.fileio)"
            )
        _kind, _rel_dir, shard, shards = result.destination
        yield result._replace(file_name=full, shard_index=shard, total_shards=shards)


def _remove_temp_dir(_count: int, temp_dir: str) -> None:
    """Remove WriteToFiles' temp directory once it holds no file any more."""
    try:
        if not FileSystems.exists(temp_dir):
            return
        leftovers = FileSystems.match([FileSystems.join(temp_dir, "*")])[0].metadata_list
        if leftovers:
            _LOG.warning("leaving %s: %d temp files remain", temp_dir, len(leftovers))
            return
        FileSystems.delete([temp_dir])
    except OSError as err:  # BeamIOError is an OSError; cleanup is best effort
        _LOG.warning("could not remove temp directory %s: %s", temp_dir, err)


class _WriteJsonLines(beam.PTransform):
    """``(Destination, dead letter)`` -> one file per destination, moved into the layout."""

    def __init__(self, output_dir: str, token: str) -> None:
        super().__init__()
        self.output_dir = output_dir
        self.token = token

    def expand(self, keyed):
        temp_dir = FileSystems.join(self.output_dir, f".temp-{self.token}-jsonl")
        files = (
            keyed
            | "WriteToFiles"
            >> fileio.WriteToFiles(
                path=self.output_dir,
                file_naming=_PartitionFileNaming(self.output_dir, self.token),
                destination=operator.itemgetter(0),
                sink=_KeyedJsonLinesSink,  # a FileSink class: one instance per destination
                temp_directory=StaticValueProvider(str, temp_dir),
                # The shard is part of the destination; WriteToFiles must not add its own.
                shards=1,
                # 0 writers per bundle: every record takes the grouped (spilled) path, so
                # the number of files per destination does not depend on bundling.
                max_writers_per_bundle=0,
            )
            | "VerifyMoved" >> beam.ParDo(_VerifyMoved(self.output_dir))
        )
        _ = (
            files
            | "CountFiles" >> beam.combiners.Count.Globally().without_defaults()
            | "RemoveTempDir" >> beam.Map(_remove_temp_dir, temp_dir)
        )
        return files


class _AssignDeadLetter(beam.DoFn):
    def __init__(self, shards: int) -> None:
        self.shards = shards
        self._counters: dict[str, Any] = {}

    def process(self, dead_letter: Mapping[str, Any]):
        if not isinstance(dead_letter, Mapping):
            raise TypeError(f"a dead letter must be a dict, got {type(dead_letter).__name__}")
        reason = dead_letter_reason(dead_letter)
        letters = self._counters.get(reason)
        if letters is None:
            letters = self._counters[reason] = counter(f"dead_letter.{reason}")
        letters.inc()
        source = dead_letter.get("source")
        source = None if source is None else str(source)
        shard = 0
        if self.shards > 1:
            shard = zlib.crc32(dead_letter_json(dead_letter).encode("utf-8", "surrogatepass"))
            shard %= self.shards
        rel_dir = dead_letter_path(source, dead_letter.get("expires_at"))
        yield (source or "", rel_dir, shard, self.shards), dead_letter


class WriteDeadLetters(beam.PTransform):
    """Write dead letters as JSON Lines under ``_dead_letter/source=/expiry_date=``.

    Dead letters hold personal data too (the raw input, already masked by the producer),
    so they are partitioned by expiry date like the data and purged the same way. Counts
    ``dead_letter.<reason>`` per letter. Returns the ``FileResult`` of every file written.
    """

    def __init__(
        self,
        output_dir: str,
        shards_per_partition: int | None = None,
        *,
        run_token: str | None = None,
    ) -> None:
        super().__init__()
        self.output_dir = output_dir
        self.shards = _check_shards(shards_per_partition)
        self.run_token = run_token or _new_token()

    def expand(self, dead_letters):
        return (
            dead_letters
            | "AssignPartition" >> beam.ParDo(_AssignDeadLetter(self.shards))
            | "WriteJsonLines" >> _WriteJsonLines(self.output_dir, self.run_token)
        )

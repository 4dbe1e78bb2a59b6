"""Spill and compaction: ``(kind, pyarrow.Table)`` elements to one file per partition and
format, in bounded memory; :class:`WriteTables` writes the data with it, ``WriteDeadLetters``
the dead letters.

The two steps of the package docstring: ``BufferPartitions`` buffers a bundle's tables and
spills them as sorted runs (``transforms.sinks.runs``); only references to the runs cross the
``GroupByKey``; ``Compact`` streams each destination's slices into its final files
(``transforms.sinks.files``) and renames them into the layout; the temp files go once every
destination is written. What differs between data rows and dead letters (the directory of a
partition, the checks, the file formats and writers, the column a row is sharded by) is a
:class:`TableOutput`; the steps are the same code for both.
"""

from __future__ import annotations

import logging
import uuid
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, TypedDict, Unpack

import apache_beam as beam
import fastavro
import pyarrow as pa
import pyarrow.compute as pc
from apache_beam.io import fileio
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics
from apache_beam.transforms.window import GlobalWindow, GlobalWindows

from schemas.arrow import arrow_schema, check_required
from transforms.counters import counter
from transforms.paths import delete_paths, literal_pattern, match
from transforms.sinks.files import (
    DEFAULT_AVRO_CODEC,
    DEFAULT_PARQUET_CODEC,
    DEFAULT_ROW_GROUP_SIZE,
    MIME_TYPES,
    AvroFileWriter,
    ParquetFileWriter,
    check_avro_codec,
    check_parquet_codec,
    check_row_group_size,
)
from transforms.sinks.layout import (
    EXTENSIONS,
    FORMATS,
    Destination,
    check_shards,
    ensure_dir,
    new_token,
    part_name,
)
from transforms.sinks.marker import layout_for_output
from transforms.sinks.runs import (
    IPC_EXTENSION,
    RunSlice,
    destination_keys,
    destination_of_key,
    read_run,
    sort_run,
    write_run,
)
from transforms.sinks.storage import DATA, HIVE, StorageLayout, layout_named

_LOG = logging.getLogger(__name__)

# Bytes of Arrow data one BufferPartitions instance (one bundle) keeps before it spills.
DEFAULT_BUFFER_BYTES = 64 * 1024 * 1024
# Namespace of the sinks' own metrics (``spilled_runs``: temp files written), kept out of the
# project's namespace, whose counters are the run report's and do not depend on bundling.
METRICS_NAMESPACE = "transforms.sinks"


class TableOutput(ABC):
    """What the spill and the compaction need to know about one kind of output.

    A *kind* is what a partition is of (a data category, a dead letter's source); a
    destination is ``(kind, directory, shard, shards)``, the directory the storage layout's
    for the kind and the rows' expiry date (:func:`directory_of`).
    """

    #: Suffix of the temp directory, ``.temp-<run token>-<name>``.
    name: str
    #: File formats (keys of ``layout.EXTENSIONS``): one file of each per destination.
    formats: tuple[str, ...]
    #: Files per partition; a row's shard is the CRC32 of its ``shard_key`` column.
    shards: int
    shard_key: str
    #: Counter of the rows of each kind, ``<row_counter><kind>``; None counts nothing.
    row_counter: str | None
    #: ``storage.DATA`` or ``storage.DEAD_LETTER``: which directories of the storage layout
    #: its partitions are (``data_path`` or ``dead_letter_path``).
    partitions: str

    @abstractmethod
    def accept(self, kind: object, table: object) -> pa.Table:
        """The table of an element, checked: raise (fail the pipeline) on anything else."""

    @abstractmethod
    def writer(self, fmt: str, kind: str, handle) -> Any:
        """A file writer of ``transforms.sinks.files`` (``write``, ``close``, ``abort``) for
        the tables of ``kind`` in format ``fmt``, writing to ``handle``."""


def _check_expires_at(schema: pa.Schema, category: str) -> None:
    if "expires_at" not in schema.names:
        return
    kind = schema.field("expires_at").type
    if not (pa.types.is_timestamp(kind) or pa.types.is_integer(kind)):
        raise ValueError(
            f"category {category!r}: expires_at must be a timestamp (or int micros) column, "
            f"got {kind}"
        )


def no_schema(what: str, category: object, known: Iterable[str], detail: str) -> ValueError:
    # Fail closed: the Guard dead-letters rows of unknown categories, so reaching here is a
    # wiring bug; writing the rows with a guessed schema would be worse.
    return ValueError(
        f"{what}: no schema for data_category {category!r} (known: {sorted(known)}); {detail}"
    )


class DataTables(TableOutput):
    """Data rows: the data partitions of the layout, of Parquet and/or Avro files, one
    Arrow schema per category (``schemas.arrow.arrow_schema``), sharded by ``event_id``,
    counted as ``written.<category>``. Every schema and codec is checked here, at
    construction, rather than on a worker."""

    shard_key = "event_id"
    row_counter = "written."
    partitions = DATA

    def __init__(
        self,
        schemas: Mapping[str, Mapping[str, Any]],
        formats: Sequence[str] = ("parquet",),
        shards: int = 1,
        *,
        parquet_codec: str = DEFAULT_PARQUET_CODEC,
        avro_codec: str = DEFAULT_AVRO_CODEC,
        row_group_size: int = DEFAULT_ROW_GROUP_SIZE,
    ) -> None:
        if not schemas:
            raise ValueError("WriteTables needs at least one category schema")
        formats = tuple(dict.fromkeys(formats))
        unknown = [f for f in formats if f not in FORMATS]
        if not formats or unknown:
            raise ValueError(f"formats must be a non-empty subset of {FORMATS}, got {formats!r}")
        self.schemas = {category: dict(schema) for category, schema in schemas.items()}
        self.formats = formats
        self.shards = shards
        # Tables are Arrow whatever the formats, so every schema needs its Arrow mapping.
        self.arrow = {category: arrow_schema(schema) for category, schema in self.schemas.items()}
        for category, schema in self.arrow.items():
            _check_expires_at(schema, category)
        if "parquet" in formats:
            check_parquet_codec(parquet_codec)
            check_row_group_size(row_group_size)
        if "avro" in formats:
            for schema in self.schemas.values():
                fastavro.parse_schema(dict(schema))
            check_avro_codec(avro_codec)
        self.parquet_codec = parquet_codec
        self.avro_codec = avro_codec
        self.row_group_size = row_group_size
        # Per format set, as two writers may share a run token.
        self.name = "tables-" + "-".join(formats)
        self._avro: dict[str, Any] = {}  # parsed Avro schemas, filled on the workers

    def accept(self, kind: object, table: object) -> pa.Table:
        schema = self.arrow.get(kind) if isinstance(kind, str) else None
        if schema is None:
            rows = getattr(table, "num_rows", "?")
            raise no_schema("WriteTables", kind, self.arrow, f"{rows} rows")
        if isinstance(table, pa.RecordBatch):
            table = pa.Table.from_batches([table])
        if not isinstance(table, pa.Table):
            raise TypeError(
                f"WriteTables takes (category, pyarrow.Table) elements, got a "
                f"{type(table).__name__} for {kind!r}"
            )
        if not table.schema.equals(schema, check_metadata=False):
            raise ValueError(
                f"WriteTables: the table of {kind!r} does not have the category's Arrow "
                f"schema (schemas.arrow.arrow_schema):\n{table.schema}\nexpected:\n{schema}"
            )
        for field in schema:
            check_required(field, table.column(field.name))
        if "data_category" in schema.names and table.num_rows:
            same = pc.all(
                pc.equal(table.column("data_category"), pa.scalar(kind)), skip_nulls=False
            ).as_py()
            if not same:
                raise ValueError(
                    f"WriteTables: the table of {kind!r} has rows of another data_category"
                )
        return table

    def writer(self, fmt: str, kind: str, handle) -> ParquetFileWriter | AvroFileWriter:
        if fmt == "parquet":
            return ParquetFileWriter(
                handle, self.arrow[kind], self.parquet_codec, self.row_group_size
            )
        parsed = self._avro.get(kind)
        if parsed is None:
            parsed = self._avro[kind] = fastavro.parse_schema(dict(self.schemas[kind]))
        return AvroFileWriter(handle, self.schemas[kind], self.avro_codec, parsed=parsed)


def directory_of(
    layout: StorageLayout, output: TableOutput
) -> Callable[[str | None, int | None], str]:
    """The relative directory of a partition of ``output`` in ``layout``, by kind and
    ``expires_at``."""
    return layout.data_path if output.partitions == DATA else layout.dead_letter_path


class _BufferPartitions(beam.DoFn):
    """``(kind, table)`` -> ``(destination, RunSlice)``; counts the output's row counter.

    Buffers the tables of the bundle with their destination keys. Once they hold half of
    ``buffer_bytes`` (sorting them makes a copy of the same size), and at the end of the
    bundle, they are sorted by destination and spilled as one temp file per kind (a sorted
    run), which is emitted once per destination it holds.
    """

    def __init__(
        self,
        output: TableOutput,
        temp_dir: str,
        buffer_bytes: int,
        layout: StorageLayout = HIVE,
    ) -> None:
        self.output = output
        self.temp_dir = temp_dir
        self.buffer_bytes = buffer_bytes
        self.layout = layout

    def setup(self) -> None:
        self._counters: dict[str, Any] = {}
        self._spilled = Metrics.counter(METRICS_NAMESPACE, "spilled_runs")
        self._directory = directory_of(self.layout, self.output)

    def start_bundle(self) -> None:
        # kind -> ([tables], [keys]); the bytes of Arrow data they hold
        self._buffer: dict[str, tuple[list[pa.Table], list[pa.ChunkedArray]]] = {}
        self.held = 0
        # Runs named <bundle>-<sequence>: Compact reads them in name order, so the rows of a
        # bundle keep their order in the final file.
        self._bundle = uuid.uuid4().hex
        self._runs = 0

    def process(self, element: tuple[str, pa.Table]):
        kind, table = element
        table = self.output.accept(kind, table)
        if self.output.row_counter is not None:
            rows = self._counters.get(kind)
            if rows is None:
                rows = self._counters[kind] = counter(f"{self.output.row_counter}{kind}")
            rows.inc(table.num_rows)
        if table.num_rows == 0:
            return
        tables, keys = self._buffer.setdefault(kind, ([], []))
        tables.append(table)
        keys.append(destination_keys(table, self.output.shards, self.output.shard_key))
        self.held += table.nbytes
        if self.held * 2 > self.buffer_bytes:
            yield from self._spill()

    def _spill(self):
        buffered, self._buffer = self._buffer, {}
        self.held = 0
        while buffered:
            kind, (tables, keys) = buffered.popitem()
            table, spans = sort_run(tables, keys)
            del tables[:], keys[:]  # the sorted copy is all that is needed now
            name = f"{self._bundle}-{self._runs:06d}{IPC_EXTENSION}"
            self._runs += 1
            self._spilled.inc()
            path = FileSystems.join(self.temp_dir, name)
            for key, first, count in write_run(path, table, spans):
                destination = destination_of_key(kind, key, self.output.shards, self._directory)
                yield GlobalWindows.windowed_value_at_end_of_window(
                    (destination, (path, first, count))
                )

    def finish_bundle(self):
        yield from self._spill()


class _Compact(beam.DoFn):
    """``(destination, [RunSlice])`` -> one final file per format, as ``FileResult``s.

    Streams the destination's batches of every temp file into one writer per format, in the
    temp directory; then creates the partition directory (where the file system has
    directories) and renames the files into the layout. The temp files are only deleted
    once every destination is written, so a retried bundle simply writes its files again.
    """

    def __init__(self, output: TableOutput, output_dir: str, temp_dir: str, token: str) -> None:
        self.output = output
        self.output_dir = output_dir
        self.temp_dir = temp_dir
        self.token = token

    def process(self, element: tuple[Destination, Iterable[RunSlice]]):
        destination, runs = element
        kind, rel_dir, shard, shards = destination
        runs = sorted(set(runs))  # the same row order whatever order the slices came in
        name = part_name(shard, shards, self.token)
        formats = self.output.formats
        finals = {
            fmt: FileSystems.join(self.output_dir, rel_dir, name + EXTENSIONS[fmt])
            for fmt in formats
        }
        staged = {
            fmt: FileSystems.join(self.temp_dir, f"{uuid.uuid4().hex}{EXTENSIONS[fmt]}")
            for fmt in formats
        }
        try:
            self._write(kind, runs, staged)
            ensure_dir(FileSystems.join(self.output_dir, rel_dir))
            FileSystems.rename(list(staged.values()), [finals[fmt] for fmt in staged])
        except BaseException:
            leftovers = [path for path in staged.values() if FileSystems.exists(path)]
            if leftovers:
                try:
                    delete_paths(leftovers)
                except OSError as err:  # best effort: the cleanup step warns about them
                    _LOG.warning("could not delete %s: %s", leftovers, err)
            raise
        for final in finals.values():
            yield fileio.FileResult(
                file_name=final,
                shard_index=shard,
                total_shards=shards,
                window=GlobalWindow(),
                pane=None,
                destination=destination,
            )

    def _write(self, kind: str, runs: Sequence[RunSlice], staged: Mapping[str, str]):
        handles = []
        writers = []
        try:
            for fmt, path in staged.items():
                handle = FileSystems.create(
                    path, mime_type=MIME_TYPES[fmt], compression_type=CompressionTypes.UNCOMPRESSED
                )
                handles.append(handle)
                writers.append(self.output.writer(fmt, kind, handle))
            for path, first, count in runs:
                for batch in read_run(path, first, count):
                    for writer in writers:
                        writer.write(batch)
            while writers:
                writers.pop().close()
        finally:
            for writer in writers:  # left open by a failure
                writer.abort()
            for handle in handles:
                handle.close()


def _remove_temp_files(_count: int, temp_dir: str) -> None:
    """Delete the temp files and their directory once every destination is written."""
    try:
        found = match([literal_pattern(temp_dir, "*")])[0].metadata_list
        if found:
            delete_paths([m.path for m in found])
        if FileSystems.get_filesystem(temp_dir).has_dirs() and FileSystems.exists(temp_dir):
            delete_paths([temp_dir])
    except OSError as err:  # BeamIOError is an OSError; cleanup is best effort
        _LOG.warning("could not remove temp directory %s: %s", temp_dir, err)


def _check_buffer_bytes(buffer_bytes: int) -> int:
    if isinstance(buffer_bytes, bool) or not isinstance(buffer_bytes, int) or buffer_bytes < 1:
        raise ValueError(f"buffer_bytes must be a positive int, got {buffer_bytes!r}")
    return buffer_bytes


class SpillOptions(TypedDict, total=False):
    """The keyword arguments every writer of this package takes (:class:`SpillAndCompact`),
    what ``pipelines.launch.RunContext.sink`` gives a sink besides ``output_dir``."""

    run_token: str | None
    buffer_bytes: int
    remove_temp: bool
    layout: StorageLayout | str | None


def resolve_layout(layout: StorageLayout | str | None, output_dir: str) -> StorageLayout:
    """A writer's storage layout: the one given (or registered under the name given), else
    the one ``output_dir``'s root is written in (``marker.layout_for_output``: how the
    retention jobs' sinks write in the root's layout without being told)."""
    if layout is None:
        return layout_for_output(output_dir)
    if isinstance(layout, str):
        return layout_named(layout)
    return layout


class SpillAndCompact(beam.PTransform):
    """Write ``(kind, pyarrow.Table)`` elements as one file per format and destination of
    ``output``, in bounded memory (see the package docstring): buffer and spill sorted runs,
    group references to them, compact each destination, remove the temp files.

    The input is one PCollection, or several (a tuple or list, as for ``beam.Flatten``):
    each is then spilled in the stage that produces it, and only the references to its runs
    are flattened. Why: the FnApiRunner (the DirectRunner, in process or multi_processing)
    materializes the output of a ``Flatten`` of several PCollections in the runner process and
    hands it on to the workers, every element of every input. Flattening 1M dead letters
    before their sink held them all in memory: 4.0 GiB for 1M visits with an unparseable time,
    against 0.9 GiB when each branch was spilled where it was produced
    (``bench/RESULTS.md``).

    Files are named ``part-<shard>-of-<shards>-<run_token>.<ext>``. Returns the
    ``fileio.FileResult`` of every file written, all formats, with ``file_name`` the full path.

    ``remove_temp=False`` leaves the temp folder to the caller: an ingestion run writes into
    its staging folder and removes all of it, temp files included, when it commits
    (``transforms.commit``), which must not race a removal of its own.

    ``layout``: the storage layout (``transforms.sinks.storage``) of the partitions, or the
    name of a registered one; None: the layout of the root ``output_dir`` is or stages for,
    read when the pipeline is built (:func:`resolve_layout`).
    """

    def __init__(
        self,
        output: TableOutput,
        output_dir: str,
        *,
        run_token: str | None = None,
        buffer_bytes: int = DEFAULT_BUFFER_BYTES,
        remove_temp: bool = True,
        layout: StorageLayout | str | None = None,
    ) -> None:
        super().__init__()
        self.output = output
        self.output_dir = output_dir
        self.run_token = run_token or new_token()
        self.buffer_bytes = _check_buffer_bytes(buffer_bytes)
        self.remove_temp = remove_temp
        self.layout = layout_named(layout) if isinstance(layout, str) else layout

    @property
    def temp_dir(self) -> str:
        """Where the spilled runs and the files being compacted go."""
        return FileSystems.join(self.output_dir, f".temp-{self.run_token}-{self.output.name}")

    def to_tables(self, pcoll: beam.PCollection, suffix: str) -> beam.PCollection:
        """The ``(kind, table)`` elements of one input; subclasses turn their elements into
        tables here, labelling their steps with ``suffix`` (an input's index, or "")."""
        return pcoll

    def expand(self, inputs):
        temp_dir = self.temp_dir
        layout = resolve_layout(self.layout, self.output_dir)
        if isinstance(inputs, beam.PCollection):
            branches = [("", inputs)]  # the labels of a single input carry no index
        else:
            branches = [(str(index), pcoll) for index, pcoll in enumerate(inputs)]
            if not branches:
                raise ValueError(f"{type(self).__name__} needs at least one PCollection")
        runs = tuple(
            self.to_tables(pcoll, suffix)
            | f"GlobalWindow{suffix}" >> beam.WindowInto(GlobalWindows())
            | f"BufferPartitions{suffix}"
            >> beam.ParDo(
                _BufferPartitions(self.output, temp_dir, self.buffer_bytes, layout)
            ).with_output_types(tuple[Destination, RunSlice])
            for suffix, pcoll in branches
        )
        if len(runs) > 1:
            runs = (runs | "FlattenRuns" >> beam.Flatten(),)
        files = (
            runs[0]
            | "GroupTempFiles" >> beam.GroupByKey()
            | "Compact"
            >> beam.ParDo(_Compact(self.output, self.output_dir, temp_dir, self.run_token))
        )
        if self.remove_temp:
            _ = (
                files
                | "CountFiles" >> beam.combiners.Count.Globally().without_defaults()
                | "RemoveTempFiles" >> beam.Map(_remove_temp_files, temp_dir)
            )
        return files


class WriteTables(SpillAndCompact):
    """Write ``(category, pyarrow.Table)`` elements as partitions of the storage layout
    (``data_category=/expiry_date=`` in the Hive layout), columnar and in bounded memory (see
    the package docstring).

    Every table must have exactly the Arrow schema of its category
    (``schemas.arrow.arrow_schema(schemas[category])``, tag columns included); its rows go to
    the partition of their ``expires_at`` and, with ``shards_per_partition`` > 1, to the shard
    of their ``event_id``. A category without a schema, a table of another schema, a null in a
    required column or a ``data_category`` column that disagrees with the category raises and
    fails the pipeline (fail closed). Counts ``written.<category>`` per row.

    Each partition and shard gets exactly one file per format per run, named
    ``part-<shard>-of-<shards>-<run_token>.<ext>``. Returns the ``fileio.FileResult`` of every
    file written, all formats, with ``file_name`` the full path. ``spill``: the options of
    :class:`SpillAndCompact` (``run_token``, ``buffer_bytes``, ``remove_temp``, ``layout``).
    """

    def __init__(
        self,
        output_dir: str,
        schemas: Mapping[str, dict],
        formats: Sequence[str] = ("parquet",),
        shards_per_partition: int | None = None,
        *,
        parquet_codec: str = DEFAULT_PARQUET_CODEC,
        avro_codec: str = DEFAULT_AVRO_CODEC,
        row_group_size: int = DEFAULT_ROW_GROUP_SIZE,
        **spill: Unpack[SpillOptions],
    ) -> None:
        output = DataTables(
            schemas,
            formats,
            check_shards(shards_per_partition),
            parquet_codec=parquet_codec,
            avro_codec=avro_codec,
            row_group_size=row_group_size,
        )
        super().__init__(output, output_dir, **spill)

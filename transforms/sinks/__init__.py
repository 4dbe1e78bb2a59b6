"""Partitioned sinks: the last step of every pipeline.

Layout under the output directory in the default, Hive storage layout (the data contract,
``docs/design.md``; another registered layout, ``storage.StorageLayout``, places the same
partitions elsewhere)::

    data_category=<category>/expiry_date=<YYYY-MM-DD>/part-<shard>-of-<n>-<token>.parquet|.avro
    data_category=<category>/expiry_date=9999-12-31/...   (expires_at is None: open-ended)
    _dead_letter/source=<source>/expiry_date=<YYYY-MM-DD>/part-<shard>-of-<n>-<token>.jsonl

Why partition by expiry date: retention is enforced by deleting whole directories
(``pipelines.purge``), never by rewriting files, so every file must hold rows that expire
on the same UTC day. ``expiry_date`` is the UTC calendar date of ``expires_at`` (int epoch
microseconds); open-ended retention (``expires_at`` None) goes to the partition dated
``layout.OPEN_ENDED_EXPIRY_DATE`` ("end of time"), a date every reader types like the others.

How files are bounded (writing Hive partitions per batch inside a DoFn multiplies files, 1,300
to 15,000 for 60 partitions as ``BatchElements`` sizes batches by timing): a destination is
``(partition, shard)``, the shard a CRC32 of the row's ``event_id`` (always 0 with one shard per
partition, the default), and every destination gets exactly one file per format per run,
whatever the bundling of the runner; a given row always lands in the same shard.

The data is written columnar (:class:`WriteTables`; :class:`WritePartitioned` turns its rows
into Arrow tables first), in two steps, so that memory stays flat however much data comes in:

1. ``BufferPartitions`` computes the destination of every row with Arrow compute kernels (no
   Python per row unless rows are sharded) and buffers the tables of the bundle. When they
   hold half of ``buffer_bytes`` (64 MiB by default; sorting them makes a copy of the same
   size), and at the end of the bundle, it sorts them by destination (one sort, one ``take``)
   and spills them as one Arrow IPC file per category, a *sorted run* under
   ``<output_dir>/.temp-<token>-tables-<formats>/``, and emits ``(destination, (file, first
   record batch, batch count))`` for every destination in the run.
2. Only these references cross the ``GroupByKey`` (the previous design sent every *row*
   through it: on the FnApiRunner a GroupByKey is held in memory, ~2 KB per row, 5 GiB at
   1M rows). ``Compact`` then reads the batches of its destination from every run (IPC files
   are random access: the other destinations' batches are not read) and streams them into
   one final file per format: Parquet row groups of exactly ``row_group_size`` rows (small
   pieces coalesced), Avro blocks via fastavro. The files are written in the temp directory
   and renamed into the layout (the partition directory is created first where the file
   system has directories; object stores need none). The temp directory is deleted once
   every destination is written, so a retried ``Compact`` bundle finds its runs again.

A worker therefore holds about ``buffer_bytes`` plus one row group per destination being
compacted, whatever the input size; the shuffle is a few bytes per destination and run; and
there is one temp file per category and run, not one per destination, which matters on
object stores. The price is disk (or bucket) space: the runs, uncompressed Arrow, stay until
the end of the write.

Dead letters (:class:`WriteDeadLetters`) take the same two steps, the same code
(``tables.SpillAndCompact``; a ``tables.TableOutput`` says what differs): each letter is one
JSON line in an Arrow table of ``{expires_at, line}`` per source, the runs go to
``<output_dir>/.temp-<token>-dead-letters/``, and each partition is compacted into one
``.jsonl`` file. They are usually few, but not always: a producer that breaks its time format
makes every line one, and grouping them all in memory (Beam's ``fileio.WriteToFiles``, the
previous design) peaked at 6.0 GiB for 1M such visits.

Both writers also take several PCollections (a tuple, as ``beam.Flatten`` does) and spill
each in the stage that produces it: the FnApiRunner holds the whole output of a ``Flatten``
of several PCollections in memory, so letters flattened before their sink are not bounded by
it (``tables.SpillAndCompact``).

File names carry a short run token so that a later run writing into the same partition
(late events expire on the same day) adds files instead of overwriting earlier ones.

Modules, each importing only those listed before it:

- ``layout``: expiry dates, file names, run tokens;
- ``storage``: the storage layouts (where a partition is, which partition a path is in), the
  built-in Hive one, and their registry;
- ``marker``: which layout an output root is written in (its ``_layout.json``);
- ``files``: the Parquet, Avro and JSON Lines file writers and their codec checks;
- ``runs``: destination keys of Arrow rows and the sorted runs (temp Arrow IPC files);
- ``tables``: the spill and compaction (buffer and spill, compact, clean up) and
  :class:`WriteTables`;
- ``rows``: Python rows gathered into tables, :class:`WritePartitioned` (row dicts);
- ``deadletters``: :class:`WriteDeadLetters` (dead letters as JSON lines in tables).
"""

from transforms.sinks.deadletters import (
    JsonLinesSink,
    WriteDeadLetters,
    dead_letter_json,
    dead_letter_reason,
)
from transforms.sinks.files import DEFAULT_PARQUET_CODEC, DEFAULT_ROW_GROUP_SIZE, ParquetSink
from transforms.sinks.layout import (
    DEAD_LETTER_DIR,
    EXTENSIONS,
    HIVE_NULL_PARTITION,
    MAX_EXPIRY_MICROS,
    OPEN_ENDED_EXPIRY_DATE,
    expiry_date,
    micros_to_iso,
)
from transforms.sinks.rows import WritePartitioned
from transforms.sinks.storage import StorageLayout, dead_letter_path, partition_path
from transforms.sinks.tables import WriteTables

__all__ = [
    "DEAD_LETTER_DIR",
    "DEFAULT_PARQUET_CODEC",
    "DEFAULT_ROW_GROUP_SIZE",
    "EXTENSIONS",
    "HIVE_NULL_PARTITION",
    "MAX_EXPIRY_MICROS",
    "OPEN_ENDED_EXPIRY_DATE",
    "JsonLinesSink",
    "ParquetSink",
    "StorageLayout",
    "WriteDeadLetters",
    "WritePartitioned",
    "WriteTables",
    "dead_letter_json",
    "dead_letter_path",
    "dead_letter_reason",
    "expiry_date",
    "micros_to_iso",
    "partition_path",
]

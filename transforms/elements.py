"""What travels between the batched stages: a :class:`Batch` of record dicts or a
:class:`TableBatch` of Arrow columns, with a coder of their own (:class:`BatchCoder`).

A module of its own, below both ``transforms.batches`` (how a stage runs over batches) and
``transforms.deadletter`` (which turns a failed batch into one letter per record), so that
neither imports the other's module to know what a batch is.
"""

from __future__ import annotations

from typing import Any

import apache_beam as beam
import pyarrow as pa

__all__ = ["AnyBatch", "Batch", "BatchCoder", "TableBatch", "records_of"]


class AnyBatch:
    """What travels between batched stages: a :class:`Batch` or a :class:`TableBatch` (the
    element type of their PCollections, whose coder is :class:`BatchCoder`)."""

    __slots__ = ()


class Batch(list, AnyBatch):
    """A batch of records (or of raw lines): a list with a coder of its own, :class:`BatchCoder`.

    Why a type: Beam samples the encoded size of elements of every PCollection for its metrics
    (the first ten, then fewer and fewer); the default coder walks every value of every record
    of a batch for that, which cost ~15% of a run of the SDK-log pipeline.
    """


class TableBatch(AnyBatch):
    """A batch of records as the columns of a ``pyarrow.Table`` (a field a record lacks is null).

    Records of a table are read as ``table.to_pylist()``: dicts with every column as a key.
    """

    __slots__ = ("table",)

    def __init__(self, table: pa.Table) -> None:
        self.table = table

    def __len__(self) -> int:
        return self.table.num_rows

    def __repr__(self) -> str:
        return f"TableBatch({self.table.num_rows} rows: {', '.join(self.table.column_names)})"


def records_of(batch: Any) -> list[Any]:
    """The records of a batch of either kind, as a list (a table's rows as dicts)."""
    return batch.table.to_pylist() if isinstance(batch, TableBatch) else batch


class BatchCoder(beam.coders.Coder):
    """Encodes a :class:`Batch` as a list and a :class:`TableBatch` as an Arrow IPC stream;
    estimates a list's size from its first element and a table's from its buffers."""

    def __init__(self) -> None:
        self._items = beam.coders.FastPrimitivesCoder()

    def encode(self, value: AnyBatch) -> bytes:
        if isinstance(value, TableBatch):
            sink = pa.BufferOutputStream()
            with pa.ipc.new_stream(sink, value.table.schema) as writer:
                writer.write_table(value.table)
            return b"T" + sink.getvalue().to_pybytes()
        return b"L" + self._items.encode(list(value))

    def decode(self, encoded: bytes) -> AnyBatch:
        if encoded[:1] == b"T":
            return TableBatch(pa.ipc.open_stream(encoded[1:]).read_all())
        return Batch(self._items.decode(encoded[1:]))

    def estimate_size(self, value: AnyBatch) -> int:
        if isinstance(value, TableBatch):
            return value.table.nbytes + 1
        return len(value) * self._items.estimate_size(value[0]) + 1 if value else 1

    def is_deterministic(self) -> bool:
        return False

    def to_type_hint(self) -> type:
        return AnyBatch


for _kind in (AnyBatch, Batch, TableBatch):
    beam.coders.registry.register_coder(_kind, BatchCoder)

"""BatchColumns: the fields of a batch of records as Arrow arrays, for column-wise tagging.

Why a module of its own: the tagger (``transforms.tag``) decides which output takes a record and
which tags it gets with ``pyarrow.compute`` over whole batches, and these arrays must mean exactly
what the per-record Python tests mean (``schemas.policy.filled_any``, ``record.get("region")``).
This is where the two worlds meet; anything that cannot be decided exactly says so (None), and
the tagger then goes record by record (and counts it: ``transforms.counters.fallback``). The
helpers every columnar stage shares are in ``transforms.columns``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from functools import reduce
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from schemas.policy import UNKNOWN_REGION
from transforms.columns import ARROW_ERRORS, is_text_type, never_empty_type

__all__ = ["BatchColumns"]


class BatchColumns:
    """The fields of one batch of records, each read once, as Arrow arrays.

    :meth:`convert` reads the fields of the output schemas all at once, record by record in Arrow
    (reading dicts is what costs here, and Arrow reads one faster than a list comprehension); a
    field it did not convert is read alone (``record.get(name)`` of every record) when needed.

    The arrays that decide which records an output takes or which tags they get must mean what
    the Python tests mean. Arrow *infers* a string array only when every value is a ``str`` or
    None, so the inferred arrays do (:meth:`inferred`); a value converted to a schema's string
    type may also have been bytes, so "filled" looks again, in Python, at the few records whose
    converted value is "". A method returns None when a field cannot be decided (values of mixed
    or other types, or a record that is no mapping); the caller then goes record by record.
    """

    def __init__(self, records: Sequence[Mapping[str, Any]]) -> None:
        self._records: Sequence[Mapping[str, Any]] | None = records
        self._table: pa.Table | None = None
        self.n = len(records)
        self.every = pa.repeat(True, self.n)
        self._values: dict[str, list[Any] | None] = {}
        self._inferred: dict[str, pa.Array | None] = {}
        self._typed: dict[tuple[str, pa.DataType], pa.Array | None] = {}
        self._converted: dict[str, pa.Array] = {}  # by convert(), in their schema's type
        self._filled: dict[tuple[str, ...], pa.Array | None] = {}
        self._regions: tuple[pa.Array, list[str]] | None = None

    @classmethod
    def of_table(cls, table: pa.Table) -> BatchColumns:
        """The columns of a columnar batch: the table's own, read as ``to_pylist()`` records
        would be (a column that is not there is all None). Its string values are exactly what
        the records hold, so "filled" needs no second look in Python."""
        columns = cls(())
        columns._records = None
        columns._table = table
        columns.n = table.num_rows
        columns.every = pa.repeat(True, table.num_rows)
        return columns

    @property
    def records(self) -> Sequence[Mapping[str, Any]]:
        """The records (of a table: its rows as dicts, made on first use)."""
        if self._records is None:
            self._records = self._table.to_pylist()
        return self._records

    def _column(self, name: str) -> pa.Array | None:
        if name not in self._table.column_names:
            return None
        return self._table.column(name).combine_chunks()

    def convert(self, fields: Sequence[pa.Field]) -> None:
        """Convert ``fields`` at once, as :meth:`typed` would one by one; nothing if a value does
        not convert (then each is converted alone, when needed). Only plain dicts: Arrow would
        read a tuple as the values of the fields, and a dict's own ``get`` is not called."""
        wanted = [f for f in fields if (f.name, f.type) not in self._typed]
        if self._table is not None:
            for field in wanted:
                array = self._column(field.name)
                if array is None:
                    array = pa.nulls(self.n, field.type)
                elif array.type != field.type:
                    continue  # typed() converts its Python values, as for records
                self._typed[(field.name, field.type)] = self._converted[field.name] = array
            return
        if not wanted or set(map(type, self.records)) != {dict}:
            return
        struct = pa.struct([pa.field(f.name, f.type) for f in wanted])  # nulls checked later
        try:
            arrays = pa.array(self.records, type=struct).flatten()
        except ARROW_ERRORS:
            return
        for field, array in zip(wanted, arrays, strict=True):
            self._typed[(field.name, field.type)] = self._converted[field.name] = array

    def values(self, name: str) -> list[Any] | None:
        """``record.get(name)`` of every record (None if a record has no ``get``)."""
        if name not in self._values and self._table is not None:
            array = self._column(name)
            self._values[name] = [None] * self.n if array is None else array.to_pylist()
        if name not in self._values:
            try:
                self._values[name] = [r.get(name) for r in self.records]
            except AttributeError:  # a record with no ``get``: Python decides it
                self._values[name] = None
        return self._values[name]

    def inferred(self, name: str) -> pa.Array | None:
        """The field as the Arrow array inferred from its values (None if there is none)."""
        if name not in self._inferred and self._table is not None:
            array = self._column(name)
            # Python infers the null type for a field that is None throughout.
            if array is None or array.null_count == self.n:
                array = pa.nulls(self.n)
            self._inferred[name] = array
        if name not in self._inferred:
            values = self.values(name)
            try:
                self._inferred[name] = None if values is None else pa.array(values)
            except ARROW_ERRORS:
                self._inferred[name] = None
        return self._inferred[name]

    def typed(self, field: pa.Field) -> pa.Array | None:
        """The field as ``arrow_column(field, values)`` would hold it, nulls not checked (None if
        a value does not convert)."""
        key = (field.name, field.type)
        if key not in self._typed:
            array = None
            inferred = self._inferred.get(field.name)  # reused, never inferred for this
            if inferred is not None:
                if inferred.type == field.type:
                    array = inferred
                elif pa.types.is_null(inferred.type):
                    array = pa.nulls(self.n, field.type)
                elif pa.types.is_int64(inferred.type) and pa.types.is_timestamp(field.type):
                    array = inferred.cast(field.type)  # ints are the timestamps' raw values
            if array is None:
                values = self.values(field.name)
                try:
                    array = None if values is None else pa.array(values, type=field.type)
                except ARROW_ERRORS:
                    array = None
            self._typed[key] = array
        return self._typed[key]

    def filled(self, name: str) -> pa.Array | None:
        """Per record: the field is neither None nor "" (see :func:`filled_any`)."""
        array = self._converted.get(name)
        if array is not None and is_text_type(array.type):
            filled = pc.not_equal(array, "")
            # "": maybe b"" or the like in a record, which Python calls filled (a table holds
            # exactly the strings it shows).
            if filled.false_count and self._table is None:
                flags = filled.fill_null(False).to_pylist()
                for i in pc.indices_nonzero(pc.invert(filled)).to_pylist():
                    value = self.records[i].get(name)
                    flags[i] = value is not None and value != ""
                return pa.array(flags, type=pa.bool_())
            return filled.fill_null(False)
        if array is None or not never_empty_type(array.type):
            array = self.inferred(name)
        if array is None:
            return None
        if is_text_type(array.type):
            return pc.not_equal(array, "").fill_null(False)
        if pa.types.is_null(array.type) or never_empty_type(array.type):
            return array.is_valid()
        return None  # bytes, lists...: let Python decide

    def filled_any(self, names: tuple[str, ...]) -> pa.Array | None:
        """Per record: :func:`filled_any` of ``names``."""
        names = tuple(names)
        if names not in self._filled:
            parts = [self.filled(name) for name in names]
            if any(part is None for part in parts):
                self._filled[names] = None
            else:
                self._filled[names] = reduce(pc.or_, parts) if parts else pc.invert(self.every)
        return self._filled[names]

    def is_in(self, name: str, values: Iterable[str]) -> pa.Array | None:
        """Per record: ``record.get(name) in values``, for str ``values`` (None if the field
        holds anything but text and nulls: Python decides then)."""
        array = self.inferred(name)
        if array is None or not (is_text_type(array.type) or pa.types.is_null(array.type)):
            return None
        value_set = pa.array(sorted(values), pa.string())
        return pc.fill_null(pc.is_in(array.cast(pa.string()), value_set=value_set), False)

    def equals(self, name: str, value: Any) -> pa.Array | None:
        """Per record: ``record.get(name) == value``, for a str or None ``value``."""
        array = self.inferred(name)
        if array is None:
            return None
        if value is None:
            decided = is_text_type(array.type) or pa.types.is_null(array.type)
            if decided or never_empty_type(array.type):
                return array.is_null()
        elif type(value) is str:
            if is_text_type(array.type):
                return pc.equal(array, value).fill_null(False)
            if pa.types.is_null(array.type):
                return array.is_valid()  # all False
        return None

    def regions(self) -> tuple[pa.Array, list[str]] | None:
        """``record.get("region") or UNKNOWN_REGION`` per record, as (int32 codes, the distinct
        regions the codes index)."""
        if self._regions is None:
            array = self.inferred("region")
            if array is None:
                return None
            if pa.types.is_null(array.type):
                self._regions = pa.nulls(self.n, pa.int32()).fill_null(0), [UNKNOWN_REGION]
            elif is_text_type(array.type):
                dense = pc.if_else(self.filled("region"), array, UNKNOWN_REGION)
                encoded = pc.dictionary_encode(dense)
                self._regions = encoded.indices, encoded.dictionary.to_pylist()
            else:
                return None
        return self._regions

"""Arrow helpers the columnar stages share: a table's column as a record would read it, and the
per-value notions (filled, blank) the record-wise code tests in Python.

Why a module of its own: geolocation, suppression, enrichment, the guard and the tagger each
decide on whole columns what their record-wise reference decides on dicts, so these arrays must
mean exactly what ``record.get(name)``, ``schemas.policy.filled_any`` and ``str.strip`` mean. The
tagger's own view of a batch (``BatchColumns``) is in ``transforms.tag_columns``.
"""

from __future__ import annotations

from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

__all__ = [
    "ARROW_ERRORS",
    "column_or_nulls",
    "count",
    "is_text_type",
    "never_empty_type",
    "not_blank",
    "present",
    "text_column",
    "with_column",
]

#: What pyarrow raises for a value a conversion or a kernel cannot take, measured (pyarrow
#: 25): ``ArrowInvalid`` (a str where an int belongs, a bytes value that is no UTF-8, an int64
#: overflow in ``add_checked``, a decimal or date out of range), ``ArrowTypeError`` (an int
#: where a str belongs, mixed types, a dict key that is no str), ``ArrowNotImplementedError``
#: (no kernel for a type: ``equal`` on a list or struct), ``OverflowError`` (a Python int past
#: 64 bits) and ``UnicodeEncodeError`` (a lone surrogate). A columnar path that meets one of
#: them hands its rows to the record path, which decides (and dead-letters) them one by one;
#: any other error is a bug and propagates.
ARROW_ERRORS = (
    pa.ArrowInvalid,
    pa.ArrowTypeError,
    pa.ArrowNotImplementedError,
    OverflowError,
    UnicodeEncodeError,
)

# Arrow types of values that never equal "": such a value is filled exactly when it is not None.
_NEVER_EMPTY = (
    pa.types.is_integer,
    pa.types.is_floating,
    pa.types.is_boolean,
    pa.types.is_temporal,
    pa.types.is_decimal,
)


def is_text_type(type_: pa.DataType) -> bool:
    """A string type (``string`` or ``large_string``)."""
    return pa.types.is_string(type_) or pa.types.is_large_string(type_)


def never_empty_type(type_: pa.DataType) -> bool:
    """A type none of whose values equals "" (numbers, booleans, times, decimals)."""
    return any(test(type_) for test in _NEVER_EMPTY)


def present(array: pa.Array | pa.ChunkedArray) -> pa.Array | pa.ChunkedArray:
    """Per value: neither None nor "" (:func:`filled_any`'s notion of a field having a value).

    Exact for every Arrow type: only a string can equal ""; bytes ``b""`` does not."""
    if pa.types.is_null(array.type):
        return pc.is_valid(array)
    if is_text_type(array.type):
        return pc.not_equal(array, "").fill_null(False)  # null: not present
    return pc.is_valid(array)


def count(mask: pa.Array | pa.ChunkedArray) -> int:
    """The rows a boolean mask selects (nulls are not selected)."""
    return pc.sum(mask).as_py() or 0


def not_blank(array: pa.Array | pa.ChunkedArray) -> pa.Array:
    """Per value of a string column: it has a character other than whitespace (``str.strip``).

    Exact: a value that starts with a printable ASCII character other than space is decided
    in Arrow; the few others (empty, blank, or starting with any other character, whose status
    under Python's notion of whitespace Arrow cannot tell) are looked at in Python."""
    if isinstance(array, pa.ChunkedArray):
        array = array.combine_chunks()
    if pa.types.is_null(array.type):
        return pc.is_valid(array)
    # Starts with a byte in "!".."~": between those strings, lexicographically (a comparison
    # kernel, several times cheaper than a regular expression).
    sure = pc.and_(pc.greater_equal(array, "!"), pc.less(array, "\x7f")).fill_null(False)
    unsure = pc.and_not(pc.is_valid(array), sure)
    if not unsure.true_count:
        return sure
    flags = sure.to_pylist()
    values = array.to_pylist()
    for i in pc.indices_nonzero(unsure).to_pylist():
        flags[i] = bool(values[i].strip())
    return pa.array(flags, pa.bool_())


def column_or_nulls(table: pa.Table, name: str) -> pa.ChunkedArray:
    """``record.get(name)`` of every row: the column, or nulls where the table has none."""
    if name in table.column_names:
        return table.column(name)
    return pa.chunked_array([pa.nulls(table.num_rows, pa.string())])


def text_column(table: pa.Table, name: str) -> pa.ChunkedArray | None:
    """:func:`column_or_nulls` as a string column (a column of nulls only becomes one), or
    None when it holds values of another type: then Python must read the rows."""
    column = column_or_nulls(table, name)
    if pa.types.is_null(column.type):
        return column.cast(pa.string())
    return column if pa.types.is_string(column.type) else None


def with_column(table: pa.Table, name: str, array: Any) -> pa.Table:
    """``table`` with column ``name`` set to ``array`` (replaced if it exists, else appended)."""
    i = table.schema.get_field_index(name)
    if i < 0:
        return table.append_column(name, array)
    return table.set_column(i, name, array)

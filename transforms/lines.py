"""JSON Lines read in bounded memory: the lines of a byte range of an open file, in batches.

What the JSON Lines input format (``transforms.inputformats``) reads with. JSON Lines are read as
*bytes* (not text) so that a line that is not valid UTF-8 becomes an ``invalid_encoding`` dead
letter at Parse instead of failing the bundle. A range owns the lines that *start* inside it, so
every line is read exactly once whatever the chunk size; beyond its end the reader reads only to
the end of the line that started inside it.

No line is held whole beyond ``max_line_bytes`` (``transforms.rawinput``): a longer line is
streamed past in pieces, hashed, and handed on as a ``Withheld`` summary, so that Parse makes it
a ``line_too_large`` dead letter instead of the job holding it.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from transforms.elements import Batch
from transforms.rawinput import DEFAULT_MAX_LINE_BYTES, Withheld, WithheldBuilder

__all__ = ["PIECE_BYTES", "read_line_batches"]

_BOM = b"\xef\xbb\xbf"
# Pieces an oversized line is read in: a line is never held whole once it is known to be too
# large, so memory per worker stays one range plus one piece whatever the input holds.
PIECE_BYTES = 1024 * 1024


def _finish(line: bytes, max_line_bytes: int) -> bytes | Withheld:
    """A line as read (without its newline), as Parse gets it: without a CR before the newline,
    or its :class:`Withheld` summary if it is longer than ``max_line_bytes`` (counting the CR:
    the limit and the hash are of the bytes between two newlines)."""
    if len(line) > max_line_bytes:
        return Withheld.of(line)
    return line[:-1] if line.endswith(b"\r") else line


def _without_bom(first_line: bytes | Withheld) -> bytes | Withheld:
    """The first line of a file without a UTF-8 byte order mark (Windows exports start so)."""
    if first_line.__class__ is bytes and first_line.startswith(_BOM):
        return first_line[len(_BOM) :]
    return first_line


def _rest_of_line(head: bytes, fh: Any, max_line_bytes: int, piece_bytes: int) -> bytes | Withheld:
    """``head`` and the rest of its line from ``fh`` (to the newline or the end of the file),
    read in pieces: held whole only while it fits ``max_line_bytes``, then hashed piece by
    piece into its :class:`Withheld` summary."""
    parts, size, builder = [head], len(head), None
    while True:
        piece = fh.readline(piece_bytes)
        ends = piece.endswith(b"\n")
        if ends:
            piece = piece[:-1]
        if builder is None:
            parts.append(piece)
            size += len(piece)
            if size > max_line_bytes:
                builder = WithheldBuilder()
                for part in parts:
                    builder.add(part)
        else:
            builder.add(piece)
        if ends or not piece:
            break
    return builder.build() if builder is not None else _finish(b"".join(parts), max_line_bytes)


def _skip_line(fh: Any, piece_bytes: int) -> int:
    """Read past the line in progress, in pieces; the number of bytes skipped."""
    skipped = 0
    while True:
        piece = fh.readline(piece_bytes)
        skipped += len(piece)
        if not piece or piece.endswith(b"\n"):
            return skipped


def _in_batches(lines: list[Any], batch_size: int) -> Iterator[Batch]:
    for first in range(0, len(lines), batch_size):
        yield Batch(lines[first : first + batch_size])


def read_line_batches(
    fh: Any,
    start: int,
    end: int | None,
    batch_size: int,
    max_line_bytes: int = DEFAULT_MAX_LINE_BYTES,
    piece_bytes: int = PIECE_BYTES,
) -> Iterator[Batch]:
    """Batches of the lines that start in ``[start, end)`` of the open file ``fh`` (without
    their line ending; blank lines included: Parse makes them dead letters). A line longer than
    ``max_line_bytes`` is a :class:`~transforms.rawinput.Withheld` summary instead (Parse: a
    ``line_too_large`` dead letter); a UTF-8 byte order mark at the start of the file is not
    part of its first line. ``piece_bytes``: what is read at a time of a stream (a compressed
    file) and past the end of a range.

    A bounded range is read in one piece and split in C (``bytes.split``): a Python loop per
    line costs more than the rest of reading. ``end`` None (a compressed file) streams.
    """
    if start:
        # The line in progress at ``start`` belongs to the range before (a line starting right
        # at ``start`` follows the newline at ``start - 1`` and is ours).
        fh.seek(start - 1)
        position = start - 1 + _skip_line(fh, piece_bytes)
    else:
        position = 0
    if end is None:
        lines = list(_stream_lines(fh, max_line_bytes, piece_bytes))
        lines[:1] = map(_without_bom, lines[:1])
        yield from _in_batches(lines, batch_size)
        return
    if position >= end:
        return
    data = fh.read(end - position)
    lines: list[Any] = data.split(b"\n")
    last = lines.pop()  # b"" after a final newline, else a line that may go on past ``end``
    if b"\r" in data or (lines and max(map(len, lines)) > max_line_bytes):
        lines = [_finish(line, max_line_bytes) for line in lines]
    if last:
        lines.append(_rest_of_line(last, fh, max_line_bytes, piece_bytes))
    if position == 0:
        lines[:1] = map(_without_bom, lines[:1])
    yield from _in_batches(lines, batch_size)


def _stream_lines(fh: Any, max_line_bytes: int, piece_bytes: int) -> Iterator[bytes | Withheld]:
    """The lines of a stream read in pieces (a compressed file), each bounded like a range's."""
    current, builder = b"", None
    while piece := fh.read(piece_bytes):
        *complete, rest = piece.split(b"\n")
        for part in complete:
            if builder is not None:
                builder.add(part)
                yield builder.build()
                builder = None
            else:
                yield _finish(current + part, max_line_bytes)
            current = b""
        if builder is not None:
            builder.add(rest)
        else:
            current += rest
            if len(current) > max_line_bytes:
                builder = WithheldBuilder()
                builder.add(current)
                current = b""
    if builder is not None:
        yield builder.build()
    elif current:
        yield _finish(current, max_line_bytes)

"""The registry of table sinks: what ``--sink`` selects for the data of an ingestion run.

A sink is any ``PTransform`` of ``(category, pyarrow.Table)`` elements (``transforms.store``
hands it one table per category and batch, each with the category's Arrow schema) that returns
the ``fileio.FileResult`` of every file it wrote. The pipelines never name one: they ask
``pipelines.launch.RunContext.table_sink`` for the sink of the run, which builds the one
registered under ``--sink`` (default :data:`DEFAULT_SINK`, :class:`~transforms.sinks.WriteTables`).
So a new sink is its class and one :func:`register` call, in this package or in your own code
before the options are parsed; no pipeline changes.

A sink is built with keyword arguments only (what ``RunContext.sink`` gives, and the run's
category schemas and formats)::

    schemas      {category: Avro record schema} of the categories the run writes
    formats      ("parquet",), ("avro",) or both: ``--format``
    output_dir   where to write: the run's staging folder (``transforms.commit``)
    run_token    the run id: name every file ``part-<shard>-of-<n>-<run_token>.<ext>``
    remove_temp  False: leave temp files under output_dir to the commit
    layout       the run's ``transforms.sinks.storage.StorageLayout``: put each file in
                 ``layout.data_path(category, expires_at)``

A sink that keeps to this is exactly-once like the built-in one: the commit makes exactly the
files it returns visible, and a rerun's files (same names) replace the earlier attempt's. The
run report's ``written.<category>`` counters (its reconciliation) are counted for it, one
increment per table (:class:`CountWritten`), unless it counts them itself (``counts_rows``,
as ``WriteTables`` does).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import apache_beam as beam
import pyarrow as pa

from transforms.counters import counter
from transforms.named import Registry
from transforms.sinks.tables import WriteTables

__all__ = [
    "BUILT_IN",
    "DEFAULT_SINK",
    "CountWritten",
    "TableSink",
    "register",
    "sink_named",
    "sinks",
    "unregister",
]

DEFAULT_SINK = "files"


@dataclass(frozen=True)
class TableSink:
    """A sink ``--sink`` can select: its name, what ``--help`` says of it, and how it is
    built (keyword arguments only: see the module docstring)."""

    name: str
    description: str
    build: Callable[..., beam.PTransform]
    # Whether the sink counts ``written.<category>`` itself; if not, they are counted for it.
    counts_rows: bool = False

    def sink(self, **kwargs: Any) -> beam.PTransform:
        """The sink built with ``kwargs`` (see the module docstring), counting the rows it is
        handed when it does not."""
        built = self.build(**kwargs)
        return built if self.counts_rows else CountWritten(built)


class _Count(beam.DoFn):
    def setup(self) -> None:
        self._counters: dict[str, Any] = {}

    def process(self, element: tuple[str, pa.Table]):
        category, table = element
        rows = self._counters.get(category)
        if rows is None:
            rows = self._counters[category] = counter(f"written.{category}")
        rows.inc(table.num_rows)
        yield element


class CountWritten(beam.PTransform):
    """Count ``written.<category>`` (the run report's) for the rows of each table, then hand
    the tables to ``sink``: what ``WriteTables`` counts itself, for a sink that does not."""

    def __init__(self, sink: beam.PTransform) -> None:
        super().__init__()
        self._sink = sink

    def expand(self, tables):
        return tables | "CountWritten" >> beam.ParDo(_Count()) | "Sink" >> self._sink


# The sinks of this package, in the order --help lists them.
BUILT_IN: tuple[TableSink, ...] = (
    TableSink(
        DEFAULT_SINK,
        "Parquet and/or Avro files (--format), one per partition and run, in bounded memory",
        WriteTables,
        counts_rows=True,
    ),
)
_SINKS: Registry[TableSink] = Registry("sink", BUILT_IN, "--sink", kind=TableSink)
# Adds a sink (--sink <name> then selects it); removes one (a test's); the registered sinks,
# built-in first; the sink of a name.
register = _SINKS.register
unregister = _SINKS.unregister
sinks = _SINKS.entries
sink_named = _SINKS.named

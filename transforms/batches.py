"""Batches: how records travel through the ingestion pipelines, and how a stage runs over them.

Why: Beam charges a few microseconds per element per step (more under
``with_exception_handling``), which is more than most of our stages spend on a record. The
pipelines therefore move *lists* of records: the reader yields batches of up to
:data:`BATCH_SIZE` lines, and every stage that decides per record (parse, geolocate, suppress,
fingerprint, guard, tag) is a :class:`RecordStage`, a DoFn that takes one batch and hands the
next stage a new one. Counters are added up per batch and reported once per batch. Enrichment
(``transforms.enrichment``) is no RecordStage: it never rejects a record, and its lookups are
batched by its provider; it takes and gives the same batches.

The compliance logic stays per record (``RecordStage.one``), and so does the dead-letter
contract: a record a stage rejects (:class:`~transforms.deadletter.RecordError`) or fails on (any
other exception) becomes *its own* dead letter, exactly as with a per-record ``ParDo`` under
``with_exception_handling``; the rest of the batch flows on. ``with_exception_handling`` still
wraps every stage as a backstop for a failure outside the per-record loop, and
:class:`~transforms.deadletter.FromExceptions` turns a failed batch into one dead letter per
record.

:class:`ApplyStage` applies a stage to a PCollection of batches: each stage has one production
mode. A test that thinks in records batches them around the stage
(``tests.support.stages.on_records``).

Columnar batches: a batch is either a :class:`~transforms.elements.Batch` (a list of record
dicts) or a :class:`~transforms.elements.TableBatch` (the same records as the columns of a
``pyarrow.Table``: a missing value is null; both defined in ``transforms.elements``). The parser
emits tables where the schema maps to Arrow, and the visit stages (geolocate, suppress,
enrich, guard, tag) then work on whole columns with ``pyarrow.compute``: past the JSON
decoder, a record is never a dict again on its way to the sinks. Where a columnar version
cannot decide exactly, its rows go to the record path (``one`` over ``table.to_pylist()``: the
same per-record code and dead letters as a list), and that is counted as a fallback
(:func:`transforms.counters.fallback`: ``columnar_fallback.<stage>.<reason>`` in the run
report, an error in strict mode), so that a fast path that stopped working shows. A stage
without a columnar version falls back for every row of a table (``no_columnar_path``).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator, Mapping
from typing import Any

import apache_beam as beam
import pyarrow as pa

from transforms.counters import counter, fallback
from transforms.deadletter import DeadLetterContext, ParDoWithDeadLetters, RecordError
from transforms.elements import AnyBatch, Batch, TableBatch, records_of

__all__ = [
    "BATCH_SIZE",
    "AnyBatch",
    "ApplyStage",
    "Batch",
    "CounterTally",
    "Rebatch",
    "RecordStage",
    "TableBatch",
    "Unbatch",
    "records_of",
]

# Records per batch: large enough that the fixed cost of a batch (Beam's per element, and the
# few dozen Arrow calls of each columnar stage, ~10 µs each) is small next to its rows' (8192
# visits measured ~0.9 µs per row cheaper end to end than 2048, 16384 no better), small enough
# that a batch of visits (~2.5 MB of lines, about as much as a table) stays small in flight.
BATCH_SIZE = 8192


class CounterTally:
    """Counts kept in a plain ``Counter`` and added to Beam counters once per batch.

    A Beam counter update costs about a microsecond; a stage that counts several things per
    record would spend more on counting than on its work.
    """

    def __init__(self) -> None:
        self.pending: Counter[str] = Counter()
        self._counters: dict[str, Any] = {}

    def add(self, name: str, n: int = 1) -> None:
        self.pending[name] += n

    def flush(self) -> None:
        for name, n in self.pending.items():
            if n:
                made = self._counters.get(name)
                if made is None:
                    made = self._counters[name] = counter(name)
                made.inc(n)
        self.pending.clear()


class RecordStage(beam.DoFn):
    """A stage over one batch: ``one(element)`` per element, one output batch per input batch.

    Subclasses set ``stage`` (the dead-letter stage name) and implement :meth:`one`, returning
    the output record (or, with ``many = True``, an iterable of output records). Raising
    :class:`RecordError` rejects the element with its reason; any other exception rejects it as
    ``unexpected_error:<ExceptionType>`` (the message is never copied: it may quote a value).
    Without a dead-letter context (stages that never reject) exceptions propagate.
    """

    stage = "stage"
    many = False

    def __init__(self, context: DeadLetterContext | None = None) -> None:
        self._context = context
        self._masker = None
        self.tally: CounterTally | None = None

    @property
    def context(self) -> DeadLetterContext | None:
        """Where the stage's rejected records go (None: it rejects none)."""
        return self._context

    def setup(self) -> None:
        self._masker = self._context.masker() if self._context is not None else None
        self.tally = CounterTally()

    def one(self, element: Any) -> Any:
        raise NotImplementedError

    def process(self, batch: AnyBatch) -> Iterator[Any]:
        if isinstance(batch, TableBatch):
            return self.process_table(batch.table)
        return self.process_records(batch)

    def process_table(self, table: pa.Table) -> Iterator[Any]:
        """A columnar batch. Stages with a columnar version override it; by default every row
        goes to the record path, counted as a fallback (``no_columnar_path``)."""
        return self.fall_back(table, "no_columnar_path")

    def fall_back(self, table: pa.Table, reason: str) -> Iterator[Any]:
        """The rows of ``table`` through the record path (``to_pylist``, a :class:`Batch` out),
        counted as the stage's fallback for ``reason`` (an error in strict mode)."""
        fallback(self.stage, reason, table.num_rows)
        return self.process_records(Batch(table.to_pylist()))

    def process_records(self, batch: Batch) -> Iterator[Any]:
        """A batch of records, ``one()`` each."""
        good = Batch()
        keep = good.extend if self.many else good.append
        one = self.one
        if self._context is None:
            for element in batch:
                keep(one(element))
        else:
            for element in batch:
                try:
                    keep(one(element))
                except RecordError as rejected:
                    yield self._reject(rejected.error, element, rejected)
                except Exception as err:  # a record's failure is its own dead letter
                    yield self._reject(f"unexpected_error:{type(err).__name__}", element, None)
        self.tally.flush()
        if good:
            yield good

    def _reject(
        self, error: str, element: Any, rejected: RecordError | None
    ) -> beam.pvalue.TaggedOutput:
        raw = rejected.raw if rejected is not None and rejected.raw is not None else element
        event_id = rejected.event_id if rejected is not None else None
        if event_id is None and isinstance(element, Mapping):
            event_id = element.get("event_id")
        return self._context.rejected(
            stage=self.stage, error=error, raw=raw, masker=self._masker, event_id=event_id
        )


class Unbatch(beam.PTransform):
    """Batches back to single elements."""

    def expand(self, batches):
        return batches | "Flatten" >> beam.FlatMap(records_of)


class Rebatch(beam.PTransform):
    """Single elements to batches of up to :data:`BATCH_SIZE`."""

    def __init__(self, max_batch_size: int = BATCH_SIZE) -> None:
        super().__init__()
        self._max = max_batch_size

    def expand(self, elements):
        return elements | "BatchElements" >> beam.BatchElements(
            min_batch_size=1, max_batch_size=self._max
        )


class ApplyStage(beam.PTransform):
    """Apply a :class:`RecordStage` to a PCollection of batches; yields the good output (batches,
    unless ``output_type`` says otherwise), or ``(good, dead_letters)`` when the stage has a
    dead-letter context. (Tests that think in single records use
    ``tests.support.stages.on_records``.)
    """

    def __init__(self, fn: RecordStage, *, output_type: Any = AnyBatch) -> None:
        super().__init__()
        self._fn = fn
        self._output_type = output_type

    def expand(self, batches: beam.PCollection) -> Any:
        context = self._fn.context
        if context is None:
            return batches | "Apply" >> beam.ParDo(self._fn).with_output_types(self._output_type)
        return batches | "Apply" >> ParDoWithDeadLetters(
            self._fn, self._fn.stage, context, output_type=self._output_type
        )

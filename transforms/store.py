"""Store: Guard -> Tag -> a sink, the tail every source shares.

Whatever a source did before (geolocation and enrichment for visits, fingerprinting for temporary
keys, nothing for logs), its records end the same way: the guard re-checks the invariants, the
tagger projects them onto their categories and stamps the policy, and the sink writes the
``(category, pyarrow.Table)`` elements the tagger gives. Applying it yields what the sink
returns, then the dead letters of the guard and the tagger.

The sink is the seam for another store: any ``PTransform`` of ``(category, table)`` elements.
The pipelines build ``transforms.sinks.WriteTables`` (Hive partitions, Parquet/Avro) with the
run's staging (``RunContext.sink()``); its ``fileio.FileResult`` outputs are what the run's
commit (``transforms.commit``) makes visible, so a sink whose files should be committed returns
the same (an object with the full ``file_name`` of each file it wrote).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import apache_beam as beam

from schemas.arrow import arrow_schema
from schemas.policy import Category, Policy
from transforms.deadletter import DeadLetterContext
from transforms.guard import Guard
from transforms.tag import CategoryOutput, Tag

__all__ = ["Store"]


class Store(beam.PTransform):
    """Guard, tag and write batches of records; yields the sink's output (``WriteTables``: the
    written files, ``fileio.FileResult``s) followed by the dead letters
    (``transforms.deadletter.DeadLetters``: the stages' PCollections, unflattened):
    ``files, *dead = batches | Store(...)``.

    ``schemas``: the Avro schema of each category of ``outputs``; its tables have the Arrow
    schema derived from it (``schemas.arrow.arrow_schema``). ``sink``: a ``PTransform`` of
    ``(category, pyarrow.Table)`` elements. ``run_time``: rows already expired at it are not
    written (``expired_on_arrival``).
    """

    def __init__(
        self,
        *,
        policy: Policy,
        outputs: Sequence[CategoryOutput],
        schemas: Mapping[str, Any],
        extra_keys: Iterable[str],
        context: DeadLetterContext,
        sink: beam.PTransform,
        exclusive: bool = False,
        run_time: int | None = None,
    ) -> None:
        super().__init__()
        categories: tuple[Category, ...] = tuple(policy.category(o.category) for o in outputs)
        self._guard = Guard(policy, categories, tuple(extra_keys), context)
        self._tag = Tag(
            policy,
            outputs,
            context,
            exclusive,
            schemas={name: arrow_schema(schema) for name, schema in schemas.items()},
            run_time=run_time,
        )
        self._sink = sink

    def expand(self, batches: beam.PCollection) -> tuple[Any, ...]:
        safe, guard_dead = batches | "Guard" >> self._guard
        tables, tag_dead = safe | "Tag" >> self._tag
        written = tables | "Write" >> self._sink
        return (written, *guard_dead, *tag_dead)

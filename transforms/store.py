"""Store: Guard -> Tag -> Write, the tail every source shares.

Whatever a source did before (geolocation and enrichment for visits, fingerprinting for temporary
keys, nothing for logs), its records end the same way: the guard re-checks the invariants, the
tagger projects them onto their categories and stamps the policy, and the sinks write the
partitions. Applying it yields the dead letters of the guard and the tagger.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import apache_beam as beam

from schemas.arrow import arrow_schema
from schemas.policy import Category, Policy
from transforms.deadletter import DeadLetterContext
from transforms.guard import Guard
from transforms.sinks import WritePartitioned, WriteTables
from transforms.tag import CategoryOutput, Tag

__all__ = ["Store"]


class Store(beam.PTransform):
    """Guard, tag and write records; yields the written files (``fileio.FileResult``s) followed
    by the dead letters (``transforms.deadletter.DeadLetters``: the stages' PCollections,
    unflattened): ``files, *dead = records | Store(...)``.

    ``run_token`` names the files (a run's id, so that its reruns replace them) and
    ``remove_temp`` says whether the sink removes its temp folder (see
    ``transforms.sinks.SpillAndCompact``).

    ``run_time``: rows already expired at it are not written (``expired_on_arrival``).

    ``batched``: the input is batches of records (``transforms.batches``); the tagger then
    builds Arrow tables and ``WriteTables`` writes them, with no Python dict per output row.
    """

    def __init__(
        self,
        *,
        policy: Policy,
        outputs: Sequence[CategoryOutput],
        schemas: Mapping[str, Any],
        extra_keys: Iterable[str],
        output_dir: str,
        formats: Sequence[str],
        context: DeadLetterContext,
        exclusive: bool = False,
        batched: bool = False,
        run_time: int | None = None,
        run_token: str | None = None,
        remove_temp: bool = True,
    ) -> None:
        super().__init__()
        categories: tuple[Category, ...] = tuple(policy.category(o.category) for o in outputs)
        sink = {"run_token": run_token, "remove_temp": remove_temp}
        self._guard = Guard(policy, categories, tuple(extra_keys), context, batched=batched)
        if batched:
            arrow = {name: arrow_schema(schema) for name, schema in schemas.items()}
            self._tag = Tag(
                policy,
                outputs,
                context,
                exclusive,
                batched=True,
                schemas=arrow,
                run_time=run_time,
            )
            self._write = WriteTables(output_dir, dict(schemas), tuple(formats), **sink)
        else:
            self._tag = Tag(policy, outputs, context, exclusive=exclusive, run_time=run_time)
            self._write = WritePartitioned(output_dir, dict(schemas), tuple(formats), **sink)

    def expand(self, records):
        safe, guard_dead = records | "Guard" >> self._guard
        rows, tag_dead = safe | "Tag" >> self._tag
        files = rows | "Write" >> self._write
        return (files, *guard_dead, *tag_dead)

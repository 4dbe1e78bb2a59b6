"""Run a production (batched) stage on plain records, the way tests think of them.

The pipelines move batches (``transforms.elements``); a test writes records. :func:`on_records`
batches them with ``Rebatch``, applies the stage as production does, and unbatches its good
output (dead letters are single letters already), so that a test compares the stage's rows with
the record-by-record reference functions without a second production mode in the stage.
"""

from __future__ import annotations

from typing import Any

import apache_beam as beam

from transforms.batches import Rebatch, Unbatch


def on_records(records: beam.PCollection, stage: beam.PTransform, label: str = "Stage") -> Any:
    """``stage`` applied to single ``records``: its good output as single records, and its dead
    letters (when it has them) as it returns them: ``good`` or ``(good, dead_letters)``."""
    applied = records | f"{label}Batch" >> Rebatch() | label >> stage
    if isinstance(applied, tuple):
        good, *rest = applied
        return (good | f"{label}Unbatch" >> Unbatch(), *rest)
    return applied | f"{label}Unbatch" >> Unbatch()

"""Dead letters: every rejected record, with where and why, and nothing sensitive in clear.

A dead letter is a dict ``{source, stage, error, detail?, event_id?, raw, expires_at}``:
- ``error`` is a reason code (``missing_field``, ``malformed_timestamp``, ``guard``...) optionally
  followed by ``:<field or invariant>``; the run report counts dead letters by the code;
- ``raw`` is the input line as received (or, for a record rejected after parsing, the record as it
  stood at that stage), masked by a :class:`~transforms.masking.Masker`;
- ``expires_at`` (epoch micros): dead letters are personal data too and are purged like the rest.

Expected rejections are emitted by DoFns on a ``dead_letter`` tagged output; unexpected exceptions
are caught by Beam's ``with_exception_handling`` and converted by :class:`FromExceptions`, so no
bundle ever fails on a bad record and nothing is silently lost. Exception messages are *not*
copied (they may quote a value); only the exception type is.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import apache_beam as beam

from transforms.masking import Masker

__all__ = [
    "DEAD_LETTER_TAG",
    "DeadLetterContext",
    "FromExceptions",
    "ParDoWithDeadLetters",
    "RecordError",
    "make_dead_letter",
]

DEAD_LETTER_TAG = "dead_letter"


class RecordError(Exception):
    """Raised inside a stage to reject a record with a reason code and optional detail.

    ``raw``: what the dead letter shows instead of the element (e.g. a withheld placeholder);
    ``event_id``: the record's id when the element itself does not carry it (a raw line).
    """

    def __init__(
        self, error: str, detail: str | None = None, *, raw: Any = None, event_id: Any = None
    ) -> None:
        super().__init__(f"{error}:{detail}" if detail else error)
        self.error = f"{error}:{detail}" if detail else error
        self.raw = raw
        self.event_id = event_id


def make_dead_letter(
    *,
    source: str,
    stage: str,
    error: str,
    raw: Any,
    masker: Masker,
    expires_at: int,
    event_id: Any = None,
) -> dict[str, Any]:
    """Build a dead letter; ``raw`` is masked here so that no caller can forget to.

    ``event_id`` is kept only when it is a string (a rejected record's may be anything)."""
    if isinstance(raw, bytes):
        raw = raw.decode("utf-8", errors="replace")
    elif not isinstance(raw, (str, Mapping)):
        raw = repr(raw)
    if isinstance(raw, str):
        raw_text = masker.mask_text(raw)
    else:
        raw_text = json.dumps(masker.mask_value(dict(raw)), ensure_ascii=False, default=str)
    letter: dict[str, Any] = {
        "source": source,
        "stage": stage,
        "error": error,
        "raw": raw_text,
        "expires_at": expires_at,
    }
    if isinstance(event_id, str):
        letter["event_id"] = event_id
    return letter


@dataclass(frozen=True)
class DeadLetterContext:
    """What every stage needs to write its dead letters: the source, the names to mask, expiry."""

    source: str
    mask_names: tuple[str, ...]
    expires_at: int

    def masker(self) -> Masker:
        return Masker(self.mask_names)

    def letter(
        self, *, stage: str, error: str, raw: Any, masker: Masker, event_id: Any = None
    ) -> dict[str, Any]:
        return make_dead_letter(
            source=self.source,
            stage=stage,
            error=error,
            raw=raw,
            masker=masker,
            expires_at=self.expires_at,
            event_id=event_id,
        )

    def rejected(
        self, *, stage: str, error: str, raw: Any, masker: Masker, event_id: Any = None
    ) -> beam.pvalue.TaggedOutput:
        """The dead letter as a DoFn emits it: on the ``dead_letter`` output."""
        return beam.pvalue.TaggedOutput(
            DEAD_LETTER_TAG,
            self.letter(stage=stage, error=error, raw=raw, masker=masker, event_id=event_id),
        )


class _ExceptionToDeadLetter(beam.DoFn):
    def __init__(self, stage: str, context: DeadLetterContext):
        self._stage = stage
        self._context = context
        self._masker: Masker | None = None

    def setup(self) -> None:
        self._masker = self._context.masker()

    def process(self, failed: tuple[Any, tuple[type, str, list[str]]]):
        element, (exc_type, _message, _traceback) = failed
        error = f"unexpected_error:{getattr(exc_type, '__name__', str(exc_type))}"
        # A failed batch (transforms.batches, which imports this module) is one dead letter per
        # record it held.
        from transforms.batches import AnyBatch, records_of

        for item in records_of(element) if isinstance(element, (list, AnyBatch)) else (element,):
            yield self._context.letter(
                stage=self._stage,
                error=error,
                raw=item,
                masker=self._masker,
                event_id=item.get("event_id") if isinstance(item, Mapping) else None,
            )


class FromExceptions(beam.PTransform):
    """Turn the ``bad`` output of ``with_exception_handling`` into dead letters."""

    def __init__(self, stage: str, context: DeadLetterContext):
        super().__init__()
        self._fn = _ExceptionToDeadLetter(stage, context)

    def expand(self, failures):
        return failures | "ToDeadLetter" >> beam.ParDo(self._fn)


class ParDoWithDeadLetters(beam.PTransform):
    """``ParDo(dofn)`` whose expected rejections (``dead_letter`` output) and unexpected
    exceptions (``with_exception_handling``) both end up as dead letters.

    Applying it yields ``(good, dead_letters)``; ``output_type`` is the good output's element
    type (its coder is the registered one).
    """

    def __init__(
        self,
        dofn: beam.DoFn,
        stage: str,
        context: DeadLetterContext,
        *,
        output_type: Any = Any,
    ) -> None:
        super().__init__()
        self._dofn = dofn
        self._stage = stage
        self._context = context
        self._output_type = output_type

    def expand(self, pcoll):
        results = pcoll | "Apply" >> beam.ParDo(self._dofn).with_output_types(
            self._output_type
        ).with_outputs(DEAD_LETTER_TAG, main="good").with_exception_handling(
            dead_letter_tag="failed"
        )
        crashed = results.failed | "Crashed" >> FromExceptions(self._stage, self._context)
        dead = (results[DEAD_LETTER_TAG], crashed) | "DeadLetters" >> beam.Flatten()
        return results.good, dead

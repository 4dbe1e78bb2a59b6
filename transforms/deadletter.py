"""Dead letters: every rejected record, with where and why, and nothing sensitive in clear.

A dead letter is a dict ``{source, stage, error, raw, event_id?, expires_at}``:
- ``error`` is a reason code (``missing_field``, ``malformed_timestamp``, ``guard``...) optionally
  followed by ``:<declared field or invariant>``; the run report counts dead letters by the code;
- ``raw`` is the input line as received (or, for a record rejected after parsing, the record as it
  stood at that stage), masked closed-world by a :class:`~transforms.masking.Masker`: only the
  fields of the source's :class:`~transforms.masking.Exposure` stay readable, text scanned;
- a line that may not be kept as text (not a JSON object, too deep, too large) has ``raw`` null
  and ``raw_bytes`` (its length) and ``raw_sha256`` instead, so that it can be found again in the
  source without the dead letter holding any of it;
- ``expires_at`` (epoch micros): dead letters are personal data too and are purged like the rest.

The builder never raises: if masking fails for any reason, a last-resort letter keeps the
reason, the event id (if a bounded scan finds it), the length and SHA-256 of the raw input, and
no raw text. A dead letter is the one output that must exist for every rejected record.

Expected rejections are emitted by DoFns on a ``dead_letter`` tagged output; unexpected exceptions
are caught by Beam's ``with_exception_handling`` and converted by :class:`FromExceptions`, so no
bundle ever fails on a bad record and nothing is silently lost. Exception messages are *not*
copied (they may quote a value); only the exception type is.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import apache_beam as beam

from transforms.elements import AnyBatch, records_of
from transforms.masking import Exposure, Masker, masked_json
from transforms.rawinput import MAX_ID_CHARS, ReadFailure, RecordError, Withheld, has_surrogate
from transforms.scanning import ALL_KINDS, scan_text

__all__ = [
    "DEAD_LETTER_TAG",
    "DeadLetterContext",
    "DeadLetters",
    "FromExceptions",
    "ParDoWithDeadLetters",
    "RecordError",
    "make_dead_letter",
]

DEAD_LETTER_TAG = "dead_letter"

# The dead letters of a composite: the PCollections of its stages, never flattened into one.
# Beam's local runner (the FnApiRunner, also under multi_processing) materialises a Flatten of
# several PCollections in the runner process: 1M letters held ~2.8 GiB there, and runs of 1-2M
# letters lost some of them at that Flatten (reports that did not reconcile). The sink
# (``transforms.sinks.WriteDeadLetters``) takes the tuple and spills each where it is produced;
# a caller that wants one PCollection (a test) applies ``beam.Flatten()`` itself.
DeadLetters = tuple[beam.PCollection, ...]


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
    """Build a dead letter; ``raw`` is masked here so that no caller can forget to. Never raises.

    ``event_id`` is kept only when it is a string of at most ``MAX_ID_CHARS`` (scanned like any
    text: an id can hold an email too)."""
    letter: dict[str, Any] = {
        "source": source,
        "stage": stage,
        "error": error,
        "expires_at": expires_at,
    }
    try:
        shown = _masked(raw, masker)
    except Exception:  # the last resort: whatever failed, the letter exists without raw text
        shown = _summary(raw, masker.id_field)
    if isinstance(shown, str):
        letter["raw"] = shown
    else:
        letter["raw"] = None
        event_id = event_id if event_id is not None else shown.event_id
        if shown.length is not None:
            letter.update(raw_bytes=shown.length, raw_sha256=shown.sha256)
    if isinstance(event_id, str) and len(event_id) <= MAX_ID_CHARS and not has_surrogate(event_id):
        with contextlib.suppress(Exception):  # an id the scanner cannot read is not kept
            letter["event_id"] = scan_text(event_id, ALL_KINDS)[0]
    return letter


def _masked(raw: Any, masker: Masker) -> str | Withheld:
    if isinstance(raw, Withheld):
        return raw
    if isinstance(raw, ReadFailure):
        return json.dumps({"file": raw.path, "records_read": raw.records, "error": raw.error})
    if isinstance(raw, bytes | str):
        return masker.mask_text(raw)
    if isinstance(raw, Mapping):
        return masked_json(masker.mask_record(raw))
    return Withheld.of(repr(raw), masker.id_field)


def _summary(raw: Any, id_field: str) -> Withheld:
    """The last resort's view of ``raw``: its summary where it is text, else nothing."""
    with contextlib.suppress(Exception):  # even the summary failed: the reason alone
        if isinstance(raw, bytes | str):
            return Withheld.of(raw, id_field)
    return Withheld.nothing()


@dataclass(frozen=True)
class DeadLetterContext:
    """What every stage needs to write its dead letters: the source, what may be shown in
    clear (:class:`~transforms.masking.Exposure`), and when the letters expire."""

    source: str
    exposure: Exposure
    expires_at: int

    def masker(self) -> Masker:
        return Masker(self.exposure)

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
        # A failed batch is one dead letter per record it held.
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
    type (its coder is the registered one). ``dead_letters`` is a tuple of PCollections (the
    rejections, the crashes): see :data:`DeadLetters`.
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
        # The dead-letter output is declared with the good one: Beam warns about every tag that
        # with_outputs() requests and the type hints do not declare.
        results = pcoll | "Apply" >> beam.ParDo(self._dofn).with_output_types(
            self._output_type, **{DEAD_LETTER_TAG: Any}
        ).with_outputs(DEAD_LETTER_TAG, main="good").with_exception_handling(
            dead_letter_tag="failed"
        )
        crashed = results.failed | "Crashed" >> FromExceptions(self._stage, self._context)
        return results.good, (results[DEAD_LETTER_TAG], crashed)

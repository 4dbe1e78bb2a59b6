"""Closed-world masking: what of a record may be seen in clear, in a dead letter or a stored row.

Stored rows: every declared text field is scanned for secrets and contact data before it is
stored (:func:`stored_text_kinds`; Parse redacts in place and counts ``redacted.<kind>``).

A dead letter is personal data kept for two weeks, and it holds exactly what a pipeline refused:
records fed to the wrong source, payloads nobody declared, secrets under names nobody listed. A
list of names to hide is never complete, so the rule is an allow-list (:class:`Exposure`): a
value stays readable only when its field is declared by the source's schema and is neither
contact, secret nor media data; such a value is kept as it is when it is a number, a boolean or
null, and scanned (``transforms.scanning``: secrets and contact data redacted in place) when it is
text. Everything else is masked whole, whatever its depth: the values of undeclared keys, a
nested value under a declared key, the contact fields. Keys are kept (they say what was sent),
scanned and cut to :data:`MAX_KEY_CHARS`.

Text that does not decode to a JSON object, or that nests too deep to decode safely, keeps
nothing but its id: it becomes a :class:`~transforms.rawinput.Withheld` summary (length,
SHA-256, the id a bounded scan finds). Masking walks only the top level of a record, so no input
can make it recurse.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from schemas.avro import FieldSpec
from schemas.policy import Policy
from transforms.rawinput import MAX_DEPTH, Withheld, has_surrogate, nesting_exceeds
from transforms.scanning import ALL_KINDS, IDENTIFIER_KINDS, scan_text

__all__ = [
    "MASK",
    "MAX_KEY_CHARS",
    "Exposure",
    "Masker",
    "masked_json",
    "sensitive_fields",
    "stored_text_kinds",
]

MASK = "***"
MAX_KEY_CHARS = 64
_SCALARS = (int, float, bool)


@dataclass(frozen=True)
class Exposure:
    """What of a source's records a dead letter may show: the ``clear`` fields (declared, and
    neither contact, secret nor media) and the name of the record's id field."""

    clear: frozenset[str]
    id_field: str = "event_id"

    @classmethod
    def of(
        cls, declared: Iterable[str], masked: Iterable[str], *, id_field: str = "event_id"
    ) -> Exposure:
        """The exposure of a schema's ``declared`` fields less the ``masked`` ones."""
        return cls(frozenset(declared) - frozenset(masked), id_field)

    @classmethod
    def of_source(
        cls,
        policy: Policy,
        declared: Iterable[str],
        *,
        masked: Iterable[str] = (),
        id_field: str = "event_id",
    ) -> Exposure:
        """The exposure of a source whose schema declares ``declared``: less what the policy
        never shows (:func:`sensitive_fields`) and the source's own ``masked`` fields."""
        declared = tuple(declared)
        hidden = sensitive_fields(policy, declared) | frozenset(masked)
        return cls.of(declared, hidden, id_field=id_field)


def stored_text_kinds(
    specs: Sequence[FieldSpec], event_time_field: str | None, policy: Policy
) -> dict[str, frozenset[str]]:
    """The declared text fields a stored row keeps, and what the scanner looks for in each.

    Closed-world: every string field is free text and scanned for every kind, unless its schema
    says what it holds: an IP address (validated), an e-mail address the category holds by
    contract (``"format": "email"``, e.g. an account's login), an enum (its symbols), the event
    time (parsed). An identifier (``"format": "identifier"``) is scanned for everything but phone
    numbers (a numeric uin looks like one). The contact fields are not scanned: they are the
    contact data, stored or dropped whole by the region gate; a secret input is fingerprinted.
    """
    hidden = sensitive_fields(policy, [spec.name for spec in specs])
    kinds: dict[str, frozenset[str]] = {}
    for spec in specs:
        if (
            spec.name == event_time_field
            or spec.name in hidden
            or spec.format in ("ip", "email")
            or "string" not in spec.avro_types
        ):
            continue
        kinds[spec.name] = IDENTIFIER_KINDS if spec.identifier else ALL_KINDS
    return kinds


def sensitive_fields(policy: Policy, names: Iterable[str]) -> frozenset[str]:
    """The ``names`` that hold contact, secret or media data: the policy's contact fields, the
    inputs of fingerprints, and every name the policy's vocabulary calls a secret or media."""
    contact = {f for c in policy.categories.values() for f in c.field_groups.get("contact", ())}
    fingerprinted = {f for c in policy.categories.values() for f in c.fingerprints.values()}
    return frozenset(
        name
        for name in names
        if name in contact
        or name in fingerprinted
        or policy.is_secret_name(name)
        or policy.is_media_name(name)
    )


class Masker:
    """Masks records and raw lines under an :class:`Exposure`. Immutable; build one per DoFn."""

    def __init__(self, exposure: Exposure) -> None:
        self._clear = exposure.clear
        self.id_field = exposure.id_field

    def mask_record(self, record: Mapping[Any, Any]) -> dict[str, Any]:
        """A copy of ``record`` with every value outside the exposure masked (see the module
        docstring); the input is never changed."""
        masked: dict[str, Any] = {}
        clear = self._clear
        for key, value in record.items():
            name = key if isinstance(key, str) else str(key)
            if value is None:
                shown: Any = None
            elif name not in clear:
                shown = MASK
            elif isinstance(value, str):
                shown = scan_text(value, ALL_KINDS)[0]
            elif isinstance(value, _SCALARS):
                shown = value
            else:
                shown = MASK
            masked[_shown_key(name)] = shown
        return masked

    def mask_text(self, text: str | bytes) -> str | Withheld:
        """A raw input line as a dead letter may keep it: the masked object re-serialised (key
        order kept), or a :class:`Withheld` summary when it is not a JSON object."""
        obj = _decoded_object(text)
        if obj is None:
            return Withheld.of(text, self.id_field)
        return masked_json(self.mask_record(obj))


def masked_json(masked: Mapping[str, Any]) -> str:
    """A masked record as JSON text; readable non-ASCII, but ASCII escapes where it holds a lone
    surrogate (no coder or sink can carry one as UTF-8)."""
    text = json.dumps(masked, ensure_ascii=False, default=str)
    return json.dumps(masked, default=str) if has_surrogate(text) else text


def _shown_key(key: str) -> str:
    if len(key) > MAX_KEY_CHARS:
        key = key[:MAX_KEY_CHARS] + "…"
    return scan_text(key, ALL_KINDS)[0]


def _decoded_object(text: str | bytes) -> dict[Any, Any] | None:
    """The JSON object ``text`` holds, or None (not an object, not JSON, too deep to decode)."""
    if nesting_exceeds(text, MAX_DEPTH):
        return None
    try:
        obj = orjson.loads(text)
    except orjson.JSONDecodeError:
        try:
            obj = json.loads(text)  # what orjson refuses but the contract reads (NaN, surrogates)
        except (ValueError, RecursionError):
            return None
    return obj if isinstance(obj, dict) else None

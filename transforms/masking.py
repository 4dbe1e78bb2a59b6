"""Masking of secrets, media payloads and contact fields in anything that leaves a DoFn as text.

Dead letters keep the raw input so a record can be fixed and replayed, but the raw input is exactly
where a password, a UserSig or a private key would sit in clear. A :class:`Masker` replaces the
*values* of sensitive keys (matched by :func:`schemas.policy.normalise_name`, so ``UserSig`` and
``user_sig`` agree) wherever they occur, nested objects included.

Fail closed: a line that is not valid JSON is masked textually; if a sensitive key is still visible
afterwards with a value we could not delimit, the whole raw text is withheld.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from typing import Any

from schemas.policy import normalise_name

__all__ = ["MASK", "WITHHELD", "Masker"]

MASK = "***"
WITHHELD = "<withheld: not valid JSON and a sensitive field could not be delimited>"

# "key" : value   where value is a JSON string (possibly unterminated) or a bare token.
_PAIR = re.compile(
    r'"(?P<key>(?:[^"\\]|\\.)*)"(?P<sep>\s*:\s*)'
    r'(?P<value>"(?:[^"\\]|\\.)*"?|[^,{}\[\]\s"]+)?'
)
# key followed by : or = , quoted or not, to find sensitive names the pair pattern missed.
_LOOSE_KEY = re.compile(r'(?P<key>[A-Za-z][A-Za-z0-9_\-]*)["\']?\s*[:=]\s*(?P<rest>.{0,8})', re.S)


class Masker:
    """Masks the values of sensitive keys.

    ``names`` are field names (any spelling); a key matches when its normalised form is one of
    theirs. Build one per DoFn in ``setup()``; it is immutable and cheap to call.
    """

    def __init__(self, names: Iterable[str]) -> None:
        self._names = frozenset(normalise_name(n) for n in names)

    def is_sensitive(self, key: str) -> bool:
        return normalise_name(key) in self._names

    def mask_value(self, value: Any) -> Any:
        """A copy of ``value`` (dicts and lists walked recursively) with sensitive values masked."""
        if isinstance(value, dict):
            return {
                k: (MASK if self.is_sensitive(str(k)) and v is not None else self.mask_value(v))
                for k, v in value.items()
            }
        if isinstance(value, list | tuple):
            return [self.mask_value(v) for v in value]
        return value

    def mask_text(self, text: str) -> str:
        """Mask a raw input line; JSON is re-serialised (key order kept), anything else is
        masked textually and withheld entirely if that cannot be done safely."""
        try:
            parsed = json.loads(text)
        except ValueError:
            return self._mask_unparseable(text)
        return json.dumps(self.mask_value(parsed), ensure_ascii=False, default=str)

    def _mask_unparseable(self, text: str) -> str:
        undelimited = False

        def replace(match: re.Match[str]) -> str:
            nonlocal undelimited
            if not self.is_sensitive(match["key"]):
                return match[0]
            if match["value"] is None:  # an object, an array or nothing: cannot be cut out safely
                undelimited = True
            return f'"{match["key"]}"{match["sep"]}"{MASK}"'

        masked = _PAIR.sub(replace, text)
        if undelimited:
            return WITHHELD
        for loose in _LOOSE_KEY.finditer(masked):
            if self.is_sensitive(loose["key"]) and not loose["rest"].startswith(f'"{MASK}"'):
                return WITHHELD
        return masked

"""Field names classified by meaning: is this key a credential, or a media payload?

Why by meaning and not by a list: a list of spellings is closed-world, and the world is not.
``db_password``, ``x_api_key``, ``X-Auth-Token``, ``sessionKey``, ``password`` spelled with a
Cyrillic a, or with a zero-width space inside, are all credentials, and no list of exact names
holds every one of them. Here a name is first read as words (:func:`name_tokens`: Unicode
look-alikes folded to Latin, invisible characters dropped, split at separators, case changes and
digits) and a class matches when one of its *terms* occurs in those words. A secret that slips
through is a leak; a business field caught by mistake is a loud error at startup (the guard refuses
a policy that allows a field it also calls secret), so the stems err on the side of catching:
``auth`` also catches ``author``, ``secret`` also catches ``secretary``.

The terms are the policy's (``never_in_clear`` in ``schemas/policy.yaml``: the vocabulary is
policy, not code). Term syntax:

- ``"private key"``: words, written in any spelling the tokeniser reads (``private_key`` and
  ``privateKey`` are the same term). A name matches when its words, joined without separators,
  contain the term's words joined: ``private_key``, ``privateKey``, ``PRIVATEKEY`` and
  ``rsa_private_key_pem`` all contain ``privatekey``.
- ``"=pin"``: whole words only. A name matches when a run of its consecutive words, joined, is
  exactly the term: ``pin``, ``user_pin`` and ``pinCode`` match, ``spinner`` and ``shipping`` do
  not. For short stems that occur inside ordinary words (``pass`` in ``bypass``, ``sig`` in
  ``design``, ``otp`` in ``footprint``, ``media`` in ``median``). Several words work too:
  ``"=voice data"`` matches ``voice_data`` and ``voicedata`` but not ``invoice_data``.

Aspects (:data:`DEFAULT_ASPECTS`): a name that has a term of a class *and* an aspect word of that
class (a whole word, outside the term) is about the thing, not the thing itself, and is not of the
class. For media, ``video_enabled``, ``enable_audio``, ``audio_volume`` and ``video_bitrate`` are
switches and measures (telemetry), while ``video``, ``audio_data`` and ``payloadVideo`` are the
content. Secrets have no aspects: ``password_length`` is still secret-named.

Derivatives (:data:`DERIVED_WORDS`): a name ending in ``fingerprint``, ``hash``, ``hmac``, ... names
a one-way derivative of what precedes it. By default that does not count: from its name alone,
``private_key_fingerprint`` in an input may hold the key itself (a producer's mistake) or an
unsalted hash that is as good as the key, so it is secret-named like ``private_key``. Only a caller
that computed the value itself, such as the policy's stored fingerprint columns written after the
fingerprint stage, passes ``allow_derived=True``; such a name is then of no class.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Iterable, Iterator, Mapping
from functools import lru_cache
from itertools import accumulate
from types import MappingProxyType

__all__ = [
    "DEFAULT_ASPECTS",
    "DERIVED_WORDS",
    "MEDIA",
    "SECRET",
    "NameClassifier",
    "name_tokens",
]

SECRET = "secret"
MEDIA = "media"

DEFAULT_ASPECTS: Mapping[str, tuple[str, ...]] = MappingProxyType(
    {
        MEDIA: (
            # switches and states
            "enable", "enabled", "disable", "disabled", "mute", "muted", "unmute", "on", "off",
            "is", "has", "start", "started", "stop", "stopped", "switch", "toggle", "mode",
            "state", "status", "setting", "settings", "config", "permission", "supported",
            # measures
            "rate", "bitrate", "kbps", "bps", "fps", "codec", "quality", "level", "volume", "gain",
            "resolution", "width", "height", "duration", "ms", "size", "length", "count", "delay",
            "latency", "jitter", "loss", "stats", "score", "mos", "channels",
            # references to the content, not the content
            "id", "url", "uri", "type", "format", "device",
        ),
    }
)  # fmt: skip

DERIVED_WORDS: tuple[str, ...] = ("fingerprint", "hash", "hashed", "hmac", "digest", "sha256")

# Letters that look like Latin ones, by Unicode name (so no look-alike hides in this file), folded
# to the Latin letter of the same case so that camelCase still splits. NFKC already folds fullwidth
# forms, mathematical alphanumerics, ligatures and the long s.
_LOOK_ALIKES = {
    "a": ("CYRILLIC SMALL LETTER A", "GREEK SMALL LETTER ALPHA", "LATIN SMALL LETTER ALPHA"),
    "b": ("CYRILLIC SMALL LETTER SOFT SIGN", "GREEK SMALL LETTER BETA"),
    "c": ("CYRILLIC SMALL LETTER ES",),
    "d": ("CYRILLIC SMALL LETTER KOMI DE",),
    "e": ("CYRILLIC SMALL LETTER IE", "GREEK SMALL LETTER EPSILON"),
    "g": ("LATIN SMALL LETTER SCRIPT G",),
    "h": ("CYRILLIC SMALL LETTER SHHA", "CYRILLIC SMALL LETTER EN", "ARMENIAN SMALL LETTER HO"),
    "i": (
        "CYRILLIC SMALL LETTER BYELORUSSIAN-UKRAINIAN I",
        "GREEK SMALL LETTER IOTA",
        "LATIN SMALL LETTER DOTLESS I",
        "LATIN SMALL LETTER IOTA",
    ),
    "j": ("CYRILLIC SMALL LETTER JE", "LATIN SMALL LETTER DOTLESS J"),
    "k": ("CYRILLIC SMALL LETTER KA", "GREEK SMALL LETTER KAPPA"),
    "l": ("CYRILLIC SMALL LETTER PALOCHKA",),
    "m": ("CYRILLIC SMALL LETTER EM",),
    "n": ("CYRILLIC SMALL LETTER PE", "GREEK SMALL LETTER ETA", "ARMENIAN SMALL LETTER VO"),
    "o": ("CYRILLIC SMALL LETTER O", "GREEK SMALL LETTER OMICRON", "ARMENIAN SMALL LETTER OH"),
    "p": ("CYRILLIC SMALL LETTER ER", "GREEK SMALL LETTER RHO"),
    "q": ("CYRILLIC SMALL LETTER QA",),
    "r": ("CYRILLIC SMALL LETTER GHE",),
    "s": ("CYRILLIC SMALL LETTER DZE",),
    "t": ("CYRILLIC SMALL LETTER TE", "GREEK SMALL LETTER TAU"),
    "u": ("GREEK SMALL LETTER UPSILON", "ARMENIAN SMALL LETTER SEH"),
    "v": ("GREEK SMALL LETTER NU",),
    "w": ("CYRILLIC SMALL LETTER WE", "GREEK SMALL LETTER OMEGA"),
    "x": ("CYRILLIC SMALL LETTER HA", "GREEK SMALL LETTER CHI"),
    "y": (
        "CYRILLIC SMALL LETTER U",
        "CYRILLIC SMALL LETTER STRAIGHT U",
        "GREEK SMALL LETTER GAMMA",
    ),
    "A": ("CYRILLIC CAPITAL LETTER A", "GREEK CAPITAL LETTER ALPHA"),
    "B": ("CYRILLIC CAPITAL LETTER VE", "GREEK CAPITAL LETTER BETA"),
    "C": ("CYRILLIC CAPITAL LETTER ES",),
    "D": ("CYRILLIC CAPITAL LETTER KOMI DE",),
    "E": ("CYRILLIC CAPITAL LETTER IE", "GREEK CAPITAL LETTER EPSILON"),
    "H": ("CYRILLIC CAPITAL LETTER EN", "CYRILLIC CAPITAL LETTER SHHA", "GREEK CAPITAL LETTER ETA"),
    "I": (
        "CYRILLIC CAPITAL LETTER BYELORUSSIAN-UKRAINIAN I",
        "CYRILLIC LETTER PALOCHKA",
        "GREEK CAPITAL LETTER IOTA",
    ),
    "J": ("CYRILLIC CAPITAL LETTER JE",),
    "K": ("CYRILLIC CAPITAL LETTER KA", "GREEK CAPITAL LETTER KAPPA"),
    "M": ("CYRILLIC CAPITAL LETTER EM", "GREEK CAPITAL LETTER MU"),
    "N": ("GREEK CAPITAL LETTER NU",),
    "O": ("CYRILLIC CAPITAL LETTER O", "GREEK CAPITAL LETTER OMICRON"),
    "P": ("CYRILLIC CAPITAL LETTER ER", "GREEK CAPITAL LETTER RHO"),
    "Q": ("CYRILLIC CAPITAL LETTER QA",),
    "S": ("CYRILLIC CAPITAL LETTER DZE",),
    "T": ("CYRILLIC CAPITAL LETTER TE", "GREEK CAPITAL LETTER TAU"),
    "W": ("CYRILLIC CAPITAL LETTER WE",),
    "X": ("CYRILLIC CAPITAL LETTER HA", "GREEK CAPITAL LETTER CHI"),
    "Y": (
        "CYRILLIC CAPITAL LETTER U",
        "CYRILLIC CAPITAL LETTER STRAIGHT U",
        "GREEK CAPITAL LETTER UPSILON",
    ),
    "Z": ("GREEK CAPITAL LETTER ZETA",),
}
_CONFUSABLES = str.maketrans(
    {unicodedata.lookup(name): latin for latin, names in _LOOK_ALIKES.items() for name in names}
)

# Letters (category Lo) that render as nothing: Hangul fillers.
_BLANK_LETTERS = frozenset("\u115f\u1160\u3164\uffa0")


def _fold(text: str) -> str:
    """``text`` with compatibility forms, invisible characters, accents and look-alikes folded."""
    text = unicodedata.normalize("NFKC", text)
    text = unicodedata.normalize(
        "NFD",
        "".join(ch for ch in text if unicodedata.category(ch) != "Cf" and ch not in _BLANK_LETTERS),
    )
    text = "".join(ch for ch in text if not unicodedata.category(ch).startswith("M"))
    return text.translate(_CONFUSABLES)


def _splits_before(prev: str, ch: str, nxt: str) -> bool:
    """A word starts at ``ch``: letters after digits (or the reverse), ``userSig``, ``XAuth``."""
    if prev.isalpha() != ch.isalpha():
        return True
    if not ch.isalpha() or not ch.isupper():
        return False
    return not prev.isupper() or nxt.islower()


def _pieces(text: str) -> Iterator[str]:
    """``text`` split at every character that is not a letter or digit and at word starts."""
    start = None
    for i, ch in enumerate(text):
        if not ch.isalnum():
            if start is not None:
                yield text[start:i]
                start = None
        elif start is None:
            start = i
        elif _splits_before(text[i - 1], ch, text[i + 1 : i + 2]):
            yield text[start:i]
            start = i
    if start is not None:
        yield text[start:]


@lru_cache(maxsize=1 << 16)  # runs on every field name of every record; names repeat
def name_tokens(name: str) -> tuple[str, ...]:
    """The words of a field name, lower-case and in Latin letters where they look Latin.

    NFKC (fullwidth and mathematical letters), format characters (zero-width, soft hyphen) and
    Hangul fillers removed, combining marks removed after NFD, Cyrillic/Greek look-alikes folded
    to Latin, then split at separators, case changes (``userSig`` -> user, sig; ``APIKey`` -> api,
    key) and letter/digit changes, and case-folded. Never raises, whatever the text.
    """
    tokens: list[str] = []
    for piece in _pieces(_fold(name)):
        tokens.extend(_pieces(_fold(piece.casefold())))
    return tuple(tokens)


def _needle(term: str, where: str) -> str:
    joined = "".join(name_tokens(term))
    if not joined:
        raise ValueError(f"{where}: {term!r} has no letters or digits")
    return joined


def _spans(joined: str, bounds: frozenset[int], needle: str, whole: bool) -> Iterator[range]:
    """Where ``needle`` occurs in ``joined`` (only on word bounds if ``whole``)."""
    start = joined.find(needle)
    while start >= 0:
        end = start + len(needle)
        if not whole or (start in bounds and end in bounds):
            yield range(start, end)
        start = joined.find(needle, start + 1)


def _apart(a: range, b: range) -> bool:
    return a.stop <= b.start or b.stop <= a.start


class NameClassifier:
    """Which classes (``secret``, ``media``, ...) a field name belongs to, by its words.

    ``terms``: class -> terms (see the module docstring for the syntax); ``aspects``: class ->
    aspect words, for the classes of ``terms`` (others are ignored, so the default aspects suit
    any vocabulary); ``derived``: the words that end a name of a derivative.
    """

    def __init__(
        self,
        terms: Mapping[str, Iterable[str]],
        *,
        aspects: Mapping[str, Iterable[str]] = DEFAULT_ASPECTS,
        derived: Iterable[str] = DERIVED_WORDS,
    ) -> None:
        self._terms: dict[str, tuple[tuple[str, bool], ...]] = {}
        for cls, class_terms in terms.items():
            if isinstance(class_terms, str):
                raise TypeError(f"terms of {cls!r} must be a list of terms, not one string")
            compiled = []
            for term in class_terms:
                whole = term.startswith("=")
                compiled.append((_needle(term[1:] if whole else term, f"terms of {cls!r}"), whole))
            if not compiled:
                raise ValueError(f"class {cls!r} has no terms")
            self._terms[cls] = tuple(compiled)
        self._aspects = {
            cls: tuple(_needle(word, f"aspects of {cls!r}") for word in words)
            for cls, words in aspects.items()
            if cls in self._terms
        }
        self._derived = tuple(_needle(word, "derived words") for word in derived)

    def classes(self, name: str, *, allow_derived: bool = False) -> frozenset[str]:
        """The classes ``name`` belongs to (empty for a plain business field).

        ``allow_derived``: the caller computed the value itself, so a name ending in a derived
        word (``private_key_fingerprint``) is of no class.
        """
        return _classes(self, name, allow_derived)

    def is_a(self, cls: str, name: str, *, allow_derived: bool = False) -> bool:
        """Whether ``name`` is of class ``cls``; an unknown class is an error, not a no."""
        if cls not in self._terms:
            known = ", ".join(sorted(self._terms))
            raise ValueError(f"unknown name class {cls!r}; the classifier has: {known}")
        return cls in _classes(self, name, allow_derived)

    def _classify(self, name: str, allow_derived: bool) -> frozenset[str]:
        tokens = name_tokens(name)
        joined = "".join(tokens)
        bounds = frozenset(accumulate(map(len, tokens), initial=0))
        if allow_derived and any(
            joined.endswith(word) and len(joined) - len(word) in bounds for word in self._derived
        ):
            return frozenset()
        found = set()
        for cls, terms in self._terms.items():
            hits = [s for needle, whole in terms for s in _spans(joined, bounds, needle, whole)]
            if not hits:
                continue
            about = (
                aspect
                for word in self._aspects.get(cls, ())
                for aspect in _spans(joined, bounds, word, True)
            )
            if not any(all(_apart(aspect, hit) for hit in hits) for aspect in about):
                found.add(cls)
        return frozenset(found)


@lru_cache(maxsize=1 << 16)  # per classifier (by identity) and name: the same keys on every record
def _classes(classifier: NameClassifier, name: str, allow_derived: bool) -> frozenset[str]:
    return classifier._classify(name, allow_derived)

"""Secrets and contact data found inside allowed free text, redacted in place.

The policy allows fields such as a visit's ``url``, ``user_agent`` and ``session_id`` or an SDK
log's ``message`` and ``sdk_version``, but people put a password in a log line, a Bearer token in a
header dump, an email and a phone number in a contact form's query string. Those values must not
reach the output in clear. :func:`scan_text` replaces each finding with ``[redacted:<kind>]`` and
counts the findings by kind, so that a run report tells *what* was removed, not only that something
was; :func:`scan_array` does the same for a whole Arrow string column.

Kinds (:data:`ALL_KINDS`):

* ``credential``: the value of a ``key=value``, ``key: value``, ``"key": "value"`` or ``key =>
  value`` pair whose key names a secret, and the password of ``scheme://user:password@host``. A
  key names a secret when it ends with a secret word (password, passwd, pwd, pw, pass,
  passphrase, secret, token, key, sig, signature, cookie, otp, credential, creds, jwt, pin, cvv,
  and "password" in the EEA's other languages: passwort, kennwort, mot de passe, contraseña,
  senha, wachtwoord, hasło, lösenord, salasana, passord, adgangskode; every secret term of the
  policy is one, which a test checks, and letters with diacritics are read folded, one character
  for one: ``Contraseña`` is the key ``Contrasena``) where a word starts (after a
  non-letter or at a camel-case hump: ``userSig``, ``user_sig``, ``USER-SIG``), or with a compound
  (``accesstoken``, ``apikey``, ``usersig``, ``privatekey`` ...), any case. A ``code`` is a secret
  after a qualifier (verification, verify, SMS, OTP, auth, confirmation, login, reset, MFA ...);
  a bare ``code`` is an error code far more often, so only a value that looks random (12 to 512
  characters with a digit and a lower-case letter: an OAuth authorization code) counts. The key
  stays, so that a log line remains readable. Placeholders (``***``, ``null``, ``true``,
  ``false``, ``none``, ``undefined``) are not secrets; a Cookie header's value runs to the end of
  the field.
* ``bearer``: the credential of an ``Authorization`` / ``Proxy-Authorization`` / ``auth`` header
  or field (after the scheme word Bearer, Basic or Token; the rest of the line for Digest, NTLM,
  Negotiate and the HMAC signature schemes such as ``TC3-HMAC-SHA256``), and a token-like word (a
  digit, or mixed case) after ``Bearer`` or ``Basic`` anywhere.
* ``pem``: a ``-----BEGIN ... PRIVATE KEY-----`` block up to its END line or, when the block is
  truncated, to the end of the base64 text after the header.
* ``jwt``: three base64url segments, the first starting ``eyJ`` (``{"``).
* ``api_key``: well-known formats: AWS access key ids (AKIA/ASIA), an AWS secret key after a key
  naming it, Google ``AIza``, GitHub ``ghp_ gho_ ghu_ ghs_ ghr_ github_pat_``, Slack ``xox?-``,
  Stripe ``sk_live_ rk_live_ sk_test_ rk_test_`` and OpenAI ``sk-`` keys (mixed case and a digit,
  so that a URL slug such as ``desk-setup-guide`` is not one).
* ``email``: ``local@domain.tld``, Unicode letters allowed, with a letter among the domain's
  first 63 characters (an address literal is not a name); ``logo@2x.png``-style asset names,
  whose "top-level domain" is a file extension, are not emails.
* ``phone``: see below.
* ``linkedin``: ``linkedin.com/in/<profile>`` and ``/pub/`` URLs, any subdomain, with or without
  the scheme.

Phone rule. A candidate is a run of digits with the usual separators (space, ``-``, ``.``, ``/``,
parentheses, ``+`` as a form-encoded space) that neither a letter nor a digit touches at its end.
It is redacted when

* it starts with ``+`` or the ``00`` international prefix, not glued to a word, a dot, a slash, a
  colon or a hyphen, and Google's libphonenumber (``phonenumbers``) parses it without a region as
  a *valid* number: its country's numbering plan has it; or
* a phone key precedes it (phone, tel, telephone, mobile, cell, fax, WhatsApp, MSISDN, SMS, Handy,
  ``phone_number``, ``tel:`` links, 手机号, 电话 ...): then a ``+``/``00`` number need only be
  *possible* (a plausible length for its country), and a national number, which has no country
  and so no plan to check, 6 to 15 digits that do not start like a date or an IPv4 address.

Bare national numbers with no such key are never redacted: nothing tells them from identifiers,
and identifiers are what these fields hold. Version strings (``Chrome/126.0.6478.126``,
``14_5``), IP addresses, timestamps, epoch milliseconds, numeric ids in paths, resolutions and hex
ids therefore stay: none starts with ``+``/``00`` at a word boundary or follows a phone key. When
a candidate runs on past its number, the longest prefix ending a digit group (7 to 15 digits)
that passes is the number (libphonenumber is asked about the three longest at most).

Percent-encoding. Query strings carry ``email=hans%40firma.de`` or ``phone=%2B4930...``: text
with ``%XX`` escapes of ASCII characters is also scanned decoded (once), and a finding there
redacts the original, encoded span.

Pre-filter. Most values hold none of this. :data:`PREFILTER` is one regular expression in the
subset common to Python's ``re`` and RE2 (no look-around, no ``\\s \\w \\d \\b``, ASCII classes
written out, scoped ``(?i:...)``) that matches any text that might hold a finding. Its
alternatives are built from the detectors' own fragments, each a part that a finding cannot do
without: ``@`` then a letter after at most 62 digits, dots, ``-`` or ``_``; ``:`` then ``@``
within 65 characters (a URL's password); a key ending in a secret word, a qualified code or
``auth(orization)``, a separator and a value that is more than a placeholder of stars; a bare
``code``, a separator and 12 characters of an OAuth code; a phone key then a number; ``+`` or
``00`` (after a non-word character) then a number; ``Bearer``/``Basic`` then a space;
``BEGIN ... PRIVATE KEY``; ``eyJ``; an API key prefix; ``linkedin.com``. For the decoded text it
also admits the escaped forms of ``@ + : = # " '``, spaces and number separators. Compiled
ASCII-only, Python admits nothing that RE2 would not.

Speed. :func:`scan_array` runs the pre-filter in Arrow (RE2: a few hundred nanoseconds a value,
plus a few milliseconds to compile it for each array, so chunks are joined first) and scans in
Python only the values it passes. Python's ``re`` would try the pre-filter's alternatives at every
position (about 250 us for 100 characters), so :func:`scan_text` does not run it: each detector
starts from a literal its findings hold (looked for in the ASCII-lower-cased text, keys then read
backwards from their separator) and does not run at all when the text holds none of its
literals; a flagged clean value costs some tens of microseconds.

Overlaps. Findings that overlap (``password=eyJ...``, an email inside a credential) merge into one
redaction of the most specific kind, in the order of :data:`KIND_ORDER`.

Idempotence and safety. A redaction changes what its neighbours see (``AKIA...AKIA...``: the
first key id ends where the second begins), so the scan repeats on its own output until a pass
finds nothing. A finding that overlaps a ``[redacted:...]`` marker is dropped, so markers are
never redacted, and each further pass shrinks the text left in clear, which bounds the passes.
Every repetition is bounded, none inside another that could split the same characters in many
ways, and every search resumes past what it has read, so a pass takes time linear in the text (a
megabyte of adversarial text in seconds) and any ``str`` (lone surrogates, NUL) is scanned
without raising.
"""

from __future__ import annotations

import functools
import itertools
import re
import string
from bisect import bisect_left
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping

import phonenumbers
import pyarrow as pa
import pyarrow.compute as pc

__all__ = [
    "ALL_KINDS",
    "IDENTIFIER_KINDS",
    "KIND_ORDER",
    "PREFILTER",
    "SECRET_KINDS",
    "marker",
    "scan_array",
    "scan_table",
    "scan_text",
]

# Most specific first: overlapping findings merge into the first of their kinds here.
KIND_ORDER = ("pem", "jwt", "api_key", "bearer", "credential", "linkedin", "email", "phone")
ALL_KINDS = frozenset(KIND_ORDER)
SECRET_KINDS = frozenset({"credential", "bearer", "pem", "jwt", "api_key"})
# Identifiers (a numeric uin, a user id) look like phone numbers; an email or a secret used as
# an identifier is still caught.
IDENTIFIER_KINDS = ALL_KINDS - {"phone"}

_RANK = {kind: rank for rank, kind in enumerate(KIND_ORDER)}
_MARKER = re.compile(r"\[redacted:(?:" + "|".join(KIND_ORDER) + r")\]")

Span = tuple[int, int]
Finding = tuple[int, int, str]


def marker(kind: str) -> str:
    """The text that replaces a finding of ``kind``."""
    return f"[redacted:{kind}]"


# --- keys -----------------------------------------------------------------------------------------
#
# Python's ``re`` skips quickly only to a pattern's leading literal, so each detector searches for
# a literal part of its findings (the case-insensitive ones in the ASCII-lower-cased text) and
# reads the rest around it, rather than trying a key pattern at every position of the text.

_SP = r"[ \t]{0,3}"
# The closing quote of a quoted key, plain or JSON-escaped; the opening quote of a value.
_QUOTE = r"\\?[\"']?"
_SEP = r"(?:=>|[:=])"
# Prose: "the password was hunter2". Only a value that looks like a secret is taken then
# (:func:`_looks_like_secret`): "password was changed" is a sentence, not a credential.
_NATURAL_SEP = r"[ \t]{1,3}(?:is|was)[ \t]{1,3}"
_KEY_CHARS = r"A-Za-z0-9_.-"
# A key, read backwards from its end in the reversed text: a word of letters, digits and _ . -
# (starting with a letter, at most 64 characters), and optionally one more word (no dot, at most
# 32 characters) and a space before it ("verification code").
_KEY_REVERSED = re.compile(
    rf"(?P<word>[{_KEY_CHARS}]{{0,63}}[A-Za-z])(?![{_KEY_CHARS}])"
    rf"(?: (?P<before>[A-Za-z0-9_-]{{0,31}}[A-Za-z])(?![{_KEY_CHARS}]))?"
)

# A key names a secret when it ends with one of the words (where a word of the key starts), with
# one of the compounds, or with "code" after one of the qualifiers.
# "Password" in the languages of the EEA that producers' keys are written in (German, French,
# Spanish, Portuguese, Dutch, Polish, Swedish, Finnish, Danish/Norwegian), ASCII-folded as keys
# are: a key in another language is as secret as an English one.
_PASSWORD_WORDS = (
    *("passwort", "kennwort", "motdepasse", "passe", "contrasena", "senha", "wachtwoord"),
    *("haslo", "losenord", "salasana", "passord", "adgangskode", "pw"),
)
# The same words as written (the detectors read them folded, the pre-filter as they are).
_UNFOLDED_PASSWORD_WORDS = ("contraseña", "hasło", "lösenord")
_SECRET_WORDS = (
    *("pass", "password", "passwords", "passwd", "pwd", "passphrase", "passcode"),
    *("secret", "secrets", "token", "tokens", "key", "sig", "signature", "privkey", "jwt"),
    *("cookie", "cookies", "otp", "totp", "hotp", "credential", "credentials", "creds"),
    *("bearer", "authentication", "pin", "cvv", "cvc"),
    *_PASSWORD_WORDS,
)
_SECRET_COMPOUNDS = (
    *("password", "passwd", "pwd", "passphrase", "passcode", "secret", "token", "apikey"),
    *("credential", "credentials", "signature", "usersig", "cookie"),
    *("privatekey", "secretkey", "sessionkey", "accesskey"),
    *(word for word in _PASSWORD_WORDS if len(word) > 5),
)
_CODE_QUALIFIERS = (
    *("verification", "verify", "verif", "sms", "otp", "auth", "authorization"),
    *("confirmation", "confirm", "security", "login", "access", "activation", "activate"),
    *("reset", "mfa", "twofactor", "pin", "recovery", "one_time", "one time", "one-time"),
    "onetime",
)
# Authorization headers and fields are the bearer detector's, not credential pairs.
_AUTH_KEYS = ("auth", "authorization", "proxy-auth", "proxy-authorization")
_COOKIE_KEYS = ("cookie", "cookies")
_PHONE_WORDS = (
    *("phone", "phones", "telephone", "tel", "telefon", "telefono", "mobile", "mobil"),
    *("cell", "cellphone", "fax", "whatsapp", "msisdn", "handy", "sms"),
)
_PHONE_NUMBER_WORDS = ("number", "no", "num", "nr")
_PHONE_KEY_ZH = r"(?:手机|电话)(?:号码?)?(?:是|为)?"
_FULLWIDTH_COLON = "\uff1a"
# Between a phone key and its number: a separator or spaces.
_PHONE_GAP = rf"(?:[ \t]{{0,3}}(?:[:=#{_FULLWIDTH_COLON}]|\.:?)[ \t]{{0,3}}|[ \t]{{1,3}})"
_PHONE_ZH_GAP = rf"[ \t]{{0,3}}(?:[:={_FULLWIDTH_COLON}][ \t]{{0,3}})?"
# Digits and separators as one bounded character run: no backtracking between digit groups.
_PHONE_BODY = r"\(?[0-9][0-9 \t().+/-]{4,28}[0-9]"
# Lower-cases A-Z and folds the Latin letters with diacritics of the EEA's languages to their
# base letter, one character for one (positions stay): the detectors read "contraseña", "hasło"
# and "lösenord" as the ASCII keys of their vocabulary.
_FOLDED = "áàâãäåāąćčçďéèêëēęěíìîïīłľĺńňñóòôõöøōőŕřśšşťúùûüūůűýÿźžż"
_BASES = "aaaaaaaacccdeeeeeeeiiiiilllnnnoooooooorrssstuuuuuuuyyzzz"
_ASCII_LOWER = str.maketrans(
    string.ascii_uppercase + _FOLDED + _FOLDED.upper(),
    string.ascii_lowercase + _BASES + _BASES,
)


def _alternation(words: Iterable[str]) -> str:
    """A pattern for any of ``words``, one branch per first letter, so that ``re`` tries a single
    branch at each position and skips quickly to the positions where a word may start."""
    rests: dict[str, list[str]] = {}
    for word in sorted(set(words), key=len, reverse=True):
        rests.setdefault(word[0], []).append(re.escape(word[1:]))
    return "|".join(f"{re.escape(first)}(?:{'|'.join(r)})" for first, r in rests.items())


_FOLD = str.maketrans(_FOLDED + _FOLDED.upper(), _BASES + _BASES.upper())


def _folded(text: str) -> str:
    """``text`` with the letters of :data:`_FOLDED` folded and case kept (positions stay): what
    a key is read from, so that ``Contraseña`` is the camel-case word ``Contrasena``."""
    return text if text.isascii() else text.translate(_FOLD)


def _ascii_lower(text: str) -> str:
    """``text`` with A-Z lower-cased and the letters of :data:`_FOLDED` folded (one character
    for one, so positions stay)."""
    return text.lower() if text.isascii() else text.translate(_ASCII_LOWER)


def _key_ending_at(reversed_text: str, end: int) -> str | None:
    """The key that ends at ``end`` of the text that ``reversed_text`` reverses, if any."""
    match = _KEY_REVERSED.match(reversed_text, len(reversed_text) - end)
    if match is None:
        return None
    word = match["word"][::-1]
    return word if match["before"] is None else f"{match['before'][::-1]} {word}"


def _starts_word(key: str, i: int) -> bool:
    """Whether a word of ``key`` starts at ``i``: at the start, after a non-letter, or at a
    camel-case hump (``userSig``)."""
    return i == 0 or not key[i - 1].isalpha() or (key[i - 1].islower() and key[i].isupper())


def _ends_with_word(key: str, words: tuple[str, ...]) -> bool:
    lowered = key.lower()
    return lowered.endswith(words) and any(
        lowered.endswith(word) and _starts_word(key, len(key) - len(word)) for word in words
    )


def _without_suffix(key: str, suffixes: tuple[str, ...]) -> str | None:
    """``key`` less the one of ``suffixes`` it ends with (any case) and up to three separators
    (`` _.-``) before it; None if it ends with none."""
    lowered = key.lower()
    if not lowered.endswith(suffixes):
        return None
    suffix = next(s for s in suffixes if lowered.endswith(s))
    head = key[: -len(suffix)]
    stripped = head.rstrip(" _.-")
    return stripped if len(head) - len(stripped) <= 3 else None


def _names_secret(key: str) -> bool:
    lowered = key.lower()
    if lowered in _AUTH_KEYS:
        return False
    if lowered.endswith(_SECRET_COMPOUNDS) or _ends_with_word(key, _SECRET_WORDS):
        return True
    qualifier = _without_suffix(key, ("code",))
    return qualifier is not None and qualifier.lower().endswith(_CODE_QUALIFIERS)


def _is_bare_code(key: str) -> bool:
    """A bare "code" is an error code far more often than a secret: only a value that looks like
    an OAuth authorization code makes it one."""
    return key.rsplit(" ", 1)[-1].lower() == "code"


_DIGIT, _LOWER_CASE = re.compile(r"[0-9]"), re.compile(r"[a-z]")


def _looks_like_oauth_code(value: str) -> bool:
    return bool(_DIGIT.search(value) and _LOWER_CASE.search(value))


def _is_phone_key(key: str) -> bool:
    if _ends_with_word(key, _PHONE_WORDS):
        return True
    before_number = _without_suffix(key, _PHONE_NUMBER_WORDS)
    return bool(before_number) and _ends_with_word(before_number, _PHONE_WORDS)


# --- credential -----------------------------------------------------------------------------------

_VALUE = re.compile(
    _SP + r"(?:\\\"(?P<escaped>(?:[^\"\\\r\n]|\\[^\"\r\n]){1,4096})"
    r"|\"(?P<double>(?:[^\"\\\r\n]|\\[^\r\n]){1,4096})"
    r"|'(?P<single>[^'\r\n]{1,4096})"
    r"|(?P<bare>[^\s\"'\\&,;<>{}\[\]][^\s\"'&,;<>{}]{0,4095}))"
)
_VALUE_GROUPS = ("escaped", "double", "single", "bare")
_PLACEHOLDER = re.compile(r"\*+|null|none|nil|undefined|true|false", re.IGNORECASE)
_REST_OF_FIELD = re.compile(r"[^\"'\r\n]{0,4096}")
_REST_OF_LINE = re.compile(r"[^\r\n]{0,4096}")
# An OAuth authorization code (RFC 6749: printable, here without separators), maybe quoted.
_OAUTH_CODE = re.compile(_SP + r"\\?[\"']?(?P<code>[A-Za-z0-9._~/+-]{12,512})(?![A-Za-z0-9._~/+-])")
# The password of scheme://user:password@host.
_URL_PASSWORD = re.compile(r"://[^\s/?#@:]{1,128}:(?P<password>[^\s/?#@]{1,64})@(?=[^\W_])")
# In the lower-cased text: the end of a key that may name a secret, then its separator.
_SECRET_KEY_END = re.compile(
    rf"(?:{_alternation((*_SECRET_WORDS, *_SECRET_COMPOUNDS, 'code'))})"
    rf"(?P<sep>{_QUOTE}{_SP}{_SEP}|(?P<natural>{_NATURAL_SEP}))"
)


def _value_span(text: str, match: re.Match[str]) -> Span:
    group = next(name for name in _VALUE_GROUPS if match[name] is not None)
    start, end = match.span(group)
    if group == "bare" and text[end - 1] == "\\" and text[end : end + 1] in ('"', "'"):
        end -= 1  # the value of an escaped JSON string ends before \"
    return start, end


def _secret_value_span(text: str, key: str, pos: int) -> Span | None:
    """The span of the secret value at ``pos`` (after the separator) of ``key``, if any."""
    if _names_secret(key):
        value = _VALUE.match(text, pos)
        if value is None:
            return None
        start, end = _value_span(text, value)
        if _PLACEHOLDER.fullmatch(text, start, end):
            return None
        if value["bare"] is not None and _ends_with_word(key, _COOKIE_KEYS):
            end = _REST_OF_FIELD.match(text, end).end()  # a Cookie header: name=value; ...
        return start, end
    if _is_bare_code(key):
        code = _OAUTH_CODE.match(text, pos)
        if code and _looks_like_oauth_code(code["code"]):
            return code.span("code")
    return None


def _looks_like_secret(value: str) -> bool:
    """A word of prose is no secret: a value after "is"/"was" is taken when it has a digit or is
    long (a token, a generated password)."""
    word = value.rstrip(".,;:!?)")
    return any(ch.isdigit() for ch in word) or len(word) >= 16


def _credential_spans(text: str, low: str) -> Iterator[Span]:
    covered, reversed_text = 0, _folded(text)[::-1]
    for hit in _SECRET_KEY_END.finditer(low):
        if hit.start() < covered:  # inside a value already redacted
            continue
        key = _key_ending_at(reversed_text, hit.start("sep"))
        span = key and _secret_value_span(text, key, hit.end())
        if span and hit["natural"] is not None and not _looks_like_secret(text[slice(*span)]):
            continue
        if span:
            yield span
            covered = span[1]
    for match in _URL_PASSWORD.finditer(text):
        yield match.span("password")


# --- bearer ---------------------------------------------------------------------------------------

_TOKEN = r"[^\s\"'\\&,;<>{}\[\]]{1,4096}"
_ONE_TOKEN_SCHEMES = r"bearer|basic|token"
_FIELD_SCHEMES = r"digest|negotiate|ntlm|[a-z0-9]{1,12}-hmac-sha(?:1|256|512)|hmac-sha(?:1|256)"
# In the lower-cased text; the look-behinds make the key a whole word.
_AUTH_FIELD = re.compile(
    r"(?:proxy-auth(?<![a-z0-9_.-]proxy-auth)|auth(?<![a-z0-9_.-]auth))(?:orization)?"
    rf"{_QUOTE}{_SP}{_SEP}{_SP}{_QUOTE}"
    rf"(?:(?P<one>{_ONE_TOKEN_SCHEMES})[ \t]{{1,3}}|(?P<field>{_FIELD_SCHEMES})[ \t]{{1,3}})?"
    rf"(?P<token>{_TOKEN})"
)
# The scheme word alone is no credential (nor is it once its credential has been redacted).
_SCHEME_WORD = re.compile(rf"{_ONE_TOKEN_SCHEMES}|{_FIELD_SCHEMES}")
_SCHEME_TOKEN = re.compile(
    r"(?:bearer(?<![a-z0-9_-]bearer)|basic(?<![a-z0-9_-]basic))[ \t]{1,3}"
    r"(?P<token>[a-z0-9._~+/-]{8,4096}=*)"
)


def _looks_like_token(token: str) -> bool:
    """A credential, not an English word ("Bearer authentication", "Basic information")."""
    return any(ch.isdigit() for ch in token) or (
        any(ch.isupper() for ch in token[1:]) and any(ch.islower() for ch in token)
    )


def _bearer_spans(text: str, low: str) -> Iterator[Span]:
    pos = 0
    while field := _AUTH_FIELD.search(low, pos):
        pos = field.end()
        if _PLACEHOLDER.fullmatch(field["token"]) or _SCHEME_WORD.fullmatch(field["token"]):
            continue
        if field["field"] is not None:  # Digest, HMAC...: name="value", ... to the line's end
            pos = _REST_OF_LINE.match(low, pos).end()
        yield field.start("token"), pos
    for match in _SCHEME_TOKEN.finditer(low):
        start, end = match.span("token")
        if _looks_like_token(text[start:end]):
            yield start, end


# --- pem, jwt, api_key ----------------------------------------------------------------------------

_PEM_BEGIN = re.compile(r"BEGIN[A-Z0-9 ]{0,40}PRIVATE KEY[A-Z ]{0,10}-{0,5}")
_PEM_END = re.compile(r"END[A-Z0-9 ]{0,40}PRIVATE KEY[A-Z ]{0,10}-{0,5}")
_PEM_TRUNCATED_BODY = re.compile(r"[A-Za-z0-9+/=\s\\:,-]{0,16384}")
_PEM_MAX = 65536


def _pem_spans(text: str, low: str) -> Iterator[Span]:
    pos, ends = 0, None
    while begin := _PEM_BEGIN.search(text, pos):
        if ends is None:
            ends = [match.end() for match in _PEM_END.finditer(text)]
        i = bisect_left(ends, begin.end() + 1)
        if i < len(ends) and ends[i] - begin.end() <= _PEM_MAX:
            pos = ends[i]
        else:
            pos = _PEM_TRUNCATED_BODY.match(text, begin.end()).end()
        start = begin.start()
        while start > 0 and begin.start() - start < 5 and text[start - 1] == "-":
            start -= 1
        yield start, pos


_JWT = re.compile(r"eyJ[A-Za-z0-9_-]{5,4096}\.[A-Za-z0-9_-]{2,8192}\.[A-Za-z0-9_-]{0,4096}")
_BASE64URL_RUN = re.compile(r"[A-Za-z0-9_-]*")


def _jwt_spans(text: str, low: str) -> Iterator[Span]:
    pos = text.find("eyJ")
    while pos >= 0:
        match = _JWT.match(text, pos)
        if match:
            yield match.span()
        # A JWT starting later in the same base64url run would have matched from here.
        resume = match.end() if match else _BASE64URL_RUN.match(text, pos).end()
        pos = text.find("eyJ", resume)


# Each alternative starts with a literal, so that ``re`` skips to them quickly.
_API_KEY = re.compile(
    r"AKIA[A-Z0-9]{16}(?![A-Za-z0-9])"
    r"|ASIA[A-Z0-9]{16}(?![A-Za-z0-9])"
    r"|AIza[0-9A-Za-z_-]{35}"
    r"|gh[pousr]_[A-Za-z0-9]{36,255}"
    r"|github_pat_[A-Za-z0-9_]{22,255}"
    r"|xox[abprs]-[A-Za-z0-9-]{10,250}"
    r"|rk_(?:live|test)_[A-Za-z0-9]{16,255}"
    r"|sk_(?:live|test)_[A-Za-z0-9]{16,255}"
    r"|sk-(?<![A-Za-z0-9_-]sk-)(?P<openai>[A-Za-z0-9_-]{20,255})"
)
_AWS_SECRET = re.compile(  # in the lower-cased text
    rf"aws[a-z0-9_.-]{{0,30}}?secret(?:[_.-]?access)?(?:[_.-]?key)?{_QUOTE}{_SP}{_SEP}{_SP}"
    rf"{_QUOTE}(?P<secret>[a-z0-9/+]{{40}})(?![a-z0-9/+])"
)


def _api_key_spans(text: str, low: str) -> Iterator[Span]:
    for match in _API_KEY.finditer(text):
        key = match["openai"]
        if key is None or (any(ch.isdigit() for ch in key) and any(ch.isupper() for ch in key)):
            yield match.span()
    for match in _AWS_SECRET.finditer(low):
        yield match.span("secret")


# --- email, linkedin ------------------------------------------------------------------------------

_EMAIL_DOMAIN = re.compile(
    r"@(?:[^\W_](?:[\w-]{0,61}[^\W_])?\.){1,16}(?P<tld>[^\W\d_]{2,24})(?![\w-])"
)
_EMAIL_LOCAL = re.compile(r"[\w.%+-]{1,64}\Z")
# A domain name has a letter among its first 63 characters (a first label holds at most 63).
_EMAIL_DOMAIN_NAME = re.compile(r"[0-9._-]{0,62}[^\W\d_]")
_FILE_EXTENSIONS = frozenset(
    {"png", "jpg", "jpeg", "gif", "svg", "webp", "avif", "ico", "bmp", "css", "js", "mjs", "map"}
    | {"json", "html", "htm", "xml", "txt", "pdf", "mp4", "webm", "mp3", "wav", "ttf", "otf"}
)


def _email_spans(text: str, low: str) -> Iterator[Span]:
    for domain in _EMAIL_DOMAIN.finditer(text):
        if domain["tld"].lower() in _FILE_EXTENSIONS:  # logo@2x.png
            continue
        if not _EMAIL_DOMAIN_NAME.match(text, domain.start() + 1):
            continue
        at = domain.start()
        local = _EMAIL_LOCAL.search(text, max(0, at - 64), at)
        if local:
            yield local.start(), domain.end()


_LINKEDIN = re.compile(r"linkedin\.com/(?:in|pub)/[^\s?#&\"'<>()\[\]{},|\\]{1,200}")
_LINKEDIN_HOST = re.compile(r"(?:https?://)?(?:[a-z0-9-]{1,20}\.)?\Z")


def _linkedin_spans(text: str, low: str) -> Iterator[Span]:
    for match in _LINKEDIN.finditer(low):
        host = _LINKEDIN_HOST.search(low, max(0, match.start() - 30), match.start())
        yield host.start(), match.end()


# --- phone ----------------------------------------------------------------------------------------

_INTERNATIONAL = re.compile(
    rf"(?:\+(?<![\w.:/+-]\+)|00(?<![\w.:/+=%-]00))[ \t]{{0,2}}{_PHONE_BODY}(?!\w)"
)
_NUMBER = rf"(?P<number>(?:\+|00)?[ \t]{{0,2}}{_PHONE_BODY})(?!\w)"
_PHONE_CONTEXT = re.compile(  # in the lower-cased text
    rf"(?:{_alternation(_PHONE_WORDS)})(?:[ _.-]{{0,3}}(?:{'|'.join(_PHONE_NUMBER_WORDS)}))?"
    rf"(?P<gap>{_QUOTE}{_PHONE_GAP})"
    rf"{_QUOTE}{_SP}{_NUMBER}"
)
_PHONE_ZH_CONTEXT = re.compile(rf"{_PHONE_KEY_ZH}{_PHONE_ZH_GAP}{_QUOTE}{_SP}{_NUMBER}")
_DIGIT_GROUP = re.compile(r"[0-9]+")
_NOT_A_PHONE = re.compile(
    r"[0-9]{4}[-/.][0-9]{1,2}[-/.][0-9]{1,2}"  # a date
    r"|[0-9]{1,2}[-/.][0-9]{1,2}[-/.][0-9]{4}"
    r"|[0-9]{1,3}(?:\.[0-9]{1,3}){3}(?![0-9])"  # an IPv4 address
)
_MIN_DIGITS, _MAX_DIGITS, _MIN_NATIONAL_DIGITS, _MAX_TRIES = 7, 15, 6, 3


def _parse_international(number: str) -> phonenumbers.PhoneNumber | None:
    digits = number[1:] if number.startswith("+") else number[2:]
    try:
        return phonenumbers.parse("+" + digits.replace("+", " "), None)
    except phonenumbers.NumberParseException:
        return None


@functools.lru_cache(maxsize=4096)
def _valid_international(number: str) -> bool:
    parsed = _parse_international(number)
    return parsed is not None and phonenumbers.is_valid_number(parsed)


@functools.lru_cache(maxsize=4096)
def _possible_international(number: str) -> bool:
    parsed = _parse_international(number)
    return parsed is not None and phonenumbers.is_possible_number(parsed)


def _plausible_national(number: str) -> bool:
    return not _NOT_A_PHONE.match(number.lstrip("("))


def _accepted_length(candidate: str, accept: Callable[[str], bool], min_digits: int) -> int:
    """Length of the longest of the (at most three longest) prefixes of ``candidate`` that end
    a digit group and hold ``min_digits`` to 15 digits that ``accept`` takes; 0 if none."""
    ends, digits = [], 0
    for group in _DIGIT_GROUP.finditer(candidate):
        digits += len(group[0])
        if digits > _MAX_DIGITS:
            break
        if digits >= min_digits:
            ends.append(group.end())
    tries = reversed(ends[-_MAX_TRIES:])
    return next((end for end in tries if accept(candidate[:end])), 0)


def _context_number_length(number: str) -> int:
    if number.startswith(("+", "00")):
        return _accepted_length(number, _possible_international, _MIN_DIGITS)
    return _accepted_length(number, _plausible_national, _MIN_NATIONAL_DIGITS)


def _international_spans(text: str) -> Iterator[Span]:
    pos = 0
    while candidate := _INTERNATIONAL.search(text, pos):
        length = _accepted_length(candidate[0], _valid_international, _MIN_DIGITS)
        if length:
            yield candidate.start(), candidate.start() + length
        # A second number may start inside a candidate that ran on ("+49 30 1234567 / +49 ...").
        pos = candidate.start() + (length or 1)


def _phone_spans(text: str, low: str) -> Iterator[Span]:
    yield from _international_spans(text)
    reversed_text = text[::-1]
    for match in _PHONE_CONTEXT.finditer(low):
        key = _key_ending_at(reversed_text, match.start("gap"))
        if key is None or not _is_phone_key(key):
            continue
        length = _context_number_length(match["number"])
        if length:
            yield match.start("number"), match.start("number") + length
    for match in _PHONE_ZH_CONTEXT.finditer(text):
        length = _context_number_length(match["number"])
        if length:
            yield match.start("number"), match.start("number") + length


# --- the pre-filter -------------------------------------------------------------------------------


# A letter (or any non-ASCII character), written out so that both engines read it alike.
_LETTER_OR_NON_ASCII = r"[^\x00-\x40\x5b-\x60\x7b-\x7f]"


def _prefilter_pattern() -> str:
    """One alternative per part that some finding cannot do without (see the module docstring),
    built from the detectors' fragments; escaped forms stand for findings of the decoded text."""
    sp = r"(?:[ \t]|%20){0,3}"
    key_end = r"(?:\\?[\"']|%2[27])?"
    sep = r"(?:=>|[:=]|%3[ADad])"
    # The start of a value that is more than a placeholder of stars: quoted, stars then more,
    # or a first character that a bare value may start with.
    value = (
        rf"{sp}(?:\\?[\"']\**[^*\"'\r\n]|\*+[^*\t\n\v\f\r \"'&,;<>{{}}]"
        r"|[^*\t\n\v\f\r \"'\\&,;<>{}\[\]])"
    )
    gap = rf"(?:{sp}(?:[:=#{_FULLWIDTH_COLON}]|\.:?|%3[ADad]|%23){sp}|(?:[ \t]|%20){{1,3}})"
    body = r"\(?[0-9](?:[0-9 \t().+/-]|%[0-9A-Fa-f]{2}){4,28}[0-9]"
    number = rf"(?:\+|%2[Bb]|00)?(?:[ \t]|%20){{0,2}}{body}"
    secret_key = (
        rf"(?:(?i:{_alternation((*_SECRET_WORDS, *_SECRET_COMPOUNDS, *_AUTH_KEYS))})"
        rf"|(?i:{_alternation(_UNFOLDED_PASSWORD_WORDS)})"
        rf"|(?i:{_alternation(_CODE_QUALIFIERS)})[ _.-]{{0,3}}(?i:code))"
    )
    bare_code = r"(?:^|[^A-Za-z0-9_.-])(?i:code)"
    oauth_code = rf"{sp}(?:\\?[\"'])?[A-Za-z0-9._~/+%-]{{12}}"
    phone_key = (
        rf"(?:(?i:{_alternation(_PHONE_WORDS)})"
        rf"(?:[ _.-]{{0,3}}(?i:{'|'.join(_PHONE_NUMBER_WORDS)}))?{key_end}{gap}"
        rf"|{_PHONE_KEY_ZH}{sp}(?:[:={_FULLWIDTH_COLON}]|%3[ADad])?{sp})"
    )
    return "|".join(
        (
            rf"(?:@|%40)[0-9._-]{{0,62}}{_LETTER_OR_NON_ASCII}",
            r":[^\x00-\x20/?#@]{1,64}@",
            # a backslash may escape the separator (the detectors read ``\%3D`` decoded)
            rf"{secret_key}{key_end}{sp}\\?{sep}{value}",
            rf"{secret_key}(?:[ \t]|%20){{1,3}}(?i:is|was)(?:[ \t]|%20){{1,3}}[^\s]",
            rf"{bare_code}{key_end}{sp}{sep}{oauth_code}",
            rf"{phone_key}{key_end}{sp}{number}",
            rf"(?:\+|%2[Bb])(?:[ \t]|%20){{0,2}}{body}",
            rf"(?:^|[^A-Za-z0-9_.:/+=%-]|%[0-9A-Fa-f]{{2}})00(?:[ \t]|%20){{0,2}}{body}",
            r"(?i:bearer|basic)(?:[ \t]|%20)",
            r"BEGIN[A-Z0-9 ]{0,40}PRIVATE KEY",
            r"eyJ",
            r"AKIA|ASIA|AIza|gh[pousr]_|github_pat_|xox[abprs]-|[rs]k_(?:live|test)_|sk-",
            r"(?i:linkedin\.com)",
        )
    )


# ASCII-only, so that Python folds case and matches classes no wider than RE2 does.
PREFILTER: re.Pattern[str] = re.compile(_prefilter_pattern(), re.ASCII)

# The stems every secret key of the pre-filter contains (its secret words, compounds,
# authorization keys, and "<qualifier> code"), and every phone key: the coarse pre-filter and
# the credential detector's gate both start from them (a test checks every word has its stem).
_SECRET_STEMS = ("pass", "pw", "secret", "token", "key", "sig", "cookie", "otp", "cred")
_SECRET_STEMS += ("code", "auth", "wort", "contrasen", "senha", "woord", "haslo", "losenord")
_SECRET_STEMS += ("salasana", "kode", "jwt", "bearer", "pin", "cvv", "cvc", "contrase", "hasł")
_SECRET_STEMS += ("senord", *_UNFOLDED_PASSWORD_WORDS)  # as written: "ñ" is no [A-Za-z]
_PHONE_STEMS = ("phone", "tel", "mobil", "cell", "fax", "whatsapp", "msisdn", "handy", "sms")


def _coarse_pattern() -> str:
    """A pattern that matches wherever :data:`PREFILTER` does, and that RE2 compiles in a
    fraction of the time (~0.2 ms against ~6 ms): each alternative keeps the literal start and
    the separator that a pre-filter alternative needs, and loosens what lies between them (a
    secret key is a stem, the rest of its word, a quote, spaces, then ``=`` or ``:``; a phone
    key is a stem, non-alphanumerics, then a digit). ``Intel Mac``, ``design``, ``codec`` or an
    identifier match none of it."""
    key_end = r"(?:\\?[\"']|%2[27])?(?:[ \t]|%20){0,3}"
    return "|".join(
        (
            r"@|%40",
            rf"(?i:{'|'.join(_SECRET_STEMS)})[A-Za-z_. -]{{0,24}}"
            rf"(?:{key_end}\\?(?:[:=]|%3[ADad])|(?:[ \t]|%20){{1,3}}(?i:is|was))",
            rf"(?i:{'|'.join(_PHONE_STEMS)})[^A-Za-z0-9]{{0,12}}"
            r"(?:(?i:number|no|num|nr)[^A-Za-z0-9]{0,12})?[(+0-9]",
            r"手机|电话",
            r"\+|%2[Bb]",
            r"(?:^|[^A-Za-z0-9_.:/+=%-]|%[0-9A-Fa-f]{2})00",
            r"(?i:bearer|basic)",
            r"BEGIN",
            r"eyJ",
            r"AKIA|ASIA|AIza|gh[pousr]_|github_pat_|xox[abprs]-|[rs]k_(?:live|test)_|sk-",
            r"(?i:linkedin\.com)",
        )
    )


COARSE_PREFILTER: re.Pattern[str] = re.compile(_coarse_pattern(), re.ASCII)


# --- the scan -------------------------------------------------------------------------------------

_DETECTORS: tuple[tuple[str, Callable[[str, str], Iterable[Span]]], ...] = (
    ("pem", _pem_spans),
    ("jwt", _jwt_spans),
    ("api_key", _api_key_spans),
    ("bearer", _bearer_spans),
    ("credential", _credential_spans),
    ("linkedin", _linkedin_spans),
    ("email", _email_spans),
    ("phone", _phone_spans),
)
# For each kind, literals one of which each of its findings holds (in the lower-cased text): its
# detector runs only where one is there, which spares most of the work on flagged clean text.
_NEEDLES = {
    "pem": ("begin",),
    "jwt": ("eyj",),
    "api_key": ("akia", "asia", "aiza", "gh", "xox", "k_live_", "k_test_", "sk-", "aws"),
    "bearer": ("auth", "bearer", "basic"),
    "credential": (*_SECRET_STEMS, "://"),
    "linkedin": ("linkedin.com/",),
    "email": ("@",),
    "phone": (
        *("+", "00", "phone", "tel", "mobil", "cell", "fax", "whatsapp", "msisdn", "handy"),
        *("sms", "手机", "电话"),
    ),
}
_GATES = {kind: re.compile("|".join(map(re.escape, needles))) for kind, needles in _NEEDLES.items()}
_PERCENT_ASCII = re.compile(r"%[0-7][0-9A-Fa-f]")


def _detect(text: str, kinds: frozenset[str]) -> list[Finding]:
    low = _ascii_lower(text)
    return [
        (start, end, kind)
        for kind, detector in _DETECTORS
        if kind in kinds and _GATES[kind].search(low)
        for start, end in detector(text, low)
        if start < end
    ]


def _percent_decoded(text: str) -> tuple[str, list[int]]:
    """``text`` with its ASCII ``%XX`` escapes decoded, and for each decoded position (and the
    end) the position in ``text`` it comes from."""
    pieces, origin, pos = [], [], 0
    for escape in _PERCENT_ASCII.finditer(text):
        pieces.append(text[pos : escape.start()])
        origin.extend(range(pos, escape.start()))
        pieces.append(chr(int(escape[0][1:], 16)))
        origin.append(escape.start())
        pos = escape.end()
    pieces.append(text[pos:])
    origin.extend(range(pos, len(text) + 1))
    return "".join(pieces), origin


def _findings(text: str, kinds: frozenset[str]) -> list[Finding]:
    """The merged findings of ``text`` and of its percent-decoded form, markers spared."""
    found = _detect(text, kinds)
    if _PERCENT_ASCII.search(text):
        decoded, origin = _percent_decoded(text)
        found += [(origin[s], origin[e], kind) for s, e, kind in _detect(decoded, kinds)]
    return _merged(_sparing_markers(text, found))


def _sparing_markers(text: str, found: list[Finding]) -> list[Finding]:
    markers = [m.span() for m in _MARKER.finditer(text)]
    if not markers:
        return found
    ends = [end for _, end in markers]

    def overlaps_marker(start: int, end: int) -> bool:
        i = bisect_left(ends, start + 1)  # the first marker that ends after start
        return i < len(markers) and markers[i][0] < end

    return [f for f in found if not overlaps_marker(f[0], f[1])]


def _merged(found: list[Finding]) -> list[Finding]:
    merged: list[Finding] = []
    for start, end, kind in sorted(found):
        if merged and start < merged[-1][1]:
            last_start, last_end, last_kind = merged[-1]
            merged[-1] = (last_start, max(last_end, end), min(last_kind, kind, key=_RANK.get))
        else:
            merged.append((start, end, kind))
    return merged


def _redacted(text: str, findings: list[Finding]) -> str:
    pieces, pos = [], 0
    for start, end, kind in findings:
        pieces += (text[pos:start], marker(kind))
        pos = end
    pieces.append(text[pos:])
    return "".join(pieces)


def _check_kinds(kinds: frozenset[str]) -> None:
    unknown = kinds - ALL_KINDS
    if unknown:
        raise ValueError(f"unknown finding kinds {sorted(unknown)}; known: {list(KIND_ORDER)}")


def scan_text(text: str, kinds: frozenset[str] = ALL_KINDS) -> tuple[str, dict[str, int]]:
    """``text`` with every finding of ``kinds`` replaced by ``[redacted:<kind>]``, and the number
    of findings by kind (empty, and ``text`` itself returned, when there is none)."""
    _check_kinds(kinds)
    counts: Counter[str] = Counter()
    while findings := _findings(text, kinds):
        text = _redacted(text, findings)
        counts.update(kind for _, _, kind in findings)
    return text, dict(counts)


def _flagged(values: pa.Array) -> pa.BooleanArray:
    """The pre-filter over ``values`` (null: not flagged), in two steps: the coarse pattern
    over every value, the exact one over the values the coarse one lets through. Arrow compiles
    a pattern on every call, and the exact one costs ~3 ms to compile (about as much as a clean
    batch costs to filter): most batches of identifiers and paths never compile it."""
    coarse = pc.fill_null(pc.match_substring_regex(values, COARSE_PREFILTER.pattern), False)
    if not pc.any(coarse).as_py():
        return coarse
    exact = pc.match_substring_regex(values.filter(coarse), PREFILTER.pattern)
    return pc.replace_with_mask(coarse, coarse, pc.fill_null(exact, False))


def _scanned(
    values: pa.Array,
    kinds: frozenset[str],
    flagged: pa.BooleanArray | None = None,
    rows_per_value: Mapping[int, int] | None = None,
) -> tuple[pa.Array, Counter[str]]:
    """``values`` with the flagged ones scanned, and the findings; ``rows_per_value`` (index ->
    rows holding that value, for a column's distinct values) weighs them per row."""
    if flagged is None:
        flagged = _flagged(values)
    counts: Counter[str] = Counter()
    if not pc.any(flagged).as_py():
        return values, counts
    index = pc.indices_nonzero(flagged).to_pylist()
    scanned = [scan_text(value, kinds) for value in pc.filter(values, flagged).to_pylist()]
    for i, (_, found) in zip(index, scanned, strict=True):
        weight = 1 if rows_per_value is None else rows_per_value.get(i, 0)
        for kind, n in found.items():
            counts[kind] += n * weight
    if not counts:
        return values, counts
    replacements = pa.array([text for text, _ in scanned], type=values.type)
    return pc.replace_with_mask(values, flagged, replacements), counts


def _chunked_like(model: pa.ChunkedArray, values: pa.Array) -> pa.ChunkedArray:
    """``values`` cut into chunks of the lengths of ``model``'s (slices: no copy)."""
    offsets = [0]
    for chunk in model.chunks:
        offsets.append(offsets[-1] + len(chunk))
    return pa.chunked_array(
        [values.slice(start, end - start) for start, end in itertools.pairwise(offsets)],
        type=model.type,
    )


def scan_table(
    table: pa.Table, kinds: Mapping[str, frozenset[str]]
) -> tuple[pa.Table, dict[str, int]]:
    """:func:`scan_array` of the string columns of ``table`` named in ``kinds`` (each with its
    own kinds): the same text and counts (per row), at less cost.

    - One pre-filter call for all the columns: Arrow compiles the pattern on every call (2-6 ms,
      as much as scanning a clean batch of 8,192 values), so a batch pays it once.
    - A column whose values repeat (user agents, URLs, sessions: judged on a sample of its first
      values) is scanned as its distinct values, then expanded: the pre-filter costs 200-900 ns a
      value, a dictionary encoding ~100.

    Columns ``table`` lacks are skipped; ``table`` itself is returned when nothing was found."""
    for column_kinds in kinds.values():
        _check_kinds(column_kinds)
    names = [name for name in kinds if table.schema.get_field_index(name) >= 0]
    if not names:
        return table, {}
    parts = [_Distinct.of(table.column(name).combine_chunks()) for name in names]
    flagged = _flagged(pa.concat_arrays([part.values.cast(pa.string()) for part in parts]))
    if not pc.any(flagged).as_py():
        return table, {}
    counts: Counter[str] = Counter()
    offset = 0
    for name, part in zip(names, parts, strict=True):
        mask = flagged.slice(offset, len(part.values))
        offset += len(part.values)
        if not pc.any(mask).as_py():
            continue
        column, found = part.scanned(kinds[name], mask)
        if found:
            counts.update(found)
            index = table.schema.get_field_index(name)
            table = table.set_column(index, table.field(index), column)
    return table, dict(counts)


class _Distinct:
    """A column as the values to pre-filter and scan (its distinct values when they repeat)
    and the way back to the column."""

    # Dictionary-encode a column when at most this share of a sample of it is distinct.
    _REPEATS = 0.5
    _SAMPLE = 256

    def __init__(self, column: pa.Array, values: pa.Array, indices: pa.Array | None) -> None:
        self.column, self.values, self._indices = column, values, indices

    @classmethod
    def of(cls, column: pa.Array) -> _Distinct:
        sample = column.slice(0, cls._SAMPLE)
        if len(sample) and len(pc.unique(sample)) <= cls._REPEATS * len(sample):
            encoded = pc.dictionary_encode(column)
            return cls(column, encoded.dictionary, encoded.indices)
        return cls(column, column, None)

    def scanned(
        self, kinds: frozenset[str], mask: pa.BooleanArray
    ) -> tuple[pa.Array, Counter[str]]:
        """The column with the flagged values scanned, and the findings counted per row (a
        distinct value's findings times the rows that hold it)."""
        if self._indices is None:
            return _scanned(self.values, kinds, mask)
        rows = pc.value_counts(self._indices)
        occurrences = dict(
            zip(rows.field("values").to_pylist(), rows.field("counts").to_pylist(), strict=True)
        )
        values, found = _scanned(self.values, kinds, mask, occurrences)
        return (pc.take(values, self._indices) if found else self.column), found


def scan_array(
    array: pa.Array | pa.ChunkedArray, kinds: frozenset[str] = ALL_KINDS
) -> tuple[pa.Array | pa.ChunkedArray, dict[str, int]]:
    """:func:`scan_text` over a string column: the pre-filter runs in Arrow and only the values
    it flags are scanned in Python. Nulls, the type and the chunk lengths are kept; ``array``
    itself is returned when nothing was found.

    Arrow compiles the pre-filter for every array it is given (about 2 ms), so chunks are joined
    first, and a caller should scan a column once per batch, not value by value."""
    _check_kinds(kinds)
    chunked = isinstance(array, pa.ChunkedArray)
    values = array.combine_chunks() if chunked else array
    scanned, counts = _scanned(values, kinds)
    if not counts:
        return array, {}
    return (_chunked_like(array, scanned) if chunked else scanned), dict(counts)

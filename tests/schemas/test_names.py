"""Field names are classified by meaning: any spelling of a credential or media name is caught,
and no field this project declares is."""

from __future__ import annotations

import json
import pickle
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import schemas
from schemas.avro import category_input_fields
from schemas.names import (
    DERIVED_WORDS,
    MEDIA,
    SECRET,
    NameClassifier,
    name_tokens,
)
from schemas.policy import load_policy

POLICY = load_policy()
NAMES = POLICY.names
AVRO_DIR = Path(schemas.__file__).parent / "avro"

# Look-alikes of Latin letters, written here independently of the module's own table.
LOOK_ALIKES = {
    "a": "\N{CYRILLIC SMALL LETTER A}\N{GREEK SMALL LETTER ALPHA}",
    "e": "\N{CYRILLIC SMALL LETTER IE}",
    "o": "\N{CYRILLIC SMALL LETTER O}\N{GREEK SMALL LETTER OMICRON}",
    "p": "\N{CYRILLIC SMALL LETTER ER}\N{GREEK SMALL LETTER RHO}",
    "c": "\N{CYRILLIC SMALL LETTER ES}",
    "y": "\N{CYRILLIC SMALL LETTER U}",
    "x": "\N{CYRILLIC SMALL LETTER HA}",
    "i": "\N{CYRILLIC SMALL LETTER BYELORUSSIAN-UKRAINIAN I}\N{GREEK SMALL LETTER IOTA}"
    "\N{LATIN SMALL LETTER DOTLESS I}",
    "j": "\N{CYRILLIC SMALL LETTER JE}",
    "s": "\N{CYRILLIC SMALL LETTER DZE}",
    "d": "\N{CYRILLIC SMALL LETTER KOMI DE}",
    "q": "\N{CYRILLIC SMALL LETTER QA}",
    "w": "\N{CYRILLIC SMALL LETTER WE}",
    "v": "\N{GREEK SMALL LETTER NU}",
    "t": "\N{GREEK SMALL LETTER TAU}",
    "k": "\N{GREEK SMALL LETTER KAPPA}",
    "A": "\N{CYRILLIC CAPITAL LETTER A}\N{GREEK CAPITAL LETTER ALPHA}",
    "B": "\N{CYRILLIC CAPITAL LETTER VE}\N{GREEK CAPITAL LETTER BETA}",
    "C": "\N{CYRILLIC CAPITAL LETTER ES}",
    "E": "\N{CYRILLIC CAPITAL LETTER IE}\N{GREEK CAPITAL LETTER EPSILON}",
    "H": "\N{CYRILLIC CAPITAL LETTER EN}\N{GREEK CAPITAL LETTER ETA}",
    "I": "\N{CYRILLIC CAPITAL LETTER BYELORUSSIAN-UKRAINIAN I}\N{GREEK CAPITAL LETTER IOTA}",
    "J": "\N{CYRILLIC CAPITAL LETTER JE}",
    "K": "\N{CYRILLIC CAPITAL LETTER KA}\N{GREEK CAPITAL LETTER KAPPA}",
    "M": "\N{CYRILLIC CAPITAL LETTER EM}\N{GREEK CAPITAL LETTER MU}",
    "N": "\N{GREEK CAPITAL LETTER NU}",
    "O": "\N{CYRILLIC CAPITAL LETTER O}\N{GREEK CAPITAL LETTER OMICRON}",
    "P": "\N{CYRILLIC CAPITAL LETTER ER}\N{GREEK CAPITAL LETTER RHO}",
    "S": "\N{CYRILLIC CAPITAL LETTER DZE}",
    "T": "\N{CYRILLIC CAPITAL LETTER TE}\N{GREEK CAPITAL LETTER TAU}",
    "X": "\N{CYRILLIC CAPITAL LETTER HA}\N{GREEK CAPITAL LETTER CHI}",
    "Y": "\N{GREEK CAPITAL LETTER UPSILON}",
}
ZERO_WIDTH = "\u200b\u200c\u200d\u2060\ufeff\u00ad"
MARKS = "\u0301\u0308\u0327\u034f\ufe0f"


def fullwidth(text: str) -> str:
    return "".join(
        "\u3000" if ch == " " else chr(ord(ch) + 0xFEE0) if "!" <= ch <= "~" else ch for ch in text
    )


def math_bold(ch: str) -> str:
    if "a" <= ch <= "z":
        return chr(0x1D41A + ord(ch) - ord("a"))
    if "A" <= ch <= "Z":
        return chr(0x1D400 + ord(ch) - ord("A"))
    return ch


def variants(words: tuple[str, ...]) -> Iterator[str]:
    """The usual spellings of a name, and disguised ones."""
    snake = "_".join(words)
    camel = words[0] + "".join(w.title() for w in words[1:])
    yield from (snake, camel, camel[0].upper() + camel[1:], "-".join(words), snake.upper())
    yield from (".".join(words), " ".join(words), "".join(words), "-".join(words).title())
    yield "".join(LOOK_ALIKES.get(ch, ch)[0] for ch in snake)
    yield "".join(LOOK_ALIKES.get(ch, ch)[-1] for ch in camel)
    yield "\u200b".join(snake)
    yield "\u00ad".join(camel) + "\ufeff"
    yield fullwidth(snake)
    yield fullwidth(camel)
    yield "".join(math_bold(ch) for ch in camel)
    yield "".join(ch + "\u0301" if ch.isalpha() else ch for ch in snake)


SECRET_EXAMPLES = [
    ("login", "credential"),
    ("x", "api", "key"),
    ("db", "password"),
    ("authorization",),
    ("cookie",),
    ("password",),
    ("x", "auth", "token"),
    ("session", "key"),
    ("one", "time", "code"),
    ("verification", "code"),
    ("user", "sig"),
    ("private", "key"),
    ("user", "password"),
    ("client", "secret"),
    ("refresh", "token"),
    ("pin",),
    ("otp",),
    ("pass",),
    ("auth", "code"),
]
SECRET_LITERALS = [
    "login_credential",
    "x_api_key",
    "db_password",
    "Authorization",
    "cookie",
    "p\N{CYRILLIC SMALL LETTER A}ssword",
    json.loads('"pass\\u0077ord"'),
    "X-Auth-Token",
    "XAuthToken",
    "sessionKey",
    "oneTimeCode",
    "verificationCode",
    "userSig",
    "UserSig",
    "USER_SIG",
    "usersig",
    "APIKey",
    "apikey",
    "dbpassword",
    "userpassword",
    "privatekey",
    "p\N{CYRILLIC SMALL LETTER A}ssw\N{GREEK SMALL LETTER OMICRON}rd",
    "pass\u200bword",
    fullwidth("password"),
    "".join(map(math_bold, "password")),
    "pásswörd",
    "PASSWORD",
    "Bearer",
    "set-cookie",
    "oauth_token",
    "db_pass",
    "pinCode",
    "OTPCode",
    "totp_seed",
    "card_cvv",
    "jwt",
    "creds",
    "passphrase",
    "passcode",
]
MEDIA_EXAMPLES = [
    ("audio",),
    ("video",),
    ("media",),
    ("pcm",),
    ("voice",),
    ("frame", "data"),
    ("recording", "data"),
    ("payload", "audio"),
    ("payload", "video"),
    ("image", "data"),
    ("audio", "content"),
    ("video", "data"),
    ("media", "payload"),
    ("raw", "pcm"),
    ("voice", "data"),
    ("remote", "audio", "frames"),
    ("video", "stream"),
    ("multimedia", "payload"),
    ("yuv", "frame"),
]
# Telemetry: switches, measures and references about audio and video, not the content itself.
NOT_MEDIA = [
    "enable_video",
    "enable_audio",
    "disable_video",
    "video_enabled",
    "enableVideo",
    "muteLocalAudio",
    "unmute_audio",
    "startLocalVideo",
    "audio_volume",
    "audioLevel",
    "video_bitrate",
    "video_fps",
    "video_resolution",
    "video_width",
    "audio_codec",
    "audio_sample_rate",
    "is_video",
    "has_audio",
    "video_url",
    "video_id",
    "audio_device",
    "frame_rate",
    "bitrate_kbps",
    "volume",
    "recording_enabled",
    "resolution",
    "packet_loss",
    "invoice_number",
    "median_latency_ms",
    "intermediate_result",
]
# Ordinary words that contain a short stem: whole-word terms do not catch them.
NOT_SECRET = [
    "bypass_enabled",
    "passport_country",
    "compass",
    "spinner",
    "shipping_address",
    "opinion",
    "design",
    "signal_strength",
    "user_signup_at",
    "footprint",
    "session_id",
    "username",
    "keyword",
]


@pytest.mark.parametrize("words", SECRET_EXAMPLES, ids="_".join)
def test_secret_examples_in_every_spelling(words):
    for name in variants(words):
        assert NAMES.classes(name) == {SECRET}, (name, name_tokens(name))


@pytest.mark.parametrize("name", SECRET_LITERALS)
def test_secret_literals(name):
    assert NAMES.is_a(SECRET, name), name_tokens(name)
    assert not NAMES.is_a(MEDIA, name)


@pytest.mark.parametrize("words", MEDIA_EXAMPLES, ids="_".join)
def test_media_examples_in_every_spelling(words):
    for name in variants(words):
        assert NAMES.classes(name) == {MEDIA}, (name, name_tokens(name))


@pytest.mark.parametrize("name", NOT_MEDIA)
def test_telemetry_about_audio_and_video_is_not_media(name):
    assert NAMES.classes(name) == frozenset(), name_tokens(name)


@pytest.mark.parametrize("name", NOT_SECRET)
def test_ordinary_words_with_a_short_stem_are_not_secret(name):
    assert NAMES.classes(name) == frozenset(), name_tokens(name)


def test_documented_over_matches():
    # the stems err on the side of catching: a longer word that contains one is caught too
    for name in ("author", "authority", "secretary", "tokenizer", "pass_through"):
        assert NAMES.classes(name), name
    # a glued switch is not split into words, so its aspect is not seen: media, the safe side
    assert NAMES.is_a(MEDIA, "videoenabled")


def test_name_tokens():
    assert name_tokens("userSig") == ("user", "sig")
    assert name_tokens("XAuthToken") == ("x", "auth", "token")
    assert name_tokens("APIKey") == ("api", "key")
    assert name_tokens("X-Auth-Token") == ("x", "auth", "token")
    assert name_tokens("SCREAMING_SNAKE_CASE") == ("screaming", "snake", "case")
    assert name_tokens("sdk2App_v3") == ("sdk", "2", "app", "v", "3")
    assert name_tokens("network_latency_ms") == ("network", "latency", "ms")
    assert name_tokens("\N{LATIN SMALL LETTER DOTLESS I}d") == ("id",)
    assert name_tokens("Straße") == ("strasse",)
    assert name_tokens("__") == ()
    assert name_tokens("") == ()


def avro_fields(schema: object) -> Iterator[str]:
    """The field names of an Avro schema, nested records included."""
    if isinstance(schema, dict):
        for f in schema.get("fields", ()):
            yield f["name"]
            yield from avro_fields(f["type"])
        for key in ("items", "values"):
            yield from avro_fields(schema.get(key))
    elif isinstance(schema, list):
        for branch in schema:
            yield from avro_fields(branch)


FINGERPRINTS = {
    stored: secret for c in POLICY.categories.values() for stored, secret in c.fingerprints.items()
}


@pytest.mark.parametrize("path", sorted(AVRO_DIR.glob("*.avsc")), ids=lambda p: p.stem)
def test_no_declared_field_is_secret_or_media(path):
    names = list(avro_fields(json.loads(path.read_text())))
    assert names
    for name in names:
        # a stored fingerprint column is secret-named until the caller vouches for it
        derived = name in FINGERPRINTS
        assert NAMES.classes(name, allow_derived=derived) == frozenset(), name


def test_fingerprint_columns_are_secret_named_unless_the_caller_computed_them():
    assert FINGERPRINTS == {"private_key_fingerprint": "private_key"}
    assert NAMES.classes("private_key_fingerprint") == {SECRET}
    assert NAMES.classes("private_key_fingerprint", allow_derived=True) == frozenset()
    for word in DERIVED_WORDS:
        assert NAMES.is_a(SECRET, f"password_{word}")
        assert NAMES.is_a(MEDIA, f"audio_{word}")
        assert NAMES.classes(f"password_{word}", allow_derived=True) == frozenset()
        assert NAMES.classes(f"passwordHash{word.title()}", allow_derived=True) == frozenset()
    # only a derived word that ends the name makes it a derivative
    assert NAMES.is_a(SECRET, "hashed_password", allow_derived=True)
    assert NAMES.is_a(SECRET, "password_hash_salt", allow_derived=True)
    assert NAMES.is_a(SECRET, "passwordfingerprintx", allow_derived=True)


@pytest.mark.parametrize("category", sorted(c for c, v in POLICY.categories.items() if v.stored))
def test_input_contracts_hold_only_the_secrets_they_fingerprint(category):
    fingerprints = POLICY.category(category).fingerprints
    for spec in category_input_fields(category, fingerprints):
        expected = {SECRET} if spec.name in fingerprints.values() else set()
        assert NAMES.classes(spec.name) == expected, spec.name


# The exact names the policy listed before names were read by meaning: each is still caught.
_LISTED_SECRETS = """password passwd pwd user_sig usersig private_key secret_key secret
client_secret verification_code auth_code authentication_code authorization_code otp
login_credentials credentials credential access_token refresh_token id_token token api_key
apikey session_key"""
_LISTED_MEDIA = """audio video audio_content video_content audio_data video_data media media_content
media_payload payload_audio payload_video frame_data pcm recording_data"""


def test_every_name_the_policy_listed_is_still_caught():
    for name in _LISTED_SECRETS.split():
        assert NAMES.classes(name) == {SECRET}, name
    for name in _LISTED_MEDIA.split():
        assert NAMES.classes(name) == {MEDIA}, name


def test_a_policy_passes_its_own_terms():
    own = NameClassifier({"secret": ["magic word", "=sesame"], "pet": ["cat"]})
    assert own.classes("xMagicWordY") == {"secret"}
    assert own.classes("open_SESAME") == {"secret"}
    assert own.classes("opensesame") == frozenset()
    assert own.classes("cat_video") == {"pet"}  # media aspects do not apply without media terms
    assert own.classes("password") == frozenset()
    assert own.is_a("pet", "CATS")
    with pytest.raises(ValueError, match="unknown name class 'secrets'"):
        own.is_a("secrets", "password")
    with pytest.raises(ValueError, match="no letters or digits"):
        NameClassifier({"secret": ["password", "__"]})
    with pytest.raises(ValueError, match="no terms"):
        NameClassifier({"secret": []})
    with pytest.raises(TypeError, match="list of terms"):
        NameClassifier({"secret": "password"})


def test_a_classifier_travels_pickled():
    # the policy, and this classifier with it, is pickled to every Beam worker
    copy = pickle.loads(pickle.dumps(NAMES))
    assert copy.classes("db_password") == {SECRET}
    assert copy.classes("frame_rate") == frozenset()


TERMS = [(cls, term) for cls, terms in POLICY.name_terms.items() for term in terms]
CONTEXT = ["user", "db", "my", "raw", "new", "remote"]  # two letters or more: "PINX" has no seam
SEPARATORS = ["_", "-", ".", " "]


@st.composite
def spelled(draw: st.DrawFn, term: str) -> str:
    """``term`` as a producer might spell it, in some context, and disguised per letter."""
    words = term.removeprefix("=").split()
    style = draw(st.sampled_from(["lower", "upper", "title", "camel", "random"]))
    if style == "random":
        words = ["".join(ch.upper() if draw(st.booleans()) else ch for ch in w) for w in words]
    elif style == "camel":
        words = [words[0]] + [w.title() for w in words[1:]]
    else:
        words = [getattr(w, style)() for w in words]
    name = draw(st.sampled_from([*SEPARATORS, ""])).join(words)
    # context words around it: after a separator, or glued camelCase when the case shows the seam
    glued = style in ("upper", "title") or (style == "camel" and len(words) > 1)
    glue = st.sampled_from(SEPARATORS + [""] * glued)
    if draw(st.booleans()):
        sep = draw(glue)
        name = (
            draw(st.sampled_from(CONTEXT)) + sep + (name[0].upper() + name[1:] if not sep else name)
        )
    if draw(st.booleans()):
        sep = draw(glue)
        name = name + sep + draw(st.sampled_from(CONTEXT)).title()
    out = []
    for ch in name:
        disguise = draw(st.sampled_from(["none", "look-alike", "fullwidth", "math", "mark"]))
        if disguise == "look-alike" and ch in LOOK_ALIKES:
            ch = draw(st.sampled_from(LOOK_ALIKES[ch]))
        elif disguise == "fullwidth":
            ch = fullwidth(ch)
        elif disguise == "math":
            ch = math_bold(ch)
        elif disguise == "mark" and ch.isalpha():
            ch += draw(st.sampled_from(MARKS))
        if draw(st.integers(0, 4)) == 0:
            ch = draw(st.sampled_from(ZERO_WIDTH)) + ch
        out.append(ch)
    return "".join(out)


@settings(max_examples=1500, deadline=None)
@given(data=st.data(), cls_term=st.sampled_from(TERMS))
def test_every_term_is_caught_in_any_spelling(data, cls_term):
    cls, term = cls_term
    name = data.draw(spelled(term), label="name")
    assert cls in NAMES.classes(name), (name, name_tokens(name))


@pytest.mark.parametrize(("cls", "term"), TERMS)
def test_every_term_as_written_is_of_its_class(cls, term):
    assert NAMES.classes(term.removeprefix("=")) == {cls}


SURROGATES = st.integers(0xD800, 0xDFFF).map(chr)
TRICKY = st.sampled_from(
    list("aAzZ09_- .\u00df\u1e9e\u0130\u0131\u017f\ufb00\u00b2\u00bd\u2113\u0390\ufb05\u0149")
    + list("\u01c5\u1fbc\u0345\uab70\u13f8\u13f0\u3164\u115f\u1160\uffa0")
    + list(ZERO_WIDTH + MARKS)
    + [c for cs in LOOK_ALIKES.values() for c in cs]
    + ["\U0001d41a", "\uff21", "\u3000", "\ud800", "\udfff"]
)
ANY_TEXT = st.text(st.one_of(st.characters(), SURROGATES, TRICKY), max_size=40)


@settings(max_examples=1000, deadline=None)
@given(text=ANY_TEXT)
def test_name_tokens_never_raises_and_is_idempotent(text):
    tokens = name_tokens(text)
    assert all(token and all(ch.isalnum() for ch in token) for token in tokens)
    joined = "_".join(tokens)
    assert name_tokens(joined) == tokens
    for allow_derived in (False, True):
        assert NAMES.classes(joined, allow_derived=allow_derived) == NAMES.classes(
            text, allow_derived=allow_derived
        )

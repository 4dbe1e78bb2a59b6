"""Dead letters are closed-world: only declared, non-sensitive fields stay readable, whatever the
names, spellings, depth or shape of what was sent."""

from __future__ import annotations

import hashlib
import json

from hypothesis import given, settings
from hypothesis import strategies as st

from schemas.avro import input_fields
from schemas.policy import load_policy
from transforms.deadletter import make_dead_letter
from transforms.masking import MASK, Exposure, Masker
from transforms.rawinput import Withheld

POLICY = load_policy()
VISIT_FIELDS = [s.name for s in input_fields("visit_input")]
MASKER = Masker(Exposure.of_source(POLICY, VISIT_FIELDS))
SDK_MASKER = Masker(Exposure.of_source(POLICY, [s.name for s in input_fields("sdk_log_input")]))


def _letter(raw, masker=MASKER, **kw):
    return make_dead_letter(
        source="t", stage="parse", error="e", raw=raw, masker=masker, expires_at=1, **kw
    )


def test_declared_plain_fields_stay_readable_and_the_rest_is_masked():
    line = json.dumps(
        {
            "event_id": "e1",
            "ip": "1.2.3.4",
            "visited_at": "not a time",
            "business_email": "hans@firma.de",  # declared, but contact data
            "login_credential": "hunter2",
            "x_api_key": "k-123",
            "db_password": "pw",
            "Authorization": "Bearer abc",
            "cookie": "sid=1",
            "p\u0430ssword": "cyrillic",  # a Cyrillic a
            "work_email": "w@x.io",
            "headers": [["Authorization", "Bearer zzz"]],
            "nested": {"deep": {"password": "p"}},
        }
    )
    masked = json.loads(MASKER.mask_text(line))
    assert masked["event_id"] == "e1" and masked["ip"] == "1.2.3.4"
    assert masked["visited_at"] == "not a time"
    for key, value in masked.items():
        if key not in ("event_id", "ip", "visited_at"):
            assert value == MASK, key


def test_visit_records_fed_to_sdk_logs_keep_no_contact_data():
    line = json.dumps(
        {
            "event_id": "v1",
            "ip": "81.2.69.160",
            "business_email": "anna@example.co.uk",
            "linkedin_url": "https://www.linkedin.com/in/anna",
            "url": "https://x/?email=anna@example.co.uk",
        }
    )
    masked = _letter(line, SDK_MASKER)["raw"]
    assert "anna" not in masked and "linkedin" not in masked.replace('"linkedin_url"', "")


def test_nulls_and_numbers_of_declared_fields_are_kept_values_of_wrong_shape_are_not():
    masked = MASKER.mask_record({"event_id": None, "ip": 7, "url": {"password": "x"}, "u": None})
    assert masked == {"event_id": None, "ip": 7, "url": MASK, "u": None}


def test_text_that_is_not_an_object_keeps_only_its_id():
    for text in (
        '{"event_id": "e2", "password": "hunter2", "visited_at": ',  # truncated
        '{"event_id": "e2", "pass\\u0077ord": "hunter2',  # truncated, escaped key name
        "password=hunter2&event_id=e2",
        '["event_id", "e2"]',
        "[" * 5000 + "]" * 5000,
    ):
        letter = _letter(text)
        assert letter["raw"] is None, text
        assert letter["raw_bytes"] == len(text.encode())
        assert letter["raw_sha256"] == hashlib.sha256(text.encode()).hexdigest()
        assert "hunter2" not in json.dumps(letter)
    assert _letter('{"event_id": "e2", "password": "hunter2", ')["event_id"] == "e2"


def test_the_id_of_a_letter_is_bounded_and_scanned():
    assert "event_id" not in _letter("{}", event_id="x" * 10_000)
    assert "event_id" not in _letter("{}", event_id="a\ud800")
    assert _letter("{}", event_id=7).get("event_id") is None


def test_a_withheld_record_keeps_nothing_and_a_summary_keeps_its_hash():
    letter = _letter(Withheld.nothing(), event_id="kid-1")
    assert letter["raw"] is None and letter["event_id"] == "kid-1"
    assert "raw_bytes" not in letter and "raw_sha256" not in letter
    summary = Withheld.of(b'{"event_id": "big", "url": "xx"}')
    letter = _letter(summary)
    assert (letter["event_id"], letter["raw_bytes"]) == ("big", summary.length)


def test_the_builder_never_raises_and_falls_back_to_the_last_resort():
    class Exploding(dict):
        def items(self):
            raise RuntimeError("boom")

    letter = _letter(Exploding(event_id="x"), event_id="x")
    assert letter["raw"] is None and letter["error"] == "e" and letter["event_id"] == "x"
    for hostile in (b"\xff\xfe\x00", "\ud800", b"{" * 1_000_000, object(), [[[]]] * 3):
        letter = _letter(hostile)
        assert letter["error"] == "e"
        json.dumps(letter)  # always serialisable


def test_surrogates_leave_as_ascii_escapes():
    raw = MASKER.mask_text('{"event_id": "e", "url": "a\\ud800b"}')
    raw.encode("utf-8")  # no lone surrogate in the text: coders and sinks can carry it
    assert json.loads(raw)["url"] == "a\ud800b"


def test_keys_are_cut_and_scanned():
    masked = MASKER.mask_record({"k" * 500: 1, "hans.mueller@firma.de": 2})
    assert all(len(k) <= 65 for k in masked)
    assert not any("hans" in k for k in masked)


_SECRET = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789", min_size=8, max_size=30)
_NAME = st.text(min_size=1, max_size=12).filter(lambda n: n not in VISIT_FIELDS)
_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner),
    max_leaves=10,
)


@settings(max_examples=300, deadline=None)
@given(
    secret=_SECRET,
    key=_NAME,
    others=st.dictionaries(st.sampled_from(VISIT_FIELDS), _JSON, max_size=4),
    depth=st.integers(min_value=0, max_value=4),
    cut=st.integers(min_value=0, max_value=400),
)
def test_an_undeclared_value_never_survives_at_any_depth(secret, key, others, depth, cut):
    value = "S3" + secret
    for _ in range(depth):
        value = {"x": [value]}
    line = json.dumps({**others, key: value, "z": 1})
    for text in (line, line[: min(cut, len(line) - 1)]):
        assert "S3" + secret not in json.dumps(_letter(text))


def test_the_id_of_a_line_that_does_not_parse_is_its_own_not_a_nested_one():
    line = '{"meta": {"event_id": "S3cr3t-nested"}, "event_id": "h-1", "x": "'
    letter = _letter(line)
    assert letter["event_id"] == "h-1" and "S3cr3t" not in json.dumps(letter)
    assert "event_id" not in _letter('[{"event_id": "in-a-list"}, ')

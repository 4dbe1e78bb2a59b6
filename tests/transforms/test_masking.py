"""Secrets never reach a dead letter in clear, whatever the spelling or the shape of the line."""

from __future__ import annotations

import json

from hypothesis import given
from hypothesis import strategies as st

from transforms.masking import MASK, WITHHELD, Masker

MASKER = Masker(["password", "user_sig", "private_key", "business_email"])


def test_masks_any_spelling_and_nested_values():
    line = json.dumps(
        {
            "event_id": "e1",
            "Password": "hunter2",
            "UserSig": "eJyrVkrx",
            "nested": {"private-key": "-----BEGIN", "list": [{"user_sig": "abc"}]},
        }
    )
    masked = json.loads(MASKER.mask_text(line))
    assert masked["event_id"] == "e1"
    assert masked["Password"] == masked["UserSig"] == MASK
    assert masked["nested"]["private-key"] == MASK
    assert masked["nested"]["list"][0]["user_sig"] == MASK


def test_null_secret_stays_null_and_order_is_kept():
    masked = MASKER.mask_text('{"b": 1, "password": null, "a": 2}')
    assert masked == '{"b": 1, "password": null, "a": 2}'


def test_invalid_json_is_masked_textually():
    line = '{"event_id": "e2", "password": "hunter2", "visited_at": '
    masked = MASKER.mask_text(line)
    assert "hunter2" not in masked
    assert '"event_id": "e2"' in masked
    unterminated = '{"user_sig": "eJyrVkrx'
    assert "eJyrVkrx" not in MASKER.mask_text(unterminated)


def test_undelimitable_secret_withholds_the_whole_line():
    assert MASKER.mask_text("password=hunter2&x=1") == WITHHELD
    assert MASKER.mask_text('{"private_key": {"pem": "-----BEGIN"') == WITHHELD


def test_mask_value_copies():
    record = {"password": "x", "inner": {"user_sig": "y"}}
    masked = MASKER.mask_value(record)
    assert record == {"password": "x", "inner": {"user_sig": "y"}}
    assert masked == {"password": MASK, "inner": {"user_sig": MASK}}


SECRET = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789+/=", min_size=8, max_size=30)
KEY = st.sampled_from(["password", "PASSWORD", "user_sig", "UserSig", "private_key", "privateKey"])


@given(
    secret=SECRET,
    key=KEY,
    others=st.dictionaries(st.sampled_from(["a", "url", "ip"]), st.integers(), max_size=3),
    cut=st.integers(min_value=0, max_value=200),
)
def test_secret_value_never_survives(secret, key, others, cut):
    line = json.dumps({**others, key: "S3" + secret, "z": 1})
    for text in (line, line[: cut if cut < len(line) else len(line) - 1]):
        assert "S3" + secret not in MASKER.mask_text(text)

"""transforms.retention: layout, matching, the journal, lifecycle rules and erasure requests.

Files are real (written with the project's own sinks and schemas); the journal is exercised on a
real directory, including a partially applied commit.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import os
from pathlib import Path

import phonenumbers
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from schemas.arrow import arrow_schema
from schemas.avro import output_schema
from schemas.policy import PolicyError, default_policy_path, load_policy, parse_policy
from transforms.deadletter import RecordError
from transforms.retention.files import TableFile, write_lines
from transforms.retention.layout import (
    NotAnOutputRootError,
    check_output_root,
    classify,
    list_layout,
)
from transforms.retention.lifecycle import CategoryRules, IndexEvents, cascades, parse_event
from transforms.retention.lock import LockHeldError, RetentionLock
from transforms.retention.matching import ColumnIndex, ip_forms, normalise
from transforms.retention.subjects import Subjects, parse_request
from transforms.retention.txn import Transaction, apply_actions, recover
from transforms.sinks import HIVE_NULL_PARTITION, OPEN_ENDED_EXPIRY_DATE, ParquetSink
from transforms.timestamps import TimeBounds, parse_event_time

POLICY = load_policy()
DAY_US = 86_400_000_000


# ---------------------------------------------------------------------------------- layout


@pytest.mark.parametrize(
    ("rel", "expected"),
    [
        (
            "data_category=sdk_log/expiry_date=2026-12-05/part-0.parquet",
            ("data", "sdk_log", "2026-12-05", "data_category=sdk_log/expiry_date=2026-12-05"),
        ),
        (
            f"data_category=a%2Fb/expiry_date={HIVE_NULL_PARTITION}/x.avro",
            (
                "data",
                "a/b",
                HIVE_NULL_PARTITION,
                f"data_category=a%2Fb/expiry_date={HIVE_NULL_PARTITION}",
            ),
        ),
        (
            f"data_category=account_information/expiry_date={OPEN_ENDED_EXPIRY_DATE}/p.parquet",
            (
                "data",
                "account_information",
                "9999-12-31",
                "data_category=account_information/expiry_date=9999-12-31",
            ),
        ),
        (
            "_dead_letter/source=visits/expiry_date=2026-12-13/p.jsonl",
            (
                "dead_letter",
                "visits",
                "2026-12-13",
                "_dead_letter/source=visits/expiry_date=2026-12-13",
            ),
        ),
        ("_reports/visits-1.json", None),
        ("_retention/txn-1/staged/data_category=x/expiry_date=2026-01-01/p.parquet", None),
        (".temp-abc/data_category=x/expiry_date=2026-01-01/p.parquet", None),
        ("data_category=x/p.parquet", None),
        ("notes.txt", None),
    ],
)
def test_classify(rel, expected):
    partition = classify(rel)
    if expected is None:
        assert partition is None
    else:
        assert (partition.kind, partition.name, partition.expiry, partition.rel_dir) == expected


def test_a_partition_goes_on_its_expiry_date_and_unknown_dates_fail_closed():
    today = dt.date(2026, 12, 10)
    expired = classify("data_category=c/expiry_date=2026-12-09/f")
    same_day = classify("data_category=c/expiry_date=2026-12-10/f")
    tomorrow = classify("data_category=c/expiry_date=2026-12-11/f")
    null = classify(f"data_category=c/expiry_date={HIVE_NULL_PARTITION}/f")
    open_ended = classify(f"data_category=c/expiry_date={OPEN_ENDED_EXPIRY_DATE}/f")
    garbage = classify("data_category=c/expiry_date=2026-13-45/f")
    words = classify("data_category=c/expiry_date=yesterday/f")
    # "within N days" is at most N days: the partition of the expiry date goes on that date
    assert expired.expired(today) and same_day.expired(today) and not tomorrow.expired(today)
    # Open-ended partitions, today's and the Hive null partition of older outputs, are never
    # due: explicitly, not because 9999-12-31 lies far ahead (a --now on it would reach it).
    for partition in (null, open_ended):
        assert partition.open_ended and partition.recognised
        assert partition.expiry_date is None
        for day in (today, dt.date(9999, 12, 31)):
            assert not partition.expired(day)
    assert not classify("data_category=c/expiry_date=9999-12-30/f").open_ended
    assert classify("data_category=c/expiry_date=9999-12-30/f").expired(dt.date(9999, 12, 31))
    assert not garbage.expired(today) and not garbage.recognised
    assert not words.expired(today) and not words.recognised


def test_output_root_check_and_listing(tmp_path):
    with pytest.raises(NotAnOutputRootError, match="does not look like an output root"):
        check_output_root(str(tmp_path))
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(NotAnOutputRootError):
        check_output_root(str(tmp_path))
    with pytest.raises(NotAnOutputRootError, match="not a directory"):
        check_output_root(str(tmp_path / "missing"))
    part = tmp_path / "data_category=c/expiry_date=2026-01-01"
    part.mkdir(parents=True)
    (part / "part-0.parquet").write_bytes(b"x")
    (part / "_SUCCESS").write_bytes(b"")
    (tmp_path / "_reports").mkdir()
    (tmp_path / "_reports/r.json").write_text("{}")
    check_output_root(str(tmp_path))
    files = list_layout(str(tmp_path))
    assert [(f.rel, f.format) for f in files] == [
        ("data_category=c/expiry_date=2026-01-01/_SUCCESS", None),
        ("data_category=c/expiry_date=2026-01-01/part-0.parquet", "parquet"),
    ]
    # an empty partition directory is not enough, but a report is
    (part / "part-0.parquet").unlink()
    (part / "_SUCCESS").unlink()
    check_output_root(str(tmp_path))


# -------------------------------------------------------------------------------- matching


@given(
    local=st.from_regex(r"[A-Za-z0-9._%+-]{1,12}", fullmatch=True),
    domain=st.from_regex(r"[A-Za-z0-9-]{1,10}\.[A-Za-z]{2,4}", fullmatch=True),
    pad=st.sampled_from(["", " ", "\t", "  "]),
)
def test_emails_match_whatever_their_case_and_padding(local, domain, pad):
    email = f"{local}@{domain}"
    stored = pa.table({"business_email": [f"{pad}{email.upper()}{pad}", "other@x.example", None]})
    index = ColumnIndex(
        {"business_email": {normalise(email.swapcase(), "email"): "R"}}, {"business_email": "email"}
    )
    assert index.match(stored) == {0: {"business_email": "R"}}


@given(st.ip_addresses())
def test_ip_forms_cover_the_mapped_spelling(address):
    forms = ip_forms(f" {address} ")
    assert str(address) in forms
    if isinstance(address, ipaddress.IPv4Address):
        assert str(ipaddress.IPv6Address(f"::ffff:{address}")) in forms
    elif address.ipv4_mapped is not None:
        assert str(address.ipv4_mapped) in forms


def _host(address: ipaddress.IPv4Address | ipaddress.IPv6Address):
    """The host an address names: an IPv4-mapped IPv6 address is its IPv4 address."""
    mapped = getattr(address, "ipv4_mapped", None)
    return mapped if mapped is not None else address


@st.composite
def ip_spellings(draw, address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str:
    """The spellings an address is written in: an IPv4 address (or the one an IPv4-mapped
    address maps) dotted, IPv4-mapped dotted (``::ffff:194.25.2.129``, the stored form) or in
    hex (``::ffff:c219:281``); an IPv6 address compressed or exploded; any case, padded."""
    host = _host(address)
    if isinstance(host, ipaddress.IPv4Address):
        mapped = ipaddress.IPv6Address(f"::ffff:{host}")
        text = draw(
            st.sampled_from(
                [str(host), f"::ffff:{host}", f"::FFFF:{host}", mapped.exploded, str(mapped)]
            )
        )
        if text == str(mapped):  # Python < 3.13 prints it in hex, later versions dotted
            text = f"::ffff:{int(mapped) >> 16 & 0xFFFF:x}:{int(mapped) & 0xFFFF:x}"
    else:
        text = draw(st.sampled_from([str(host), host.exploded]))
    return f"{draw(PADS)}{_case(draw, text)}{draw(PADS)}"


@given(st.data(), st.lists(st.ip_addresses(), min_size=1, max_size=6))
def test_any_spelling_of_an_ip_is_one_key_and_hosts_never_collide(data, addresses):
    keys = [normalise(str(address), "ip") for address in addresses]
    # one key per host: an IPv4 address and its IPv4-mapped form are one, others never
    assert len(set(keys)) == len({_host(a) for a in addresses})
    for address, key in zip(addresses, keys, strict=True):
        assert key == str(_host(address))  # dotted IPv4, or RFC 5952 IPv6
        assert normalise(key, "ip") == key
        spelt = data.draw(ip_spellings(address))
        assert normalise(spelt, "ip") == key
        # a stored column holding that spelling is found by the key, whatever the request
        stored = pa.table({"ip": [spelt, None, "not an ip"]})
        assert ColumnIndex({"ip": {key: "R"}}, {"ip": "ip"}).match(stored) == {0: {"ip": "R"}}


def test_a_request_for_an_ipv4_address_and_for_its_mapped_form_find_the_same_rows():
    stored = pa.table({"ip": ["194.25.2.129", "::ffff:194.25.2.129", "::ffff:c219:281",
                              "::194.25.2.129", "194.25.2.130", "2001:db8::1"]})  # fmt: skip
    for request in ("194.25.2.129", "::ffff:194.25.2.129", "::FFFF:C219:281"):
        index = ColumnIndex({"ip": {normalise(request, "ip"): "R"}}, {"ip": "ip"})
        # the IPv4-compatible ::194.25.2.129 is another address (deprecated, not a mapping)
        assert sorted(index.match(stored)) == [0, 1, 2], request
    assert normalise("2001:DB8:0:0:0:0:0:1", "ip") == "2001:db8::1"
    for text in ("194.25.2", "01.2.3.4", "example.com", "", "1.2.3.4/32"):
        assert normalise(text, "ip") is None


@settings(max_examples=50, deadline=None)
@given(
    stored=st.lists(st.one_of(st.none(), st.integers(0, 30).map(str)), max_size=40),
    wanted=st.sets(st.integers(0, 30), max_size=5),
)
def test_column_index_finds_exactly_the_rows_a_python_scan_finds(stored, wanted):
    index = ColumnIndex({"uin": {str(w): {f"r{w}"} for w in wanted}})
    table = pa.table({"uin": pa.array(stored, pa.string()), "other": list(range(len(stored)))})
    expected = {i: {"uin": {f"r{v}"}} for i, v in enumerate(stored) if v and int(v) in wanted}
    assert index.match(table) == expected


def test_identifiers_match_as_text():
    assert normalise(100000009, "identifier") == normalise(" 100000009 ", "identifier")
    assert normalise(True, "identifier") is None and normalise("", "identifier") is None
    assert normalise("not-an-email", "email") is None


# One subject's contact data in any spelling is one key; two subjects are never one key.

EMAILS = st.builds(
    "{}@{}".format,
    st.from_regex(r"[a-z0-9._%+-]{1,12}", fullmatch=True),
    st.from_regex(r"[a-z0-9-]{1,10}\.[a-z]{2,4}", fullmatch=True),
)
PADS = st.sampled_from(["", " ", "\t", "\u00a0", " \n"])


def _case(draw, text: str) -> str:
    flips = draw(st.lists(st.booleans(), min_size=len(text), max_size=len(text)))
    return "".join(c.swapcase() if flip else c for c, flip in zip(text, flips, strict=True))


@st.composite
def email_spellings(draw, email: str) -> str:
    pad = draw(PADS)
    return f"{pad}{_case(draw, email)}{draw(PADS)}"


@given(st.data(), st.lists(EMAILS, min_size=1, max_size=5, unique=True))
def test_any_spelling_of_an_email_is_one_key_and_subjects_never_collide(data, emails):
    keys = [normalise(email, "email") for email in emails]
    assert len(set(keys)) == len(emails)
    for email, key in zip(emails, keys, strict=True):
        assert normalise(data.draw(email_spellings(email)), "email") == key


PHONE_REGIONS = sorted(
    r for r in phonenumbers.SUPPORTED_REGIONS if phonenumbers.example_number(r) is not None
)
E164 = phonenumbers.PhoneNumberFormat.E164
FULLWIDTH = str.maketrans(
    "+0123456789", "\uff0b\uff10\uff11\uff12\uff13\uff14\uff15\uff16\uff17\uff18\uff19"
)


@st.composite
def phone_numbers(draw) -> str:
    """A possible number of some region's numbering plan, in E.164 (its last digits varied)."""
    example = phonenumbers.example_number(draw(st.sampled_from(PHONE_REGIONS)))
    e164 = phonenumbers.format_number(example, E164)
    tail = f"{draw(st.integers(0, 9999)):04d}"
    number = phonenumbers.parse(e164[:-4] + tail, None)
    assume(phonenumbers.is_possible_number(number))
    return phonenumbers.format_number(number, E164)


@st.composite
def phone_spellings(draw, e164: str) -> str:
    """``e164`` as people write it: the library's formats, ``00`` for ``+``, any separators,
    full-width digits, padding."""
    number = phonenumbers.parse(e164, None)
    style = draw(st.sampled_from(["e164", "international", "rfc3966", "00", "separators"]))
    if style == "international":
        text = phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.INTERNATIONAL)
    elif style == "rfc3966":
        text = phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.RFC3966)
    elif style == "00":
        text = "00" + e164[1:]
    elif style == "separators":
        seps = draw(st.lists(st.sampled_from(["", " ", "-", ".", "/"]), min_size=len(e164) - 1))
        text = draw(st.sampled_from(["+", "00"])) + "".join(
            digit + sep for digit, sep in zip(e164[1:], seps, strict=False)
        )
        text = text.rstrip(" -./")
    else:
        text = e164
    if draw(st.booleans()):
        text = text.translate(FULLWIDTH)
    return f"{draw(PADS)}{text}{draw(PADS)}"


@settings(max_examples=200, deadline=None)
@given(st.data(), st.lists(phone_numbers(), min_size=1, max_size=5, unique=True))
def test_any_spelling_of_a_phone_number_is_its_e164_and_numbers_never_collide(data, numbers):
    keys = [normalise(number, "phone") for number in numbers]
    assert keys == numbers  # the key is the E.164 form itself: distinct numbers, distinct keys
    for number in numbers:
        assert normalise(data.draw(phone_spellings(number)), "phone") == number
        # an extension is a line of its own: part of the key, never confused with the number
        ext = data.draw(st.integers(1, 99999).map(str))
        spelt = data.draw(st.sampled_from(["{} ext. {}", "{} x{}", "{};ext={}", "{}#{}"]))
        assert normalise(spelt.format(number, ext), "phone") == f"{number};ext={ext}"


@given(phone_numbers())
def test_a_phone_number_without_its_country_code_is_not_a_key(number):
    national = phonenumbers.format_number(
        phonenumbers.parse(number, None), phonenumbers.PhoneNumberFormat.NATIONAL
    )
    assume(not national.lstrip().startswith(("+", "00", "\uff0b")))
    assert normalise(national, "phone") is None  # no region is guessed: fail closed


@pytest.mark.parametrize(
    "text",
    ["+1 415 555 2671 call me", "+1 800 FLOWERS", "+1 415 555 2671, +1 415 555 2672", "+", "00",
     "+1", "++14155552671", "tel:", "14155552671", "+1 (415) 555-2671 ext.", "phone: +14155552671"],
)  # fmt: skip
def test_what_is_not_one_phone_number_is_not_a_key(text):
    assert normalise(text, "phone") is None


SLUGS = st.from_regex(r"[a-z0-9][a-z0-9-]{1,28}[a-z0-9]", fullmatch=True)


@st.composite
def profile_spellings(draw, slug: str) -> str:
    scheme = draw(st.sampled_from(["", "http://", "https://", "HTTPS://"]))
    host = _case(draw, draw(st.sampled_from(["linkedin.com", "www.linkedin.com", "uk.linkedin.com",
                                               "de.linkedin.com", "m.linkedin.com"])))  # fmt: skip
    path = _case(draw, "/in/") + _case(draw, slug) + draw(st.sampled_from(["", "/"]))
    query = draw(st.sampled_from(["", "?trk=public_profile", "?originalSubdomain=uk&x=1"]))
    fragment = draw(st.sampled_from(["", "#experience"]))
    return f"{draw(PADS)}{scheme}{host}{path}{query}{fragment}{draw(PADS)}"


@given(st.data(), st.lists(SLUGS, min_size=1, max_size=5, unique=True))
def test_any_spelling_of_a_profile_url_is_its_canonical_path_and_never_collides(data, slugs):
    keys = [normalise(f"https://www.linkedin.com/in/{slug}/", "linkedin") for slug in slugs]
    assert keys == [f"linkedin.com/in/{slug}" for slug in slugs]
    for slug, key in zip(slugs, keys, strict=True):
        assert normalise(data.draw(profile_spellings(slug)), "linkedin") == key


def test_profile_urls_decode_their_slug_and_refuse_other_places():
    key = normalise("https://de.linkedin.com/in/J%C3%B6rg-M%c3%bcller-1a2b3c/", "linkedin")
    assert key == "linkedin.com/in/jörg-müller-1a2b3c"
    assert normalise("linkedin.com/in/JÖRG-Müller-1a2b3c", "linkedin") == key
    for text in (
        "https://linkedin.example/in/contact1",  # not LinkedIn
        "https://linkedin.com.evil.example/in/jane",
        "https://evil-linkedin.com/in/jane",
        "https://user@linkedin.com/in/jane",
        "https://linkedin.com:8443/in/jane",
        "ftp://linkedin.com/in/jane",
        "https://www.linkedin.com/company/acme",  # a company, not a person
        "https://www.linkedin.com/in/",
        "https://www.linkedin.com/in/%20/",
        "jane-doe",
        "",
    ):
        assert normalise(text, "linkedin") is None, text


def test_stored_contact_values_are_matched_under_the_same_normalisation():
    table = pa.table(
        {
            "business_phone": ["+1 (415) 555-2671", "001-415-555-2671 ext. 9", "415 555 2671",
                               None, "+1 415 555 2672", "+14155552671"],
            "linkedin_url": ["https://www.linkedin.com/in/Jane-Doe/?trk=x", None,
                             "https://linkedin.example/in/jane-doe", None,
                             "linkedin.com/in/jane-doe-2", "uk.linkedin.com/in/JANE-DOE#top"],
        }
    )  # fmt: skip
    before = table.to_pylist()
    index = ColumnIndex(
        {
            "business_phone": {normalise("0014155552671", "phone"): "P"},
            "linkedin_url": {normalise("LinkedIn.com/in/jane-DOE", "linkedin"): "L"},
        },
        {"business_phone": "phone", "linkedin_url": "linkedin"},
    )
    assert index.match(table) == {
        0: {"business_phone": "P", "linkedin_url": "L"},
        5: {"business_phone": "P", "linkedin_url": "L"},
    }
    assert table.to_pylist() == before  # compared normalised, never rewritten


# ------------------------------------------------------------------------- files + journal


def _parquet(path: Path, rows: list[dict]) -> None:
    sink = ParquetSink(arrow_schema(output_schema("sdk_log")))
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as fh:
        sink.open(fh)
        for row in rows:
            sink.write(row)
        sink.flush()


def _log(i: int, expires_at: int | None = None) -> dict:
    logged = parse_event_time("2026-11-20T00:00:00Z") + i
    return {
        "event_id": f"e{i}",
        "logged_at": logged,
        "sdk_app_id": "1400000001",
        "uin": str(100 + i % 3),
        "user_id": f"u{i}",
        "data_category": "sdk_log",
        "purposes": ["troubleshooting"],
        "legal_basis": "contract",
        "retention_rule": "fixed_14d",
        "expires_at": expires_at if expires_at is not None else logged + 14 * DAY_US,
        "policy_version": POLICY.version,
    }


def test_table_file_rewrite_keeps_other_rows_schema_and_codec(tmp_path):
    src = tmp_path / "in.parquet"
    rows = [_log(i) for i in range(7)]
    _parquet(src, rows)
    content = TableFile(str(src), "parquet")
    matched = ColumnIndex({"uin": {"101": "R"}}).match(content.columns(["uin"]))
    assert sorted(matched) == [1, 4]
    out = tmp_path / "out.parquet"
    assert content.write_without(str(out), set(matched)) == 5
    before, after = pq.read_table(src), pq.read_table(out)
    assert after.schema == before.schema
    assert after.to_pylist() == [r for i, r in enumerate(before.to_pylist()) if i not in (1, 4)]
    assert pq.ParquetFile(out).metadata.row_group(0).column(0).compression == "SNAPPY"
    # timestamps come back as int micros, every value unchanged
    assert {k: v for k, v in content.rows([0])[0].items() if v is not None} == rows[0]


def _layout_with_txn(tmp_path: Path) -> tuple[str, Transaction, list[dict]]:
    root = str(tmp_path)
    (tmp_path / "_reports").mkdir()
    part = tmp_path / "data_category=sdk_log/expiry_date=2026-12-04"
    _parquet(part / "a.parquet", [_log(0), _log(1)])
    _parquet(part / "b.parquet", [_log(2)])
    txn = Transaction(root, "t1")
    staged_a = txn.staged_rel("data_category=sdk_log/expiry_date=2026-12-04/a.parquet")
    staged_new = txn.staged_rel("data_category=sdk_log/expiry_date=2026-12-05/new.parquet")
    _parquet(tmp_path / staged_a, [_log(0)])
    _parquet(tmp_path / staged_new, [_log(1)])
    actions = [
        {"op": "delete", "target": "data_category=sdk_log/expiry_date=2026-12-04/b.parquet"},
        {
            "op": "replace",
            "target": "data_category=sdk_log/expiry_date=2026-12-04/a.parquet",
            "staged": staged_a,
        },
        {
            "op": "add",
            "target": "data_category=sdk_log/expiry_date=2026-12-05/new.parquet",
            "staged": staged_new,
        },
    ]
    return root, txn, actions


def _ids(root: Path) -> dict[str, list[str]]:
    return {
        str(p.relative_to(root)): pq.read_table(p).column("event_id").to_pylist()
        for p in sorted(root.glob("data_category=*/*/*.parquet"))
    }


EXPECTED_AFTER = {
    "data_category=sdk_log/expiry_date=2026-12-04/a.parquet": ["e0"],
    "data_category=sdk_log/expiry_date=2026-12-05/new.parquet": ["e1"],
}


def test_uncommitted_transaction_rolls_back(tmp_path):
    root, txn, _ = _layout_with_txn(tmp_path)
    before = _ids(tmp_path)
    assert [s["outcome"] for s in recover(root, "r2")] == ["rolled_back"]
    assert _ids(tmp_path) == before and not Path(txn.dir).exists()


@pytest.mark.parametrize("done", [0, 1, 2, 3])
def test_committed_transaction_rolls_forward_from_any_step(tmp_path, done):
    root, txn, actions = _layout_with_txn(tmp_path)
    txn.commit({"pipeline": "erase", "actions": actions, "audit": {"what": "test"}})
    ordered = sorted(actions, key=lambda a: ["add", "replace", "delete"].index(a["op"]))
    apply_actions(root, ordered[:done])  # the crash: only the first `done` actions happened
    (summary,) = recover(root, "r2")
    assert summary["outcome"] == "rolled_forward"
    assert _ids(tmp_path) == EXPECTED_AFTER
    audit = json.loads(Path(summary["audit"]).read_text())
    assert audit["recovered"] and audit["recovered_by"] == "r2" and audit["what"] == "test"
    assert not Path(txn.dir).exists()
    # applying again changes nothing: every action is idempotent
    assert apply_actions(root, actions)["applied"] == 0
    assert _ids(tmp_path) == EXPECTED_AFTER


def test_replace_never_resurrects_a_deleted_file(tmp_path):
    root, txn, actions = _layout_with_txn(tmp_path)
    txn.commit({"pipeline": "erase", "actions": actions, "audit": {}})
    (tmp_path / "data_category=sdk_log/expiry_date=2026-12-04/a.parquet").unlink()  # purged
    results = apply_actions(root, actions)
    assert results["skipped_target_gone"] == [
        "data_category=sdk_log/expiry_date=2026-12-04/a.parquet"
    ]
    assert not (tmp_path / "data_category=sdk_log/expiry_date=2026-12-04").exists()


def test_commit_refuses_missing_staged_files_and_clashing_adds(tmp_path):
    _root, txn, actions = _layout_with_txn(tmp_path)
    Path(tmp_path / actions[2]["staged"]).unlink()
    with pytest.raises(OSError, match="staged files are missing"):
        txn.commit({"actions": actions})
    clash = {"op": "add", "target": actions[1]["target"], "staged": actions[1]["staged"]}
    with pytest.raises(OSError, match="would overwrite"):
        txn.commit({"actions": [clash]})
    assert not Path(txn.commit_path).exists()


def test_lock_refuses_a_live_holder_and_takes_over_a_dead_one(tmp_path):
    root = str(tmp_path)
    with RetentionLock(root, "a", "purge"), pytest.raises(LockHeldError, match="purge run a"):
        RetentionLock(root, "b", "erase").__enter__()
    assert not (tmp_path / "_retention").exists()
    (tmp_path / "_retention").mkdir()
    dead = os.fork()
    if dead == 0:
        os._exit(0)
    os.waitpid(dead, 0)
    (tmp_path / "_retention/lock.json").write_text(
        json.dumps({"run_id": "x", "pid": dead, "host": os.uname().nodename})
    )
    with RetentionLock(root, "c", "erase") as lock:
        assert json.loads(Path(lock.path).read_text())["run_id"] == "c"


# ------------------------------------------------------------------------- lifecycle rules


@pytest.mark.parametrize(
    ("obj", "error"),
    [
        ({"uin": 1, "at": "2026-11-28T00:00:00Z"}, "missing_field:event"),
        ({"event": "account_closed", "uin": 1, "at": "2026-11-28T00:00:00Z"}, "unknown_event"),
        ({"event": "account_deleted", "at": "2026-11-28T00:00:00Z"}, "missing_field:uin"),
        ({"event": "account_deleted", "uin": True, "at": 1}, "malformed_field:uin"),
        (
            {"event": "marketing_opt_out", "business_email": "nope", "at": 1},
            "malformed_field:business_email",
        ),
        ({"event": "service_terminated", "sdk_app_id": 5}, "missing_field:at"),
        ({"event": "service_terminated", "sdk_app_id": 5, "at": "soon"}, "malformed_timestamp:at"),
        # +30 days after 9999-12-31 is not a date any reader can hold
        (
            {"event": "account_deleted", "uin": 1, "at": "9999-12-31T00:00:00Z"},
            "expiry_out_of_range",
        ),
        # +30 days: 9999-12-31, the open-ended partition's date, is no real expiry either
        (
            {"event": "account_deleted", "uin": 1, "at": "9999-12-01T00:00:00Z"},
            "expiry_out_of_range",
        ),
        ({"event": "account_deleted", "uin": "\ud800", "at": 1}, "malformed_text:uin"),
        ({"event": "marketing_opt_out\udfff", "at": 1}, "malformed_text:event"),
        # an opt-out names its subject by exactly one of the policy's keys
        ({"event": "marketing_opt_out", "at": 1}, "missing_subject"),
        (
            {"event": "marketing_opt_out", "business_email": "a@b.example",
             "business_phone": "+14155552671", "at": 1},
            "ambiguous_subject",
        ),
        # a number without its country code is not placed in E.164 by guessing a region
        (
            {"event": "marketing_opt_out", "business_phone": "(415) 555-2671", "at": 1},
            "malformed_field:business_phone",
        ),
        (
            {"event": "marketing_opt_out", "business_phone": 14155552671, "at": 1},
            "malformed_field:business_phone",
        ),
        (
            {"event": "marketing_opt_out", "linkedin_url": "https://example.com/in/jane", "at": 1},
            "malformed_field:linkedin_url",
        ),
        (
            {"event": "marketing_opt_out", "linkedin_url": "linkedin.com/in/\udc00", "at": 1},
            "malformed_text:linkedin_url",
        ),
    ],
)  # fmt: skip
def test_malformed_events_have_reasons(obj, error):
    with pytest.raises(RecordError) as rejected:
        parse_event(obj, POLICY)
    assert rejected.value.error == error


@pytest.mark.parametrize(
    ("key", "spelling", "value"),
    [
        ("business_email", " Jane.Doe@Corp.Example ", "jane.doe@corp.example"),
        ("business_phone", "00 1 (415) 555-2671", "+14155552671"),
        ("business_phone", "+1 415 555 2671 ext. 12", "+14155552671;ext=12"),
        ("linkedin_url", "https://uk.linkedin.com/in/Jane-Doe/?trk=x", "linkedin.com/in/jane-doe"),
    ],
)
def test_an_opt_out_is_keyed_by_any_contact_field_of_the_policy(key, spelling, value):
    assert key in POLICY.lifecycle_events["marketing_opt_out"].keys
    event = parse_event({"event": "marketing_opt_out", key: spelling, "at": 1}, POLICY)
    assert (event["key"], event["value"]) == (key, value)


def test_event_index_keeps_the_earliest_time():
    fn = IndexEvents()
    events = [
        parse_event({"event": "account_deleted", "uin": 7, "at": "2026-11-28T00:00:00Z"}, POLICY),
        parse_event({"event": "account_deleted", "uin": "7", "at": "2026-11-20T00:00:00Z"}, POLICY),
    ]
    acc = fn.merge_accumulators([fn.add_input({}, events[0]), fn.add_input({}, events[1])])
    assert fn.extract_output(acc) == {
        "uin": {"7": {"account_deleted": parse_event_time("2026-11-20T00:00:00Z")}}
    }


def test_category_rules_come_from_the_policy():
    at = parse_event_time("2026-11-28T10:00:00Z")
    account = CategoryRules(POLICY, POLICY.category("account_information"))
    config = CategoryRules(POLICY, POLICY.category("console_configuration"))
    visitors = CategoryRules(POLICY, POLICY.category("corporate_visitor_info"))
    retention = POLICY.category("account_information").retention
    assert account.expiry(retention.label, {"uin": {"account_deleted": at}}) == (
        at + retention.days * DAY_US,
        "account_deleted",
    )
    # a label written under an older policy (another period) gets the current period
    assert account.expiry("account_lifetime_plus_90d", {"uin": {"account_deleted": at}})[0] == (
        at + retention.days * DAY_US
    )
    days = POLICY.category("console_configuration").retention.days
    both = {"uin": {"account_deleted": at}, "sdk_app_id": {"service_terminated": at - DAY_US}}
    assert config.expiry("service_lifetime_plus_7d", both) == (
        at - DAY_US + days * DAY_US,
        "service_terminated",
    )
    assert visitors.expiry("until_opt_out", {"business_email": {"marketing_opt_out": at}}) == (
        at,
        "marketing_opt_out",
    )
    # a fixed-retention row is not the opt-out's business, an unknown label is left alone
    assert visitors.expiry("fixed_180d", {"business_email": {"marketing_opt_out": at}}) is None
    assert account.expiry("mystery_rule", {"uin": {"account_deleted": at}}) is None
    assert set(CategoryRules(POLICY, POLICY.category("customer_temporary_key")).events) == {
        "service_terminated"
    }


# ----------------------------------------------------------------------- erasure requests


@pytest.mark.parametrize(
    ("obj", "error"),
    [
        ({"received_at": "2026-11-28T00:00:00Z", "uin": 1}, "missing_field:request_id"),
        ({"request_id": ["x"], "received_at": 1, "uin": 1}, "malformed_field:request_id"),
        ({"request_id": "r", "uin": 1}, "missing_field:received_at"),
        ({"request_id": "r", "received_at": "later", "uin": 1}, "malformed_timestamp:received_at"),
        ({"request_id": "r", "received_at": 1}, "missing_subject"),
        ({"request_id": "r", "received_at": 1, "uin": 1, "ip": "1.2.3.4"}, "ambiguous_subject"),
        ({"request_id": "r", "received_at": 1, "ip": "999.1.1.1"}, "malformed_field:ip"),
        (
            {"request_id": "r", "received_at": 1, "business_email": "x"},
            "malformed_field:business_email",
        ),
        ({"request_id": "r", "received_at": 1, "user_id": 1.5}, "malformed_field:user_id"),
        ({"request_id": "r\ud800", "received_at": 1, "uin": 1}, "malformed_text:request_id"),
        ({"request_id": "r", "received_at": 1, "user_id": "\udc00"}, "malformed_text:user_id"),
        (
            {"request_id": "r", "received_at": 1, "sdk_app_id": 1, "uin": 2},
            "ambiguous_subject",
        ),
        (
            {"request_id": "r", "received_at": 1, "business_phone": "415 555 2671"},
            "malformed_field:business_phone",
        ),
        (
            {"request_id": "r", "received_at": 1, "linkedin_url": "https://www.linkedin.com/feed"},
            "malformed_field:linkedin_url",
        ),
        (
            {"request_id": "r", "received_at": 1, "linkedin_url": "x",
             "business_email": "a@b.example"},
            "ambiguous_subject",
        ),
        (
            {"request_id": "r", "received_at": 1, "sdk_app_id": "\ud800"},
            "malformed_text:sdk_app_id",
        ),
    ],
)  # fmt: skip
def test_malformed_requests_have_reasons(obj, error):
    with pytest.raises(RecordError) as rejected:
        parse_request(obj)
    assert rejected.value.error == error


def test_requests_and_events_outside_the_run_bounds_are_rejected():
    bounds = TimeBounds(
        parse_event_time("2000-01-01T00:00:00Z"), parse_event_time("2026-12-01T00:00:00Z")
    )
    for received in ("0001-01-01T00:00:00Z", "9999-12-31T00:00:00Z", 1793049276):
        with pytest.raises(RecordError) as rejected:
            parse_request({"request_id": "r", "received_at": received, "uin": 1}, bounds)
        assert rejected.value.error == "event_time_out_of_range:received_at"
        event = {"event": "marketing_opt_out", "business_email": "a@b.example", "at": received}
        with pytest.raises(RecordError) as rejected:
            parse_event(event, POLICY, bounds)
        assert rejected.value.error == "event_time_out_of_range:at"


def test_subjects_match_rows_and_dead_letters():
    requests = [
        parse_request({"request_id": "A", "received_at": 1, "business_email": "Ada@Corp.example"}),
        parse_request({"request_id": "B", "received_at": 1, "ip": "203.0.113.9"}),
        parse_request({"request_id": "C", "received_at": 1, "uin": 100000009}),
        parse_request({"request_id": "D", "received_at": 1, "user_id": "u-7", "sdk_app_id": 5}),
    ]
    subjects = Subjects(POLICY, requests, {"corporate_visitor_info": {"event_id": {"v1": ["B"]}}})
    logs = pa.table(
        {
            "event_id": ["v1", "v2", "v3", "v4", "v5", "v6"],
            "client_ip": [None, None, "::ffff:203.0.113.9", None, None, "::ffff:cb00:7109"],
            "user_id": [None, None, None, "u-7", "u-7", None],
            "sdk_app_id": [None, None, None, "5", "6", None],
            "uin": [None, " 100000009", None, None, None, None],
        }
    )
    # the columns backend_log declares: an IP in either IPv4-mapped spelling, a user narrowed to
    # application 5
    assert subjects.columns_for("backend_log") == ["client_ip", "sdk_app_id", "uin", "user_id"]
    assert subjects.rows("backend_log", logs) == {1: {"C"}, 2: {"B"}, 3: {"D"}, 5: {"B"}}
    # the same columns in a category that does not declare them find nothing
    assert subjects.rows("website_visit", logs) == {}
    visitors = pa.table({"event_id": ["v1", "v2"], "business_email": [None, " ADA@corp.example"]})
    assert subjects.rows("corporate_visitor_info", visitors) == {0: {"B"}, 1: {"A"}}
    # the link only applies to its target category
    assert subjects.rows("website_visit", visitors.select(["event_id"])) == {}

    def letter(raw: str, **extra) -> bytes:
        return json.dumps({"source": "x", "error": "e", "raw": raw, **extra}).encode()

    assert subjects.dead_letter_requests(letter('{"ip": "203.0.113.9", "x": 1}')) == {"B"}
    assert subjects.dead_letter_requests(letter('{"email": "ADA@corp.example"}')) == {"A"}
    assert subjects.dead_letter_requests(letter('{"uin": 100000009, "ip": "1.1.1.1')) == {"C"}
    assert subjects.dead_letter_requests(letter("visitor 203.0.113.9 broke it")) == {"B"}
    assert subjects.dead_letter_requests(letter("203.0.113.91 and 1203.0.113.9")) == set()
    assert subjects.dead_letter_requests(letter('{"uin": "1000000091"}')) == set()
    assert subjects.dead_letter_requests(letter('{"room_id": "100000009"}')) == set()
    assert subjects.dead_letter_requests(b"not json at all ada@corp.example") == {"A"}


def test_dead_letter_lines_are_kept_byte_for_byte(tmp_path):
    lines = [b'{"a": 1}', '{"b": "\u00e9"}'.encode(), b"raw \xff bytes"]
    path = tmp_path / "d.jsonl"
    write_lines(str(path), lines)
    assert path.read_bytes() == b"\n".join(lines) + b"\n"


def test_an_application_is_a_subject_of_its_own_and_still_narrows_a_user():
    app = parse_request({"request_id": "A", "received_at": 1, "sdk_app_id": 1400000001})
    assert (app["field"], app["value"], app["scope"]) == ("sdk_app_id", "1400000001", None)
    user = parse_request(
        {"request_id": "U", "received_at": 1, "user_id": "u-7", "sdk_app_id": "1400000001"}
    )
    assert (user["field"], user["value"], user["scope"]) == ("user_id", "u-7", "1400000001")


def test_subjects_by_phone_profile_and_application_in_rows_and_dead_letters():
    requests = [
        parse_request({"request_id": "P", "received_at": 1, "business_phone": "+1 415-555-2671"}),
        parse_request(
            {"request_id": "L", "received_at": 1, "linkedin_url": "www.linkedin.com/in/jane-doe/"}
        ),
        parse_request({"request_id": "A", "received_at": 1, "sdk_app_id": 1400000001}),
    ]
    subjects = Subjects(POLICY, requests)
    table = pa.table(
        {
            "event_id": ["v1", "v2", "v3", "v4", "v5"],
            "business_phone": ["0014155552671", "+1 415 555 2672", None, None, None],
            "linkedin_url": [None, None, "uk.linkedin.com/in/Jane-Doe?x=1", None, None],
        }
    )
    assert subjects.rows("corporate_visitor_info", table) == {0: {"P"}, 2: {"L"}}
    keys = pa.table({"sdk_app_id": [" 1400000001", "14000000010"]})
    assert subjects.rows("customer_temporary_key", keys) == {0: {"A"}}

    def letter(raw: str) -> bytes:
        return json.dumps({"source": "x", "error": "e", "raw": raw}).encode()

    assert subjects.dead_letter_requests(letter('{"business_phone": "+1 (415) 555 2671"}')) == {"P"}
    assert subjects.dead_letter_requests(letter('{"note": "call +1 415 555 2671 now"}')) == {"P"}
    assert subjects.dead_letter_requests(letter("tel +1.415.555.2671 broken")) == {"P"}
    assert subjects.dead_letter_requests(letter("+1 415 555 26712")) == set()
    assert subjects.dead_letter_requests(
        letter('{"url": "https://LinkedIn.com/in/JANE-DOE/"}')
    ) == {"L"}
    assert subjects.dead_letter_requests(letter("see linkedin.com/in/jane-doe#top")) == {"L"}
    assert subjects.dead_letter_requests(letter("see linkedin.com/in/jane-doe-2")) == set()
    assert subjects.dead_letter_requests(letter('{"sdk_app_id": 1400000001, "x": 1')) == {"A"}
    assert subjects.dead_letter_requests(letter('{"sdk_app_id": " 1400000001"}')) == {"A"}
    assert subjects.dead_letter_requests(letter('{"room_id": "1400000001"}')) == set()


# ------------------------------------------------------------- the policy's lifecycle events


def test_the_policy_names_every_key_of_an_event_and_where_applications_are_found():
    events = POLICY.lifecycle_events
    assert events["marketing_opt_out"].keys == ("business_email", "business_phone", "linkedin_url")
    assert events["account_deleted"].keys == ("uin",)
    assert events["account_deleted"].cascades_to == ("service_terminated",)
    # the applications of an account: every stored category whose fields hold both keys
    linking = sorted(
        c.name
        for c in POLICY.categories.values()
        if c.stored and {"uin", "sdk_app_id"} <= set(c.fields)
    )
    assert {"console_configuration", "sdk_log", "sdk_appid"} <= set(linking)
    (cascade,) = cascades(POLICY)
    assert (cascade.event, cascade.then) == ("account_deleted", "service_terminated")
    assert cascade.links == tuple(
        (name, "uin", "sdk_app_id", "uin", "sdk_app_id") for name in linking
    )


def _policy_doc() -> dict:
    return yaml.safe_load(Path(default_policy_path()).read_text())


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            {"marketing_opt_out": {"key": "business_email", "ends": ["until_opt_out"]}},
            [
                "lifecycle_events.marketing_opt_out.key: replaced by keys, a list of the kinds "
                "it may name",
                "lifecycle_events.marketing_opt_out.keys: missing: list the subject kinds the "
                "event may name",
            ],
        ),
        (
            {"marketing_opt_out": {"keys": ["business_email", "uin"], "ends": ["until_opt_out"]}},
            [
                "lifecycle_events.marketing_opt_out.keys[1]: no stored category whose retention "
                "this event ends declares a field of 'uin' (subjects.fields)"
            ],
        ),
        (
            {"marketing_opt_out": {"keys": "business_email", "ends": ["until_opt_out"]}},
            ["lifecycle_events.marketing_opt_out.keys: must be a list of names, got str"],
        ),
        (
            {"account_deleted": {"keys": ["uin"], "ends": ["account_lifetime"],
                                 "cascades_to": ["account_closed"]}},
            ["lifecycle_events.account_deleted.cascades_to[0]: 'account_closed' is not a "
             "lifecycle event"],
        ),
        (
            {"account_deleted": {"keys": ["uin"], "ends": ["account_lifetime"],
                                 "cascades_to": ["account_deleted"]}},
            ["lifecycle_events.account_deleted.cascades_to[0]: an event cannot cascade to itself"],
        ),
        (
            {"marketing_opt_out": {"keys": ["business_email"], "ends": ["until_opt_out"],
                                   "cascades_to": ["service_terminated"]}},
            ["lifecycle_events.marketing_opt_out.cascades_to[0]: no stored category holds both a "
             "key of marketing_opt_out (business_email) and one of service_terminated "
             "(sdk_app_id)"],
        ),
        (
            {"service_terminated": {"keys": ["sdk_app_id"], "ends": ["service_lifetime"],
                                    "cascades_to": ["account_deleted"]}},
            ["lifecycle_events.account_deleted.cascades_to[0]: service_terminated cascades "
             "further; a cascade is one step"],
        ),
    ],
)  # fmt: skip
def test_lifecycle_events_are_validated_with_their_yaml_path(change, message):
    doc = _policy_doc()
    doc["lifecycle_events"].update(change)
    with pytest.raises(PolicyError) as failed:
        parse_policy(doc)
    for line in message:
        assert f"  {line}" in str(failed.value).splitlines(), str(failed.value)

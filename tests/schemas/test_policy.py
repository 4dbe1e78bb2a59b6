"""The policy file: every category of the seed, the retention schedule, and clear failures."""

from __future__ import annotations

import contextlib
import copy
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from schemas.policy import PolicyError, Retention, default_policy_path, load_policy, parse_policy

SEED_CATEGORIES = {
    "website_visit": ("fixed", 180),
    "corporate_visitor_info": ("fixed", 180),
    "account_information": ("account_lifetime", 30),
    "console_configuration": ("service_lifetime", 7),
    "backend_log": ("fixed", 14),
    "dashboard_information": ("fixed", 14),
    "sdk_log": ("fixed", 14),
    "uin": ("fixed", 14),
    "sdk_appid": ("fixed", 14),
    "troubleshooting_data": ("fixed", 14),
    "audio_video_content": ("never_store", None),
    "customer_temporary_key": ("service_lifetime", 7),
    "customer_application_log": ("service_lifetime", 7),
}
DAY_US = 86_400 * 1_000_000


@pytest.fixture(scope="module")
def doc():
    return yaml.safe_load(Path(default_policy_path()).read_text())


def test_every_seed_category_with_its_retention():
    policy = load_policy()
    assert set(policy.categories) == set(SEED_CATEGORIES)
    for name, (rule, days) in SEED_CATEGORIES.items():
        retention = policy.category(name).retention
        assert (retention.rule, retention.days) == (rule, days), name


def test_legal_bases_and_modules():
    policy = load_policy()
    assert policy.category("website_visit").legal_basis == "legitimate_interest"
    assert policy.category("corporate_visitor_info").legal_basis == "legitimate_interest"
    for name in ("sdk_log", "dashboard_information", "backend_log", "account_information"):
        assert policy.category(name).legal_basis == "contract"
    dpsa = {n for n, c in policy.categories.items() if c.module == "dpsa"}
    assert dpsa == {"audio_video_content", "customer_temporary_key", "customer_application_log"}
    assert not policy.category("audio_video_content").stored


def test_eea_uk_list_is_the_projects_own():
    policy = load_policy()
    eea = policy.regions["EEA_UK"].countries
    for code in (
        "DE",
        "FR",
        "IE",
        "IS",
        "LI",
        "NO",
        "GB",
        "GF",
        "GP",
        "MQ",
        "RE",
        "YT",
        "MF",
        "AX",
        "EU",
    ):
        assert code in eea
        assert policy.region_for(code) == "EEA_UK"
    for code in ("CH", "RS", "UA", "TR", "AD", "MC", "SM", "VA", "GI", "JE", "GG", "IM", "US"):
        assert code not in eea
        assert policy.region_for(code) == "OTHER"
    assert len(eea) == 27 + 7 + 3 + 1 + 1
    assert policy.region_for(None) == "UNKNOWN"
    for alias in ("UK", " uk ", "EL", "FX"):  # the aliases in real use: one decision, closed
        assert policy.region_for(alias) == "EEA_UK", alias
    for not_a_country in ("ZZ", "AP", "", "  ", "XX"):
        assert policy.region_for(not_a_country) == "UNKNOWN", not_a_country
    assert policy.is_restricted("UNKNOWN") and policy.is_restricted("EEA_UK")
    assert policy.is_restricted("NO_SUCH_REGION")  # fail closed
    assert not policy.is_restricted("OTHER")


def test_corporate_contact_restrictions_and_direct_marketing():
    cat = load_policy().category("corporate_visitor_info")
    contact = set(cat.field_groups["contact"])
    assert len(contact) == 9
    forbidden = cat.forbidden_fields_in_regions
    assert forbidden["EEA_UK"] == contact == forbidden["UNKNOWN"]
    assert forbidden.get("OTHER", frozenset()) == frozenset()
    with_email = {"business_email": "a@b.example", "country": "US"}
    purposes, retention = cat.effective("OTHER", with_email)
    assert "direct_marketing" in purposes and retention.rule == "until_opt_out"
    purposes, retention = cat.effective("OTHER", {**with_email, "country": "JP"})
    assert "direct_marketing" not in purposes and retention.rule == "fixed"
    for region in ("EEA_UK", "UNKNOWN"):
        purposes, retention = cat.effective(region, with_email)
        assert "direct_marketing" not in purposes and retention == Retention("fixed", 180)
    purposes, retention = cat.effective("OTHER", {"company_name": "ACME"})
    assert "direct_marketing" not in purposes and retention.rule == "fixed"


@pytest.mark.parametrize(
    "record",
    [
        {"end_user_age": 12},
        {"End_User_Age": 12},
        {"endUserAge": 12.5},
        {"user": {"end_user_age": 12}},
        {"users": [{"x": 1}, {"profile": {"END-USER-AGE": 9}}]},
        {"end_user_age": float("nan")},
        {"end_user_age": float("inf")},
        {"end_user_age": -1},
        {"end_user_age": "twelve"},
        {"end_user_age": True},
        {"end_user_age": 30, "user": {"end_user_age": 12}},  # any declared age below blocks
        {"end_user_age": 12, "parental_consent": "yes"},  # consent is true, nothing else
    ],
)
def test_the_minimum_age_cannot_be_bypassed(record):
    assert load_policy().minimum_age.blocks(record)


@pytest.mark.parametrize(
    "record",
    [
        {},
        {"end_user_age": 16},
        {"end_user_age": 12, "parental_consent": True},
        {"user": {"end_user_age": 12, "Parental_Consent": True}},
        {"end_user_age": None},
    ],
)
def test_the_minimum_age_lets_through_what_it_allows(record):
    assert not load_policy().minimum_age.blocks(record)


def test_secret_and_media_names_match_any_spelling():
    policy = load_policy()
    for name in (
        "password",
        "UserSig",
        "user_sig",
        "user-sig",
        "PRIVATE_KEY",
        "verificationCode",
        "auth_code",
        # names no list had: matched by meaning
        "login_credential",
        "x_api_key",
        "db_password",
        "Authorization",
        "cookie",
        "p\u0430ssword",  # a Cyrillic a
        "X-Auth-Token",
        "sessionKey",
        "oneTimeCode",
    ):
        assert policy.is_secret_name(name), name
    for name in ("audio", "video_content", "mediaPayload"):
        assert policy.is_media_name(name), name
    assert not policy.is_secret_name("url")


def test_fixed_retention_expiry_is_exact():
    assert Retention("fixed", 180).expires_at(0) == 180 * DAY_US
    assert Retention("account_lifetime", 30).expires_at(5) is None
    with pytest.raises(ValueError):
        Retention("never_store").expires_at(0)


def test_version_is_a_content_hash(doc):
    v1 = parse_policy(doc).version
    assert v1 == parse_policy(copy.deepcopy(doc)).version
    reordered = dict(reversed(list(doc.items())))
    assert parse_policy(reordered).version == v1
    changed = copy.deepcopy(doc)
    changed["categories"]["sdk_log"]["retention"]["days"] = 15
    assert parse_policy(changed).version != v1
    assert load_policy().version == v1  # comments and layout of the file do not matter


def _break(doc, path, value):
    broken = copy.deepcopy(doc)
    node = broken
    for key in path[:-1]:
        node = node[key]
    if value is KeyError:
        del node[path[-1]]
    else:
        node[path[-1]] = value
    return broken


@pytest.mark.parametrize(
    ("path", "value", "message"),
    [
        (("categories", "sdk_log", "retention", "days"), -3, "categories.sdk_log.retention.days"),
        (("categories", "sdk_log", "retention", "rule"), "forever", "must be one of"),
        (("categories", "sdk_log", "legal_basis"), "because", "categories.sdk_log.legal_basis"),
        (("categories", "sdk_log", "fields"), "event_id", "must be a list"),
        (("categories", "sdk_log", "event_time"), "nope", "not in the category fields"),
        (("categories", "sdk_log", "purposes"), [], "non-empty list of purposes"),
        (("categories", "sdk_log", "retension"), {"rule": "fixed"}, "unknown key"),
        (("regions", "UNKNOWN", "restricted"), False, "fail closed"),
        (("regions", "EEA_UK", "countries"), ["DE", False], "quote it"),
        (("regions", "OTHER"), KeyError, "region OTHER must be declared"),
        (("regions", "EEA_UK", "countries"), ["DE", "UK"], "UK is read as GB"),
        (("regions", "EEA_UK", "countries"), ["DE", "de"], "must be a 2-letter code"),
        (("regions", "OTHER", "restricted"), True, "regions.OTHER.restricted"),
        (("regions", "EEA_UK", "restricted"), False, "only OTHER is unrestricted"),
        (("never_in_clear", "secret_terms"), [], "must be a non-empty list of terms"),
        (("never_in_clear", "media_terms"), ["=", "video"], "every term must be words"),
        (("dead_letters", "retention"), {"rule": "until_opt_out"}, "fixed retention"),
        (("categories", "audio_video_content", "fields"), ["audio"], "never_store"),
    ],
)
def test_malformed_policy_fails_with_the_path(doc, path, value, message):
    with pytest.raises(PolicyError) as err:
        parse_policy(_break(doc, path, value), source="broken.yaml")
    assert message in str(err.value)
    assert "broken.yaml" in str(err.value)


def test_every_restricted_region_must_say_what_it_forbids(doc):
    """A restricted region that a category with regional restrictions does not mention would
    forbid nothing there: refused, so that declaring a region can never open a gap."""
    broken = _break(doc, ("regions", "CH_FADP"), {"restricted": True, "countries": ["CH"]})
    with pytest.raises(PolicyError, match="CH_FADP"):
        parse_policy(broken)


def test_every_problem_is_reported_at_once(doc):
    broken = _break(
        _break(doc, ("categories", "uin", "legal_basis"), 1),
        ("categories", "sdk_log", "retention", "days"),
        0,
    )
    with pytest.raises(PolicyError) as err:
        parse_policy(broken)
    assert "2 problem(s)" in str(err.value)


def test_unreadable_and_invalid_yaml(tmp_path):
    with pytest.raises(PolicyError, match="cannot read"):
        load_policy(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("categories: [unclosed\n")
    with pytest.raises(PolicyError, match="not valid YAML"):
        load_policy(bad)


def test_malformed_policy_stops_the_cli_at_startup(tmp_path, doc):
    bad = tmp_path / "policy.yaml"
    bad.write_text(
        yaml.safe_dump(
            _break(doc, ("categories", "website_visit", "retention", "days"), "half a year")
        )
    )
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pipelines.visits",
            "--input",
            str(tmp_path / "none.jsonl"),
            "--output",
            str(tmp_path / "out"),
            "--policy",
            str(bad),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode != 0
    assert "categories.website_visit.retention.days" in done.stderr
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "out").exists()


@settings(max_examples=150, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_any_mutation_loads_or_fails_with_policy_error(doc, data):
    """Property: whatever one value is replaced by, loading never fails another way."""
    mutated = copy.deepcopy(doc)
    node = mutated
    while True:
        keys = list(node) if isinstance(node, dict) else list(range(len(node)))
        if not keys:
            break
        key = data.draw(st.sampled_from(keys))
        if isinstance(node[key], dict | list) and data.draw(st.booleans()):
            node = node[key]
            continue
        node[key] = data.draw(
            st.one_of(
                st.none(),
                st.integers(),
                st.text(max_size=5),
                st.booleans(),
                st.lists(st.text(max_size=3), max_size=2),
                st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
            )
        )
        break
    with contextlib.suppress(PolicyError):
        parse_policy(mutated)


def test_lifecycle_events_end_open_ended_retention():
    policy = load_policy()
    affected = {
        name: sorted(c.name for c in policy.categories.values() if event.applies_to(c))
        for name, event in policy.lifecycle_events.items()
    }
    assert affected == {
        "account_deleted": ["account_information", "console_configuration"],
        "service_terminated": [
            "console_configuration",
            "customer_application_log",
            "customer_temporary_key",
        ],
        "marketing_opt_out": ["corporate_visitor_info"],
    }
    deleted = policy.lifecycle_events["account_deleted"]
    assert deleted.expires_at(Retention("account_lifetime", 30), 0) == 30 * DAY_US
    assert deleted.expires_at(Retention("service_lifetime", 7), 0) == 7 * DAY_US
    assert deleted.expires_at(Retention("fixed", 14), 0) is None
    opt_out = policy.lifecycle_events["marketing_opt_out"]
    assert opt_out.expires_at(Retention("until_opt_out"), 5) == 5


def test_sources_and_minimum_age_are_validated(doc):
    broken = _break(
        doc,
        ("sources", "sdk_logs", "routes"),
        [{"category": "sdk_log", "when_present": ["client_ip"]}],
    )
    with pytest.raises(PolicyError, match="last route must be unconditional"):
        parse_policy(broken)
    with pytest.raises(PolicyError, match="is never stored"):
        parse_policy(
            _break(doc, ("sources", "telemetry", "routes"), [{"category": "audio_video_content"}])
        )
    with pytest.raises(PolicyError, match=r"minimum_age\.age"):
        parse_policy(_break(doc, ("minimum_age", "age"), "sixteen"))
    with pytest.raises(PolicyError, match=r"never_in_clear\.secret_terms"):
        parse_policy(
            _break(
                doc,
                ("categories", "customer_temporary_key", "fingerprints"),
                {"private_key_fingerprint": "username_hash_source"},
            )
        )

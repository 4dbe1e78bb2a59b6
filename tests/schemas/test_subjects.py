"""The policy's ``subjects``: which fields identify whom, validated when the policy is loaded.

A subject field is declared, not coded: what the bundled policy declares, what it must declare
(every stored field its contract says holds an e-mail or an IP, or named after a kind), and
each mistake a declaration can make, refused at load with its YAML path.
"""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from schemas.avro import load_avsc
from schemas.policy import SUBJECT_KINDS, PolicyError, default_policy_path, load_policy
from transforms.retention.matching import COMPARISONS

POLICY = load_policy()


def _doc() -> dict:
    return copy.deepcopy(yaml.safe_load(Path(default_policy_path()).read_text()))


def _load(tmp_path: Path, doc: dict):
    path = tmp_path / "policy.yaml"
    path.write_text(yaml.safe_dump(doc))
    return load_policy(path)


def test_every_kind_compares_in_a_way_matching_knows():
    assert set(SUBJECT_KINDS.values()) <= set(COMPARISONS)
    assert list(SUBJECT_KINDS) == [
        "user_id", "uin", "sdk_app_id", "business_email", "business_phone", "linkedin_url", "ip",
    ]  # fmt: skip


def test_the_bundled_policy_declares_every_field_that_holds_an_email_or_an_ip():
    """What the contract says holds an address (``"format": "email"`` or ``"ip"``), or what is
    named after a kind, is a declared subject field: a request for it finds it."""
    for category in POLICY.categories.values():
        if not category.stored:
            assert not category.subject_fields
            continue
        for spec in load_avsc(category.name)["fields"]:
            expected = {"email": "business_email", "ip": "ip"}.get(spec.get("format"))
            if spec["name"] in SUBJECT_KINDS:
                expected = spec["name"]
            if expected:
                assert category.subject_fields.get(spec["name"]) == expected, (
                    category.name,
                    spec["name"],
                )
    account = POLICY.category("account_information")
    assert account.subject_columns("business_email") == ("business_email", "google_email")
    assert POLICY.category("backend_log").subject_columns("ip") == ("client_ip",)
    assert POLICY.subject_names("ip") == {"ip", "client_ip"}


def test_the_links_reach_a_visits_company_and_an_accounts_applications():
    links = {link.name: link for link in POLICY.subject_links}
    visit = links["visit_company"]
    assert (visit.sources, visit.by, visit.to, visit.kinds) == (
        ("website_visit",),
        "event_id",
        ("corporate_visitor_info",),
        (),
    )
    apps = links["account_applications"]
    assert apps.kinds == ("uin",) and apps.by == "sdk_app_id"
    assert apps.to == ("customer_temporary_key", "customer_application_log")
    # wherever a stored row ties a uin to an application
    assert set(apps.sources) == {
        c.name
        for c in POLICY.categories.values()
        if c.subject_columns("uin") and "sdk_app_id" in c.fields
    }
    assert {"console_configuration", "sdk_log", "sdk_appid"} <= set(apps.sources)
    assert apps.follows("uin") and not apps.follows("user_id") and visit.follows("user_id")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            lambda d: d["subjects"]["fields"]["sdk_log"].update(user_id="end_user"),
            "subjects.fields.sdk_log.user_id: 'end_user' is not a subject kind",
        ),
        (
            lambda d: d["subjects"]["fields"]["sdk_log"].update(contact_email="business_email"),
            "subjects.fields.sdk_log.contact_email: 'contact_email' is not in the category fields",
        ),
        (
            lambda d: d["subjects"]["fields"].update(webinar={"uin": "uin"}),
            "subjects.fields.webinar: unknown category 'webinar'",
        ),
        (
            lambda d: d["subjects"]["fields"].update(audio_video_content={}),
            "subjects.fields.audio_video_content: 'audio_video_content' is never stored",
        ),
        (
            lambda d: d["subjects"]["fields"]["sdk_log"].pop("uin"),
            "subjects.fields.sdk_log: 'uin' is named after a subject kind but not declared",
        ),
        (
            lambda d: d["subjects"].update(people={}),
            "subjects.people: unknown key",
        ),
        (
            lambda d: d["subjects"]["links"]["visit_company"].update(by="session"),
            "subjects.links.visit_company.to: 'corporate_visitor_info' has no field 'session'",
        ),
        (
            lambda d: d["subjects"]["links"]["account_applications"].update(to=["billing"]),
            "subjects.links.account_applications.to: 'billing' is not a stored category",
        ),
        (
            lambda d: d["subjects"]["links"]["account_applications"].update(subjects=["email"]),
            "subjects.links.account_applications.subjects: 'email' is not a subject kind",
        ),
        (
            lambda d: d["lifecycle_events"]["marketing_opt_out"].update(keys=["email"]),
            "lifecycle_events.marketing_opt_out.keys[0]: 'email' is not a subject kind",
        ),
    ],
)
def test_a_wrong_declaration_stops_the_policy_at_load(tmp_path, change, message):
    doc = _doc()
    change(doc)
    with pytest.raises(PolicyError) as failed:
        _load(tmp_path, doc)
    assert any(line.strip().startswith(message) for line in str(failed.value).splitlines()), str(
        failed.value
    )


def test_an_undeclared_field_ends_no_lifecycle_event(tmp_path):
    """Opt-out finds a visitor only through what is declared: without the declarations of
    corporate_visitor_info, the opt-out's keys are in no category it ends."""
    doc = _doc()
    del doc["subjects"]["fields"]["corporate_visitor_info"]
    with pytest.raises(PolicyError) as failed:
        _load(tmp_path, doc)
    text = str(failed.value)
    assert "subjects.fields.corporate_visitor_info: 'business_email' is named after" in text
    assert (
        "lifecycle_events.marketing_opt_out.keys[0]: no stored category whose retention this "
        "event ends declares a field of 'business_email' (subjects.fields)"
    ) in text


def test_a_new_categorys_field_of_another_name_is_found_as_its_kind(tmp_path):
    doc = _doc()
    doc["categories"]["webinar_contact"] = {
        "module": "privacy_policy",
        "description": "Webinar contacts.",
        "event_time": "registered_at",
        "fields": ["event_id", "registered_at", "contact_email"],
        "purposes": ["event_management"],
        "legal_basis": "consent",
        "retention": {"rule": "fixed", "days": 30},
        "store": "data_lake",
    }
    doc["subjects"]["fields"]["webinar_contact"] = {"contact_email": "business_email"}
    policy = _load(tmp_path, doc)
    assert policy.category("webinar_contact").subject_columns("business_email") == (
        "contact_email",
    )
    assert "contact_email" in policy.subject_names("business_email")

"""What the policy declares for the records of processing (data subjects, source, recipients,
what is processed but never stored), and how a malformed declaration is refused at load."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from schemas.policy import PolicyError, default_policy_path, load_policy, parse_policy


@pytest.fixture(scope="module")
def doc() -> dict:
    return yaml.safe_load(Path(default_policy_path()).read_text())


def test_every_category_says_whose_data_it_is_where_it_comes_from_and_who_receives_it():
    policy = load_policy()
    assert policy.records is not None
    for category in policy.categories.values():
        assert category.data_subjects, category.name
        assert category.data_source is not None and category.data_source.description
        assert category.recipients is not None, category.name
    visit = policy.category("website_visit")
    (recipient,) = visit.recipients
    assert (recipient.party, recipient.fields, recipient.returns) == (
        "arounddeal",
        ("ip",),
        "corporate_visitor_info",
    )
    assert visit.shared_with == ("arounddeal",)
    assert policy.records.parties["arounddeal"].name == "AroundDeal Holdings Limited"
    company = policy.category("corporate_visitor_info").data_source
    assert (company.origins, company.based_on) == (("arounddeal",), ("ip",))
    assert "google" in policy.category("account_information").data_source.origins
    assert policy.category("account_information").not_stored


def mutate(doc: dict, change) -> dict:
    changed = copy.deepcopy(doc)
    change(changed)
    return changed


def _set(path: str, value):
    def change(doc: dict) -> None:
        *parents, last = path.split(".")
        node = doc
        for key in parents:
            node = node[int(key)] if isinstance(node, list) else node[key]
        node[last] = value

    return change


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            _set("categories.uin.data_subjects", ["aliens"]),
            "categories.uin.data_subjects[0]: 'aliens' is not in records_of_processing",
        ),
        (
            _set("categories.uin.source", {"from": ["acme"], "description": "x"}),
            "categories.uin.source.from[0]: 'acme' is neither data_subject nor service nor a party",
        ),
        (
            _set("categories.uin.source", {"from": [], "description": ""}),
            "categories.uin.source.from: must not be empty",
        ),
        (
            _set("categories.uin.source", {"from": ["service"], "how": "x", "description": "x"}),
            "categories.uin.source.how: unknown key",
        ),
        (
            _set("categories.corporate_visitor_info.source.based_on", ["user_agent"]),
            "'user_agent' is not shared with arounddeal by any category",
        ),
        (
            _set("categories.uin.recipients", "nobody"),
            "categories.uin.recipients: must be a list of recipients",
        ),
        (
            _set(
                "categories.uin.recipients", [{"party": "acme", "fields": ["uin"], "purpose": "x"}]
            ),
            "categories.uin.recipients[0].party: 'acme' is not a party",
        ),
        (
            _set(
                "categories.uin.recipients",
                [{"party": "arounddeal", "fields": ["ip"], "purpose": "x"}],
            ),
            "categories.uin.recipients[0].fields: 'ip' is not in the category fields",
        ),
        (
            _set(
                "categories.uin.recipients",
                [{"party": "google", "fields": ["uin"], "purpose": "x", "returns": "sdk_log"}],
            ),
            "categories.uin.recipients[0].returns: sdk_log.source.from does not name 'google'",
        ),
        (
            _set("categories.uin.not_stored", ["favourite_colour"]),
            "'favourite_colour' is no secret or media name by never_in_clear",
        ),
        (
            _set("categories.uin.not_stored", ["uin"]),
            "categories.uin.not_stored[0]: 'uin' is in the category fields",
        ),
        (
            _set("records_of_processing.parties.service", {"name": "x", "role": "y"}),
            "records_of_processing.parties.service: must be a snake_case name other than",
        ),
        (
            _set("records_of_processing.sharing.annex", "x"),
            "records_of_processing.sharing.annex: not a module",
        ),
        (
            _set("records_of_processing.controller", ""),
            "records_of_processing.controller: must be a non-empty string",
        ),
    ],
)
def test_a_malformed_declaration_is_refused_with_its_path(doc, change, message):
    with pytest.raises(PolicyError) as err:
        parse_policy(mutate(doc, change))
    assert message in str(err.value)


def test_the_declarations_are_optional_for_the_pipelines(doc):
    """A policy without them still loads (the pipelines do not need them); the records of
    processing refuse it (tests/pipelines/test_ropa.py)."""
    bare = copy.deepcopy(doc)
    del bare["records_of_processing"]
    for category in bare["categories"].values():
        for key in ("data_subjects", "source", "recipients", "not_stored"):
            category.pop(key, None)
    policy = parse_policy(bare)
    assert policy.records is None
    assert all(c.recipients is None and c.data_source is None for c in policy.categories.values())

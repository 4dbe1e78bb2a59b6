"""End to end: ``python -m pipelines.ropa`` writes the records of processing from the policy alone.

The command runs as a user runs it (a child process) for what a user sees; the content checks
read the JSON record, whose every item must trace back to the policy file: change the policy,
and the record changes with it.
"""

from __future__ import annotations

import copy
import json
import subprocess
from pathlib import Path

import pytest
import yaml

from pipelines import ropa
from schemas.policy import load_policy
from tests.support.outputs import run_command

pytestmark = pytest.mark.e2e
REPO = Path(__file__).resolve().parents[2]
POLICY_FILE = REPO / "schemas/policy.yaml"


def python_m(*args: str) -> subprocess.CompletedProcess:
    return run_command("pipelines.ropa", *args, cwd=REPO)


@pytest.fixture(scope="module")
def record() -> dict:
    done = python_m("--format=json")
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    return json.loads(done.stdout)


def activity(record: dict, category: str) -> dict:
    (found,) = [a for a in record["activities"] if a["category"] == category]
    return found


def test_every_category_of_the_policy_has_its_record(record):
    policy = load_policy()
    assert [a["category"] for a in record["activities"]] == list(policy.categories)
    assert record["policy_version"] == policy.version
    for a in record["activities"]:
        category = policy.category(a["category"])
        assert a["legal_basis"] == category.legal_basis
        assert [p["name"] for p in a["purposes"]] == [p.name for p in category.purposes]
        assert a["fields"] == list(category.fields)
        assert a["data_subjects"] and all(s["description"] for s in a["data_subjects"])
        assert a["source"]["description"] and a["source"]["from"]
        assert a["store"] == category.store
        assert a["retention"]["rule"] == category.retention.label
        assert a["document"] in record["documents"].values()
        assert a["other_recipients"]


def test_arounddeal_receives_the_ip_and_never_eea_uk_contacts(record):
    visit = activity(record, "website_visit")
    (recipient,) = visit["recipients"]
    assert recipient["name"] == "AroundDeal Holdings Limited"
    assert recipient["fields"] == ["ip"] and recipient["returns"] == "corporate_visitor_info"
    words = recipient["in_words"]
    contact = load_policy().category("corporate_visitor_info").field_groups["contact"]
    assert "for records of EEA_UK or UNKNOWN" in words and "never requested" in words
    assert all(field in words for field in contact)
    assert "company_country is in a restricted region" in words
    company = activity(record, "corporate_visitor_info")
    assert company["source"]["from"] == ["AroundDeal Holdings Limited"]
    assert company["source"]["based_on"] == ["ip"]
    assert set(company["restrictions_by_region"]["forbidden_fields"]["EEA_UK"]) == set(contact)
    marketing = next(p for p in company["purposes"] if p["name"] == "direct_marketing")
    assert marketing["retention"] == "until_opt_out"
    assert "not for records of EEA_UK or UNKNOWN" in marketing["conditions"]
    assert "only for visitors in US" in marketing["conditions"]
    assert "marketing_opt_out" in company["retention"]["expiry_set_by"]


def test_retention_in_words_and_as_the_rule_rows_carry(record):
    visit = activity(record, "website_visit")["retention"]
    assert visit["in_words"] == "180 days from visited_at"
    assert visit["partition"].startswith("data_category=website_visit/expiry_date=")
    account = activity(record, "account_information")["retention"]
    assert account["rule"] == "account_lifetime_plus_30d"
    assert "within 30 days of its deletion" in account["in_words"]
    assert "account_deleted event (keyed by uin)" in account["expiry_set_by"]
    assert "expiry_date=9999-12-31/" in account["partition"]
    keys = activity(record, "customer_temporary_key")["retention"]["expiry_set_by"]
    assert "service_terminated" in keys and "account_deleted event, through" in keys
    assert record["dead_letters"]["retention"] == "fixed_14d"


def test_never_stored_and_the_minimum_age(record):
    av = activity(record, "audio_video_content")
    assert av["retention"]["rule"] == "never_store" and "partition" not in av["retention"]
    assert av["never_stored"] == ["everything: processed only to deliver it, never written"]
    assert av["minimum_age"] == "n/a: never stored"
    account = activity(record, "account_information")["never_stored"]
    for name in ("login_security_credentials", "verification_code", "google_authentication_code"):
        assert f"{name}: processed, never stored" in account
    key = activity(record, "customer_temporary_key")["never_stored"]
    assert any(line.startswith("private_key: only private_key_fingerprint") for line in key)
    assert "below 16" in activity(record, "sdk_log")["minimum_age"]
    assert "password" in record["never_in_clear"]["secret_terms"]


def test_docs_ropa_md_is_the_commands_markdown(tmp_path):
    """docs/ropa.md is generated and committed; if this fails, run
    ``python -m pipelines.ropa --out docs/ropa.md`` and commit the file."""
    out = tmp_path / "ropa.md"
    done = python_m(f"--out={out}")
    assert done.returncode == 0 and done.stdout == "", done.stderr
    assert (REPO / "docs/ropa.md").read_text() == out.read_text(), (
        "docs/ropa.md is stale: python -m pipelines.ropa --out docs/ropa.md"
    )
    again = python_m()  # deterministic: the same bytes on standard output
    assert again.stdout == out.read_text()
    text = out.read_text()
    assert f"version `{load_policy().version}`" in text
    for category in load_policy().categories:
        assert f"\n### {category}\n" in text


def test_the_record_follows_the_policy_it_is_given(tmp_path, record):
    doc = yaml.safe_load(POLICY_FILE.read_text())
    changed = copy.deepcopy(doc)
    changed["categories"]["sdk_log"]["retention"]["days"] = 7
    changed["records_of_processing"]["parties"]["arounddeal"]["name"] = "AroundDeal Ltd"
    policy = tmp_path / "policy.yaml"
    policy.write_text(yaml.safe_dump(changed))
    done = python_m(f"--policy={policy}", "--format=json")
    assert done.returncode == 0, done.stderr
    other = json.loads(done.stdout)
    assert other["policy_version"] != record["policy_version"]
    assert activity(other, "sdk_log")["retention"]["in_words"] == "7 days from logged_at"
    (recipient,) = activity(other, "website_visit")["recipients"]
    assert recipient["in_words"].startswith("AroundDeal Ltd: receives ip")


def test_a_policy_without_what_the_record_needs_is_refused_naming_each_piece(tmp_path):
    doc = yaml.safe_load(POLICY_FILE.read_text())
    del doc["categories"]["uin"]["data_subjects"]
    del doc["categories"]["sdk_log"]["source"]
    del doc["categories"]["sdk_log"]["recipients"]
    policy = tmp_path / "policy.yaml"
    policy.write_text(yaml.safe_dump(doc))
    load_policy(policy)  # the pipelines do not need them
    done = python_m(f"--policy={policy}")
    assert done.returncode == 1 and done.stdout == ""
    assert "incomplete for the records of processing (3 problem(s))" in done.stderr
    for path in (
        "categories.uin.data_subjects",
        "categories.sdk_log.source",
        "categories.sdk_log.recipients",
    ):
        assert path in done.stderr


def test_flags_are_strict_and_listed_in_help(capsys):
    help_ = python_m("--help")
    assert help_.returncode == 0
    for flag in ("--policy", "--format", "--out", "--log_level"):
        assert flag in help_.stdout
    bad = python_m("--formt=json")
    assert bad.returncode == 2 and "did you mean --format?" in bad.stderr
    assert python_m("--format=yaml").returncode == 2
    beam = python_m("--runner=DirectRunner")
    assert beam.returncode == 2 and "unknown flag --runner" in beam.stderr
    with pytest.raises(SystemExit, match=r"^error: .*cannot read the policy file"):
        ropa.main(["--policy=/nonexistent/policy.yaml"])

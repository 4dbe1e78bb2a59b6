"""The enrichment provider seam, used from outside the package: a temporary module declares a
third source (a JSON directory of companies by IP) with its own flags, registers it, and the
visits pipeline runs with it, its flags on the command line, its answers joined under the same
policy as AroundDeal's."""

from __future__ import annotations

import importlib
import json
import sys
import textwrap
from pathlib import Path

import pytest

from pipelines import visits
from pipelines.options import flags_of
from schemas.policy import load_policy
from tests.support.outputs import RUN_TIME, read_rows
from transforms.enrichment import (
    EnrichmentHandler,
    EnrichmentProvider,
    build_handler,
    register,
    unregister,
)

POLICY = load_policy()

# A provider as a data engineer would write it: no base class, nothing of this project but
# ``register``. Its handler answers mappings of fields (or None: failed), as a handler written
# without LookupResult does.
PROVIDER = """
import json

from transforms.enrichment import register


class DirectoryHandler:
    def __init__(self, path, batch_size, company_fields):
        self.path, self.batch_size, self.company_fields = path, batch_size, company_fields
        self._companies = None

    def max_call_seconds(self):
        return 10.0

    def __enter__(self):
        with open(self.path) as fh:
            self._companies = json.load(fh)
        return self

    def __exit__(self, *exc):
        self._companies = None

    def lookup(self, requests):
        assert len(requests) <= self.batch_size
        answers = []
        for request in requests:
            company = self._companies.get(request["ip"] or "", {})
            answers.append({k: v for k, v in company.items() if k in self.company_fields})
        return answers


class DirectoryProvider:
    name = "directory"
    flag = "enrichment_directory"

    def add_flags(self, parser):
        parser.add_argument(
            "--enrichment_directory", default=None, help="JSON file of companies by IP address."
        )
        parser.add_argument(
            "--enrichment_directory_batch", type=int, default=2, help="IPs per directory call."
        )

    def build(self, options, fields):
        return DirectoryHandler(
            options.enrichment_directory,
            options.enrichment_directory_batch,
            fields.company_fields + fields.contact_fields,
        )


PROVIDER = register(DirectoryProvider())
"""

VISITORS = {
    "us": "8.8.8.8",
    "us6": "2001:4860:4860::8888",
    "gb": "81.2.69.160",
    "de": "193.99.144.80",
}
COMPANIES = {
    "8.8.8.8": {"company_name": "Directory Co", "company_country": "US", "job_title": "CTO"},
    "81.2.69.160": {"company_name": "Directory UK", "company_country": "GB", "job_title": "CEO"},
    "193.99.144.80": {"company_name": "Directory DE", "company_country": "DE"},
    "10.0.0.1": {"secret_score": "99"},  # undeclared: never joined
}


@pytest.fixture
def provider(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """The temporary module, imported (which registers its provider) and removed after."""
    (tmp_path / "directory_provider.py").write_text(textwrap.dedent(PROVIDER))
    monkeypatch.syspath_prepend(str(tmp_path))
    module = importlib.import_module("directory_provider")
    yield module.PROVIDER
    unregister(module.PROVIDER.name)
    sys.modules.pop("directory_provider", None)


def inputs(tmp_path: Path) -> tuple[Path, Path]:
    lines = [
        json.dumps(
            {
                "event_id": event_id,
                "ip": ip,
                "visited_at": "2026-11-28T10:00:00Z",
                "url": "https://trtc.example.com/pricing",
                "user_agent": "test",
                "session_id": f"s-{event_id}",
            }
        )
        for event_id, ip in VISITORS.items()
    ]
    (tmp_path / "visits.jsonl").write_text("\n".join(lines) + "\n")
    (tmp_path / "companies.json").write_text(json.dumps(COMPANIES))
    return tmp_path / "visits.jsonl", tmp_path / "companies.json"


def test_a_third_provider_runs_the_visits_pipeline(tmp_path: Path, provider) -> None:
    assert isinstance(provider, EnrichmentProvider)
    flags = flags_of([visits.VisitsOptions])
    assert {"--enrichment_directory", "--enrichment_directory_batch"} <= set(flags)
    assert "--enrichment_snapshot" in flags  # the built-in ones stay

    data, companies = inputs(tmp_path)
    report = visits.run(
        [
            f"--input={data}",
            f"--output={tmp_path / 'out'}",
            f"--enrichment_directory={companies}",
            "--enrichment_directory_batch=3",
            "--runner=FnApiRunner",
            f"--run_time={RUN_TIME}",
        ]
    )
    rows = {
        r["event_id"]: r
        for r in read_rows(tmp_path / "out")["parquet"]
        if r["data_category"] == "corporate_visitor_info"
    }
    # The US visitor of a US company keeps the contact field; the UK visitor and the German
    # company keep company data only (the policy holds whatever the source).
    assert rows["us"]["company_name"] == "Directory Co" and rows["us"]["job_title"] == "CTO"
    assert rows["gb"]["company_name"] == "Directory UK" and rows["gb"]["job_title"] is None
    assert rows["de"]["company_name"] == "Directory DE"
    assert "us6" not in rows  # nothing found: no corporate row
    enrichment = report["enrichment"]
    assert (enrichment["matched"], enrichment["no_match"]) == (3, 1)
    assert enrichment["company_country_restricted"] == 2


def test_its_handler_is_an_enrichment_handler(tmp_path: Path, provider) -> None:
    class Options:
        enrichment_directory = str(inputs(tmp_path)[1])
        enrichment_directory_batch = 2

    handler = build_handler(
        Options(), company_fields=("company_name",), contact_fields=("job_title",), policy=POLICY
    )
    assert isinstance(handler, EnrichmentHandler)


def test_two_sources_at_once_are_refused(tmp_path: Path, provider) -> None:
    data, companies = inputs(tmp_path)
    with pytest.raises(ValueError, match="one source"):
        visits.run(
            [
                f"--input={data}",
                f"--output={tmp_path / 'out'}",
                f"--enrichment_directory={companies}",
                "--enrichment_url=https://api.test/v1/lookup",
                "--runner=FnApiRunner",
                f"--run_time={RUN_TIME}",
            ]
        )


def test_a_provider_is_registered_once(provider) -> None:
    with pytest.raises(ValueError, match="already registered"):
        register(provider)

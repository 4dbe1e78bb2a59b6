"""What the end-to-end tests of the retention jobs feed the pipelines: JSON Lines files of
records (or raw lines, for the malformed ones), and visitors kept for direct marketing whose
only contact is a phone number or a LinkedIn URL (erase, access and lifecycle must find them
by those alone); and what a job does when its input matches nothing."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest

from pipelines import visits

# A snapshot whose one company network (US, Acme) has no contact: a visitor's contact is what
# its visit carries.
SNAPSHOT = (
    "network,company_name,company_domain,company_industry,company_country,company_size,"
    "contact_name,business_email,business_phone,business_location,business_function,"
    "seniority_level,job_title,linkedin_url,business_skills\n"
    "192.195.32.0/24,Acme,acme.example,software,US,51-200,,,,,,,,,\n"
)


# Visitors kept for direct marketing (US visitor, US company) whose only contact is a phone
# number or a LinkedIn URL, as AroundDeal or the page spelt them (event id -> contact); the
# "other" ones are someone else.
CONTACTS = {
    "p-phone": {"business_phone": "+1 (415) 555-2671"},
    "p-linkedin": {"linkedin_url": "https://www.linkedin.com/in/Jane-Doe/?trk=public_profile"},
    "p-other-phone": {"business_phone": "+1 415 555 2672"},
    "p-other-linkedin": {"linkedin_url": "https://uk.linkedin.com/in/jane-doe-2"},
}


def write_jsonl(path: Path, records: Sequence[Any]) -> Path:
    """One record a line, as JSON; a string is written as it is (a malformed line)."""
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records))
    return path


def ingest_contact_visits(tmp: Path, out: Path, *flags: str) -> None:
    """One visit of each of :data:`CONTACTS` from the Acme network, ingested into ``out`` by
    the visits pipeline (with ``flags``) with :data:`SNAPSHOT`; its files are written in
    ``tmp``."""
    visitors = [
        {"event_id": eid, "ip": f"192.195.32.{i + 10}", "visited_at": "2026-11-20T10:00:00Z",
         **contact}
        for i, (eid, contact) in enumerate(CONTACTS.items())
    ]  # fmt: skip
    (tmp / "snapshot.csv").write_text(SNAPSHOT)
    visits.run(
        [
            f"--input={write_jsonl(tmp / 'contacts.jsonl', visitors)}",
            f"--enrichment_snapshot={tmp / 'snapshot.csv'}",
            f"--output={out}",
            *flags,
        ]
    )


def assert_input_flag_checked(
    main: Callable[[list[str]], None], flag: str, missing: Path, *args: str
) -> None:
    """A job's ``main`` with ``args`` stops with its one-line error, before it reads or touches
    anything, when its input ``flag`` names the file pattern ``missing`` that matches nothing,
    or is not given."""
    with pytest.raises(SystemExit, match=f"{flag}: no file matches"):
        main([f"{flag}={missing}", *args])
    with pytest.raises(SystemExit, match=f"{flag} is required"):
        main(list(args))

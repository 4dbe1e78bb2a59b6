"""The small world the visits tests run in: a country database and an AroundDeal snapshot.

Every region case is pinned: EEA (DE, FR), EEA-not-EU (IS), an outermost region (GF), the UK,
Switzerland and other non-EEA countries (CH, RS, US, JP), a network without a country; the
snapshot has companies inside and outside the EEA, nested networks (a DE company's /24 inside a
US company's /16) and IPv6. Used by the end-to-end tests and the engine tests alike.
"""

from __future__ import annotations

import csv
from pathlib import Path

from schemas.policy import load_policy
from tests.support.mmdb import build_country_mmdb

__all__ = ["NETWORKS", "SNAPSHOT", "write_country_db", "write_snapshot"]

NETWORKS = {
    "2.16.0.0/16": "DE",
    "2.17.0.0/16": "IS",
    "2.18.0.0/16": "GF",
    "2.19.0.0/16": "GB",
    "2.20.0.0/16": "CH",
    "2.21.0.0/16": "RS",
    "2.22.0.0/16": "US",
    "2.23.0.0/16": None,
    "2a01:4f8:1::/48": "FR",
    "2400:cb00:2::/48": "JP",
}
# network, company_country: snapshot row i is "Company i", contacts "snap-<field>-i"
SNAPSHOT = (
    ("2.16.0.0/16", "DE"),
    ("2.20.0.0/16", "CH"),
    ("2.22.0.0/16", "US"),
    ("2.22.5.0/24", "DE"),
    ("2400:cb00:2::/48", "JP"),
    ("2.23.0.0/16", "US"),
)


def write_country_db(path: Path) -> Path:
    return build_country_mmdb(path, NETWORKS)


def write_snapshot(path: Path) -> Path:
    corporate = load_policy().category("corporate_visitor_info")
    company, contact = corporate.field_groups["company"], corporate.field_groups["contact"]
    assert company == (
        "company_name",
        "company_domain",
        "company_industry",
        "company_country",
        "company_size",
    )
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["network", *company, *contact])
        for i, (network, country) in enumerate(SNAPSHOT):
            writer.writerow(
                [
                    network,
                    f"Company {i}",
                    f"c{i}.example",
                    "software",
                    country,
                    "51-200",
                    *(f"snap-{c}-{i}" for c in contact),
                ]
            )
    return path

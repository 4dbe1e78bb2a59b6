"""Build tiny MaxMind DB files for tests, with mmdb-writer.

Why: tests should exercise the real geoip2 reader on real ``.mmdb`` files, not a mock. These
helpers write small databases whose records have the shapes of MaxMind's products, so a test can
say exactly which network maps to which country:

    from tests.support.mmdb import build_country_mmdb
    db = build_country_mmdb(tmp_path / "c.mmdb", {"203.0.113.0/24": "DE", "2001:db8::/32": None})

``networks`` maps a CIDR (IPv4 or IPv6) to an ISO 3166-1 alpha-2 code, or to ``None`` for a
network that *is* in the database but has no ``country`` (like MaxMind's anycast/satellite
records, which carry only ``traits`` or ``registered_country``). Networks must not overlap.

All databases are IPv6 trees with IPv4 under ``::/96`` (the layout MaxMind ships and readers
expect); IPv4-mapped addresses (``::ffff:a.b.c.d``) are *not* aliased here, unlike MaxMind's
files, so a test can tell whether the caller unwraps them. The files are deterministic
(fixed ``build_epoch``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from mmdb_writer import MMDBWriter
from netaddr import IPNetwork, IPSet

BUILD_EPOCH = 1_700_000_000  # fixed, so the files are reproducible

RecordFn = Callable[[str | None], dict[str, Any]]


class _Writer(MMDBWriter):
    def _build_meta(self) -> dict[str, Any]:
        return {**super()._build_meta(), "build_epoch": BUILD_EPOCH}


def _names(name: str) -> dict[str, str]:
    return {"en": name}


def country_record(iso_code: str | None) -> dict[str, Any]:
    """A GeoIP2-Country record (continent omitted: the tests do not need the mapping)."""
    if iso_code is None:
        return {"traits": {"is_anycast": True}}
    return {
        "country": {"iso_code": iso_code, "names": _names(f"Country {iso_code}")},
        "registered_country": {"iso_code": iso_code, "names": _names(f"Country {iso_code}")},
    }


def city_record(iso_code: str | None) -> dict[str, Any]:
    """A GeoIP2-City record: country + city, location, postal, subdivisions."""
    if iso_code is None:
        # Like MaxMind's records with a location but no country (e.g. 2a02:d500::/29).
        return {"location": {"accuracy_radius": 1000, "latitude": 0.0, "longitude": 0.0}}
    return {
        **country_record(iso_code),
        "city": {"geoname_id": 1, "names": _names(f"City in {iso_code}")},
        "location": {
            "accuracy_radius": 100,
            "latitude": 50.0,
            "longitude": 8.0,
            "time_zone": "Etc/UTC",
        },
        "postal": {"code": "00000"},
        "subdivisions": [{"iso_code": "XX", "names": _names(f"Subdivision of {iso_code}")}],
    }


def enterprise_record(iso_code: str | None) -> dict[str, Any]:
    """A GeoIP2-Enterprise record: City shape + confidences and ISP/organisation traits."""
    traits = {
        "autonomous_system_number": 64496,
        "autonomous_system_organization": "Test AS",
        "connection_type": "Corporate",
        "isp": "Test ISP",
        "organization": "Test Org",
        "user_type": "business",
    }
    if iso_code is None:
        # Like MaxMind's 5.83.124.0/22: only the registered country is known.
        return {"registered_country": {"iso_code": "RO"}, "traits": traits}
    record = city_record(iso_code)
    record["country"] = {**record["country"], "confidence": 99}
    record["city"] = {**record["city"], "confidence": 50}
    record["traits"] = traits
    return record


def build_mmdb(
    path: str | Path,
    records: Mapping[str, Mapping[str, Any]],
    database_type: str,
) -> Path:
    """Write ``records`` (CIDR -> record) to ``path`` as an IPv6 MaxMind DB; returns the path."""
    writer = _Writer(
        ip_version=6,
        ipv4_compatible=True,
        database_type=database_type,
        languages=["en"],
        description={"en": f"test database ({database_type})"},
    )
    for cidr in sorted(records, key=lambda c: (IPNetwork(c).version, IPNetwork(c))):
        writer.insert_network(IPSet([IPNetwork(cidr)]), dict(records[cidr]))
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    writer.to_db_file(str(out))
    return out


def _build(
    path: str | Path, networks: Mapping[str, str | None], db_type: str, fn: RecordFn
) -> Path:
    return build_mmdb(path, {cidr: fn(cc) for cidr, cc in networks.items()}, db_type)


def build_country_mmdb(
    path: str | Path,
    networks: Mapping[str, str | None],
    database_type: str = "GeoIP2-Country",
) -> Path:
    """A Country database (``Reader.country()``); ``database_type`` may be e.g. GeoLite2-Country."""
    return _build(path, networks, database_type, country_record)


def build_city_mmdb(
    path: str | Path,
    networks: Mapping[str, str | None],
    database_type: str = "GeoIP2-City",
) -> Path:
    """A City database (``Reader.city()``; ``country()`` refuses it)."""
    return _build(path, networks, database_type, city_record)


def build_enterprise_mmdb(
    path: str | Path,
    networks: Mapping[str, str | None],
    database_type: str = "GeoIP2-Enterprise",
) -> Path:
    """An Enterprise database (``Reader.enterprise()``)."""
    return _build(path, networks, database_type, enterprise_record)

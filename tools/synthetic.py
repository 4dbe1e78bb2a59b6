"""Deterministic synthetic visits and AroundDeal snapshots, for the bundled sample and benchmarks.

Addresses are drawn from the networks the country database really assigns to each country, so
that the generated visits exercise every region (EEA, EEA-not-EU, outermost regions, UK,
Switzerland and other near-Europe non-EEA countries, the rest of the world, private/unknown).
The same seed always gives the same bytes.

By default a visit's address is drawn, with replacement, from a population of
``VisitMix.distinct_ips`` addresses (the bundled sample's shape). ``VisitMix.exact_distinct``
makes the population's addresses pairwise distinct (an IPv4-mapped spelling is the address it maps)
and visits every one of them, so the visits have exactly that many distinct addresses, up to one
per visit; ``VisitMix.bad_share`` turns that share of the visits into lines the data contract
rejects. Both are off by default, so the bundled sample's bytes do not depend on them.
"""

from __future__ import annotations

import csv
import io
import ipaddress
import json
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone

import maxminddb

from schemas.policy import load_policy

__all__ = ["AddressPool", "VisitMix", "canonical", "snapshot_csv", "visit_lines"]

# Country weights of the visitor population (the rest of the world dominates, as for a global
# product; every region of the policy is represented).
COUNTRY_WEIGHTS = {
    "US": 20,
    "CN": 10,
    "IN": 8,
    "JP": 5,
    "BR": 4,
    "SG": 3,
    "CA": 3,
    "AU": 2,
    "DE": 6,
    "FR": 4,
    "IT": 2,
    "ES": 2,
    "NL": 2,
    "PL": 1,
    "IE": 1,
    "SE": 1,
    "GB": 5,
    "NO": 1,
    "IS": 0.3,
    "LI": 0.2,
    "RE": 0.2,
    "GF": 0.1,
    "GP": 0.1,
    "AX": 0.1,
    "CH": 2,
    "RS": 0.5,
    "UA": 1,
    "TR": 1,
    "RU": 1,
    "JE": 0.1,
    "IM": 0.1,
    "AD": 0.1,
    "MC": 0.1,
}
_CORPORATE = load_policy().category("corporate_visitor_info")
COMPANY_FIELDS = _CORPORATE.field_groups["company"]
CONTACT_FIELDS = _CORPORATE.field_groups["contact"]
INDUSTRIES = ("software", "media", "education", "finance", "retail", "gaming", "health")
PATHS = ("/", "/pricing", "/docs/trtc/quickstart", "/product/trtc", "/contact", "/blog/latency")
AGENTS = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 Chrome/126.0 Safari/537.36",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_5) AppleWebKit/605.1.15 Version/17.5 Safari/605",
    "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0",
)
PRIVATE = ("10.1.2.3", "192.168.0.7", "172.16.5.4", "127.0.0.1", "fd00::1", "fe80::1")
# The ranges PRIVATE's addresses come from, for populations of pairwise distinct addresses.
PRIVATE_NETWORKS = tuple(
    ipaddress.ip_network(n)
    for n in (
        "10.0.0.0/8",
        "192.168.0.0/16",
        "172.16.0.0/12",
        "127.0.0.0/8",
        "fd00::/8",
        "fe80::/10",
    )
)


class AddressPool:
    """Networks per country read from an mmdb, to draw addresses of a known country from."""

    def __init__(self, mmdb_path: str, countries: Sequence[str]) -> None:
        wanted = set(countries)
        self.v4: dict[str, list[ipaddress.IPv4Network]] = {c: [] for c in wanted}
        self.v6: dict[str, list[ipaddress.IPv6Network]] = {c: [] for c in wanted}
        mapped = ipaddress.ip_network("::ffff:0:0/96")
        v4_in_v6 = ipaddress.ip_network("::/96")
        with maxminddb.open_database(mmdb_path) as reader:
            for network, record in reader:
                code = (record or {}).get("country", {}).get("iso_code")
                if code not in wanted:
                    continue
                if network.version == 4:
                    self.v4[code].append(network)
                elif not (network.subnet_of(mapped) or network.subnet_of(v4_in_v6)):
                    self.v6[code].append(network)

    def address(self, rng: random.Random, country: str, version: int) -> str:
        networks = (self.v6 if version == 6 else self.v4).get(country) or self.v4[country]
        network = rng.choice(networks)
        offset = rng.randrange(min(network.num_addresses, 1 << 32))
        return str(network.network_address + offset)


def _private_address(rng: random.Random) -> str:
    network = rng.choice(PRIVATE_NETWORKS)
    return str(network.network_address + rng.randrange(min(network.num_addresses, 1 << 32)))


def canonical(address: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """The address ``address`` spells (an IPv4-mapped IPv6 spelling is the IPv4 address)."""
    ip = ipaddress.ip_address(address)
    return getattr(ip, "ipv4_mapped", None) or ip


@dataclass(frozen=True)
class VisitMix:
    """Shape of the generated visits (defaults: the benchmark's realistic mix)."""

    distinct_ips: int = 100_000
    ipv6_share: float = 0.05
    contact_share: float = 0.30
    private_share: float = 0.01
    mapped_share: float = 0.005  # IPv4-mapped IPv6 spellings of IPv4 visitors
    # True: the population's addresses are pairwise distinct and each is visited at least once
    # (exactly distinct_ips distinct addresses, at most one per visit); private ones are drawn
    # from the private ranges. False: a population drawn with replacement, as the sample's.
    exact_distinct: bool = False
    bad_share: float = 0.0  # visits written as lines the contract rejects (BAD_VISITS)


def _timestamp(rng: random.Random, base: datetime) -> object:
    moment = base + timedelta(seconds=rng.randrange(30 * 86400))
    form = rng.randrange(4)
    if form == 0:
        return moment.strftime("%Y-%m-%dT%H:%M:%SZ")
    if form == 1:
        tz = timezone(timedelta(hours=rng.choice((8, -5, 1, 5.5, -3))))
        return moment.astimezone(tz).isoformat()
    if form == 2:
        return moment.strftime("%Y-%m-%dT%H:%M:%S.%f")  # naive = UTC
    return int(moment.timestamp() * 1000)


def ip_population(pool: AddressPool, mix: VisitMix, rng: random.Random) -> list[tuple[str, str]]:
    """``mix.distinct_ips`` (address, country) pairs; private ones have country ``""``.

    With ``mix.exact_distinct`` no two pairs spell the same address (a draw that repeats one is
    drawn again).
    """
    # a country the database assigns no network to (possible for tiny ones) is left out
    usable = {c: w for c, w in COUNTRY_WEIGHTS.items() if pool.v4.get(c)}
    countries = list(usable)
    weights = list(usable.values())
    out = []
    seen: set[ipaddress.IPv4Address | ipaddress.IPv6Address] = set()
    attempts = 0
    while len(out) < mix.distinct_ips:
        attempts += 1
        if mix.exact_distinct and attempts > 10 * mix.distinct_ips + 1000:
            raise ValueError(f"cannot draw {mix.distinct_ips:,} distinct addresses")
        roll = rng.random()
        if roll < mix.private_share:
            if not mix.exact_distinct:
                out.append((rng.choice(PRIVATE), ""))
                continue
            address, country = _private_address(rng), ""
        else:
            country = rng.choices(countries, weights)[0]
            version = 6 if roll < mix.private_share + mix.ipv6_share else 4
            address = pool.address(rng, country, version)
            if version == 4 and rng.random() < mix.mapped_share:
                address = f"::ffff:{address}"
        if mix.exact_distinct:
            key = canonical(address)
            if key in seen:
                continue
            seen.add(key)
        out.append((address, country))
    return out


# Lines the visits contract rejects, as producers send them: a field missing, an address that is
# none, an event time before the pipelines' minimum or far past the run (a device clock at 0 or
# years ahead). Every one is a JSON object of the contract's types, which any JSON reader takes.
BAD_VISITS = ("no_ip", "bad_ip", "no_event_id", "epoch_zero", "future_time")


def _spoil(visit: dict[str, object], rng: random.Random) -> None:
    kind = rng.choice(BAD_VISITS)
    if kind == "no_ip":
        del visit["ip"]
    elif kind == "bad_ip":
        visit["ip"] = rng.choice(("999.{}.{}.1", "10.{}.{}", "{}.{}.x.1", "unknown-{}{}")).format(
            rng.randrange(256), rng.randrange(256)
        )
    elif kind == "no_event_id":
        del visit["event_id"]
    elif kind == "epoch_zero":
        visit["visited_at"] = rng.choice((0, "1970-01-01T00:00:00Z"))
    else:
        visit["visited_at"] = f"{rng.randrange(2030, 2100)}-01-01T00:00:00Z"


def visit_lines(
    count: int, population: Sequence[tuple[str, str]], mix: VisitMix, seed: int
) -> Iterator[str]:
    """``count`` JSON Lines visits over the given address population.

    With ``mix.exact_distinct`` every address of the population is visited (it must not hold
    more than ``count``): a visit takes the next unvisited address with probability unvisited /
    visits left, else one already visited, so new visitors keep arriving over the whole file.
    """
    rng = random.Random(seed)
    base = datetime(2026, 10, 1, tzinfo=UTC)
    if mix.exact_distinct and len(population) > count:
        raise ValueError(f"{len(population):,} distinct addresses cannot fit {count:,} visits")
    visited = 0
    for i in range(count):
        if not mix.exact_distinct:
            address, _country = population[rng.randrange(len(population))]
        elif visited == 0 or rng.randrange(count - i) < len(population) - visited:
            address, _country = population[visited]
            visited += 1
        else:
            address, _country = population[rng.randrange(visited)]
        visit = {
            "event_id": f"v-{seed}-{i:08d}",
            "ip": address,
            "visited_at": _timestamp(rng, base),
            "url": "https://trtc.example.com" + rng.choice(PATHS),
            "user_agent": rng.choice(AGENTS),
            "session_id": f"s-{rng.randrange(1 << 40):010x}",
        }
        if rng.random() < mix.contact_share:
            n = rng.randrange(1 << 20)
            visit.update(
                contact_name=f"Visitor {n}",
                business_email=f"visitor{n}@corp{n % 997}.example",
                job_title=rng.choice(("CTO", "Engineer", "Product Manager")),
                linkedin_url=f"https://linkedin.example/in/visitor{n}",
            )
        if mix.bad_share and rng.random() < mix.bad_share:
            _spoil(visit, rng)
        yield json.dumps(visit, separators=(",", ":"))


def snapshot_csv(
    population: Sequence[tuple[str, str]],
    networks: int,
    seed: int,
    *,
    restricted_share: float = 0.2,
    always: Sequence[tuple[str, str]] = (),
) -> str:
    """An AroundDeal snapshot covering ``networks`` of the population's addresses.

    IPv4 addresses get their /24 (every tenth also a covering /16 of another company, so that
    longest-prefix matching matters), IPv6 their /48. About ``restricted_share`` of the companies
    are based in an EEA/UK country whatever the visitor's country. ``always`` are covered first.
    """
    rng = random.Random(seed)
    out = io.StringIO()
    header = ["network", *COMPANY_FIELDS, *CONTACT_FIELDS]
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(header)
    seen: set[str] = set()
    public = [(a, c) for a, c in population if c]
    picks = iter(always)
    while len(seen) < networks and len(seen) < len(public):
        address, country = next(picks, None) or public[rng.randrange(len(public))]
        ip = ipaddress.ip_address(address)
        ip = getattr(ip, "ipv4_mapped", None) or ip
        prefixes = (
            [24, 16] if ip.version == 4 and rng.random() < 0.1 else [24 if ip.version == 4 else 48]
        )
        for prefix in prefixes:
            network = str(ipaddress.ip_network(f"{ip}/{prefix}", strict=False))
            if network in seen:
                continue
            seen.add(network)
            n = len(seen)
            company_country = (
                rng.choice(("DE", "FR", "GB", "NL")) if rng.random() < restricted_share else country
            )
            writer.writerow(
                [
                    network,
                    f"Company {n}",
                    f"company{n}.example",
                    rng.choice(INDUSTRIES),
                    company_country,
                    rng.choice(("1-10", "11-50", "51-200", "201-1000", "1000+")),
                    f"Contact {n}",
                    f"contact{n}@company{n}.example",
                    f"+1-555-{n % 10000:04d}",
                    f"City {n % 50}",
                    "Engineering",
                    "Director",
                    "Head of Platform",
                    f"https://linkedin.example/in/contact{n}",
                    "webrtc;video",
                ]
            )
    return out.getvalue()


OS_TYPES = ("Android", "iOS", "Windows", "macOS", "Web")
LEVELS = ("INFO", "INFO", "INFO", "WARN", "ERROR")
MESSAGES = (
    "enterRoom ok",
    "audio route changed",
    "network quality degraded",
    "exitRoom ok",
    "video encoder restarted",
)
EVENT_TYPES = (
    "enter_room",
    "leave_room",
    "enable_video",
    "disable_video",
    "enable_audio",
    "disable_audio",
    "mute",
    "unmute",
    "quality",
    "quality",
    "quality",
)


def _identifiers(rng: random.Random) -> dict[str, object]:
    """SDK identifiers, as producers send them: numbers or strings, either way."""
    app = 1_400_000_000 + rng.randrange(500)
    uin = 100_000_000 + rng.randrange(10_000)
    return {
        "sdk_app_id": app if rng.random() < 0.7 else str(app),
        "uin": uin if rng.random() < 0.5 else str(uin),
        "user_id": f"user_{rng.randrange(50_000)}" if rng.random() < 0.8 else rng.randrange(10**6),
        "room_id": rng.randrange(10**6) if rng.random() < 0.6 else f"room-{rng.randrange(10**6)}",
    }


def sdk_log_lines(count: int, seed: int, *, backend_share: float = 0.2) -> Iterator[str]:
    """``count`` JSON Lines SDK logs; ``backend_share`` of them carry a client IP (backend logs)."""
    rng = random.Random(seed)
    base = datetime(2026, 11, 20, tzinfo=UTC)
    for i in range(count):
        log = {
            "event_id": f"l-{seed}-{i:08d}",
            "logged_at": _timestamp(rng, base),
            **_identifiers(rng),
            "sdk_version": f"12.{rng.randrange(4)}.{rng.randrange(10)}",
            "os_type": rng.choice(OS_TYPES),
            "level": rng.choice(LEVELS),
            "message": rng.choice(MESSAGES),
        }
        if rng.random() < backend_share:
            log["client_ip"] = str(ipaddress.IPv4Address(rng.randrange(1 << 24, 223 << 24)))
        yield json.dumps(log, separators=(",", ":"))


def telemetry_lines(count: int, seed: int) -> Iterator[str]:
    """``count`` JSON Lines dashboard telemetry records (quality reports and function events)."""
    rng = random.Random(seed)
    base = datetime(2026, 11, 20, tzinfo=UTC)
    for i in range(count):
        event_type = rng.choice(EVENT_TYPES)
        record = {
            "event_id": f"t-{seed}-{i:08d}",
            "reported_at": _timestamp(rng, base),
            **_identifiers(rng),
            "event_type": event_type,
        }
        if event_type == "quality":
            record.update(
                cpu_usage=round(rng.uniform(3, 95), 1),
                memory_usage=rng.randrange(80, 900),
                network_latency_ms=rng.randrange(5, 400),
                packet_loss=round(rng.random() * 0.05, 4),
                resolution=rng.choice(("640x360", "1280x720", "1920x1080")),
                bitrate_kbps=rng.randrange(200, 3000),
                frame_rate=rng.choice((15, 24, 30)),
                volume=rng.randrange(0, 100),
            )
        yield json.dumps(record, separators=(",", ":"))

"""Geolocation: visitor IP -> the database's country -> the policy's region of it.

Why this module exists: whether a visitor's contact data may be enriched or kept depends on
where the visitor is. The region decides that downstream (restricted = not ``OTHER``), so the
lookup fails closed: anything that cannot be placed with confidence (not in the database,
private/reserved/loopback/multicast/link-local addresses, garbage strings, records without a
country, answers that name no country such as ``ZZ`` or ``AP``) becomes ``UNKNOWN`` and is
treated like EEA/UK.

- Which region a country is in is *not* decided here: the database's answer goes to the
  policy's one decision (:meth:`schemas.policy.Policy.region_for`), the same that places
  companies and that the guard re-checks, so spellings (``UK``), unknown answers (``ZZ``) and
  region names (a policy may declare more restricted regions) mean the same everywhere. The
  ``country`` column holds the code the policy placed the visitor by (``UK`` is written ``GB``),
  or None when the answer names no country.
- Only the database's ``country`` is used; ``registered_country`` and ``is_in_european_union``
  are ignored on purpose (the latter is pre-Brexit and says GB is in the EU).
- Country, City and Enterprise databases all work (their records share the ``country`` map that
  geoip2's models read); any other ``database_type`` is refused when the database is opened.
- IPv4-mapped IPv6 addresses (``::ffff:1.2.3.4``) are looked up as their IPv4 address, and so
  are 6to4 addresses (``2002:0102:0304::/48``), whose IPv4 host is the actual endpoint.
- What no database can place (private, reserved, multicast... addresses) is a table of the IANA
  special-purpose ranges, bisected, not the stdlib's ``ipaddress`` properties (``is_global``,
  ``is_reserved``, ``is_multicast``, ``is_site_local``): those scan a list of networks per
  address, 6-8 µs, and an address the cache has not seen pays it. Measured on 200,000 distinct
  addresses: 20 µs per address with the properties against 5 µs with the table (the database
  lookup included), and the visits pipeline on 200,000 visits from distinct addresses took 11.7 s
  of CPU instead of 9.0 s. The properties are the table's test instead
  (``tests/transforms/test_geo.py``): it decides as they do, but for the ranges this Python's
  stdlib calls global that no database can place either (192.0.0.0/24 beyond its /29 and /31,
  192.88.99.0/24, 2001::/23 for Pythons that call parts of it global, 3fff::/20).
- Lookups use maxminddb's C extension directly, the reader geoip2 wraps: geoip2 builds a model
  object per lookup, which made a lookup cost several times the C call (the pure-Python reader
  is ~10x slower still); a cache of answers per address sits in front (visits repeat IPs
  heavily), and one reader per worker process is shared by all DoFn instances and threads
  through Beam's ``Shared`` (:func:`shared_lookup`).
"""

from __future__ import annotations

import bisect
import contextlib
import functools
import ipaddress
import logging
import os
import shutil
import socket
import tempfile
import weakref
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

import apache_beam as beam
import maxminddb
import pyarrow as pa
import pyarrow.compute as pc
from apache_beam.io.filesystems import FileSystems
from apache_beam.utils.shared import Shared

from schemas.policy import Policy
from transforms.batches import ApplyStage, RecordStage, TableBatch
from transforms.columns import column_or_nulls, with_column
from transforms.memo import BoundedMemo

__all__ = [
    "DEFAULT_CACHE_SIZE",
    "NON_PUBLIC_V4",
    "NON_PUBLIC_V6",
    "CountryLookup",
    "Geolocate",
    "GeolocateFn",
    "Placement",
    "c_extension_available",
    "lookup_address",
    "open_lookup",
    "region_counter",
    "shared_lookup",
]

_LOG = logging.getLogger(__name__)

#: About 128k entries: measured to pay off on ~100k distinct IPs, where 16k gained nothing.
DEFAULT_CACHE_SIZE = 131072


def region_counter(region: str) -> str:
    """The counter of visitors of ``region`` (a policy region name): ``region.eea_uk``."""
    return f"region.{region.lower()}"


def c_extension_available() -> bool:
    """True if maxminddb's C extension (libmaxminddb reader) can be imported."""
    try:
        import maxminddb.extension  # noqa: F401
    except ImportError:
        return False
    return True


# Addresses that no geolocation database can place (IANA special-purpose registries, RFC 6890
# and successors): looking them up could only give a wrong answer, so they are UNKNOWN. A table
# rather than ``ipaddress``'s properties (see the module docstring); the tests hold it to them.
NON_PUBLIC_V4 = (
    "0.0.0.0/8",  # "this network", unspecified
    "10.0.0.0/8",  # private
    "100.64.0.0/10",  # carrier-grade NAT
    "127.0.0.0/8",  # loopback
    "169.254.0.0/16",  # link-local
    "172.16.0.0/12",  # private
    "192.0.0.0/24",  # IETF protocol assignments
    "192.0.2.0/24",  # documentation
    "192.88.99.0/24",  # deprecated 6to4 relay anycast
    "192.168.0.0/16",  # private
    "198.18.0.0/15",  # benchmarking
    "198.51.100.0/24",  # documentation
    "203.0.113.0/24",  # documentation
    "224.0.0.0/4",  # multicast
    "240.0.0.0/4",  # reserved, limited broadcast
)
NON_PUBLIC_V6 = (
    "::/3",  # IETF-reserved outside global unicast 2000::/3: unspecified, loopback, ...
    "2001::/23",  # IETF protocol assignments (Teredo, benchmarking, ORCHID, ...)
    "2001:db8::/32",  # documentation
    "3fff::/20",  # documentation
    "4000::/2",  # reserved
    "8000::/1",  # reserved, ULA fc00::/7, link-local fe80::/10, site-local fec0::/10, multicast
)


def _intervals(cidrs: tuple[str, ...]) -> tuple[list[int], list[int]]:
    """Sorted, merged ``(starts, ends)`` of ``cidrs`` for a bisect lookup."""
    merged: list[list[int]] = []
    for net in sorted(ipaddress.ip_network(c) for c in cidrs):
        lo, hi = int(net.network_address), int(net.broadcast_address)
        if merged and lo <= merged[-1][1] + 1:
            merged[-1][1] = max(merged[-1][1], hi)
        else:
            merged.append([lo, hi])
    return [lo for lo, _ in merged], [hi for _, hi in merged]


_BLOCKED = {4: _intervals(NON_PUBLIC_V4), 6: _intervals(NON_PUBLIC_V6)}


def _blocked(value: int, version: int) -> bool:
    starts, ends = _BLOCKED[version]
    i = bisect.bisect_right(starts, value) - 1
    return i >= 0 and value <= ends[i]


def lookup_address(ip: str) -> str | None:
    """The canonical address to look up for ``ip``, or None if it cannot be placed.

    None for anything that is not a plain IPv4/IPv6 address (socket.inet_pton is strict: no
    "1.2.3", no hex or octal parts, no zone ids, no whitespace) and for the non-public ranges
    above. IPv4-mapped (``::ffff:a.b.c.d``) and 6to4 (``2002:AABB:CCDD::/48``) IPv6 addresses
    are unwrapped to their IPv4 address first, so ``::ffff:10.0.0.1`` is private too and
    ``2002:808:808::1`` is looked up as ``8.8.8.8``.
    """
    try:
        packed = socket.inet_pton(socket.AF_INET, ip)
    except (OSError, ValueError):
        try:
            packed = socket.inet_pton(socket.AF_INET6, ip)
        except (OSError, ValueError):
            return None
        value = int.from_bytes(packed, "big")
        if value >> 32 == 0xFFFF:  # ::ffff:0:0/96
            packed = packed[12:]
        elif value >> 112 == 0x2002:  # 2002::/16
            packed = packed[2:6]
        else:
            return None if _blocked(value, 6) else socket.inet_ntop(socket.AF_INET6, packed)
    if _blocked(int.from_bytes(packed, "big"), 4):
        return None
    return socket.inet_ntop(socket.AF_INET, packed)


def _iso_code(code: object) -> str | None:
    if isinstance(code, str) and len(code) == 2 and code.isascii() and code.isalpha():
        return code.upper()
    return None


class CountryLookup:
    """IP string -> ISO 3166-1 alpha-2 country code (or None), from a MaxMind DB file.

    Reads the ``country.iso_code`` of the record maxminddb's C reader (mmap mode) returns, as
    geoip2's Country, City and Enterprise models do. A database of any other type is refused at
    construction, so a wrong ``--geoip_db`` fails at startup rather than turning every visitor
    ``UNKNOWN``.

    The pure-Python reader is refused unless ``allow_pure_python=True``: it is about ten times
    slower, which on a large batch is an outage rather than a degradation.

    Answers are cached per address string (``cache_size`` entries, a
    :class:`~transforms.memo.BoundedMemo`; 0 disables the cache): Parse makes every IP
    canonical, so an address is one string, and each distinct one is parsed and decided once.
    Safe to share between threads: the C reader and the memo are thread-safe.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        cache_size: int = DEFAULT_CACHE_SIZE,
        *,
        allow_pure_python: bool = False,
    ) -> None:
        if cache_size < 0:
            raise ValueError(f"cache_size must be >= 0, got {cache_size}")
        if c_extension_available():
            mode = maxminddb.MODE_MMAP_EXT
        elif allow_pure_python:
            _LOG.warning("maxminddb C extension unavailable; using the slow pure-Python reader")
            mode = maxminddb.MODE_MMAP
        else:
            raise RuntimeError(
                "maxminddb's C extension is not available (install maxminddb from a wheel or "
                "with libmaxminddb); pass allow_pure_python=True to accept a ~10x slower reader"
            )
        self.path = os.fspath(path)
        self._reader = maxminddb.open_database(self.path, mode)
        self.uses_c_extension = mode == maxminddb.MODE_MMAP_EXT
        self.database_type: str = self._reader.metadata().database_type
        self._check_type(self.database_type)
        self.cache_size = cache_size
        self._answers = BoundedMemo(self._lookup, cache_size) if cache_size else None

    def _check_type(self, database_type: str) -> None:
        if any(kind in database_type for kind in ("Enterprise", "City", "Country")):
            return
        self._reader.close()
        raise ValueError(
            f"{self.path}: database type {database_type!r} has no country data; "
            "use a Country, City or Enterprise database"
        )

    def country(self, ip: object) -> str | None:
        """The ISO code of the database's ``country`` for ``ip``, or None if it has none.

        Never raises for bad input: non-strings, invalid strings, non-public addresses and
        addresses not in the database all give None.
        """
        if not isinstance(ip, str):
            return None
        return self._lookup(ip) if self._answers is None else self._answers[ip]

    def countries(self, ips: list[Any]) -> list[str | None]:
        """:meth:`country` of each of ``ips``, for a batch: the cache is read in one
        comprehension, which per row costs a fraction of a call. ``ips`` must be hashable (a
        table column's values are)."""
        answers = self._answers
        if answers is None:
            return [self.country(ip) for ip in ips]
        return [answers[ip] for ip in ips]

    def _lookup(self, ip: object) -> str | None:
        addr = lookup_address(ip) if isinstance(ip, str) else None
        if addr is None:
            return None
        try:
            record = self._reader.get(addr)
        except ValueError:
            # e.g. an IPv6 address against an IPv4-only database: cannot be placed.
            return None
        country = record.get("country") if isinstance(record, dict) else None
        return _iso_code(country.get("iso_code")) if isinstance(country, dict) else None

    def cached(self) -> int:
        """How many answers the cache holds."""
        return len(self._answers) if self._answers is not None else 0

    def close(self) -> None:
        """Release the memory map. The lookup must not be used afterwards."""
        if self._answers is not None:
            self._answers.clear()
        self._reader.close()

    def __enter__(self) -> CountryLookup:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_lookup(path: str, cache_size: int = DEFAULT_CACHE_SIZE) -> CountryLookup:
    """A :class:`CountryLookup` of ``path``, a local file or a file on any Beam filesystem
    (``gs://...``): the C reader memory-maps a local file, so a remote one is copied through
    ``FileSystems`` to a temporary file, which goes with the lookup (removed when it is
    garbage-collected, or at exit)."""
    if Path(path).is_file():
        return CountryLookup(path, cache_size)
    if "://" not in path:
        raise FileNotFoundError(f"GeoIP database not found: {path}")
    fd, copy = tempfile.mkstemp(prefix="geoip-", suffix=".mmdb")
    try:
        with os.fdopen(fd, "wb") as out, FileSystems.open(path) as src:
            shutil.copyfileobj(src, out, 1 << 20)
        lookup = CountryLookup(copy, cache_size)
    except BaseException:
        Path(copy).unlink()
        raise
    _LOG.info("copied GeoIP database %s to %s", path, copy)
    weakref.finalize(lookup, _remove, copy)
    return lookup


def _remove(path: str) -> None:
    with contextlib.suppress(OSError):
        Path(path).unlink()


# The process's lookup: Beam's per-process sharing (a weak reference, kept alive between
# bundles), tagged with what it was opened for.
_PROCESS_LOOKUP = Shared()


def shared_lookup(path: str, cache_size: int = DEFAULT_CACHE_SIZE) -> CountryLookup:
    """The process's :class:`CountryLookup` of ``(path, cache_size)``, opened on first use
    (:func:`open_lookup`), through ``apache_beam.utils.shared.Shared``.

    Why: a DoFn is deserialised once per bundle processor and a worker runs several of them
    (and threads); opening a reader and a cache each time would multiply memory and lose the
    cache's hit rate. The startup check of the database (``pipelines.visits``) opens it the same
    way, so an in-process runner's workers find it open. Asked for another database or cache
    size, the process opens that one; the lookups already handed out stay usable.
    """
    return _PROCESS_LOOKUP.acquire(
        functools.partial(open_lookup, path, cache_size), tag=(path, cache_size)
    )


class Placement(NamedTuple):
    """Where the policy places a database answer: the ``country`` column and the region."""

    country: str | None
    region: str


class GeolocateFn(RecordStage):
    """Adds ``country`` (the code the policy placed the visitor by, or None) and ``region`` (a
    region name of the policy) to each visit record of a batch.

    Emits new dicts (inputs are never mutated) and counts regions in the ``compliance``
    namespace (:func:`region_counter`: ``region.eea_uk``, ``region.other``, ``region.unknown``)
    for the run report. The IP is read from the record's ``ip`` field; a missing or malformed
    one gives ``UNKNOWN``, which downstream treats as restricted. A table is geolocated column
    by column whatever its ``ip`` column holds: it never falls back to the record path.
    """

    stage = "geolocate"

    def __init__(
        self,
        geoip_db: str,
        policy: Policy,
        cache_size: int = DEFAULT_CACHE_SIZE,
    ) -> None:
        super().__init__()
        self._geoip_db = str(geoip_db)
        self._policy = policy
        self._cache_size = cache_size
        self._lookup: CountryLookup | None = None
        self._placed: dict[str | None, Placement] = {}

    def setup(self) -> None:
        super().setup()
        self._lookup = shared_lookup(self._geoip_db, self._cache_size)

    def one(self, record: dict[str, Any]) -> dict[str, Any]:
        country, region = self._place(self._lookup.country(record.get("ip")))
        self.tally.add(region_counter(region))
        return {**record, "country": country, "region": region}

    def process_table(self, table: pa.Table) -> Iterator[TableBatch]:
        """The columnar version: a lookup per row through the per-process cache, a placement
        per distinct answer of the database (spread with ``take``)."""
        ips = column_or_nulls(table, "ip").to_pylist()
        answers = pc.dictionary_encode(pa.array(self._lookup.countries(ips), pa.string()))
        # A null answer is a dictionary_encode null: it is placed last, as None.
        placed = [self._place(a) for a in [*answers.dictionary.to_pylist(), None]]
        rows = answers.indices.fill_null(len(placed) - 1)
        countries = pa.array([p.country for p in placed], pa.string()).take(rows)
        regions = pa.array([p.region for p in placed], pa.string()).take(rows)
        counts = pc.value_counts(regions)
        for region, n in zip(
            counts.field("values").to_pylist(), counts.field("counts").to_pylist(), strict=True
        ):
            self.tally.add(region_counter(region), n)
        self.tally.flush()
        table = with_column(table, "country", countries)
        yield TableBatch(with_column(table, "region", regions))

    def _place(self, answer: str | None) -> Placement:
        """Where the policy places a database answer, memoised per answer."""
        placed = self._placed.get(answer)
        if placed is None:
            policy = self._policy
            placed = Placement(policy.country_code(answer), policy.region_for(answer))
            self._placed[answer] = placed
        return placed


class Geolocate(beam.PTransform):
    """Composite: batches of visit records -> the same records with ``country`` and ``region``.

    ``geoip_db`` is a MaxMind DB (Country, City or Enterprise) on any Beam filesystem;
    ``policy`` places its answers in regions.
    """

    def __init__(
        self,
        geoip_db: str,
        policy: Policy,
        cache_size: int = DEFAULT_CACHE_SIZE,
    ) -> None:
        super().__init__()
        self._fn = GeolocateFn(geoip_db, policy, cache_size)

    def expand(self, batches: beam.PCollection) -> beam.PCollection:
        return batches | "LookupCountry" >> ApplyStage(self._fn)

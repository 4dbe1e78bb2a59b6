"""Offline AroundDeal snapshot: a CSV of networks, looked up by longest-prefix match.

The CSV (UTF-8, optionally gzip/bzip2 by extension, any filesystem Beam knows: local, ``gs://``)
has a header with ``network`` (a CIDR, IPv4 or IPv6, host bits zero) and the company and contact
columns the policy declares; an empty cell is None. Columns the policy does not declare are
ignored (allow-list). A malformed file fails when it is loaded, with a message naming the line:
we would rather stop than enrich from a half-read snapshot.

The index is built once per worker process and shared by every copy of the handler (Beam makes
one per DoFn instance) through Beam's :class:`~apache_beam.utils.shared.Shared`, because a
snapshot can hold millions of networks. The handle is made with the handler and travels with its
copies; the file's size and modification time are its tag, so a long-lived worker (Flink task
manager, a test session) reloads a rewritten file instead of serving a stale index. The handler
the pipeline is configured with keeps its index for the run, so an in-process runner's workers
find it loaded.

"We do not receive or process EEA and UK based companies corporate contact information": the
loader keeps the contact columns of a row only when its company's country is known and of no
restricted region (``Policy.region_for`` of ``company_country`` is ``OTHER``). The contact cells
of every other row (EEA/UK companies in any spelling, companies of no known country) are dropped
as the file is read, never indexed, and counted (:meth:`SnapshotHandler.run_counters`, which
``EnrichAroundDeal`` reports once per run as ``enrichment.snapshot_contact_rows_dropped``).

Restricted visitors (region != ``OTHER``) get the company columns only: the contact columns of
the matching row are never read for them.

The provider (:class:`SnapshotProvider`) is chosen by ``--enrichment_snapshot``.
"""

from __future__ import annotations

import argparse
import csv
import functools
import ipaddress
import logging
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

from apache_beam.io.filesystems import FileSystems
from apache_beam.utils.shared import Shared

from schemas.policy import OTHER_REGION, Policy
from transforms.enrichment.lookup import (
    COMPANY_COUNTRY_FIELD,
    IP_FIELD,
    MATCHED,
    NO_MATCH,
    IpAddress,
    LookupResult,
    clean_value,
    ipv4_int,
    is_restricted,
    parse_ip,
)
from transforms.enrichment.providers import EnrichmentFields
from transforms.memo import BoundedMemo

__all__ = [
    "NETWORK_COLUMN",
    "PrefixIndex",
    "Snapshot",
    "SnapshotError",
    "SnapshotHandler",
    "SnapshotProvider",
    "load_snapshot",
    "normalize_network",
]

_LOGGER = logging.getLogger(__name__)

NETWORK_COLUMN = "network"
IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
_MAPPED_V4 = ipaddress.IPv6Network("::ffff:0:0/96")
_BITS = {4: 32, 6: 128}


class SnapshotError(ValueError):
    """The snapshot file cannot be used (missing, unreadable or malformed)."""


def normalize_network(network: IpNetwork) -> IpNetwork:
    """An IPv4-mapped IPv6 network (within ``::ffff:0:0/96``) as the IPv4 network it covers.

    Addresses are looked up with IPv4-mapped forms turned into IPv4 (see ``parse_ip``), so a
    network written in the mapped form must be indexed as IPv4 to be reachable.
    """
    if (
        isinstance(network, ipaddress.IPv6Network)
        and network.prefixlen >= _MAPPED_V4.prefixlen
        and network.subnet_of(_MAPPED_V4)
    ):
        v4 = network.network_address.ipv4_mapped
        assert v4 is not None
        return ipaddress.IPv4Network((v4, network.prefixlen - _MAPPED_V4.prefixlen))
    return network


class PrefixIndex:
    """Longest-prefix match over IPv4 and IPv6 networks, with integer keys.

    Per IP version: ``{prefixlen: {address_int >> (bits - prefixlen): value}}``, probed from the
    longest prefix length present down to the shortest. A lookup is at most one dict probe per
    distinct prefix length in the data (a handful in practice), with no object allocation beyond
    the integer shift, which is what makes millions of lookups per worker cheap.
    """

    def __init__(self) -> None:
        self._tables: dict[int, dict[int, dict[int, Any]]] = {4: {}, 6: {}}
        self._probe: dict[int, tuple[tuple[int, int, dict[int, Any]], ...]] = {4: (), 6: ()}
        self._size = 0

    def __len__(self) -> int:
        return self._size

    def add(self, network: IpNetwork, value: Any) -> bool:
        """Adds ``network`` -> ``value`` (not None); False, and no change, if already there."""
        if value is None:
            raise ValueError("PrefixIndex values must not be None")
        network = normalize_network(network)
        bits = _BITS[network.version]
        tables = self._tables[network.version]
        table = tables.get(network.prefixlen)
        if table is None:
            table = tables[network.prefixlen] = {}
            self._refresh(network.version)
        key = int(network.network_address) >> (bits - network.prefixlen)
        if key in table:
            return False
        table[key] = value
        self._size += 1
        return True

    def _refresh(self, version: int) -> None:
        bits = _BITS[version]
        tables = self._tables[version]
        self._probe[version] = tuple(
            (bits - plen, plen, tables[plen]) for plen in sorted(tables, reverse=True)
        )

    def get(self, network: IpNetwork) -> Any | None:
        """The value stored for exactly ``network``, or None."""
        network = normalize_network(network)
        table = self._tables[network.version].get(network.prefixlen, {})
        return table.get(
            int(network.network_address) >> (_BITS[network.version] - network.prefixlen)
        )

    def lookup(self, address: IpAddress) -> Any | None:
        """The value of the longest network containing ``address``, or None."""
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        return self.lookup_int(int(address), address.version)

    def lookup_int(self, n: int, version: int) -> Any | None:
        """:meth:`lookup` of the address whose integer is ``n`` (IPv4-mapped IPv6 addresses
        must be given as their IPv4 address)."""
        for shift, _plen, table in self._probe[version]:
            value = table.get(n >> shift)
            if value is not None:
                return value
        return None


class Snapshot:
    """A loaded snapshot: the index (values are ``((company, contact), line)``), the column
    order of the row tuples, and the number of rows whose contact cells were dropped."""

    def __init__(
        self, index: PrefixIndex, columns: tuple[str, ...], contact_rows_dropped: int
    ) -> None:
        self.index = index
        self.columns = columns
        self.contact_rows_dropped = contact_rows_dropped


def load_snapshot(
    path: str, company_fields: Sequence[str], contact_fields: Sequence[str], policy: Policy
) -> Snapshot:
    """Reads and indexes the CSV at ``path``, without the contact cells of companies that are
    not ``OTHER`` by ``policy``; raises :class:`SnapshotError` naming the line."""
    columns = (*company_fields, *contact_fields)
    try:
        raw = FileSystems.open(path)
    except Exception as e:  # FileSystems raises BeamIOError, IOError, ... per filesystem
        raise SnapshotError(f"enrichment snapshot {path}: cannot open: {e}") from e
    with raw:
        reader = csv.reader(_text_lines(raw), strict=True)
        try:
            return _index_rows(path, reader, columns, len(company_fields), policy)
        except csv.Error as e:
            raise SnapshotError(
                f"enrichment snapshot {path}:{reader.line_num}: malformed CSV: {e}"
            ) from e
        except UnicodeDecodeError as e:
            raise SnapshotError(
                f"enrichment snapshot {path}:{reader.line_num + 1}: not UTF-8: {e}"
            ) from e


def _text_lines(raw: Any) -> Iterator[str]:
    """UTF-8 lines (BOM dropped) of a FileSystems stream.

    Not ``io.TextIOWrapper``: the compressed streams FileSystems returns for ``.gz``/``.bz2``
    are not full ``io`` objects. Lines are split on newline bytes, which never occur inside a
    UTF-8 multi-byte sequence, so decoding per line is exact.
    """
    first = True
    while True:
        line = raw.readline()
        if not line:
            return
        if first:
            line = line.removeprefix(b"\xef\xbb\xbf")
            first = False
        yield line.decode("utf-8")


def _index_rows(
    path: str, reader: Any, columns: tuple[str, ...], n_company: int, policy: Policy
) -> Snapshot:
    header = next(reader, None)
    if header is None:
        raise SnapshotError(f"enrichment snapshot {path}: empty file (no header)")
    header = [h.strip() for h in header]
    duplicated = sorted({h for h in header if header.count(h) > 1})
    if duplicated:
        raise SnapshotError(f"enrichment snapshot {path}:1: duplicate columns {duplicated}")
    required = dict.fromkeys((NETWORK_COLUMN, *columns, COMPANY_COUNTRY_FIELD))
    missing = [c for c in required if c not in header]
    if missing:
        raise SnapshotError(f"enrichment snapshot {path}:1: missing columns {missing}")
    ignored = [h for h in header if h != NETWORK_COLUMN and h not in columns]
    if ignored:
        _LOGGER.info("enrichment snapshot %s: ignoring undeclared columns %s", path, ignored)
    net_pos = header.index(NETWORK_COLUMN)
    country_pos = header.index(COMPANY_COUNTRY_FIELD)
    positions = [header.index(c) for c in columns]
    width = len(header)
    no_contact = (None,) * (len(columns) - n_company)
    contacts_allowed: dict[str, bool] = {}  # per distinct country cell
    dropped = 0

    index = PrefixIndex()
    # Identical rows (one company, many networks) are stored once.
    rows: dict[tuple[tuple[str | None, ...], tuple[str | None, ...]], Any] = {}
    for row in reader:
        line = reader.line_num
        if not row or (len(row) == 1 and not row[0].strip()):
            continue  # blank line
        if len(row) != width:
            raise SnapshotError(
                f"enrichment snapshot {path}:{line}: expected {width} cells, got {len(row)}"
            )
        cell = row[net_pos].strip()
        try:
            network = normalize_network(ipaddress.ip_network(cell, strict=True))
        except ValueError as e:
            raise SnapshotError(
                f"enrichment snapshot {path}:{line}: invalid network {cell!r}: {e}"
            ) from e
        values = tuple(clean_value(row[p]) for p in positions)
        contact = values[n_company:]
        country = row[country_pos]
        allowed = contacts_allowed.get(country)
        if allowed is None:
            allowed = contacts_allowed[country] = policy.region_for(country) == OTHER_REGION
        if not allowed and contact != no_contact:
            contact = no_contact  # never received: not indexed, not kept in memory
            dropped += 1
        row = (values[:n_company], contact)
        row = rows.setdefault(row, row)
        if not index.add(network, (row, line)):
            raise SnapshotError(
                f"enrichment snapshot {path}:{line}: network {network} already on line "
                f"{index.get(network)[1]}"
            )
    _LOGGER.info(
        "enrichment snapshot %s: %d networks indexed; contact columns of %d rows dropped "
        "(company country restricted or unknown)",
        path,
        len(index),
        dropped,
    )
    return Snapshot(index, columns, dropped)


def _file_tag(path: str) -> tuple[int, float]:
    """The file's size and modification time: a rewritten snapshot is loaded again."""
    try:
        matches = FileSystems.match([path])[0].metadata_list
    except Exception as e:  # FileSystems raises BeamIOError, IOError, ... per filesystem
        raise SnapshotError(f"enrichment snapshot {path}: cannot stat: {e}") from e
    if not matches:
        raise SnapshotError(f"enrichment snapshot {path}: no such file")
    meta = matches[0]
    return meta.size_in_bytes, meta.last_updated_in_seconds


# Entries of the per-handler memo of lookups (address, restricted) -> result.
MEMO_SIZE = 131072

# The results that depend on nothing but whether the visitor is restricted, shared: a result is
# immutable, and the join works out what a result means once per object.
_INVALID_IP = {
    restricted: LookupResult(NO_MATCH, contact_requested=not restricted, invalid_ip=True)
    for restricted in (False, True)
}
_NO_MATCH = {
    restricted: LookupResult(NO_MATCH, contact_requested=not restricted, source_calls=1)
    for restricted in (False, True)
}


class SnapshotHandler:
    """Looks visit records up in an offline AroundDeal snapshot (see the module docstring).

    An ``EnrichmentHandler`` with a column lookup (``transforms.enrichment.providers``).

    Args:
      path: the CSV, read through Beam's FileSystems (local path, ``gs://...``, ...).
      company_fields: the company columns to return (from the policy).
      contact_fields: the contact columns, returned for unrestricted visitors only, and loaded
        only for companies whose country ``policy`` places in ``OTHER``.
      policy: places the companies' countries.
      batch_size: request records per :meth:`lookup` call; 0 (the default): a whole batch of
        the pipeline, since lookups are in memory.

    It never raises for a record: a missing or invalid IP is a ``NO_MATCH`` with
    ``invalid_ip=True``.
    """

    def __init__(
        self,
        path: str,
        company_fields: Iterable[str],
        contact_fields: Iterable[str],
        policy: Policy,
        batch_size: int = 0,
    ) -> None:
        if not path:
            raise ValueError("SnapshotHandler: path is required")
        if batch_size < 0:
            raise ValueError(f"SnapshotHandler: batch_size must be >= 0, got {batch_size}")
        self.path = path
        self.company_fields = tuple(company_fields)
        self.contact_fields = tuple(contact_fields)
        self.policy = policy
        self.batch_size = batch_size
        # One handle per handler: its pickled copies (one per DoFn instance) share the index.
        self._shared = Shared()
        self._snapshot: Snapshot | None = None
        # Results by address, one memo per restricted flag (the result for an address is a pure
        # function of (address, restricted) while the snapshot does not change): visitors'
        # addresses repeat. Made on entry (they call this instance), never pickled.
        self._memo: tuple[BoundedMemo, BoundedMemo] | None = None
        self._matched: dict[tuple[int, bool], LookupResult] = {}

    def load(self) -> Snapshot:
        """The index, loaded (or found loaded in this process) and kept by this handler until
        :meth:`__exit__`; raises :class:`SnapshotError` for a file that cannot be used."""
        tag = _file_tag(self.path)
        self._snapshot = self._shared.acquire(
            functools.partial(
                load_snapshot, self.path, self.company_fields, self.contact_fields, self.policy
            ),
            tag=tag,
        )
        return self._snapshot

    def __enter__(self) -> SnapshotHandler:
        self.load()
        self._memo = tuple(
            BoundedMemo(functools.partial(self._lookup_ip, restricted=r), MEMO_SIZE)
            for r in (False, True)
        )
        # (id of an index entry, restricted) -> its result: one object per network, which the
        # join interprets once. The entry lives in the index, so its id stays its own.
        self._matched = {}
        return self

    def __exit__(self, exc_type: Any, exc_val: Any, exc_tb: Any) -> None:
        # The index is shared by the process; this instance only lets go of its reference.
        self._snapshot = None
        self._memo = None
        self._matched = {}

    def __getstate__(self) -> dict[str, Any]:
        # Never ship the index inside the pickled handler: workers load it themselves.
        return {**self.__dict__, "_snapshot": None, "_memo": None, "_matched": {}}

    def __str__(self) -> str:
        return "SnapshotHandler"

    def contact_rows_dropped(self) -> int:
        """Rows of the file whose contact cells the loader dropped (loads it if need be)."""
        return (self._snapshot or self.load()).contact_rows_dropped

    def run_counters(self) -> Mapping[str, int]:
        """What the loader kept out of the index, a fact of the file: counted once per run."""
        return {"enrichment.snapshot_contact_rows_dropped": self.contact_rows_dropped()}

    def max_call_seconds(self) -> float:
        """The deadline of one call (lookups are in memory: generous for a whole batch)."""
        return 120.0

    def lookup(self, requests: Sequence[Mapping[str, Any]]) -> list[LookupResult]:
        """One result per request record (``ip`` and ``region``), in order."""
        if self._memo is None:
            self.__enter__()
        memo = self._memo
        out = []
        for request in requests:
            ip, restricted = request.get(IP_FIELD), is_restricted(request)
            out.append(memo[restricted][ip] if isinstance(ip, str) else _INVALID_IP[restricted])
        return out

    def lookup_columns(self, ips: Sequence[Any], restricted: Sequence[bool]) -> list[LookupResult]:
        """The results for rows given as columns (a table's ``ip`` values and whether each
        visitor is restricted): what :meth:`lookup` gives for one request record per row,
        without a record per row."""
        if self._memo is None:
            self.__enter__()
        memo = self._memo
        return [memo[r][ip] for ip, r in zip(ips, restricted, strict=True)]

    def _lookup_ip(self, ip: Any, restricted: bool) -> LookupResult:
        return (
            self._lookup_address(ip, restricted) if isinstance(ip, str) else _INVALID_IP[restricted]
        )

    def _lookup_address(self, ip: str, restricted: bool) -> LookupResult:
        n = ipv4_int(ip)
        if n is not None:
            hit = self._snapshot.index.lookup_int(n, 4)
        else:
            address = parse_ip(ip)
            if address is None:
                return _INVALID_IP[restricted]
            hit = self._snapshot.index.lookup(address)
        if hit is None:
            return _NO_MATCH[restricted]
        known = self._matched.get((id(hit), restricted))
        if known is not None:
            return known
        (company, contact), _line = hit
        fields = {k: v for k, v in zip(self.company_fields, company, strict=True) if v is not None}
        if not restricted:
            fields.update(
                (k, v) for k, v in zip(self.contact_fields, contact, strict=True) if v is not None
            )
        result = LookupResult(MATCHED, fields, contact_requested=not restricted, source_calls=1)
        self._matched[(id(hit), restricted)] = result
        return result


_FLAG_HELP = (
    "AroundDeal offline snapshot CSV (network CIDR + company and contact columns), matched by "
    "longest prefix. Mutually exclusive with --enrichment_url."
)


class SnapshotProvider:
    """The offline snapshot as an enrichment source: ``--enrichment_snapshot PATH``."""

    name = "snapshot"
    flag = "enrichment_snapshot"

    def add_flags(self, parser: argparse.ArgumentParser) -> None:
        """``--enrichment_snapshot``."""
        parser.add_argument("--enrichment_snapshot", default=None, help=_FLAG_HELP)

    def build(self, options: Any, fields: EnrichmentFields) -> SnapshotHandler:
        """The handler, with the whole file loaded and checked now (a malformed line names
        itself before any data is read); the index it keeps is found by the workers of an
        in-process runner."""
        handler = SnapshotHandler(
            options.enrichment_snapshot, fields.company_fields, fields.contact_fields, fields.policy
        )
        handler.load()
        return handler

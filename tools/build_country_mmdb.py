#!/usr/bin/env python3
"""Rebuild ``pipelines/data/country.mmdb`` from Tor's country files (Debian ``tor-geoipdb``).

Why: the pipelines need a real, redistributable IP-to-country database that ``geoip2`` can read
without a MaxMind licence key. Debian's ``tor-geoipdb`` package ships Tor's conversion of the
IPFire Location Database (CC BY-SA 4.0) as two text files:

- ``/usr/share/tor/geoip``:  ``INTLOW,INTHIGH,CC`` (IPv4 as 32-bit integers, inclusive)
- ``/usr/share/tor/geoip6``: ``LOW,HIGH,CC`` (IPv6 addresses, inclusive)

``#`` lines are comments, ``??`` means "no country" (such ranges are left out, so lookups there
are "not found"). This script turns each range into CIDR blocks and writes a MaxMind DB (IPv6
tree, record size chosen by mmdb-writer) whose records look like GeoLite2-Country's
(``{"country": {"iso_code": "DE"}}``), so ``geoip2.database.Reader(path).country(ip)`` works.
IPv4 lives under ``::/96`` (where MaxMind readers look up IPv4 addresses) and is aliased at
``::ffff:0:0/96`` so that IPv4-mapped IPv6 addresses resolve too.

Normalisation: the non-ISO code ``UK`` (a handful of ranges) is written as ``GB`` so that the
United Kingdom is recognised as such; other codes (including the non-ISO ``EU``, ``AP``) are kept.

The output is deterministic: same inputs -> byte-identical file. The metadata ``build_epoch``
is ``--build-epoch``, else ``$SOURCE_DATE_EPOCH``, else the newest modification time of the
input files (dpkg keeps the package's timestamps, so it identifies the data release).

Rerun (as root on Debian/Ubuntu; see pipelines/data/COUNTRY_DB.md)::

    apt-get update && apt-get install -y tor-geoipdb
    python tools/build_country_mmdb.py    # Debian paths -> pipelines/data/country.mmdb
    python tools/build_country_mmdb.py --ipv4 geoip --ipv6 geoip6 --output /tmp/country.mmdb

Then update pipelines/data/COUNTRY_DB.md (package version, data date) and run the geo tests.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import re
import subprocess
import sys
from collections import defaultdict
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from mmdb_writer import MMDBWriter, SearchTreeLeaf, SearchTreeNode
from netaddr import IPNetwork, IPSet

DEFAULT_IPV4 = Path("/usr/share/tor/geoip")
DEFAULT_IPV6 = Path("/usr/share/tor/geoip6")
DEFAULT_OUTPUT = Path(__file__).resolve().parent.parent / "pipelines" / "data" / "country.mmdb"
DATABASE_TYPE = "GeoLite2-Country"
# Non-ISO codes in the source that denote an ISO country: written as that country.
CODE_ALIASES = {"UK": "GB"}
_CODE = re.compile(r"^[A-Z]{2}$")

Range = tuple[int, int, str]  # (low, high inclusive, country code)


class _DeterministicWriter(MMDBWriter):
    """MMDBWriter whose metadata build_epoch is fixed instead of time.time()."""

    def __init__(self, build_epoch: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._build_epoch = build_epoch

    def _build_meta(self) -> dict[str, Any]:
        return {**super()._build_meta(), "build_epoch": self._build_epoch}


def parse_ranges(lines: Iterable[str], version: int) -> list[Range]:
    """Parse Tor geoip lines into sorted, non-overlapping ``(low, high, cc)`` ranges.

    ``??`` ranges are dropped; adjacent ranges with the same code are merged (fewer CIDRs).
    """
    ranges: list[Range] = []
    for lineno, raw in enumerate(lines, 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        try:
            low_s, high_s, code = (part.strip() for part in line.split(","))
        except ValueError:
            raise ValueError(f"line {lineno}: expected LOW,HIGH,CC: {line!r}") from None
        if code == "??":
            continue
        code = CODE_ALIASES.get(code, code)
        if not _CODE.match(code):
            raise ValueError(f"line {lineno}: bad country code {code!r}")
        if version == 4:
            low, high = int(low_s), int(high_s)
            limit = 2**32 - 1
        else:
            low = int(ipaddress.IPv6Address(low_s))
            high = int(ipaddress.IPv6Address(high_s))
            limit = 2**128 - 1
        if not 0 <= low <= high <= limit:
            raise ValueError(f"line {lineno}: bad range {line!r}")
        ranges.append((low, high, code))
    ranges.sort()
    merged: list[Range] = []
    for low, high, code in ranges:
        if merged and low <= merged[-1][1]:
            raise ValueError(f"overlapping ranges at {low} ({code}) and {merged[-1]}")
        if merged and merged[-1][2] == code and merged[-1][1] + 1 == low:
            merged[-1] = (merged[-1][0], high, code)
        else:
            merged.append((low, high, code))
    return merged


def range_to_cidrs(low: int, high: int, bits: int) -> Iterator[tuple[int, int]]:
    """Yield the minimal ``(network, prefixlen)`` blocks covering ``low..high`` (inclusive)."""
    while low <= high:
        # Largest block aligned at `low` ...
        size = (low & -low).bit_length() - 1 if low else bits
        # ... that does not run past `high`.
        while size and low + (1 << size) - 1 > high:
            size -= 1
        yield low, bits - size
        low += 1 << size


def _cidrs_by_country(ranges: list[Range], version: int) -> dict[str, list[IPNetwork]]:
    bits = 32 if version == 4 else 128
    out: dict[str, list[IPNetwork]] = defaultdict(list)
    for low, high, code in ranges:
        for net, prefix in range_to_cidrs(low, high, bits):
            out[code].append(IPNetwork((net, prefix), version=version))
    return out


def _alias_ipv4_mapped(tree: SearchTreeNode) -> None:
    """Point ``::ffff:0:0/96`` at the ``::/96`` subtree that holds IPv4 (as MaxMind does)."""
    ipv4_root: Any = tree
    for _ in range(96):
        ipv4_root = ipv4_root[0]
        if not isinstance(ipv4_root, SearchTreeNode):
            raise ValueError("no IPv4 subtree under ::/96")
    node: Any = tree
    mapped_bits = [0] * 80 + [1] * 16
    for bit in mapped_bits[:-1]:
        child = node.get_or_create(bit)
        if isinstance(child, SearchTreeLeaf):
            raise ValueError("the IPv6 data covers ::ffff:0:0/96; refusing to alias it")
        node = child
    if node[1] is not None:
        raise ValueError("the IPv6 data covers ::ffff:0:0/96; refusing to alias it")
    node[1] = ipv4_root


def _share_identical_subtrees(tree: SearchTreeNode) -> int:
    """Make identical subtrees one node (hash-consing); returns the number of distinct nodes.

    A MaxMind DB search tree is read by following record pointers, so it may be a DAG, as the
    ``::ffff:0:0/96`` alias already is. Sharing equal subtrees (typically the chains that lead
    to one country's leaf next to empty siblings) changes no lookup result or prefix length and
    cuts the file to about 40% of its size.
    """
    canonical: dict[int, tuple[Any, tuple[Any, ...]]] = {}  # id(node) -> (node, key)
    nodes: dict[tuple[Any, ...], SearchTreeNode] = {}
    leaves: dict[tuple[Any, ...], SearchTreeLeaf] = {}

    def canon(node: Any) -> tuple[Any, tuple[Any, ...]]:
        if node is None:
            return None, ("empty",)
        seen = canonical.get(id(node))
        if seen is not None:
            return seen
        if isinstance(node, SearchTreeLeaf):
            key: tuple[Any, ...] = ("leaf", repr(node.value))
            result = (leaves.setdefault(key, node), key)
        else:
            left, left_key = canon(node.left)
            right, right_key = canon(node.right)
            key = ("node", left_key[0], id(left), right_key[0], id(right))
            if key not in nodes:
                node.left, node.right = left, right
                nodes[key] = node
            result = (nodes[key], key)
        canonical[id(node)] = result
        return result

    canon(tree)
    return len(nodes)


def build(
    ipv4_lines: Iterable[str],
    ipv6_lines: Iterable[str],
    output: Path,
    build_epoch: int,
    description: str,
) -> dict[str, int]:
    """Write the database; returns counts for the log."""
    v4 = parse_ranges(ipv4_lines, 4)
    v6 = parse_ranges(ipv6_lines, 6)
    for low, _high, _code in v6:
        if low >> 96 == 0 or low >> 32 == 0xFFFF:
            raise ValueError("IPv6 data inside ::/96 or ::ffff:0:0/96 would clash with IPv4")
    writer = _DeterministicWriter(
        build_epoch,
        ip_version=6,
        ipv4_compatible=True,
        database_type=DATABASE_TYPE,
        languages=["en"],
        description={"en": description},
    )
    cidrs = 0
    for version, ranges in ((4, v4), (6, v6)):
        by_country = _cidrs_by_country(ranges, version)
        for code in sorted(by_country):
            ipset = IPSet(by_country[code])
            cidrs += len(ipset.iter_cidrs())
            writer.insert_network(ipset, {"country": {"iso_code": code}})
    _alias_ipv4_mapped(writer.tree)
    nodes = _share_identical_subtrees(writer.tree)
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = output.with_name(output.name + ".tmp")
    writer.to_db_file(str(tmp))
    tmp.replace(output)
    countries = {c for _, _, c in v4} | {c for _, _, c in v6}
    return {
        "ipv4_ranges": len(v4),
        "ipv6_ranges": len(v6),
        "cidrs": cidrs,
        "countries": len(countries),
        "nodes": nodes,
    }


def _package_version(package: str) -> str:
    try:
        return subprocess.run(
            ["dpkg-query", "-W", "-f=${Version}", package],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ipv4", type=Path, default=DEFAULT_IPV4, help="Tor geoip (IPv4) file")
    parser.add_argument("--ipv6", type=Path, default=DEFAULT_IPV6, help="Tor geoip6 (IPv6) file")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help="mmdb file to write")
    parser.add_argument(
        "--build-epoch",
        type=int,
        default=None,
        help="metadata build_epoch (default: $SOURCE_DATE_EPOCH, else newest input mtime)",
    )
    parser.add_argument(
        "--source-version",
        default=None,
        help="tor-geoipdb version for the description (default: ask dpkg-query)",
    )
    args = parser.parse_args(argv)

    epoch = args.build_epoch
    if epoch is None and os.environ.get("SOURCE_DATE_EPOCH"):
        epoch = int(os.environ["SOURCE_DATE_EPOCH"])
    if epoch is None:
        epoch = int(max(args.ipv4.stat().st_mtime, args.ipv6.stat().st_mtime))
    version = args.source_version or _package_version("tor-geoipdb")
    description = (
        f"IP to country from the IPFire Location Database (CC BY-SA 4.0, location.ipfire.org), "
        f"as converted by Tor and shipped in Debian tor-geoipdb {version}"
    )
    with args.ipv4.open(encoding="ascii") as f4, args.ipv6.open(encoding="ascii") as f6:
        stats = build(f4, f6, args.output, epoch, description)
    size = args.output.stat().st_size
    print(f"wrote {args.output} ({size} bytes, build_epoch {epoch}): {stats}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

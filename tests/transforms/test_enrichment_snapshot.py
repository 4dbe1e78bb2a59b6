"""SnapshotHandler: longest-prefix match on a real CSV, the restricted/unrestricted responses,
load-time validation, the index shared by a handler's copies, and a property test of the prefix
index."""

from __future__ import annotations

import csv
import gzip
import ipaddress
import os
import pickle
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from schemas.policy import load_policy
from tests.support.arounddeal_server import COMPANY_FIELDS, CONTACT_FIELDS
from transforms.enrichment.lookup import MATCHED, NO_MATCH, LookupResult, ipv4_int, parse_ip
from transforms.enrichment.snapshot import (
    PrefixIndex,
    SnapshotError,
    SnapshotHandler,
    normalize_network,
)

HEADER = ("network", *COMPANY_FIELDS, *CONTACT_FIELDS)
POLICY = load_policy()


def company(name: str, country: str = "US", **contact: str) -> dict[str, str]:
    return {
        "company_name": name,
        "company_domain": f"{name.lower()}.test",
        "company_industry": "Software",
        "company_country": country,
        "company_size": "51-200",
        **contact,
    }


CONTACT = {
    "contact_name": "Ada Example",
    "business_email": "ada@example.test",
    "job_title": "CTO",
}

ROWS = [
    {"network": "10.0.0.0/8", **company("Eight")},
    {"network": "10.1.0.0/16", **company("Sixteen")},
    {"network": "10.1.2.0/24", **company("TwentyFour", **CONTACT)},
    {"network": "2001:db8::/32", **company("V6Wide")},
    {"network": "2001:db8:1::/48", **company("V6Narrow", business_phone="+1 555 0100")},
    {"network": "::ffff:192.0.2.0/120", **company("MappedNet")},
    {"network": "198.51.100.0/24", "company_name": "Sparse"},  # empty cells elsewhere
]


def write_csv(path: Path, rows: list[dict[str, str]], header=HEADER) -> str:
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(header), restval="")
        writer.writeheader()
        writer.writerows(rows)
    return str(path)


@pytest.fixture()
def snapshot_path(tmp_path: Path) -> str:
    return write_csv(tmp_path / "arounddeal.csv", ROWS)


def handler_for(path: str, **kwargs) -> SnapshotHandler:
    return SnapshotHandler(path, COMPANY_FIELDS, CONTACT_FIELDS, POLICY, **kwargs)


def visit(ip: str | None, region: str | None = "OTHER", **extra) -> dict:
    record = {"event_id": f"e-{ip}", "ip": ip, "region": region, **extra}
    if region is None:
        del record["region"]
    return record


def lookup(handler: SnapshotHandler, ip: str | None, region: str | None = "OTHER") -> LookupResult:
    (result,) = handler.lookup([visit(ip, region)])
    return result


@pytest.mark.parametrize(
    ("ip", "expected"),
    [
        ("10.1.2.3", "TwentyFour"),
        ("10.1.3.3", "Sixteen"),
        ("10.200.0.1", "Eight"),
        ("10.1.2.255", "TwentyFour"),
        ("2001:db8:1::42", "V6Narrow"),
        ("2001:db8:2::42", "V6Wide"),
        ("::ffff:10.1.2.3", "TwentyFour"),  # IPv4-mapped IPv6 matches the IPv4 network
        ("192.0.2.77", "MappedNet"),  # a network written IPv4-mapped matches IPv4 addresses
        ("::ffff:192.0.2.77", "MappedNet"),
    ],
)
def test_longest_prefix_wins(snapshot_path: str, ip: str, expected: str) -> None:
    with handler_for(snapshot_path) as handler:
        result = lookup(handler, ip)
    assert result.status == MATCHED
    assert result.fields["company_name"] == expected
    assert result.source_calls == 1


@pytest.mark.parametrize("ip", ["11.0.0.1", "9.255.255.255", "2001:db9::1", "::1", "0.0.0.0"])
def test_no_match(snapshot_path: str, ip: str) -> None:
    with handler_for(snapshot_path) as handler:
        result = lookup(handler, ip)
    assert result.status == NO_MATCH
    assert result.fields == {}
    assert result.source_calls == 1
    assert not result.invalid_ip


@pytest.mark.parametrize("ip", [None, "", "not-an-ip", "10.1.2.3/24", "999.1.1.1"])
def test_invalid_ip_is_a_no_match_without_lookup(snapshot_path: str, ip) -> None:
    with handler_for(snapshot_path) as handler:
        result = lookup(handler, ip)
    assert result.status == NO_MATCH
    assert result.invalid_ip
    assert result.source_calls == 0


def test_unrestricted_visitor_gets_company_and_contact(snapshot_path: str) -> None:
    with handler_for(snapshot_path) as handler:
        result = lookup(handler, "10.1.2.3", "OTHER")
    assert result.contact_requested
    assert result.fields == {**company("TwentyFour"), **CONTACT}


@pytest.mark.parametrize("region", ["EEA_UK", "UNKNOWN", None, "other", ""])
def test_restricted_visitor_gets_company_fields_only(snapshot_path: str, region) -> None:
    with handler_for(snapshot_path) as handler:
        result = lookup(handler, "10.1.2.3", region)
    assert result.status == MATCHED
    assert not result.contact_requested
    assert result.fields == company("TwentyFour")
    assert not set(result.fields) & set(CONTACT_FIELDS)


RESTRICTED_ROWS = [
    {"network": "192.0.2.0/26", **company("Berlin", "DE", **CONTACT)},
    {"network": "192.0.2.64/26", **company("London", " uk ", **CONTACT)},
    {"network": "192.0.2.128/26", **company("Athens", "EL", **CONTACT)},
    {"network": "192.0.2.192/27", **company("Nowhere", "", **CONTACT)},
    {"network": "192.0.2.224/27", **company("Unplaced", "ZZ", **CONTACT)},
    {"network": "198.18.0.0/24", **company("Austin", "US", **CONTACT)},
    {"network": "198.18.1.0/24", **company("Quiet", "DE")},  # nothing to drop
]


def test_contacts_of_restricted_or_unknown_companies_are_never_loaded(tmp_path: Path) -> None:
    """ "We do not receive ... EEA and UK based companies corporate contact information": the
    loader drops those contact columns as it reads the file (and those of companies of no known
    country), so not even an unrestricted visitor's lookup can find them; it counts the rows."""
    path = write_csv(tmp_path / "mixed.csv", RESTRICTED_ROWS)
    with handler_for(path) as handler:
        results = {ip: lookup(handler, ip) for ip in ("192.0.2.1", "192.0.2.65", "192.0.2.129")}
        results.update({ip: lookup(handler, ip) for ip in ("192.0.2.193", "192.0.2.225")})
        for ip, result in results.items():
            assert result.status == MATCHED, ip
            assert not set(result.fields) & set(CONTACT_FIELDS), ip
        assert lookup(handler, "198.18.0.1").fields == company("Austin", "US", **CONTACT)
        assert handler.contact_rows_dropped() == 5
        stored = repr(handler._snapshot.index._tables)
    assert "ada@example.test" in stored  # the US company's contact is there
    assert stored.count("ada@example.test") == 1


def test_empty_cells_are_absent(snapshot_path: str) -> None:
    with handler_for(snapshot_path) as handler:
        result = lookup(handler, "198.51.100.9")
    assert result.status == MATCHED
    assert result.fields == {"company_name": "Sparse"}


def test_a_call_answers_every_record_in_order(snapshot_path: str) -> None:
    records = [visit("10.1.2.3"), visit("11.0.0.1"), visit("10.9.9.9", "EEA_UK")]
    with handler_for(snapshot_path, batch_size=3) as handler:
        results = handler.lookup(records)
        columns = handler.lookup_columns([r["ip"] for r in records], [False, False, True])
    assert [res.status for res in results] == [MATCHED, NO_MATCH, MATCHED]
    assert results[2].fields["company_name"] == "Eight"
    assert columns == results  # the column lookup is the record lookup


def test_gzip_snapshot_is_read_through_filesystems(tmp_path: Path) -> None:
    plain = write_csv(tmp_path / "plain.csv", ROWS)
    gz = tmp_path / "arounddeal.csv.gz"
    gz.write_bytes(gzip.compress(Path(plain).read_bytes()))
    with handler_for(str(gz)) as handler:
        assert lookup(handler, "10.1.3.3").fields["company_name"] == "Sixteen"


def test_undeclared_columns_are_ignored(tmp_path: Path) -> None:
    rows = [{**ROWS[2], "internal_score": "97"}]
    path = write_csv(tmp_path / "extra.csv", rows, header=(*HEADER, "internal_score"))
    with handler_for(path) as handler:
        result = lookup(handler, "10.1.2.3")
    assert "internal_score" not in result.fields
    assert result.fields["company_name"] == "TwentyFour"


def test_policy_with_fewer_fields_reads_only_those(snapshot_path: str) -> None:
    with SnapshotHandler(snapshot_path, ("company_name",), ("job_title",), POLICY) as handler:
        result = lookup(handler, "10.1.2.3")
    assert result.fields == {"company_name": "TwentyFour", "job_title": "CTO"}


# -- load-time validation --------------------------------------------------------------------


def _raw(path: Path, text: str) -> str:
    path.write_text(text, encoding="utf-8")
    return str(path)


def _header_line() -> str:
    return ",".join(HEADER) + "\n"


def _row(network: str, *cells: str) -> str:
    values = list(cells) + [""] * (len(HEADER) - 1 - len(cells))
    return ",".join([network, *values]) + "\n"


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (_row("10.0.0.0/8", "A") + "10.1.0.0/16,B,too,few\n", r":3: expected 15 cells, got 4"),
        (_row("10.0.0.0/8", "A") + _row("10.0.0.0/33", "B"), r":3: invalid network '10.0.0.0/33'"),
        (_row("10.0.0.1/8", "A"), r":2: invalid network '10.0.0.1/8'"),  # host bits set
        (_row("banana", "A"), r":2: invalid network 'banana'"),
        (_row("10.0.0.0/8", "A") + "\n" + _row("10.0.0.0/8", "B"), r":4: .*already on line 2"),
        (
            _row("192.0.2.0/24", "A") + _row("::ffff:192.0.2.0/120", "B"),
            r":3: network 192.0.2.0/24 already on line 2",
        ),
    ],
)
def test_malformed_rows_fail_naming_the_line(tmp_path: Path, body: str, message: str) -> None:
    path = _raw(tmp_path / "bad.csv", _header_line() + body)
    with pytest.raises(SnapshotError, match=message), handler_for(path):
        pass


def test_missing_column_fails(tmp_path: Path) -> None:
    header = [h for h in HEADER if h != "company_country"]
    path = _raw(tmp_path / "bad.csv", ",".join(header) + "\n")
    with pytest.raises(SnapshotError, match=r":1: missing columns \['company_country'\]"):
        handler_for(path).__enter__()


def test_empty_file_fails(tmp_path: Path) -> None:
    path = _raw(tmp_path / "empty.csv", "")
    with pytest.raises(SnapshotError, match="empty file"):
        handler_for(path).__enter__()


def test_missing_file_fails(tmp_path: Path) -> None:
    with pytest.raises(SnapshotError, match="no such file"):
        handler_for(str(tmp_path / "absent.csv")).__enter__()


def test_non_utf8_fails(tmp_path: Path) -> None:
    path = tmp_path / "latin1.csv"
    path.write_bytes((_header_line() + _row("10.0.0.0/8", "Caf\xe9")).encode("latin-1"))
    with pytest.raises(SnapshotError, match=r":2: not UTF-8"):
        handler_for(str(path)).__enter__()


def test_unterminated_quote_fails(tmp_path: Path) -> None:
    path = _raw(tmp_path / "quote.csv", _header_line() + '10.0.0.0/8,"Acme\n')
    with pytest.raises(SnapshotError, match=r":2: malformed CSV"):
        handler_for(path).__enter__()


def test_header_only_is_an_empty_index(tmp_path: Path) -> None:
    path = _raw(tmp_path / "header.csv", _header_line())
    with handler_for(path) as handler:
        assert lookup(handler, "10.0.0.1").status == NO_MATCH


# -- sharing ---------------------------------------------------------------------------------


def test_index_is_shared_by_the_copies_and_reloaded_when_the_file_changes(
    tmp_path: Path,
) -> None:
    """Beam makes one copy of the handler per DoFn instance (by pickling it): the copies in a
    process share one index (``apache_beam.utils.shared.Shared``), loaded again for a file
    rewritten since."""
    path = write_csv(tmp_path / "shared.csv", ROWS)
    handler = handler_for(path)
    old = handler.load()  # as the pipeline's configuration does: kept for the run
    first, second = pickle.loads(pickle.dumps(handler)), pickle.loads(pickle.dumps(handler))
    with first, second:
        assert first._snapshot is second._snapshot is old
    write_csv(tmp_path / "shared.csv", [*ROWS, {"network": "172.16.0.0/12", "company_name": "New"}])
    stat = Path(path).stat()
    os.utime(path, (stat.st_atime, stat.st_mtime + 10))
    with pickle.loads(pickle.dumps(handler)) as third:
        assert third._snapshot is not old
        assert lookup(third, "172.16.1.1").fields["company_name"] == "New"


def test_pickled_handler_does_not_carry_the_index(snapshot_path: str) -> None:
    with handler_for(snapshot_path) as handler:
        blob = pickle.dumps(handler)
    assert b"TwentyFour" not in blob
    clone = pickle.loads(blob)
    with clone:
        assert lookup(clone, "10.1.2.3").fields["company_name"] == "TwentyFour"


def test_constructor_validates() -> None:
    with pytest.raises(ValueError, match="path"):
        SnapshotHandler("", COMPANY_FIELDS, CONTACT_FIELDS, POLICY)
    with pytest.raises(ValueError, match="batch_size"):
        SnapshotHandler("x.csv", COMPANY_FIELDS, CONTACT_FIELDS, POLICY, batch_size=-1)


# -- the prefix index against a brute-force scan ---------------------------------------------

_MAPPED = ipaddress.IPv6Network("::ffff:0:0/96")


def _brute_force(networks, address):
    """The longest network containing ``address``, by scanning with ``ipaddress`` only."""
    if isinstance(address, ipaddress.IPv6Address) and address in _MAPPED:
        address = ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    best = None
    for network in networks:
        if (
            isinstance(network, ipaddress.IPv6Network)
            and network.prefixlen >= 96
            and (network.network_address in _MAPPED)
        ):
            network = ipaddress.IPv4Network(
                (int(network.network_address) & 0xFFFFFFFF, network.prefixlen - 96)
            )
        contains = network.version == address.version and address in network
        if contains and (best is None or network.prefixlen > best.prefixlen):
            best = network
    return best


_V4_BASE = int(ipaddress.IPv4Address("10.0.0.0"))
_V6_BASE = int(ipaddress.IPv6Address("2001:db8::"))
_MAPPED_BASE = int(_MAPPED.network_address)

# Addresses are drawn mostly from small regions so that networks nest and overlap often.
v4_ints = st.one_of(st.integers(0, 2**32 - 1), st.integers(_V4_BASE, _V4_BASE + 0xFFFF))
v6_ints = st.one_of(st.integers(0, 2**128 - 1), st.integers(_V6_BASE, _V6_BASE + 2**20))
mapped_ints = st.integers(_MAPPED_BASE + _V4_BASE, _MAPPED_BASE + _V4_BASE + 0xFFFF)

networks = st.one_of(
    st.builds(
        lambda a, p: ipaddress.IPv4Network((a, p), strict=False), v4_ints, st.integers(0, 32)
    ),
    st.builds(
        lambda a, p: ipaddress.IPv6Network((a, p), strict=False), v6_ints, st.integers(0, 128)
    ),
    st.builds(
        lambda a, p: ipaddress.IPv6Network((a, p), strict=False), mapped_ints, st.integers(96, 128)
    ),
)
addresses = st.one_of(
    st.builds(ipaddress.IPv4Address, v4_ints),
    st.builds(ipaddress.IPv6Address, v6_ints),
    st.builds(ipaddress.IPv6Address, mapped_ints),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(networks, max_size=40), st.lists(addresses, min_size=1, max_size=20))
def test_prefix_index_agrees_with_brute_force(nets, addrs) -> None:
    index = PrefixIndex()
    for network in nets:
        index.add(network, normalize_network(network))
    # Also probe the addresses at the edges of every network.
    probes = list(addrs)
    for network in nets:
        probes += [network.network_address, network.broadcast_address]
    for address in probes:
        assert index.lookup(address) == _brute_force(nets, address), address


@given(
    st.builds(lambda a: str(ipaddress.IPv4Address(a)), v4_ints)
    | st.builds(lambda a: str(ipaddress.IPv6Address(a)), v6_ints | mapped_ints)
    | st.sampled_from(["01.2.3.4", " 1.2.3.4", "1.2.3.4 ", "1.2.3", "256.1.1.1", "0x1.2.3.4", ""])
    | st.text(alphabet="0123456789.:abcdefx ", max_size=20)
)
def test_the_ipv4_fast_path_is_parse_ip(text) -> None:
    """Snapshot lookups take ipv4_int where it answers; it answers only what parse_ip would."""
    fast = ipv4_int(text)
    if fast is not None:
        address = parse_ip(text)
        assert address.version == 4 and int(address) == fast
    elif text.count(".") == 3 and ":" not in text:
        assert parse_ip(text) is None or str(parse_ip(text)) != text


def test_prefix_index_rejects_duplicates_and_none() -> None:
    index = PrefixIndex()
    assert index.add(ipaddress.ip_network("10.0.0.0/8"), "a")
    assert not index.add(ipaddress.ip_network("10.0.0.0/8"), "b")
    assert index.lookup(ipaddress.ip_address("10.2.3.4")) == "a"
    assert len(index) == 1
    with pytest.raises(ValueError):
        index.add(ipaddress.ip_network("11.0.0.0/8"), None)


def test_normalize_network() -> None:
    assert normalize_network(ipaddress.ip_network("::ffff:192.0.2.0/120")) == (
        ipaddress.ip_network("192.0.2.0/24")
    )
    assert normalize_network(ipaddress.ip_network("::ffff:0:0/96")) == (
        ipaddress.ip_network("0.0.0.0/0")
    )
    wide = ipaddress.ip_network("::/64")
    assert normalize_network(wide) is wide

"""Tests of transforms.geo on real MaxMind DB files.

Three kinds of database are read with the real geoip2/libmaxminddb reader:
- MaxMind's own test databases (tests/fixtures/mmdb, see its README): Country, City, Enterprise;
- tiny databases written here with mmdb-writer (tests/support/mmdb.py), to control every network;
- the bundled pipelines/data/country.mmdb (IPFire Location data), for well-known addresses.
"""

from __future__ import annotations

import copy
import gc
import ipaddress
from pathlib import Path

import apache_beam as beam
import geoip2.database
import geoip2.errors
import maxminddb
import pytest
import yaml
from apache_beam.io.localfilesystem import LocalFileSystem
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to
from hypothesis import given
from hypothesis import strategies as st
from mmdb_writer import MMDBWriter
from netaddr import IPSet

import pipelines
from schemas.policy import (
    OTHER_REGION,
    UNKNOWN_REGION,
    default_policy_path,
    load_policy,
    parse_policy,
)
from tests.support.mmdb import (
    build_city_mmdb,
    build_country_mmdb,
    build_enterprise_mmdb,
    build_mmdb,
)
from tests.support.stages import on_records
from transforms import geo
from transforms.geo import (
    CountryLookup,
    Geolocate,
    GeolocateFn,
    lookup_address,
    open_lookup,
    shared_lookup,
)

# The regions are the policy's: geo holds no country list of its own.
POLICY = load_policy()
REGION_EEA_UK, REGION_OTHER, REGION_UNKNOWN = "EEA_UK", OTHER_REGION, UNKNOWN_REGION

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "mmdb"
MAXMIND_COUNTRY = FIXTURES / "GeoIP2-Country-Test.mmdb"
MAXMIND_CITY = FIXTURES / "GeoIP2-City-Test.mmdb"
MAXMIND_ENTERPRISE = FIXTURES / "GeoIP2-Enterprise-Test.mmdb"
BUNDLED = Path(pipelines.__file__).resolve().parent / "data" / "country.mmdb"

# Networks for the mmdb-writer databases. The non-public ones are *in* the database on purpose:
# the lookup must refuse them whatever a database says.
NETWORKS: dict[str, str | None] = {
    "81.2.69.0/24": "GB",
    "89.160.20.0/24": "SE",
    "11.0.0.0/8": "US",
    "12.0.0.0/8": None,  # in the database, no country
    "193.99.144.0/24": "DE",
    "2a02:d180::/29": "DE",
    "2a02:d000::/29": "CH",
    "10.0.0.0/8": "DE",
    "127.0.0.0/8": "DE",
    "192.168.0.0/16": "DE",
    "169.254.0.0/16": "DE",
    "100.64.0.0/10": "DE",
    "224.0.0.0/4": "DE",
    "fc00::/7": "DE",
    "fe80::/10": "DE",
    "ff00::/8": "DE",
}
BUILDERS = {
    "country": build_country_mmdb,
    "city": build_city_mmdb,
    "enterprise": build_enterprise_mmdb,
}


@pytest.fixture(scope="module")
def bundled() -> CountryLookup:
    lookup = CountryLookup(BUNDLED)
    yield lookup
    lookup.close()


@pytest.fixture(scope="module", params=sorted(BUILDERS))
def written_db(request, tmp_path_factory) -> Path:
    """A Country, City and Enterprise database written with mmdb-writer."""
    path = tmp_path_factory.mktemp("mmdb") / f"{request.param}.mmdb"
    return BUILDERS[request.param](path, NETWORKS)


# --- regions come from the policy ----------------------------------------------------------------


def test_geo_has_no_country_list_and_no_region_rule_of_its_own():
    assert not hasattr(geo, "region_for")
    assert not any(
        isinstance(value, frozenset | set) and {"DE", "FR"} <= value for value in vars(geo).values()
    )


@pytest.mark.parametrize(
    ("answer", "country", "region"),
    [
        ("DE", "DE", "EEA_UK"),
        ("UK", "GB", "EEA_UK"),  # the database's alias: one decision, the policy's
        ("EU", "EU", "EEA_UK"),
        ("CH", "CH", REGION_OTHER),
        ("ZZ", None, REGION_UNKNOWN),  # the bundled database's "unknown"
        ("AP", None, REGION_UNKNOWN),
        ("A1", None, REGION_UNKNOWN),
        ("XK", None, REGION_UNKNOWN),
    ],
)
def test_database_answers_are_placed_by_the_policy(tmp_path, answer, country, region):
    db = build_mmdb(
        tmp_path / "answers.mmdb",
        {"11.0.0.0/8": {"country": {"iso_code": answer}}},
        "GeoLite2-Country",
    )
    fn = GeolocateFn(str(db), POLICY, cache_size=4)
    fn.setup()
    ((out,),) = fn.process([_visit("v", ip="11.1.2.3")])
    assert (out["country"], out["region"]) == (country, region)


def test_the_bundled_database_answers_zz_somewhere_and_it_is_unknown(bundled):
    """The IPFire data labels a few ranges ZZ; such a visitor cannot be placed."""
    reader = maxminddb.open_database(str(BUNDLED))
    zz = next(net for net, rec in reader if (rec or {}).get("country", {}).get("iso_code") == "ZZ")
    ip = str(zz.network_address)
    assert bundled.country(ip) == "ZZ"
    assert POLICY.region_for(bundled.country(ip)) == REGION_UNKNOWN


def test_geo_labels_by_the_policys_region_names(written_db):
    """A policy that declares another restricted region: geo names it, counts it under its own
    name, and no longer calls its countries EEA_UK or OTHER."""
    doc = yaml.safe_load(Path(default_policy_path()).read_text())
    doc["regions"] = {"CH_FADP": {"restricted": True, "countries": ["CH"]}, **doc["regions"]}
    forbidden = doc["categories"]["corporate_visitor_info"]["restrictions"][
        "forbidden_fields_in_regions"
    ]
    forbidden["CH_FADP"] = list(forbidden["EEA_UK"])
    policy = parse_policy(doc)
    with TestPipeline(runner="FnApiRunner") as pipeline:
        visits = pipeline | beam.Create(
            [_visit("ch", ip="2a02:d000::1"), _visit("gb", ip="81.2.69.1")]
        )
        located = on_records(visits, Geolocate(str(written_db), policy, cache_size=8)) | beam.Map(
            lambda r: (r["event_id"], r["region"])
        )
        assert_that(located, equal_to([("ch", "CH_FADP"), ("gb", REGION_EEA_UK)]))
    result = pipeline.result
    counters = {
        c.key.metric.name: c.committed
        for c in result.metrics().query(MetricsFilter().with_namespace("compliance"))["counters"]
    }
    assert counters == {"region.ch_fadp": 1, "region.eea_uk": 1}


# --- CountryLookup on MaxMind's test databases -------------------------------------------------


@pytest.mark.parametrize(
    ("db", "ip", "expected"),
    [
        (MAXMIND_COUNTRY, "2.125.160.218", "GB"),  # registered_country FR: not used
        (MAXMIND_COUNTRY, "81.2.69.142", "GB"),
        (MAXMIND_COUNTRY, "89.160.20.112", "SE"),
        (MAXMIND_COUNTRY, "217.65.48.3", "GI"),
        (MAXMIND_COUNTRY, "2a02:d180::1", "DE"),
        (MAXMIND_COUNTRY, "2a02:cfc0::1", "FR"),
        (MAXMIND_COUNTRY, "2a02:d000::1", "CH"),
        (MAXMIND_COUNTRY, "214.1.1.1", None),  # record with traits only
        (MAXMIND_COUNTRY, "2a02:d500::1", None),  # record with continent only
        (MAXMIND_COUNTRY, "1.2.3.4", None),  # not in the database
        (MAXMIND_CITY, "81.2.69.160", "GB"),
        (MAXMIND_CITY, "89.160.20.129", "SE"),
        (MAXMIND_CITY, "2001:480:10::1", "US"),
        (MAXMIND_CITY, "2a02:d180::1", "DE"),
        (MAXMIND_CITY, "2.3.3.1", None),  # record without country
        (MAXMIND_CITY, "1.2.3.4", None),
        (MAXMIND_ENTERPRISE, "2.125.160.216", "GB"),
        (MAXMIND_ENTERPRISE, "128.101.101.101", "US"),
        (MAXMIND_ENTERPRISE, "74.209.24.0", "US"),
        (MAXMIND_ENTERPRISE, "2001:219::1", "SE"),
        (MAXMIND_ENTERPRISE, "5.83.124.1", None),  # only registered_country RO: not used
        (MAXMIND_ENTERPRISE, "1.2.3.4", None),
    ],
)
def test_maxmind_test_databases(db, ip, expected):
    with CountryLookup(db) as lookup:
        assert lookup.country(ip) == expected


@pytest.mark.parametrize(
    ("db", "db_type"),
    [
        (MAXMIND_COUNTRY, "GeoIP2-Country"),
        (MAXMIND_CITY, "GeoIP2-City"),
        (MAXMIND_ENTERPRISE, "GeoIP2-Enterprise"),
    ],
)
def test_dispatch_follows_the_database_type(db, db_type):
    with CountryLookup(db) as lookup:
        assert lookup.database_type == db_type
        assert lookup.uses_c_extension
        # the IPv4-mapped form of a MaxMind IPv4 network resolves as the IPv4 address
        assert lookup.country("::ffff:2.125.160.216") == "GB"


def test_geoip2_itself_refuses_country_on_a_city_database():
    # Why the dispatch exists: Reader.country() on a City database raises TypeError.
    with geoip2.database.Reader(str(MAXMIND_CITY)) as reader, pytest.raises(TypeError):
        reader.country("81.2.69.160")


def test_a_database_without_country_data_is_refused(tmp_path):
    asn = build_mmdb(
        tmp_path / "asn.mmdb", {"11.0.0.0/8": {"autonomous_system_number": 1}}, "GeoLite2-ASN"
    )
    with pytest.raises(ValueError, match="GeoLite2-ASN"):
        CountryLookup(asn)


def test_c_extension_is_in_use():
    assert geo.c_extension_available()


# --- CountryLookup on mmdb-writer databases -----------------------------------------------------


@pytest.mark.parametrize(
    ("ip", "expected"),
    [
        ("81.2.69.142", "GB"),
        ("89.160.20.1", "SE"),
        ("11.22.33.44", "US"),
        ("193.99.144.80", "DE"),
        ("2a02:d180::1", "DE"),
        ("2a02:d187:ffff:ffff:ffff:ffff:ffff:ffff", "DE"),  # last of the /29
        ("2a02:d188::", None),  # just after it
        ("2a02:d000::abcd", "CH"),
        ("12.0.0.1", None),  # record without country
        ("13.0.0.1", None),  # not found
        ("2a03::1", None),  # not found
    ],
)
def test_written_databases(written_db, ip, expected):
    with CountryLookup(written_db) as lookup:
        assert lookup.country(ip) == expected


@pytest.mark.parametrize("db_type", ["GeoLite2-Country", "GeoLite2-City", "GeoIP2-Precision-City"])
def test_other_database_type_names(tmp_path, db_type):
    builder = build_city_mmdb if "City" in db_type else build_country_mmdb
    db = builder(tmp_path / "x.mmdb", {"81.2.69.0/24": "GB"}, database_type=db_type)
    with CountryLookup(db) as lookup:
        assert lookup.database_type == db_type
        assert lookup.country("81.2.69.1") == "GB"


@pytest.mark.parametrize(
    "ip",
    [
        "10.0.0.1",
        "10.255.255.255",
        "192.168.1.1",
        "172.16.5.4",
        "127.0.0.1",
        "169.254.1.1",
        "100.64.0.1",  # carrier-grade NAT
        "0.0.0.0",
        "224.0.0.1",
        "239.255.255.250",
        "255.255.255.255",
        "192.0.2.1",  # documentation
        "::1",
        "::",
        "fc00::1",
        "fd12:3456:789a::1",
        "fe80::1",
        "ff02::1",
        "2001:db8::1",
        "::ffff:10.0.0.1",
        "::ffff:127.0.0.1",
        "::ffff:192.168.0.1",
        "2002:0a00:0001::1",  # 6to4 wrapping 10.0.0.1
    ],
)
def test_non_public_addresses_are_never_looked_up(written_db, ip):
    # These networks are in the written database with a country: the answer must still be None.
    with CountryLookup(written_db) as lookup:
        assert lookup.country(ip) is None


# The ranges this Python's stdlib calls global that no database can place either; everywhere
# else geo's table decides as ``ipaddress``'s properties do (see transforms/geo.py on why a table).
STDLIB_CALLS_GLOBAL = [
    ipaddress.ip_network(n)
    for n in (
        "192.0.0.0/24",  # IETF protocol assignments: the stdlib lists a /29 and a /31 of it
        "192.88.99.0/24",  # deprecated 6to4 relay anycast (RFC 7526)
        "2001::/23",  # IETF protocol assignments: Pythons from 3.12.4 call parts of it global
        "3fff::/20",  # documentation (RFC 9637): Pythons before 3.13 do not list it
    )
]


def _stdlib_cannot_place(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    """The stdlib's properties (and the ranges above), after the unwrapping geo does."""
    if address.version == 6 and (address.ipv4_mapped or address.sixtofour):
        address = address.ipv4_mapped or address.sixtofour
    return (
        not address.is_global
        or address.is_reserved
        or address.is_multicast
        or (address.version == 6 and address.is_site_local)
        or any(address in n for n in STDLIB_CALLS_GLOBAL if n.version == address.version)
    )


def _table_boundaries() -> list[ipaddress.IPv4Address | ipaddress.IPv6Address]:
    """First and last address of every range of geo's table, and their neighbours."""
    found = []
    for cidr in geo.NON_PUBLIC_V4 + geo.NON_PUBLIC_V6:
        net = ipaddress.ip_network(cidr)
        first, last = int(net.network_address), int(net.broadcast_address)
        near = (first - 1, first, first + 1, last - 1, last, last + 1)
        kind = type(net.network_address)
        found += [kind(i) for i in near if 0 <= i < 2**net.max_prefixlen]
    return found


@pytest.mark.parametrize("address", _table_boundaries(), ids=str)
def test_the_table_decides_as_the_stdlib_at_its_boundaries(address):
    assert (lookup_address(str(address)) is None) == _stdlib_cannot_place(address)


@given(st.ip_addresses())
def test_the_table_decides_as_the_stdlib(address):
    assert (lookup_address(str(address)) is None) == _stdlib_cannot_place(address)


@pytest.mark.parametrize(
    "ip",
    [
        "",
        " ",
        "not an ip",
        "81.2.69",
        "81.2.69.142.1",
        "256.1.1.1",
        "81.2.69.142/32",
        " 81.2.69.142",
        "81.2.69.142 ",
        "081.2.69.142",
        "0x51.2.69.142",
        "1366054798",  # integer form of 81.2.69.142
        "::ffff:",
        "gggg::1",
        "2a02:d180::1::1",
        "2a02:d180::1%eth0",
        "81.2.69.142\x00",
        "\ud800",
        None,
        1366054798,
        b"81.2.69.142",
        ["81.2.69.142"],
    ],
)
def test_invalid_input_is_none(written_db, ip):
    with CountryLookup(written_db) as lookup:
        assert lookup.country(ip) is None


def test_ipv4_mapped_ipv6_is_looked_up_as_ipv4(written_db):
    # The written databases have no ::ffff:0:0/96 alias (unlike MaxMind's and the bundled one),
    # so only the unwrapping in CountryLookup can find these.
    with maxminddb.open_database(str(written_db)) as raw:
        assert raw.get("::ffff:81.2.69.142") is None
        assert raw.get("81.2.69.142") is not None
    with CountryLookup(written_db) as lookup:
        assert lookup.country("::ffff:81.2.69.142") == "GB"
        assert lookup.country("::FFFF:5102:458e") == "GB"  # same address, hex form
        assert lookup.country("0:0:0:0:0:ffff:11.1.2.3") == "US"


def test_6to4_is_looked_up_as_the_embedded_ipv4(written_db):
    with CountryLookup(written_db) as lookup:
        assert lookup.country("2002:5102:458e::1") == "GB"  # 81.2.69.142


def test_ipv6_against_an_ipv4_only_database_is_none(tmp_path):
    path = tmp_path / "v4.mmdb"
    writer = MMDBWriter(ip_version=4, database_type="GeoIP2-Country")
    writer.insert_network(IPSet(["81.2.69.0/24"]), {"country": {"iso_code": "GB"}})
    writer.to_db_file(str(path))
    with CountryLookup(path) as lookup:
        assert lookup.country("81.2.69.1") == "GB"
        assert lookup.country("2a02:d180::1") is None


# --- cache -------------------------------------------------------------------------------------


def test_one_cached_answer_per_address_and_the_same_answers(written_db):
    ips = ["81.2.69.142", "10.0.0.1", "nonsense", "2a02:d180::1", "13.0.0.1"] * 3
    with CountryLookup(written_db, cache_size=0) as plain, CountryLookup(written_db, 8) as cached:
        assert [cached.country(ip) for ip in ips] == [plain.country(ip) for ip in ips]
        assert cached.countries(ips) == [plain.country(ip) for ip in ips]
        assert cached.cached() == 5 and plain.cached() == 0


def test_negative_cache_size_is_refused(written_db):
    with pytest.raises(ValueError, match="cache_size"):
        CountryLookup(written_db, cache_size=-1)


# --- the bundled database ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("ip", "expected"),
    [
        ("8.8.8.8", "US"),  # Google Public DNS
        ("2001:4860:4860::8888", "US"),
        ("::ffff:8.8.8.8", "US"),
        ("193.99.144.80", "DE"),  # heise.de
        ("2a01:4f8::1", "DE"),  # Hetzner
        ("212.27.48.10", "FR"),  # free.fr
        ("212.58.244.20", "GB"),  # BBC
        ("130.59.31.80", "CH"),  # SWITCH
        ("2001:620::1", "CH"),  # SWITCH
        ("91.198.174.192", "NL"),  # Wikimedia Amsterdam
    ],
)
def test_bundled_database_well_known_addresses(bundled, ip, expected):
    assert bundled.country(ip) == expected


def test_bundled_database_is_readable_by_plain_geoip2():
    with geoip2.database.Reader(str(BUNDLED), mode=geoip2.database.MODE_MMAP_EXT) as reader:
        meta = reader.metadata()
        assert meta.database_type == "GeoLite2-Country"
        assert "IPFire" in meta.description["en"]
        assert reader.country("8.8.8.8").country.iso_code == "US"
        # IPv4-mapped addresses are aliased in the file itself, too
        assert reader.country("::ffff:193.99.144.80").country.iso_code == "DE"


def test_bundled_database_regions(bundled):
    def region(ip: str) -> str:
        return POLICY.region_for(bundled.country(ip))

    assert region("193.99.144.80") == REGION_EEA_UK
    assert region("212.58.244.20") == REGION_EEA_UK
    assert region("130.59.31.80") == REGION_OTHER
    assert region("8.8.8.8") == REGION_OTHER
    assert region("192.168.0.1") == REGION_UNKNOWN


# --- shared_lookup -----------------------------------------------------------------------------


class _PrefixedLocalFileSystem(LocalFileSystem):
    """A real Beam filesystem with a URL scheme (like gs://), backed by local files."""

    PREFIX = "geotestfs://"

    @classmethod
    def scheme(cls) -> str:
        return "geotestfs"

    def open(self, path, mime_type="application/octet-stream", compression_type="auto"):
        return super().open(path.removeprefix(self.PREFIX), mime_type, compression_type)


def test_shared_lookup_is_one_reader_per_process_for_its_path_and_cache_size(written_db):
    first = shared_lookup(str(written_db), 16)
    assert shared_lookup(str(written_db), 16) is first
    assert first.path == str(written_db) and first.cache_size == 16
    other = shared_lookup(str(written_db), 32)
    assert other is not first and other.cache_size == 32
    assert first.country("81.2.69.142") == "GB"  # a lookup handed out stays usable


def test_geolocate_stages_of_a_process_share_one_reader(written_db):
    fns = [GeolocateFn(str(written_db), POLICY, cache_size=4) for _ in range(3)]
    for i, fn in enumerate(fns):
        fn.setup()
        list(fn.process([_visit(f"v{i}", ip=f"81.2.69.{i}")]))
    assert shared_lookup(str(written_db), 4).cached() == 3  # each stage's answer, in one cache


def test_a_remote_database_is_copied_once_per_reader_and_goes_with_it(written_db):
    remote = _PrefixedLocalFileSystem.PREFIX + str(written_db)
    lookup = shared_lookup(remote, 16)
    local = Path(lookup.path)
    assert local != written_db
    assert local.read_bytes() == written_db.read_bytes()
    assert lookup.country("81.2.69.142") == "GB"
    assert shared_lookup(remote, 16) is lookup
    copy_of_another = open_lookup(remote, 8)
    second = Path(copy_of_another.path)
    assert second != local and second.exists()
    del copy_of_another
    gc.collect()
    assert not second.exists()  # the copy went with its reader


def test_shared_lookup_missing_file_fails_loudly(tmp_path):
    with pytest.raises(FileNotFoundError):
        shared_lookup(str(tmp_path / "missing.mmdb"))


# --- the Beam transform ------------------------------------------------------------------------


def _visit(event_id: str, **fields: object) -> dict[str, object]:
    return {"event_id": event_id, "url": "https://example.com/", "session_id": "s", **fields}


VISITS = [
    _visit("gb", ip="81.2.69.142"),
    _visit("gb-mapped", ip="::ffff:81.2.69.142"),
    _visit("de6", ip="2a02:d180::1"),
    _visit("us", ip="11.0.0.1"),
    _visit("ch", ip="2a02:d000::1"),
    _visit("private", ip="10.1.2.3"),
    _visit("no-country", ip="12.0.0.1"),
    _visit("not-found", ip="13.0.0.1"),
    _visit("garbage", ip="not an ip"),
    _visit("none", ip=None),
    _visit("missing"),
]
EXPECTED = {
    "gb": ("GB", REGION_EEA_UK),
    "gb-mapped": ("GB", REGION_EEA_UK),
    "de6": ("DE", REGION_EEA_UK),
    "us": ("US", REGION_OTHER),
    "ch": ("CH", REGION_OTHER),
    "private": (None, REGION_UNKNOWN),
    "no-country": (None, REGION_UNKNOWN),
    "not-found": (None, REGION_UNKNOWN),
    "garbage": (None, REGION_UNKNOWN),
    "none": (None, REGION_UNKNOWN),
    "missing": (None, REGION_UNKNOWN),
}


def test_geolocate_composite(written_db):
    originals = copy.deepcopy(VISITS)
    expected = [
        {
            **visit,
            "country": EXPECTED[visit["event_id"]][0],
            "region": EXPECTED[visit["event_id"]][1],
        }
        for visit in VISITS
    ]
    pipeline = TestPipeline(runner="FnApiRunner")
    visits = pipeline | "Create" >> beam.Create(VISITS)
    located = on_records(visits, Geolocate(str(written_db), POLICY), "Geolocate")
    assert_that(located, equal_to(expected))
    # The same elements feed both branches in a fused stage: a mutation would show here.
    assert_that(visits, equal_to(originals), label="InputsUnchanged")
    result = pipeline.run()
    result.wait_until_finish()

    counters = {
        c.key.metric.name: c.committed
        for c in result.metrics().query(MetricsFilter().with_namespace("compliance"))["counters"]
    }
    assert counters == {"region.eea_uk": 3, "region.other": 2, "region.unknown": 6}
    assert originals == VISITS


def test_geolocate_fn_yields_a_new_dict(written_db):
    fn = GeolocateFn(str(written_db), POLICY, cache_size=4)
    fn.setup()
    record = _visit("gb", ip="81.2.69.142")
    before = copy.deepcopy(record)
    ((out,),) = fn.process([record])
    assert record == before
    assert out is not record
    assert out == {**before, "country": "GB", "region": REGION_EEA_UK}


def test_geolocate_label_and_parameters(written_db):
    transform = Geolocate(str(written_db), POLICY, cache_size=8)
    with TestPipeline(runner="FnApiRunner") as pipeline:
        visits = pipeline | beam.Create(
            [_visit("ch", ip="2a02:d000::1"), _visit("gb", ip="81.2.69.1")]
        )
        located = on_records(visits, transform, "Geolocate") | beam.Map(
            lambda r: (r["event_id"], r["region"])
        )
        assert_that(located, equal_to([("ch", REGION_OTHER), ("gb", REGION_EEA_UK)]))
    assert _has_label(pipeline, "Geolocate/LookupCountry")


def _has_label(pipeline: beam.Pipeline, label: str) -> bool:
    labels: set[str] = set()

    class _Collect(beam.pipeline.PipelineVisitor):
        def visit_transform(self, node):
            labels.add(node.full_label)

        def enter_composite_transform(self, node):
            labels.add(node.full_label)

    pipeline.visit(_Collect())
    return label in labels


# --- properties --------------------------------------------------------------------------------

IP_LIKE = st.one_of(
    st.text(),
    st.text(alphabet="0123456789abcdefABCDEF:.%/ x", max_size=45),
    st.ip_addresses().map(str),
    st.ip_addresses(v=4).map(lambda a: f"::ffff:{a}"),
    st.ip_addresses(v=6).map(lambda a: a.exploded),
)


@given(IP_LIKE)
def test_any_string_gives_none_or_a_two_letter_code(bundled, ip):
    code = bundled.country(ip)
    assert code is None or (len(code) == 2 and code.isascii() and code.isupper())


@given(st.ip_addresses(v=4))
def test_ipv4_mapped_gives_the_same_answer_as_ipv4(bundled, addr):
    assert bundled.country(f"::ffff:{addr}") == bundled.country(str(addr))


@given(st.ip_addresses(network="10.0.0.0/8") | st.ip_addresses(network="fc00::/7"))
def test_private_ranges_are_none(bundled, addr):
    assert bundled.country(str(addr)) is None


@pytest.mark.parametrize(
    ("path", "method"),
    [(MAXMIND_COUNTRY, "country"), (MAXMIND_CITY, "city"), (MAXMIND_ENTERPRISE, "enterprise")],
)
def test_lookups_agree_with_geoip2_models(path, method):
    """CountryLookup reads maxminddb's records directly (geoip2's models cost more than the
    lookup): for every network of MaxMind's test databases, the country is geoip2's."""
    lookup = CountryLookup(path, cache_size=0)
    with geoip2.database.Reader(str(path)) as reader:
        networks = [n for n, _ in maxminddb.open_database(str(path))]
        for network in networks:
            ip = str(network.network_address)
            if lookup_address(ip) != ip:
                continue  # non-public ranges are UNKNOWN on purpose, whatever the file says
            try:
                expected = getattr(reader, method)(ip).country.iso_code
            except geoip2.errors.AddressNotFoundError:
                expected = None
            assert lookup.country(ip) == expected, ip
    lookup.close()

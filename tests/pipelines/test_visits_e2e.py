"""End to end: the visits CLI on real files, outputs read back with pyarrow and fastavro.

A small country database (mmdb-writer) and AroundDeal snapshot are built for the test so every
region case is pinned: EEA (DE, FR), EEA-not-EU (IS), an outermost region (GF), the UK, Switzerland
and other non-EEA countries (CH, RS, US, JP), a network without a country, a private and an
unlisted address, and IPv4-mapped IPv6 spellings; and companies whose country is spelt the way
data sources spell it (UK, EL, FX) outside the EEA visitors' networks.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import fastavro
import pytest

from schemas.avro import load_avsc
from schemas.policy import load_policy
from tests.support.arounddeal_server import Action, AroundDealServer
from tests.support.outputs import decoded_text, read_rows, run_cli
from tests.support.visit_fixture import write_country_db, write_snapshot

pytestmark = pytest.mark.e2e

CONTACT = load_policy().category("corporate_visitor_info").field_groups["contact"]
SECRETS = ("hunter2-SECRET", "eJyrVkrxUSERSIG", "BEGIN-PRIVATE-KEY-XYZ")
# event_id -> (ip, expected region)
VISITORS = {
    "de": ("2.16.0.5", "EEA_UK"),
    "is": ("2.17.0.5", "EEA_UK"),
    "gf": ("2.18.0.5", "EEA_UK"),
    "gb": ("2.19.0.5", "EEA_UK"),
    "fr6": ("2a01:4f8:1::5", "EEA_UK"),
    "de-mapped": ("::ffff:2.16.0.6", "EEA_UK"),
    "ch": ("2.20.0.5", "OTHER"),
    "rs": ("2.21.0.5", "OTHER"),
    "us": ("2.22.0.5", "OTHER"),
    "jp6": ("2400:cb00:2::5", "OTHER"),
    "us-mapped": ("::ffff:2.22.0.6", "OTHER"),
    "us-de-company": ("2.22.5.5", "OTHER"),
    "us-uk-company": ("2.22.6.5", "OTHER"),
    "us-el-company": ("2.22.7.5", "OTHER"),
    "us-fx-company": ("2.22.8.5", "OTHER"),
    "no-country": ("2.23.0.5", "UNKNOWN"),
    "private": ("10.0.0.5", "UNKNOWN"),
    "unlisted": ("198.51.100.7", "UNKNOWN"),
    "private6": ("fd00::5", "UNKNOWN"),
}

# Companies of the EEA/UK as sources spell them, in US networks (appended to the shared snapshot).
SPELT_COMPANIES = {"2.22.6.0/24": "UK", "2.22.7.0/24": "EL", "2.22.8.0/24": "FX"}
RESTRICTED_COMPANIES = {"us-de-company", "us-uk-company", "us-el-company", "us-fx-company"}

SNAPSHOT_MATCHES = {
    "ch",
    "us",
    "jp6",
    "us-mapped",
    "us-de-company",
    "us-uk-company",
    "us-el-company",
    "us-fx-company",
    "de",
    "de-mapped",
    "no-country",
}


def contact_of(event_id: str) -> dict[str, str]:
    return {
        "contact_name": f"Name {event_id}",
        "business_email": f"{event_id}@input-contact.example",
        "job_title": "CTO",
    }


def contacts_kept(event_id: str) -> bool:
    """The rule: contacts only for an OTHER visitor of a company whose country is known and
    not restricted (the snapshot knows the company; nothing else says where it is)."""
    region = VISITORS[event_id][1]
    return (
        region == "OTHER" and event_id in SNAPSHOT_MATCHES and event_id not in RESTRICTED_COMPANIES
    )


def write_inputs(tmp: Path) -> dict[str, Path]:
    mmdb = write_country_db(tmp / "country.mmdb")
    snapshot = write_snapshot(tmp / "snapshot.csv")
    with snapshot.open("a", newline="") as fh:
        writer = csv.writer(fh)
        for i, (network, country) in enumerate(SPELT_COMPANIES.items(), start=100):
            contact = [f"snap-{c}-{i}" for c in CONTACT]
            writer.writerow([network, f"Company {i}", f"c{i}.example", "x", country, "1", *contact])
    visits = []
    for event_id, (ip, _region) in VISITORS.items():
        visits.append(
            {
                "event_id": event_id,
                "ip": ip,
                "visited_at": "2026-10-05T23:30:00+08:00",
                "url": "https://trtc.example.com/",
                **contact_of(event_id),
            }
        )
    visits.append(
        {"event_id": "early", "ip": "2.22.0.7", "visited_at": "2026-10-06T01:30:00+08:00"}
    )
    visits.append({"event_id": "millis", "ip": "2.22.0.8", "visited_at": 1791214200000})
    visits.append({"event_id": "naive", "ip": "2.22.0.9", "visited_at": "2026-10-05T15:30:00"})
    visits.append(
        {
            "event_id": "secrets",
            "ip": "2.22.0.10",
            "visited_at": "2026-10-05T15:30:00Z",
            "password": SECRETS[0],
            "user_sig": SECRETS[1],
            "private_key": SECRETS[2],
        }
    )
    lines = [json.dumps(v).encode() for v in visits] + [
        json.dumps({"event_id": "bad-ip", "ip": "300.1.1.1", "visited_at": 1}).encode(),
        json.dumps({"ip": "2.22.0.1", "visited_at": 1}).encode(),
        json.dumps({"event_id": "no-ip", "visited_at": 1}).encode(),
        json.dumps({"event_id": "no-time", "ip": "2.22.0.1"}).encode(),
        json.dumps({"event_id": "bad-time", "ip": "2.22.0.1", "visited_at": "soon"}).encode(),
        json.dumps({"event_id": "bad-type", "ip": "2.22.0.1", "visited_at": 1, "url": 5}).encode(),
        b'{"event_id": "truncated", "password": "' + SECRETS[0].encode() + b'", "ip": ',
        b"[1, 2]",
        b"",
        b'{"event_id": "latin1", "url": "caf\xe9"}',
    ]
    (tmp / "visits.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    return {"mmdb": mmdb, "snapshot": tmp / "snapshot.csv", "visits": tmp / "visits.jsonl"}


@pytest.fixture(scope="module")
def visits_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("visits")
    inputs = write_inputs(tmp)
    out = tmp / "out"
    done = run_cli(
        "pipelines.visits",
        f"--input={inputs['visits']}",
        f"--output={out}",
        f"--geoip_db={inputs['mmdb']}",
        f"--enrichment_snapshot={inputs['snapshot']}",
        "--format=both",
    )
    return out, done, inputs


def by_id(rows, category):
    return {r["event_id"]: r for r in rows if r["data_category"] == category}


def test_report_reconciles_and_is_printed(visits_run):
    out, done, _ = visits_run
    (report_path,) = out.glob("_reports/visits-*.json")
    report = json.loads(report_path.read_text())
    counts = report["counts"]
    assert counts["read"] == len(VISITORS) + 4 + 10
    assert counts["written"]["website_visit"] == len(VISITORS) + 4
    assert counts["dead_lettered_total"] == 10
    assert report["reconciliation"]["reconciled"] is True
    assert report["policy_version"].startswith("sha256:")
    assert "reconciled=True" in done.stdout


@pytest.mark.parametrize("fmt", ["parquet", "avro"])
def test_regions_and_contact_suppression(visits_run, fmt):
    out, _, _ = visits_run
    rows = read_rows(out)[fmt]
    visits = by_id(rows, "website_visit")
    corporate = by_id(rows, "corporate_visitor_info")
    for event_id, (_ip, region) in VISITORS.items():
        assert visits[event_id]["region"] == region, event_id
        row = corporate.get(event_id)
        if contacts_kept(event_id):
            assert row["business_email"] == f"{event_id}@input-contact.example"
            # input wins; the other contact fields are enriched
            assert row["business_phone"].startswith("snap-") and row["company_name"]
        else:
            assert row is None or all(row[c] is None for c in CONTACT), event_id
    assert visits["de-mapped"]["country"] == "DE" and visits["us-mapped"]["country"] == "US"
    assert visits["no-country"]["country"] is None
    # restricted visitor: company data only
    assert corporate["de"]["company_name"] == "Company 0"
    # unrestricted visitor of an EEA company: company data, no contact at all (input's included)
    assert corporate["us-de-company"]["company_country"] == "DE"
    # companies spelt UK, EL, FX are the EEA/UK: no contact, no direct marketing, 180 days
    for event_id in ("us-uk-company", "us-el-company", "us-fx-company"):
        row = corporate[event_id]
        assert row["company_name"].startswith("Company 10"), event_id
        assert "direct_marketing" not in row["purposes"], event_id
        assert row["retention_rule"] == "fixed_180d" and row["expires_at"] is not None
    # an OTHER visitor whose company nobody knows keeps no contact of its own either
    assert "rs" not in corporate
    # a visit without any company or contact data has no corporate row
    assert "private" not in corporate and "unlisted" not in corporate


def test_contacts_without_a_known_company_country_are_counted(visits_run):
    out, _, _ = visits_run
    (report_path,) = out.glob("_reports/visits-*.json")
    report = json.loads(report_path.read_text())
    unknown = [
        e for e, (_ip, region) in VISITORS.items() if region == "OTHER" and not contacts_kept(e)
    ]
    unknown = [e for e in unknown if e not in RESTRICTED_COMPANIES]
    assert unknown == ["rs"]
    assert report["suppressed"]["company_country_unknown"] == len(unknown)
    # the snapshot's rows of companies in the EEA/UK (DE twice, UK, EL, FX) were never loaded
    assert report["enrichment"]["snapshot_contact_rows_dropped"] == 5


def test_restricted_contacts_never_anywhere(visits_run):
    out, _, _ = visits_run
    text = decoded_text(out)
    for event_id in VISITORS:
        if not contacts_kept(event_id):
            assert f"{event_id}@input-contact.example" not in text, event_id
    assert "snap-business_email-0" not in text  # DE company's contacts, for a DE visitor
    assert "snap-business_email-3" not in text  # DE company's contacts, for a US visitor
    for i in (100, 101, 102):  # the UK, EL and FX companies' contacts
        assert f"snap-business_email-{i}" not in text


def test_secrets_never_anywhere(visits_run):
    out, _, _ = visits_run
    text = decoded_text(out)
    for secret in SECRETS:
        assert secret not in text
    rows = read_rows(out)["parquet"]
    assert not {"password", "user_sig", "private_key"} & set().union(*(r.keys() for r in rows))


def test_tags_expiry_and_partitions(visits_run):
    out, _, _ = visits_run
    rows = read_rows(out)["parquet"]
    visits = by_id(rows, "website_visit")
    # 23:30 at +08:00 is 15:30 UTC the same day: 2026-10-05 + 180 days = 2027-04-03
    assert visits["us"]["dir_expiry"] == "2027-04-03"
    # 01:30 at +08:00 on the 6th is the 5th in UTC: same partition
    assert visits["early"]["dir_expiry"] == "2027-04-03"
    assert visits["millis"]["dir_expiry"] == visits["naive"]["dir_expiry"] == "2027-04-03"
    for row in rows:
        assert row["dir_category"] == row["data_category"]
        expected = (
            row["expires_at"].date().isoformat() if row["expires_at"] is not None else "9999-12-31"
        )
        assert row["dir_expiry"] == expected
        assert row["policy_version"].startswith("sha256:")
    us = visits["us"]
    assert us["purposes"] == ["data_analytics", "feature_improvement"]
    assert us["legal_basis"] == "legitimate_interest" and us["retention_rule"] == "fixed_180d"
    assert str(us["visited_at"]) == "2026-10-05 15:30:00+00:00"
    corporate = by_id(rows, "corporate_visitor_info")
    assert corporate["us"]["retention_rule"] == "until_opt_out"
    assert corporate["us"]["dir_expiry"] == "9999-12-31"
    assert "direct_marketing" not in corporate["de"]["purposes"]


def test_parquet_and_avro_agree(visits_run):
    out, _, _ = visits_run
    rows = read_rows(out)

    def key(r):
        return (r["data_category"], r["event_id"])

    parquet = {key(r): r for r in rows["parquet"]}
    avro = {key(r): r for r in rows["avro"]}
    assert parquet.keys() == avro.keys()
    for k, row in parquet.items():
        assert row == avro[k], k


def test_dead_letters_have_every_reason(visits_run):
    out, _, _ = visits_run
    letters = [
        json.loads(line)
        for p in out.glob("_dead_letter/source=visits/expiry_date=*/*.jsonl")
        for line in p.read_text().splitlines()
    ]
    assert sorted(d["error"] for d in letters) == sorted(
        [
            "malformed_field:ip",
            "missing_field:event_id",
            "missing_field:ip",
            "missing_field:visited_at",
            "malformed_timestamp:visited_at",
            "malformed_field:url",
            "invalid_json",
            "not_an_object",
            "empty_line",
            "invalid_encoding",
        ]
    )
    assert {p.parent.name for p in out.glob("_dead_letter/source=visits/*/*")} == {
        "expiry_date=2026-12-13"  # run time + 14 days
    }
    assert all(d["stage"] == "parse" and d["source"] == "visits" for d in letters)
    by_error = {d["error"]: d for d in letters}
    assert by_error["malformed_timestamp:visited_at"]["event_id"] == "bad-time"
    # A line that does not parse keeps nothing but the id a bounded scan finds, and its summary.
    truncated = by_error["invalid_json"]
    assert truncated["event_id"] == "truncated" and truncated["raw"] is None
    assert truncated["raw_bytes"] > 0 and len(truncated["raw_sha256"]) == 64


def test_avro_input_gives_the_same_visits(visits_run, tmp_path):
    out, _, inputs = visits_run
    schema = fastavro.parse_schema(load_avsc("visit_input"))
    records = []
    for line in inputs["visits"].read_bytes().splitlines():
        try:
            obj = json.loads(line)
        except ValueError:
            continue
        if (
            isinstance(obj, dict)
            and {"event_id", "ip", "visited_at"} <= obj.keys()
            and obj["event_id"] not in ("bad-ip", "bad-time", "bad-type")
        ):
            records.append({k: obj.get(k) for k in (f["name"] for f in schema["fields"])})
    avro_in = tmp_path / "visits.avro"
    with avro_in.open("wb") as fh:
        fastavro.writer(fh, schema, records)
    out2 = tmp_path / "out"
    run_cli(
        "pipelines.visits",
        f"--input={avro_in}",
        f"--output={out2}",
        f"--geoip_db={inputs['mmdb']}",
        f"--enrichment_snapshot={inputs['snapshot']}",
    )
    first = {
        r["event_id"]: r for r in read_rows(out)["parquet"] if r["data_category"] == "website_visit"
    }
    second = {
        r["event_id"]: r
        for r in read_rows(out2)["parquet"]
        if r["data_category"] == "website_visit"
    }
    assert second.keys() == first.keys()
    for event_id, row in second.items():
        assert row == first[event_id]


def test_reruns_give_the_same_rows(visits_run, tmp_path):
    """Deterministic output: a rerun into a fresh directory writes the same rows."""
    out, _, inputs = visits_run
    rerun = tmp_path / "rerun"
    run_cli(
        "pipelines.visits",
        f"--input={inputs['visits']}",
        f"--output={rerun}",
        f"--geoip_db={inputs['mmdb']}",
        f"--enrichment_snapshot={inputs['snapshot']}",
    )

    def rows(root):
        return sorted(
            json.dumps(r, sort_keys=True, default=str) for r in read_rows(root)["parquet"]
        )

    assert rows(rerun) == rows(out)
    letters = sorted(p.read_text() for p in rerun.glob("_dead_letter/**/*.jsonl"))
    assert sorted("".join(letters).splitlines()) == sorted(
        "".join(p.read_text() for p in out.glob("_dead_letter/**/*.jsonl")).splitlines()
    )


def test_http_enrichment_end_to_end(tmp_path):
    """The CLI against a real AroundDeal stand-in on 127.0.0.1, with a 503 and a 429 to ride out:
    restricted IPs are never asked for contact data, a leaked contact is not kept, the API key
    comes from the environment and never appears in any output."""
    inputs = write_inputs(tmp_path)
    spelt = {"us-uk-company": "UK", "us-el-company": " el ", "us-fx-company": "fx"}
    companies = {
        ip: {
            "company_name": f"Web {event_id}",
            "company_country": spelt.get(event_id, "US"),
            "business_phone": f"+1-{event_id}",
            "business_email": f"web-{event_id}@api.example",
        }
        for event_id, (ip, _region) in VISITORS.items()
    }
    api_key = "k-SECRET-API-KEY-123"
    with AroundDealServer(companies, leak_contact=True) as server:
        server.script(Action(status=503), Action(status=429, retry_after="0.1"))
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "pipelines.visits",
                f"--input={inputs['visits']}",
                f"--output={tmp_path / 'out'}",
                f"--geoip_db={inputs['mmdb']}",
                f"--enrichment_url={server.url}",
                "--enrichment_api_key_env=TEST_AROUNDDEAL_KEY",
                "--enrichment_batch_size=5",
                "--enrichment_rate_limit=50",
                "--runner=FnApiRunner",
                "--run_time=2026-11-29T00:00:00Z",
            ],
            capture_output=True,
            text=True,
            timeout=300,
            env={**os.environ, "TEST_AROUNDDEAL_KEY": api_key},
        )
        requests = server.requests
    assert done.returncode == 0, done.stderr[-3000:]
    assert len(requests) >= 3 and all(r.headers.get("X-API-Key") == api_key for r in requests)
    asked = {}
    for request in requests:
        for item in request.items:
            asked.setdefault(item["ip"], set()).add(item["fields"])
    for event_id, (ip, region) in VISITORS.items():
        ip = ip.removeprefix("::ffff:")
        if region != "OTHER":
            assert asked.get(ip, {"company"}) == {"company"}, event_id
    rows = read_rows(tmp_path / "out")["parquet"]
    corporate = by_id(rows, "corporate_visitor_info")
    assert corporate["us"]["company_name"] == "Web us"
    assert corporate["us"]["business_phone"] == "+1-us"
    assert corporate["de"]["company_name"] == "Web de" and corporate["de"]["business_phone"] is None
    text = decoded_text(tmp_path / "out") + done.stdout + done.stderr
    assert api_key not in text
    for event_id, (_ip, region) in VISITORS.items():
        if region != "OTHER" or event_id in spelt:
            assert f"web-{event_id}@api.example" not in text
    for event_id in spelt:
        assert corporate[event_id]["company_name"] == f"Web {event_id}"
        assert corporate[event_id]["business_phone"] is None
        assert "direct_marketing" not in corporate[event_id]["purposes"]
    (report,) = (tmp_path / "out").glob("_reports/visits-*.json")
    enrichment = json.loads(report.read_text())["enrichment"]
    assert enrichment["retries"] >= 2 and enrichment.get("failed", 0) == 0


def test_a_slow_drip_endpoint_cannot_hang_the_run(tmp_path):
    """A server that announces a large body and sends a byte every half second (no single read
    ever waits the 2 s timeout): the request is cut at its deadline, so with no retry the run
    ends in bounded time, every visit written unenriched and counted."""
    inputs = write_inputs(tmp_path)
    with AroundDealServer({}, default_action=Action(drip=0.5)) as server:
        started = time.monotonic()
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "pipelines.visits",
                f"--input={inputs['visits']}",
                f"--output={tmp_path / 'out'}",
                f"--geoip_db={inputs['mmdb']}",
                f"--enrichment_url={server.url}",
                "--enrichment_timeout=2",
                "--enrichment_max_retries=0",
                "--runner=FnApiRunner",
                "--run_time=2026-11-29T00:00:00Z",
            ],
            capture_output=True,
            text=True,
            timeout=170,
            env={**os.environ, "AROUNDDEAL_API_KEY": "k"},
        )
        elapsed = time.monotonic() - started
        requests = server.requests
    assert done.returncode == 0, done.stderr[-3000:]
    assert requests, "the endpoint was asked"
    assert elapsed < 90, elapsed
    (report_path,) = (tmp_path / "out").glob("_reports/visits-*.json")
    report = json.loads(report_path.read_text())
    good = len(VISITORS) + 4
    assert report["counts"]["written"]["website_visit"] == good
    assert report["reconciliation"]["reconciled"] is True
    looked_up = report["enrichment"]["failed"]
    assert looked_up == good - report["enrichment"].get("invalid_ip", 0)
    rows = read_rows(tmp_path / "out")["parquet"]
    assert all(r["company_name"] is None for r in by_id(rows, "corporate_visitor_info").values())


def test_plain_http_endpoints_are_refused_at_startup(tmp_path):
    """A name that can never resolve (RFC 6761 ``.invalid``): nothing is sent, whatever code
    runs the test."""
    inputs = write_inputs(tmp_path)
    done = run_cli(
        "pipelines.visits",
        f"--input={inputs['visits']}",
        f"--output={tmp_path / 'out'}",
        "--enrichment_url=http://arounddeal.invalid/v1/lookup",
        expect_ok=False,
        env={**os.environ, "AROUNDDEAL_API_KEY": "k"},
    )
    assert done.returncode != 0
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "https" in lines[0], done.stderr
    assert not (tmp_path / "out").exists()

"""Rebuild the bundled sample: ``python -m tools.make_sample`` (from the repository root).

Writes ``pipelines/data/sample/visits.jsonl`` (generated visits plus hand-written edge cases: every
dead-letter reason, secrets in undeclared fields, IPv4-mapped IPv6, private addresses, the
23:30+08:00 date boundary) and ``pipelines/data/sample/arounddeal_snapshot.csv`` matching them,
from the bundled country database; ``sdk_logs.jsonl`` and ``telemetry.jsonl`` likewise (numeric
identifiers, backend logs, secrets and media payloads, the minimum-age condition).
Deterministic: rerunning it rewrites the same bytes.
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

from tools.inputs import visitor_addresses, write_lines
from tools.synthetic import (
    VisitMix,
    sdk_log_lines,
    snapshot_csv,
    telemetry_lines,
    visit_lines,
)

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "pipelines" / "data"
SEED = 20251129

EDGE_CASES: list[bytes] = [
    # good records with something to prove
    json.dumps(
        {
            "event_id": "edge-de-mapped",
            "ip": "::ffff:{de}",
            "visited_at": "2026-10-05T23:30:00+08:00",
            "url": "https://trtc.example.com/pricing",
            "contact_name": "Erika Muster",
            "business_email": "erika@firma.example",
            "job_title": "CTO",
        }
    ).encode(),
    json.dumps(
        {
            "event_id": "edge-private",
            "ip": "192.168.10.20",
            "visited_at": 1790000000000,
            "business_email": "someone@corp.example",
        }
    ).encode(),
    json.dumps(
        {
            "event_id": "edge-secrets",
            "ip": "{us}",
            "visited_at": "2026-10-06T10:00:00Z",
            "password": "hunter2",
            "user_sig": "eJyrVkrxCVYqTi0qzszPU7JSMlTSUTJUsgKpM",
            "private_key": "-----BEGIN PRIVATE KEY-----MIIEv",
            "url": "https://trtc.example.com/",
        }
    ).encode(),
    json.dumps(
        {
            "event_id": "edge-us-contact",
            "ip": "{us}",
            "visited_at": "2026-10-06T11:00:00",
            "contact_name": "Jane Roe",
            "business_email": "jane@corp.example",
            "linkedin_url": "https://linkedin.example/in/jane",
        }
    ).encode(),
    # every dead-letter reason of the parser
    json.dumps({"event_id": "edge-no-ip", "visited_at": "2026-10-06T10:00:00Z"}).encode(),
    json.dumps({"ip": "{us}", "visited_at": "2026-10-06T10:00:00Z"}).encode(),
    json.dumps({"event_id": "edge-no-time", "ip": "{us}"}).encode(),
    json.dumps({"event_id": "edge-bad-time", "ip": "{us}", "visited_at": "yesterday"}).encode(),
    json.dumps(
        {"event_id": "edge-bad-ip", "ip": "999.1.2.3", "visited_at": "2026-10-06T10:00:00Z"}
    ).encode(),
    json.dumps(
        {"event_id": "edge-bad-url", "ip": "{us}", "visited_at": "2026-10-06T10:00:00Z", "url": 42}
    ).encode(),
    b'{"event_id": "edge-broken", "ip": "1.2.3.4", "password": "hunter2", "visited_at": ',
    b"[1, 2, 3]",
    b"",
    b'{"event_id": "edge-latin1", "ip": "1.2.3.4", "url": "caf\xe9"}',
]

SDK_LOG_EDGE_CASES: list[dict] = [
    # stored, with the secret and the media payload dropped by the allow-list
    {
        "event_id": "edge-sdk-secrets",
        "logged_at": "2026-11-21T23:30:00+08:00",
        "sdk_app_id": 1400000001,
        "uin": 100000001,
        "user_id": 42,
        "room_id": 8001,
        "user_sig": "eJyrVkrxCVYqTi0qzszPU7JSMlTSUTJUsgKpM",
        "audio_data": "UklGRiQAAABXQVZF",
    },
    # minimum age: not stored; with parental consent: stored
    {
        "event_id": "edge-sdk-child",
        "logged_at": 1795000000000,
        "sdk_app_id": 1400000001,
        "end_user_age": 12,
    },
    {
        "event_id": "edge-sdk-child-consent",
        "logged_at": 1795000000000,
        "sdk_app_id": 1400000001,
        "end_user_age": 12,
        "parental_consent": True,
    },
    # dead letters
    {"event_id": "edge-sdk-no-app", "logged_at": "2026-11-21T10:00:00Z"},
    {"event_id": "edge-sdk-bool-app", "logged_at": "2026-11-21T10:00:00Z", "sdk_app_id": True},
    {"event_id": "edge-sdk-bad-time", "logged_at": "tomorrow", "sdk_app_id": 1},
    {
        "event_id": "edge-sdk-bad-ip",
        "logged_at": "2026-11-21T10:00:00Z",
        "sdk_app_id": 1,
        "client_ip": "not-an-ip",
    },
]
TELEMETRY_EDGE_CASES: list[dict] = [
    {
        "event_id": "edge-tel-video",
        "reported_at": "2026-11-21T10:00:00Z",
        "sdk_app_id": "1400000002",
        "event_type": "enable_video",
        "video_content": "AAAAIGZ0eXBpc29t",
    },
    {
        "event_id": "edge-tel-bad-type",
        "reported_at": "2026-11-21T10:00:00Z",
        "sdk_app_id": 1,
        "event_type": "explode",
    },
    {
        "event_id": "edge-tel-bad-cpu",
        "reported_at": "2026-11-21T10:00:00Z",
        "sdk_app_id": 1,
        "event_type": "quality",
        "cpu_usage": "high",
    },
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mmdb", default=str(DATA / "country.mmdb"))
    parser.add_argument("--out", default=str(DATA / "sample"))
    parser.add_argument("--visits", type=int, default=300)
    args = parser.parse_args()

    mix = VisitMix(distinct_ips=120)
    rng = random.Random(SEED)
    pool, population = visitor_addresses(args.mmdb, mix, rng)
    fill = {"de": pool.address(rng, "DE", 4), "us": pool.address(rng, "US", 4)}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with (out / "visits.jsonl").open("wb") as fh:
        for line in visit_lines(args.visits, population, mix, SEED):
            fh.write(line.encode() + b"\n")
        for line in EDGE_CASES:
            for key, address in fill.items():
                line = line.replace(b"{%s}" % key.encode(), address.encode())
            fh.write(line + b"\n")
    edge = [(fill["de"], "DE"), (fill["us"], "US")]
    snapshot = snapshot_csv(population, 100, SEED, always=edge)
    (out / "arounddeal_snapshot.csv").write_text(snapshot, encoding="utf-8")
    write_lines(
        out / "sdk_logs.jsonl",
        [*sdk_log_lines(200, SEED), *(json.dumps(r) for r in SDK_LOG_EDGE_CASES)],
    )
    write_lines(
        out / "telemetry.jsonl",
        [*telemetry_lines(200, SEED), *(json.dumps(r) for r in TELEMETRY_EDGE_CASES)],
    )
    print(f"wrote the visits, snapshot, SDK log and telemetry samples to {out}")


if __name__ == "__main__":
    main()

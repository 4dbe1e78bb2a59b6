"""The pipelines the engine tests run, each with the small fixture every engine gets.

A :class:`PipelineSpec` says how to run one pipeline CLI (``python -m <module>``) on its fixture;
every engine of ``test_engines.py`` runs every spec of :data:`SPECS` and must write the same rows,
dead letters and counters as the FnApiRunner. Adding a pipeline is one line in :data:`SPECS`.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from pipelines.options import bundled
from tests.support.visit_fixture import write_country_db, write_snapshot

__all__ = ["SDK_LOGS", "SPECS", "TELEMETRY", "VISITS", "PipelineSpec"]


@dataclass(frozen=True)
class PipelineSpec:
    """One pipeline CLI and its fixture.

    ``inputs(directory)`` writes the fixture files under ``directory`` (once per test session;
    every engine reads the same files) and returns the pipeline's own flags; the harness adds
    ``--output``, ``--run_time`` and the runner flags.
    """

    name: str  # test id, and the prefix of the run report: _reports/<name>-<run_id>.json
    module: str  # run as ``python -m <module>``
    inputs: Callable[[Path], list[str]]

    def __str__(self) -> str:
        return self.name


def bundled_sample(file: str, *extra: str) -> Callable[[Path], list[str]]:
    """The fixture of a pipeline whose bundled sample (``pipelines/data/sample/``) is enough."""

    def inputs(_directory: Path) -> list[str]:
        return [f"--input={bundled(f'sample/{file}')}", *extra]

    return inputs


# --- visits: a tiny country database, an AroundDeal snapshot and ~140 visits ------------------
# Every region case (EEA, EEA-not-EU, outermost region, UK, non-EEA, a network without a country,
# private and unlisted addresses, IPv6 and IPv4-mapped spellings), companies inside and outside
# the EEA, contact fields in the input, several visit days (several expiry partitions), and lines
# that must be dead-lettered. The database and the snapshot are passed as files, as in production.

IPS = (
    "2.16.0.{n}",
    "2.17.0.{n}",
    "2.18.0.{n}",
    "2.19.0.{n}",
    "2a01:4f8:1::{n:x}",
    "::ffff:2.16.1.{n}",
    "2.20.0.{n}",
    "2.21.0.{n}",
    "2.22.0.{n}",
    "2.22.5.{n}",
    "2400:cb00:2::{n:x}",
    "::ffff:2.22.1.{n}",
    "2.23.0.{n}",
    "10.0.0.{n}",
    "198.51.100.{n}",
    "fd00::{n:x}",
)
BAD_LINES = (
    json.dumps({"event_id": "bad-ip", "ip": "300.1.1.1", "visited_at": 1}).encode(),
    json.dumps({"ip": "2.22.0.1", "visited_at": 1}).encode(),
    json.dumps({"event_id": "no-time", "ip": "2.22.0.1"}).encode(),
    json.dumps({"event_id": "bad-time", "ip": "2.22.0.1", "visited_at": "soon"}).encode(),
    b'{"event_id": "truncated", "password": "hunter2-SECRET", "ip": ',
    b"[1, 2]",
    b"",
    b'{"event_id": "latin1", "url": "caf\xe9"}',
)


def visits_inputs(directory: Path) -> list[str]:
    mmdb = write_country_db(directory / "country.mmdb")
    snapshot = write_snapshot(directory / "snapshot.csv")
    lines = []
    for n in range(1, 10):
        day = f"2026-10-{n:02d}"
        for i, pattern in enumerate(IPS):
            event_id = f"v{n}-{i}"
            visit = {
                "event_id": event_id,
                "ip": pattern.format(n=n),
                "visited_at": f"{day}T{(7 * i) % 24:02d}:30:00+08:00",
                "url": f"https://trtc.example.com/p/{i}",
                "user_agent": "Mozilla/5.0",
                "session_id": f"s{n}-{i % 3}",
            }
            if (n + i) % 2:
                visit |= {
                    "contact_name": f"Name {event_id}",
                    "business_email": f"{event_id}@input-contact.example",
                    "job_title": "CTO",
                }
            if n == 3 and i == 8:
                visit["user_sig"] = "eJyrVkrxUSERSIG"  # a secret: dropped, never written
            lines.append(json.dumps(visit).encode())
    lines.extend(BAD_LINES)
    visits = directory / "visits.jsonl"
    visits.write_bytes(b"\n".join(lines) + b"\n")
    return [f"--input={visits}", f"--geoip_db={mmdb}", f"--enrichment_snapshot={snapshot}"]


VISITS = PipelineSpec("visits", "pipelines.visits", visits_inputs)
SDK_LOGS = PipelineSpec("sdk_logs", "pipelines.sdk_logs", bundled_sample("sdk_logs.jsonl"))
TELEMETRY = PipelineSpec("telemetry", "pipelines.telemetry", bundled_sample("telemetry.jsonl"))

# Every pipeline the engine tests run. To add one: append its spec here.
SPECS: tuple[PipelineSpec, ...] = (VISITS, SDK_LOGS, TELEMETRY)

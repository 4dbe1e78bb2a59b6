"""Generated inputs written to files: what the benchmark (``bench.run``), the output digest
(``tools.output_digest``) and the bundled sample (``tools.make_sample``) write of
``tools.synthetic``.

All three draw the visitors' addresses alike (the networks the country database assigns to the
countries of :data:`tools.synthetic.COUNTRY_WEIGHTS`, one random generator seeded with the
seed) and write lines alike, so that one seed gives the same files whichever writes them.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from tools.synthetic import (
    COUNTRY_WEIGHTS,
    AddressPool,
    VisitMix,
    ip_population,
    sdk_log_lines,
    snapshot_csv,
    telemetry_lines,
    visit_lines,
)

__all__ = ["GENERATORS", "visitor_addresses", "write_lines", "write_source", "write_visits"]

# The generated lines of each source besides the visits: (count, seed) -> lines.
GENERATORS: dict[str, Callable[[int, int], Iterator[str]]] = {
    "sdk_logs": sdk_log_lines,
    "telemetry": telemetry_lines,
}


def write_lines(path: Path, lines: Iterable[str]) -> Path:
    """``path`` holding ``lines``, each ended by a newline; returns ``path``. The lines are
    streamed (never all in memory) and the file appears only when complete, so that a file
    found is a file written whole (the writers below reuse what exists)."""
    tmp = path.with_suffix(".tmp")
    with tmp.open("w", encoding="utf-8") as fh:
        for line in lines:
            fh.write(line + "\n")
    tmp.rename(path)
    return path


def visitor_addresses(
    mmdb: str, mix: VisitMix, rng: random.Random
) -> tuple[AddressPool, list[tuple[str, str]]]:
    """The address pool of the country database ``mmdb`` and the visitors' addresses drawn
    from it with ``rng`` (which a caller may go on drawing from)."""
    pool = AddressPool(mmdb, list(COUNTRY_WEIGHTS))
    return pool, ip_population(pool, mix, rng)


def write_source(path: Path, source: str, records: int, seed: int) -> Path:
    """``records`` generated lines of ``source`` (``sdk_logs`` or ``telemetry``) at ``path``,
    unless they were written before (the same arguments give the same lines)."""
    if not path.exists():
        write_lines(path, GENERATORS[source](records, seed))
    return path


def write_visits(
    visits: Path,
    snapshot: Path,
    *,
    records: int,
    mix: VisitMix,
    networks: int,
    seed: int,
    mmdb: str,
) -> None:
    """``records`` generated visits and the AroundDeal snapshot of ``networks`` of their
    networks, each unless it was written before (the same arguments give the same files)."""
    if visits.exists() and snapshot.exists():
        return
    _, population = visitor_addresses(mmdb, mix, random.Random(seed))
    if not visits.exists():
        write_lines(visits, visit_lines(records, population, mix, seed))
    if not snapshot.exists():
        snapshot.write_text(snapshot_csv(population, networks, seed))

"""The benchmark's flags and the shape of the data it generates (measured, not timed)."""

from __future__ import annotations

import json
import random

import pytest

from bench.run import parse_args, profiles, visit_mix
from pipelines.options import bundled
from tools.synthetic import COUNTRY_WEIGHTS, AddressPool, canonical, ip_population, visit_lines


@pytest.mark.parametrize("share", ["0", "1.5", "-0.1", "many"])
def test_distinct_ips_is_a_share_of_the_records(share, capsys):
    with pytest.raises(SystemExit):
        parse_args(["--distinct_ips", share])
    assert "--distinct_ips" in capsys.readouterr().err


def test_distinct_ips_applies_to_the_visits_only(capsys):
    with pytest.raises(SystemExit):
        parse_args(["--pipeline", "sdk_logs", "--distinct_ips", "0.5"])
    assert "visits" in capsys.readouterr().err


def test_the_default_reports_both_address_profiles_of_the_visits():
    args = parse_args([])
    assert profiles("visits", args.distinct_ips) == (0.1, 1.0)
    assert profiles("sdk_logs", args.distinct_ips) == (None,)
    assert profiles("visits", parse_args(["--distinct_ips", "0.5", "0.5"]).distinct_ips) == (0.5,)


@pytest.fixture(scope="module")
def pool() -> AddressPool:
    return AddressPool(bundled("country.mmdb"), list(COUNTRY_WEIGHTS))


def address(value: object) -> object:
    try:
        return canonical(value) if isinstance(value, str) else None
    except ValueError:  # a spoiled line's invalid address
        return None


@pytest.mark.parametrize("share", [0.1, 1.0])
def test_generated_visits_have_the_share_of_distinct_addresses_asked_for(share, pool):
    records = 2_000
    mix = visit_mix(records, share)
    population = ip_population(pool, mix, random.Random(7))
    visits = [json.loads(line) for line in visit_lines(records, population, mix, 7)]
    addresses = {address(v.get("ip")) for v in visits} - {None}
    # the spoiled lines (missing or invalid addresses) may take a few addresses out
    assert round(share * records) * 0.98 <= len(addresses) <= round(share * records)
    times = {type(v.get("visited_at")).__name__ for v in visits}
    assert {"int", "str"} <= times  # mixed time forms

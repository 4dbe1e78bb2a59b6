"""The lifecycle rules of GCS and S3 applied as their documentation defines them, to a simulated
object listing: which objects a configuration deletes at a given time.

Only what the documentation says is modelled, and a rule with anything else is refused
(``UnsupportedRuleError``), so that a generated rule never passes a test by using a condition this
simulator would silently ignore.

GCS (Object Lifecycle Management; the JSON API's ``lifecycle.rule[].condition``): an object is
deleted when *all* conditions of one Delete rule hold.

- ``age`` N: "satisfied when an object reaches the specified age (in days)": the time of its
  creation plus N days has passed.
- ``createdBefore`` D: "satisfied when an object is created before midnight of the specified
  date in UTC".
- ``customTimeBefore`` D: its custom time is before D; ``daysSinceCustomTime`` N: N days have
  passed since its custom time (neither holds for an object without one).
- ``matchesPrefix`` / ``matchesSuffix``: "at least one of the prefixes exactly matches the
  beginning of the object name" (likewise the end).
- ``isLive``: true for live objects, false for noncurrent versions; ``daysSinceNoncurrentTime``
  N: N days have passed since the version became noncurrent.

S3 (``LifecycleConfiguration``): a rule applies when ``Status`` is ``Enabled`` and its filter
selects the object (``Prefix``: the key starts with it; ``And`` with a ``Prefix`` only).

- ``Expiration.Date``: "the date ... the object is to be moved or deleted ... The time is
  always midnight UTC": every object the filter selects, whenever written, from that instant.
- ``Expiration.Days`` N: S3 adds N days to the object's creation time and rounds the result up
  to the next midnight UTC ("you create an object on 1/1/2020 10:30 UTC with a lifecycle rule
  to transition the object after 3 days ... the transition date is 1/5/2020 00:00 UTC").
- ``Expiration.ExpiredObjectDeleteMarker``: acts on delete markers only (none here);
  ``NoncurrentVersionExpiration.NoncurrentDays`` N: on noncurrent versions only, N days after
  they became noncurrent, rounded up the same way.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["Obj", "UnsupportedRuleError", "gcs_deletes", "s3_deletes"]

DAY = dt.timedelta(days=1)


class UnsupportedRuleError(ValueError):
    """A rule uses something this simulator does not model."""


@dataclass(frozen=True)
class Obj:
    """An object version in a bucket."""

    name: str
    created: dt.datetime
    custom_time: dt.datetime | None = None
    noncurrent_since: dt.datetime | None = None  # None: the live version

    @property
    def live(self) -> bool:
        return self.noncurrent_since is None


def _midnight(day: str) -> dt.datetime:
    return dt.datetime.combine(dt.date.fromisoformat(day), dt.time(), dt.UTC)


def _prefixes(name: str) -> Iterable[str]:
    """Every prefix of ``name``, the empty one and the name itself included: "starts with p"
    is "p is one of these" (a set lookup instead of a scan of every rule)."""
    return (name[:i] for i in range(len(name) + 1))


def _gcs_holds(key: str, value: Any, obj: Obj, now: dt.datetime) -> bool:
    if key == "age":
        return now >= obj.created + value * DAY
    if key == "createdBefore":
        return obj.created < _midnight(value)
    if key == "customTimeBefore":
        return obj.custom_time is not None and obj.custom_time < _midnight(value)
    if key == "daysSinceCustomTime":
        return obj.custom_time is not None and now >= obj.custom_time + value * DAY
    if key == "matchesPrefix":
        return not frozenset(value).isdisjoint(_prefixes(obj.name))
    if key == "matchesSuffix":
        return any(obj.name.endswith(s) for s in value)
    if key == "isLive":
        return obj.live is value
    if key == "daysSinceNoncurrentTime":
        return obj.noncurrent_since is not None and now >= obj.noncurrent_since + value * DAY
    raise UnsupportedRuleError(f"GCS condition {key!r}")


def gcs_deletes(config: Mapping[str, Any], objects: Iterable[Obj], now: dt.datetime) -> set[str]:
    """The names of the objects a GCS lifecycle configuration deletes at ``now``."""
    rules = config["lifecycle"]["rule"]
    out = set()
    for obj in objects:
        for rule in rules:
            if rule["action"] != {"type": "Delete"}:
                raise UnsupportedRuleError(f"GCS action {rule['action']!r}")
            if not rule["condition"]:
                raise UnsupportedRuleError("a GCS rule without conditions")
            if all(_gcs_holds(k, v, obj, now) for k, v in rule["condition"].items()):
                out.add(obj.name)
    return out


def _next_midnight(moment: dt.datetime) -> dt.datetime:
    """``moment`` rounded up to a midnight UTC (a midnight stays)."""
    day = dt.datetime.combine(moment.date(), dt.time(), dt.UTC)
    return day if day == moment else day + DAY


def _s3_prefix(rule: Mapping[str, Any]) -> str:
    unknown = set(rule) - {"ID", "Status", "Filter", "Expiration", "NoncurrentVersionExpiration"}
    if unknown:
        raise UnsupportedRuleError(f"S3 rule keys {sorted(unknown)}")
    selector = rule["Filter"]
    if set(selector) == {"And"}:
        selector = selector["And"]
    if set(selector) != {"Prefix"}:
        raise UnsupportedRuleError(f"S3 filter {rule['Filter']!r}")
    return selector["Prefix"]


def _s3_expires(rule: Mapping[str, Any], obj: Obj, now: dt.datetime) -> bool:
    expiration = rule.get("Expiration", {})
    if set(expiration) - {"Date", "Days", "ExpiredObjectDeleteMarker"}:
        raise UnsupportedRuleError(f"S3 expiration {expiration!r}")
    if obj.live and "Date" in expiration:
        date = dt.datetime.fromisoformat(expiration["Date"].replace("Z", "+00:00"))
        if date != _next_midnight(date):
            raise UnsupportedRuleError(f"an S3 expiration date that is not midnight UTC: {date}")
        if now >= date:
            return True
    if (
        obj.live
        and "Days" in expiration
        and now >= _next_midnight(obj.created + expiration["Days"] * DAY)
    ):
        return True
    noncurrent = rule.get("NoncurrentVersionExpiration")
    if noncurrent and not obj.live:
        if set(noncurrent) != {"NoncurrentDays"}:
            raise UnsupportedRuleError(f"S3 noncurrent expiration {noncurrent!r}")
        assert obj.noncurrent_since is not None
        return now >= _next_midnight(obj.noncurrent_since + noncurrent["NoncurrentDays"] * DAY)
    return False


def s3_deletes(config: Mapping[str, Any], objects: Iterable[Obj], now: dt.datetime) -> set[str]:
    """The keys of the objects an S3 lifecycle configuration expires at ``now``."""
    rules = config["Rules"]
    if len(rules) > 1000:
        raise UnsupportedRuleError("S3 takes at most 1,000 rules")
    by_prefix: dict[str, list[Mapping[str, Any]]] = {}
    for rule in rules:
        if rule["Status"] == "Enabled":
            by_prefix.setdefault(_s3_prefix(rule), []).append(rule)
    out = set()
    for obj in objects:
        selecting = (r for p in _prefixes(obj.name) for r in by_prefix.get(p, ()))
        if any(_s3_expires(rule, obj, now) for rule in selecting):
            out.add(obj.name)
    return out

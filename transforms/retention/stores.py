"""The storage rules of the output layout, generated: what each store needs to delete a partition
on its expiry date, as ``pipelines.purge`` does (contract v2: ``expiry_date=D`` goes on the UTC
date D; the open-ended partition never).

What each store can be told, and so what is generated (``docs/retention.md`` explains it to
operators):

- **S3** has a date condition: an ``Expiration`` with a ``Date`` acts on every object its filter
  selects from 00:00 UTC of that date on, whenever the object was written. So one rule per
  partition and date, ``Filter.Prefix = <root>/data_category=C/expiry_date=D/`` with
  ``Expiration.Date = D``, deletes exactly what the purge deletes, on the same date. The dates
  of partitions not yet written are not known, so the rules cover a *horizon*: the partitions
  of every category and dead-letter source dated ``first`` .. ``first + days - 1``. They can
  be installed ahead of time; regenerate them before the horizon ends. A bucket takes at most
  1,000 rules (:data:`S3_MAX_RULES`), which bounds the horizon.
- **GCS** has no date condition: its conditions look at the object (``age`` from its creation,
  ``createdBefore``, its custom time, its name), never at today's date. An age cannot stand in
  for the date: the files of one partition are written on different days (a backfill, a
  lifecycle move, an erasure's rewrite) and the older one reaches any age first. So a GCS rule
  naming a partition acts as soon as it is installed, and the GCS rules are *the rules of one
  day*: installed on ``first`` (daily, at 00:00 UTC, next to the purge), they name the
  partitions dated ``first`` and the ``days - 1`` dates before it, exactly what the purge
  deletes that day (given that the days before were purged). Left in place they never delete
  early; they only stop covering the dates after ``first``.
- **BigQuery** expires a partition of a DATE-partitioned table at the *end* of its day plus
  the table's partition expiration ("with daily partitioning ... if the table's partition
  expiration is 6 hours, then each partition expires at 06:00:00 UTC the following day"). So
  a table partitioned by ``purge_eve``, the day before the expiry date, with the smallest
  expiration (0 is not a valid one), drops the rows of ``expiry_date=D`` at 00:00 UTC of D
  (plus :data:`BIGQUERY_EXPIRATION_DAYS`, under a second). Open-ended rows (``expires_at``
  NULL) are in the ``__NULL__`` partition, which never expires.
- **Elasticsearch** ILM computes an index's age from its origination date, which ILM can read
  from an index name ending in ``-yyyy.MM.dd``. An index per category and *event* date whose
  delete phase starts at ``min_age`` = the fixed period is deleted at the midnight that starts
  the expiry date; an index per category and *expiry* date (``trtc-<c>-expiry-<date>``) is
  deleted at ``min_age`` 0; open-ended documents wait in ``trtc-<c>-open``, which has no delete
  phase, until the lifecycle job's counterpart reindexes them into their expiry index.

The prefixes are the storage layout's (``StorageLayout.prefix``, Hive's by default): a rule
names :class:`PartitionDir` of a category or dead-letter source for one date at a time, so a
root in another registered layout gets rules in its own spelling, and a layout whose
partitions cannot be told apart by prefix refuses (``LayoutError``) rather than generate rules
that delete nothing.

Prefixes never name an open-ended partition: they end in ``expiry_date=<a date>/`` within the
dates asked for, and a horizon that reaches the open-ended date (9999-12-31) is refused.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from schemas.arrow import arrow_schema
from schemas.avro import output_schema
from schemas.policy import Category, Policy
from schemas.records import retention_in_words
from transforms.sinks import OPEN_ENDED_EXPIRY_DATE
from transforms.sinks.storage import DATA, DEAD_LETTER, HIVE, StorageLayout

__all__ = [
    "BIGQUERY_EXPIRATION_DAYS",
    "ES_PREFIX",
    "S3_MAX_RULES",
    "ObjectRoot",
    "PartitionDir",
    "bigquery_ddl",
    "category_dir",
    "dated_prefixes",
    "dead_letter_dir",
    "elasticsearch_ilm",
    "gcs_lifecycle",
    "layout_dirs",
    "s3_lifecycle",
]

S3_MAX_RULES = 1000  # "You can add as many as 1000 rules" (S3 LifecycleConfiguration)
# The smallest clean expiration after the partition's day ends: 0.864 s (0 is not valid).
BIGQUERY_EXPIRATION_DAYS = "0.00001"
ES_PREFIX = "trtc"
_MICROS_PER_DAY = 86_400_000_000
_LAST_DATE = dt.date.fromisoformat(OPEN_ENDED_EXPIRY_DATE)
_BIGQUERY_TYPES = {
    pa.string(): "STRING",
    pa.int64(): "INT64",
    pa.int32(): "INT64",
    pa.float64(): "FLOAT64",
    pa.float32(): "FLOAT64",
    pa.bool_(): "BOOL",
    pa.binary(): "BYTES",
    pa.date32(): "DATE",
    pa.timestamp("us", tz="UTC"): "TIMESTAMP",
}


@dataclass(frozen=True)
class ObjectRoot:
    """An output root on an object store: the bucket and the key prefix of the root in it
    (``""`` for the bucket's root, else ending in ``/``)."""

    scheme: str
    bucket: str
    prefix: str

    @classmethod
    def parse(cls, root: str, scheme: str) -> ObjectRoot:
        """``gs://bucket/out`` (``scheme`` ``gs``) -> bucket ``bucket``, prefix ``out/``."""
        head = f"{scheme}://"
        if not root.startswith(head):
            raise ValueError(f"--output must be a {head}bucket/path output root, got {root!r}")
        bucket, _, path = root[len(head) :].partition("/")
        if not bucket:
            raise ValueError(f"--output {root}: no bucket")
        path = path.strip("/")
        return cls(scheme, bucket, f"{path}/" if path else "")


@dataclass(frozen=True)
class PartitionDir:
    """The dated partitions of one category (or dead-letter source) in a storage layout: what
    the rules name, one date at a time."""

    kind: str  # DATA or DEAD_LETTER
    name: str
    layout: StorageLayout = HIVE

    def prefix(self, day: dt.date) -> str:
        """The key prefix of the partition dated ``day``, relative to the root."""
        return self.layout.prefix(self.kind, self.name, day.isoformat())


def _parent(prefix: str) -> str:
    return prefix.rstrip("/").rsplit("/", 1)[0] + "/"


def category_dir(category: str) -> str:
    """``data_category=C/``, as the Hive layout spells it (escaping included): the parent of
    its ``expiry_date=`` partitions, for the documentation."""
    return _parent(PartitionDir(DATA, category).prefix(dt.date(2000, 1, 1)))


def dead_letter_dir(source: str) -> str:
    """``_dead_letter/source=S/``, as the Hive layout spells it (escaping included)."""
    return _parent(PartitionDir(DEAD_LETTER, source).prefix(dt.date(2000, 1, 1)))


def layout_dirs(
    policy: Policy, dead_letter_sources: Iterable[str], layout: StorageLayout = HIVE
) -> list[PartitionDir]:
    """The partitions the purge deletes, for every stored category of the policy and every
    dead-letter source, in ``layout``."""
    dirs = [PartitionDir(DATA, c.name, layout) for c in policy.categories.values() if c.stored]
    sources = sorted(set(dead_letter_sources))
    return dirs + [PartitionDir(DEAD_LETTER, s, layout) for s in sources]


def dated_prefixes(dirs: Sequence[PartitionDir], day: dt.date) -> list[str]:
    """The prefixes of the partitions of ``dirs`` dated ``day`` (``<dir>expiry_date=<day>/``
    in the Hive layout)."""
    if day >= _LAST_DATE:
        raise ValueError(f"{day} is the open-ended partition's date or later: no rule may name it")
    return [d.prefix(day) for d in dirs]


def _window(first: dt.date, days: int, *, forward: bool) -> list[dt.date]:
    if days < 1:
        raise ValueError(f"--days must be at least 1, got {days}")
    step = dt.timedelta(days=1)
    try:
        dates = [first + i * step if forward else first - i * step for i in range(days)]
    except OverflowError:
        raise ValueError(f"{days} days from {first} leave the calendar") from None
    return sorted(dates)


def gcs_lifecycle(
    root: ObjectRoot, dirs: Sequence[PartitionDir], first: dt.date, days: int
) -> dict:
    """The GCS lifecycle configuration to install on ``first``: one Delete rule per date, for
    the partitions dated ``first`` and the ``days - 1`` dates before it (see the module
    docstring: no GCS condition can wait for a date), and one for noncurrent versions."""
    rules: list[dict[str, Any]] = [
        {
            "action": {"type": "Delete"},
            "condition": {"matchesPrefix": [root.prefix + p for p in dated_prefixes(dirs, day)]},
        }
        for day in _window(first, days, forward=False)
    ]
    rules.append(_gcs_noncurrent(root))
    return {"lifecycle": {"rule": rules}}


def _gcs_noncurrent(root: ObjectRoot) -> dict[str, Any]:
    """Versions a deletion or a rewrite made noncurrent go at once (an erased file must not
    survive as an old version)."""
    return {
        "action": {"type": "Delete"},
        "condition": {
            "daysSinceNoncurrentTime": 0,
            "isLive": False,
            "matchesPrefix": [root.prefix],
        },
    }


def s3_lifecycle(root: ObjectRoot, dirs: Sequence[PartitionDir], first: dt.date, days: int) -> dict:
    """The S3 lifecycle configuration of the horizon ``first`` .. ``first + days - 1``: one rule
    per partition and date, expiring from 00:00 UTC of that date; and one for noncurrent
    versions and expired delete markers."""
    rules: list[dict[str, Any]] = [
        {
            "ID": prefix.rstrip("/"),
            "Status": "Enabled",
            "Filter": {"Prefix": root.prefix + prefix},
            "Expiration": {"Date": f"{day.isoformat()}T00:00:00Z"},
        }
        for day in _window(first, days, forward=True)
        for prefix in dated_prefixes(dirs, day)
    ]
    rules.append(
        {
            "ID": "noncurrent-versions",
            "Status": "Enabled",
            "Filter": {"Prefix": root.prefix},
            "NoncurrentVersionExpiration": {"NoncurrentDays": 1},
            "Expiration": {"ExpiredObjectDeleteMarker": True},
        }
    )
    if len(rules) > S3_MAX_RULES:
        most = (S3_MAX_RULES - 1) // max(len(dirs), 1)
        raise ValueError(
            f"--days {days} needs {len(rules)} S3 lifecycle rules ({len(dirs)} partition "
            f"directories a day, and one more); a bucket takes at most {S3_MAX_RULES}: "
            f"--days {most} at the most"
        )
    return {"Rules": rules}


def _bigquery_type(dtype: pa.DataType) -> str:
    if pa.types.is_list(dtype):
        return f"ARRAY<{_bigquery_type(dtype.value_type)}>"
    try:
        return _BIGQUERY_TYPES[dtype]
    except KeyError:
        raise ValueError(f"no BigQuery type for the column type {dtype}") from None


def _sql_string(text: str) -> str:
    return json.dumps(text, ensure_ascii=False)


def bigquery_ddl(policy: Policy, dataset: str, categories: Iterable[Category]) -> str:
    """One table per category, with the columns of its output schema and ``purge_eve`` (the
    day before the expiry date) as the partition column, each partition expiring just after
    its day ends: at 00:00 UTC of the expiry date, as the purge deletes ``expiry_date=``.
    Load with ``purge_eve = DATE_SUB(DATE(expires_at), INTERVAL 1 DAY)`` (NULL while the
    retention is open-ended: the ``__NULL__`` partition never expires)."""
    statements = []
    for c in categories:
        schema = arrow_schema(output_schema(c.name, policy.schema_dirs))
        columns = [
            f"  {f.name} {_bigquery_type(f.type)}{'' if f.nullable else ' NOT NULL'}"
            for f in schema
        ]
        columns.append(
            "  purge_eve DATE OPTIONS (description = "
            + _sql_string("The UTC date of expires_at less one day; NULL while open-ended")
            + ")"
        )
        statements.append(
            f"-- {c.name}: {c.retention.label} ({retention_in_words(c)})\n"
            f"CREATE TABLE IF NOT EXISTS `{dataset}.{c.name}` (\n"
            + ",\n".join(columns)
            + "\n)\nPARTITION BY purge_eve\nOPTIONS (\n"
            f"  partition_expiration_days = {BIGQUERY_EXPIRATION_DAYS},\n"
            f"  description = {_sql_string(c.description)}\n"
            ");\n"
        )
    return "\n".join(statements)


def _es_put(path: str, body: Mapping[str, Any]) -> str:
    return f"PUT {path}\n{json.dumps(body, indent=2, ensure_ascii=False)}\n"


def elasticsearch_ilm(categories: Iterable[Category]) -> str:
    """ILM policies and index templates for the categories (Kibana console requests): a policy
    per retention class, one that deletes an expiry-dated index on its date, and the templates
    that give each index its policy (see the module docstring)."""
    by_class: dict[str, list[Category]] = {}
    for c in categories:
        by_class.setdefault(c.retention.label, []).append(c)
    requests = []
    for label, members in by_class.items():
        retention = members[0].retention
        names = [c.name for c in members]
        if retention.rule == "fixed":
            phases: dict[str, Any] = {
                "hot": {"actions": {}},
                "delete": {"min_age": f"{retention.days}d", "actions": {"delete": {}}},
            }
            patterns = [f"{ES_PREFIX}-{n}-*" for n in names]
            about = (
                f"{retention.days} days from the event: one index per category and event date "
                f"({ES_PREFIX}-<category>-yyyy.MM.dd), deleted at the start of the expiry date"
            )
        else:
            phases = {"hot": {"actions": {}}}
            patterns = [f"{ES_PREFIX}-{n}-open" for n in names]
            about = (
                f"{retention_in_words(members[0])}: open-ended documents, never deleted here; "
                f"the event that ends them reindexes them into {ES_PREFIX}-<category>-expiry-"
                "yyyy.MM.dd"
            )
        name = f"{ES_PREFIX}-{label}"
        requests.append(
            _es_put(
                f"_ilm/policy/{name}",
                {"policy": {"_meta": {"description": about}, "phases": phases}},
            )
        )
        dated = retention.rule == "fixed"  # an open index's name holds no date to parse
        requests.append(
            _es_put(f"_index_template/{name}", _es_template(patterns, name, 100, parse=dated))
        )
    expire = f"{ES_PREFIX}-expire-on-date"
    requests.append(
        _es_put(
            f"_ilm/policy/{expire}",
            {
                "policy": {
                    "_meta": {
                        "description": "an index per category and expiry date, deleted on it"
                    },
                    "phases": {
                        "hot": {"actions": {}},
                        "delete": {"min_age": "0d", "actions": {"delete": {}}},
                    },
                }
            },
        )
    )
    requests.append(
        _es_put(
            f"_index_template/{expire}",
            _es_template([f"{ES_PREFIX}-*-expiry-*"], expire, 200, parse=True),
        )
    )
    return "\n".join(requests)


def _es_template(patterns: list[str], policy: str, priority: int, *, parse: bool) -> dict[str, Any]:
    """A composable template: the highest priority wins, so the expiry-dated indices of a
    category get ``trtc-expire-on-date`` although its class pattern matches them too.
    ``parse``: the origination date is read from the index name (ILM refuses to create an index
    whose name then holds none)."""
    return {
        "index_patterns": patterns,
        "priority": priority,
        "template": {
            "settings": {
                "index.lifecycle.name": policy,
                "index.lifecycle.parse_origination_date": parse,
            }
        },
    }

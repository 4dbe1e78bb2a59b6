"""The records of processing activities (GDPR Art. 30), built from the policy alone.

Why from the policy: the same file drives what the pipelines store, tag and delete, so a record
written from it cannot describe a processing the pipelines do not do, and it changes when the
policy does (it carries the policy version). ``python -m pipelines.ropa`` renders it
(``docs/ropa.md``); the phrases of a category (retention in words, where the data comes from,
who receives it) are the functions below, so that every document that tells a data subject or
an auditor about a category says the same thing.

A record needs what the pipelines do not: whose data it is, where it comes from, who receives
it (``data_subjects``, ``source`` and ``recipients`` of each category, and the
``records_of_processing`` section). The loader accepts a policy without them; the records of
processing refuse it, naming every missing piece (:func:`check_complete`).

No Beam here (``schemas`` is the bottom layer).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from schemas.names import MEDIA, SECRET
from schemas.policy import (
    ORIGINS,
    OTHER_REGION,
    UNKNOWN_REGION,
    Category,
    LifecycleEvent,
    Policy,
    PolicyError,
    Purpose,
    Retention,
)

__all__ = [
    "check_complete",
    "expiry_set_by",
    "purpose_conditions",
    "recipients_in_words",
    "records_of_processing",
    "region_restrictions",
    "retention_in_words",
    "source_in_words",
]


def _listing(names: Iterable[str], last: str = "and") -> str:
    """``a``, ``a and b``, ``a, b and c``."""
    items = list(names)
    if len(items) < 2:
        return "".join(items)
    return f"{', '.join(items[:-1])} {last} {items[-1]}"


def check_complete(policy: Policy) -> None:
    """Raise :class:`PolicyError` naming every piece the records of processing need that the
    policy does not declare (the loader accepts a policy without them)."""
    problems = []
    if policy.records is None:
        problems.append("records_of_processing: missing (controller, data subjects, parties)")
    for c in policy.categories.values():
        path = f"categories.{c.name}"
        if not c.data_subjects:
            problems.append(f"{path}.data_subjects: missing (whose data it is)")
        if c.data_source is None:
            problems.append(f"{path}.source: missing (where the data comes from)")
        if c.recipients is None:
            problems.append(f"{path}.recipients: missing ([] when the module names none)")
    if problems:
        raise PolicyError(
            f"{policy.source}: incomplete for the records of processing "
            f"({len(problems)} problem(s)):\n" + "\n".join(f"  {p}" for p in problems)
        )


def retention_in_words(category: Category, retention: Retention | None = None) -> str:
    """The category's retention (or ``retention``) as the policy's reader would say it."""
    r = retention or category.retention
    if r.rule == "fixed":
        return f"{r.days} days from {category.event_time}"
    if r.rule == "account_lifetime":
        return f"as long as the account exists; deleted within {r.days} days of its deletion"
    if r.rule == "service_lifetime":
        return (
            "as long as the customer uses the Feature; deleted within "
            f"{r.days} days of the end of the service or of the account's deletion"
        )
    if r.rule == "until_opt_out":
        return "until the data subject opts out of promotional information"
    return "never stored"


def _events(policy: Policy, category: Category) -> tuple[list[LifecycleEvent], list[str]]:
    """The lifecycle events that end rows of ``category`` directly, and the names of those that
    reach them through a cascade (an account's deletion ends its applications' services)."""
    direct = [e for e in policy.lifecycle_events.values() if e.applies_to(category)]
    names = {e.name for e in direct}
    cascading = [
        e.name
        for e in policy.lifecycle_events.values()
        if e.name not in names and names & set(e.cascades_to)
    ]
    return direct, cascading


def expiry_set_by(policy: Policy, category: Category) -> str:
    """What gives the category's rows their expiry: ingestion, or the lifecycle events."""
    rules = {category.retention.rule} | {p.retention.rule for p in category.purposes if p.retention}
    parts = []
    if "fixed" in rules:
        parts.append("ingestion (the event time plus the period)")
    direct, cascading = _events(policy, category)
    for event in direct:
        parts.append(f"the {event.name} event (keyed by {_listing(event.keys, 'or')})")
    for name in cascading:
        parts.append(f"the {name} event, through the events it cascades to")
    if not category.stored:
        return "nothing: never written"
    return "; ".join(parts) if parts else "ingestion"


def purpose_conditions(purpose: Purpose) -> list[str]:
    """When a conditional purpose applies, in words (empty: always)."""
    out = []
    if purpose.not_in_regions:
        out.append(f"not for records of {_listing(sorted(purpose.not_in_regions), 'or')}")
    if purpose.only_in_countries:
        out.append(f"only for visitors in {_listing(sorted(purpose.only_in_countries), 'or')}")
    if purpose.requires_any_field:
        out.append(f"only with {_listing(purpose.requires_any_field, 'or')}")
    return out


def source_in_words(category: Category) -> str:
    """Where the category's data comes from, in words (``source.description``)."""
    return category.data_source.description if category.data_source else "not declared"


def _party_name(policy: Policy, key: str) -> str:
    parties = policy.records.parties if policy.records else {}
    return parties[key].name if key in parties else key


def region_restrictions(category: Category) -> dict[str, list[str]]:
    """Region -> the fields never stored (nor requested from a third party) for its records."""
    return {
        region: sorted(fields)
        for region, fields in sorted(category.forbidden_fields_in_regions.items())
    }


def recipients_in_words(policy: Policy, category: Category) -> list[str]:
    """One sentence per recipient: who, what is shared, why, and what is never requested from
    it (the region restrictions of the category it returns)."""
    out = []
    for r in category.recipients or ():
        line = (
            f"{_party_name(policy, r.party)}: receives {_listing(r.fields)} {r.purpose}"
            if r.purpose.startswith("to ")
            else f"{_party_name(policy, r.party)}: receives {_listing(r.fields)} ({r.purpose})"
        )
        back = policy.categories.get(r.returns) if r.returns else None
        if back is not None:
            by_fields: dict[tuple[str, ...], list[str]] = {}
            for region, fields in region_restrictions(back).items():
                by_fields.setdefault(tuple(fields), []).append(region)
            for fields, regions in by_fields.items():
                line += (
                    f"; for records of {_listing(regions, 'or')}, {_listing(fields)} are never "
                    "requested from it nor kept"
                )
            if back.restricted_country_field:
                line += (
                    f"; a company whose {back.restricted_country_field} is in a restricted "
                    "region is treated the same"
                )
        out.append(line + ".")
    return out


def _purposes(category: Category) -> list[dict[str, Any]]:
    return [
        {
            "name": p.name,
            "conditions": purpose_conditions(p),
            **({"retention": p.retention.label} if p.retention else {}),
        }
        for p in category.purposes
    ]


def _never_stored(policy: Policy, category: Category) -> list[str]:
    if not category.stored:
        return ["everything: processed only to deliver it, never written"]
    out = [f"{name}: processed, never stored" for name in category.not_stored]
    out += [
        f"{secret}: only {stored} is stored, a keyed HMAC-SHA256 of it"
        for stored, secret in category.fingerprints.items()
    ]
    out.append(
        "credentials and audio/video content, whatever their field names "
        "(never_in_clear: the secret and media terms)"
    )
    return out


def _retention(policy: Policy, category: Category, open_ended: str) -> dict[str, Any]:
    r = category.retention
    out: dict[str, Any] = {
        "rule": r.label,
        "in_words": retention_in_words(category),
        "while_purposes": [
            {
                "purpose": p.name,
                "rule": p.retention.label,
                "in_words": retention_in_words(category, p.retention),
            }
            for p in category.purposes
            if p.retention
        ],
    }
    if category.stored:
        partition = f"data_category={category.name}/expiry_date="
        where = f"{partition}<the UTC date of expires_at>/, deleted on that date"
        if r.open_ended or any(p.retention and p.retention.open_ended for p in category.purposes):
            where += f"; open-ended rows in {partition}{open_ended}/ until an event dates them"
        out["expiry_set_by"] = expiry_set_by(policy, category)
        out["partition"] = where
    return out


def _minimum_age(policy: Policy, category: Category) -> str:
    age = policy.minimum_age
    if age is None:
        return "none declared"
    if not category.stored:
        return "n/a: never stored"
    return (
        f"a record that declares an end user below {age.age} ({age.age_field}, found by meaning "
        f"at any depth) without parental consent ({age.consent_field} true) is not stored"
    )


def _activity(policy: Policy, category: Category, open_ended: str) -> dict[str, Any]:
    records = policy.records
    subjects = records.data_subjects if records else {}
    source = category.data_source
    return {
        "category": category.name,
        "description": category.description,
        "document": policy.documents.get(category.module, category.module),
        "purposes": _purposes(category),
        "legal_basis": category.legal_basis,
        "data_subjects": [
            {"name": s, "description": subjects.get(s, "")} for s in category.data_subjects
        ],
        "fields": list(category.fields),
        "field_groups": {g: list(f) for g, f in category.field_groups.items()},
        "never_stored": _never_stored(policy, category),
        "source": {
            "from": [
                ORIGINS.get(o) or _party_name(policy, o) for o in (source.origins if source else ())
            ],
            "based_on": list(source.based_on) if source else [],
            "description": source_in_words(category),
        },
        "recipients": [
            {
                "party": r.party,
                "name": _party_name(policy, r.party),
                "fields": list(r.fields),
                "purpose": r.purpose,
                "returns": r.returns,
                "in_words": words,
            }
            for r, words in zip(
                category.recipients or (), recipients_in_words(policy, category), strict=True
            )
        ],
        "other_recipients": records.sharing.get(category.module, "") if records else "",
        "store": category.store,
        "retention": _retention(policy, category, open_ended),
        "restrictions_by_region": {
            "forbidden_fields": region_restrictions(category),
            "restricted_country_field": category.restricted_country_field,
            "purposes": {
                p.name: purpose_conditions(p) for p in category.purposes if purpose_conditions(p)
            },
        },
        "minimum_age": _minimum_age(policy, category),
    }


def _regions(policy: Policy) -> dict[str, Any]:
    implicit = {
        OTHER_REGION: "every other ISO 3166-1 alpha-2 country",
        UNKNOWN_REGION: "a value that names no country, or a visitor the GeoIP database "
        "cannot place",
    }
    return {
        name: {
            "restricted": region.restricted,
            "countries": sorted(region.countries),
            **({"also": implicit[name]} if name in implicit else {}),
        }
        for name, region in policy.regions.items()
    }


def records_of_processing(policy: Policy, *, open_ended: str) -> dict[str, Any]:
    """The record of processing activities of every category, as plain data (JSON-ready,
    deterministic: nothing in it but the policy and its version). ``open_ended``: the
    ``expiry_date`` of the partition open-ended rows wait in (the sinks' layout, which
    ``schemas`` does not import)."""
    check_complete(policy)
    records = policy.records
    assert records is not None  # check_complete
    terms: Mapping[str, tuple[str, ...]] = policy.name_terms
    dead = policy.dead_letter_retention
    return {
        "policy": policy.name,
        "policy_version": policy.version,
        "documents": dict(policy.documents),
        "controller": records.controller,
        "data_subjects": dict(records.data_subjects),
        "parties": {k: {"name": p.name, "role": p.role} for k, p in records.parties.items()},
        "regions": _regions(policy),
        "never_in_clear": {"secret_terms": list(terms[SECRET]), "media_terms": list(terms[MEDIA])},
        "dead_letters": {
            "retention": dead.label,
            "in_words": f"{dead.days} days from the run that rejected the record",
        },
        "activities": [_activity(policy, c, open_ended) for c in policy.categories.values()],
    }

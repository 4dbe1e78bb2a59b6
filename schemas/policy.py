"""Typed loader for ``schemas/policy.yaml``: the retention schedule as Python objects.

Why a hand-written validator and not a schema library: the file is small, the error messages must
name the exact YAML path a data engineer has to fix ("categories.sdk_log.retention.days: must be a
positive integer"), and ``schemas/`` must stay importable on a Beam worker with no extra packages.
Every problem in the file is collected and reported at once, at startup, before any data is read.

The policy version stamped on every output row is a content hash of the *parsed* document, so a
comment or whitespace edit does not change it, while any change of meaning does.

Regions: :meth:`Policy.region_for` is the one decision of what region a country value is in, for
visitors (geolocation), companies (enrichment), the guard and every columnar path alike. A value
is read with ``schemas.countries`` (NFKC, trimmed, upper-cased, reserved aliases such as ``UK``
resolved); a code a region lists is that region, any other ISO 3166-1 alpha-2 code is ``OTHER``,
and anything else (``ZZ``, ``AP``, empty, None) is ``UNKNOWN``, which is restricted. ``OTHER`` is
the only unrestricted region, so "unrestricted" and "``OTHER``" mean the same everywhere.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from functools import cached_property
from importlib import resources
from pathlib import Path
from typing import Any, NamedTuple

import yaml

from schemas.countries import ALIASES, ISO_3166_1_ALPHA2, normalise_country
from schemas.names import MEDIA, SECRET, NameClassifier, name_tokens

__all__ = [
    "COUNTRY_FIELD",
    "ORIGINS",
    "OTHER_REGION",
    "SUBJECT_KINDS",
    "SUBJECT_SCOPES",
    "UNKNOWN_REGION",
    "Category",
    "DataSource",
    "KeyLink",
    "LifecycleEvent",
    "MinimumAge",
    "Party",
    "Policy",
    "PolicyError",
    "Purpose",
    "Recipient",
    "RecordsOfProcessing",
    "Region",
    "Retention",
    "Route",
    "Source",
    "SubjectLink",
    "default_policy_path",
    "filled_any",
    "load_policy",
]

RETENTION_RULES = ("fixed", "account_lifetime", "service_lifetime", "until_opt_out", "never_store")
LEGAL_BASES = (
    "consent",
    "contract",
    "legal_obligation",
    "vital_interests",
    "public_task",
    "legitimate_interest",
)
MODULES = ("privacy_policy", "dpsa")
# Where a category's data comes from, besides a party of ``records_of_processing.parties``.
ORIGINS = {"data_subject": "the data subject", "service": "the Feature itself"}
# The kinds of data subject a request or a lifecycle event may name, and how values of each kind
# compare (``transforms.retention.matching.normalise``): the vocabulary of ``subjects.fields``.
SUBJECT_KINDS: dict[str, str] = {
    "user_id": "identifier",
    "uin": "identifier",
    "sdk_app_id": "identifier",
    "business_email": "email",
    "business_phone": "phone",
    "linkedin_url": "linkedin",
    "ip": "ip",
}
# A kind unique only within another: a request may narrow a user_id to one application.
SUBJECT_SCOPES: dict[str, str] = {"user_id": "sdk_app_id"}
UNKNOWN_REGION = "UNKNOWN"
# The record field a purpose's jurisdictions are read from: the visitor's country code.
COUNTRY_FIELD = "country"
OTHER_REGION = "OTHER"
_MICROS_PER_DAY = int(timedelta(days=1).total_seconds()) * 1_000_000
_NAME = re.compile(r"^[a-z][a-z0-9_]*$")
_KINDS = ", ".join(SUBJECT_KINDS)


class PolicyError(ValueError):
    """The policy file is malformed; the message lists every problem with its YAML path."""


@dataclass(frozen=True)
class Retention:
    """How long a record may be kept.

    ``days`` is the fixed period for ``fixed`` and the grace period after the lifecycle event for
    ``account_lifetime``/``service_lifetime``; it is None for the other rules.
    """

    rule: str
    days: int | None = None

    @property
    def label(self) -> str:
        """The value of the ``retention_rule`` column, e.g. ``fixed_180d``."""
        if self.rule == "fixed":
            return f"fixed_{self.days}d"
        if self.rule in ("account_lifetime", "service_lifetime"):
            return f"{self.rule}_plus_{self.days}d"
        return self.rule

    @property
    def open_ended(self) -> bool:
        """True when the expiry is unknown at ingestion time (it waits for a lifecycle event)."""
        return self.rule in ("account_lifetime", "service_lifetime", "until_opt_out")

    def expires_at(self, event_time_us: int | None) -> int | None:
        """Expiry in epoch microseconds for a record of that event time; None when open-ended."""
        if self.rule == "fixed":
            if event_time_us is None:
                raise ValueError("fixed retention needs the record's event time")
            return event_time_us + self.days * _MICROS_PER_DAY
        if self.rule == "never_store":
            raise ValueError("never_store data has no expiry: it must not be stored at all")
        return None


def filled_any(record: Mapping[str, Any], fields: Iterable[str]) -> bool:
    """True if one of ``fields`` has a value in ``record``: the policy's notion of a field being
    present (neither None nor ""). A plain loop: it runs for every record and category, where a
    generator costs twice as much."""
    for value in map(record.get, fields):  # noqa: SIM110 (see the docstring)
        if value is not None and value != "":
            return True
    return False


@dataclass(frozen=True)
class Purpose:
    """A processing purpose, possibly conditional on the record's region and fields."""

    name: str
    not_in_regions: frozenset[str] = frozenset()
    requires_any_field: tuple[str, ...] = ()
    retention: Retention | None = None
    # An allow-list of jurisdictions: the purpose applies only to records whose ``country`` (the
    # visitor's, set by geolocation) is one of these codes. Empty: no such condition.
    only_in_countries: frozenset[str] = frozenset()

    def applies(self, region: str, record: Mapping[str, Any]) -> bool:
        if region in self.not_in_regions:
            return False
        if self.only_in_countries and not self.in_jurisdiction(record):
            return False
        if self.requires_any_field:
            return filled_any(record, self.requires_any_field)
        return True

    def in_jurisdiction(self, record: Mapping[str, Any]) -> bool:
        """True when the record's ``country`` is one :attr:`only_in_countries` allows."""
        return record.get(COUNTRY_FIELD) in self.only_in_countries


@dataclass(frozen=True)
class Region:
    name: str
    restricted: bool
    countries: frozenset[str] = frozenset()


@dataclass(frozen=True)
class MinimumAge:
    """DPSA special condition: end users below ``age`` need parental consent to be stored.

    The fields are found by meaning, at any depth: ``End_User_Age``, ``endUserAge`` and
    ``{"user": {"end_user_age": 12}}`` all declare an age (``schemas.names`` reads a name as
    words). A producer's spelling or nesting must not be a way around the condition.
    """

    age: int
    age_field: str
    consent_field: str

    def blocks(self, raw: Mapping[str, Any]) -> bool:
        """True when ``raw`` declares an end user below the age without parental consent.

        A declared age that is not a finite, non-negative number (a string, a boolean, NaN,
        infinity, a negative number) cannot be checked: it blocks too (fail closed). Consent is
        only the value ``true``."""
        return self._verdict(*self._declared(raw))

    def blocks_flat(self, raw: Mapping[str, Any]) -> bool:
        """:meth:`blocks` for a record known to hold only declared (exactly spelled) keys and
        no nested value that could hide a field: the fast path reads the two keys alone."""
        age = raw.get(self.age_field)
        return self._verdict([] if age is None else [age], raw.get(self.consent_field) is True)

    def _verdict(self, ages: list[Any], consented: bool) -> bool:
        if not ages:
            return False
        checkable = all(_is_age(a) for a in ages)
        return not checkable or (min(ages) < self.age and not consented)

    def _declared(self, raw: Mapping[str, Any]) -> tuple[list[Any], bool]:
        """The ages ``raw`` declares at any depth, and whether it gives parental consent."""
        age_words, consent_words = name_tokens(self.age_field), name_tokens(self.consent_field)
        ages: list[Any] = []
        consented = False
        stack: list[Any] = [raw]
        while stack:  # iterative: the depth of a record is the producer's to choose
            node = stack.pop()
            if isinstance(node, Mapping):
                for key, value in node.items():
                    words = name_tokens(key) if isinstance(key, str) else ()
                    if words == age_words and value is not None:
                        ages.append(value)
                    elif words == consent_words:
                        consented = consented or value is True
                    if isinstance(value, Mapping | list):
                        stack.append(value)
            elif isinstance(node, list):
                stack.extend(v for v in node if isinstance(v, Mapping | list))
        return ages, consented


def _is_age(value: Any) -> bool:
    return (
        not isinstance(value, bool)
        and isinstance(value, int | float)
        and math.isfinite(value)
        and value >= 0
    )


class KeyLink(NamedTuple):
    """Rows of ``category`` tie a value of ``own_kind`` (in field ``own``) to one of
    ``their_kind`` (in field ``theirs``): an account's uin to an application's sdk_app_id."""

    category: str
    own: str
    theirs: str
    own_kind: str
    their_kind: str


@dataclass(frozen=True)
class LifecycleEvent:
    """An event that ends open-ended retention for the records it is keyed to.

    ``keys`` are the subject kinds that may identify its data subject or application (``uin``;
    ``sdk_app_id``; ``business_email``, ``business_phone`` or ``linkedin_url``), found in the
    fields each category declares of them (``Category.subject_fields``): one event names exactly
    one of them. ``ends`` are the retention rules whose records it makes expire:
    ``days_after`` the event for lifetime rules, at the event for ``until_opt_out``.
    ``cascades_to`` names the events that follow, at the same time, for every entity found with
    this one (an account's deletion ends its applications' services): see :meth:`links_to`.
    """

    name: str
    keys: tuple[str, ...]
    ends: frozenset[str]
    cascades_to: tuple[str, ...] = ()

    def applies_to(self, category: Category) -> bool:
        """True when records of ``category`` may be affected (the rule of the category or of one
        of its purposes is ended by this event, and the category declares a field of a key)."""
        rules = {category.retention.rule} | {
            p.retention.rule for p in category.purposes if p.retention
        }
        return bool(rules & self.ends) and any(category.subject_columns(k) for k in self.keys)

    def links_to(self, then: LifecycleEvent, categories: Iterable[Category]) -> tuple[KeyLink, ...]:
        """Where the entities of ``then`` are found from this event's: every field of a key of
        this event and every field of a key of ``then`` that a stored category declares."""
        return tuple(
            KeyLink(category.name, own, theirs, own_kind, their_kind)
            for category in sorted(categories, key=lambda c: c.name)
            if category.stored
            for own_kind in self.keys
            for own in category.subject_columns(own_kind)
            for their_kind in then.keys
            if their_kind != own_kind
            for theirs in category.subject_columns(their_kind)
        )

    def expires_at(self, retention: Retention, event_time_us: int) -> int | None:
        """The expiry of a record with ``retention`` once this event happened (None: unaffected)."""
        if retention.rule not in self.ends:
            return None
        if retention.rule == "until_opt_out":
            return event_time_us
        return event_time_us + retention.days * _MICROS_PER_DAY


@dataclass(frozen=True)
class Route:
    """Sends a record of a source to ``category`` when its condition holds (empty = always)."""

    category: str
    when_present: tuple[str, ...] = ()
    when_equals: Mapping[str, Any] = field(default_factory=dict)

    def matches(self, record: Mapping[str, Any]) -> bool:
        if self.when_present and not any(
            record.get(f) not in (None, "") for f in self.when_present
        ):
            return False
        return all(record.get(k) == v for k, v in self.when_equals.items())


@dataclass(frozen=True)
class Source:
    """An input whose records feed one of several categories (first matching route wins)."""

    name: str
    input_schema: str
    routes: tuple[Route, ...]


@dataclass(frozen=True)
class SubjectLink:
    """Rows of the categories ``to`` belong to a data subject when their field ``by`` holds the
    value of ``by`` in one of the subject's own rows of the categories ``sources`` (resolved at
    load), for requests naming a subject of one of ``kinds`` (empty: any kind).

    A visit's corporate visitor information (``event_id``), an account's applications
    (``sdk_app_id``): rows that hold no identifier of the subject, but were derived from its."""

    name: str
    by: str
    to: tuple[str, ...]
    sources: tuple[str, ...]
    kinds: tuple[str, ...] = ()

    def follows(self, kind: str) -> bool:
        """True when a request of ``kind`` reaches further through this link."""
        return not self.kinds or kind in self.kinds


@dataclass(frozen=True)
class Party:
    """A third party that data comes from or is shared with (``records_of_processing.parties``):
    the records of processing name it, so a category's source and recipients refer to it by
    key and say the same thing everywhere."""

    key: str
    name: str  # as the policy names it: AroundDeal Holdings Limited
    role: str


@dataclass(frozen=True)
class Recipient:
    """A party a category's data is shared with: which ``fields``, why, and the category the
    party sends back (``returns``), whose region restrictions say what is never requested."""

    party: str
    fields: tuple[str, ...]
    purpose: str
    returns: str | None = None


@dataclass(frozen=True)
class DataSource:
    """Where a category's data comes from: ``origins`` are ``data_subject``, ``service`` or
    parties; ``based_on`` the fields a party derives it from (which some category shares with
    that party)."""

    origins: tuple[str, ...]
    description: str
    based_on: tuple[str, ...] = ()


@dataclass(frozen=True)
class RecordsOfProcessing:
    """What the records of processing (GDPR Art. 30) need beyond the categories: the controller,
    what each module says of sharing, the kinds of data subjects and the third parties."""

    controller: str
    sharing: Mapping[str, str]  # module -> what it says of storage, sharing, sub-processors
    data_subjects: Mapping[str, str]  # name -> who they are
    parties: Mapping[str, Party]


@dataclass(frozen=True)
class Category:
    """One data category of the policy, with everything the pipelines need to handle it."""

    name: str
    module: str
    description: str
    event_time: str | None
    fields: tuple[str, ...]
    purposes: tuple[Purpose, ...]
    legal_basis: str
    retention: Retention
    store: str
    key: str | None = None
    field_groups: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    forbidden_fields_in_regions: Mapping[str, frozenset[str]] = field(default_factory=dict)
    restricted_country_field: str | None = None
    fingerprints: Mapping[str, str] = field(default_factory=dict)  # stored field <- input field
    # Records of processing (None/empty: not declared; the pipelines do not need them, the
    # records of processing refuse a category without them).
    data_subjects: tuple[str, ...] = ()
    data_source: DataSource | None = None
    recipients: tuple[Recipient, ...] | None = None
    not_stored: tuple[str, ...] = ()
    # field -> the subject kind it identifies (the policy's ``subjects.fields`` for the category)
    subject_fields: Mapping[str, str] = field(default_factory=dict)

    @property
    def stored(self) -> bool:
        return self.retention.rule != "never_store"

    @property
    def shared_with(self) -> tuple[str, ...]:
        """The parties this category's data is shared with."""
        return tuple(dict.fromkeys(r.party for r in self.recipients or ()))

    def subject_columns(self, kind: str) -> tuple[str, ...]:
        """The fields of this category that identify a subject of ``kind`` (may be none)."""
        return tuple(f for f, k in self.subject_fields.items() if k == kind)

    def effective(
        self, region: str, record: Mapping[str, Any]
    ) -> tuple[tuple[str, ...], Retention]:
        """The purposes that apply to this record and the retention that follows from them.

        A conditional purpose with its own retention (direct marketing: until opt-out) replaces
        the category's retention while it applies.
        """
        applying = tuple(p for p in self.purposes if p.applies(region, record))
        retention = next((p.retention for p in applying if p.retention), self.retention)
        return tuple(p.name for p in applying), retention


@dataclass(frozen=True)
class Policy:
    """The whole retention schedule; build it with :func:`load_policy`."""

    name: str
    version: str
    documents: Mapping[str, str]
    regions: Mapping[str, Region]
    categories: Mapping[str, Category]
    name_terms: Mapping[str, tuple[str, ...]]  # never_in_clear: class -> terms (schemas.names)
    dead_letter_retention: Retention
    minimum_age: MinimumAge | None = None
    sources: Mapping[str, Source] = field(default_factory=dict)
    lifecycle_events: Mapping[str, LifecycleEvent] = field(default_factory=dict)
    source: str = ""
    schema_dirs: tuple[str, ...] = ()  # searched for .avsc files before the package's own
    subject_links: tuple[SubjectLink, ...] = ()  # subjects.links
    records: RecordsOfProcessing | None = None  # records_of_processing

    def subject_names(self, kind: str) -> frozenset[str]:
        """Every name a value of ``kind`` is held under: the kind itself and each field a
        category declares of it (``google_email`` for an e-mail, ``client_ip`` for an IP)."""
        return frozenset(
            {kind} | {f for c in self.categories.values() for f in c.subject_columns(kind)}
        )

    @cached_property
    def _listed(self) -> dict[str, str]:
        """Country code -> the name of the region that lists it."""
        return {code: r.name for r in self.regions.values() for code in r.countries}

    def region_for(self, country: object) -> str:
        """The region of a country value, in any spelling (see the module docstring).

        A code a region lists is that region; any other ISO 3166-1 alpha-2 code is ``OTHER``;
        a value that names no country (None, empty, ``ZZ``, ``AP``, ``Germany``...) is
        ``UNKNOWN``, restricted: fail closed.
        """
        code = normalise_country(country)
        if code is None:
            return UNKNOWN_REGION
        listed = self._listed.get(code)
        if listed is not None:
            return listed
        return OTHER_REGION if code in ISO_3166_1_ALPHA2 else UNKNOWN_REGION

    def country_code(self, country: object) -> str | None:
        """The code :meth:`region_for` places ``country`` by (``" uk "`` -> ``GB``), or None
        when it names no country the policy can place (its region is ``UNKNOWN``)."""
        if self.region_for(country) == UNKNOWN_REGION:
            return None
        return normalise_country(country)

    def is_restricted(self, region: str) -> bool:
        """Unknown region names are restricted: fail closed."""
        found = self.regions.get(region)
        return True if found is None else found.restricted

    @cached_property
    def names(self) -> NameClassifier:
        """The classifier of field names by meaning, built from ``never_in_clear``."""
        return NameClassifier(self.name_terms)

    def is_secret_name(self, key: str, *, allow_derived: bool = False) -> bool:
        """True when ``key`` means a credential, in any spelling (``schemas.names``).
        ``allow_derived``: the caller computed the value (a stored fingerprint column)."""
        return self.names.is_a(SECRET, key, allow_derived=allow_derived)

    def is_media_name(self, key: str) -> bool:
        """True when ``key`` means audio/video content, in any spelling."""
        return self.names.is_a(MEDIA, key)

    def category(self, name: str) -> Category:
        try:
            return self.categories[name]
        except KeyError:
            known = ", ".join(sorted(self.categories))
            raise PolicyError(f"unknown data category {name!r}; the policy has: {known}") from None

    def source_named(self, name: str) -> Source:
        try:
            return self.sources[name]
        except KeyError:
            known = ", ".join(sorted(self.sources))
            raise PolicyError(f"unknown source {name!r}; the policy has: {known}") from None


def default_policy_path() -> str:
    """The policy bundled with the package (``schemas/policy.yaml``)."""
    return str(resources.files("schemas").joinpath("policy.yaml"))


def load_policy(path: str | Path | None = None) -> Policy:
    """Read, validate and version the policy file; raise :class:`PolicyError` on any problem."""
    path = str(path or default_policy_path())
    try:
        text = _read_text(path)
    except OSError as exc:
        raise PolicyError(f"{path}: cannot read the policy file: {exc}") from exc
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise PolicyError(f"{path}: not valid YAML: {exc}") from exc
    # A policy kept outside the package brings the schemas of its own categories next to it.
    own_schemas = Path(path).parent / "avro"
    dirs = (str(own_schemas),) if "://" not in path and own_schemas.is_dir() else ()
    return parse_policy(doc, source=path, schema_dirs=dirs)


def parse_policy(doc: Any, source: str = "<policy>", schema_dirs: tuple[str, ...] = ()) -> Policy:
    """Validate an already-parsed policy document (see :func:`load_policy`)."""
    v = _Validator(source)
    policy = v.policy(doc)
    v.raise_if_errors()
    assert policy is not None
    return dataclasses.replace(policy, schema_dirs=schema_dirs)


def _read_text(path: str) -> str:
    if "://" in path:
        # Beam filesystems (gs://, s3://) for policies staged next to the job; imported lazily
        # so that schemas/ does not depend on Beam.
        from apache_beam.io.filesystems import FileSystems

        with FileSystems.open(path) as fh:
            return fh.read().decode("utf-8")
    return Path(path).read_text(encoding="utf-8")


def _version(doc: Any) -> str:
    canonical = json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return "sha256:" + hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:16]


class _Validator:
    """Collects every problem with its path instead of stopping at the first one."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.errors: list[str] = []

    def error(self, path: str, message: str) -> None:
        self.errors.append(f"  {path}: {message}")

    def raise_if_errors(self) -> None:
        if self.errors:
            raise PolicyError(
                f"{self.source}: invalid policy ({len(self.errors)} problem(s)):\n"
                + "\n".join(self.errors)
            )

    # -- primitives ---------------------------------------------------------------------------
    def mapping(self, value: Any, path: str) -> Mapping[str, Any]:
        if not isinstance(value, Mapping):
            self.error(path, f"must be a mapping, got {type(value).__name__}")
            return {}
        return value

    def names(self, value: Any, path: str, *, allow_empty: bool = True) -> tuple[str, ...]:
        if value is None and allow_empty:
            return ()
        if not isinstance(value, list):
            self.error(path, f"must be a list of names, got {type(value).__name__}")
            return ()
        out: list[str] = []
        for i, item in enumerate(value):
            if not isinstance(item, str) or not _NAME.match(item):
                self.error(f"{path}[{i}]", f"must be a snake_case name, got {item!r}")
            elif item in out:
                self.error(f"{path}[{i}]", f"duplicate name {item!r}")
            else:
                out.append(item)
        if not out and not allow_empty:
            self.error(path, "must not be empty")
        return tuple(out)

    def string(self, value: Any, path: str, *, choices: Iterable[str] | None = None) -> str:
        if not isinstance(value, str) or not value.strip():
            self.error(path, f"must be a non-empty string, got {value!r}")
            return ""
        if choices is not None and value not in choices:
            self.error(path, f"must be one of {', '.join(choices)}; got {value!r}")
        return value

    def unknown_keys(self, doc: Mapping[str, Any], allowed: Iterable[str], path: str) -> None:
        for key in doc:
            if key not in allowed:
                self.error(f"{path}.{key}" if path else str(key), "unknown key (typo?)")

    # -- sections -----------------------------------------------------------------------------
    def policy(self, doc: Any) -> Policy | None:
        top = self.mapping(doc, "<top level>")
        self.unknown_keys(
            top,
            (
                "policy",
                "documents",
                "regions",
                "never_in_clear",
                "dead_letters",
                "minimum_age",
                "subjects",
                "lifecycle_events",
                "sources",
                "records_of_processing",
                "categories",
            ),
            "",
        )
        name = self.string(top.get("policy"), "policy")
        documents = {
            str(k): str(v) for k, v in self.mapping(top.get("documents", {}), "documents").items()
        }
        regions = self.regions(top.get("regions"))
        terms = self.never_in_clear(top.get("never_in_clear"))
        dead = self.mapping(top.get("dead_letters"), "dead_letters")
        dead_retention = self.retention(dead.get("retention"), "dead_letters.retention")
        if dead_retention.rule != "fixed":
            self.error("dead_letters.retention.rule", "dead letters need a fixed retention")
        categories = self.categories(top.get("categories"), regions)
        classifier = self.classifier(terms)
        for category in categories.values():
            for stored, secret in category.fingerprints.items():
                if classifier is not None and not classifier.is_a(SECRET, secret):
                    self.error(
                        f"categories.{category.name}.fingerprints.{stored}",
                        f"{secret!r} must be a secret by never_in_clear.secret_terms",
                    )
        records = self.records_of_processing(top.get("records_of_processing"))
        self.records_references(records, categories, classifier)
        minimum_age = self.minimum_age(top.get("minimum_age"))
        categories, subject_links = self.subjects(top.get("subjects"), categories)
        sources = self.sources(top.get("sources"), categories)
        lifecycle = self.lifecycle_events(top.get("lifecycle_events"), categories)
        return Policy(
            name=name,
            version=_version(doc),
            documents=documents,
            regions=regions,
            categories=categories,
            name_terms=terms,
            dead_letter_retention=dead_retention,
            minimum_age=minimum_age,
            sources=sources,
            lifecycle_events=lifecycle,
            source=self.source,
            subject_links=subject_links,
            records=records,
        )

    def regions(self, doc: Any) -> dict[str, Region]:
        regions: dict[str, Region] = {}
        for name, body in self.mapping(doc, "regions").items():
            path = f"regions.{name}"
            body = self.mapping(body, path)
            self.unknown_keys(body, ("restricted", "countries"), path)
            restricted = body.get("restricted")
            if not isinstance(restricted, bool):
                self.error(f"{path}.restricted", "must be true or false")
                restricted = True
            countries = body.get("countries") or []
            if not isinstance(countries, list):
                self.error(f"{path}.countries", "must be a list of country codes")
                countries = []
            codes = set()
            for i, code in enumerate(countries):
                if not isinstance(code, str) or not re.fullmatch(r"[A-Z]{2}", code):
                    hint = " (YAML reads a bare NO as false: quote it)" if code is False else ""
                    self.error(
                        f"{path}.countries[{i}]", f"must be a 2-letter code, got {code!r}{hint}"
                    )
                elif code in ALIASES:  # never looked up: region_for reads it as its country
                    self.error(
                        f"{path}.countries[{i}]",
                        f"{code} is read as {ALIASES[code]}: list {ALIASES[code]} instead",
                    )
                else:
                    codes.add(code)
            regions[str(name)] = Region(str(name), restricted, frozenset(codes))
        for required in (UNKNOWN_REGION, OTHER_REGION):
            if required not in regions:
                self.error("regions", f"region {required} must be declared")
        if UNKNOWN_REGION in regions and not regions[UNKNOWN_REGION].restricted:
            self.error(f"regions.{UNKNOWN_REGION}.restricted", "must be true (fail closed)")
        if OTHER_REGION in regions and regions[OTHER_REGION].restricted:
            self.error(
                f"regions.{OTHER_REGION}.restricted",
                "must be false (OTHER is every country no restricted region lists)",
            )
        for region in regions.values():
            if region.name not in (OTHER_REGION, UNKNOWN_REGION) and not region.restricted:
                self.error(
                    f"regions.{region.name}.restricted",
                    "only OTHER is unrestricted: make the region restricted, or leave its "
                    "countries unlisted (they are OTHER)",
                )
        seen: dict[str, str] = {}
        for region in regions.values():
            for code in region.countries:
                if code in seen:
                    self.error(f"regions.{region.name}", f"{code} is also in {seen[code]}")
                seen[code] = region.name
        return regions

    def never_in_clear(self, doc: Any) -> dict[str, tuple[str, ...]]:
        """``{secret: terms, media: terms}`` (the vocabulary of ``schemas.names``)."""
        body = self.mapping(doc, "never_in_clear")
        keys = {SECRET: "secret_terms", MEDIA: "media_terms"}
        self.unknown_keys(body, tuple(keys.values()), "never_in_clear")
        terms: dict[str, tuple[str, ...]] = {}
        for cls, key in keys.items():
            path, value = f"never_in_clear.{key}", body.get(key)
            if not isinstance(value, list) or not value:
                self.error(path, "must be a non-empty list of terms")
            elif not all(isinstance(term, str) and term.strip("= ") for term in value):
                self.error(path, "every term must be words, optionally starting with '='")
            else:
                terms[cls] = tuple(value)
        return terms

    def classifier(self, terms: Mapping[str, tuple[str, ...]]) -> NameClassifier | None:
        """The name classifier of ``terms``, or None (and the error) if they do not make one."""
        if set(terms) != {SECRET, MEDIA}:
            return None  # already reported
        try:
            return NameClassifier(terms)
        except (TypeError, ValueError) as err:
            self.error("never_in_clear", str(err))
            return None

    def retention(self, doc: Any, path: str) -> Retention:
        body = self.mapping(doc, path)
        self.unknown_keys(body, ("rule", "days", "days_after"), path)
        rule = self.string(body.get("rule"), f"{path}.rule", choices=RETENTION_RULES)
        days_key = {
            "fixed": "days",
            "account_lifetime": "days_after",
            "service_lifetime": "days_after",
        }.get(rule)
        days = None
        if days_key:
            days = body.get(days_key)
            if isinstance(days, bool) or not isinstance(days, int) or days <= 0:
                self.error(f"{path}.{days_key}", f"must be a positive integer, got {days!r}")
                days = 1
        for key in ("days", "days_after"):
            if key in body and key != days_key:
                self.error(f"{path}.{key}", f"does not apply to rule {rule!r}")
        return Retention(rule if rule in RETENTION_RULES else "never_store", days)

    def purposes(
        self, doc: Any, path: str, regions: Mapping[str, Region], fields: tuple[str, ...]
    ) -> tuple[Purpose, ...]:
        if not isinstance(doc, list) or not doc:
            self.error(path, "must be a non-empty list of purposes")
            return ()
        out = []
        for i, item in enumerate(doc):
            ipath = f"{path}[{i}]"
            if isinstance(item, str):
                if not _NAME.match(item):
                    self.error(ipath, f"must be a snake_case name, got {item!r}")
                out.append(Purpose(item))
                continue
            body = self.mapping(item, ipath)
            self.unknown_keys(
                body,
                ("name", "not_in_regions", "requires_any_field", "retention", "only_in_countries"),
                ipath,
            )
            name = self.string(body.get("name"), f"{ipath}.name")
            not_in = frozenset(body.get("not_in_regions") or ())
            for region in sorted(not_in - set(regions)):
                self.error(f"{ipath}.not_in_regions", f"unknown region {region!r}")
            requires = self.names(body.get("requires_any_field"), f"{ipath}.requires_any_field")
            for f in requires:
                if f not in fields:
                    self.error(
                        f"{ipath}.requires_any_field", f"{f!r} is not in the category fields"
                    )
            retention = (
                self.retention(body["retention"], f"{ipath}.retention")
                if "retention" in body
                else None
            )
            jurisdictions = self.countries(
                body.get("only_in_countries"), f"{ipath}.only_in_countries"
            )
            out.append(Purpose(name, not_in, requires, retention, jurisdictions))
        return tuple(out)

    def countries(self, value: Any, path: str) -> frozenset[str]:
        """A list of ISO 3166-1 alpha-2 codes (None: empty)."""
        if value is None:
            return frozenset()
        if not isinstance(value, list) or not value:
            self.error(path, "must be a non-empty list of ISO 3166-1 alpha-2 codes")
            return frozenset()
        codes = set()
        for i, code in enumerate(value):
            if not isinstance(code, str) or code not in ISO_3166_1_ALPHA2:
                self.error(f"{path}[{i}]", f"must be an ISO 3166-1 alpha-2 code, got {code!r}")
            else:
                codes.add(code)
        return frozenset(codes)

    def minimum_age(self, doc: Any) -> MinimumAge | None:
        if doc is None:
            return None
        body = self.mapping(doc, "minimum_age")
        self.unknown_keys(body, ("age", "age_field", "consent_field"), "minimum_age")
        age = body.get("age")
        if isinstance(age, bool) or not isinstance(age, int) or not 0 < age < 30:
            self.error("minimum_age.age", f"must be an age in years (1-29), got {age!r}")
            age = 16
        names = self.names([body.get("age_field"), body.get("consent_field")], "minimum_age")
        if len(names) != 2:
            return None
        return MinimumAge(age, *names)

    def lifecycle_events(
        self, doc: Any, categories: Mapping[str, Category]
    ) -> dict[str, LifecycleEvent]:
        events: dict[str, LifecycleEvent] = {}
        pending: list[tuple[LifecycleEvent, str, str]] = []  # cascades, checked once all are read
        stored = [c for c in categories.values() if c.stored]
        for name, body in self.mapping(doc or {}, "lifecycle_events").items():
            path = f"lifecycle_events.{name}"
            body = self.mapping(body, path)
            self.unknown_keys(body, ("key", "keys", "ends", "cascades_to"), path)
            if "key" in body:
                self.error(f"{path}.key", "replaced by keys, a list of the kinds it may name")
            if "keys" not in body:
                self.error(f"{path}.keys", "missing: list the subject kinds the event may name")
            raw_keys = body.get("keys")
            keys = self.names(raw_keys, f"{path}.keys", allow_empty="keys" not in body)
            ends = self.names(body.get("ends"), f"{path}.ends", allow_empty=False)
            for rule in ends:
                if rule not in ("account_lifetime", "service_lifetime", "until_opt_out"):
                    self.error(f"{path}.ends", f"{rule!r} is not an open-ended retention rule")
            for i, key in enumerate(raw_keys if isinstance(raw_keys, list) else ()):
                if key not in keys:
                    continue  # not a name: reported above
                if key not in SUBJECT_KINDS:
                    self.error(f"{path}.keys[{i}]", f"{key!r} is not a subject kind ({_KINDS})")
                    continue
                alone = LifecycleEvent(str(name), (key,), frozenset(ends))
                if not any(alone.applies_to(c) for c in stored):
                    self.error(
                        f"{path}.keys[{i}]",
                        f"no stored category whose retention this event ends declares a field "
                        f"of {key!r} (subjects.fields)",
                    )
            raw_cascades = body.get("cascades_to")
            cascades = self.names(raw_cascades, f"{path}.cascades_to")
            event = LifecycleEvent(str(name), keys, frozenset(ends), cascades)
            events[event.name] = event
            for i, then in enumerate(raw_cascades if isinstance(raw_cascades, list) else ()):
                if then in cascades:
                    pending.append((event, then, f"{path}.cascades_to[{i}]"))
        for event, then, path in pending:
            self.lifecycle_cascade(event, then, events, stored, path)
        return events

    def lifecycle_cascade(
        self,
        event: LifecycleEvent,
        then: str,
        events: Mapping[str, LifecycleEvent],
        stored: list[Category],
        path: str,
    ) -> None:
        """``event`` cascades to ``then``: another event, of one step, whose entities some
        stored category ties to this event's."""
        if then == event.name:
            self.error(path, "an event cannot cascade to itself")
        elif then not in events:
            self.error(path, f"{then!r} is not a lifecycle event")
        elif events[then].cascades_to:
            self.error(path, f"{then} cascades further; a cascade is one step")
        elif event.keys and events[then].keys and not event.links_to(events[then], stored):
            self.error(
                path,
                f"no stored category holds both a key of {event.name} "
                f"({', '.join(event.keys)}) and one of {then} ({', '.join(events[then].keys)})",
            )

    def subjects(
        self, doc: Any, categories: Mapping[str, Category]
    ) -> tuple[dict[str, Category], tuple[SubjectLink, ...]]:
        """``subjects``: the categories with their ``subject_fields``, and the links.

        A stored field named after a kind that is not declared is an error: a subject's
        requests would silently never find it."""
        body = self.mapping(doc or {}, "subjects")
        self.unknown_keys(body, ("fields", "links"), "subjects")
        declared = self.mapping(body.get("fields") or {}, "subjects.fields")
        out = dict(categories)
        for name, fields in declared.items():
            path = f"subjects.fields.{name}"
            category = categories.get(name) if isinstance(name, str) else None
            if category is None:
                self.error(path, f"unknown category {name!r}")
                continue
            if not category.stored:
                self.error(path, f"{name!r} is never stored")
                continue
            kinds: dict[str, str] = {}
            for column, kind in self.mapping(fields, path).items():
                if column not in category.fields:
                    self.error(f"{path}.{column}", f"{column!r} is not in the category fields")
                elif not isinstance(kind, str) or kind not in SUBJECT_KINDS:
                    self.error(f"{path}.{column}", f"{kind!r} is not a subject kind ({_KINDS})")
                else:
                    kinds[column] = kind
            out[name] = dataclasses.replace(category, subject_fields=kinds)
        for category in out.values():
            for column in category.fields:
                if column in SUBJECT_KINDS and column not in category.subject_fields:
                    self.error(
                        f"subjects.fields.{category.name}",
                        f"{column!r} is named after a subject kind but not declared: declare "
                        f"it ({column}: {column}), or requests for its subject never find it",
                    )
        links = tuple(
            self.subject_link(str(name), link, out)
            for name, link in self.mapping(body.get("links") or {}, "subjects.links").items()
        )
        return out, tuple(link for link in links if link is not None)

    def subject_link(
        self, name: str, doc: Any, categories: Mapping[str, Category]
    ) -> SubjectLink | None:
        path = f"subjects.links.{name}"
        body = self.mapping(doc, path)
        self.unknown_keys(body, ("from", "by", "to", "subjects"), path)
        by = self.string(body.get("by"), f"{path}.by")
        targets = self.names(body.get("to"), f"{path}.to", allow_empty=False)
        explicit = self.names(body.get("from"), f"{path}.from")
        kinds = self.names(body.get("subjects"), f"{path}.subjects")
        before = len(self.errors)
        for kind in kinds:
            if kind not in SUBJECT_KINDS:
                self.error(f"{path}.subjects", f"{kind!r} is not a subject kind ({_KINDS})")
        for key, names in (("to", targets), ("from", explicit)):
            for category in names:
                found = categories.get(category)
                if found is None or not found.stored:
                    self.error(f"{path}.{key}", f"{category!r} is not a stored category")
                elif by and by not in found.fields:
                    self.error(f"{path}.{key}", f"{category!r} has no field {by!r}")
        sources = explicit or tuple(
            c.name
            for c in sorted(categories.values(), key=lambda c: c.name)
            if c.stored
            and c.name not in targets
            and by in c.fields
            and any(c.subject_columns(k) for k in (kinds or SUBJECT_KINDS))
        )
        if not sources and len(self.errors) == before:
            self.error(path, f"no stored category holds {by!r} and a field of its subjects")
        if len(self.errors) > before:
            return None
        return SubjectLink(name, by, targets, sources, kinds)

    def sources(self, doc: Any, categories: Mapping[str, Category]) -> dict[str, Source]:
        sources: dict[str, Source] = {}
        for name, body in self.mapping(doc or {}, "sources").items():
            path = f"sources.{name}"
            body = self.mapping(body, path)
            self.unknown_keys(body, ("input_schema", "routes"), path)
            schema = self.string(body.get("input_schema"), f"{path}.input_schema")
            routes = []
            raw_routes = body.get("routes")
            if not isinstance(raw_routes, list) or not raw_routes:
                self.error(f"{path}.routes", "must be a non-empty list of routes")
                raw_routes = []
            for i, raw in enumerate(raw_routes):
                rpath = f"{path}.routes[{i}]"
                route = self.mapping(raw, rpath)
                self.unknown_keys(route, ("category", "when_present", "when_equals"), rpath)
                category = self.string(route.get("category"), f"{rpath}.category")
                if category and category not in categories:
                    self.error(f"{rpath}.category", f"unknown category {category!r}")
                elif category and not categories[category].stored:
                    self.error(f"{rpath}.category", f"{category!r} is never stored")
                present = self.names(route.get("when_present"), f"{rpath}.when_present")
                equals = dict(self.mapping(route.get("when_equals", {}), f"{rpath}.when_equals"))
                routes.append(Route(category, present, equals))
            if routes and (routes[-1].when_present or routes[-1].when_equals):
                self.error(f"{path}.routes", "the last route must be unconditional (a fallback)")
            sources[str(name)] = Source(str(name), schema, tuple(routes))
        return sources

    def categories(self, doc: Any, regions: Mapping[str, Region]) -> dict[str, Category]:
        categories: dict[str, Category] = {}
        body = self.mapping(doc, "categories")
        if not body:
            self.error("categories", "must declare at least one category")
        for name, cat in body.items():
            path = f"categories.{name}"
            if not isinstance(name, str) or not _NAME.match(name):
                self.error(path, "category names must be snake_case")
            categories[str(name)] = self.category(str(name), self.mapping(cat, path), path, regions)
        return categories

    def category(
        self, name: str, body: Mapping[str, Any], path: str, regions: Mapping[str, Region]
    ) -> Category:
        self.unknown_keys(
            body,
            (
                "module",
                "description",
                "event_time",
                "key",
                "fields",
                "field_groups",
                "purposes",
                "legal_basis",
                "retention",
                "store",
                "restrictions",
                "fingerprints",
                "data_subjects",
                "source",
                "recipients",
                "not_stored",
            ),
            path,
        )
        retention = self.retention(body.get("retention"), f"{path}.retention")
        never = retention.rule == "never_store"
        fields = self.names(body.get("fields"), f"{path}.fields", allow_empty=never)
        if never and fields:
            self.error(f"{path}.fields", "a never_store category must not declare stored fields")
        event_time = body.get("event_time")
        if retention.rule == "fixed" and event_time not in fields:
            self.error(f"{path}.event_time", "fixed retention needs an event_time among the fields")
        if event_time is not None and event_time not in fields:
            self.error(f"{path}.event_time", f"{event_time!r} is not in the category fields")
        key = body.get("key")
        if key is not None and key not in fields:
            self.error(f"{path}.key", f"{key!r} is not in the category fields")
        groups = {}
        for gname, gfields in self.mapping(
            body.get("field_groups", {}), f"{path}.field_groups"
        ).items():
            names = self.names(gfields, f"{path}.field_groups.{gname}")
            for f in names:
                if f not in fields:
                    self.error(
                        f"{path}.field_groups.{gname}", f"{f!r} is not in the category fields"
                    )
            groups[str(gname)] = names
        restrictions = self.mapping(body.get("restrictions", {}), f"{path}.restrictions")
        self.unknown_keys(
            restrictions,
            ("forbidden_fields_in_regions", "restricted_country_field"),
            f"{path}.restrictions",
        )
        forbidden = {}
        fpath = f"{path}.restrictions.forbidden_fields_in_regions"
        for region, rfields in self.mapping(
            restrictions.get("forbidden_fields_in_regions", {}), fpath
        ).items():
            if region not in regions:
                self.error(fpath, f"unknown region {region!r}")
            forbidden[str(region)] = frozenset(self.names(rfields, f"{fpath}.{region}"))
        if forbidden:  # a restricted region left out would forbid nothing: say it explicitly
            for region in sorted(r.name for r in regions.values() if r.restricted):
                if region not in forbidden:
                    self.error(fpath, f"restricted region {region!r} must say what it forbids")
        country_field = restrictions.get("restricted_country_field")
        if country_field is not None and country_field not in fields:
            self.error(
                f"{path}.restrictions.restricted_country_field",
                f"{country_field!r} is not in the category fields",
            )
        fingerprints = {}
        for stored, secret in self.mapping(
            body.get("fingerprints", {}), f"{path}.fingerprints"
        ).items():
            if stored not in fields:
                self.error(f"{path}.fingerprints.{stored}", "is not in the category fields")
            if not isinstance(secret, str) or secret in fields:
                self.error(
                    f"{path}.fingerprints.{stored}", "must name an input field that is not stored"
                )
            fingerprints[str(stored)] = str(secret)
        return Category(
            name=name,
            module=self.string(body.get("module"), f"{path}.module", choices=MODULES),
            description=self.string(body.get("description"), f"{path}.description"),
            event_time=event_time,
            fields=fields,
            purposes=self.purposes(body.get("purposes"), f"{path}.purposes", regions, fields),
            legal_basis=self.string(
                body.get("legal_basis"), f"{path}.legal_basis", choices=LEGAL_BASES
            ),
            retention=retention,
            store=self.string(body.get("store"), f"{path}.store"),
            key=key,
            field_groups=groups,
            forbidden_fields_in_regions=forbidden,
            restricted_country_field=country_field,
            fingerprints=fingerprints,
            data_subjects=self.names(body.get("data_subjects"), f"{path}.data_subjects"),
            data_source=self.data_source(body.get("source"), f"{path}.source"),
            recipients=self.recipients(body, path, fields),
            not_stored=self.names(body.get("not_stored"), f"{path}.not_stored"),
        )

    # -- records of processing ----------------------------------------------------------------
    def records_of_processing(self, doc: Any) -> RecordsOfProcessing | None:
        """``records_of_processing``: the controller, the modules' sharing, the kinds of data
        subjects and the third parties (None when the policy has no such section)."""
        if doc is None:
            return None
        path = "records_of_processing"
        body = self.mapping(doc, path)
        self.unknown_keys(body, ("controller", "sharing", "data_subjects", "parties"), path)
        sharing = self.texts(body.get("sharing"), f"{path}.sharing")
        for module in sorted(set(sharing) - set(MODULES)):
            self.error(f"{path}.sharing.{module}", f"not a module ({', '.join(MODULES)})")
        parties = {}
        for key, raw in self.mapping(body.get("parties") or {}, f"{path}.parties").items():
            ppath = f"{path}.parties.{key}"
            if not isinstance(key, str) or not _NAME.match(key) or key in ORIGINS:
                self.error(ppath, f"must be a snake_case name other than {', '.join(ORIGINS)}")
            party = self.mapping(raw, ppath)
            self.unknown_keys(party, ("name", "role"), ppath)
            parties[str(key)] = Party(
                str(key),
                self.string(party.get("name"), f"{ppath}.name"),
                self.string(party.get("role"), f"{ppath}.role"),
            )
        return RecordsOfProcessing(
            controller=self.string(body.get("controller"), f"{path}.controller"),
            sharing=sharing,
            data_subjects=self.texts(body.get("data_subjects"), f"{path}.data_subjects"),
            parties=parties,
        )

    def texts(self, doc: Any, path: str) -> dict[str, str]:
        """A mapping of snake_case names to non-empty texts."""
        out = {}
        for key, text in self.mapping(doc or {}, path).items():
            if not isinstance(key, str) or not _NAME.match(key):
                self.error(f"{path}.{key}", "must be a snake_case name")
            out[str(key)] = self.string(text, f"{path}.{key}")
        return out

    def data_source(self, doc: Any, path: str) -> DataSource | None:
        if doc is None:
            return None
        body = self.mapping(doc, path)
        self.unknown_keys(body, ("from", "based_on", "description"), path)
        return DataSource(
            origins=self.names(body.get("from"), f"{path}.from", allow_empty=False),
            description=self.string(body.get("description"), f"{path}.description"),
            based_on=self.names(body.get("based_on"), f"{path}.based_on"),
        )

    def recipients(
        self, body: Mapping[str, Any], path: str, fields: tuple[str, ...]
    ) -> tuple[Recipient, ...] | None:
        """``recipients``: a list (``[]``: the module names none), or None when not declared."""
        if "recipients" not in body:
            return None
        path = f"{path}.recipients"
        raw = body["recipients"]
        if not isinstance(raw, list):
            self.error(path, "must be a list of recipients ([] when the module names none)")
            return ()
        out = []
        for i, item in enumerate(raw):
            rpath = f"{path}[{i}]"
            entry = self.mapping(item, rpath)
            self.unknown_keys(entry, ("party", "fields", "purpose", "returns"), rpath)
            shared = self.names(entry.get("fields"), f"{rpath}.fields", allow_empty=False)
            for f in shared:
                if f not in fields:
                    self.error(f"{rpath}.fields", f"{f!r} is not in the category fields")
            returns = entry.get("returns")
            out.append(
                Recipient(
                    party=self.string(entry.get("party"), f"{rpath}.party"),
                    fields=shared,
                    purpose=self.string(entry.get("purpose"), f"{rpath}.purpose"),
                    returns=None if returns is None else self.string(returns, f"{rpath}.returns"),
                )
            )
        return tuple(out)

    def records_references(
        self,
        records: RecordsOfProcessing | None,
        categories: Mapping[str, Category],
        classifier: NameClassifier | None,
    ) -> None:
        """What the categories' records of processing name must exist: kinds of data subjects
        and parties of ``records_of_processing``, returned categories the party is the source
        of, fields a party derives from that it receives; and what is ``not_stored`` must be a
        name the pipelines drop by meaning, so that the records of processing never claim more
        than the pipelines do."""
        subjects = records.data_subjects if records else {}
        parties = records.parties if records else {}
        received = {  # party -> the fields some category shares with it
            r.party: set() for c in categories.values() for r in c.recipients or ()
        }
        for c in categories.values():
            for r in c.recipients or ():
                received[r.party].update(r.fields)
        for c in categories.values():
            path = f"categories.{c.name}"
            for i, name in enumerate(c.data_subjects):
                if name not in subjects:
                    self.error(
                        f"{path}.data_subjects[{i}]",
                        f"{name!r} is not in records_of_processing.data_subjects",
                    )
            origins = c.data_source.origins if c.data_source else ()
            for i, origin in enumerate(origins):
                if origin not in ORIGINS and origin not in parties:
                    self.error(
                        f"{path}.source.from[{i}]",
                        f"{origin!r} is neither {' nor '.join(ORIGINS)} nor a party of "
                        "records_of_processing.parties",
                    )
            from_parties = [o for o in origins if o in parties]
            for f in c.data_source.based_on if c.data_source else ():
                if not any(f in received.get(party, ()) for party in from_parties):
                    self.error(
                        f"{path}.source.based_on",
                        f"{f!r} is not shared with {' or '.join(from_parties) or 'a party'} "
                        "by any category (recipients)",
                    )
            for i, r in enumerate(c.recipients or ()):
                rpath = f"{path}.recipients[{i}]"
                if r.party and r.party not in parties:
                    self.error(
                        f"{rpath}.party",
                        f"{r.party!r} is not a party of records_of_processing.parties",
                    )
                if r.returns is None:
                    continue
                back = categories.get(r.returns)
                if back is None:
                    self.error(f"{rpath}.returns", f"unknown category {r.returns!r}")
                elif back.data_source is None or r.party not in back.data_source.origins:
                    self.error(
                        f"{rpath}.returns",
                        f"{r.returns}.source.from does not name {r.party!r}",
                    )
            for i, name in enumerate(c.not_stored):
                if name in c.fields:
                    self.error(f"{path}.not_stored[{i}]", f"{name!r} is in the category fields")
                elif classifier is not None and not (
                    classifier.is_a(SECRET, name) or classifier.is_a(MEDIA, name)
                ):
                    self.error(
                        f"{path}.not_stored[{i}]",
                        f"{name!r} is no secret or media name by never_in_clear: the pipelines "
                        "would not drop it",
                    )

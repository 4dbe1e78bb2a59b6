"""The registry of enrichment providers: which sources the visits pipeline offers.

``VisitsOptions`` declares the flags of every registered provider (:func:`add_flags`), and
``config_from`` builds the handler of the one provider whose selecting flag is given
(:func:`build_handler`); neither names a source.

Why flags are declared through ``VisitsOptions``, not by a ``PipelineOptions`` class per
provider: Beam builds its parser from every direct subclass of ``PipelineOptions``, and the
strict command line (``pipelines.options``) wants each flag declared in exactly one of them. The
visits pipeline's class is that one, so its ``--help``, ``python -m pipelines``, the run's
identity and the flex template's parameters list every provider's flags with no change of
their own.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterable
from typing import Any

from schemas.policy import Policy
from transforms.enrichment.http_client import HttpProvider
from transforms.enrichment.providers import (
    EnrichmentFields,
    EnrichmentHandler,
    EnrichmentProvider,
)
from transforms.enrichment.snapshot import SnapshotProvider

__all__ = ["BUILT_IN", "add_flags", "build_handler", "providers", "register", "unregister"]

# The providers of this package, in the order their flags are listed.
BUILT_IN: tuple[EnrichmentProvider, ...] = (SnapshotProvider(), HttpProvider())

_registered: dict[str, EnrichmentProvider] = {p.name: p for p in BUILT_IN}


def register(provider: EnrichmentProvider) -> EnrichmentProvider:
    """Adds ``provider`` (its flags join the visits command line); returns it. Raises
    ValueError for a name or selecting flag already registered."""
    if provider.name in _registered:
        raise ValueError(f"enrichment provider {provider.name!r} is already registered")
    if any(p.flag == provider.flag for p in _registered.values()):
        raise ValueError(f"enrichment flag --{provider.flag} is already another provider's")
    _registered[provider.name] = provider
    return provider


def unregister(name: str) -> None:
    """Removes the provider ``name`` (a test's, when it is done)."""
    _registered.pop(name, None)


def providers() -> tuple[EnrichmentProvider, ...]:
    """The registered providers, in registration order."""
    return tuple(_registered.values())


def add_flags(parser: argparse.ArgumentParser) -> None:
    """Declares every registered provider's flags on ``parser`` (``VisitsOptions``)."""
    for provider in providers():
        provider.add_flags(parser)


def build_handler(
    options: Any,
    *,
    company_fields: Iterable[str],
    contact_fields: Iterable[str],
    policy: Policy,
) -> EnrichmentHandler | None:
    """The handler of the provider whose selecting flag ``options`` gives, or None (no
    enrichment; the contact gate still applies).

    Raises ValueError when the flags of two providers are given: silently preferring one would
    hide a configuration mistake."""
    chosen = [p for p in providers() if getattr(options, p.flag, None)]
    if len(chosen) > 1:
        flags = ", ".join(f"--{p.flag}" for p in chosen)
        raise ValueError(f"AroundDeal enrichment: give one source, not several ({flags})")
    if not chosen:
        return None
    fields = EnrichmentFields(tuple(company_fields), tuple(contact_fields), policy)
    return chosen[0].build(options, fields)

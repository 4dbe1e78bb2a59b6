"""Fingerprint: replace a credential by a keyed, salted HMAC before anything is stored.

The DPSA keeps "customer temporary key information" (SDK APPID, username, private key) for as long
as the customer uses the Feature. Storing the private key would put a usable credential in the
lake; storing a keyed fingerprint keeps what the purpose needs (recognising the same key again)
without the secret. The policy names the pairs (``fingerprints: {stored_field: input_field}``).

``HMAC-SHA256(key, "<category>.<input_field>:" + value)``: the operator's key makes the fingerprint
impossible to recompute (or brute-force) without it; the category/field prefix salts it, so the
same value in two places gives two unrelated fingerprints. The key is read on the worker from an
environment variable or a secret file (never passed in the job graph, which runners log and
store); :func:`load_key` is also called by the launcher so a missing key fails at startup.

On a columnar batch the secret columns are dropped and the fingerprint columns set, so the
batch stays a table for the guard and the tagger; the HMAC is per value either way.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import apache_beam as beam
import pyarrow as pa
from apache_beam.io.filesystems import FileSystems

from transforms.batches import ApplyStage, RecordStage, TableBatch
from transforms.columns import column_or_nulls, with_column

__all__ = ["Fingerprint", "FingerprintFn", "KeySource", "fingerprint", "load_key"]

MIN_KEY_BYTES = 16


@dataclass(frozen=True)
class KeySource:
    """Where the fingerprint key is: an environment variable, or a file (any Beam filesystem)."""

    env: str | None = None
    file: str | None = None


def load_key(source: KeySource) -> bytes:
    """The key bytes; ``ValueError`` (naming where it looked, never the key) if absent or short."""
    key: bytes | None = None
    if source.file:
        with FileSystems.open(source.file) as fh:
            key = fh.read().strip()
    elif source.env:
        value = os.environ.get(source.env)
        key = value.encode("utf-8") if value else None
    where = f"file {source.file}" if source.file else f"environment variable {source.env}"
    if not key:
        raise ValueError(f"no fingerprint key in {where}: it is required for this category")
    if len(key) < MIN_KEY_BYTES:
        raise ValueError(f"the fingerprint key in {where} is shorter than {MIN_KEY_BYTES} bytes")
    return key


def fingerprint(key: bytes, category: str, field: str, value: str) -> str:
    """Hex HMAC-SHA256 of ``value`` under ``key``, salted with the category and field names."""
    message = f"{category}.{field}:{value}".encode()
    return hmac.new(key, message, hashlib.sha256).hexdigest()


class FingerprintFn(RecordStage):
    """Yields a copy of each record with each secret input replaced by its fingerprint."""

    stage = "fingerprint"

    def __init__(self, category: str, pairs: Mapping[str, str], key: KeySource) -> None:
        super().__init__()
        self._category = category
        self._pairs = dict(pairs)
        self._secrets = frozenset(self._pairs.values())
        self._key_source = key

    def setup(self) -> None:
        super().setup()
        self._key = load_key(self._key_source)

    def one(self, record: Mapping[str, Any]) -> dict[str, Any]:
        out = {k: v for k, v in record.items() if k not in self._secrets}
        for stored, secret in self._pairs.items():
            value = record.get(secret)
            out[stored] = (
                None if value is None else fingerprint(self._key, self._category, secret, value)
            )
        self.tally.add("fingerprinted", len(self._pairs))
        return out

    def process_table(self, table: pa.Table) -> Iterator[TableBatch]:
        """The columnar version: what :meth:`one` gives each row (the secret columns gone, each
        fingerprint column set where it stands or appended), as one table."""
        key, category = self._key, self._category
        stored = {
            name: pa.array(
                [
                    None if value is None else fingerprint(key, category, secret, value)
                    for value in column_or_nulls(table, secret).to_pylist()
                ],
                pa.string(),
            )
            for name, secret in self._pairs.items()
        }
        table = table.drop_columns([c for c in table.column_names if c in self._secrets])
        for name, values in stored.items():
            table = with_column(table, name, values)
        self.tally.add("fingerprinted", len(self._pairs) * table.num_rows)
        self.tally.flush()
        if table.num_rows:
            yield TableBatch(table)


class Fingerprint(beam.PTransform):
    """Replace the policy's secret input fields by their keyed fingerprints, on a PCollection of
    batches."""

    def __init__(self, category: str, pairs: Mapping[str, str], key: KeySource) -> None:
        super().__init__()
        self._fn = FingerprintFn(category, pairs, key)

    def expand(self, batches: beam.PCollection) -> beam.PCollection:
        return batches | "HmacSecrets" >> ApplyStage(self._fn)

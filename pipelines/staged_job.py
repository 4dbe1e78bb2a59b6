"""The run of a retention job whose Beam pipeline stages its change: lifecycle, erase, access.

Each of them resolves its configuration, then, holding the output root's lock
(``transforms.retention.txn.staged_change``, which first recovers what killed runs left), lists
the files to read, runs one Beam pipeline that stages files and writes the plan of the
transaction, and commits and applies the plan with its audit. :func:`staged_pipeline` is that
skeleton, so that the jobs differ only in what they stage and what their audit says.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions

from pipelines.report import counters_of
from transforms.retention.jsonio import utc_now_iso
from transforms.retention.txn import StagedChange, Transaction, staged_change

__all__ = ["StagedJobConfig", "StagedRun", "staged_pipeline"]


class StagedJobConfig(Protocol):
    """What :func:`staged_pipeline` needs of a job's configuration: its transaction."""

    @property
    def txn(self) -> Transaction: ...


Config = TypeVar("Config", bound=StagedJobConfig)


@dataclass(frozen=True)
class StagedRun(Generic[Config]):
    """A job's pipeline, run under the lock: its configuration with the files it listed, the
    change it stages, the pipeline's counters and the plan it wrote."""

    config: Config
    change: StagedChange
    counters: Mapping[str, int]
    plan: dict[str, Any]
    started: str

    def commit(self, actions: Sequence[Mapping[str, Any]], audit: Mapping[str, Any]) -> dict:
        """``audit`` with when the run started and what it recovered, committed with
        ``actions`` and applied (``apply``: what applying did)."""
        recovered = self.change.recovered
        audit = {**audit, "started_at": self.started, "recovered_transactions": recovered}
        return self.change.commit_and_record(actions, audit)

    def report(self, audit: Mapping[str, Any]) -> dict[str, Any]:
        """The finished ``audit`` written under ``_reports/``, returned with its path."""
        return self.change.write_report(audit)


@contextmanager
def staged_pipeline(
    options: PipelineOptions,
    config: Config,
    job: str,
    list_files: Callable[[Config], Config],
    stage: Callable[[Config], beam.PTransform],
) -> Iterator[StagedRun[Config]]:
    """Run ``stage`` (a ``PTransform`` class, labelled by its name) on the configuration the
    files were listed into, once the lock is held and earlier runs are recovered; the body
    commits what it staged and writes the report before the lock is released."""
    started = utc_now_iso()
    with staged_change(config.txn, job) as change:
        config = list_files(config)
        pipeline = beam.Pipeline(options=options)
        _ = pipeline | stage.__name__ >> stage(config)
        result = pipeline.run()
        result.wait_until_finish()
        yield StagedRun(config, change, counters_of(result), config.txn.read_plan(), started)

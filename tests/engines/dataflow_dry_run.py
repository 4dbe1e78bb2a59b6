"""Beam's DataflowRunner in dry-run mode, usable through a pipeline's command line.

``--dry_run=True`` makes the DataflowRunner do everything up to the submission (graph validation,
Runner v2 translation, the worker environment with its container image and staged packages, the
job with its options) and then return a result instead of calling the Dataflow API (the launcher
recognises the dry run and writes no report). This subclass only keeps the job it would have
submitted, for the test to inspect:

    python -m pipelines.visits ... --runner=tests.engines.dataflow_dry_run.DataflowDryRunner \
        --dry_run=True --project=P --region=R --temp_location=gs://B/tmp --setup_file=./setup.py
"""

from __future__ import annotations

from typing import ClassVar

from apache_beam.options.pipeline_options import TestOptions
from apache_beam.runners.dataflow.dataflow_runner import DataflowRunner

__all__ = ["DataflowDryRunner"]


class DataflowDryRunner(DataflowRunner):
    """The DataflowRunner, refusing to run for real; the jobs it built are in :attr:`jobs`."""

    jobs: ClassVar[list] = []

    def run_pipeline(self, pipeline, options, pipeline_proto=None):
        if not options.view_as(TestOptions).dry_run:
            raise ValueError("DataflowDryRunner only builds jobs: pass --dry_run=True")
        result = super().run_pipeline(pipeline, options, pipeline_proto)
        type(self).jobs.append(result.job)
        return result

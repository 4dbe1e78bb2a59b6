"""Dataflow, offline: each pipeline's job builds with the DataflowRunner, and the flex template
(``deploy/dataflow/``) agrees with the pipeline and the Beam pin.

``--dry_run=True`` takes the DataflowRunner through everything but the submission: Runner v2
translation, graph validation, the worker environment (container image, the ``--setup_file``
package staged as ``workflow.tar.gz``) and the job with its options. Nothing leaves the machine.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import re
import sys
from pathlib import Path

import apache_beam
import pytest
from apache_beam.portability.api import beam_runner_api_pb2
from google.cloud import dataflow

from pipelines.options import IngestOptions, JobOptions, StorageOptions
from pipelines.visits import VisitsOptions
from tests.engines.dataflow_dry_run import DataflowDryRunner
from tests.engines.specs import SPECS, PipelineSpec
from tests.support.outputs import RUN_TIME
from transforms.named import NAME

pytestmark = pytest.mark.engines

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy" / "dataflow"
BEAM_VERSION = apache_beam.__version__
PYTHON = f"{sys.version_info.major}.{sys.version_info.minor}"
DATAFLOW_IMAGE = f"gcr.io/cloud-dataflow/v1beta3/beam_python{PYTHON}_sdk:{BEAM_VERSION}"
TEMPLATE_IMAGE = "europe-west1-docker.pkg.dev/demo-project/dataflow/trtc-visits:test"
DRY_RUNNER = f"--runner={DataflowDryRunner.__module__}.{DataflowDryRunner.__name__}"
GCP = [
    "--dry_run=True",
    "--project=demo-project",
    "--region=europe-west1",
    "--temp_location=gs://demo-bucket/tmp",
]
# Labels every ingestion pipeline has (the stable names Dataflow's update compatibility keys on).
LABELS = ("Read", "ParseValidate", "WriteDeadLetters")


def build_job(spec_module: str, argv: list[str], *, entry=None):
    """Run a pipeline's entry point with the dry-run DataflowRunner; the job it built."""
    before = len(DataflowDryRunner.jobs)
    (entry or importlib.import_module(spec_module).run)(argv)
    assert len(DataflowDryRunner.jobs) == before + 1, "no Dataflow job was built"
    return DataflowDryRunner.jobs[-1]


def environment(job) -> beam_runner_api_pb2.Environment:
    (env,) = job.proto_pipeline.components.environments.values()
    assert env.urn == "beam:env:docker:v1"
    return env


def image_of(env) -> str:
    return beam_runner_api_pb2.DockerPayload.FromString(env.payload).container_image


def staged_names(env) -> set[str]:
    names = set()
    for dep in env.dependencies:
        if dep.role_urn == "beam:artifact:role:staging_to:v1":
            payload = beam_runner_api_pb2.ArtifactStagingToRolePayload.FromString(dep.role_payload)
            names.add(payload.staged_name)
    return names


def transform_labels(job) -> set[str]:
    return {
        segment
        for t in job.proto_pipeline.components.transforms.values()
        for segment in t.unique_name.split("/")
    }


@pytest.mark.parametrize("spec", SPECS, ids=str)
def test_dataflow_dry_run_builds_the_job(spec: PipelineSpec, tmp_path, source_tree):
    """The command line with the DataflowRunner, as README/deploy document it (``--setup_file``)."""
    inputs = spec.inputs(tmp_path / "inputs")
    argv = [
        *inputs,
        f"--output={tmp_path / 'out'}",
        f"--run_time={RUN_TIME}",
        DRY_RUNNER,
        *GCP,
        f"--setup_file={source_tree / 'setup.py'}",
    ]
    job = build_job(spec.module, argv)

    assert job.proto.type_ == dataflow.JobType.JOB_TYPE_BATCH
    assert set(LABELS) <= transform_labels(job)
    env = environment(job)
    assert image_of(env) == DATAFLOW_IMAGE  # the SDK container of the pinned release
    assert "workflow.tar.gz" in staged_names(env)  # this package, installed on every worker
    options = job.options.get_all_options(drop_default=True)
    json.dumps(options)  # Dataflow ships the options as JSON: they must all serialise
    assert options["input"] == next(a for a in inputs if a.startswith("--input=")).split("=", 1)[1]
    assert options["setup_file"] == str(source_tree / "setup.py")


def _flex_entry_point():
    spec = importlib.util.spec_from_file_location("flex_template_main", DEPLOY / "main.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


def test_flex_template_entry_point_builds_the_job(tmp_path):
    """``deploy/dataflow/main.py`` as the template launcher runs it: ``--template_location`` set,
    workers on the template image (``--sdk_container_image``), nothing staged."""
    visits = next(s for s in SPECS if s.name == "visits")
    argv = [
        *visits.inputs(tmp_path / "inputs"),
        f"--output={tmp_path / 'out'}",
        DRY_RUNNER,
        *GCP,
        "--template_location=gs://demo-bucket/templates/launch/job.json",
        f"--sdk_container_image={TEMPLATE_IMAGE}",
    ]
    job = build_job("", argv, entry=_flex_entry_point())
    assert set(LABELS) | {"IngestVisits", "Geolocate"} <= transform_labels(job)
    env = environment(job)
    assert image_of(env) == TEMPLATE_IMAGE
    assert "workflow.tar.gz" not in staged_names(env)


def visits_flags() -> dict[str, argparse.Action]:
    parser = argparse.ArgumentParser()
    JobOptions._add_argparse_args(parser)
    IngestOptions._add_argparse_args(parser)
    VisitsOptions._add_argparse_args(parser)
    StorageOptions._add_argparse_args(parser)
    return {
        action.option_strings[0].removeprefix("--"): action
        for action in parser._actions
        if action.option_strings and action.dest != "help"
    }


# A value each parameter must accept (besides its default and its choices).
EXAMPLES = {
    "input": "gs://bucket/visits/2026-11-28/*.jsonl",
    "output": "gs://bucket/lake",
    "policy": "gs://bucket/policy/policy.yaml",
    "run_time": "2026-11-29T00:00:00Z",
    "geoip_db": "gs://bucket/geo/GeoIP2-Country.mmdb",
    "enrichment_snapshot": "gs://bucket/arounddeal/snapshot.csv",
    "enrichment_url": "https://api.arounddeal.example/v1/lookup",
    "enrichment_timeout": "2.5",
}
REJECTED = {
    "input": "visits.jsonl",
    "format": "csv",
    "input_format": "../csv",
    "layout": "Hive",
    "sink": "files;rm",
    "run_time": "yesterday",
    "geo_cache_size": "-1",
    "enrichment_url": "ftp://x",
    "enrichment_api_key_env": "not a name",
    "enrichment_batch_size": "0",
}


def test_flex_template_metadata_declares_every_visits_flag():
    metadata = json.loads((DEPLOY / "metadata.json").read_text())
    params = {p["name"]: p for p in metadata["parameters"]}
    flags = visits_flags()
    assert set(params) == set(flags), "metadata.json and the visits flags disagree"
    assert metadata["sdkInfo"]["language"] == "PYTHON" and metadata["streaming"] is False
    assert not params["input"]["isOptional"] and not params["output"]["isOptional"]

    def accepts(name: str, value: str) -> bool:
        return any(re.fullmatch(rx, value) for rx in params[name]["regexes"])

    for name, param in params.items():
        assert param["label"] and len(param["helpText"]) > 20, name
        assert param["regexes"], f"{name}: no regex"
        for rx in param["regexes"]:
            re.compile(rx)
        action = flags[name]
        for choice in action.choices or ():
            assert accepts(name, choice), (name, choice)
        default = action.default
        if default is not None and name != "output":  # the CLI's ./output is no GCS path
            assert accepts(name, str(default)), (name, default)
    for name, value in EXAMPLES.items():
        assert accepts(name, value), (name, value)
    for name, value in REJECTED.items():
        assert not accepts(name, value), (name, value)
    # A name any registry may hold is a value the template accepts (the launcher then checks
    # that it is registered): a format, layout or sink needs no edit of metadata.json.
    for name in ("input_format", "layout", "sink"):
        assert params[name]["regexes"] == [f"^{NAME.pattern}$"], name


def test_dockerfile_is_on_the_pinned_sdk_image():
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    args = dict(re.findall(r"^ARG (\w+)=(\S+)$", dockerfile, re.MULTILINE))
    pin = re.search(r'"apache-beam==([^"]+)"', (REPO / "setup.py").read_text()).group(1)
    assert args["BEAM_VERSION"] == pin == BEAM_VERSION
    assert args["PYTHON_VERSION"] == PYTHON
    assert "FROM apache/beam_python${PYTHON_VERSION}_sdk:${BEAM_VERSION}" in dockerfile
    launcher_python = PYTHON.replace(".", "")
    assert f"python{launcher_python}-template-launcher-base" in dockerfile
    # everything copied exists, and the build context (Dockerfile.dockerignore) lets it through
    allowed = [
        line[1:].rstrip("/")
        for line in (DEPLOY / "Dockerfile.dockerignore").read_text().splitlines()
        if line.startswith("!")
    ]
    for source in re.findall(r"^COPY (?!--from)(.+) \S+$", dockerfile, re.MULTILINE):
        for path in source.split():
            assert (REPO / path).exists(), path
            assert path.rstrip("/") in allowed, f"{path} is excluded from the build context"
    entry = re.search(r"^ENV FLEX_TEMPLATE_PYTHON_PY_FILE=(\S+)$", dockerfile, re.MULTILINE)
    assert entry and entry.group(1) == "/template/main.py"
    assert "COPY deploy/dataflow/main.py main.py" in dockerfile

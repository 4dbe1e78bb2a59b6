"""``deploy/flink/`` agrees with the Beam pin and with what the engine tests run."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import apache_beam
import pytest
import yaml

pytestmark = pytest.mark.engines

REPO = Path(__file__).resolve().parents[2]
FLINK = REPO / "deploy" / "flink"
PYTHON = f"{sys.version_info.major}.{sys.version_info.minor}"


def documents() -> dict[str, dict]:
    docs = {}
    for path in sorted((FLINK / "k8s").glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            docs[f"{doc['kind']}/{doc['metadata'].get('name') or path.stem}"] = doc
    return docs


def test_worker_image_is_on_the_pinned_sdk_image():
    dockerfile = (FLINK / "worker.Dockerfile").read_text()
    args = dict(re.findall(r"^ARG (\w+)=(\S+)$", dockerfile, re.MULTILINE))
    assert args == {"BEAM_VERSION": apache_beam.__version__, "PYTHON_VERSION": PYTHON}
    assert "FROM apache/beam_python${PYTHON_VERSION}_sdk:${BEAM_VERSION}" in dockerfile
    assert '"--worker_pool"' in dockerfile
    allowed = {
        line[1:].rstrip("/")
        for line in (FLINK / "worker.Dockerfile.dockerignore").read_text().splitlines()
        if line.startswith("!")
    }
    for source in re.findall(r"^COPY (.+) \S+$", dockerfile, re.MULTILINE):
        for path in source.split():
            assert (REPO / path).exists() and path.rstrip("/") in allowed, path


def test_kubernetes_example_is_consistent():
    docs = documents()
    flink = docs["FlinkDeployment/trtc-flink"]
    job_server = docs["Deployment/beam-job-server"]
    launcher = docs["Job/visits-job"]
    assert "job" not in flink["spec"], "a session cluster: jobs come through Beam"
    # Job server: the pinned Beam release, for the cluster's Flink minor version.
    flink_minor = flink["spec"]["flinkVersion"].removeprefix("v").replace("_", ".")
    (container,) = job_server["spec"]["template"]["spec"]["containers"]
    assert container["image"] == (
        f"apache/beam_flink{flink_minor}_job_server:{apache_beam.__version__}"
    )
    assert "--flink-master=trtc-flink-rest:8081" in container["args"]
    # Every TaskManager has the worker pool the launcher's EXTERNAL environment points at.
    sidecars = flink["spec"]["taskManager"]["podTemplate"]["spec"]["containers"]
    pool = next(c for c in sidecars if c["name"] == "beam-worker-pool")
    assert {"containerPort": 50000, "name": "worker-pool"} in pool["ports"]
    args = launcher["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--environment_type=EXTERNAL" in args
    assert "--environment_config=localhost:50000" in args
    assert "--job_endpoint=beam-job-server:8099" in args
    # The artifacts directory is shared between the job server and the TaskManagers.
    assert "--artifacts-dir=/beam-artifacts" in container["args"]
    for pod_container in sidecars:
        mounts = {m["mountPath"] for m in pod_container.get("volumeMounts", [])}
        assert "/beam-artifacts" in mounts, pod_container["name"]

"""Engines for the engine tests: where their tools are, and the services they need.

Tools come from ``.ci/engines.sh`` (which writes ``.tools/engines.env``) or from the environment
variables of the same names (``BEAM_PRISM_BIN``, ``BEAM_FLINK_JOB_SERVER_JAR``, ...). A missing
tool skips its engine's tests with a loud reason locally; under CI (``CI=true``) it fails them,
so that an engine can never silently drop out of CI.

Each engine is a session fixture that starts what it needs once and stops it at the end (every
wait bounded): the external SDK worker pool (separate worker processes, the protocol Dataflow
Runner v2 and Flink use), Beam's local job service, a Flink JobManager + TaskManager. Everything
is addressed on 127.0.0.1 and the Flink cluster binds only there; Beam's Python worker pool and
job service bind their gRPC ports on all interfaces (Beam has no option for that).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import apache_beam
import pytest

from tests.engines.services import HOST, Service, free_port, http_json, port_open, python_env

REPO = Path(__file__).resolve().parents[2]
ENV_FILE = REPO / ".tools" / "engines.env"
IN_CI = os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")
BEAM_VERSION = apache_beam.__version__
HOW_TO_BUILD = "build the engines with `bash .ci/engines.sh` (go, mvn and java 17 on PATH)"

_ENGINE_RECORDS: dict[str, str] = {}  # engine -> version line, for the terminal summary


def env_file() -> Path:
    return Path(os.environ.get("BEAM_ENGINES_ENV", ENV_FILE))


def tool_settings() -> dict[str, str]:
    """``.tools/engines.env`` (or ``$BEAM_ENGINES_ENV``), overridden by environment variables of
    the same names."""
    settings: dict[str, str] = {}
    if env_file().is_file():
        for line in env_file().read_text().splitlines():
            key, sep, value = line.partition("=")
            if sep and key.strip() and not key.startswith("#"):
                settings[key.strip()] = value.strip()
    settings.update({k: v for k, v in os.environ.items() if k.startswith("BEAM_")})
    return settings


def unavailable(reason: str) -> None:
    """Skip (locally) or fail (in CI) a test whose engine cannot be had."""
    message = f"ENGINE UNAVAILABLE: {reason}"
    if IN_CI:
        pytest.fail(f"{message} (CI=true: engines must not be skipped in CI)", pytrace=False)
    pytest.skip(message)


def require_file(settings: dict[str, str], key: str, what: str) -> Path:
    value = settings.get(key)
    if not value:
        unavailable(f"{what}: {key} is not set and {env_file()} does not name it; {HOW_TO_BUILD}")
    path = Path(value)
    if not path.is_file():
        unavailable(f"{what}: {key}={path} does not exist; {HOW_TO_BUILD}")
    return path


def require_java() -> str:
    java_home = os.environ.get("JAVA_HOME")
    java = str(Path(java_home) / "bin" / "java") if java_home else shutil.which("java")
    if not java or not Path(java).exists():
        unavailable("Flink: no `java` on PATH (nor JAVA_HOME); Flink 1.19 needs Java 11 or 17")
    return java


@dataclass
class Engine:
    """How to run a pipeline on one engine: the runner flags, and the state of its services."""

    name: str
    version: str
    args: list[str]
    services: list[Service] = field(default_factory=list)
    run_timeout: float = 300
    after_run: Callable[[], None] | None = None

    def check_services(self) -> None:
        for service in self.services:
            if not service.alive():
                raise RuntimeError(f"{service.name} died:\n{service.tail()}")

    def diagnostics(self) -> str:
        return "\n".join(f"--- {s.name} log ({s.log}) ---\n{s.tail(3000)}" for s in self.services)


def _record(engine: Engine) -> Engine:
    _ENGINE_RECORDS[engine.name] = engine.version
    return engine


# What `setup.py sdist` and a docker build see: the sources, none of the local state.
SOURCE_IGNORE = shutil.ignore_patterns(
    ".git",
    ".tools",
    ".venv",
    "venv",
    "build",
    "dist",
    "output",
    "*.egg-info",
    "__pycache__",
    ".pytest_cache",
    ".ruff_cache",
    ".hypothesis",
    "work",
    "out",
)


@pytest.fixture(scope="session")
def source_tree(tmp_path_factory) -> Path:
    """A copy of the repository's sources, for builds that write next to setup.py
    (``setup.py sdist`` leaves an ``.egg-info`` behind), so the checkout stays untouched."""
    tree = tmp_path_factory.mktemp("source") / "repo"
    shutil.copytree(REPO, tree, ignore=SOURCE_IGNORE)
    return tree


@pytest.fixture(scope="session")
def engine_tools() -> dict[str, str]:
    return tool_settings()


@pytest.fixture(scope="session")
def engine_logs(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("engine-logs")


@pytest.fixture(scope="session")
def worker_pool(engine_logs) -> Iterator[Service]:
    """Beam's external SDK worker pool: it starts a separate SDK worker process per request."""
    port = free_port()
    pool = Service(
        "worker-pool",
        [
            sys.executable,
            "-m",
            "apache_beam.runners.worker.worker_pool_main",
            f"--service_port={port}",
        ],
        log_dir=engine_logs,
        ready=lambda: port_open(port),
        env=python_env(),
        start_timeout=60,
    )
    pool.port = port
    pool.start()
    yield pool
    pool.stop()


def _external(pool: Service) -> list[str]:
    return ["--environment_type=EXTERNAL", f"--environment_config={HOST}:{pool.port}"]


@pytest.fixture(scope="session")
def engine_prism(engine_tools) -> Engine:
    binary = require_file(engine_tools, "BEAM_PRISM_BIN", "Prism")
    version = engine_tools.get("BEAM_PRISM_VERSION", "?")
    return _record(
        Engine(
            "prism",
            f"Prism {version} (go install github.com/apache/beam/sdks/v2/go/cmd/prism@{version})",
            ["--runner=PrismRunner", f"--prism_location={binary}", "--prism_log_level=warn"],
        )
    )


@pytest.fixture(scope="session")
def engine_portable(engine_logs, worker_pool) -> Iterator[Engine]:
    """PortableRunner -> Beam's Python local job service -> the external worker pool."""
    port = free_port()
    job_service = Service(
        "local-job-service",
        [
            sys.executable,
            "-m",
            "apache_beam.runners.portability.local_job_service_main",
            f"--port={port}",
            f"--staging_dir={engine_logs / 'local-job-service-staging'}",
        ],
        log_dir=engine_logs,
        ready=lambda: port_open(port),
        env=python_env(),
        start_timeout=60,
    )
    job_service.start()
    yield _record(
        Engine(
            "portable",
            f"Beam {BEAM_VERSION} local job service + external worker pool",
            ["--runner=PortableRunner", f"--job_endpoint={HOST}:{port}", *_external(worker_pool)],
            services=[worker_pool, job_service],
        )
    )
    job_service.stop()


def _flink_version(engine_tools: dict[str, str]) -> str:
    return (
        f"Flink {engine_tools.get('BEAM_FLINK_VERSION', '?')}, Beam Flink runner "
        f"{engine_tools.get('BEAM_FLINK_RUNNER_VERSION', '?')} (job service "
        f"{engine_tools.get('BEAM_FLINK_JOB_SERVICE_VERSION', '?')}), "
        f"{engine_tools.get('BEAM_JAVA_VERSION', 'java ?')}"
    )


def _flink_args(jar: Path, master: str, pool: Service) -> list[str]:
    return [
        "--runner=FlinkRunner",
        f"--flink_master={master}",
        "--flink_version=1.19",
        f"--flink_job_server_jar={jar}",
        "--parallelism=2",
        *_external(pool),
    ]


@pytest.fixture(scope="session")
def engine_flink(engine_tools, worker_pool) -> Engine:
    """FlinkRunner with an embedded Flink cluster (``--flink_master=[local]``) in the job server
    the runner starts from the jar, parallelism 2, SDK workers from the external pool."""
    jar = require_file(engine_tools, "BEAM_FLINK_JOB_SERVER_JAR", "Flink job server")
    require_java()
    return _record(
        Engine(
            "flink",
            f"{_flink_version(engine_tools)}, embedded cluster",
            _flink_args(jar, "[local]", worker_pool),
            services=[worker_pool],
        )
    )


FLINK_CONF = """\
jobmanager:
  rpc: {{address: {host}, port: {rpc_port}}}
  bind-host: {host}
  memory: {{process: {{size: 1024m}}}}
taskmanager:
  host: {host}
  bind-host: {host}
  numberOfTaskSlots: 2
  cpu: {{cores: 2}}
  memory:
    framework: {{heap: {{size: 128m}}, off-heap: {{size: 128m}}}}
    task: {{heap: {{size: 512m}}, off-heap: {{size: 0m}}}}
    network: {{min: 256m, max: 256m}}
    managed: {{size: 128m}}
    jvm-metaspace: {{size: 256m}}
    jvm-overhead: {{min: 192m, max: 192m}}
rest: {{address: {host}, bind-address: {host}, port: {rest_port}}}
blob: {{server: {{port: "{blob_port}"}}}}
parallelism: {{default: 2}}
"""


@dataclass
class FlinkCluster:
    rest: str
    jobmanager: Service
    taskmanager: Service

    def cancel_running_jobs(self) -> None:
        """A job left running by a failed test would hold the slots the next test needs."""
        try:
            jobs = http_json(f"{self.rest}/jobs/overview")["jobs"]  # type: ignore[index]
        except OSError:
            return
        for job in jobs:
            if job["state"] not in ("FINISHED", "FAILED", "CANCELED"):
                with contextlib.suppress(OSError):
                    http_json(f"{self.rest}/jobs/{job['jid']}?mode=cancel", method="PATCH")


@pytest.fixture(scope="session")
def flink_cluster(engine_tools, engine_logs) -> Iterator[FlinkCluster]:
    """A Flink session cluster on 127.0.0.1: a JobManager and a TaskManager with two slots.

    Started from the job server jar (it holds Flink's runtime, REST API and web submission), with
    the configuration a Flink distribution's scripts would compute spelled out, since those
    scripts are not on Maven Central.
    """
    jar = require_file(engine_tools, "BEAM_FLINK_JOB_SERVER_JAR", "Flink job server")
    java = require_java()
    conf = engine_logs / "flink-conf"
    conf.mkdir(exist_ok=True)
    rest_port = free_port()
    (conf / "config.yaml").write_text(
        FLINK_CONF.format(
            host=HOST, rpc_port=free_port(), rest_port=rest_port, blob_port=free_port()
        )
    )
    rest = f"http://{HOST}:{rest_port}"

    def taskmanager_registered() -> bool:
        overview = http_json(f"{rest}/overview", timeout=2)
        return overview["taskmanagers"] >= 1 and overview["slots-available"] >= 2  # type: ignore[index]

    def flink(main_class: str, heap: str) -> list[str]:
        main = f"org.apache.flink.runtime.{main_class}"
        return [java, heap, "-cp", str(jar), main, "--configDir", str(conf)]

    jobmanager = Service(
        "flink-jobmanager",
        flink("entrypoint.StandaloneSessionClusterEntrypoint", "-Xmx512m"),
        log_dir=engine_logs,
        ready=lambda: port_open(rest_port),
        start_timeout=120,
    ).start()
    try:
        taskmanager = Service(
            "flink-taskmanager",
            flink("taskexecutor.TaskManagerRunner", "-Xmx640m"),
            log_dir=engine_logs,
            ready=taskmanager_registered,
            start_timeout=120,
        ).start()
    except Exception:
        jobmanager.stop()
        raise
    cluster = FlinkCluster(rest, jobmanager, taskmanager)
    yield cluster
    cluster.cancel_running_jobs()
    taskmanager.stop()
    jobmanager.stop()


@pytest.fixture(scope="session")
def engine_flink_session(engine_tools, worker_pool, flink_cluster) -> Engine:
    """FlinkRunner -> its job server -> a JobManager + TaskManager session cluster (REST)."""
    jar = Path(engine_tools["BEAM_FLINK_JOB_SERVER_JAR"])
    return _record(
        Engine(
            "flink_session",
            f"{_flink_version(engine_tools)}, JobManager + TaskManager on {HOST}",
            _flink_args(jar, flink_cluster.rest.removeprefix("http://"), worker_pool),
            services=[worker_pool, flink_cluster.jobmanager, flink_cluster.taskmanager],
            after_run=flink_cluster.cancel_running_jobs,
        )
    )


@pytest.fixture(scope="session")
def engine_flink_uber_jar(engine_tools, worker_pool, flink_cluster) -> Engine:
    """FlinkRunner with ``--flink_submit_uber_jar``: no job server; the pipeline is packed into
    a copy of the job server jar and uploaded to the JobManager's REST API."""
    jar = Path(engine_tools["BEAM_FLINK_JOB_SERVER_JAR"])
    return _record(
        Engine(
            "flink_uber_jar",
            f"{_flink_version(engine_tools)}, uber jar submitted to the session cluster",
            [
                *_flink_args(jar, flink_cluster.rest.removeprefix("http://"), worker_pool),
                "--flink_submit_uber_jar",
            ],
            services=[worker_pool, flink_cluster.jobmanager, flink_cluster.taskmanager],
            after_run=flink_cluster.cancel_running_jobs,
        )
    )


def pytest_terminal_summary(terminalreporter) -> None:
    """List the engines that ran, with their versions (the issue's closing note needs them)."""
    if not _ENGINE_RECORDS:
        return
    durations = [
        report.duration
        for reports in terminalreporter.stats.values()
        for report in reports
        if getattr(report, "nodeid", "").startswith("tests/engines/")
        and getattr(report, "when", "") in ("setup", "call", "teardown")
    ]
    terminalreporter.section("Beam engines")
    for name, version in sorted(_ENGINE_RECORDS.items()):
        terminalreporter.write_line(f"{name}: {version}")
    terminalreporter.write_line(f"tests/engines wall time: {sum(durations):.1f}s")

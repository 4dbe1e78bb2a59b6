"""Every command line says what it does, like a user meets it: ``--help``, wrong flags,
configuration problems, destructive jobs without a target, a run that rejects most of its
input, and what a default run prints on stderr.

What a user types runs as child processes, concurrently, in one module fixture (``python -m``
is what names a job and, for the retention jobs, finds its options classes; a child's stderr is
everything the user sees, Beam's import-time warnings included). The checks a new process adds
nothing to (every flag of every job, every Beam flag, each configuration problem, the dead-letter
ratio) call the entry points in process.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from apache_beam.options.pipeline_options import PipelineOptions
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import pipelines.__main__ as embedded
from pipelines import access, erase, ingest, lifecycle, purge, sdk_logs, telemetry, visits
from pipelines.launch import configure_logging
from pipelines.options import (
    IngestOptions,
    JobOptions,
    StorageOptions,
    beam_flags,
    bundled,
    flags_of,
    parse_job_flags,
)
from tests.support.outputs import RUN_TIME, read_rows

pytestmark = pytest.mark.e2e

# Each command line and the options classes its flags come from.
CLIS: dict[str, tuple[object, tuple[type[PipelineOptions], ...]]] = {
    "pipelines": (embedded, (JobOptions, IngestOptions, StorageOptions, visits.VisitsOptions)),
    "pipelines.visits": (
        visits,
        (JobOptions, IngestOptions, StorageOptions, visits.VisitsOptions),
    ),
    "pipelines.sdk_logs": (sdk_logs, (JobOptions, IngestOptions, StorageOptions)),
    "pipelines.telemetry": (telemetry, (JobOptions, IngestOptions, StorageOptions)),
    "pipelines.ingest": (
        ingest,
        (JobOptions, IngestOptions, StorageOptions, ingest.CategoryOptions),
    ),
    "pipelines.purge": (purge, (JobOptions, purge.PurgeOptions)),
    "pipelines.lifecycle": (lifecycle, (JobOptions, lifecycle.LifecycleOptions)),
    "pipelines.erase": (erase, (JobOptions, erase.SubjectRequestOptions)),
    "pipelines.access": (
        access,
        (JobOptions, erase.SubjectRequestOptions, access.AccessOptions),
    ),
}
REPO = Path(__file__).resolve().parents[2]
VISITS = bundled("sample/visits.jsonl")
EXPIRED = "data_category=sdk_log/expiry_date=2000-01-01/part-00000-of-00001-x.parquet"
KEPT = "data_category=sdk_log/expiry_date=__HIVE_DEFAULT_PARTITION__/part-00000-of-00001-x.parquet"


def job_flags(name: str) -> dict[str, str]:
    """The flags of a job from its options classes, with their help texts."""
    return {flag: action.help for flag, action in flags_of(CLIS[name][1]).items()}


def squeezed(text: str) -> str:
    """``text`` without whitespace: argparse wraps help texts anywhere, hyphens included."""
    return "".join(text.split())


# --------------------------------------------------------------- child processes, concurrently


def python_m(*args: str, cwd: Path | None = None, env: dict | None = None):
    return subprocess.run(
        [sys.executable, "-m", *args],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=cwd,
        env={**os.environ, **(env or {})},
    )


def without_gcs(site: Path) -> dict[str, str]:
    """An environment where google-cloud-storage fails to import, as after a plain ``pip install
    .`` (the test environment has the gcp extra): Beam then warns as it is imported."""
    return {"PYTHONPATH": os.pathsep.join([str(site), str(REPO)])}


def an_output_root(parent: Path) -> Path:
    """A small output root: an expired partition (purge would delete it) and a null one."""
    root = parent / "output"
    for rel in (EXPIRED, KEPT):
        (root / rel).parent.mkdir(parents=True)
        (root / rel).write_bytes(b"PAR1 not read: nothing may touch it")
    (root / "_reports").mkdir()
    return root


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("cli")
    (tmp / "a_dir").mkdir()
    (tmp / "a_dir" / "visits.jsonl").write_bytes(Path(VISITS).read_bytes())
    (tmp / "not.mmdb").write_text("a text file named .mmdb\n")
    (tmp / "a_file").write_text("not a directory\n")
    (tmp / "no_cols.csv").write_text("network,company\n10.0.0.0/8,x\n")
    (tmp / "policy.yaml").write_text("version: 1\ncategories: 5\n")
    (tmp / "events.jsonl").write_text(
        json.dumps({"event": "marketing_opt_out", "business_email": "a@b.example", "at": 1}) + "\n"
    )
    (tmp / "requests.jsonl").write_text(
        json.dumps({"request_id": "r1", "received_at": RUN_TIME, "business_email": "a@b.example"})
        + "\n"
    )
    fake = tmp / "site" / "google" / "cloud" / "storage"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text('raise ImportError("simulated: not installed")\n')
    for job in ("purge", "lifecycle", "erase", "access"):
        an_output_root(tmp / job)
    return {"tmp": tmp, "site": tmp / "site"}


def config_problems(tmp: Path) -> dict[str, list[str]]:
    """One visits command line per configuration problem (each output under ``tmp/out``)."""
    sample = [f"--input={VISITS}"]
    return {
        "no file matches --input": [f"--input={tmp / 'none-*.jsonl'}"],
        "--input is a directory": [f"--input={tmp / 'a_dir'}"],
        "GeoIP database missing": [*sample, f"--geoip_db={tmp / 'missing.mmdb'}"],
        "GeoIP database not an mmdb": [*sample, f"--geoip_db={tmp / 'not.mmdb'}"],
        "--output is a file": [*sample, f"--output={tmp / 'a_file'}"],
        "--output under a file": [*sample, f"--output={tmp / 'a_file' / 'out'}"],
        "--output cannot be written": [*sample, "--output=/proc/cli-test-output"],
        "snapshot missing": [*sample, f"--enrichment_snapshot={tmp / 'missing.csv'}"],
        "snapshot without its columns": [*sample, f"--enrichment_snapshot={tmp / 'no_cols.csv'}"],
        "malformed policy": [*sample, f"--policy={tmp / 'policy.yaml'}"],
        "unknown --input_format": [*sample, "--input_format=csv"],
        "unknown --layout": [*sample, "--layout=../hive"],
        "unknown --sink": [*sample, "--sink=bigquery"],
    }


@pytest.fixture(scope="module")
def runs(world) -> dict[str, subprocess.CompletedProcess]:
    """Every child process of this module, at once: all but one stop before reading data."""
    tmp = world["tmp"]
    commands: dict[str, dict] = {f"help {name}": {"args": (name, "--help")} for name in CLIS}
    commands["--geoip-db"] = {
        "args": ("pipelines.visits", f"--input={VISITS}", "--geoip-db", "prod.mmdb"),
        "cwd": tmp,
    }
    commands["--outptu"] = {
        "args": ("pipelines.visits", f"--input={VISITS}", "--outptu", str(tmp / "typo")),
        "cwd": tmp,
    }
    commands["traceback at DEBUG"] = {
        "args": (
            "pipelines.visits",
            f"--input={tmp / 'none-*.jsonl'}",
            f"--output={tmp / 'debug'}",
            "--log_level=debug",
        )
    }
    commands["no --output: purge"] = {"args": ("pipelines.purge",), "cwd": tmp / "purge"}
    commands["no --output: lifecycle"] = {
        "args": ("pipelines.lifecycle", f"--events={tmp / 'events.jsonl'}"),
        "cwd": tmp / "lifecycle",
    }
    commands["no --output: erase"] = {
        "args": ("pipelines.erase", f"--requests={tmp / 'requests.jsonl'}"),
        "cwd": tmp / "erase",
    }
    commands["no --output: access"] = {
        "args": (
            "pipelines.access",
            f"--requests={tmp / 'requests.jsonl'}",
            f"--export={tmp / 'exports'}",
        ),
        "cwd": tmp / "access",
    }
    # Every command above stops before Beam runs anything: each sees Beam's import warning and
    # must not print it.
    for command in commands.values():
        command["env"] = without_gcs(world["site"])
    # The one real run: Beam's own options, worker processes. The user must see the summary and
    # nothing on stderr.
    commands["default run"] = {
        "args": (
            "pipelines.visits",
            f"--input={VISITS}",
            f"--output={tmp / 'default'}",
            f"--run_time={RUN_TIME}",
            "--direct_num_workers=2",
            "--direct_running_mode=multi_processing",
        )
    }
    with ThreadPoolExecutor(max_workers=4) as pool:
        futures = {name: pool.submit(python_m, *c.pop("args"), **c) for name, c in commands.items()}
    return {name: future.result() for name, future in futures.items()}


def one_line(done: subprocess.CompletedProcess) -> str:
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr[-3000:]
    return lines[0]


# ------------------------------------------------------------------------------------ --help


@pytest.mark.parametrize("name", sorted(CLIS))
def test_help_lists_every_flag_of_the_job_with_its_help(runs, name):
    done = runs[f"help {name}"]
    assert done.returncode == 0, done.stderr
    shown = squeezed(done.stdout)
    for flag, text in job_flags(name).items():
        assert squeezed(flag) in shown, f"{name} --help does not list {flag}"
        assert squeezed(text) in shown, f"{name} --help does not explain {flag}"
    assert done.stdout.startswith(f"usage: python -m {name} [flags]\n")
    assert "--runner" in done.stdout and "Apache Beam" in done.stdout  # Beam's are accepted too


# ----------------------------------------------------------------------------- wrong flags


def test_a_misspelled_flag_is_an_error_naming_the_flag_meant(runs, world):
    for typo, meant in (("--geoip-db", "--geoip_db"), ("--outptu", "--output")):
        done = runs[typo]
        assert done.returncode == 2
        line = one_line(done)
        assert typo in line and f"did you mean {meant}?" in line, line
        assert "Traceback" not in done.stderr
    assert not (world["tmp"] / "output").exists() and not (world["tmp"] / "typo").exists()


@pytest.mark.parametrize("name", sorted(CLIS))
def test_every_flag_spelled_with_hyphens_is_refused_naming_it(name, capsys):
    module = CLIS[name][0]
    for flag in job_flags(name):
        if "_" not in flag:
            continue
        wrong = flag.replace("_", "-")
        with pytest.raises(SystemExit) as stop:
            module.main([f"{wrong}=x"])
        assert stop.value.code == 2
        (line,) = capsys.readouterr().err.splitlines()
        assert line == f"error: unknown flag {wrong} (did you mean {flag}?)"


def test_a_flag_of_another_job_is_unknown(capsys):
    with pytest.raises(SystemExit) as stop:
        sdk_logs.main(["--geoip_db=x.mmdb"])
    assert stop.value.code == 2
    assert "unknown flag --geoip_db" in capsys.readouterr().err


@pytest.mark.parametrize("name", sorted(CLIS))
def test_every_beam_option_is_accepted(name):
    options = CLIS[name][1]
    parse_job_flags(
        [f"{flag}=x" for flag in sorted(beam_flags())], options, prog=name, description=""
    )
    parse_job_flags(
        ["--runner", "FnApiRunner", "--direct_num_workers=2", "--dry_run", "--streaming"],
        options,
        prog=name,
        description="",
    )


# ------------------------------------------------------------------- configuration problems


@pytest.mark.parametrize("problem", sorted(config_problems(Path("/x"))))
def test_a_configuration_problem_is_one_line_before_any_data_is_read(world, problem, capsys):
    """In process; the children above show that the message is all a user sees."""
    args = config_problems(world["tmp"])[problem]
    out = world["tmp"] / "out"
    if not any(a.startswith("--output") for a in args):
        args.append(f"--output={out}")
    with pytest.raises(SystemExit) as stop:
        visits.main([*args, "--runner=FnApiRunner"])
    message = str(stop.value)
    assert stop.value.code not in (0, None) and message.startswith("error: ")
    if problem == "malformed policy":  # one message: the error, then each problem indented
        _, *rest = message.splitlines()
        assert rest and all(r.startswith("  ") for r in rest), message
    else:
        assert "\n" not in message, message
    assert capsys.readouterr() == ("", "")
    assert not out.exists()  # nothing written, not even the output directory


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    flag=st.sampled_from(["--input_format", "--layout", "--sink"]),
    value=st.text(st.characters(codec="utf-8"), max_size=40),
)
def test_any_value_of_a_registry_flag_runs_or_is_one_line(tmp_path, capsys, flag, value):
    """Whatever follows --input_format, --layout or --sink (paths, flags, controls, another
    script): a registered name, or one line naming the flag, before anything is written."""
    out = tmp_path / "hyp"
    args = [f"--input={VISITS}", f"--output={out}", f"{flag}={value}", "--runner=FnApiRunner"]
    registered = {
        "--input_format": ("auto", "jsonl", "avro", "parquet"),
        "--layout": ("hive",),
        "--sink": ("files",),
    }[flag]
    if value in registered:
        return  # a real run: the rest of this module covers it
    with pytest.raises(SystemExit) as stop:
        sdk_logs.main(args)
    message = str(stop.value)
    assert stop.value.code not in (0, None)
    assert message.startswith(f"error: {flag}") and "\n" not in message, message
    assert capsys.readouterr() == ("", "")
    assert not out.exists()


def test_debug_log_level_adds_the_traceback(runs):
    done = runs["traceback at DEBUG"]
    assert done.returncode == 1
    assert "Traceback" in done.stderr and "--input: no file matches" in done.stderr


# ------------------------------------------------------------------ destructive jobs' target


@pytest.mark.parametrize("job", ["purge", "lifecycle", "erase", "access"])
def test_a_retention_job_without_output_touches_nothing(runs, world, job):
    done = runs[f"no --output: {job}"]
    assert done.returncode == 1
    assert "--output is required" in one_line(done)
    root = world["tmp"] / job / "output"
    for rel in (EXPIRED, KEPT):
        assert (root / rel).read_bytes().startswith(b"PAR1 not read")
    assert sorted(p.name for p in root.iterdir()) == ["_reports", "data_category=sdk_log"]
    assert not list((root / "_reports").iterdir())


# -------------------------------------------------------------------------------- warnings


def test_a_default_run_prints_its_summary_and_no_warning(runs, world):
    done = runs["default run"]
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stderr == ""
    assert "[visits] reconciled=True" in done.stdout
    assert "dead-letter ratio 0.03185 (max 0.5)" in done.stdout
    assert list((world["tmp"] / "default").glob("data_category=website_visit/*/*.parquet"))


def test_log_level_sets_the_levels_of_ours_and_beams():
    import logging

    beam = logging.getLogger("apache_beam.transforms.core")
    try:
        assert configure_logging(None) == (logging.WARNING, logging.ERROR)
        assert not beam.isEnabledFor(logging.WARNING)
        assert configure_logging("INFO") == (logging.INFO, logging.INFO)
        assert beam.isEnabledFor(logging.INFO)
    finally:
        configure_logging(None)


# ----------------------------------------------------------------------- dead-letter ratio


def test_a_run_above_the_dead_letter_ratio_writes_everything_then_fails(tmp_path, capsys):
    data = tmp_path / "mostly_bad.jsonl"
    sample = Path(VISITS).read_bytes()  # 304 good visits, 10 bad lines (one not UTF-8)
    data.write_bytes(sample + b"".join(b"not json %d\n" % i for i in range(400)))
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as stop:
        visits.main(
            [f"--input={data}", f"--output={out}", "--runner=FnApiRunner", f"--run_time={RUN_TIME}"]
        )
    reason = str(stop.value)
    assert reason == (
        "error: dead-letter ratio 0.5742 (410 of 714 records read) exceeds "
        "--max_dead_letter_ratio 0.5; the rows and dead letters are written"
    )
    assert "dead-letter ratio 0.5742 (max 0.5)" in capsys.readouterr().out
    rows = [r for r in read_rows(out)["parquet"] if r["data_category"] == "website_visit"]
    assert len(rows) == 304
    letters = [
        line for p in out.glob("_dead_letter/**/*.jsonl") for line in p.read_text().splitlines()
    ]
    assert len(letters) == 410
    (report,) = (json.loads(p.read_text()) for p in out.glob("_reports/visits-*.json"))
    assert report["error"] == reason.removeprefix("error: ")
    assert report["counts"]["dead_letter_ratio"] == pytest.approx(410 / 714)


def test_the_embedded_default_holds_each_source_to_the_ratio(tmp_path, capsys):
    """At the old pinned run time most SDK logs and telemetry lie in the future: both sources
    go over the limit, the visits do not; every source is still written and summarised."""
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as stop:
        embedded.main([f"--output={out}", "--run_time=2026-11-29T00:00:00Z"])
    reason = str(stop.value)
    assert reason.startswith("error: sdk_logs: dead-letter ratio 0.6908 (143 of 207")
    assert "; telemetry: dead-letter ratio 0.6897 (140 of 203" in reason
    assert "visits:" not in reason and "\n" not in reason
    assert "all sources: read=724 reconciled=True" in capsys.readouterr().out
    assert len(list(out.glob("_reports/*.json"))) == 3

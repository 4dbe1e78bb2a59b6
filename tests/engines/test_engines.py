"""Every pipeline gives the same result on every Beam engine as on the FnApiRunner.

Each pipeline of ``specs.SPECS`` runs through its command line (``python -m <module>``) on its
fixture, once on the in-process FnApiRunner (the reference) and once per engine:

- ``prism``: the PrismRunner, with a Prism binary built from Beam's Go module at the SDK version;
- ``portable``: the PortableRunner against Beam's local job service, SDK workers from an external
  worker pool (separate processes);
- ``flink``: the FlinkRunner with Beam's Flink job server and an embedded Flink cluster,
  parallelism 2, SDK workers from the external pool;
- ``flink_session``: the same against a JobManager + TaskManager session cluster on 127.0.0.1;
- ``flink_uber_jar``: the pipeline packed into an uber jar and uploaded to that cluster.

The written Parquet rows (with their partition directories), the dead letters and the run report's
counters must be equal, as multisets, to the reference's. Pipelines run as separate processes in a
scratch directory with their inputs given as file paths, so nothing can lean on the state of the
process that built the graph: the policy, the GeoIP database and the snapshot have to reach the
workers through the graph and the files, and the geo reader and clients are built per worker.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import pytest

from pipelines.__main__ import SAMPLE_RUN_TIME
from tests.engines.services import PipelineRun, python_env, run_pipeline_cli
from tests.engines.specs import SPECS, PipelineSpec
from tests.support.outputs import read_rows

pytestmark = pytest.mark.engines

ENGINES = ("prism", "portable", "flink", "flink_session", "flink_uber_jar")
# Report fields that name the run rather than describe its result.
RUN_IDENTITY = ("run_id", "input", "output", "report_path")
REFERENCE_TIMEOUT = 300


def canonical(record: dict) -> str:
    return json.dumps(record, sort_keys=True, default=str)


@dataclass(frozen=True)
class Outputs:
    """What a run wrote, in comparable form."""

    rows: tuple[str, ...]
    dead_letters: tuple[str, ...]
    report: dict

    @classmethod
    def read(cls, out: Path, spec: PipelineSpec) -> Outputs:
        rows = sorted(canonical(r) for r in read_rows(out)["parquet"])
        letters = sorted(
            canonical({**json.loads(line), "dir": path.parent.relative_to(out).as_posix()})
            for path in out.glob("_dead_letter/*/*/*.jsonl")
            for line in path.read_text().splitlines()
        )
        reports = sorted(out.glob(f"_reports/{spec.name}-*.json"))
        assert len(reports) == 1, f"expected one {spec.name} report under {out}: {reports}"
        report = json.loads(reports[0].read_text())
        for key in RUN_IDENTITY:
            report.pop(key, None)
        return cls(tuple(rows), tuple(letters), report)


def differences(kind: str, expected: tuple[str, ...], actual: tuple[str, ...]) -> str:
    missing = Counter(expected) - Counter(actual)
    extra = Counter(actual) - Counter(expected)
    lines = [
        f"{kind}: {len(expected)} expected, {len(actual)} written; "
        f"{sum(missing.values())} missing, {sum(extra.values())} unexpected"
    ]
    lines += [f"  missing:    {row}" for row in list(missing)[:5]]
    lines += [f"  unexpected: {row}" for row in list(extra)[:5]]
    return "\n".join(lines)


def run_spec(spec: PipelineSpec, inputs: list[str], out: Path, runner: list[str], timeout: float):
    """The pipeline's CLI, run from a scratch directory (never the repository), at the bundled
    sample's run time (the sample's logs span a month: at another time many are out of the
    run's bounds, and the run stops at the dead-letter ratio)."""
    workdir = out.parent / f"{out.name}-cwd"
    workdir.mkdir(parents=True, exist_ok=True)
    return run_pipeline_cli(
        spec.module,
        [*inputs, f"--output={out}", f"--run_time={SAMPLE_RUN_TIME}", *runner],
        cwd=workdir,
        timeout=timeout,
        env=python_env(),
    )


@pytest.fixture(scope="session")
def fixture_inputs(tmp_path_factory):
    """Each spec's fixture, written once: every engine reads the same files."""
    cache: dict[str, list[str]] = {}

    def inputs(spec: PipelineSpec) -> list[str]:
        if spec.name not in cache:
            cache[spec.name] = spec.inputs(tmp_path_factory.mktemp(f"{spec.name}-inputs"))
        return cache[spec.name]

    return inputs


@pytest.fixture(scope="session")
def reference(tmp_path_factory, fixture_inputs):
    """Each spec's outputs on the FnApiRunner, computed once."""
    cache: dict[str, Outputs | str] = {}

    def compute(spec: PipelineSpec) -> Outputs | str:
        out = tmp_path_factory.mktemp(f"{spec.name}-fnapi") / "out"
        run = run_spec(spec, fixture_inputs(spec), out, ["--runner=FnApiRunner"], REFERENCE_TIMEOUT)
        if run.returncode != 0:
            return f"{spec.name} fails on the FnApiRunner itself:\n{run.describe()}"
        result = Outputs.read(out, spec)
        # A degenerate fixture would make every comparison vacuous.
        if not result.rows or not result.report["reconciliation"]["reconciled"]:
            return (
                f"{spec.name}: degenerate reference (no rows, or not reconciled): {result.report}"
            )
        return result

    def outputs(spec: PipelineSpec) -> Outputs:
        if spec.name not in cache:
            cache[spec.name] = compute(spec)
        result = cache[spec.name]
        if isinstance(result, str):  # computed once, reported by every test of the spec
            pytest.fail(result, pytrace=False)
        return result

    return outputs


@pytest.mark.parametrize("spec", SPECS, ids=str)
@pytest.mark.parametrize("engine_name", ENGINES)
def test_engine_writes_what_the_fnapirunner_writes(
    engine_name, spec, request, tmp_path, fixture_inputs, reference
):
    engine = request.getfixturevalue(f"engine_{engine_name}")
    expected = reference(spec)
    engine.check_services()
    out = tmp_path / "out"
    run: PipelineRun = run_spec(spec, fixture_inputs(spec), out, engine.args, engine.run_timeout)
    if engine.after_run is not None:
        engine.after_run()
    assert run.returncode == 0, f"{engine.name}:\n{run.describe()}\n{engine.diagnostics()}"
    actual = Outputs.read(out, spec)
    assert actual.rows == expected.rows, differences("rows", expected.rows, actual.rows)
    assert actual.dead_letters == expected.dead_letters, differences(
        "dead letters", expected.dead_letters, actual.dead_letters
    )
    assert actual.report == expected.report

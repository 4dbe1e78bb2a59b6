"""End to end: ``python -m pipelines.storage_rules`` deletes, in each store, what the purge does.

The GCS and S3 rules are applied as their documentation defines them
(``tests/support/bucket_lifecycle.py``) to the objects of an output root the pipelines really
wrote (the sample of two sources, plus the partitions a root may also hold: open-ended, an older
output's null partition, unrecognised names, files outside the layout, noncurrent versions), and
compared with the partitions ``pipelines.purge`` plans to delete for the same date
(``expired_partitions`` over ``list_layout``, the purge's own code).
"""

from __future__ import annotations

import copy
import datetime as dt
import json
import re
import subprocess
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipelines import storage_rules
from pipelines.purge import expired_partitions
from schemas.avro import output_schema
from schemas.policy import load_policy
from tests.support.bucket_lifecycle import DAY, Obj, UnsupportedRuleError, gcs_deletes, s3_deletes
from tests.support.outputs import run_command, run_sample
from transforms.retention.layout import classify, list_layout
from transforms.retention.stores import (
    BIGQUERY_EXPIRATION_DAYS,
    ObjectRoot,
    gcs_lifecycle,
    layout_dirs,
    s3_lifecycle,
)
from transforms.sinks import HIVE_NULL_PARTITION, OPEN_ENDED_EXPIRY_DATE

pytestmark = pytest.mark.e2e
REPO = Path(__file__).resolve().parents[2]
POLICY = load_policy()
ROOT = "out"  # the output root's key prefix in the bucket
# What else an output root may hold, besides what the sample writes.
EXTRA = (
    f"data_category=corporate_visitor_info/expiry_date={HIVE_NULL_PARTITION}/part-old.parquet",
    f"data_category=account_information/expiry_date={OPEN_ENDED_EXPIRY_DATE}/part-a.parquet",
    "data_category=sdk_log/expiry_date=2026-13-45/part-bad.parquet",  # not a date
    "data_category=sdk_log/expiry_date=2026-12-1/part-bad.parquet",  # a prefix of a date
    "data_category=sdk_log/expiry_date=2026-12-10x/part-bad.parquet",  # a date and more
    "data_category=sdk_log/expiry_date=2026-12-10/nested/part-deep.parquet",
    "data_category=sdk_log/expiry_date=2026-12-10/_SUCCESS",
    "_dead_letter/source=lifecycle/expiry_date=2026-12-21/part-l.jsonl",
    "_dead_letter/source=erase/expiry_date=2026-12-22/part-e.jsonl",
    "_dead_letter/source=customer_temporary_key/expiry_date=2026-12-23/part-k.jsonl",
    "_retention/lock.json",
    ".temp-run-tables-parquet/data_category=sdk_log/expiry_date=2026-12-10/spill.arrow",
    "notes/data_category=sdk_log/expiry_date=2026-12-10/readme.txt",
    "README.txt",
)


@pytest.fixture(scope="module")
def golden(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("storage_rules") / ROOT
    run_sample("sdk_logs", out)
    run_sample("visits", out)
    for rel in EXTRA:
        (out / rel).parent.mkdir(parents=True, exist_ok=True)
        (out / rel).write_bytes(b"x")
    return out


def objects(root: Path, created: dt.datetime) -> list[Obj]:
    """Every file under the root as an object of the bucket (key ``out/<path>``), and a
    noncurrent version of each (what an erasure's rewrite leaves on a versioned bucket)."""
    live = [
        Obj(f"{ROOT}/{p.relative_to(root).as_posix()}", created)
        for p in sorted(root.rglob("*"))
        if p.is_file()
    ]
    old = [Obj(f"{o.name}#v1", created - DAY, noncurrent_since=created) for o in live[::7]]
    return live + old


def purged(root: Path, day: dt.date) -> set[str]:
    """The keys of the files ``pipelines.purge`` deletes on ``day`` (UTC)."""
    plan = expired_partitions(list_layout(str(root)), day)
    return {f"{ROOT}/{rel}" for partition in plan for rel in partition["targets"]}


def dates_of(root: Path) -> list[dt.date]:
    """The dates of the root's dated partitions."""
    found = set()
    for f in list_layout(str(root)):
        if f.partition.expiry_date is not None:
            found.add(f.partition.expiry_date)
    return sorted(found)


def midnight(day: dt.date) -> dt.datetime:
    return dt.datetime.combine(day, dt.time(), dt.UTC)


def live(names: set[str]) -> set[str]:
    return {n for n in names if "#" not in n}


DIRS = layout_dirs(POLICY, storage_rules.dead_letter_sources(POLICY))
S3_ROOT = ObjectRoot.parse(f"s3://trtc-lake/{ROOT}", "s3")
GS_ROOT = ObjectRoot.parse(f"gs://trtc-lake/{ROOT}", "gs")


# ------------------------------------------------------------------- the rules, as operated


def test_s3_rules_expire_exactly_what_the_purge_deletes_on_every_date(golden):
    """Regenerated every 30 days for the next 30, before the horizon ends, the S3 rules have
    expired on every date exactly the objects the purge deletes on that date: no later, no
    earlier, whatever time of the day, and never an open-ended, unrecognised or foreign file."""
    dates = dates_of(golden)
    first, last = dates[0], dates[-1]
    bucket = {o.name: o for o in objects(golden, midnight(first) - 400 * DAY)}
    gone: set[str] = set()
    config = None
    for offset in range((last - first).days + 3):
        day = first - DAY + offset * DAY
        if offset % 30 == 0:
            config = s3_lifecycle(S3_ROOT, DIRS, day, 30)
        for now in (midnight(day), midnight(day) + DAY - dt.timedelta(seconds=1)):
            deleted = s3_deletes(config, bucket.values(), now)
            gone |= deleted
            for name in deleted:
                del bucket[name]
            assert live(gone) == purged(golden, day), day
    # every dated partition went; what is left is what the purge never deletes
    for name in live(set(bucket)):
        partition = classify(name.removeprefix(f"{ROOT}/"))
        assert partition is None or partition.expiry_date is None, name
    assert not {n for n in bucket if "#" in n}, "noncurrent versions go too"


def test_gcs_rules_installed_daily_delete_exactly_what_the_purge_deletes(golden):
    """GCS cannot wait for a date: the rules of the day are installed each day at 00:00 UTC.
    Installed so, they have deleted on every date exactly what the purge deletes that day; a
    day whose installation was missed is caught up by the next one (``--days`` reaches back),
    and in between nothing is deleted early."""
    dates = dates_of(golden)
    first, last = dates[0], dates[-1]
    bucket = {o.name: o for o in objects(golden, midnight(first) - 400 * DAY)}
    gone: set[str] = set()
    config = None
    missed = {first + 3 * DAY, first + 4 * DAY, first + 40 * DAY}
    for offset in range((last - first).days + 3):
        day = first - DAY + offset * DAY
        if day not in missed:
            config = gcs_lifecycle(GS_ROOT, DIRS, day, 30)
        if config is None:
            continue
        deleted = gcs_deletes(config, bucket.values(), midnight(day) + dt.timedelta(hours=6))
        gone |= deleted
        for name in deleted:
            del bucket[name]
        due = purged(golden, day)
        if day in missed:
            assert live(gone) <= due, day  # late, never early
        else:
            assert live(gone) == due, day
    for name in live(set(bucket)):
        partition = classify(name.removeprefix(f"{ROOT}/"))
        assert partition is None or partition.expiry_date is None, name


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    start=st.integers(-10, 160),
    days=st.integers(1, 999 // len(DIRS)),
    at=st.integers(-5, 200),
    hour=st.integers(0, 23),
    ages=st.lists(st.integers(-30, 400), min_size=1, max_size=20),
)
def test_one_rule_set_deletes_the_purges_partitions_of_its_dates_whenever_written(
    golden, start, days, at, hour, ages
):
    """Whatever the objects' creation times (a backfill, a lifecycle move, an erasure's
    rewrite), one S3 rule set deletes at any moment exactly the purge's partitions of its
    horizon that are due; the GCS rules of a day, those of their dates."""
    first = dates_of(golden)[0]
    base = [o for o in objects(golden, midnight(first)) if o.live]
    bucket = [
        Obj(o.name, midnight(first) - ages[i % len(ages)] * DAY + i * dt.timedelta(minutes=7))
        for i, o in enumerate(base)
    ]
    day = first + at * DAY
    now = midnight(day) + hour * dt.timedelta(hours=1)
    window = {first + (start + i) * DAY for i in range(days)}

    def dated_in(names: set[str], allowed: set[dt.date]) -> set[str]:
        return {n for n in names if classify(n.removeprefix(f"{ROOT}/")).expiry_date in allowed}

    s3 = s3_deletes(s3_lifecycle(S3_ROOT, DIRS, min(window), days), bucket, now)
    assert s3 == dated_in(purged(golden, day), window)
    gcs_window = {day - i * DAY for i in range(days)}
    gcs = gcs_deletes(gcs_lifecycle(GS_ROOT, DIRS, day, days), bucket, now)
    assert gcs == dated_in(purged(golden, day), gcs_window)


def test_a_category_the_policy_no_longer_names_is_the_purges_alone(tmp_path):
    """The rules name the partitions of the policy's categories and dead-letter sources: a
    partition of a category removed from the policy is deleted by the purge only (the limit
    docs/retention.md states)."""
    root = tmp_path / ROOT
    for rel in (
        "data_category=retired/expiry_date=2026-12-10/part.parquet",
        "_dead_letter/source=retired/expiry_date=2026-12-10/part.jsonl",
        "data_category=sdk_log/expiry_date=2026-12-10/part.parquet",
    ):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(b"x")
    day = dt.date(2026, 12, 10)
    bucket = objects(root, midnight(day) - 20 * DAY)
    expected = {f"{ROOT}/data_category=sdk_log/expiry_date=2026-12-10/part.parquet"}
    assert len(purged(root, day)) == 3
    assert live(s3_deletes(s3_lifecycle(S3_ROOT, DIRS, day, 1), bucket, midnight(day))) == expected
    assert (
        live(gcs_deletes(gcs_lifecycle(GS_ROOT, DIRS, day, 1), bucket, midnight(day))) == expected
    )


def test_no_rule_names_the_open_ended_partition_even_at_the_end_of_time(golden):
    """A horizon that reaches 9999-12-31 (the open-ended partition's name) is refused; up to the
    day before, nothing open-ended or unrecognised is deleted."""
    day = dt.date(9999, 12, 30)
    bucket = [o for o in objects(golden, midnight(dt.date(2026, 1, 1))) if o.live]
    for config, deletes in (
        (s3_lifecycle(S3_ROOT, DIRS, day - 29 * DAY, 30), s3_deletes),
        (gcs_lifecycle(GS_ROOT, DIRS, day, 1), gcs_deletes),
    ):
        for name in deletes(config, bucket, midnight(day)):
            assert classify(name.removeprefix(f"{ROOT}/")).expiry_date is not None, name
    for build in (s3_lifecycle, gcs_lifecycle):
        with pytest.raises(ValueError, match="open-ended"):
            build(S3_ROOT, DIRS, dt.date(9999, 12, 31), 1)
    with pytest.raises(ValueError, match="open-ended"):
        s3_lifecycle(S3_ROOT, DIRS, day, 2)


def test_the_simulator_refuses_what_it_does_not_model():
    """A rule the simulator cannot evaluate fails the test instead of passing it."""
    obj = [Obj("out/x", midnight(dt.date(2026, 1, 1)))]
    now = midnight(dt.date(2026, 2, 1))
    with pytest.raises(UnsupportedRuleError):
        gcs_deletes(
            {"lifecycle": {"rule": [{"action": {"type": "Delete"}, "condition": {"x": 1}}]}},
            obj,
            now,
        )
    with pytest.raises(UnsupportedRuleError):
        s3_deletes(
            {"Rules": [{"Status": "Enabled", "Filter": {"Tag": {}}, "Expiration": {"Days": 1}}]},
            obj,
            now,
        )
    # the documented examples: an age from creation (GCS), rounded up to midnight (S3)
    created = dt.datetime(2020, 1, 1, 10, 30, tzinfo=dt.UTC)
    days3 = {"Rules": [{"Status": "Enabled", "Filter": {"Prefix": ""}, "Expiration": {"Days": 3}}]}
    assert not s3_deletes(days3, [Obj("k", created)], dt.datetime(2020, 1, 4, 23, tzinfo=dt.UTC))
    assert s3_deletes(days3, [Obj("k", created)], dt.datetime(2020, 1, 5, tzinfo=dt.UTC))
    age10 = {"lifecycle": {"rule": [{"action": {"type": "Delete"}, "condition": {"age": 10}}]}}
    assert not gcs_deletes(age10, [Obj("k", created)], dt.datetime(2020, 1, 11, 10, tzinfo=dt.UTC))
    assert gcs_deletes(age10, [Obj("k", created)], dt.datetime(2020, 1, 11, 10, 30, tzinfo=dt.UTC))


def test_the_s3_horizon_is_bounded_by_the_rules_a_bucket_takes():
    most = (1000 - 1) // len(DIRS)  # a rule per directory and date, and one for old versions
    config = s3_lifecycle(S3_ROOT, DIRS, dt.date(2026, 12, 1), most)
    assert len(config["Rules"]) == most * len(DIRS) + 1 <= 1000
    assert len({r["ID"] for r in config["Rules"]}) == len(config["Rules"])
    with pytest.raises(ValueError, match=rf"at most 1000: --days {most} at the most"):
        s3_lifecycle(S3_ROOT, DIRS, dt.date(2026, 12, 1), most + 1)


# --------------------------------------------------------------------- BigQuery, Elasticsearch


def test_bigquery_partitions_expire_at_the_start_of_the_expiry_date():
    """BigQuery expires a day partition at the end of its day plus the table's expiration
    ("each partition expires at 06:00:00 UTC the following day" for 6 hours). The tables are
    partitioned by the day before the expiry date, with an expiration under a second: rows of
    ``expiry_date=D`` go at 00:00 UTC of D, as the purge deletes the partition on D."""
    ddl = storage_rules.generate(_args("--target=bigquery"))
    expiration = dt.timedelta(days=float(BIGQUERY_EXPIRATION_DAYS))
    assert dt.timedelta(0) < expiration < dt.timedelta(seconds=1)
    tables = re.findall(r"CREATE TABLE IF NOT EXISTS `trtc\.(\w+)` \((.*?)\n\)\n(.*?);", ddl, re.S)
    assert {name for name, _, _ in tables} == {
        c.name for c in POLICY.categories.values() if c.stored
    }
    for name, columns, options in tables:
        declared = [line.split()[0] for line in columns.strip().splitlines()]
        assert declared == [f["name"] for f in output_schema(name)["fields"]] + ["purge_eve"]
        assert "PARTITION BY purge_eve" in options
        assert f"partition_expiration_days = {BIGQUERY_EXPIRATION_DAYS}" in options
    for expiry in (dt.date(2026, 12, 5), dt.date(2027, 4, 3)):
        purge_eve = expiry - DAY  # DATE_SUB(DATE(expires_at), INTERVAL 1 DAY)
        expires = midnight(purge_eve) + DAY + expiration  # the end of its day, plus
        assert midnight(expiry) < expires < midnight(expiry) + dt.timedelta(seconds=1)


def test_elasticsearch_indices_are_deleted_on_their_expiry_date():
    """Each index gets the policy of the highest-priority template that matches it; ILM deletes
    it ``min_age`` after the date its name ends with: an event-dated index of a 14-day category
    on the event date + 14 (its rows' expiry date), an expiry-dated index on that date, an
    open index never."""
    text = storage_rules.generate(_args("--target=elasticsearch"))
    requests = dict(re.findall(r"PUT (\S+)\n(\{.*?\n\})\n", text, re.S))
    policies = {
        k.removeprefix("_ilm/policy/"): json.loads(v) for k, v in requests.items() if "_ilm" in k
    }
    templates = [json.loads(v) for k, v in requests.items() if "_index_template" in k]

    def deleted_on(index: str) -> dt.date | None:
        best = max(
            (t for t in templates if any(_glob(p, index) for p in t["index_patterns"])),
            key=lambda t: t["priority"],
        )
        settings_ = best["template"]["settings"]
        delete = policies[settings_["index.lifecycle.name"]]["policy"]["phases"].get("delete")
        if delete is None:
            return None
        assert settings_["index.lifecycle.parse_origination_date"]
        origin = dt.date.fromisoformat(index.rsplit("-", 1)[1].replace(".", "-"))
        return origin + int(delete["min_age"].removesuffix("d")) * DAY

    es = [c for c in POLICY.categories.values() if c.store == "elasticsearch"]
    assert es
    event = dt.datetime(2026, 11, 21, 17, 30, tzinfo=dt.UTC)
    for c in es:
        if c.retention.rule == "fixed":
            expiry = (event + c.retention.days * DAY).date()
            assert deleted_on(f"trtc-{c.name}-{event:%Y.%m.%d}") == expiry, c.name
        else:
            assert deleted_on(f"trtc-{c.name}-open") is None, c.name
        assert deleted_on(f"trtc-{c.name}-expiry-2026.12.05") == dt.date(2026, 12, 5)
    priorities = [(t["priority"], tuple(t["index_patterns"])) for t in templates]
    assert len(set(priorities)) == len(priorities)


def _glob(pattern: str, name: str) -> bool:
    return re.fullmatch(re.escape(pattern).replace(r"\*", ".*"), name) is not None


def _args(*argv: str):
    from pipelines.launch import Cli
    from pipelines.options import parse_job_flags

    cli = Cli.command(storage_rules, (storage_rules.StorageRulesFlags,))
    return parse_job_flags(argv, cli.options, prog=cli.prog, description="", beam=False)


# ------------------------------------------------------------------------- the command line


def python_m(*args: str) -> subprocess.CompletedProcess:
    return run_command("pipelines.storage_rules", *args, cwd=REPO)


def test_the_command_writes_the_rules_of_each_target(tmp_path):
    """Each target's text, to ``--out`` or standard output, from the policy given."""
    out = tmp_path / "lifecycle.json"
    done = python_m(
        "--target=s3",
        "--output=s3://trtc-lake/out/",
        "--from=2026-12-20",
        "--days=2",
        f"--out={out}",
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == "" and done.stderr == ""
    rules = json.loads(out.read_text())["Rules"]
    assert len(rules) == 2 * len(DIRS) + 1
    assert rules[0] == {
        "ID": "data_category=website_visit/expiry_date=2026-12-20",
        "Status": "Enabled",
        "Filter": {"Prefix": "out/data_category=website_visit/expiry_date=2026-12-20/"},
        "Expiration": {"Date": "2026-12-20T00:00:00Z"},
    }
    done = python_m("--target=gcs", "--output=gs://trtc-lake", "--from=2026-12-20", "--days=1")
    assert done.returncode == 0, done.stderr
    (rule, versions) = json.loads(done.stdout)["lifecycle"]["rule"]
    assert "data_category=sdk_log/expiry_date=2026-12-20/" in rule["condition"]["matchesPrefix"]
    assert versions["condition"]["isLive"] is False
    done = python_m("--target=bigquery", "--dataset=lake")
    assert done.returncode == 0 and "CREATE TABLE IF NOT EXISTS `lake.sdk_log`" in done.stdout


def test_a_policy_with_a_new_category_gets_its_rules_without_a_code_change(tmp_path):
    """A category is a policy entry and its schema (README "Extending the policy"): its data
    and its dead letters get rules at once."""
    doc = yaml.safe_load((REPO / "schemas/policy.yaml").read_text())
    doc["categories"]["uin_archive"] = copy.deepcopy(doc["categories"]["uin"])
    if "subjects" in doc:
        doc["subjects"]["fields"]["uin_archive"] = copy.deepcopy(doc["subjects"]["fields"]["uin"])
    policy = tmp_path / "policy.yaml"
    policy.write_text(yaml.safe_dump(doc))
    (tmp_path / "avro").mkdir()
    schema = json.loads((REPO / "schemas/avro/uin.avsc").read_text())
    (tmp_path / "avro/uin_archive.avsc").write_text(json.dumps({**schema, "name": "UinArchive"}))
    done = python_m(
        "--target=s3", "--output=s3://b/o", "--from=2026-12-20", "--days=1", f"--policy={policy}"
    )
    assert done.returncode == 0, done.stderr
    prefixes = {r["Filter"]["Prefix"] for r in json.loads(done.stdout)["Rules"]}
    for name in ("uin_archive", "uin"):
        assert f"o/data_category={name}/expiry_date=2026-12-20/" in prefixes
        assert f"o/_dead_letter/source={name}/expiry_date=2026-12-20/" in prefixes


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--target=gcs"], "--output is required with --target gcs"),
        (["--target=s3", "--output=gs://b/o"], "--output must be a s3://bucket/path"),
        (["--target=s3", "--output=s3://b/o", "--from=20.12.2026"], "--from: expected a date"),
        (["--target=s3", "--output=s3://b/o", "--days=0"], "--days must be at least 1"),
        (["--target=s3", "--output=s3://b/o", "--days=99"], "a bucket takes at most 1000"),
        (["--target=bigquery", "--days=3"], "--days applies to --target gcs and s3 only"),
        (["--target=elasticsearch", "--dataset=x"], "--dataset applies to --target bigquery"),
        (["--target=bigquery", "--policy=/nonexistent.yaml"], "cannot read the policy file"),
        (["--target=gcs", "--output=gs://b/o", "--out=/nonexistent/dir/x"], "is not a directory"),
    ],
)
def test_a_configuration_problem_is_one_line_and_exit_1(args, message, capsys):
    with pytest.raises(SystemExit) as exit_:
        storage_rules.main(args)
    assert str(exit_.value).startswith("error: ") and message in str(exit_.value)
    assert "\n" not in str(exit_.value)


def test_flags_are_strict_and_listed_in_help():
    help_ = python_m("--help")
    assert help_.returncode == 0
    text = "".join(help_.stdout.split())
    for flag in (
        "--target",
        "--output",
        "--from",
        "--days",
        "--dataset",
        "--policy",
        "--out",
        "--log_level",
    ):
        assert flag in text
    assert "pipelineoptionisacceptedtoo" not in text  # runs no pipeline: no Beam option
    typo = python_m("--target=s3", "--ouput=s3://b/o")
    assert typo.returncode == 2 and "did you mean --output?" in typo.stderr
    beam = python_m("--target=bigquery", "--runner=DirectRunner")
    assert beam.returncode == 2 and "unknown flag --runner" in beam.stderr
    missing = python_m()
    assert missing.returncode == 2 and "--target" in missing.stderr


def test_docs_retention_tables_and_examples_are_generated_from_the_policy(tmp_path):
    """docs/retention.md is what ``--target markdown --out docs/retention.md`` leaves it as; if
    this fails, run that command and commit the file."""
    doc = REPO / "docs/retention.md"
    text = doc.read_text()
    copy = tmp_path / "retention.md"
    copy.write_text(text)
    storage_rules.main(["--target=markdown", f"--out={copy}"])
    assert copy.read_text() == text, (
        "docs/retention.md is stale: python -m pipelines.storage_rules --target markdown "
        "--out docs/retention.md"
    )
    assert "Generated from" not in text or "--target markdown" in text
    broken = tmp_path / "broken.md"
    broken.write_text(text.replace("<!-- END generated: schedule -->", ""))
    with pytest.raises(SystemExit, match="missing or repeated: schedule"):
        storage_rules.main(["--target=markdown", f"--out={broken}"])

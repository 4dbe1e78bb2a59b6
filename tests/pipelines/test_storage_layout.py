"""The storage-layout seam, used from outside the package (EXTENDING.md "A storage layout").

A second layout, ``dated`` (``<category>/<YYYY>/<MM>/<DD>/``, ``_dead_letter/<source>/...``,
open-ended rows in ``<category>/open/``), is one class in a temporary module that registers it.
The same inputs are ingested into two roots, one per layout, with the ingestion CLI's
``--layout``; then purge, lifecycle, erase and access, none of which names a layout, run on both.
Every row read back with pyarrow, with the partition its path is in, must be the same in both
roots after every job: the layout moves files, never rows. The refusals that keep one root in
one layout are checked too: another ``--layout`` into a root, and a root whose marker names a
layout that is not registered.
"""

from __future__ import annotations

import collections
import json
import shutil
from functools import partial
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from pipelines import access, erase, ingest, lifecycle, purge, sdk_logs, visits
from pipelines.options import bundled
from tests.support.modules import module_fixture
from tests.support.outputs import RUN_TIME
from transforms.commit import RunStaging
from transforms.retention.layout import check_output_root, list_layout
from transforms.retention.txn import Transaction
from transforms.sinks import storage
from transforms.sinks.marker import LAYOUT_MARKER, layout_for_output, layout_of_root
from transforms.sinks.storage import HIVE, LayoutError

pytestmark = pytest.mark.e2e
COMMON = ["--runner=FnApiRunner", f"--run_time={RUN_TIME}"]
SAMPLE = Path(bundled("sample"))
IP = "94.46.41.248"  # a visitor with visits and dead letters in the sample
UIN = "100000924"  # a customer with SDK logs in the sample, and an account below
ACCOUNTS = [
    {"event_id": "a1", "uin": UIN, "registered_at": "2026-11-01T08:00:00Z", "name": "Ada",
     "ip": "198.51.100.4"},
    {"event_id": "a2", "uin": "100000010", "registered_at": "2026-11-02T08:00:00Z",
     "name": "Bob", "business_email": "bob@corp.example", "ip": IP},
]  # fmt: skip

LAYOUT_MODULE = '''
"""A storage layout of our own: one directory level per part of the expiry date."""

import re
import urllib.parse

from transforms.sinks import OPEN_ENDED_EXPIRY_DATE
from transforms.sinks.storage import DATA, DEAD_LETTER, Partition, StorageLayout, register

OPEN = "open"
_PATH = re.compile(
    r"^(?P<dir>(?:_dead_letter/(?P<source>[^/]+)|(?P<category>[^/_.][^/]*))"
    r"/(?:(?P<y>\\d{4})/(?P<m>\\d{2})/(?P<d>\\d{2})|open))/[^/]+$"
)
_DIGITS = "[0-9]"


def _name(value):
    return urllib.parse.quote(value, safe="") if value else "%00"


def _when(expiry):
    return OPEN if expiry == OPEN_ENDED_EXPIRY_DATE else expiry.replace("-", "/")


class DatedLayout(StorageLayout):
    name = "dated"

    def data_dir(self, category, expiry):
        return f"{_name(category)}/{_when(expiry)}"

    def dead_letter_dir(self, source, expiry):
        return f"_dead_letter/{_name(source)}/{_when(expiry)}"

    def classify(self, rel):
        found = _PATH.match(rel)
        if not found:
            return None
        if found["category"]:
            kind, raw = DATA, found["category"]
        else:
            kind, raw = DEAD_LETTER, found["source"]
        expiry = OPEN_ENDED_EXPIRY_DATE
        if found["y"]:
            expiry = f"{found['y']}-{found['m']}-{found['d']}"
        return Partition(kind, urllib.parse.unquote(raw), expiry, found["dir"])

    def partition_globs(self):
        dated = (_DIGITS * 4, _DIGITS * 2, _DIGITS * 2, "*")
        return [("*", *dated), ("*", OPEN, "*"), ("_dead_letter", "*", *dated),
                ("_dead_letter", "*", OPEN, "*")]


register(DatedLayout())
'''


dated_module = module_fixture(
    "dated_module", "dated_layout", LAYOUT_MODULE, partial(storage.unregister, "dated")
)


@pytest.fixture(scope="module")
def dated(dated_module):
    """The ``dated`` layout, imported from a temporary module (which registers it)."""
    return dated_module.DatedLayout()


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def ingest_all(tmp: Path, out: Path, layout: str) -> None:
    """SDK logs (with their dead letters), visits and account data, in ``layout``, through
    the ingestion command lines."""
    flags = [f"--output={out}", f"--layout={layout}", "--max_dead_letter_ratio=1", *COMMON]
    sdk_logs.main([f"--input={SAMPLE / 'sdk_logs.jsonl'}", *flags])
    visits.main(
        [
            f"--input={SAMPLE / 'visits.jsonl'}",
            f"--enrichment_snapshot={SAMPLE / 'arounddeal_snapshot.csv'}",
            *flags,
        ]
    )
    data = write_jsonl(tmp / "accounts.jsonl", ACCOUNTS)
    ingest.main(["--category=account_information", f"--input={data}", *flags])


@pytest.fixture(scope="module")
def roots(dated, tmp_path_factory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("layouts")
    found = {}
    for name in ("hive", "dated"):
        found[name] = tmp / name
        ingest_all(tmp, found[name], name)
    return found


@pytest.fixture
def both(roots, tmp_path) -> dict[str, Path]:
    """Fresh copies of the two roots, for one test to change."""
    copies = {}
    for name, root in roots.items():
        copies[name] = tmp_path / name
        shutil.copytree(root, copies[name])
    return copies


def content(root: Path) -> dict[str, list]:
    """Every row and dead letter under ``root``, each with its partition (kind, name, expiry)
    as the root's own layout classifies its path, sorted: the same in every layout."""
    rows, letters = [], []
    for f in list_layout(str(root)):
        where = (f.partition.kind, f.partition.name, f.partition.expiry)
        if f.format == "parquet":
            table = pq.read_table(f.path)
            rows += [json.dumps([where, r], sort_keys=True, default=str) for r in table.to_pylist()]
        elif f.format == "jsonl":
            lines = Path(f.path).read_text().splitlines()
            letters += [json.dumps([where, json.loads(line)], sort_keys=True) for line in lines]
    return {"rows": sorted(rows), "letters": sorted(letters)}


def files(root: Path) -> list[str]:
    return sorted(
        str(p.relative_to(root))
        for p in root.rglob("*")
        if p.is_file() and not str(p.relative_to(root)).startswith(("_reports", "_runs"))
    )


# ------------------------------------------------------------------------------------ tests


def test_an_ingestion_run_writes_the_layout_it_is_given_with_the_same_rows(roots, dated):
    hive, other = roots["hive"], roots["dated"]
    assert json.loads((other / LAYOUT_MARKER).read_text()) == {"layout": "dated"}
    assert not (hive / LAYOUT_MARKER).exists()  # the default layout writes what it always did
    assert layout_of_root(str(other)) == dated and layout_of_root(str(hive)) == HIVE
    data = [f for f in files(other) if f != LAYOUT_MARKER]
    assert data and not any("=" in f for f in data)
    for rel in data:  # every file is in a partition of the dated layout
        partition = dated.classify(rel)
        assert partition is not None and partition.recognised, rel
    assert any("/open/" in f for f in data)  # open-ended rows, in the layout's own spelling
    assert any(f.startswith("_dead_letter/sdk_logs/2026/12/") for f in data)
    got, want = content(other), content(hive)
    assert got["rows"] and got["letters"]
    assert got == want


def test_purge_deletes_exactly_the_due_partitions_of_the_roots_layout(both):
    now = "2026-12-13T00:00:00Z"  # the dead letters (2026-12-13) and the SDK logs before it
    before = {name: content(root) for name, root in both.items()}
    reports = {name: purge.run([f"--output={root}", f"--now={now}"]) for name, root in both.items()}
    assert reports["dated"]["counts"]["partitions"] > 0
    for key in ("partitions", "files"):
        assert reports["dated"]["counts"][key] == reports["hive"]["counts"][key]
    after = content(both["dated"])
    assert after == content(both["hive"])
    assert after["rows"] != before["dated"]["rows"]
    for row in after["rows"] + after["letters"]:
        (_, _, expiry), _ = json.loads(row)
        assert expiry > "2026-12-13"  # 9999-12-31 included: open-ended rows stay
    for p in reports["dated"]["partitions"]:  # deleted whole, no empty directory left
        assert not (both["dated"] / p["partition"]).exists()
        assert "/" in p["partition"] and "=" not in p["partition"]
    assert (both["dated"] / LAYOUT_MARKER).exists()  # outside the layout: never purged


def test_lifecycle_moves_rows_within_the_roots_layout(both):
    events = write_jsonl(
        both["hive"].parent / "events.jsonl",
        [{"event": "account_deleted", "uin": int(UIN), "at": "2026-11-28T00:00:00Z"}],
    )
    reports = {
        name: lifecycle.run([f"--output={root}", f"--events={events}", *COMMON])
        for name, root in both.items()
    }
    assert reports["dated"]["counts"]["rows_moved"] == reports["hive"]["counts"]["rows_moved"]
    assert sum(reports["dated"]["counts"]["rows_moved"].values()) > 0
    assert content(both["dated"]) == content(both["hive"])
    moved = reports["dated"]["moved_to"]
    assert moved and all("=" not in rel and rel.count("/") == 3 for rel in moved)
    assert not list(both["dated"].glob("data_category=*"))  # nothing written in Hive's layout


def test_erase_and_access_find_a_subjects_rows_in_the_roots_layout(both, tmp_path):
    feed = write_jsonl(
        tmp_path / "requests.jsonl",
        [
            {"request_id": "DSR-ip", "received_at": "2026-11-28T09:01:00Z", "ip": IP},
            {"request_id": "DSR-uin", "received_at": "2026-11-28T09:02:00Z", "uin": int(UIN)},
        ],
    )
    exports = {}
    for name, root in both.items():
        exports[name] = tmp_path / f"export-{name}"
        access.run([f"--output={root}", f"--requests={feed}", f"--export={exports[name]}", *COMMON])
    for request_id in ("DSR-ip", "DSR-uin"):
        found = {
            name: json.loads((export / request_id / "records.json").read_text())["records"]
            for name, export in exports.items()
        }
        assert found["dated"], request_id
        assert len(found["dated"]) == len(found["hive"])
        assert all("=" not in r["stored_in"] for r in found["dated"]), request_id

    before = content(both["dated"])
    reports = {
        name: erase.run([f"--output={root}", f"--requests={feed}", *COMMON])
        for name, root in both.items()
    }
    for name, report in reports.items():
        assert report["verification"]["rows_still_matching"] == 0, name
        assert report["verification"]["verified"], name
    erased = {
        name: {r["request_id"]: r["rows_erased"] for r in report["requests"]}
        for name, report in reports.items()
    }
    assert erased["dated"] == erased["hive"]
    assert sum(sum(n.values()) for n in erased["dated"].values()) > 0
    after = content(both["dated"])
    assert after == content(both["hive"]) and after["rows"] != before["rows"]
    assert not any(IP in row for row in after["rows"])


def test_a_run_in_another_layout_is_refused_before_it_writes(roots, tmp_path):
    for root, layout in ((roots["dated"], "hive"), (roots["hive"], "dated")):
        copy = tmp_path / root.name
        shutil.copytree(root, copy)
        before = files(copy)
        with pytest.raises(SystemExit) as stop:
            sdk_logs.main(
                [
                    f"--input={SAMPLE / 'sdk_logs.jsonl'}",
                    f"--output={copy}",
                    f"--layout={layout}",
                    "--run_id=another",
                    *COMMON,
                ]
            )
        message = str(stop.value)
        assert message.startswith("error: ") and "refusing to write the" in message, message
        assert files(copy) == before and not (copy / "_runs" / "sdk_logs-another").exists()


def test_an_unknown_layout_is_refused_naming_the_registered_ones(tmp_path, capsys):
    with pytest.raises(SystemExit) as stop:
        sdk_logs.main(
            [f"--input={SAMPLE / 'sdk_logs.jsonl'}", f"--output={tmp_path / 'o'}", "--layout=x"]
        )
    assert "unknown storage layout 'x'" in str(stop.value) and "hive" in str(stop.value)
    assert not (tmp_path / "o").exists()


def test_a_root_whose_marker_names_an_unregistered_layout_is_refused(roots, tmp_path):
    """What a process that does not know the layout sees: the retention jobs refuse the root
    (reading it in another layout would find nothing, and an erasure would verify it)."""
    copy = tmp_path / "unknown"
    shutil.copytree(roots["dated"], copy)
    (copy / LAYOUT_MARKER).write_text(json.dumps({"layout": "nowhere"}))
    before = files(copy)
    with pytest.raises(LayoutError, match="unknown storage layout 'nowhere'"):
        check_output_root(str(copy))
    for job in (purge, erase):
        flags = [f"--output={copy}", "--now=2030-01-01T00:00:00Z"]
        if job is erase:
            feed = write_jsonl(tmp_path / "r.jsonl", [{"request_id": "r", "ip": IP}])
            flags = [f"--output={copy}", f"--requests={feed}", *COMMON]
        with pytest.raises(SystemExit) as stop:
            job.main(flags)
        assert "unknown storage layout 'nowhere'" in str(stop.value), job
    assert files(copy) == before
    (copy / LAYOUT_MARKER).write_text("{not json")
    with pytest.raises(LayoutError, match="unreadable layout marker"):
        check_output_root(str(copy))


def test_layouts_are_registered_once_and_unknown_names_fail(dated):
    assert storage.layouts()[0] == "hive" and "dated" in storage.layouts()
    assert storage.register(type(dated)()) == dated  # the same layout again: a no-op

    class Other(type(dated)):
        pass

    with pytest.raises(LayoutError, match="already registered"):
        storage.register(Other())
    with pytest.raises(LayoutError, match="registered: hive"):
        storage.layout_named("nope")
    counts = collections.Counter(storage.layouts())
    assert max(counts.values()) == 1


def test_a_staging_folder_is_written_in_the_layout_of_its_root(roots, dated):
    """How the retention jobs' sinks (lifecycle's moved rows, their dead letters) write in the
    root's layout without being told: their staging folders are known as the root's."""
    root = str(roots["dated"])
    for staged in (Transaction(root, "t1").staged_root, RunStaging(root, "p", "r1").staged_root):
        assert layout_for_output(staged) == dated, staged
    assert layout_for_output(str(roots["hive"] / "_runs" / "p-r1" / "staged")) == HIVE

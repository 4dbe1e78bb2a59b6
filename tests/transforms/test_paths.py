"""Paths taken literally: the escaping against Beam's own pattern translation, listing and
deleting under roots with glob characters on a local disk and on an object store (``memstore``,
which has the listing and delete semantics of S3), and the erasure's read-back guard."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from apache_beam.io.filesystem import FileSystem
from hypothesis import given
from hypothesis import strategies as st

from pipelines.erase import ReadBack
from tests.support.objectstore import OBJECTS  # registers the memstore:// filesystem
from transforms.paths import delete_paths, glob_escape, list_files, literal_pattern, match
from transforms.retention.jsonio import delete_existing, delete_tree
from transforms.retention.layout import (
    NotAnOutputRootError,
    check_output_root,
    has_partition_files,
    list_layout,
)

NAMES = ["out[x]", "out*", "out?", "a]b[c", "[!x]", "o[*?]t", "plain", "[", "]", "**"]
PART = "data_category=sdk_log/expiry_date=2026-12-05/part-0.parquet"


def beam_regex(pattern: str) -> re.Pattern:
    return re.compile(FileSystem.translate_pattern(pattern))


@pytest.mark.filterwarnings("ignore::FutureWarning")  # re: "Possible nested set" for [[]
@given(st.text(alphabet="ab/[]*?!^-.", min_size=1, max_size=12))
def test_an_escaped_path_matches_itself_and_nothing_else_in_beams_translation(path):
    regex = beam_regex(glob_escape(path))
    assert regex.match(path)
    for other in {path.replace("[", ""), path.replace("*", "x"), path.replace("?", "y"), "ab"}:
        if other != path:
            assert not regex.match(other)


@pytest.mark.filterwarnings("ignore::FutureWarning")
@pytest.mark.parametrize("name", NAMES)
def test_a_literal_root_with_a_glob_below_it(name):
    regex = beam_regex(literal_pattern(f"/r/{name}", "data_category=*", "*"))
    assert regex.match(f"/r/{name}/data_category=a/f")
    assert not regex.match(f"/r/{name}/data_category=a/b/f")  # the glob part is still a glob
    for decoy in ("outx", "out-other", "outa", "ab", "x"):
        if decoy != name:
            assert not regex.match(f"/r/{decoy}/data_category=a/f")


def _tree(root: Path, files: list[str]) -> None:
    for rel in files:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(rel.encode())


@pytest.mark.parametrize("name", ["out[x]", "out*", "out?"])
def test_local_listing_and_deleting_take_the_root_literally(tmp_path, name):
    root, decoy = tmp_path / name, tmp_path / {"out[x]": "outx"}.get(name, "outa")
    _tree(root, [PART, "_reports/purge-1.json", "_dead_letter/source=s/expiry_date=2026-12-05/l"])
    _tree(decoy, [PART, "_reports/purge-1.json"])
    check_output_root(str(root))
    assert has_partition_files(str(root))
    assert sorted(Path(m.path).relative_to(root).as_posix() for m in list_files(str(root))) == [
        "_dead_letter/source=s/expiry_date=2026-12-05/l",
        "_reports/purge-1.json",
        PART,
    ]
    assert [f.rel for f in list_layout(str(root))] == [
        "_dead_letter/source=s/expiry_date=2026-12-05/l",
        PART,
    ]
    assert delete_existing([str(root / PART), str(root / "missing")]) == 1
    assert not (root / PART).exists() and (decoy / PART).exists()
    delete_tree(str(root / "_reports"))
    assert not (root / "_reports").exists() and (decoy / "_reports/purge-1.json").exists()


def test_a_root_that_only_a_glob_would_match_is_refused(tmp_path):
    """``out[x]`` does not exist, ``outx`` does: nothing under ``out[x]`` is an output root."""
    _tree(tmp_path / "outx", [PART])
    (tmp_path / "out[x]").mkdir()
    with pytest.raises(NotAnOutputRootError):
        check_output_root(str(tmp_path / "out[x]"))
    assert not has_partition_files(str(tmp_path / "out[x]"))


@pytest.fixture
def bucket():
    OBJECTS.clear()
    yield "memstore://bucket"
    OBJECTS.clear()


@pytest.mark.parametrize("name", ["out[x]", "out*", "out?"])
def test_object_store_listing_and_deleting_take_the_root_literally(bucket, name):
    root = f"{bucket}/{name}"
    decoy = f"{bucket}/{'outx' if name == 'out[x]' else 'outa'}"
    for prefix in (root, decoy):
        OBJECTS[f"{prefix}/{PART}"] = b"p"
        OBJECTS[f"{prefix}/_reports/purge-1.json"] = b"{}"
    OBJECTS[f"{bucket}/out-other/{PART}"] = b"p"
    check_output_root(root)
    assert has_partition_files(root)
    assert [f.rel for f in list_layout(root)] == [PART]
    assert sorted(m.path for m in list_files(root)) == [
        f"{root}/_reports/purge-1.json",
        f"{root}/{PART}",
    ]
    (result,) = match([literal_pattern(root, "_reports", "*.json")])
    assert [m.path for m in result.metadata_list] == [f"{root}/_reports/purge-1.json"]
    assert delete_paths([f"{root}/{PART}", f"{root}/missing"]) == 1
    assert f"{root}/{PART}" not in OBJECTS
    assert f"{decoy}/{PART}" in OBJECTS and f"{bucket}/out-other/{PART}" in OBJECTS
    delete_tree(f"{root}/_reports")
    assert sorted(OBJECTS) == sorted(
        [f"{decoy}/{PART}", f"{decoy}/_reports/purge-1.json", f"{bucket}/out-other/{PART}"]
    )
    with pytest.raises(NotAnOutputRootError):
        check_output_root(root)  # nothing left: the decoys do not count


@pytest.mark.parametrize(
    ("listed", "read", "layout_has_files", "complete"),
    [
        (24, 24, True, True),
        (0, 0, False, True),  # an empty layout: nothing to verify, nothing missed
        (0, 0, True, False),  # a listing that missed the files (out[x] read as outx)
        (24, 23, True, False),  # a file the read-back did not cover
    ],
)
def test_an_erasure_is_verified_only_when_its_read_back_covered_the_layout(
    listed, read, layout_has_files, complete
):
    assert ReadBack(listed, read, layout_has_files).complete is complete

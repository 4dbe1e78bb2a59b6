"""The hostile suite's own checks, on outputs written by hand: a check that cannot fail proves
nothing, so each one is shown failing here."""

from __future__ import annotations

import collections
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from tests.hostile.checks import (
    Collected,
    account_for,
    canary_hits,
    expired_on_arrival,
    leftovers,
    read_dead_letters,
)
from tests.hostile.corpus import (
    ANYWHERE,
    NOT_STORED,
    REJECTED,
    SOURCES,
    STORED,
    Line,
    hostile_lines,
    reader_line_count,
)


def line(name, outcomes, reasons=None, ids=None):
    return Line(
        name,
        b"x",
        outcomes,
        None if reasons is None else frozenset(reasons),
        ids=(f"h-{name}",) if ids is None else ids,
    )


def got(rows=(), letters=(), expired=0, anonymous=0):
    report = {"reconciliation": {"expired_on_arrival": expired}}
    return Collected(
        report=report,
        rows_by_id=collections.Counter(rows),
        anonymous_rows=anonymous,
        letters=[{"error": e, **({"event_id": i} if i else {})} for i, e in letters],
    )


def test_a_line_in_its_place_is_accounted_for():
    lines = [line("ok", STORED), line("bad", REJECTED, {"too_deep"}), line("old", NOT_STORED)]
    assert not account_for(lines, got(rows=["h-ok"], letters=[("h-bad", "too_deep")], expired=1))


def test_a_line_in_two_places_a_wrong_reason_or_a_stored_reject_is_reported():
    problems = account_for(
        [line("twice", ANYWHERE), line("reason", REJECTED, {"too_deep"}), line("kept", REJECTED)],
        got(
            rows=["h-twice", "h-kept"],
            letters=[("h-twice", "invalid_json"), ("h-reason", "invalid_json")],
        ),
    )
    assert [p.split(":")[0] for p in problems] == ["twice", "reason", "kept"]


def test_lines_without_an_id_are_matched_by_reason_whatever_their_order():
    lines = [
        line("any", REJECTED, ids=()),
        line("specific", REJECTED, {"line_too_large"}, ids=()),
    ]
    ok = got(letters=[(None, "line_too_large"), (None, "invalid_json")])
    assert not account_for(lines, ok)
    wrong = got(letters=[(None, "invalid_json"), (None, "invalid_json")])
    (problem, extra) = account_for(lines, wrong)
    assert problem.startswith("specific: found nowhere") and "explains" in extra


def test_a_reason_without_a_field_allows_it_with_one():
    lines = [line("t", REJECTED, {"event_time_out_of_range"})]
    assert not account_for(lines, got(letters=[("h-t", "event_time_out_of_range:at")]))
    assert account_for(lines, got(letters=[("h-t", "malformed_timestamp:at")]))


def test_outputs_no_line_explains_are_reported():
    problems = account_for([], got(rows=["stray"], letters=[(None, "x")], expired=1))
    assert len(problems) == 3


def test_expired_on_arrival_is_found_wherever_the_report_keeps_it():
    assert expired_on_arrival({}) == 0
    assert expired_on_arrival({"reconciliation": {"expired_on_arrival": 3}}) == 3
    assert expired_on_arrival({"counts": {"expired_on_arrival": {"a": 1, "b": 2}}}) == 3


def test_canaries_are_found_in_parquet_and_in_escaped_json(tmp_path):
    pq.write_table(pa.table({"v": ["CANARY-one"]}), tmp_path / "x.parquet")
    raw = '{"k": "\\u0043ANARY-two"}'  # the canary escaped inside a dead letter's raw JSON
    (tmp_path / "l.jsonl").write_text(json.dumps({"raw": raw}) + "\n")
    (tmp_path / "m.jsonl").write_text(json.dumps({"raw": "CANARY-\u0074hree"}) + "\n")
    hits = canary_hits(tmp_path, ["CANARY-one", "CANARY-two", "canary-three", "CANARY-four"])
    assert hits == {
        "CANARY-one": ["x.parquet"],
        "CANARY-two": ["l.jsonl"],
        "canary-three": ["m.jsonl"],
    }


def test_leftovers_are_whatever_is_outside_the_layout(tmp_path):
    for rel in (
        "data_category=a/expiry_date=2026-01-01/part-0.parquet",
        "_dead_letter/source=s/expiry_date=2026-01-01/part-0.jsonl",
        "_reports/s-1.json",
        ".temp-abc-tables-parquet/spill-0.arrow",
        "data_category=a/expiry_date=2026-01-01/.part-0.parquet.crc",
    ):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"")
    (tmp_path / "_retention").mkdir()
    assert leftovers(tmp_path) == [
        ".temp-abc-tables-parquet/",
        "_retention/",
        "data_category=a/expiry_date=2026-01-01/.part-0.parquet.crc",
    ]


def test_dead_letters_with_nan_are_not_strict_json(tmp_path):
    part = tmp_path / "_dead_letter/source=s/expiry_date=2026-01-01/part-0.jsonl"
    part.parent.mkdir(parents=True)
    part.write_text('{"error": "x", "n": NaN}\n{"error": "y"}\n')
    letters, problems = read_dead_letters(tmp_path, "s")
    assert [d["error"] for d in letters] == ["x", "y"] and len(problems) == 1


def test_line_counting_follows_the_readers():
    assert reader_line_count(b"") == 0
    assert reader_line_count(b"a\nb\n") == reader_line_count(b"a\r\nb") == 2
    assert reader_line_count(b"a\rb\rc\r") == 1  # \r alone ends no line
    assert reader_line_count(b"\n\n") == 2  # two empty lines


def test_every_source_has_unique_line_names_and_valid_lines():
    for source in SOURCES.values():
        lines = hostile_lines(source)
        assert len({x.name for x in lines}) == len(lines)
        assert sum(x.outcomes == STORED for x in lines) >= 3, source.name
        assert all(x.canaries for x in lines if x.name.startswith("canary-")), source.name


def test_the_valid_lines_of_the_corpus_are_json_objects():
    for source in SOURCES.values():
        for x in hostile_lines(source):
            if x.name.startswith("ok-"):
                assert isinstance(json.loads(x.data), dict)


def test_read_line_count_matches_written_inputs(tmp_path):
    from tests.hostile.corpus import write_inputs

    inputs = write_inputs(SOURCES["sdk_logs"], tmp_path / "in", None)
    data = sum(reader_line_count(Path(p).read_bytes()) for p in inputs.files)
    assert data == len(inputs.lines)

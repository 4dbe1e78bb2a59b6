"""Generated hostile input: hypothesis writes batches of lines nobody listed, and each batch is
run through a CLI's in-process entry point (``pipelines.<cli>.run(argv)``, the function the CLI
wraps, returning the run report).

Lines are arbitrary JSON values (``st.recursive``), arbitrary text (lone surrogates included,
written as invalid UTF-8), arbitrary bytes, valid records with one field mutated into a random
value or removed, valid records, records wrapped in a JSON string, and valid records cut short;
canary values sit in undeclared keys at any depth. The invariants are those of
``test_cli_hostile``: the run finishes, the report reconciles with the line count and with the
files, every line ends in exactly one place (valid records as rows, cut-short and wrapped
records as dead letters, anything else anywhere), no canary is written, nothing temporary is
left, dead letters are strict JSON.

Reproducible: ``derandomize=True`` and no example database; failing examples are not shrunk
(every shrinking step is a pipeline run) but printed as generated. ``HOSTILE_EXAMPLES`` scales
the number of examples (default 1.0).
"""

from __future__ import annotations

import importlib
import json
import os
import shutil
from pathlib import Path

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from tests.hostile.checks import (
    account_for,
    canary_hits,
    collect,
    leftovers,
    reconciliation_problems,
)
from tests.hostile.corpus import (
    ANYWHERE,
    REJECTED,
    SOURCES,
    STORED,
    Line,
    Source,
    canary,
    reader_line_count,
)
from tests.support.outputs import RUN_TIME

pytestmark = pytest.mark.e2e

SCALE = float(os.environ.get("HOSTILE_EXAMPLES", "1"))
# Examples per CLI: a run in process costs ~1 s of CPU (an erasure ~1.5 s), so that the whole
# of tests/hostile stays within a few minutes on two cores.
EXAMPLES = {"lifecycle": 10, "erase": 10}
DEFAULT_EXAMPLES = 20
CANARY_KEYS = ("db_password", "x_api_key", "Authorization", "work_email", "p\u0430ssword", "meta")

characters = st.one_of(st.characters(), st.characters(categories=["Cs"]))
texts = st.text(alphabet=characters, max_size=24)
plain_texts = st.text(max_size=12)  # no lone surrogates: keys a valid record may carry
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(min_value=-(10**400), max_value=10**400),
    st.floats(allow_nan=True, allow_infinity=True),
    texts,
)
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(texts, inner, max_size=4),
    max_leaves=16,
)


def encode(value: object, ascii_only: bool) -> bytes:
    """JSON text of ``value``; lone surrogates written raw become invalid UTF-8."""
    return json.dumps(value, ensure_ascii=ascii_only, allow_nan=True).encode(
        "utf-8", "surrogatepass"
    )


def hidden(draw, secret: str) -> object:
    """``secret`` somewhere inside a small random structure."""
    return draw(
        st.recursive(
            st.just(secret),
            lambda inner: (
                st.lists(inner, min_size=1, max_size=2)
                | st.dictionaries(plain_texts, inner, min_size=1, max_size=2)
            ),
            max_leaves=3,
        )
    )


@st.composite
def batches(draw, source: Source) -> list[Line]:
    lines = []
    for i in range(draw(st.integers(min_value=1, max_value=14))):
        kind = draw(
            st.sampled_from(
                ("valid", "mutated", "mutated", "json", "text", "bytes", "truncated", "as-string")
            )
        )
        ident = f"g-{i}-{kind}"
        record = source.record(ident, i)
        ids = source.ids(ident)
        secrets: list[str] = []
        if kind in ("valid", "mutated", "truncated", "as-string") and (
            kind != "valid" or draw(st.booleans())
        ):
            secret = canary(source.name, f"gen-{i}")
            record[draw(st.sampled_from(CANARY_KEYS))] = hidden(draw, secret)
            secrets.append(secret)
        ascii_only = draw(st.booleans())
        outcomes = ANYWHERE
        if kind == "valid":
            data, outcomes = encode(record, ascii_only), STORED
        elif kind == "mutated":
            name = draw(st.sampled_from(sorted(source.template("x", 0))))
            if draw(st.booleans()):
                record.pop(name)
            else:
                record[name] = draw(json_values)
            if name == source.id_field:
                ids = ()
            data = encode(record, ascii_only)
        elif kind == "json":
            data, ids = encode(draw(json_values), ascii_only), ()
        elif kind == "text":
            data, ids = draw(texts).encode("utf-8", "surrogatepass"), ()
        elif kind == "bytes":
            data, ids = draw(st.binary(max_size=120)), ()
        elif kind == "truncated":
            whole = encode(record, ascii_only)
            end = whole.index(secrets[0].encode()) + len(secrets[0])
            cut = draw(st.integers(min_value=end, max_value=len(whole) - 1))
            data, outcomes = whole[:cut], REJECTED
        else:  # a whole record inside a JSON string: not an object
            data, outcomes = encode(encode(record, True).decode(), ascii_only), REJECTED
        data = data.replace(b"\n", b" ")
        lines.append(Line(ident, data, outcomes, ids=ids, canaries=tuple(secrets)))
    return lines


def run_in_process(source: Source, pattern: Path, out: Path) -> dict:
    module = importlib.import_module(source.module)
    return module.run(
        [
            *source.flags,
            f"{source.input_flag}={pattern}",
            f"--output={out}",
            "--runner=FnApiRunner",
            f"--run_time={RUN_TIME}",
        ]
    )


def check_batch(source: Source, lines: list[Line], tmp: Path, root: Path | None) -> None:
    data = b"".join(line.data + b"\n" for line in lines)
    assert reader_line_count(data) == len(lines)
    (tmp / "in").mkdir()
    pattern = tmp / "in" / "generated.jsonl"
    pattern.write_bytes(data)
    out = tmp / "out"
    if root is not None:
        shutil.copytree(root, out)
    report = run_in_process(source, pattern, out)
    assert not report.get("error"), report["error"]
    got = collect(source, out)
    problems = reconciliation_problems(source, got, len(lines))
    problems += account_for(lines, got)
    by_line = {c: line.name for line in lines for c in line.canaries}
    hits = canary_hits(out, list(by_line))
    problems += [f"{by_line[c]}: canary written to {files}" for c, files in hits.items()]
    problems += [f"left under the output root: {p}" for p in leftovers(out)]
    problems += got.letter_problems
    assert not problems, f"{source.name}:\n" + "\n".join(problems)
    shutil.rmtree(tmp)


def _settings(name: str) -> settings:
    return settings(
        max_examples=max(1, round(EXAMPLES.get(name, DEFAULT_EXAMPLES) * SCALE)),
        deadline=None,
        derandomize=True,
        database=None,
        phases=(Phase.explicit, Phase.generate),
        suppress_health_check=list(HealthCheck),
        print_blob=False,
    )


def _test_for(name: str):
    source = SOURCES[name]

    @_settings(name)
    @given(lines=batches(source))
    def test(lines, tmp_path_factory, request):
        root = request.getfixturevalue("retention_root") if source.retention_job else None
        check_batch(source, lines, tmp_path_factory.mktemp(f"gen-{name}"), root)

    test.__name__ = f"test_generated_lines_{name}"
    return test


test_generated_lines_visits = _test_for("visits")
test_generated_lines_sdk_logs = _test_for("sdk_logs")
test_generated_lines_telemetry = _test_for("telemetry")
test_generated_lines_account_information = _test_for("account_information")
test_generated_lines_lifecycle = _test_for("lifecycle")
test_generated_lines_erase = _test_for("erase")

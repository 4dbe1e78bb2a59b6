"""The columnar pyarrow baseline of a pipeline: the practical upper limit its throughput is held to.

    python -m bench.baseline visits INPUT.jsonl OUTPUT_DIR --geoip_db MMDB
    # prints {"records": N, "rows": {...}, "addresses": {"distinct": D, "resolved": R}}

One streaming pass, all in Arrow's C++ kernels: read the JSON Lines with ``pyarrow.json``, tag every
row with ``pyarrow.compute`` (data_category, the category's unconditional purposes, legal_basis,
retention_rule, expires_at = event time + the category's fixed retention, policy_version, all from
``schemas/policy.yaml``), route it to its categories as the pipeline does (visits: every row is a
website_visit, rows with any company/contact field also a corporate_visitor_info; sdk_logs and
telemetry: the policy's routes, first match wins) and write Parquet with
``pyarrow.dataset.write_dataset``, Hive-partitioned by data_category/expiry_date. No validation, no
enrichment, no dead letters.

Visits add the one cost no pipeline can avoid on its input, and the only Python work per value:
one raw lookup per distinct address in the country database the pipeline uses (``--geoip_db``;
``Reader.get`` of maxminddb's C reader, as ``transforms.geo`` opens it, reading the record's
``country.iso_code``). The distinct ``ip`` values are gathered with ``pyarrow.compute.unique``,
per block and then over the blocks' values, and looked up at the end. A file whose addresses
repeat costs few lookups, one whose addresses are all distinct one per record: without them the
baseline would run as fast on either, and the pipeline's ratio would fall on distinct addresses
for work that is not overhead. A value that is no address counts as distinct, unresolved. The
output reports the distinct values and how many the database resolved to a country.

It reads the very file the pipeline reads. ``pyarrow.json`` rejects a column whose JSON type changes
(``visited_at`` is an ISO string or epoch milliseconds, identifiers are numbers or strings), so the
file is read in blocks of whole lines, each block taken as one binary value: one
``replace_substring_regex`` over it quotes the bare numbers of those mixed fields, and the
rewritten block goes to ``pyarrow.json`` with an explicit schema (the input ``.avsc``; undeclared
fields are dropped). The event time is then parsed column-wise from either form. The regex takes
about 0.5 s of the 3-4 s a quiet machine needs for 1M visits. write_dataset is called once per block
and category, so a partition gets one file per block (``--block-mib`` trades files for memory).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import maxminddb
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.json as pj

from schemas.avro import FieldSpec, input_fields
from schemas.policy import Category, Policy, Route, load_policy

PIPELINES = ("visits", "sdk_logs", "telemetry")
# pipelines.options.bundled("country.mmdb"), without importing Beam into the baseline
BUNDLED_MMDB = Path(__file__).resolve().parent.parent / "pipelines" / "data" / "country.mmdb"
TIMESTAMP = pa.timestamp("us", tz="UTC")
_ARROW = {
    "string": pa.string(),
    "enum": pa.string(),
    "double": pa.float64(),
    "float": pa.float64(),
    "long": pa.int64(),
    "int": pa.int64(),
    "boolean": pa.bool_(),
}
PARTITIONING = ds.partitioning(
    pa.schema([("data_category", pa.string()), ("expiry_date", pa.date32())]), flavor="hive"
)


def _mixed(spec: FieldSpec) -> bool:
    """True for a field that arrives as a JSON number or a JSON string."""
    return spec.format == "identifier" or len(set(spec.avro_types)) > 1


def plan(pipeline: str, policy: Policy) -> tuple[str, tuple[Route, ...], bool]:
    """Input schema, routes to categories and whether the first matching route wins."""
    if pipeline == "visits":
        corporate = policy.category("corporate_visitor_info")
        any_field = tuple(f for group in corporate.field_groups.values() for f in group)
        routes = (Route("website_visit"), Route(corporate.name, when_present=any_field))
        return "visit_input", routes, False
    source = policy.source_named(pipeline)
    return source.input_schema, source.routes, True


def blocks(path: Path, block_bytes: int) -> Iterator[bytes]:
    """The file in blocks of about ``block_bytes`` that end at a line end."""
    rest = b""
    with path.open("rb") as fh:
        while chunk := fh.read(block_bytes):
            data = rest + chunk
            cut = data.rfind(b"\n") + 1
            if cut:
                yield data[:cut]
            rest = data[cut:]
    if rest:
        yield rest


def parse(block: bytes, specs: tuple[FieldSpec, ...]) -> pa.Table:
    """The block's records as a table of the input schema's columns (mixed fields as strings)."""
    mixed = "|".join(s.name for s in specs if _mixed(s))
    text = pa.array([block], pa.binary())  # the whole block is one value of one column
    quoted = pc.replace_substring_regex(text, rf'"({mixed})"\s*:\s*(-?[0-9]+)', r'"\1":"\2"')
    schema = pa.schema(
        [(s.name, pa.string() if _mixed(s) else _ARROW[s.avro_types[0]]) for s in specs]
    )
    return pj.read_json(
        pa.BufferReader(quoted[0].as_buffer()),
        read_options=pj.ReadOptions(block_size=max(1 << 20, len(block) // 4)),
        parse_options=pj.ParseOptions(explicit_schema=schema, unexpected_field_behavior="ignore"),
    )


def event_time(column: pa.Array) -> pa.Array:
    """ISO-8601 strings (offset, Z or naive = UTC) or epoch milliseconds -> timestamp[us, UTC]."""
    is_ms = pc.match_substring_regex(column, r"^-?[0-9]+$")
    none = pa.scalar(None, pa.string())
    millis = pc.cast(pc.if_else(is_ms, column, none), pa.int64())
    from_ms = pc.cast(pc.multiply(millis, 1000), TIMESTAMP)
    naive = r"^([0-9-]+T[0-9:.]+)$"
    iso = pc.replace_substring_regex(pc.if_else(is_ms, none, column), naive, r"\1Z")
    return pc.coalesce(from_ms, pc.cast(iso, TIMESTAMP))


def matches(route: Route, table: pa.Table) -> pa.Array:
    """Boolean mask of the rows ``route`` matches (Route.matches, column-wise)."""
    mask = pa.repeat(not route.when_present, table.num_rows)
    for f in route.when_present:
        if f in table.column_names:
            column = table[f]
            present = (
                pc.fill_null(pc.not_equal(column, ""), False)
                if pa.types.is_string(column.type)
                else pc.is_valid(column)
            )
            mask = pc.or_(mask, present)
    for field, value in route.when_equals.items():
        mask = pc.and_(mask, pc.fill_null(pc.equal(table[field], value), False))
    return mask


class Addresses:
    """Each distinct address of the input looked up once in the country database.

    A block's distinct values are kept (Arrow), and the file's are looked up at the end: the
    fewest calls, none of them Python's work per repeated value, whatever the blocks share.
    """

    def __init__(self, mmdb: Path) -> None:
        self.reader = maxminddb.open_database(str(mmdb), maxminddb.MODE_MMAP_EXT)
        self.blocks: list[pa.Array] = []

    def add(self, column: pa.ChunkedArray) -> None:
        self.blocks.append(pc.unique(column.drop_null()))

    def lookup(self) -> dict[str, int]:
        """Look every distinct value up; how many there are and how many have a country."""
        distinct = pc.unique(pa.chunked_array(self.blocks, pa.string())).to_pylist()
        resolved = 0
        get = self.reader.get
        for ip in distinct:
            try:
                record = get(ip)
            except ValueError:  # not an IP address
                continue
            if record and record.get("country", {}).get("iso_code"):
                resolved += 1
        return {"distinct": len(distinct), "resolved": resolved}


def tag(rows: pa.Table, category: Category, version: str) -> pa.Table:
    """The category's columns of ``rows`` followed by the policy tag columns and expiry_date."""
    if category.retention.rule != "fixed":
        raise ValueError(f"{category.name}: the baseline only knows fixed retention")
    n = rows.num_rows
    columns = {
        f: rows[f] if f in rows.column_names else pa.nulls(n, pa.string()) for f in category.fields
    }
    retention = pa.scalar(timedelta(days=category.retention.days), pa.duration("us"))
    expires = pc.add(columns[category.event_time], retention)
    purposes = [p.name for p in category.purposes if not (p.not_in_regions or p.requires_any_field)]
    columns |= {
        "data_category": pa.repeat(category.name, n),
        "purposes": pa.repeat(pa.scalar(purposes, pa.list_(pa.string())), n),
        "legal_basis": pa.repeat(category.legal_basis, n),
        "retention_rule": pa.repeat(category.retention.label, n),
        "expires_at": expires,
        "policy_version": pa.repeat(version, n),
        "expiry_date": pc.cast(expires, pa.date32()),
    }
    return pa.table(columns)


def run(
    pipeline: str, source: Path, output: Path, block_bytes: int, mmdb: Path
) -> dict[str, object]:
    policy = load_policy()
    addresses = Addresses(mmdb) if pipeline == "visits" else None
    schema, routes, exclusive = plan(pipeline, policy)
    specs = input_fields(schema)
    time_field = policy.category(routes[0].category).event_time
    records = 0
    written = {r.category: 0 for r in routes}
    for i, block in enumerate(blocks(source, block_bytes)):
        table = parse(block, specs)
        records += table.num_rows
        if addresses is not None:
            addresses.add(table["ip"])
        table = table.set_column(
            table.schema.get_field_index(time_field), time_field, event_time(table[time_field])
        )
        taken = pa.repeat(False, table.num_rows)
        for route in routes:
            mask = matches(route, table)
            if exclusive:
                mask, taken = pc.and_not(mask, taken), pc.or_(taken, mask)
            rows = tag(table.filter(mask), policy.category(route.category), policy.version)
            written[route.category] += rows.num_rows
            ds.write_dataset(
                rows,
                output,
                format="parquet",
                partitioning=PARTITIONING,
                basename_template=f"part-{i:05d}-{{i}}.parquet",
                existing_data_behavior="overwrite_or_ignore",
            )
    result: dict[str, object] = {"records": records, "rows": written}
    if addresses is not None:
        result["addresses"] = addresses.lookup()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("pipeline", choices=PIPELINES)
    parser.add_argument("input", type=Path)
    parser.add_argument("output", type=Path)
    parser.add_argument("--block-mib", type=int, default=16, help="input bytes per block")
    parser.add_argument(
        "--geoip_db",
        type=Path,
        default=BUNDLED_MMDB,
        help="country database of the visits' address lookups (default: the bundled one)",
    )
    args = parser.parse_args()
    result = run(args.pipeline, args.input, args.output, args.block_mib << 20, args.geoip_db)
    print(json.dumps(result))


if __name__ == "__main__":
    main()

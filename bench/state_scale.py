"""make bench: the state store at 10 million records. Is the no-change full re-sync of a merchant of
1M products still within 1.5× of fetching them, when the state store holds 9M records of other
merchants besides?

A fresh PostgreSQL database (dropped afterwards) gets the schema from StateStore and ~9M
records of other merchants in bulk SQL; then a sandbox of 1M products for the merchant
`default`, a first full sync (bringing the store to ~10M), a no-change full re-sync, and the
fetch-only limit (bench/baseline.py) in the same run; each sync a whole `sync-pipeline sync
PRODUCT --mode full` process. Then, apart, the state store's bulk moves for 1M rows: export
(a full sync's first step) and import (the write-back of a sync that changed them all).
Writes bench/results/NAME.json and NAME.md (NAME: state_scale).

    python -m bench.state_scale [--other-records 9000000] [--products 1000000]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from bench.infra import (
    MachineCpu,
    Stopwatch,
    create_database,
    database_sizes,
    drop_database,
    machine,
    pg_connect,
    pg_settings,
)

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
TARGET_RATIO = 1.5

# One statement per chunk of merchants: generate_series over (merchant, record), values shaped
# like a sync's: ids 'prod-0000001', md5 hashes, the held version = the source's, nothing pending.
FILL_SQL = """
INSERT INTO records (
    merchant_id, entity_type, record_id, source_hash, source_updated_at, source_sync_id, source_seen_at,
    held_hash, held_batch_id, held_at, refused_times, pending
)
SELECT merchant_id, 'PRODUCT', record_id, hash,
       timestamptz '2025-01-01 00:00:00+00' + mod(m * 7919 + r * 104729, 57000000) * interval '1 second',
       sync_id, seen_at, hash,
       batch_id, seen_at + interval '5 seconds', 0, 0
FROM (
    SELECT m, r,
           'o' || lpad(m::text, 6, '0') AS merchant_id,
           'prod-' || lpad(r::text, 7, '0') AS record_id,
           md5(m::text || ':' || r::text) AS hash,
           md5('sync:' || m::text)::uuid::text AS sync_id,
           md5('batch:' || m::text || ':' || (r / 1000)::text)::uuid::text AS batch_id,
           timestamptz '2026-11-01 02:00:00+00' + mod(m, 86400) * interval '1 second' AS seen_at
    FROM generate_series(%(first)s, %(last)s) AS m, generate_series(1, %(per_merchant)s) AS r
) AS generated
"""


def fill_other_merchants(url: str, records: int, per_merchant: int) -> dict:
    """~`records` rows for records // per_merchant merchants, inserted without the table's indexes,
    which are built again afterwards (as a restore would), then VACUUM ANALYZE."""
    merchants = max(1, records // per_merchant)
    connection = pg_connect(url)
    timings: dict = {"merchants": merchants, "per_merchant": per_merchant, "rows": merchants * per_merchant}
    try:
        with connection.cursor() as cursor:
            cursor.execute("SET maintenance_work_mem = '512MB'")
            cursor.execute("SET synchronous_commit = off")
            cursor.execute(
                "SELECT conname, pg_get_constraintdef(oid) FROM pg_constraint"
                " WHERE conrelid = 'records'::regclass AND contype = 'p'"
            )
            primary_key = cursor.fetchone()
            cursor.execute(
                "SELECT indexname, indexdef FROM pg_indexes WHERE tablename = 'records' AND indexname <> %s",
                (primary_key[0],),
            )
            indexes = cursor.fetchall()
            cursor.execute(f'ALTER TABLE records DROP CONSTRAINT "{primary_key[0]}"')
            for name, _ in indexes:
                cursor.execute(f'DROP INDEX "{name}"')
            clock = Stopwatch()
            chunk = max(1, 1_000_000 // per_merchant)
            for first in range(1, merchants + 1, chunk):
                last = min(merchants, first + chunk - 1)
                cursor.execute(FILL_SQL, {"first": first, "last": last, "per_merchant": per_merchant})
                print(f"  filled merchants {first}..{last} ({last * per_merchant:,} rows, {clock.seconds:.0f}s)", flush=True)
            timings["insert_seconds"] = round(clock.seconds, 1)
            clock = Stopwatch()
            cursor.execute(f'ALTER TABLE records ADD CONSTRAINT "{primary_key[0]}" {primary_key[1]}')
            for _, definition in indexes:
                cursor.execute(definition)
            timings["index_seconds"] = round(clock.seconds, 1)
            clock = Stopwatch()
            cursor.execute("VACUUM (ANALYZE) records")
            timings["vacuum_analyze_seconds"] = round(clock.seconds, 1)
            timings["primary_key"] = primary_key[1]
            timings["indexes"] = [definition for _, definition in indexes]
    finally:
        connection.close()
    timings["total_seconds"] = round(timings["insert_seconds"] + timings["index_seconds"] + timings["vacuum_analyze_seconds"], 1)
    return timings


def run_logged(command: list[str], env: dict) -> tuple[dict, str]:
    """Run a bench helper; its BENCH line as JSON, and everything it printed (the run's log)."""
    done = subprocess.run(command, env=env, capture_output=True, text=True, cwd=ROOT)
    output = done.stdout + done.stderr
    for line in done.stdout.splitlines():
        if line.startswith("BENCH "):
            return json.loads(line[6:]), output
    raise RuntimeError(f"{command[:4]} failed ({done.returncode}): {output[-4000:]}")


OUT_OF_MEMORY = re.compile(r"Out of Memory|could not allocate|memory limit", re.IGNORECASE)
STAGED = re.compile(r"staged (\d+) valid and (\d+) rejected of (\d+) fetched in (\d+) pages .*?, ([0-9.]+)s; (\d+) to delete")


def full_sync(env: dict) -> dict:
    """`sync-pipeline sync PRODUCT --mode full` as its own process (bench/measure_sync.py), with
    what the state store and the instance say about it."""
    from bench.run import bench_json

    clock = Stopwatch()
    result, log = run_logged([sys.executable, "-m", "bench.measure_sync", "sync", "PRODUCT", "--mode", "full"], env)
    result["wall_outside"] = round(clock.seconds, 3)
    result["duckdb_memory_limit"] = env.get("SYNC_DUCKDB_MEMORY_LIMIT", "the default")
    if result["exit"] != 0:
        failed = re.search(r"ended (\d+ \w+: [^\n]*)", log)
        result["error"] = failed.group(1) if failed else log[-2000:]
        return result
    staged = STAGED.search(log)
    if staged:
        result["staged_log_seconds"] = float(staged.group(5))
    code = (
        "import json; import dagster as dg; from sync_pipeline.state import StateStore;"
        "from sync_pipeline.settings import state_url; from sync_pipeline.domain import EntityType;"
        "s = StateStore(state_url()).history(EntityType.PRODUCT, 1)[0]; i = dg.DagsterInstance.get();"
        "meta = lambda k: i.get_latest_materialization_event(dg.AssetKey(k)).asset_materialization.metadata;"
        "st, pu = meta('products_staged'), meta('products_published');"
        "print('BENCH ' + json.dumps({'status': s.status.text, 'fetched': s.fetched, 'published': s.published,"
        " 'refused': s.failed, 'deleted': s.deleted, 'num_records': s.num_records,"
        " 'sync_seconds': (s.finished_at - s.started_at).total_seconds(),"
        " 'fetch_and_stage_seconds': st['duration_seconds'].value, 'publish_seconds': pu['publish_seconds'].value}))"
    )
    result.update(bench_json([sys.executable, "-c", code], env))
    return result


def profiled_sync(env: dict, lines: int) -> dict:
    """A no-change full re-sync under cProfile (the main thread: staging, the state store, Dagster;
    the page fetching runs in a thread of its own and shows as waiting)."""
    import io
    import pstats

    with tempfile.TemporaryDirectory(prefix="bench-profile-") as directory:
        out = Path(directory) / "sync.prof"
        clock = Stopwatch()
        result, _ = run_logged(
            [sys.executable, "-m", "cProfile", "-o", str(out), "-m", "bench.measure_sync", "sync", "PRODUCT", "--mode", "full"],
            env,
        )
        seconds = clock.seconds
        text = io.StringIO()
        stats = pstats.Stats(str(out), stream=text)
        stats.sort_stats("cumulative").print_stats(lines)
        cumulative = text.getvalue()
        text = io.StringIO()
        pstats.Stats(str(out), stream=text).sort_stats("tottime").print_stats(lines)
        own = text.getvalue()
    def trim(report: str) -> list[str]:
        return [line for line in report.splitlines() if "ncalls" in line or line.strip()[:1].isdigit()]

    return {"wall": round(seconds, 2), "inside": result["seconds"], "cumulative": trim(cumulative), "tottime": trim(own)}


def measured_full_sync(env: dict) -> dict:
    before = MachineCpu.now()
    load = os.getloadavg()[0]
    result = full_sync(env)
    result["machine"] = MachineCpu.now().since(before)
    result["load_average_1m"] = [round(load, 2), round(os.getloadavg()[0], 2)]
    print(f"   {json.dumps(result)[:1500]}", flush=True)
    return result


def fetch_limit(url: str) -> dict:
    from bench.run import bench_json

    return bench_json([sys.executable, "-m", "bench.baseline", "fetch", url])


def bulk_moves(state_url: str, directory: Path) -> dict:
    """The state store's export of the merchant's rows (COPY out to CSV of the columns a diff
    reads: the first step of a full sync) and the import of the same rows in full (COPY into a
    temporary table, then the merging upsert: what a sync that changed every record writes
    back), timed on their own."""
    from sync_pipeline.domain import EntityType
    from sync_pipeline.state import StateStore
    from sync_pipeline.state.records import COLUMNS

    store = StateStore(state_url)
    path, whole = directory / "export.csv", directory / "rows.csv"
    try:
        clock = Stopwatch()
        exported = store.export_records(EntityType.PRODUCT, path)
        export_seconds = clock.seconds
        size = path.stat().st_size
        clock = Stopwatch()
        held = store.count_held(EntityType.PRODUCT)
        count_seconds = clock.seconds
        connection = pg_connect(state_url)  # every column, each group's stamp set: a write-back's file
        try:
            with connection.cursor() as cursor, whole.open("w") as out:
                cursor.execute("SET TIME ZONE 'UTC'")
                cursor.copy_expert(
                    f"COPY (SELECT {', '.join(COLUMNS)} FROM records WHERE merchant_id = 'default'"
                    " AND entity_type = 'PRODUCT') TO STDOUT WITH (FORMAT csv, HEADER true)", out,
                )
        finally:
            connection.close()
        clock = Stopwatch()
        imported = store.import_records(EntityType.PRODUCT, whole)
        import_seconds = clock.seconds
    finally:
        store.dispose()
        path.unlink(missing_ok=True)
        whole.unlink(missing_ok=True)
    return {
        "rows_exported": exported, "export_seconds": round(export_seconds, 2), "csv_mib": round(size / 1024**2, 1),
        "rows_imported": imported, "import_seconds": round(import_seconds, 2),
        "count_held": held, "count_held_seconds": round(count_seconds, 2),
    }


def explain_export(state_url: str) -> list[str]:
    """How PostgreSQL reads one merchant's rows out of the whole table."""
    connection = pg_connect(state_url)
    try:
        with connection.cursor() as cursor:
            cursor.execute(
                "EXPLAIN (ANALYZE, BUFFERS) SELECT record_id, source_hash FROM records"
                " WHERE merchant_id = 'default' AND entity_type = 'PRODUCT'"
            )
            return [row[0] for row in cursor.fetchall()]
    finally:
        connection.close()


def run(args: argparse.Namespace) -> dict:
    from bench.run import SyncEnv
    from sync_pipeline.sandbox.process import start_sandbox, stop
    from sync_pipeline.state import StateStore

    result: dict = {
        "config": {"other_records": args.other_records, "per_merchant": args.per_merchant, "products": args.products},
        "machine": machine(),
    }
    cpu_start = MachineCpu.now()
    name, state_url = create_database("bench_state_scale")
    sandbox = env = None
    try:
        result["postgres"] = pg_settings(state_url)
        clock = Stopwatch()
        StateStore(state_url).dispose()
        result["schema_seconds"] = round(clock.seconds, 2)
        print(f"== filling {args.other_records:,} records of other merchants", flush=True)
        fill_cpu = MachineCpu.now()
        result["fill"] = fill_other_merchants(state_url, args.other_records, args.per_merchant)
        result["fill"]["machine"] = MachineCpu.now().since(fill_cpu)
        result["sizes_after_fill"] = database_sizes(state_url)
        print(f"   {json.dumps(result['fill'])}", flush=True)

        print(f"== sandbox of {args.products:,} products", flush=True)
        clock = Stopwatch()
        sandbox, url = start_sandbox("--products", str(args.products), "--collections", "10", timeout=3600)
        result["sandbox_start_seconds"] = round(clock.seconds, 1)
        env = SyncEnv(url)
        env.env["SYNC_STATE_URL"] = state_url
        fetches = [fetch_limit(url)]
        print(f"   fetch-only limit: {fetches[0]}", flush=True)

        if args.duckdb_memory_limit:
            env.env["SYNC_DUCKDB_MEMORY_LIMIT"] = args.duckdb_memory_limit
        phases = {}
        for label in ("first_full_sync", "no_change_full_resync"):
            print(f"== {label}", flush=True)
            phases[label] = measured_full_sync(env.env)
            if phases[label]["exit"] != 0 and args.fallback_memory_limit and OUT_OF_MEMORY.search(phases[label]["error"]):
                # Say so, then go on with a larger DuckDB memory limit (an environment setting).
                result[f"{label}_failed"] = phases[label]
                print(f"   FAILED with DuckDB's memory limit at {phases[label]['duckdb_memory_limit']}: "
                      f"{phases[label]['error'][:300]}; again with {args.fallback_memory_limit}", flush=True)
                env.env["SYNC_DUCKDB_MEMORY_LIMIT"] = args.fallback_memory_limit
                phases[label] = measured_full_sync(env.env)
            if phases[label]["exit"] != 0:
                raise RuntimeError(f"the {label} failed: {phases[label]['error']}")
            result[f"sizes_after_{label}"] = database_sizes(state_url)
        result.update(phases)
        fetches.append(fetch_limit(url))
        print(f"   fetch-only limit: {fetches[-1]}", flush=True)
        result["fetch_only"] = fetches
        fetch_seconds = statistics.median(f["seconds"] for f in fetches)
        fastest = min(f["seconds"] for f in fetches)
        resync = phases["no_change_full_resync"]["seconds"]
        result["ratio"] = {
            "resync_seconds": resync, "fetch_seconds_median": fetch_seconds, "fetch_seconds_fastest": fastest,
            "resync_over_fetch": round(resync / fetch_seconds, 2), "resync_over_fastest_fetch": round(resync / fastest, 2),
            "target": TARGET_RATIO, "met": resync / fetch_seconds <= TARGET_RATIO,
        }
        print(f"== ratio {json.dumps(result['ratio'])}", flush=True)
        if args.profile:
            print("== one more no-change re-sync, under cProfile", flush=True)
            result["profile"] = profiled_sync(env.env, args.profile_lines)
        result["export_plan"] = explain_export(state_url)
        print("== the state store's bulk moves of the merchant's rows, apart", flush=True)
        with tempfile.TemporaryDirectory(prefix="bench-state-") as directory:
            result["bulk_moves"] = bulk_moves(state_url, Path(directory))
        print(f"   {json.dumps(result['bulk_moves'])}", flush=True)
        result["sizes_after_import"] = database_sizes(state_url)
    finally:
        if sandbox is not None:
            stop(sandbox)
        if env is not None:
            env.close()
        if not args.keep_db:
            drop_database(name)
        else:
            print(f"kept database {name}", flush=True)
    result["machine_after"] = machine()
    result["machine_busy"] = MachineCpu.now().since(cpu_start)
    return result


def gib(value: float) -> str:
    return f"{value / 1024**3:.2f} GiB" if value >= 1024**3 / 10 else f"{value / 1024**2:.1f} MiB"


def markdown(result: dict) -> str:
    cfg, fill, ratio, moves = result["config"], result["fill"], result["ratio"], result["bulk_moves"]
    first, resync = result["first_full_sync"], result["no_change_full_resync"]
    fetch = result["fetch_only"]
    verdict = "met" if ratio["met"] else "missed"
    records = result["sizes_after_first_full_sync"]["tables"]["records"]["rows"]
    lines = [
        f"# The state store at {records / 1e6:.2f} million records",
        "",
        f"`python -m bench.state_scale --other-records {cfg['other_records']} --products {cfg['products']}`. Machine: "
        f"{result['machine']['cores']} cores, {result['machine']['memory_gib']} GiB; load average "
        f"{result['machine']['load_average_1m']} at the start, {result['machine_after']['load_average_1m']} at the end; the whole "
        f"machine was {100 * result['machine_busy']['busy_share']:.0f} % busy over the run (ours and other people's work)."
        + (f" {result['note']}" if result.get("note") else "") + " "
        f"PostgreSQL {result['postgres']['server_version'].split()[0]}, shared_buffers {result['postgres']['shared_buffers']}, "
        "a fresh database. Syncs are whole `sync-pipeline sync PRODUCT --mode full` processes (bench/measure_sync.py), "
        "SQLite Dagster instance, as in bench/results/latest.md.",
        "",
        f"**Target: the no-change full re-sync of {cfg['products']:,} products within {TARGET_RATIO}× of the fetch: "
        f"{resync['seconds']:.1f} s ÷ {ratio['fetch_seconds_median']:.1f} s = {ratio['resync_over_fetch']:.2f}×: {verdict}** "
        f"({ratio['resync_over_fastest_fetch']:.2f}× the fastest fetch; the sync itself, without the process's start and "
        f"Dagster's bookkeeping, {resync['sync_seconds']:.1f} s = {resync['sync_seconds'] / ratio['fetch_seconds_median']:.2f}×).",
        "",
        "## Filling the store",
        "",
        f"{fill['rows']:,} records of {fill['merchants']:,} other merchants ({fill['per_merchant']:,} each) by INSERT … SELECT "
        f"from generate_series, without the table's indexes, which were built again afterwards: insert "
        f"{fill['insert_seconds']:.0f} s, indexes {fill['index_seconds']:.0f} s, VACUUM ANALYZE {fill['vacuum_analyze_seconds']:.0f} s, "
        f"**{fill['total_seconds']:.0f} s** in all; the records table then took {gib(result['sizes_after_fill']['tables']['records']['total_bytes'])} "
        f"({result['sizes_after_fill']['tables']['records']['total_bytes'] / max(fill['rows'], 1):.0f} bytes a record with its indexes).",
        "",
        "## The syncs",
        "",
        "| | wall s (process) | the sync itself s | fetch + stage s | publish s | fetched | published | peak RSS MiB | machine busy |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for label, row in (("first full sync", first), ("no-change full re-sync", resync)):
        lines.append(
            f"| {label} | {row['seconds']:.1f} | {row['sync_seconds']:.1f} | {row['fetch_and_stage_seconds']:.1f} | "
            f"{row['publish_seconds']:.1f} | {row['fetched']:,} | {row['published']:,} | {row['peak_rss_mib']:.0f} | "
            f"{100 * row['machine']['busy_share']:.0f} % |"
        )
    for label, key in (("first full sync", "first_full_sync_failed"), ("no-change full re-sync", "no_change_full_resync_failed")):
        failed = result.get(key)
        if failed:
            lines.append(
                f"| {label} with DuckDB's memory limit at {failed['duckdb_memory_limit']}: **failed** ({failed['error'][:160]}) "
                f"| {failed['seconds']:.1f} | | | | | | {failed['peak_rss_mib']:.0f} | |"
            )
    lines += [
        "| fetch only (bench/baseline.py), " + " and ".join(f"{f['seconds']:.1f}" for f in fetch) + " s | "
        f"{ratio['fetch_seconds_median']:.1f} | | | | {fetch[0]['records']:,} | | {max(f['peak_rss_mib'] for f in fetch):.0f} | |",
        "",
        f"DuckDB's memory limit (SYNC_DUCKDB_MEMORY_LIMIT) for the measured syncs: {resync['duckdb_memory_limit']}. "
        f"The sandbox of {cfg['products']:,} products took {result['sandbox_start_seconds']:.0f} s to generate (not in any figure).",
        "",
        "Where the no-change re-sync's time went, against the fetch alone:",
        "",
        "| part | s | × fetch |",
        "|---|---:|---:|",
        *[
            f"| {part} | {seconds:.1f} | {seconds / ratio['fetch_seconds_median']:.2f} |"
            for part, seconds in (
                ("process start, imports, Dagster's run bookkeeping (wall − the sync itself)", resync["seconds"] - resync["sync_seconds"]),
                ("fetch + stage (the state store's export and DuckDB load, the listing, canonical JSON and hashing, staging, "
                 "deletion candidates, the write-back)", resync["fetch_and_stage_seconds"]),
                ("… of which the state store's export of the merchant's rows (measured apart)", moves["export_seconds"]),
                ("publish (nothing but the owed refusals)", resync["publish_seconds"]),
                ("the rest of the step (count of held records, checks, closing the sync)",
                 resync["sync_seconds"] - resync["fetch_and_stage_seconds"] - resync["publish_seconds"]),
                ("… of which the count of held records in the state store (measured apart)", moves["count_held_seconds"]),
                ("the whole re-sync", resync["seconds"]),
            )
        ],
        "",
        f"## The state store's bulk moves of {moves['rows_exported']:,} rows, apart",
        "",
        "| move | s | rows/s |",
        "|---|---:|---:|",
        f"| export (COPY out to CSV, {moves['csv_mib']:.0f} MiB: a full sync's first step) | {moves['export_seconds']:.2f} | "
        f"{moves['rows_exported'] / max(moves['export_seconds'], 1e-9):,.0f} |",
        f"| import (COPY into a temporary table, then upsert: what a sync that changed every record writes back) | "
        f"{moves['import_seconds']:.2f} | {moves['rows_imported'] / max(moves['import_seconds'], 1e-9):,.0f} |",
        f"| count of held records (each sync's `num_records`) | {moves['count_held_seconds']:.2f} | |",
        "",
        "How PostgreSQL finds one merchant's rows among the others (`EXPLAIN ANALYZE` of the export's query):",
        "",
        "```",
        *result["export_plan"],
        "```",
        "",
        "## Sizes",
        "",
        "| after | database | records: rows / size (indexes) | syncs | batches | rejections |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for label, key in (("the fill", "sizes_after_fill"), ("the first full sync", "sizes_after_first_full_sync"),
                       ("the re-sync", "sizes_after_no_change_full_resync"), ("the import apart", "sizes_after_import")):
        s = result[key]
        t = s["tables"]
        lines.append(
            f"| {label} | {gib(s['database_bytes'])} | {t['records']['rows']:,} / {gib(t['records']['total_bytes'])} "
            f"({gib(t['records']['index_bytes'])}) | " + " | ".join(
                f"{t[n]['rows']:,} / {gib(t[n]['total_bytes'])}" for n in ("syncs", "batches", "rejections")
            ) + " |"
        )
    first_growth = (result["sizes_after_first_full_sync"]["tables"]["records"]["total_bytes"]
                    - result["sizes_after_fill"]["tables"]["records"]["total_bytes"])
    synced = records - fill["rows"]
    after_first = result["sizes_after_first_full_sync"]["tables"]["records"]
    lines += [
        "",
        f"The first full sync grew the records table by {gib(first_growth)} for {synced:,} records "
        f"({first_growth / max(synced, 1):.0f} bytes a record, against "
        f"{result['sizes_after_fill']['tables']['records']['total_bytes'] / max(fill['rows'], 1):.0f} for the filled ones), "
        f"and left {after_first['dead_rows']:,} dead rows ({after_first['updates']:,} updates, {after_first['hot_updates']:,} "
        "of them HOT): "
        + ("each new record was written once, after the gateway's answer was folded in (the saves while publishing "
           "write only the records the gateway has answered for). " if not after_first["updates"] else
           "records written before the gateway answered were written again after, and the table carries a dead copy "
           "of each until autovacuum reclaims it. ")
        + "The import apart rewrites every row of the merchant once more (an upsert), hence the last row.",
    ]
    if result.get("profile"):
        prof = result["profile"]
        lines += [
            "",
            f"## Where a no-change re-sync's time goes (cProfile, main thread; {prof['wall']:.1f} s under the profiler)",
            "",
            "```",
            *prof["cumulative"],
            "```",
            "",
            "```",
            *prof["tottime"],
            "```",
        ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--other-records", type=int, default=9_000_000, help="records of other merchants, filled in SQL")
    parser.add_argument("--per-merchant", type=int, default=2_000, help="records per other merchant")
    parser.add_argument("--products", type=int, default=1_000_000, help="products of the merchant `default` in the sandbox")
    parser.add_argument("--name", default="state_scale", help="results go to bench/results/NAME.{json,md}")
    parser.add_argument("--keep-db", action="store_true", help="keep the PostgreSQL database (its name is printed)")
    parser.add_argument("--duckdb-memory-limit", help="SYNC_DUCKDB_MEMORY_LIMIT for the syncs (default: the product's default)")
    parser.add_argument("--fallback-memory-limit", default="256MB",
                        help="when a sync fails for DuckDB's memory limit, report it and run it again with this limit ('' : stop)")
    parser.add_argument("--note", help="a sentence for the report, e.g. what else ran on the machine")
    parser.add_argument("--profile", action="store_true", help="also run one more re-sync under cProfile and keep its top lines")
    parser.add_argument("--profile-lines", type=int, default=30)
    args = parser.parse_args()
    result = run(args)
    if args.note:
        result["note"] = args.note
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{args.name}.json").write_text(json.dumps(result, indent=1, default=str) + "\n")
    table = markdown(result)
    (RESULTS / f"{args.name}.md").write_text(table)
    print(table)


if __name__ == "__main__":
    main()

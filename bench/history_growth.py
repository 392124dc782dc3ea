"""How the state store and the data directory grow: a full sync, then N latest syncs each after
1 % of the products changed, sizes every 10 syncs; then a prune. Writes
bench/results/history_growth.{json,md}.

    python -m bench.history_growth [--products 5000] [--syncs 100]
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import tempfile
import time
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
TABLES = ("syncs", "batches", "records", "record_events", "rejections")


def directory_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.exists() else 0


def measure(data: Path, state_db: Path, syncs_done: int) -> dict:
    with sqlite3.connect(state_db) as db:
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        rows = {table: db.execute(f"SELECT count(*) FROM {table}").fetchone()[0] for table in TABLES}
    state_bytes = sum(p.stat().st_size for p in data.glob("state.db*"))
    return {
        "syncs": syncs_done,
        "state_store_bytes": state_bytes,
        "data_dir_bytes_without_state_store": directory_bytes(data) - state_bytes,
        "scratch_bytes": directory_bytes(data / "scratch"),
        "rows": rows,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--products", type=int, default=5000)
    parser.add_argument("--syncs", type=int, default=100)
    args = parser.parse_args()

    from sync_pipeline.sandbox.process import start_sandbox, stop

    tmp = Path(tempfile.mkdtemp(prefix="history-growth-"))
    (tmp / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    process, url = start_sandbox("--products", str(args.products), "--collections", "10")
    os.environ.update(
        SYNC_DATA_DIR=str(tmp / "data"), DAGSTER_HOME=str(tmp), PRODUCT_SERVICE_URL=url, GATEWAY_URL=url,
        SYNC_RECONCILE_DAY="off",
    )
    os.environ.pop("SYNC_STATE_URL", None)
    from sync_pipeline.cli import main as cli
    from sync_pipeline.settings import state_url
    from sync_pipeline.state import open_state_store

    data = tmp / "data"
    points, changed_each = [], max(1, args.products // 100)
    try:
        started = time.perf_counter()
        assert cli(["sync", "PRODUCT", "--mode", "full"]) == 0
        points.append(measure(data, data / "state.db", 1))
        for number in range(1, args.syncs + 1):
            requests.post(f"{url}/_admin/source/products/update", json={"count": changed_each}, timeout=30).raise_for_status()
            assert cli(["sync", "PRODUCT"]) == 0
            if number % 10 == 0:
                points.append(measure(data, data / "state.db", number + 1))
        seconds = time.perf_counter() - started
        pruned = open_state_store(state_url()).prune_history(0)  # as if everything had aged out
        with sqlite3.connect(data / "state.db") as db:
            db.execute("VACUUM")
        after_prune = measure(data, data / "state.db", args.syncs + 1)
    finally:
        stop(process)
    result = {"products": args.products, "syncs": args.syncs + 1, "changed_per_sync": changed_each,
              "seconds": round(seconds, 1), "points": points, "pruned": pruned, "after_prune": after_prune}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "history_growth.json").write_text(json.dumps(result, indent=2))
    first, last = points[0], points[-1]
    per_sync = (last["state_store_bytes"] - first["state_store_bytes"]) / max(1, last["syncs"] - first["syncs"])
    lines = [
        f"# History growth: {args.products:,} products, a full sync then {args.syncs} latest syncs, {changed_each} changed before each",
        "",
        f"`python -m bench.history_growth --products {args.products} --syncs {args.syncs}` ({seconds:.0f} s). SQLite state"
        " store under the data directory (the default).",
        "",
        "| syncs | state store KiB | data dir without it KiB | scratch KiB | syncs rows | batches | records | record events | rejections |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for point in [*points, {**after_prune, "syncs": "after prune"}]:
        rows = point["rows"]
        lines.append(
            f"| {point['syncs']} | {point['state_store_bytes'] / 1024:,.0f} | {point['data_dir_bytes_without_state_store'] / 1024:,.0f}"
            f" | {point['scratch_bytes'] / 1024:,.0f} | {rows['syncs']} | {rows['batches']} | {rows['records']:,}"
            f" | {rows['record_events']:,} | {rows['rejections']} |"
        )
    lines += [
        "",
        f"The state store grows by about {per_sync / 1024:,.1f} KiB a sync (history and record trails); the data"
        " directory holds nothing between syncs (each sync's DuckDB scratch is deleted when it ends). A prune of"
        f" everything older than now removed {pruned} and kept each record's current state and the last successful"
        " sync.",
    ]
    (RESULTS / "history_growth.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()

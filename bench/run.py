"""make bench: the sync against the limit of moving the records, against dlt, in memory, and
the Sync API under load. Writes bench/results/latest.json, latest.md and latest.png.

    python -m bench.run [--sizes 10000,100000,1000000] [--api-seconds 30]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import requests

from bench.infra import process_cpu_seconds
from sync_pipeline.sandbox.process import free_port, start_sandbox, stop
from sync_pipeline.settings import SANDBOX_PRODUCT_TOKEN, usable_cores

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
DLT_PYTHON = ROOT / ".venv-dlt" / "bin" / "python"
BUDGET_FROM = 100_000  # products: the smallest catalogue the CPU budget is given for (see `cpu_budget`)


def bench_json(command: list[str], env: dict | None = None) -> dict:
    done = subprocess.run(command, env=env, capture_output=True, text=True, cwd=ROOT)
    for line in done.stdout.splitlines():
        if line.startswith("BENCH "):
            result = json.loads(line[6:])
            if result.get("exit"):  # what the command said, for the error that follows
                result["output"] = (done.stdout[-1500:] + done.stderr[-1500:]).strip()
            return result
    raise RuntimeError(f"{command[:4]} failed ({done.returncode}): {done.stdout[-1500:]} {done.stderr[-3000:]}")


def with_sandbox_cpu(sandbox: subprocess.Popen, measure: Callable[[], dict]) -> dict:
    """`measure()`'s figures, with the CPU the sandbox spent meanwhile (serving pages, taking and
    processing batches): on a machine it shares, the limit and the sync pay for it too."""
    before = process_cpu_seconds(sandbox.pid)
    result = measure()
    result["sandbox_cpu_seconds"] = round(process_cpu_seconds(sandbox.pid) - before, 2)
    return result


class SyncEnv:
    """A fresh data dir and Dagster instance pointed at one sandbox."""

    def __init__(self, url: str):
        self.tmp = Path(tempfile.mkdtemp(prefix="sync-bench-"))
        home = self.tmp / "dagster"
        home.mkdir()
        (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
        self.env = {
            **os.environ, "SYNC_DATA_DIR": str(self.tmp / "data"), "DAGSTER_HOME": str(home),
            "PRODUCT_SERVICE_URL": url, "GATEWAY_URL": url,
        }
        self.env.pop("SYNC_STATE_URL", None)

    def sync(self, *args: str) -> dict:
        result = bench_json([sys.executable, "-m", "bench.measure_sync", "sync", "PRODUCT", *args], self.env)
        if result["exit"] != 0:
            raise RuntimeError(f"sync {args} exited {result['exit']}: {result.get('output', '')}")
        result.update(self.last_sync())
        return result

    def last_sync(self) -> dict:
        code = (
            "import json; from sync_pipeline.state import StateStore; from sync_pipeline.settings import state_url;"
            "from sync_pipeline.domain import EntityType; import dagster as dg;"
            "s = StateStore(state_url()).history(EntityType.PRODUCT, 1)[0];"
            "i = dg.DagsterInstance.get();"
            "m = i.get_latest_materialization_event(dg.AssetKey('products_staged')).asset_materialization.metadata;"
            "print('BENCH ' + json.dumps({'published': s.published, 'fetched': s.fetched, 'status': s.status.text,"
            " 'sync_seconds': (s.finished_at - s.started_at).total_seconds(),"
            " 'fetch_and_stage_seconds': m['duration_seconds'].value}))"
        )
        return bench_json([sys.executable, "-c", code], self.env)

    def close(self) -> None:
        shutil.rmtree(self.tmp, ignore_errors=True)


def sandbox_ceiling(url: str) -> dict:
    """How fast the sandbox serves the catalogue when the client does nothing with it."""
    session = requests.Session()
    session.headers["Authorization"] = f"Bearer {SANDBOX_PRODUCT_TOKEN}"
    started, records, cursor = time.perf_counter(), 0, None
    while True:
        response = session.get(f"{url}/products", params={"limit": 1000, **({"cursor": cursor} if cursor else {})})
        body = response.content
        records += body.count(b'"updatedAt"')
        tail = body[body.rfind(b'"nextCursor":') + 13:]
        cursor = None if tail.startswith(b"null") else tail.split(b'"')[1].decode()
        if cursor is None:
            break
    seconds = time.perf_counter() - started
    return {"records": records, "seconds": round(seconds, 3), "records_per_second": round(records / seconds)}


def measure_size(n: int, dlt_max: int, gateway: str, first_sync_only: bool = False) -> dict:
    """Every figure at `n` products against a gateway that takes `gateway` seconds (or a range)
    over each batch; with `first_sync_only`, the limit and a full first sync only."""
    print(f"== {n:,} products, gateway batches take {gateway} s", flush=True)
    sandbox, url = start_sandbox("--products", str(n), "--collections", "10", "--batch-seconds", gateway, timeout=1800)
    row: dict = {"products": n, "gateway": gateway, "cores": usable_cores()}
    try:
        row["sandbox_ceiling"] = sandbox_ceiling(url)
        for what, key in (("fetch", "baseline_fetch"), ("post", "baseline_fetch_post")):
            command = [sys.executable, "-m", "bench.baseline", what, url]
            row[key] = with_sandbox_cpu(sandbox, lambda command=command: bench_json(command))
        if DLT_PYTHON.exists() and n <= dlt_max and not first_sync_only:
            row["dlt_fetch_stage"] = bench_json([str(DLT_PYTHON), str(ROOT / "bench" / "dlt_peer.py"), url, SANDBOX_PRODUCT_TOKEN])
        env = SyncEnv(url)
        try:
            row["full_first_sync"] = with_sandbox_cpu(sandbox, lambda: env.sync("--mode", "full"))
            if first_sync_only:
                print(json.dumps(row, indent=1), flush=True)
                return row
            row["full_resync_unchanged"] = with_sandbox_cpu(sandbox, lambda: env.sync("--mode", "full"))
            changed = max(1, n // 100)
            requests.post(f"{url}/_admin/source/products/update", json={"count": changed}, timeout=600).raise_for_status()
            row["latest_after_1pct"] = with_sandbox_cpu(sandbox, env.sync)
            row["latest_after_1pct"]["changed"] = changed
        finally:
            env.close()
    finally:
        stop(sandbox)
    print(json.dumps(row, indent=1), flush=True)
    return row


def api_under_load(n: int, seconds: float, rate: int = 200) -> dict:
    """GET /sync/PRODUCT at `rate` per second for `seconds`, while syncs run back to back."""
    sandbox, url = start_sandbox("--products", str(n), "--collections", "10", timeout=600)
    env = SyncEnv(url)
    env.sync("--mode", "full")  # so GET /sync has something to say
    port = free_port()
    api = subprocess.Popen(
        [sys.executable, "-m", "sync_pipeline.cli", "api", "--port", str(port)],
        env={**env.env, "SYNC_API_TOKEN": "bench"}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}/product-gateway/v1"
    for _ in range(100):
        try:
            requests.get(f"{base}/healthz", timeout=1)
            break
        except requests.ConnectionError:
            time.sleep(0.1)
    stop_syncs = threading.Event()
    syncs_run = [0]

    def keep_syncing() -> None:
        while not stop_syncs.is_set():
            env.sync("--mode", "full")
            syncs_run[0] += 1

    syncer = threading.Thread(target=keep_syncing)
    syncer.start()
    time.sleep(2)
    latencies, errors = [], [0]
    local = threading.local()
    total = int(seconds * rate)
    started = time.perf_counter()

    def one(i: int) -> None:
        delay = started + i / rate - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        session = getattr(local, "session", None) or requests.Session()
        local.session = session
        t = time.perf_counter()
        response = session.get(f"{base}/sync/PRODUCT", headers={"Authorization": "Bearer bench"}, timeout=10)
        latencies.append(time.perf_counter() - t)
        if response.status_code != 200:
            errors[0] += 1

    with ThreadPoolExecutor(32) as pool:
        list(pool.map(one, range(total)))
    elapsed = time.perf_counter() - started
    stop_syncs.set()
    syncer.join()
    stop(api)
    stop(sandbox)
    env.close()
    latencies.sort()
    return {
        "products": n, "requests": total, "seconds": round(elapsed, 1), "achieved_rps": round(total / elapsed),
        "p50_ms": round(latencies[len(latencies) // 2] * 1000, 2), "p99_ms": round(latencies[int(len(latencies) * 0.99)] * 1000, 2),
        "errors": errors[0], "syncs_during_load": syncs_run[0],
    }


def markdown(rows: list[dict], api: dict | None) -> str:
    lines = [
        "| products | limit: fetch s | limit: fetch+post s | full sync s (× limit) | fetch+stage s | dlt fetch+stage s (dlt ÷ ours) | re-sync unchanged s (× fetch) | latest after 1 % s (% of full) | peak RSS full / re-sync / latest MiB | dlt peak MiB | sandbox ceiling rec/s |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in (r for r in rows if "full_resync_unchanged" in r):
        full, resync, latest = r["full_first_sync"], r["full_resync_unchanged"], r["latest_after_1pct"]
        fetch, limit = r["baseline_fetch"]["seconds"], r["baseline_fetch_post"]["seconds"]
        dlt = r.get("dlt_fetch_stage")
        dlt_cells = (f"{dlt['seconds']:.1f} ({dlt['seconds'] / full['fetch_and_stage_seconds']:.1f}×)", f"{dlt['peak_rss_mib']:.0f}") if dlt else ("-", "-")
        lines.append(
            f"| {r['products']:,} | {fetch:.1f} | {limit:.1f} | {full['seconds']:.1f} ({full['seconds'] / limit:.2f}×) "
            f"| {full['fetch_and_stage_seconds']:.1f} | {dlt_cells[0]} | {resync['seconds']:.1f} ({resync['seconds'] / fetch:.2f}×, published {resync['published']}) "
            f"| {latest['seconds']:.1f} ({100 * latest['seconds'] / full['seconds']:.0f} %) "
            f"| {full['peak_rss_mib']:.0f} / {resync['peak_rss_mib']:.0f} / {latest['peak_rss_mib']:.0f} | {dlt_cells[1]} "
            f"| {r['sandbox_ceiling']['records_per_second']:,} |"
        )
    lines.append("")
    lines.append(f"Gateway batches took {rows[0]['gateway']} s each (the sandbox's `--batch-seconds`).")
    lines += ["", "| gateway batch s | products | limit: fetch s | limit: fetch+post s | full first sync s | × limit | records/s |",
              "|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        full, limit = r["full_first_sync"], r["baseline_fetch_post"]["seconds"]
        lines.append(f"| {r['gateway']} | {r['products']:,} | {r['baseline_fetch']['seconds']:.1f} | {limit:.1f} "
                     f"| {full['seconds']:.1f} | {full['seconds'] / limit:.2f}× | {r['products'] / full['seconds']:,.0f} |")
    lines += cpu_budget(rows)
    lines.append("")
    lines.append("Sync times are whole `sync-pipeline sync PRODUCT` processes (Python and Dagster start-up, the run, "
                 "its records in the instance); the limit is the same HTTP stack moving the same records with nothing else.")
    if api:
        lines.append("")
        lines.append(
            f"Sync API under load: `GET /sync/PRODUCT` at {api['achieved_rps']} req/s for {api['seconds']} s while "
            f"{api['syncs_during_load']} full syncs of {api['products']:,} products ran: p50 {api['p50_ms']} ms, "
            f"p99 {api['p99_ms']} ms, {api['errors']} errors."
        )
    return "\n".join(lines) + "\n"


def cpu_budget(rows: list[dict]) -> list[str]:
    """The core-seconds of the limit and of each full first sync, its own with its children's
    and the sandbox's meanwhile, and the wall time those allow at least on this machine's cores
    (all of them busy throughout): the floor that no overlap of a sync's parts gets under. From
    BUDGET_FROM products: below, the processes' start-up, which their seconds leave out, is most
    of their CPU."""
    measured = ("cpu_seconds", "sandbox_cpu_seconds")
    rows = [
        r for r in rows if r["products"] >= BUDGET_FROM and "cores" in r
        and all(key in r[run] for key in measured for run in ("baseline_fetch_post", "full_first_sync"))
    ]
    if not rows:
        return []
    lines = [
        "",
        "| gateway batch s | products | cores | limit: client + sandbox core-s | full first sync: sync + sandbox core-s "
        "| the sync's floor s (core-s ÷ cores) | 1.5 × limit s | full first sync s |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        limit, full, cores = r["baseline_fetch_post"], r["full_first_sync"], r["cores"]
        spent = full["cpu_seconds"] + full["sandbox_cpu_seconds"]
        lines.append(
            f"| {r['gateway']} | {r['products']:,} | {cores:.3g} "
            f"| {limit['cpu_seconds']:.1f} + {limit['sandbox_cpu_seconds']:.1f} "
            f"| {full['cpu_seconds']:.1f} + {full['sandbox_cpu_seconds']:.1f} = {spent:.1f} "
            f"| {spent / cores:.1f} | {1.5 * limit['seconds']:.1f} | {full['seconds']:.1f} |"
        )
    return lines


def plot(rows: list[dict], path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no plot", flush=True)
        return
    rows = [r for r in rows if "full_resync_unchanged" in r]
    sizes = [r["products"] for r in rows]
    fig, (speed, memory) = plt.subplots(1, 2, figsize=(11, 4))
    series = {
        "limit (fetch+post)": [r["products"] / r["baseline_fetch_post"]["seconds"] for r in rows],
        "full sync": [r["products"] / r["full_first_sync"]["seconds"] for r in rows],
        "our fetch+stage": [r["products"] / r["full_first_sync"]["fetch_and_stage_seconds"] for r in rows],
    }
    with_dlt = [r for r in rows if "dlt_fetch_stage" in r]
    if with_dlt:
        speed.plot([r["products"] for r in with_dlt], [r["products"] / r["dlt_fetch_stage"]["seconds"] for r in with_dlt],
                   marker="o", label="dlt fetch+stage")
    for label, values in series.items():
        speed.plot(sizes, values, marker="o", label=label)
    speed.set(xscale="log", xlabel="products", ylabel="records / second", title="Throughput")
    speed.legend()
    for key, label in (("full_first_sync", "full sync"), ("full_resync_unchanged", "re-sync"), ("latest_after_1pct", "latest 1 %")):
        memory.plot(sizes, [r[key]["peak_rss_mib"] for r in rows], marker="o", label=label)
    if with_dlt:
        memory.plot([r["products"] for r in with_dlt], [r["dlt_fetch_stage"]["peak_rss_mib"] for r in with_dlt], marker="o", label="dlt")
    memory.set(xscale="log", xlabel="products", ylabel="peak RSS (MiB)", title="Peak memory of the sync process")
    memory.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", default="10000,100000,1000000")
    parser.add_argument("--api-seconds", type=float, default=30)
    parser.add_argument("--api-products", type=int, default=100_000)
    parser.add_argument("--name", default="latest", help="results go to bench/results/NAME.{json,md,png}")
    parser.add_argument("--dlt-max", type=int, default=100_000,
                        help="largest catalogue to run dlt on (it took 4.7 GB at 100k here)")
    parser.add_argument("--gateways", default="0,0.05-0.2",
                        help="how long the sandbox's gateway takes over each batch (--batch-seconds): every figure"
                             " against the first, the limit and a full first sync against the others")
    args = parser.parse_args()
    first, *others = args.gateways.split(",")
    sizes = [int(n) for n in args.sizes.split(",")]
    rows = [measure_size(n, args.dlt_max, first) for n in sizes]
    rows += [measure_size(n, args.dlt_max, other, first_sync_only=True) for other in others for n in sizes]
    api = api_under_load(args.api_products, args.api_seconds) if args.api_seconds > 0 else None
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{args.name}.json").write_text(json.dumps({"sizes": rows, "api_under_load": api}, indent=2) + "\n")
    table = markdown(rows, api)
    (RESULTS / f"{args.name}.md").write_text(table)
    plot(rows, RESULTS / f"{args.name}.png")
    print(table)


if __name__ == "__main__":
    main()

"""make bench: one daily cycle of many merchants, and what 10,000 merchants would need on Kubernetes.

The sandbox plays N merchants of P products and C collections; they are registered in a state
store on PostgreSQL (a fresh database, dropped afterwards). A cycle is every merchant's latest
sync of both types (a first-ever latest sync is a full one), carried out the way a production
worker pool would: W long-lived processes, each taking syncs from one queue and running them one
after another through Dagster (`execute_in_process` on a shared instance), each with an empty
SYNC_DATA_DIR of its own. Measured:

- cycle 1 (first syncs, full) and cycle 2 (nothing changed): wall, syncs per minute, per-sync
  wall and CPU, and the CPU of the sandbox, the database backends and the whole machine;
- one no-change sync in a warm worker running alone, and as a whole `sync-pipeline sync`
  process (what a pod per run costs): wall, user+sys CPU, peak RSS;
- the state store: database and table sizes, rows;

then projects 10,000 merchants on Kubernetes from these, with the arithmetic written out.
Writes bench/results/NAME.json and NAME.md (NAME: merchants).

    python -m bench.merchants [--merchants 200] [--products 2000] [--collections 50] [--workers 4]
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import os
import queue
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from bench.infra import (
    MachineCpu,
    Stopwatch,
    bytes_per_row_at_scale,
    compact_bytes,
    create_database,
    dagster_sizes,
    database_sizes,
    drop_database,
    machine,
    pg_backends_cpu,
    pg_cluster_cpu,
    pg_settings,
    process_cpu_seconds,
)

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
SECRET_KEY = "bench-secret-key-" + "0123456789abcdef" * 2
LAUNCH_SECONDS_PER_RUN = 0.25  # Dagster's run submission, measured elsewhere (SQLite and PostgreSQL alike)


def merchant_id(number: int) -> str:
    return f"m{number:04d}"  # as the sandbox numbers them (sandbox.merchants.numbered_merchant_id)


# --- the worker pool -----------------------------------------------------------------------
def worker_main(index: int, env: dict, log_path: str, tasks, results) -> None:
    """One long-lived worker: Dagster and the definitions loaded once, then syncs one after
    another from `tasks`, each reported on `results` with its wall and CPU time."""
    log = open(log_path, "ab", buffering=0)
    os.dup2(log.fileno(), 1)
    os.dup2(log.fileno(), 2)
    os.environ.update(env)
    started, cpu_started = time.perf_counter(), time.process_time()
    import dagster as dg

    from sync_pipeline.defs import build_defs
    from sync_pipeline.defs.runs import run_tags_for
    from sync_pipeline.defs.sensors import job_name
    from sync_pipeline.domain import EntityType, SyncMode, SyncStatus
    from sync_pipeline.settings import state_url
    from sync_pipeline.state import open_state_store

    defs = build_defs()
    jobs = {entity: defs.resolve_job_def(job_name(entity)) for entity in EntityType}
    instance = dg.DagsterInstance.get()
    state = open_state_store(state_url())
    run_config = {"loggers": {"console": {"config": {"log_level": "INFO"}}}}
    results.put({"ready": index, "startup_seconds": time.perf_counter() - started,
                 "startup_cpu_seconds": time.process_time() - cpu_started})
    while True:
        task = tasks.get()
        if task is None:
            break
        cycle, merchant, entity_name = task
        entity = EntityType(entity_name)
        wall, cpu = time.perf_counter(), time.process_time()
        error = None
        try:
            sync = state.enqueue_sync(entity, SyncMode.LATEST, origin="cli", merchant=merchant)
            outcome = jobs[entity].execute_in_process(
                instance=instance, partition_key=merchant, tags=run_tags_for(sync), run_config=run_config,
                raise_on_error=False,
            )
            final = state.get_sync(sync.sync_id)
            if final.status.is_active:
                final = state.finish_sync(sync.sync_id, SyncStatus.FAILED, error_message=f"run {outcome.run_id} did not close it")
        except Exception as failure:  # reported, so the cycle goes on and the report counts it
            final, error = None, f"{type(failure).__name__}: {failure}"
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        row = {
            "cycle": cycle, "worker": index, "merchant": merchant, "entity": entity_name,
            "wall": round(wall, 4), "cpu": round(cpu, 4),
            "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        }
        if final is not None:
            row.update(
                status=final.status.code, mode=final.mode.value, fetched=final.fetched, published=final.published,
                failed=final.failed, rejected=final.rejected, batches=final.batches,
                sync_seconds=round((final.finished_at - final.started_at).total_seconds(), 4)
                if final.started_at and final.finished_at else None,
                error=None if final.status.is_success else final.error_message,
            )
        else:
            row.update(status=None, error=error)
        results.put(row)
    state.dispose()
    instance.dispose()


class Pool:
    """W worker processes (spawned, so nothing of this process leaks into them) on one task queue."""

    def __init__(self, workers: int, base_env: dict, tmp: Path):
        context = multiprocessing.get_context("spawn")
        self.tasks, self.results = context.Queue(), context.Queue()
        self.processes = []
        for index in range(workers):
            data = tmp / f"worker-{index}"
            data.mkdir()
            env = {**base_env, "SYNC_DATA_DIR": str(data)}
            process = context.Process(
                target=worker_main, args=(index, env, str(tmp / f"worker-{index}.log"), self.tasks, self.results),
                daemon=True,
            )
            process.start()
            self.processes.append(process)
        self.startup = [self._get(600) for _ in range(workers)]

    def _get(self, timeout: float) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            try:
                return self.results.get(timeout=5)
            except queue.Empty:
                dead = [p.pid for p in self.processes if not p.is_alive()]
                if dead:
                    raise RuntimeError(f"worker processes {dead} died; see their logs") from None
                if time.monotonic() > deadline:
                    raise RuntimeError("no result from the workers in time") from None

    def run(self, cycle: str, work: list[tuple[str, str]], *, one_at_a_time: bool = False, timeout: float = 1800) -> list[dict]:
        if one_at_a_time:
            rows = []
            for merchant, entity in work:
                self.tasks.put((cycle, merchant, entity))
                rows.append(self._get(timeout))
            return rows
        for merchant, entity in work:
            self.tasks.put((cycle, merchant, entity))
        return [self._get(timeout) for _ in work]

    def pids(self) -> list[int]:
        return [p.pid for p in self.processes]

    def close(self) -> None:
        for _ in self.processes:
            self.tasks.put(None)
        for process in self.processes:
            process.join(60)
            if process.is_alive():
                process.kill()


# --- measuring ---------------------------------------------------------------------------
def summarize(rows: list[dict]) -> dict:
    def stats(values: list[float]) -> dict:
        values = sorted(values)
        if not values:
            return {}
        return {
            "median": round(statistics.median(values), 3), "mean": round(statistics.fmean(values), 3),
            "p90": round(values[min(len(values) - 1, int(len(values) * 0.9))], 3), "max": round(values[-1], 3),
        }

    out: dict = {"syncs": len(rows), "ok": sum(1 for r in rows if r.get("status") in (2000, 2100)),
                 "failed": [r for r in rows if r.get("status") not in (2000, 2100)][:5]}
    for entity in ("PRODUCT", "COLLECTION"):
        mine = [r for r in rows if r["entity"] == entity]
        if not mine:
            continue
        out[entity] = {
            "syncs": len(mine),
            "modes": sorted({r.get("mode") or "?" for r in mine}),
            "wall": stats([r["wall"] for r in mine]),
            "cpu": stats([r["cpu"] for r in mine]),
            "in_asset": stats([r["sync_seconds"] for r in mine if r.get("sync_seconds") is not None]),
            "fetched": sum(r.get("fetched") or 0 for r in mine),
            "published": sum(r.get("published") or 0 for r in mine),
            "refused": sum(r.get("failed") or 0 for r in mine),
            "batches": sum(r.get("batches") or 0 for r in mine),
        }
    out["cpu_seconds_workers"] = round(sum(r["cpu"] for r in rows), 1)
    out["worker_peak_rss_mib"] = max((r["peak_rss_mib"] for r in rows), default=0)
    return out


def timed_cycle(pool: Pool, name: str, work: list, sandbox_pid: int, databases: list[str], **how) -> dict:
    machine_before, sandbox_before, pg_before = MachineCpu.now(), process_cpu_seconds(sandbox_pid), pg_backends_cpu(databases)
    cluster_before = pg_cluster_cpu()
    load_before = os.getloadavg()[0]
    loads: list[float] = []
    sampling = threading.Event()

    def sample_load() -> None:
        while not sampling.wait(5):
            loads.append(os.getloadavg()[0])

    sampler = threading.Thread(target=sample_load, daemon=True)
    sampler.start()
    clock = Stopwatch()
    try:
        rows = pool.run(name, work, **how)
    finally:
        sampling.set()
    wall = clock.seconds
    result = summarize(rows)
    result.update(
        wall_seconds=round(wall, 2),
        syncs_per_minute=round(len(rows) / wall * 60, 1),
        cpu_seconds_sandbox=round(process_cpu_seconds(sandbox_pid) - sandbox_before, 1),
        cpu_seconds_postgres=round(pg_backends_cpu(databases) - pg_before, 1),
        cpu_seconds_postgres_server=round(pg_cluster_cpu() - cluster_before, 1) if cluster_before is not None else None,
        machine=MachineCpu.now().since(machine_before),
        load_average_1m=[round(load_before, 2), round(os.getloadavg()[0], 2)],
        load_average_1m_max=round(max(loads, default=load_before), 2),
    )
    print(f"== {name}: {len(rows)} syncs in {wall:.1f}s ({result['syncs_per_minute']}/min), "
          f"{result['ok']} ok; machine busy {100 * result['machine']['busy_share']:.0f}%", flush=True)
    return {"summary": result, "rows": rows}


def whole_process_sync(env: dict, tmp: Path, merchant: str, entity: str, repeats: int) -> dict:
    """`sync-pipeline sync ENTITY --merchant M` as a process of its own, `repeats` times: wall
    from outside (interpreter start included), user+sys CPU of the child, peak RSS; and how
    much of it was the sync itself (from the state store) and the interpreter's start."""
    runs = []
    for number in range(repeats):
        data = tmp / f"process-{number}"
        data.mkdir()
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        clock = Stopwatch()
        done = subprocess.run(
            [sys.executable, "-m", "bench.measure_sync", "sync", entity, "--merchant", merchant],
            env={**env, "SYNC_DATA_DIR": str(data)}, capture_output=True, text=True, cwd=ROOT,
        )
        wall = clock.seconds
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        line = next((x for x in done.stdout.splitlines() if x.startswith("BENCH ")), None)
        if line is None or done.returncode != 0:
            raise RuntimeError(f"the sync process failed ({done.returncode}): {done.stdout[-1500:]} {done.stderr[-2000:]}")
        inner = json.loads(line[6:])
        summary = next((x for x in done.stdout.splitlines() if x.startswith(f"{entity}: 2")), "")
        in_sync = re.search(r"\(([0-9.]+)s\)$", summary)
        runs.append({
            "wall": round(wall, 3), "inside_main": inner["seconds"], "peak_rss_mib": inner["peak_rss_mib"],
            "user_cpu": round(after.ru_utime - before.ru_utime, 3), "sys_cpu": round(after.ru_stime - before.ru_stime, 3),
            "cpu": round(after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime, 3),
            "exit": inner["exit"], "summary": summary, "sync_seconds": float(in_sync.group(1)) if in_sync else None,
        })
        shutil.rmtree(data, ignore_errors=True)
    keys = ("wall", "inside_main", "cpu", "user_cpu", "sys_cpu", "peak_rss_mib", "sync_seconds")
    median = {key: round(statistics.median(r[key] or 0 for r in runs), 3) for key in keys}
    return {"merchant": merchant, "entity": entity, "runs": runs, "median": median}


def warm_catalogues(url: str, ids: list[str]) -> float:
    """Ask each merchant's product service for one record, so the sandbox generates its catalogue
    now rather than inside the first cycle (a real product service has it already)."""
    import requests

    from sync_pipeline.sandbox.merchants import merchant_credentials

    session = requests.Session()
    clock = Stopwatch()
    for merchant in ids:
        credentials = merchant_credentials(url, merchant)
        for kind in ("products", "collections"):
            session.get(f"{credentials['productServiceUrl']}/{kind}", params={"limit": 1},
                        headers={"Authorization": f"Bearer {credentials['productServiceToken']}"}, timeout=60).raise_for_status()
    return clock.seconds


def register_merchants(state_url: str, url: str, ids: list[str]) -> float:
    from sync_pipeline.merchants import MerchantRegistry, parse_spec
    from sync_pipeline.sandbox.merchants import merchant_credentials
    from sync_pipeline.state import StateStore

    store = StateStore(state_url)
    registry = MerchantRegistry(store)
    clock = Stopwatch()
    for number, merchant in enumerate(ids):
        registry.put(parse_spec({
            "merchantId": merchant, **merchant_credentials(url, merchant),
            "apiToken": f"bench-api-token-{merchant}-{number:08d}", "syncHourUtc": number % 24,
        }))
    seconds = clock.seconds
    store.dispose()
    return seconds


def dagster_home(tmp: Path, storage: str, dagster_url: str | None) -> Path:
    home = tmp / "dagster"
    home.mkdir()
    text = "telemetry:\n  enabled: false\n"
    if storage == "postgres":
        text = f"storage:\n  postgres:\n    postgres_url: {dagster_url}\n" + text
    (home / "dagster.yaml").write_text(text)
    return home


# --- the projection ----------------------------------------------------------------------
def project(result: dict, merchants: int = 10_000, hours: int = 24, bucket_hours: float = 1.0) -> dict:
    """10,000 merchants on Kubernetes (K8sRunLauncher: a pod per run) from the measured costs."""
    cfg = result["config"]
    steady, alone, first = (result[k]["summary"] for k in ("cycle_no_change", "warm_alone", "first_alone"))
    pod = result["whole_process"]["median"]
    per_type: dict = {}
    for entity in ("PRODUCT", "COLLECTION"):
        warm_nc_wall, warm_nc_cpu = alone[entity]["wall"]["median"], alone[entity]["cpu"]["median"]
        first_wall, first_cpu = first[entity]["wall"]["median"], first[entity]["cpu"]["median"]
        per_type[entity] = {"warm_no_change_wall": warm_nc_wall, "warm_no_change_cpu": warm_nc_cpu,
                            "warm_first_wall": first_wall, "warm_first_cpu": first_cpu}
    # A pod's fixed cost: the whole process less the sync a warm worker does in it.
    overhead_wall = pod["wall"] - per_type["PRODUCT"]["warm_no_change_wall"]
    overhead_cpu = pod["cpu"] - per_type["PRODUCT"]["warm_no_change_cpu"]
    runs_per_day = 2 * merchants
    per_bucket_merchants = merchants / hours * bucket_hours
    per_bucket_runs = 2 * per_bucket_merchants

    def day(kind: str) -> dict:
        pod_wall = {e: overhead_wall + per_type[e][f"warm_{kind}_wall"] for e in per_type}
        pod_cpu = {e: overhead_cpu + per_type[e][f"warm_{kind}_cpu"] for e in per_type}
        cpu_day = merchants * sum(pod_cpu.values())
        warm_cpu_day = merchants * sum(per_type[e][f"warm_{kind}_cpu"] for e in per_type)
        wall_bucket = per_bucket_merchants * sum(pod_wall.values())
        concurrency = wall_bucket / (bucket_hours * 3600)
        cpu_bucket = per_bucket_merchants * sum(pod_cpu.values())
        warm_wall_bucket = per_bucket_merchants * sum(per_type[e][f"warm_{kind}_wall"] for e in per_type)
        return {
            "warm_run_seconds_per_bucket": round(warm_wall_bucket, 0),
            "warm_workers": math.ceil(warm_wall_bucket / (bucket_hours * 3600)),
            "pod_wall": {e: round(v, 2) for e, v in pod_wall.items()},
            "pod_cpu": {e: round(v, 2) for e, v in pod_cpu.items()},
            "cpu_hours_per_day_pods": round(cpu_day / 3600, 2),
            "cpu_hours_per_day_warm_workers": round(warm_cpu_day / 3600, 2),
            "run_seconds_per_bucket": round(wall_bucket, 0),
            "concurrent_runs": math.ceil(concurrency),
            "cores_per_bucket": round(cpu_bucket / (bucket_hours * 3600), 2),
            "memory_gib_at_concurrency": round(math.ceil(concurrency) * pod["peak_rss_mib"] / 1024, 1),
        }

    sizes = result["state_store"]["after_no_change"]["tables"]
    records_per_merchant = cfg["products"] + cfg["collections"]
    bytes_per_record = sizes["records"]["total_bytes"] / max(sizes["records"]["rows"], 1)
    compact = result["state_store"]["records_compact"]
    compact_per_record = compact["total_bytes"] / max(compact["rows"], 1)
    grow_before = result["state_store"]["after_first"]["tables"]
    growth = {
        t: {"rows": sizes[t]["rows"] - grow_before[t]["rows"], "bytes": sizes[t]["total_bytes"] - grow_before[t]["total_bytes"]}
        for t in ("syncs", "batches", "rejections")
    }
    at_scale = result["state_store"]["history_bytes_per_row"]
    bytes_per_row = {
        t: at_scale[t].get("bytes_per_row") or sizes[t]["total_bytes"] / max(sizes[t]["rows"], 1)
        for t in ("syncs", "batches", "rejections")
    }
    scale = merchants / cfg["merchants"]
    daily_rows = {t: growth[t]["rows"] * scale for t in growth}
    daily_bytes = sum(daily_rows[t] * bytes_per_row[t] for t in daily_rows)
    dagster = result.get("dagster_store")
    dagster_per_run = None
    if dagster:
        runs = steady["syncs"]
        a, z = dagster["after_first"], dagster["after_no_change"]
        dagster_per_run = {
            "bytes": round((z["database_bytes"] - a["database_bytes"]) / runs),
            "event_rows": round((z["event_logs_rows"] - a["event_logs_rows"]) / runs, 1),
        }
    return {
        "dagster_per_run": dagster_per_run,
        "dagster_bytes_per_day": dagster_per_run and dagster_per_run["bytes"] * runs_per_day,
        "merchants": merchants, "records_per_merchant": records_per_merchant, "hours": hours, "bucket_hours": bucket_hours,
        "runs_per_day": runs_per_day, "merchants_per_bucket": round(per_bucket_merchants, 1),
        "runs_per_bucket": round(per_bucket_runs, 1), "per_type": per_type,
        "pod_overhead_wall": round(overhead_wall, 2), "pod_overhead_cpu": round(overhead_cpu, 2),
        "pod_peak_rss_mib": pod["peak_rss_mib"],
        "steady_day": day("no_change"), "first_day": day("first"),
        "launch_seconds_per_run": LAUNCH_SECONDS_PER_RUN,
        "launch_seconds_per_bucket": round(per_bucket_runs * LAUNCH_SECONDS_PER_RUN, 1),
        "max_runs_launched_per_hour": round(3600 / LAUNCH_SECONDS_PER_RUN),
        "launch_seconds_if_all_in_one_hour": round(runs_per_day * LAUNCH_SECONDS_PER_RUN, 0),
        "bytes_per_record": round(bytes_per_record, 1),
        "compact_bytes_per_record": round(compact_per_record, 1),
        "records_compact_bytes": round(merchants * records_per_merchant * compact_per_record),
        "records_total": merchants * records_per_merchant,
        "records_bytes": round(merchants * records_per_merchant * bytes_per_record),
        "daily_growth_rows": {t: round(v) for t, v in daily_rows.items()},
        "bytes_per_row": {t: round(v, 1) for t, v in bytes_per_row.items()},
        "daily_growth_bytes": round(daily_bytes),
    }


# --- the report --------------------------------------------------------------------------
def gib(value: float) -> str:
    return f"{value / 1024**3:.2f} GiB" if value >= 1024**3 / 10 else f"{value / 1024**2:.1f} MiB"


def phases_of(result: dict) -> list[dict]:
    return [result[k]["summary"] for k in ("cycle_first", "cycle_no_change", "warm_alone", "first_alone")]


def markdown(result: dict) -> str:
    cfg, p = result["config"], result["projection"]
    first, steady, alone, first_alone = (
        result[k]["summary"] for k in ("cycle_first", "cycle_no_change", "warm_alone", "first_alone")
    )
    pod = result["whole_process"]["median"]
    setup = result["setup"]
    lines = [
        f"# Daily cycle of {cfg['merchants']} merchants × {cfg['products']:,} products + {cfg['collections']} collections",
        "",
        f"`python -m bench.merchants --merchants {cfg['merchants']} --products {cfg['products']} --collections "
        f"{cfg['collections']} --workers {cfg['workers']}`. Machine: {result['machine']['cores']} cores, "
        f"{result['machine']['memory_gib']} GiB; load average {result['machine']['load_average_1m']} at the start and "
        f"{result['machine_after']['load_average_1m']} at the end"
        + (f", up to {max(s['load_average_1m_max'] for s in phases_of(result))} during the cycles"
           if all("load_average_1m_max" in s for s in phases_of(result)) else "")
        + ". The machine is shared (other people's tests and benchmarks): the \"machine busy\" column is all of it, "
        "ours and theirs." + (f" {result['note']}" if result.get("note") else "") + " State store: PostgreSQL "
        f"{result['postgres']['server_version'].split()[0]} (shared_buffers {result['postgres']['shared_buffers']}), a fresh "
        f"database. Dagster instance: {cfg['dagster_storage']} storage (a fresh database), shared by the workers. "
        f"{cfg['workers']} long-lived worker processes take syncs from one queue and run them one after another through "
        "Dagster (`enqueue_sync`, then `execute_in_process` on the shared instance, as `sync-pipeline sync` does), each "
        "with its own empty SYNC_DATA_DIR.",
        "",
        f"Set-up (not in the figures): sandbox up in {setup['sandbox_start_seconds']:.1f} s; the merchants' catalogues "
        f"generated in {setup['catalogue_generation_seconds']:.1f} s; {cfg['merchants'] + cfg['alone_first']} merchants "
        f"registered in {setup['register_seconds']:.1f} s; their partitions added in {setup['partitions_seconds']:.2f} s; "
        f"workers started (imports, definitions, instance) in {max(w['startup_seconds'] for w in setup['worker_startup']):.1f} s "
        f"wall, {max(w['startup_cpu_seconds'] for w in setup['worker_startup']):.1f} s CPU each.",
        "",
        "## The cycles",
        "",
        "| phase | syncs (ok) | wall s | syncs/min | PRODUCT wall median / p90 s | PRODUCT CPU s | COLLECTION wall median / p90 s | COLLECTION CPU s | published | CPU s: workers / sandbox / PostgreSQL server | machine busy |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    phases = (
        (f"cycle 1: first syncs (full), {cfg['workers']} workers", first),
        (f"cycle 2: nothing changed, {cfg['workers']} workers", steady),
        ("nothing changed, one sync at a time (warm worker)", alone),
        ("first syncs, one at a time (warm worker)", first_alone),
    )
    for label, s in phases:
        pr, co = s["PRODUCT"], s["COLLECTION"]
        server = s.get("cpu_seconds_postgres_server")
        lines.append(
            f"| {label} | {s['syncs']} ({s['ok']}) | {s['wall_seconds']:.1f} | {s['syncs_per_minute']:.1f} "
            f"| {pr['wall']['median']:.2f} / {pr['wall']['p90']:.2f} | {pr['cpu']['median']:.2f} "
            f"| {co['wall']['median']:.2f} / {co['wall']['p90']:.2f} | {co['cpu']['median']:.2f} "
            f"| {pr['published'] + co['published']:,} | {s['cpu_seconds_workers']:.0f} / {s['cpu_seconds_sandbox']:.0f} / "
            f"{'-' if server is None else f'{server:.0f}'} | {100 * s['machine']['busy_share']:.0f} % |"
        )
    lines += [
        "",
        f"- A daily cycle of {cfg['merchants']} merchants ({2 * cfg['merchants']} syncs) took **{first['wall_seconds'] / 60:.1f} min** "
        f"the first time ({first['syncs_per_minute']:.0f} syncs/min) and **{steady['wall_seconds'] / 60:.1f} min** with nothing "
        f"changed ({steady['syncs_per_minute']:.0f} syncs/min).",
        f"- In cycle 2 every sync is a latest one that finds nothing new in its window; what they publish are the sandbox's "
        f"planted refusals, owed again each sync ({steady['PRODUCT']['refused'] + steady['COLLECTION']['refused']} refused again).",
        f"- With {cfg['workers']} syncs at once on {result['machine']['cores']} cores (shared), a sync's wall includes waiting for a "
        "core; the one-at-a-time rows show a sync's own wall. CPU is the worker's (all its threads), per sync. The "
        "PostgreSQL column is the whole server's CPU (other people's databases too; Dagster's PostgreSQL storage opens a "
        "connection per operation, so per-database backends cannot be followed).",
        f"- Worker peak RSS: {max(s['worker_peak_rss_mib'] for _, s in phases):.0f} MiB.",
        "",
        "## The fixed cost of a sync with nothing changed",
        "",
        "| how | wall s | CPU s (user + sys) | peak RSS MiB |",
        "|---|---:|---:|---:|",
        f"| a whole `sync-pipeline sync PRODUCT --merchant {result['whole_process']['merchant']}` process (median of "
        f"{len(result['whole_process']['runs'])}) | **{pod['wall']:.2f}** | **{pod['cpu']:.2f}** ({pod['user_cpu']:.2f} + {pod['sys_cpu']:.2f}) "
        f"| {pod['peak_rss_mib']:.0f} |",
        f"| … of which Python and the imports before `main` | {pod['wall'] - pod['inside_main']:.2f} | | |",
        f"| … of which the sync itself (started → finished in the state store) | {pod['sync_seconds']:.2f} | | |",
        f"| in a warm worker, PRODUCT (median) | **{alone['PRODUCT']['wall']['median']:.2f}** | **{alone['PRODUCT']['cpu']['median']:.2f}** | "
        f"{alone['worker_peak_rss_mib']:.0f} (the worker) |",
        f"| … of which the sync itself | {alone['PRODUCT']['in_asset']['median']:.2f} | | |",
        f"| in a warm worker, COLLECTION (median) | {alone['COLLECTION']['wall']['median']:.2f} | {alone['COLLECTION']['cpu']['median']:.2f} | |",
        "",
        f"A process pays {p['pod_overhead_wall']:.2f} s wall and {p['pod_overhead_cpu']:.2f} s CPU more than a warm worker for the "
        "same sync: the interpreter, the imports (Dagster), the definitions, opening the instance and the state store. A pod "
        "per run pays it on every run, on top of the pod's scheduling and container start (not measured here). In a warm "
        "worker, most of a no-change sync's wall is Dagster's bookkeeping around the step (creating the run, some 40 "
        "events written to the instance), not the sync.",
        "",
        "## The state store",
        "",
        "| after | database | records: rows / size | syncs: rows / size | batches: rows / size | rejections: rows / size |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for label, key in (("cycle 1", "after_first"), ("cycle 2", "after_no_change"), ("everything", "after_all")):
        s = result["state_store"][key]
        t = s["tables"]
        lines.append(
            f"| {label} | {gib(s['database_bytes'])} | " + " | ".join(
                f"{t[name]['rows']:,} / {gib(t[name]['total_bytes'])}" for name in ("records", "syncs", "batches", "rejections")
            ) + " |"
        )
    at_scale = result["state_store"]["history_bytes_per_row"]
    lines += [
        "",
        f"Bytes per record (the records table with its indexes ÷ rows): **{p['bytes_per_record']:.0f}** as found after cycle 2, "
        f"**{p['compact_bytes_per_record']:.0f}** once VACUUM FULL has removed the dead rows (a first sync writes each record "
        "twice: after staging, and after publishing). "
        "Bytes per history row, measured by copying the rows until each table held 20,000: " + ", ".join(
            f"{t} {v['bytes_per_row']:.0f}" for t, v in at_scale.items() if v.get("bytes_per_row")
        ) + ".",
    ]
    if result.get("dagster_store"):
        d = result["dagster_store"]
        lines.append("")
        lines.append(
            f"The Dagster instance's database: {gib(d['after_first']['database_bytes'])} after cycle 1 "
            f"({d['after_first']['runs_rows']:,} runs, {d['after_first']['event_logs_rows']:,} event-log rows), "
            f"{gib(d['after_no_change']['database_bytes'])} after cycle 2 ({d['after_no_change']['runs_rows']:,} runs, "
            f"{d['after_no_change']['event_logs_rows']:,} event-log rows)."
        )
    sd, fd = p["steady_day"], p["first_day"]
    n, b = p["merchants"], p["bucket_hours"]
    lines += [
        "",
        f"## Projection: {n:,} merchants on Kubernetes",
        "",
        f"Each merchant of {cfg['products']:,} products and {cfg['collections']} collections, as measured. The K8sRunLauncher "
        "starts a pod per run, so every run pays the whole-process cost; the sync inside it costs what it costs in a warm "
        "worker running alone (one sync at a time, so no queueing for a core is counted). Per run:",
        "",
        f"- pod overhead = whole process − warm no-change PRODUCT sync = {pod['wall']:.2f} − "
        f"{p['per_type']['PRODUCT']['warm_no_change_wall']:.2f} = **{p['pod_overhead_wall']:.2f} s wall**, "
        f"{pod['cpu']:.2f} − {p['per_type']['PRODUCT']['warm_no_change_cpu']:.2f} = **{p['pod_overhead_cpu']:.2f} s CPU**;",
    ]
    for kind, d, word in (("no_change", sd, "no-change"), ("first", fd, "first (full)")):
        for entity in ("PRODUCT", "COLLECTION"):
            pt = p["per_type"][entity]
            lines.append(
                f"- {word} {entity} run = {p['pod_overhead_wall']:.2f} + {pt[f'warm_{kind}_wall']:.2f} = "
                f"{d['pod_wall'][entity]:.2f} s wall; {p['pod_overhead_cpu']:.2f} + {pt[f'warm_{kind}_cpu']:.2f} = "
                f"{d['pod_cpu'][entity]:.2f} s CPU;"
            )
    lines += [
        "",
        f"Runs: {n:,} merchants × 2 types = **{p['runs_per_day']:,} runs a day**. Spread evenly over {p['hours']} sync hours: "
        f"{n:,} ÷ {p['hours']} = {p['merchants_per_bucket']:.0f} merchants, **{p['runs_per_bucket']:.0f} runs in each hour**.",
        "",
        "| | steady day (nothing changed) | first day (every merchant's first sync) |",
        "|---|---:|---:|",
        f"| CPU-hours a day, a pod per run: {n:,} × (PRODUCT + COLLECTION CPU) ÷ 3600 | "
        f"{n:,} × ({sd['pod_cpu']['PRODUCT']:.2f} + {sd['pod_cpu']['COLLECTION']:.2f}) ÷ 3600 = **{sd['cpu_hours_per_day_pods']:.1f}** | "
        f"{n:,} × ({fd['pod_cpu']['PRODUCT']:.2f} + {fd['pod_cpu']['COLLECTION']:.2f}) ÷ 3600 = **{fd['cpu_hours_per_day_pods']:.1f}** |",
        f"| CPU-hours a day in warm workers instead (no process per run) | {sd['cpu_hours_per_day_warm_workers']:.1f} | {fd['cpu_hours_per_day_warm_workers']:.1f} |",
        f"| run-seconds in one hour's bucket: {p['merchants_per_bucket']:.0f} × (PRODUCT + COLLECTION wall) | "
        f"{p['merchants_per_bucket']:.0f} × ({sd['pod_wall']['PRODUCT']:.2f} + {sd['pod_wall']['COLLECTION']:.2f}) = {sd['run_seconds_per_bucket']:,.0f} | "
        f"{p['merchants_per_bucket']:.0f} × ({fd['pod_wall']['PRODUCT']:.2f} + {fd['pod_wall']['COLLECTION']:.2f}) = {fd['run_seconds_per_bucket']:,.0f} |",
        f"| concurrent runs to finish each bucket within its {b:g} h: run-seconds ÷ {b * 3600:,.0f} s | **{sd['concurrent_runs']}** | **{fd['concurrent_runs']}** |",
        f"| cores busy meanwhile: CPU-seconds in the bucket ÷ {b * 3600:,.0f} s | {sd['cores_per_bucket']:.2f} | {fd['cores_per_bucket']:.2f} |",
        f"| warm workers instead: {p['merchants_per_bucket']:.0f} × (warm PRODUCT + COLLECTION wall) ÷ {b * 3600:,.0f} s | "
        f"{sd['warm_run_seconds_per_bucket']:,.0f} ÷ {b * 3600:,.0f} → **{sd['warm_workers']}** | "
        f"{fd['warm_run_seconds_per_bucket']:,.0f} ÷ {b * 3600:,.0f} → **{fd['warm_workers']}** |",
        f"| memory at that concurrency, {p['pod_peak_rss_mib']:.0f} MiB per pod | {sd['memory_gib_at_concurrency']:.1f} GiB | {fd['memory_gib_at_concurrency']:.1f} GiB |",
        "",
        f"These are averages over the hour; the runs of an hour are all due at its start (the schedule's tick) and the run "
        f"queue lets SYNC_MAX_CONCURRENT_SYNCS of them run at once: at the default 4, each hour's burst drains in "
        f"{sd['run_seconds_per_bucket']:,.0f} ÷ 4 = {sd['run_seconds_per_bucket'] / 4 / 60:.0f} min on a steady day and "
        f"{fd['run_seconds_per_bucket']:,.0f} ÷ 4 = {fd['run_seconds_per_bucket'] / 4 / 60:.0f} min on the first day (given 4 free "
        "cores); the cap must exceed the concurrency in this table, with room, for the hour to be kept.",
        "",
        f"The run launcher: at {p['launch_seconds_per_run']} s per run submission (measured elsewhere, SQLite and PostgreSQL "
        f"alike), one hour's {p['runs_per_bucket']:.0f} runs take {p['runs_per_bucket']:.0f} × {p['launch_seconds_per_run']} = "
        f"**{p['launch_seconds_per_bucket']:.0f} s** to submit, {100 * p['launch_seconds_per_bucket'] / (b * 3600):.0f} % of the hour. "
        f"Its ceiling is 3600 ÷ {p['launch_seconds_per_run']} = {p['max_runs_launched_per_hour']:,} runs an hour, "
        f"{p['max_runs_launched_per_hour'] // 2:,} merchants in one sync hour. Were all {n:,} merchants left at the default "
        f"syncHourUtc (2), their {p['runs_per_day']:,} runs would take {p['runs_per_day']:,} × {p['launch_seconds_per_run']} = "
        f"{p['launch_seconds_if_all_in_one_hour']:,.0f} s ({p['launch_seconds_if_all_in_one_hour'] / 3600:.1f} h) just to be "
        "submitted: the merchants' hours must be spread.",
        "",
        f"State store at {n:,} merchants: {n:,} × ({cfg['products']:,} + {cfg['collections']}) = {p['records_total']:,} records × "
        f"{p['compact_bytes_per_record']:.0f} to {p['bytes_per_record']:.0f} bytes = **{gib(p['records_compact_bytes'])} to "
        f"{gib(p['records_bytes'])}** of records (compact, as found). Each no-change day adds, scaled from "
        f"cycle 2 (× {n:,} ÷ {cfg['merchants']}): " + ", ".join(
            f"{rows:,} {t} rows × {p['bytes_per_row'][t]:.0f} B" for t, rows in p["daily_growth_rows"].items()
        ) + f" = **{gib(p['daily_growth_bytes'])} a day** ({gib(p['daily_growth_bytes'] * 365)} a year, unless history is pruned).",
        "",
        *([
            f"The Dagster instance's database grows faster: cycle 2 added {p['dagster_per_run']['bytes']:,} bytes and "
            f"{p['dagster_per_run']['event_rows']:.0f} event-log rows per run, so {p['runs_per_day']:,} runs add "
            f"**{gib(p['dagster_bytes_per_day'])} a day** ({gib(p['dagster_bytes_per_day'] * 30)} a month) unless old runs are "
            "deleted.",
            "",
        ] if p.get("dagster_per_run") else []),
        "Not measured here: pod scheduling and container start (add them to the pod overhead), the product services' and "
        "the gateway's own latency (the sandbox answers at once), and the database server's load at that scale.",
    ]
    return "\n".join(lines) + "\n"


# --- main --------------------------------------------------------------------------------
def run(args: argparse.Namespace) -> dict:
    from sync_pipeline.sandbox.process import start_sandbox, stop

    ids = [merchant_id(i) for i in range(1, args.merchants + 1)]
    # A few more merchants, left out of the cycles, for first syncs one at a time.
    spare = [merchant_id(i) for i in range(args.merchants + 1, args.merchants + 1 + args.alone_first)]
    work = [(m, e) for m in ids for e in ("PRODUCT", "COLLECTION")]
    result: dict = {"config": {
        "merchants": args.merchants, "products": args.products, "collections": args.collections,
        "workers": args.workers, "dagster_storage": args.dagster, "alone_first": args.alone_first,
    }, "machine": machine()}
    tmp = Path(tempfile.mkdtemp(prefix="bench-merchants-"))
    databases: list[str] = []
    sandbox = pool = None
    try:
        state_db, state_url = create_database("bench_merchants_state")
        databases.append(state_db)
        dagster_url = None
        if args.dagster == "postgres":
            dagster_db, dagster_url = create_database("bench_merchants_dagster")
            databases.append(dagster_db)
        result["postgres"] = pg_settings(state_url)
        clock = Stopwatch()
        sandbox, url = start_sandbox(
            "--products", "10", "--collections", "2", "--merchants", str(args.merchants + len(spare)),
            "--merchant-products", str(args.products), "--merchant-collections", str(args.collections), timeout=600,
        )
        setup = {"sandbox_start_seconds": round(clock.seconds, 2)}
        setup["catalogue_generation_seconds"] = round(warm_catalogues(url, ids + spare), 2)
        home = dagster_home(tmp, args.dagster, dagster_url)
        env = {
            "SYNC_STATE_URL": state_url, "SYNC_SECRET_KEY": SECRET_KEY, "GATEWAY_URL": url, "PRODUCT_SERVICE_URL": url,
            "DAGSTER_HOME": str(home), "SYNC_MAX_CONCURRENT_SYNCS": str(args.workers),
        }
        os.environ.update(env)
        setup["register_seconds"] = round(register_merchants(state_url, url, ids + spare), 2)
        import dagster as dg

        from sync_pipeline.defs.partitions import ensure_merchant_partitions

        with dg.DagsterInstance.get() as instance:  # creates the instance's tables before the workers race to
            clock = Stopwatch()
            ensure_merchant_partitions(instance, ids + spare)
            setup["partitions_seconds"] = round(clock.seconds, 3)
        pool = Pool(args.workers, {**os.environ, **env}, tmp)
        setup["worker_startup"] = [{k: round(v, 2) for k, v in s.items()} for s in pool.startup]
        result["setup"] = setup
        print(f"set up: {json.dumps(setup)}", flush=True)

        result["cycle_first"] = timed_cycle(pool, "cycle 1 (first syncs)", work, sandbox.pid, databases)
        result["state_store"] = {"after_first": database_sizes(state_url)}
        if dagster_url:
            result["dagster_store"] = {"after_first": dagster_sizes(dagster_url)}
        result["cycle_no_change"] = timed_cycle(pool, "cycle 2 (nothing changed)", work, sandbox.pid, databases)
        result["state_store"]["after_no_change"] = database_sizes(state_url)
        if dagster_url:
            result["dagster_store"]["after_no_change"] = dagster_sizes(dagster_url)
        alone = work[: max(2, min(len(work), args.alone_syncs))]
        result["warm_alone"] = timed_cycle(pool, "warm worker alone", alone, sandbox.pid, databases, one_at_a_time=True)
        first_alone = [(m, e) for m in spare for e in ("PRODUCT", "COLLECTION")]
        result["first_alone"] = timed_cycle(pool, "first syncs alone", first_alone, sandbox.pid, databases, one_at_a_time=True)
        pool.close()
        pool = None
        result["whole_process"] = whole_process_sync({**os.environ, **env}, tmp, ids[0], "PRODUCT", args.repeats)
        print(f"== whole process: {json.dumps(result['whole_process']['median'])}", flush=True)
        result["state_store"]["after_all"] = database_sizes(state_url)
        records = result["state_store"]["after_all"]["tables"]["records"]
        result["state_store"]["records_compact"] = {"rows": records["rows"], "total_bytes": compact_bytes(state_url, "records")}
        # Last, as it adds rows: what a history row costs once the tables are large.
        result["state_store"]["history_bytes_per_row"] = {
            table: bytes_per_row_at_scale(state_url, table, key)
            for table, key in (("syncs", "sync_id"), ("batches", "batch_id"), ("rejections", None))
        }
        result["machine_after"] = machine()
        result["projection"] = project(result)
    finally:
        if pool is not None:
            pool.close()
        if sandbox is not None:
            stop(sandbox)
        for name in databases:
            if not args.keep_db:
                drop_database(name)
        if not args.keep_tmp:
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            print(f"kept {tmp}", flush=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--merchants", type=int, default=200)
    parser.add_argument("--products", type=int, default=2000, help="products per merchant")
    parser.add_argument("--collections", type=int, default=50, help="collections per merchant")
    parser.add_argument("--workers", type=int, default=4, help="long-lived worker processes (SYNC_MAX_CONCURRENT_SYNCS)")
    parser.add_argument("--dagster", choices=("postgres", "sqlite"), default="postgres",
                        help="the shared Dagster instance's storage (postgres: a fresh database, as in deploy/dagster.yaml)")
    parser.add_argument("--repeats", type=int, default=3, help="whole-process no-change syncs to take the median of")
    parser.add_argument("--alone-syncs", type=int, default=20, help="no-change syncs run one at a time in a warm worker")
    parser.add_argument("--alone-first", type=int, default=3,
                        help="merchants kept out of the cycles whose first syncs run one at a time in a warm worker")
    parser.add_argument("--name", default="merchants", help="results go to bench/results/NAME.{json,md}")
    parser.add_argument("--keep-db", action="store_true", help="keep the PostgreSQL databases (names printed)")
    parser.add_argument("--keep-tmp", action="store_true", help="keep the data directories and worker logs")
    parser.add_argument("--keep-rows", action="store_true", help="keep every sync's measurements in the JSON")
    parser.add_argument("--note", help="a sentence for the report, e.g. what else ran on the machine")
    args = parser.parse_args()
    result = run(args)
    if args.note:
        result["note"] = args.note
    RESULTS.mkdir(parents=True, exist_ok=True)
    if not args.keep_rows:  # the summaries are enough; every sync's row is for digging
        for key in ("cycle_first", "cycle_no_change", "warm_alone", "first_alone"):
            result[key].pop("rows", None)
    (RESULTS / f"{args.name}.json").write_text(json.dumps(result, indent=1, default=str) + "\n")
    table = markdown(result)
    (RESULTS / f"{args.name}.md").write_text(table)
    print(table)


if __name__ == "__main__":
    main()

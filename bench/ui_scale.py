"""Does the Dagster UI stay responsive at 1,000 merchants?

A data engineer sees each merchant's last sync, and launches a historic backfill of one merchant
or of all of them, from the UI. This builds a throw-away Dagster instance with N merchant
partitions (default 1,000) and a history recorded cheaply (runless materializations of the four
sync assets for each merchant, with the metadata a real sync writes; a few real syncs against
the sandbox on top), starts `dagster dev` on it with the repository's workspace, and times with
Chromium (Playwright), each step in a fresh browser context, wall clock until the page's key
content is visible:

- graph: the asset graph (/asset-groups) until both group nodes show;
- graph_expanded: both groups opened until the four asset nodes show "1,000 partitions";
- asset_page: /assets/products_published until the latest materialization's metadata shows;
- partitions_tab: ?view=partitions until the status counts and the partition list show;
- partition_click: a merchant typed into the list's filter and clicked, until its metadata shows;
- dialog: "Materialize all…" until the launch dialog shows its partition selector;
- selector_open: the selector's drop-down until "Select all (N)" shows;
- selector_pick: a merchant typed into the drop-down's search and ticked, until "1 partition";
- select_all: the "All" button until the dialog counts N partitions;

then the slowest GraphQL operations the UI sent, replayed directly (POST /graphql), and a few
queries of our own (partition stats, statuses, keys, one partition's last materialization).
Optionally (--launch-backfill) it launches a historic backfill of all merchants from the dialog,
once, times it and the pages while the daemon works on it, and cancels it.

Profiles: sqlite (the repository's dagster.yaml) and postgres (deploy/dagster.yaml on a fresh
database of the server at 127.0.0.1:5432, user postgres, dropped afterwards). Each step is
repeated (default 3 times); bench/results/ui_scale.md gets median and max, the commands and the
machine's load. Everything started is stopped (process groups).

    .venv/bin/python bench/ui_scale.py [--merchants 1000] [--history 2] [--repeats 3]
        [--profiles sqlite,postgres,sqlite@10] [--real-syncs 3] [--launch-backfill] [--out bench/results/ui_scale.md]

The raw figures (every repetition, the GraphQL operations) also go to $TMPDIR/ui_scale.json.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
RESULTS = ROOT / "bench" / "results"
PYTHON = sys.executable
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
SECRET_KEY = "bench-ui-scale-secret-key-0123456789abcdef"
PG_ADMIN = os.environ.get("BENCH_PG_ADMIN", "host=127.0.0.1 port=5432 user=postgres dbname=postgres")
PG_URL_BASE = os.environ.get("BENCH_PG_URL", "postgresql+psycopg2://postgres@127.0.0.1:5432")
ASSETS = ["products_staged", "products_published", "collections_staged", "collections_published"]
SCREENSHOTS = Path(os.environ.get("UI_SCALE_SCREENSHOTS", "/tmp/ui_scale_screens"))
WAIT_MS = 180_000
WINDOW_START, WINDOW_END = "2025-03-01T00:00:00Z", "2025-04-01T00:00:00Z"
RUN_CONFIG = "ops:\n" + "".join(
    f"  {op}:\n    config:\n      start: \"{WINDOW_START}\"\n      end: \"{WINDOW_END}\"\n"
    for op in ("sync_products_step", "sync_collections_step")
)
STEPS = ["graph", "graph_expanded", "asset_page", "partitions_tab", "partition_click", "dialog", "selector_open",
         "selector_pick", "select_all", "graph_warm", "partitions_tab_warm"]


def merchant_ids(count: int) -> list[str]:
    """`default` and m0001… as the sandbox numbers them."""
    return ["default", *(f"m{number:04d}" for number in range(1, count))]


def load() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def log(message: str) -> None:
    print(f"[{datetime.now():%H:%M:%S}] {message}", flush=True)


# --- processes -------------------------------------------------------------------------------
STARTED: list[subprocess.Popen] = []


def start_group(args: list[str], env: dict, logfile: Path, cwd: Path = ROOT) -> subprocess.Popen:
    """A process in a session (process group) of its own, so that it and its children stop together."""
    out = logfile.open("ab")
    process = subprocess.Popen(args, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    STARTED.append(process)
    return process


STOPS: list[str] = []


def stop_group(process: subprocess.Popen, grace: float = 30) -> None:
    if process.poll() is None:
        began = time.monotonic()
        try:
            os.killpg(process.pid, signal.SIGTERM)
            process.wait(grace)
            STOPS.append(f"`{' '.join(process.args[:4])}…` stopped on SIGTERM in {time.monotonic() - began:.1f} s")
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(10)
            STOPS.append(f"`{' '.join(process.args[:4])}…` still running {grace:.0f} s after SIGTERM: SIGKILLed (group)")
        except ProcessLookupError:
            pass
    # children that outlived their parent (run workers, code servers) are still in the group
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    if process in STARTED:
        STARTED.remove(process)


def stop_all() -> None:
    for process in list(STARTED):
        stop_group(process)


def free_port() -> int:
    from sync_pipeline.sandbox.process import free_port as _free_port

    return _free_port()


# --- PostgreSQL ------------------------------------------------------------------------------
def pg_admin(sql: str) -> None:
    import psycopg2

    connection = psycopg2.connect(PG_ADMIN)
    connection.autocommit = True
    try:
        with connection.cursor() as cursor:
            cursor.execute(sql)
    finally:
        connection.close()


def pg_version() -> str:
    import psycopg2

    connection = psycopg2.connect(PG_ADMIN)
    try:
        with connection.cursor() as cursor:
            cursor.execute("SHOW server_version")
            return cursor.fetchone()[0]
    finally:
        connection.close()


# --- the instance and its history ------------------------------------------------------------
def staged_metadata(merchant: str, sync_id: str, mode: str, end: datetime, rng: random.Random) -> dict:
    import dagster as dg

    fetched = rng.randint(0, 400) if mode == "latest" else rng.randint(1000, 5000)
    rejected = rng.randint(0, max(1, fetched // 100))
    seconds = round(rng.uniform(0.3, 8.0), 3)
    start = end - timedelta(days=1, minutes=10) if mode == "latest" else None
    return {
        "sync_id": sync_id,
        "mode": mode,
        "window_start": dg.MetadataValue.timestamp(start) if start else "beginning",
        "window_end": dg.MetadataValue.timestamp(end),
        "window_hours": round((end - start).total_seconds() / 3600, 2) if start else -1.0,
        "records_fetched": fetched,
        "records_valid": fetched - rejected,
        "records_rejected": rejected,
        "records_fetched_by_id": 0,
        "records_to_delete": 0,
        "pages": max(1, fetched // 1000 + 1),
        "duration_seconds": seconds,
        "records_per_second": round(fetched / seconds, 1),
    }


def published_metadata(merchant: str, sync_id: str, staged: dict, rng: random.Random) -> dict:
    published = staged["records_valid"]
    failed = rng.choice([0] * 9 + [rng.randint(1, 5)])
    seconds = round(rng.uniform(0.5, 20.0), 3)
    held = rng.randint(2000, 6000)
    return {
        "sync_id": sync_id,
        "status": "2000 SUCCESS" if not failed else "2100 PARTIAL_SUCCESS",
        "records_published": published - failed,
        "records_failed": failed,
        "records_deleted": 0,
        "records_rejected": staged["records_rejected"],
        "records_parked": 0,
        "records_invalid_but_held": 0,
        "batches": max(1, published // 1000 + 1),
        "num_records": held,
        "publish_seconds": seconds,
        "duration_seconds": round(seconds + staged["duration_seconds"], 3),
        "records_per_second": round(staged["records_fetched"] / (seconds + staged["duration_seconds"]), 1),
    }


def seed_history(instance, merchants: list[str], rounds: int, never_synced: int) -> dict:
    """`rounds` syncs of both types per merchant, as runless materializations of the four assets
    with the metadata a sync writes, oldest first (a full sync, then daily latest ones). The last
    `never_synced` merchants are left without any (merchants added but not synced yet)."""
    import dagster as dg

    rng = random.Random(7)
    synced = merchants[: len(merchants) - never_synced]
    now = datetime.now(timezone.utc).replace(minute=0, second=0, microsecond=0)
    began, events = time.monotonic(), 0
    for round_number in range(rounds):
        end = now - timedelta(days=rounds - 1 - round_number)
        mode = "full" if round_number == 0 else "latest"
        for entity in ("products", "collections"):
            for merchant in synced:
                sync_id = secrets.token_hex(8)
                staged = staged_metadata(merchant, sync_id, mode, end, rng)
                instance.report_runless_asset_event(
                    dg.AssetMaterialization(asset_key=f"{entity}_staged", partition=merchant, metadata=staged)
                )
                instance.report_runless_asset_event(
                    dg.AssetMaterialization(
                        asset_key=f"{entity}_published", partition=merchant,
                        metadata=published_metadata(merchant, sync_id, staged, rng),
                    )
                )
                events += 2
        log(f"  history round {round_number + 1}/{rounds}: {events} events, {time.monotonic() - began:.0f}s")
    return {"events": events, "seconds": round(time.monotonic() - began, 1), "synced_merchants": len(synced)}


def register_merchants(state_url: str, merchants: list[str], sandbox_url: str | None, far_hour: int) -> float:
    """Every merchant in the registry, its daily sync at an hour far from now (no schedule tick
    while we measure); those the sandbox plays with its credentials, the others with dummy ones."""
    from sync_pipeline.merchants import MerchantRegistry, MerchantSpec
    from sync_pipeline.sandbox.merchants import merchant_credentials
    from sync_pipeline.state import StateStore

    began = time.monotonic()
    store = StateStore(state_url)
    registry = MerchantRegistry(store)
    registry.put(MerchantSpec(merchantId="default", syncHourUtc=far_hour))
    for merchant in merchants:
        if merchant == "default":
            continue
        credentials = merchant_credentials(sandbox_url or "http://127.0.0.1:9", merchant)
        registry.put(MerchantSpec(
            merchantId=merchant, apiToken=f"{merchant}-api-token-0123456789", syncHourUtc=far_hour, **credentials,
        ))
    store.dispose()
    return time.monotonic() - began


@contextmanager
def environment(values: dict):
    saved = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def build_instance(profile: str, work: Path, args) -> tuple[dict, dict]:
    """The instance (home, storage), merchants, history and registry; returns (env, facts)."""
    import dagster as dg

    from sync_pipeline.defs.partitions import MERCHANT_PARTITIONS, ensure_merchant_partitions

    home, data = work / "dagster_home", work / "data"
    home.mkdir(parents=True)
    data.mkdir()
    facts: dict = {"profile": profile}
    env = {
        "DAGSTER_HOME": str(home),
        "SYNC_DATA_DIR": str(data),
        "SYNC_STATE_URL": f"sqlite:///{data / 'state.db'}",
        "SYNC_MAX_CONCURRENT_SYNCS": "4",
        "SYNC_SECRET_KEY": SECRET_KEY,
        "DAGSTER_DISABLE_TELEMETRY": "1",
    }
    if profile == "postgres":
        name = f"ui_scale_{secrets.token_hex(4)}"
        pg_admin(f'CREATE DATABASE "{name}"')
        facts["pg_database"] = name
        facts["pg_version"] = pg_version()
        env["DAGSTER_PG_URL"] = f"{PG_URL_BASE}/{name}"
        shutil.copy(ROOT / "deploy" / "dagster.yaml", home / "dagster.yaml")
    else:
        shutil.copy(ROOT / "dagster.yaml", home / "dagster.yaml")
    merchants = merchant_ids(args.merchants)
    sandbox = None
    # SQLite: the history is written in a home on tmpfs (a commit per event costs half as much
    # there), then the home is copied to disk, where the UI reads it.
    seed_home = Path(tempfile.mkdtemp(prefix="ui_scale_seed_", dir="/dev/shm")) if (
        profile == "sqlite" and os.access("/dev/shm", os.W_OK)) else home
    if seed_home != home:
        shutil.copy(home / "dagster.yaml", seed_home / "dagster.yaml")
    with environment({**env, "DAGSTER_HOME": str(seed_home)}):
        with dg.DagsterInstance.get() as instance:
            began = time.monotonic()
            ensure_merchant_partitions(instance, merchants)
            facts["partitions_seconds"] = round(time.monotonic() - began, 2)
            facts["partitions"] = len(instance.get_dynamic_partitions(MERCHANT_PARTITIONS))
            log(f"{profile}: {facts['partitions']} partitions in {facts['partitions_seconds']}s; seeding history")
            facts["history"] = seed_history(instance, merchants, args.history, args.never_synced)
    if seed_home != home:
        shutil.rmtree(home)
        shutil.copytree(seed_home, home)
        shutil.rmtree(seed_home, ignore_errors=True)
        facts["history"]["seeded_on"] = "tmpfs, then copied to disk"
    with environment(env):
        if args.real_syncs:
            port = free_port()
            sandbox = start_group(
                [PYTHON, "-m", "sync_pipeline.cli", "sandbox", "--port", str(port), "--merchants", str(args.real_syncs),
                 "--merchant-products", "200", "--merchant-collections", "10", "--products", "500",
                 "--collections", "20"],
                {**os.environ}, work / "sandbox.log",
            )
            sandbox_url = f"http://127.0.0.1:{port}"
            wait_http(f"{sandbox_url}/healthz", 120)
            env.update({"PRODUCT_SERVICE_URL": sandbox_url, "GATEWAY_URL": sandbox_url})
            os.environ.update({"PRODUCT_SERVICE_URL": sandbox_url, "GATEWAY_URL": sandbox_url})
        else:
            sandbox_url = None
        far_hour = (datetime.now(timezone.utc).hour + 12) % 24
        facts["register_seconds"] = round(register_merchants(env["SYNC_STATE_URL"], merchants, sandbox_url, far_hour), 1)
        log(f"{profile}: {len(merchants)} merchants registered in {facts['register_seconds']}s")
        real = []
        for merchant in merchants[1 : 1 + args.real_syncs]:
            began = time.monotonic()
            result = subprocess.run(
                [PYTHON, "-m", "sync_pipeline.cli", "sync", "all", "--merchant", merchant],
                cwd=ROOT, env={**os.environ}, capture_output=True, text=True,
            )
            real.append({"merchant": merchant, "rc": result.returncode, "seconds": round(time.monotonic() - began, 1),
                         "tail": (result.stdout + result.stderr).strip().splitlines()[-2:]})
            log(f"{profile}: real sync of {merchant}: rc {result.returncode}, {real[-1]['seconds']}s")
        facts["real_syncs"] = real
    if sandbox is not None:
        stop_group(sandbox)
    return env, facts


def drop_pg(facts: dict) -> None:
    if facts.get("pg_database"):
        pg_admin(f'DROP DATABASE IF EXISTS "{facts["pg_database"]}" WITH (FORCE)')


# --- dagster dev ------------------------------------------------------------------------------
def wait_http(url: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if requests.get(url, timeout=2).ok:
                return
        except requests.RequestException:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"{url} did not answer within {timeout:.0f}s")


LOCATION_QUERY = """query { workspaceOrError { ... on Workspace { locationEntries { name
  locationOrLoadError { __typename ... on PythonError { message } } } } } }"""


def start_dagster(env: dict, work: Path) -> tuple[subprocess.Popen, str, list[str], float]:
    port = free_port()
    command = [PYTHON, "-m", "dagster", "dev", "-w", str(ROOT / "workspace.yaml"), "-h", "127.0.0.1", "-p", str(port)]
    began = time.monotonic()
    process = start_group(command, {**os.environ, **env}, work / "dagster-dev.log")
    url = f"http://127.0.0.1:{port}"
    wait_http(f"{url}/server_info", 300)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        entries = graphql(url, LOCATION_QUERY)[0]["data"]["workspaceOrError"]["locationEntries"]
        if entries and all(e["locationOrLoadError"] for e in entries):
            errors = [e for e in entries if e["locationOrLoadError"]["__typename"] == "PythonError"]
            if errors:
                raise RuntimeError(f"code location failed to load: {errors}")
            break
        time.sleep(1)
    return process, url, command, time.monotonic() - began


def graphql(url: str, query: str, variables: dict | None = None, operation: str | None = None) -> tuple[dict, float, int]:
    began = time.monotonic()
    body = {"query": query, "variables": variables or {}}
    if operation:
        body["operationName"] = operation
    response = requests.post(f"{url}/graphql", json=body, timeout=600)
    seconds = time.monotonic() - began
    response.raise_for_status()
    payload = response.json()
    if payload.get("errors"):
        raise RuntimeError(f"GraphQL errors: {payload['errors'][:2]}")
    return payload, seconds, len(response.content)


# --- the browser ------------------------------------------------------------------------------
class Recorder:
    """The GraphQL operations the page sends: name, seconds, response bytes, and the body."""

    def __init__(self):
        self.ops: list[dict] = []

    def attach(self, page) -> None:
        page.on("requestfinished", self._finished)

    def _finished(self, request) -> None:
        if "/graphql" not in request.url:
            return
        try:
            body = json.loads(request.post_data or "{}")
        except ValueError:
            body = {}
        timing = request.timing
        seconds = max(0.0, (timing.get("responseEnd") or 0) / 1000)
        try:
            size = len(request.response().body())
        except Exception:
            size = None
        self.ops.append({"op": body.get("operationName") or request.url.rsplit("op=", 1)[-1], "seconds": seconds,
                         "bytes": size, "body": body, "step": None})

    def mark(self, step: str) -> None:
        for op in self.ops:
            if op["step"] is None:
                op["step"] = step


def server_cpu(pgid: int) -> dict[int, float]:
    """CPU seconds (user + system) used so far by each Dagster process of the group, by pid:
    webserver, daemon, code servers (and run workers while they live)."""
    out = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[2]) == pgid:  # fields after the name: state, ppid, pgrp, …, utime (12), stime (13)
            out[int(entry.name)] = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return out


def browser_cpu() -> dict[int, float]:
    """CPU seconds used so far by each of this process's Chromium descendants (browser, renderers,
    GPU…), by pid: a step's CPU is the growth of those alive at its end (a renderer that exits
    during the step takes its share with it, so the figure is a floor)."""
    parents, stats = {}, {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            text = (entry / "stat").read_text()
        except OSError:
            continue
        name, fields = text[text.index("(") + 1 : text.rindex(")")], text.rsplit(")", 1)[1].split()
        parents[int(entry.name)] = int(fields[1])
        stats[int(entry.name)] = (name, (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK"))
    me, out = os.getpid(), {}
    for pid, (name, seconds) in stats.items():
        if "chrom" not in name:
            continue
        ancestor = parents.get(pid)
        while ancestor and ancestor != me:
            ancestor = parents.get(ancestor)
        if ancestor == me:
            out[pid] = seconds
    return out


def cpu_growth(before: dict[int, float], after: dict[int, float]) -> float:
    return sum(seconds - before.get(pid, 0.0) for pid, seconds in after.items())


def run_browser_steps(url: str, args, expect_materialized: int, profile: str, pgid: int | None = None
                      ) -> tuple[dict, list[dict], list[str], dict]:
    """Every step `args.repeats` times, each in a fresh browser context; returns
    ({step: [seconds]}, GraphQL ops seen, notes)."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout
    from playwright.sync_api import sync_playwright

    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    timings: dict[str, list[float]] = {step: [] for step in STEPS}
    cpu: dict[str, list[float]] = {step: [] for step in STEPS}
    client: dict[str, list[float]] = {step: [] for step in STEPS}
    recorder = Recorder()
    notes: list[str] = []
    pick = f"m{min(777, args.merchants - 1 - args.never_synced):04d}"
    total = args.merchants

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        for repeat in range(args.repeats):
            context = browser.new_context(viewport={"width": 1600, "height": 1000})
            context.set_default_timeout(WAIT_MS)
            page = context.new_page()
            recorder.attach(page)
            # The community dialog shows on a new instance; dismiss it whenever it appears.
            page.add_locator_handler(page.get_by_role("button", name="Skip"), lambda skip: skip.click())

            def timed(step: str, action, check) -> None:
                began, cpu_began, client_began = time.monotonic(), server_cpu(pgid) if pgid else {}, browser_cpu()
                try:
                    action()
                    check()
                    seconds = time.monotonic() - began
                    timings[step].append(seconds)
                    client[step].append(cpu_growth(client_began, browser_cpu()))
                    if pgid:
                        cpu[step].append(cpu_growth(cpu_began, server_cpu(pgid)))
                    log(f"  {profile} #{repeat + 1} {step}: {seconds:.2f}s"
                        + (f", Dagster processes' CPU {cpu[step][-1]:.2f}s" if pgid else "")
                        + f", Chromium CPU {client[step][-1]:.2f}s")
                except PlaywrightTimeout as error:
                    shot = SCREENSHOTS / f"{profile}-{repeat + 1}-{step}-timeout.png"
                    page.screenshot(path=str(shot))
                    notes.append(f"{profile} #{repeat + 1} {step}: no key content within {WAIT_MS / 1000:.0f}s"
                                 f" ({str(error).splitlines()[0]}); screenshot {shot}")
                    log(notes[-1])
                    timings[step].append(float("nan"))
                recorder.mark(step)
                if repeat == 0:
                    page.screenshot(path=str(SCREENSHOTS / f"{profile}-{step}.png"))

            def group_node(name: str):
                return page.locator("[class*='CollapsedGroupNode_collapsedGroupNodeBox']", has_text=name).first

            # 1. The asset graph, groups collapsed as a new visitor sees it.
            timed("graph", lambda: page.goto(f"{url}/asset-groups", wait_until="commit"),
                  lambda: (group_node("products").wait_for(), group_node("collections").wait_for()))

            def expand():
                for group in ("products", "collections"):
                    group_node(group).dblclick()

            def four_nodes():
                counts = page.get_by_text(f"{total:,} partitions", exact=True)
                deadline = time.monotonic() + WAIT_MS / 1000
                while counts.count() < 4 and time.monotonic() < deadline:
                    page.wait_for_timeout(100)
                if counts.count() < 4:
                    raise PlaywrightTimeout(f"{counts.count()} of 4 asset nodes show {total:,} partitions")

            timed("graph_expanded", expand, four_nodes)

            # 2. The asset page: its latest materialization and that materialization's metadata.
            timed("asset_page", lambda: page.goto(f"{url}/assets/products_published", wait_until="commit"),
                  lambda: page.get_by_text("records_published", exact=True).first.wait_for())

            # 3. The Partitions tab: status counts and the merchants' list.
            def partitions_ready():
                page.get_by_text(re.compile(r"^Materialized \(\d")).first.wait_for()
                page.get_by_text("default", exact=True).first.wait_for()

            timed("partitions_tab",
                  lambda: page.goto(f"{url}/assets/products_published?view=partitions", wait_until="commit"),
                  partitions_ready)
            if repeat == 0:
                shown = page.get_by_text(re.compile(r"^Materialized \(\d")).first.inner_text()
                if shown != f"Materialized ({expect_materialized})":
                    notes.append(f"{profile}: the partitions tab shows {shown!r}, expected {expect_materialized}")

            # 4. One merchant: typed into the filter, clicked, its last sync's metadata.
            def click_partition():
                page.get_by_placeholder("Filter by name").fill(pick)
                page.get_by_text(pick, exact=True).first.click()

            timed("partition_click", click_partition,
                  lambda: (page.get_by_text("View all historical events").first.wait_for(),
                           page.get_by_text("records_published", exact=True).first.wait_for()))

            # 5. The Materialize dialog from the graph, its partition selector with every merchant.
            page.goto(f"{url}/asset-groups")  # the groups stay open in this context
            page.get_by_text(f"{total:,} partitions", exact=True).first.wait_for()
            dialog = page.locator(".dagster-dialog", has_text="Launch runs to materialize 4 assets")
            timed("dialog", lambda: page.get_by_role("button", name="Materialize all").click(),
                  lambda: dialog.get_by_text("Select a partition or create one").wait_for())
            timed("selector_open", lambda: dialog.get_by_text("Select a partition or create one").click(),
                  lambda: page.locator(".dagster-popover").get_by_text(f"Select all ({total})").wait_for())

            def pick_one():
                page.locator(".dagster-popover input:not([type=checkbox])").fill(pick)
                page.locator(".dagster-popover label", has_text=pick).click()

            timed("selector_pick", pick_one, lambda: dialog.get_by_text("1 partition", exact=True).wait_for())
            dialog.get_by_text("Launch runs to materialize 4 assets").click()  # closes the drop-down

            def all_ready():
                dialog.get_by_text(re.compile(rf"^{total:,} partitions$|^{total} partitions$")).first.wait_for()
                dialog.get_by_role("button", name="Launch backfill").wait_for()

            timed("select_all", lambda: dialog.get_by_role("button", name="All", exact=True).click(), all_ready)

            # 6. The same pages again in the same browser (its cache warm, the groups left open).
            timed("graph_warm", lambda: page.goto(f"{url}/asset-groups", wait_until="commit"), four_nodes)
            timed("partitions_tab_warm",
                  lambda: page.goto(f"{url}/assets/products_published?view=partitions", wait_until="commit"),
                  partitions_ready)
            context.close()
        browser.close()
    return timings, recorder.ops, notes, {"server": cpu, "browser": client}


def launch_backfill_once(url: str, args, profile: str, env: dict) -> dict:
    """From the dialog, a historic backfill of every merchant: timed until Dagster says it was
    created; then the pages while the daemon works on it; then cancelled."""
    from playwright.sync_api import sync_playwright

    import dagster as dg
    from dagster._core.execution.backfill import BulkActionStatus  # not exported by `dagster` in 1.13

    total = args.merchants
    out: dict = {}
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        context = browser.new_context(viewport={"width": 1600, "height": 1000})
        context.set_default_timeout(WAIT_MS)
        page = context.new_page()
        page.add_locator_handler(page.get_by_role("button", name="Skip"), lambda skip: skip.click())
        page.goto(f"{url}/asset-groups")
        page.locator("[class*='CollapsedGroupNode_collapsedGroupNodeBox']", has_text="products").first.wait_for()
        page.get_by_role("button", name="Materialize all").click()
        dialog = page.locator(".dagster-dialog", has_text="Launch runs to materialize 4 assets")
        dialog.get_by_role("button", name="All", exact=True).click()
        dialog.get_by_role("button", name="Launch backfill").wait_for()
        # The window as run config, as test_browser does it.
        dialog.get_by_text("Config", exact=True).click()
        dialog.get_by_role("button", name="Add config").click()
        editor = page.locator(".dagster-dialog", has_text="Config Editor")
        editor.locator(".CodeMirror").first.click()
        page.keyboard.insert_text(RUN_CONFIG)
        editor.get_by_text("No errors").wait_for()
        editor.get_by_role("button", name="Save config").click()
        editor.wait_for(state="hidden")
        dialog.get_by_text("Config saved").wait_for()
        page.screenshot(path=str(SCREENSHOTS / f"{profile}-backfill-dialog.png"))
        began = time.monotonic()
        dialog.get_by_role("button", name="Launch backfill").click()
        page.get_by_text("Created backfill").first.wait_for()
        out["launch_to_created"] = round(time.monotonic() - began, 2)
        log(f"  {profile} backfill created in {out['launch_to_created']}s")
        with environment(env), dg.DagsterInstance.get() as instance:
            backfill = instance.get_backfills()[0]
            out["backfill_id"] = backfill.backfill_id
            # The backfills list and the backfill's own page while the daemon works on it.
            began = time.monotonic()
            page.goto(f"{url}/runs/b/{backfill.backfill_id}", wait_until="commit")
            page.get_by_text(backfill.backfill_id).first.wait_for()
            page.get_by_text("products_published").first.wait_for()
            out["backfill_page"] = round(time.monotonic() - began, 2)
            page.screenshot(path=str(SCREENSHOTS / f"{profile}-backfill-page.png"))
            began = time.monotonic()
            page.goto(f"{url}/assets/products_published?view=partitions", wait_until="commit")
            page.get_by_text(re.compile(r"^Materialized \(\d")).first.wait_for()
            page.get_by_text("default", exact=True).first.wait_for()
            out["partitions_tab_during_backfill"] = round(time.monotonic() - began, 2)
            # How long until the daemon submits the backfill's first run.
            deadline = time.monotonic() + 300
            while time.monotonic() < deadline:
                runs = instance.get_run_records(dg.RunsFilter(tags={"dagster/backfill": backfill.backfill_id}), limit=1)
                if runs:
                    out["created_to_first_run"] = round(
                        runs[0].create_timestamp.timestamp() - backfill.backfill_timestamp, 1)
                    break
                time.sleep(1)
            began = time.monotonic()
            page.goto(f"{url}/asset-groups", wait_until="commit")
            page.locator("[class*='CollapsedGroupNode_collapsedGroupNodeBox']", has_text="products").first.wait_for()
            out["graph_during_backfill"] = round(time.monotonic() - began, 2)
            # Let it run a while, as a user would watch it: runs created, and the Runs page meanwhile.
            def backfill_runs():
                return instance.get_run_records(dg.RunsFilter(tags={"dagster/backfill": backfill.backfill_id}))

            until = backfill.backfill_timestamp + args.backfill_watch
            while time.time() < until:
                time.sleep(2)
            records = backfill_runs()
            out[f"runs_created_in_first_{args.backfill_watch}s"] = len(records)
            out[f"run_statuses_at_{args.backfill_watch}s"] = dict(sorted(
                {status: sum(r.dagster_run.status.value == status for r in records)
                 for status in {r.dagster_run.status.value for r in records}}.items()))
            began = time.monotonic()
            page.goto(f"{url}/runs", wait_until="commit")
            page.get_by_text(backfill.backfill_id).first.wait_for()  # its row in the runs table
            page.get_by_text("Loading runs").first.wait_for(state="hidden")
            out["runs_page_during_backfill"] = round(time.monotonic() - began, 2)
            page.screenshot(path=str(SCREENSHOTS / f"{profile}-runs-during-backfill.png"))
            began = time.monotonic()
            page.goto(f"{url}/assets/products_published?view=partitions", wait_until="commit")
            page.get_by_text(re.compile(r"^Materialized \(\d")).first.wait_for()
            page.get_by_text("default", exact=True).first.wait_for()
            out["partitions_tab_later_in_backfill"] = round(time.monotonic() - began, 2)
            page.screenshot(path=str(SCREENSHOTS / f"{profile}-partitions-during-backfill.png"))
            status_query = """query($id: String!) { partitionBackfillOrError(backfillId: $id) {
              ... on PartitionBackfill { status numPartitions numCancelable } } }"""
            payload, seconds, _ = graphql(url, status_query, {"id": backfill.backfill_id})
            out["backfill_status_query_seconds"] = round(seconds, 2)
            out["backfill_status_before_cancel"] = payload["data"]["partitionBackfillOrError"]
            cancel = """mutation($id: String!) { cancelPartitionBackfill(backfillId: $id) { __typename
              ... on PythonError { message } } }"""
            cancelled = time.monotonic()
            graphql(url, cancel, {"id": backfill.backfill_id})
            deadline = time.monotonic() + 900
            while time.monotonic() < deadline:
                backfill = instance.get_backfill(backfill.backfill_id)
                runs = backfill_runs()
                if backfill.status is not BulkActionStatus.CANCELING and all(r.dagster_run.is_finished for r in runs):
                    break
                time.sleep(2)
            out["cancel_to_all_runs_finished"] = round(time.monotonic() - cancelled, 1)
            offsets = sorted(r.create_timestamp.timestamp() - backfill.backfill_timestamp for r in runs)
            out["run_created_after_s"] = {f"run {n}": round(offsets[n - 1], 1) for n in (1, 10, 25, 26, 40, 50, 75, 100)
                                          if n <= len(offsets)}
            out["status_after_cancel"] = backfill.status.value
            out["runs_submitted"] = len(runs)
            out["run_statuses"] = sorted({r.dagster_run.status.value for r in runs})
        browser.close()
    return out


# --- GraphQL, direct --------------------------------------------------------------------------
OUR_QUERIES = {
    "partitionStats (counts)": """query { assetNodeOrError(assetKey: {path: ["products_published"]}) {
        ... on AssetNode { partitionStats { numMaterialized numMaterializing numFailed numPartitions } } } }""",
    "assetPartitionStatuses (health bar)": """query { assetNodeOrError(assetKey: {path: ["products_published"]}) {
        ... on AssetNode { assetPartitionStatuses { __typename ... on DefaultPartitionStatuses {
          materializedPartitions failedPartitions unmaterializedPartitions materializingPartitions } } } } }""",
    "partitionKeysByDimension (1,000 keys)": """query { assetNodeOrError(assetKey: {path: ["products_published"]}) {
        ... on AssetNode { partitionKeysByDimension { name partitionKeys } } } }""",
    "one partition's last materialization": """query { assetOrError(assetKey: {path: ["products_published"]}) {
        ... on Asset { assetMaterializations(partitions: ["%s"], limit: 1) { timestamp partition
          metadataEntries { label } } } } }""",
    "every materialization of the asset (limit N)": """query { assetOrError(assetKey: {path: ["products_published"]}) {
        ... on Asset { assetMaterializations(limit: %d) { timestamp partition } } } }""",
}


def time_graphql(url: str, ops: list[dict], args, top: int = 8) -> list[dict]:
    """The slowest distinct operations the UI sent (by their slowest time in the browser),
    replayed `args.repeats` times; then our own queries."""
    slowest: dict[str, dict] = {}
    for op in ops:
        if op["op"] and (op["op"] not in slowest or op["seconds"] > slowest[op["op"]]["seconds"]):
            slowest[op["op"]] = op
    chosen = sorted(slowest.values(), key=lambda o: -o["seconds"])[:top]
    pick = f"m{min(777, args.merchants - 1 - args.never_synced):04d}"
    rows = []
    plans = [(f"{o['op']} (UI, step {o['step']})", o["body"]) for o in chosen if o["body"].get("query")]
    for name, query in OUR_QUERIES.items():
        if "%s" in query:
            query = query % pick
        elif "%d" in query:
            query = query % (args.merchants * args.history)
        plans.append((f"{name} (ours)", {"query": query}))
    for name, body in plans:
        seconds, size, error = [], None, None
        for _ in range(args.repeats):
            try:
                _, took, size = graphql(url, body["query"], body.get("variables"), body.get("operationName"))
                seconds.append(took)
            except Exception as failure:  # record and go on
                error = str(failure)[:200]
                break
        rows.append({"name": name, "seconds": seconds, "bytes": size, "error": error})
        log(f"  graphql {name}: {[round(s, 2) for s in seconds]} {size} bytes {error or ''}")
    return rows


# --- results ----------------------------------------------------------------------------------
def stats(values: list[float]) -> tuple[str, str, str]:
    good = [v for v in values if v == v]
    if not good:
        return "—", "—", "—"
    failed = len(values) - len(good)
    return (f"{statistics.median(good):.2f}", f"{max(good):.2f}" + (f" ({failed} timed out)" if failed else ""),
            " / ".join("timeout" if v != v else f"{v:.2f}" for v in values))


STEP_TEXT = {
    "graph": "asset graph `/asset-groups` until both group nodes show (new visitor: groups collapsed)",
    "graph_expanded": "open both groups until the 4 asset nodes show “N partitions” (N = 1,000)",
    "asset_page": "`/assets/products_published` until the latest materialization's metadata shows",
    "partitions_tab": "`?view=partitions` until “Materialized (N)” and the merchant list show",
    "partition_click": "type a merchant in the list's filter, click it, until its metadata shows",
    "dialog": "“Materialize all…” on the graph until the launch dialog's partition selector shows",
    "selector_open": "open the partition selector until “Select all (N)” shows",
    "selector_pick": "type a merchant id in the selector's search, tick it, until “1 partition”",
    "select_all": "the “All” button until the dialog counts N partitions and offers “Launch backfill”",
    "graph_warm": "the asset graph again, same browser (cache warm, groups open), until the 4 nodes show N partitions",
    "partitions_tab_warm": "the Partitions tab again, same browser, until counts and list show",
}


def real_syncs_text(facts: dict) -> str:
    syncs = facts.get("real_syncs", [])
    return ", ".join(f"{r['merchant']} rc {r['rc']} in {r['seconds']} s" for r in syncs) or "none"


def write_markdown(path: Path, report: dict) -> None:
    args = report["args"]
    lines = [
        f"# The Dagster UI at {args['merchants']:,} merchants",
        "",
        f"`{report['command']}` (bench/ui_scale.py), {report['started']} UTC. Dagster {report['dagster']},"
        f" {report['chromium']}, Playwright {report['playwright']}. Machine: {os.cpu_count()} cores,"
        " shared (other people's benchmarks and tests ran at the same time: see the load averages).",
        "",
        f"Each step was done {args['repeats']} times, each time in a fresh browser context (empty cache, a new"
        " visitor), except the two *_warm steps (the same pages again in the same browser); the figure is the wall"
        " clock from the action (navigation or click) until the page's key content is visible. The instance: one"
        " dynamic partition per merchant (`ensure_merchant_partitions`), and a history of"
        f" {args['history']} syncs of each type per merchant recorded as runless materializations of the four assets"
        " (`instance.report_runless_asset_event`) with the metadata a sync writes (a tenth of the merchants, at most"
        f" {args['never_synced']}, never synced), plus up to {args['real_syncs']} merchants really synced"
        " (`python -m sync_pipeline.cli sync all --merchant …` against `sync-pipeline sandbox`). Every merchant is"
        " in the registry (daily hour 12 h from now, so no daily tick runs during the measurement). `dagster dev`"
        " ran webserver, daemon and code server.",
        "",
        "## Summary: median / max seconds", "",
        "| step | " + " | ".join(f"{p['facts']['profile']} ({p.get('merchants', '?'):,} merchants)"
                                  for p in report["profiles"]) + " |",
        "|---|" + "---:|" * len(report["profiles"]),
    ]
    for step in STEPS:
        cells = []
        for profile in report["profiles"]:
            median, maximum, _ = stats(profile.get("timings", {}).get(step, []))
            cells.append(f"{median} / {maximum}")
        lines.append(f"| {step} | " + " | ".join(cells) + " |")
    lines.append("")
    for profile in report["profiles"]:
        facts = profile["facts"]
        lines += [f"## Profile: {facts['profile']}", ""]
        if profile.get("error"):
            lines += [f"**Failed:** `{profile['error']}`", ""]
        storage = ("the repository's `dagster.yaml` (SQLite run/event/schedule storage in a temporary DAGSTER_HOME)"
                   if facts["profile"].startswith("sqlite") else
                   f"`deploy/dagster.yaml` (PostgreSQL {facts.get('pg_version', '?')}, fresh database"
                   f" `{facts.get('pg_database')}` on 127.0.0.1:5432, dropped afterwards)")
        lines += [
            f"- Instance: {storage}; {profile.get('merchants')} merchants, {profile.get('never_synced')} never synced.",
            f"- Set-up: {facts.get('partitions')} partitions added in {facts.get('partitions_seconds')} s;"
            f" history {facts.get('history', {}).get('events')} events in {facts.get('history', {}).get('seconds')} s;"
            f" registry {facts.get('register_seconds')} s; real syncs:"
            f" {real_syncs_text(facts)}.",
            f"- `dagster dev` answered and loaded the code location in {profile.get('startup_seconds', 0):.1f} s:"
            f" `{' '.join(profile.get('dagster_command', []))}`",
            f"- Environment: {', '.join(f'{k}={v}' for k, v in profile.get('env_shown', {}).items())}",
            f"- Load (`uptime`) before: `{profile.get('load_before')}`",
            f"- Load (`uptime`) after: `{profile.get('load_after')}`",
            "",
            "| step | what is timed | median s | max s | each run s | Dagster CPU s | Chromium CPU s |",
            "|---|---|---:|---:|---|---:|---:|",
        ]
        for step in STEPS:
            values = profile.get("timings", {}).get(step, [])
            median, maximum, each = stats(values)
            cpu_median = stats(profile.get("server_cpu", {}).get(step, []))[0]
            browser_median = stats(profile.get("browser_cpu", {}).get(step, []))[0]
            lines.append(f"| {step} | {STEP_TEXT[step]} | {median} | {maximum} | {each} | {cpu_median} | {browser_median} |")
        lines += ["", "CPU columns (medians): user + system seconds used during the step by the `dagster dev` process"
                  " group (webserver, daemon, code server) and by Chromium (all its processes), read from /proc:"
                  " the work each side did, whatever the machine's load. Wall clock beyond their sum is waiting"
                  " for a core on the shared machine (and the network between them)."]
        lines += ["", "GraphQL, POSTed directly to `/graphql` (the UI's slowest operations, replayed with the"
                  " browser's own query and variables; then ours):", "",
                  "| query | median s | max s | response bytes |", "|---|---:|---:|---:|"]
        for row in profile.get("graphql", []):
            median, maximum, _ = stats(row["seconds"])
            lines.append(f"| {row['name']} | {median} | {maximum} | {row['bytes'] or ''}"
                         f"{' error: ' + row['error'] if row['error'] else ''} |")
        slow = profile.get("browser_slowest", [])
        if slow:
            lines += ["", "Slowest GraphQL operations as the browser saw them (request to last byte):", "",
                      "| operation | step | s | bytes |", "|---|---|---:|---:|"]
            lines += [f"| {o['op']} | {o['step']} | {o['seconds']:.2f} | {o['bytes']} |" for o in slow]
        if profile.get("backfill"):
            lines += ["", "Historic backfill of all merchants launched from the dialog (once), then cancelled:", "",
                      "```", json.dumps(profile["backfill"], indent=2), "```"]
        if profile.get("notes"):
            lines += ["", "Notes:", ""] + [f"- {note}" for note in profile["notes"]]
        lines.append("")
    if STOPS:
        lines += ["Stopping what was started:", ""] + [f"- {stop}" for stop in STOPS] + [""]
    if report.get("findings"):
        lines += ["## Findings", ""] + [f"- {f}" for f in report["findings"]] + [""]
    lines += [f"Screenshots of the first repetition of each step: {SCREENSHOTS}/<profile>-<step>.png.", ""]
    path.write_text("\n".join(lines))


# --- main -------------------------------------------------------------------------------------
def run_profile(spec: str, args) -> dict:
    """`sqlite`, `postgres`, or either with `@N`: N merchants instead of --merchants (a baseline)."""
    profile, _, count = spec.partition("@")
    args = argparse.Namespace(**vars(args))
    if count:
        args.merchants = int(count)
    args.never_synced = min(args.never_synced, args.merchants // 10)
    args.real_syncs = min(args.real_syncs, args.merchants - 1 - args.never_synced)
    work = Path(tempfile.mkdtemp(prefix=f"ui_scale_{profile}_"))
    out: dict = {"facts": {"profile": profile}, "work": str(work), "spec": spec, "merchants": args.merchants,
                 "never_synced": args.never_synced, "real_syncs": args.real_syncs}
    dagster = None
    try:
        env, facts = build_instance(profile, work, args)
        out["facts"] = facts
        facts["profile"] = spec
        out["env_shown"] = {k: v for k, v in env.items() if k not in ("SYNC_SECRET_KEY",)}
        out["env_shown"]["SYNC_SECRET_KEY"] = "(42 chars)"
        log(f"{profile}: starting dagster dev")
        dagster, url, command, startup = start_dagster(env, work)
        out.update(dagster_command=command, startup_seconds=startup, url=url)
        log(f"{profile}: dagster dev up at {url} in {startup:.1f}s")
        time.sleep(5)  # let the daemon's first sensor ticks pass
        out["load_before"] = load()
        expect = args.merchants - args.never_synced
        timings, ops, notes, cpu = run_browser_steps(url, args, expect, profile, dagster.pid)
        out["timings"], out["notes"], out["server_cpu"], out["browser_cpu"] = timings, notes, cpu["server"], cpu["browser"]
        slowest = sorted(ops, key=lambda o: -o["seconds"])[:12]
        out["browser_slowest"] = [{k: o[k] for k in ("op", "step", "seconds", "bytes")} for o in slowest]
        out["graphql"] = time_graphql(url, ops, args)
        if args.launch_backfill:
            try:
                out["backfill"] = launch_backfill_once(url, args, profile, env)
            except Exception as error:
                out.setdefault("notes", []).append(f"backfill launch failed: {error!r}"[:500])
                log(traceback.format_exc())
        out["load_after"] = load()
    except Exception as error:
        out["error"] = repr(error)[:500]
        log(traceback.format_exc())
    finally:
        if dagster is not None:
            stop_group(dagster)
        stop_all()
        if not args.keep:
            drop_pg(out["facts"])
            shutil.rmtree(work, ignore_errors=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--merchants", type=int, default=1000, help="merchants (partitions), default included")
    parser.add_argument("--history", type=int, default=2, help="syncs of each type per merchant to record")
    parser.add_argument("--never-synced", type=int, default=10, help="merchants left without any sync")
    parser.add_argument("--real-syncs", type=int, default=3, help="merchants (m0001…) really synced against the sandbox")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--profiles", default="sqlite,postgres")
    parser.add_argument("--launch-backfill", action="store_true", help="also launch (and cancel) an all-merchant backfill")
    parser.add_argument("--backfill-watch", type=int, default=90, help="seconds to let the backfill run before cancelling")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directories and database")
    parser.add_argument("--out", default=str(RESULTS / "ui_scale.md"), help="the Markdown results")
    args = parser.parse_args()

    import dagster
    import playwright._repo_version as playwright_version

    chromium = subprocess.run([CHROMIUM, "--version"], capture_output=True, text=True).stdout.strip()
    report = {
        "command": " ".join([".venv/bin/python", "bench/ui_scale.py", *sys.argv[1:]]),
        "started": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M"),
        "dagster": dagster.__version__, "playwright": playwright_version.version, "chromium": chromium,
        "args": vars(args), "profiles": [], "findings": [],
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    signal.signal(signal.SIGTERM, lambda *_: (stop_all(), sys.exit(1)))
    try:
        for profile in args.profiles.split(","):
            log(f"profile {profile}; load {load()}")
            report["profiles"].append(run_profile(profile.strip(), args))
            Path(tempfile.gettempdir(), "ui_scale.json").write_text(json.dumps(report, indent=2, default=str))
            write_markdown(Path(args.out), report)
    finally:
        stop_all()
    log(f"wrote {args.out} (and {Path(tempfile.gettempdir(), 'ui_scale.json')})")


if __name__ == "__main__":
    main()

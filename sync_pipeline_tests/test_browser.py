"""The Dagster UI as a data engineer uses it: Debian's Chromium, driven by Playwright, against
`dagster dev` on a temporary instance. Several merchants are registered, each with its partition;
the test opens the asset graph, sees both entity types, and from the Materialize dialog syncs ONE
merchant over a historic window: it picks the merchant's partition, gives the window as run config
("Add config"), and launches. It then checks from the instance, the state store and the gateway
that exactly that merchant was synced, over exactly that window, and nobody else.

Dagster's dialog launches a selection of one partition as one run ("Launch 1 run", tagged
`dagster/partition`) and two or more as a backfill ("Launch backfill", one run per merchant,
tagged `dagster/backfill` and `dagster/asset_partition_range_*`); the saved config goes to every
run either way, and the checks below hold for both."""

import os
import shutil
import signal
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import pytest
import requests

from sync_pipeline.settings import REPO_ROOT

from .conftest import Sandbox, dagster_home, free_port, start_sandbox, stop_sandbox

CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = REPO_ROOT / "test-artifacts"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]

MERCHANTS = ["m0001", "m0002", "m0003"]
ALL_MERCHANTS = ["default", *MERCHANTS]
CHOSEN = "m0002"
WINDOW_START, WINDOW_END = "2025-03-01T00:00:00Z", "2025-04-01T00:00:00Z"
WINDOW = (datetime(2025, 3, 1, tzinfo=timezone.utc), datetime(2025, 4, 1, tzinfo=timezone.utc))
SYNC_ASSETS = ["collections_published", "collections_staged", "products_published", "products_staged"]
# Typed into the launchpad's editor as text input (not key presses), so the editor adds no indentation.
RUN_CONFIG = "ops:\n" + "".join(
    f"  {op}:\n    config:\n      start: \"{WINDOW_START}\"\n      end: \"{WINDOW_END}\"\n"
    for op in ("sync_products_step", "sync_collections_step")
)

pytestmark = pytest.mark.skipif(
    not os.path.exists(CHROMIUM) and not os.environ.get("CI"),
    reason="Debian's chromium is not installed (make test installs it when it can)",
)


@pytest.fixture
def merchants_sandbox():
    """The sandbox playing `default` and three more merchants with small catalogues."""
    box = start_sandbox("--merchants", "3", "--merchant-products", "200", "--merchant-collections", "10")
    yield box
    stop_sandbox(box)


@pytest.fixture
def merchants_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, merchants_sandbox: Sandbox) -> str:
    """A fresh instance, data dir and state store; the merchants in the registry and their
    partitions in the instance. Returns the state store's URL."""
    import dagster as dg

    from sync_pipeline.defs.partitions import ensure_merchant_partitions
    from sync_pipeline.merchants import MerchantRegistry, MerchantSpec
    from sync_pipeline.sandbox.merchants import merchant_credentials
    from sync_pipeline.settings import SANDBOX_GATEWAY_TOKEN, SANDBOX_PRODUCT_TOKEN
    from sync_pipeline.state import StateStore

    home = dagster_home(tmp_path / "dagster_home")
    shutil.copy(REPO_ROOT / "dagster.yaml", home / "dagster.yaml")  # the real run queue (it reads the cap below)
    state_url = f"sqlite:///{tmp_path / 'data' / 'state.db'}"
    (tmp_path / "data").mkdir()
    for name, value in {
        "DAGSTER_HOME": str(home),
        "SYNC_DATA_DIR": str(tmp_path / "data"),
        "SYNC_STATE_URL": state_url,
        "SYNC_SECRET_KEY": "browser-test-secret-key-0123456789abcdef",
        "SYNC_MAX_CONCURRENT_SYNCS": "4",
        "PRODUCT_SERVICE_URL": merchants_sandbox.url,
        "PRODUCT_SERVICE_TOKEN": SANDBOX_PRODUCT_TOKEN,
        "GATEWAY_URL": merchants_sandbox.url,
        "GATEWAY_TOKEN": SANDBOX_GATEWAY_TOKEN,
    }.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("SYNC_EXECUTOR", raising=False)  # the runs' own process

    store = StateStore(state_url)
    registry = MerchantRegistry(store)
    # Daily syncs far from now, so that no schedule tick while the test runs syncs anyone.
    far_hour = (datetime.now(timezone.utc).hour + 12) % 24
    registry.put(MerchantSpec(merchantId="default", syncHourUtc=far_hour))
    for merchant in MERCHANTS:
        registry.put(MerchantSpec(
            merchantId=merchant, apiToken=f"{merchant}-api-token-0123456789", syncHourUtc=far_hour,
            **merchant_credentials(merchants_sandbox.url, merchant),
        ))
    store.dispose()
    with dg.DagsterInstance.get() as instance:
        ensure_merchant_partitions(instance, ALL_MERCHANTS)
        assert instance.get_dynamic_partitions("merchants") == ALL_MERCHANTS
    return state_url


@pytest.fixture
def dagster_ui(merchants_env):
    """`dagster dev` (webserver and daemon) over the instance, with the environment above."""
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "dagster", "dev", "-w", str(REPO_ROOT / "workspace.yaml"), "-h", "127.0.0.1", "-p", str(port)],
        cwd=REPO_ROOT, env=dict(os.environ), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if requests.get(f"{url}/server_info", timeout=2).ok:
                break
        except requests.ConnectionError:
            pass
        time.sleep(0.5)
    else:
        os.killpg(process.pid, signal.SIGKILL)
        pytest.fail("dagster dev did not answer within 120s")
    yield url
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(30)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)


def ui_runs(instance) -> list:
    return [r.dagster_run for r in instance.get_run_records() if r.dagster_run.tags.get("dagster/from_ui") == "true"]


def run_merchant(run) -> str | None:
    """The merchant (partition) of a run, whether launched as one run or by a backfill."""
    tags = run.tags
    if "dagster/partition" in tags:
        return tags["dagster/partition"]
    start, end = tags.get("dagster/asset_partition_range_start"), tags.get("dagster/asset_partition_range_end")
    return start if start == end else f"{start}...{end}"


def wait_for_runs(instance, timeout: float = 180) -> list:
    """The UI's runs once they have all finished and no backfill has more to launch."""
    import dagster as dg

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        runs = ui_runs(instance)
        backfills_done = all(b.status is not dg.BulkActionStatus.REQUESTED for b in instance.get_backfills())
        if runs and backfills_done and all(run.is_finished for run in runs):
            return runs
        time.sleep(1)
    return ui_runs(instance)


def gateway(sandbox: Sandbox, merchant: str, entity_type: str) -> dict[str, dict]:
    prefix = "" if merchant == "default" else f"/m/{merchant}"
    response = requests.get(f"{sandbox.url}{prefix}/_admin/gateway/{entity_type}", timeout=30)
    response.raise_for_status()
    return response.json()["records"]


def source(sandbox: Sandbox, merchant: str, kind: str) -> dict:
    response = requests.get(f"{sandbox.url}/m/{merchant}/_admin/source/{kind}", timeout=30)
    response.raise_for_status()
    return response.json()


def updated_in_window(record: dict) -> bool:
    try:
        updated = datetime.fromisoformat(record["updatedAt"])
    except (KeyError, AttributeError, ValueError):
        return False
    return WINDOW[0] <= updated < WINDOW[1]


def test_one_merchant_historic_sync_launched_from_the_ui(dagster_ui, merchants_env, merchants_sandbox):
    import dagster as dg
    from playwright.sync_api import TimeoutError as PlaywrightTimeout
    from playwright.sync_api import expect, sync_playwright

    from sync_pipeline.domain import EntityType, SyncMode, SyncStatus
    from sync_pipeline.state import StateStore

    ARTIFACTS.mkdir(exist_ok=True)
    timings: dict[str, float] = {}
    began = time.monotonic()
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1600, "height": 1000})
        page.goto(f"{dagster_ui}/asset-groups")
        try:  # the community dialog shows once per new instance
            page.get_by_role("button", name="Skip").click(timeout=10_000)
            timings["skip"] = time.monotonic() - began
        except PlaywrightTimeout:
            pass
        for group in ("collections", "products"):
            page.get_by_text(group, exact=True).last.dblclick()
            page.wait_for_timeout(500)
        for asset in SYNC_ASSETS:
            page.get_by_text(asset, exact=True).first.wait_for(timeout=30_000)
        page.get_by_text(f"{len(ALL_MERCHANTS)} partitions").first.wait_for(timeout=10_000)
        page.screenshot(path=str(ARTIFACTS / "asset-graph.png"))
        timings["asset_graph"] = time.monotonic() - began

        # The Materialize dialog: the merchant's partition, picked from the dynamic partitions.
        page.get_by_role("button", name="Materialize all").click()
        dialog = page.locator(".dagster-dialog", has_text="Launch runs to materialize 4 assets")
        dialog.get_by_text("Select a partition or create one").click()
        page.locator(".dagster-popover input:not([type=checkbox])").fill(CHOSEN)
        page.locator(".dagster-popover label", has_text=CHOSEN).click()
        dialog.get_by_text("Launch runs to materialize 4 assets").click()  # closes the drop-down
        dialog.get_by_text("1 partition", exact=True).wait_for(timeout=10_000)

        # The window as run config: Config > Add config opens the launchpad's editor.
        dialog.get_by_text("Config", exact=True).click()
        dialog.get_by_role("button", name="Add config").click()
        editor = page.locator(".dagster-dialog", has_text="Config Editor")
        editor.locator(".CodeMirror").first.click()
        page.keyboard.insert_text(RUN_CONFIG)
        checking = editor.get_by_text("Checking config")  # the editor validates against the job's config schema
        try:
            checking.wait_for(timeout=3_000)
        except PlaywrightTimeout:
            pass  # already checked
        checking.wait_for(state="hidden", timeout=30_000)
        editor.get_by_text("No errors").wait_for(timeout=10_000)
        expect(editor.get_by_role("button", name="Save config")).to_be_enabled()
        page.screenshot(path=str(ARTIFACTS / "backfill-config.png"))
        editor.get_by_role("button", name="Save config").click()
        editor.wait_for(state="hidden")
        dialog.get_by_text("Config saved").wait_for(timeout=10_000)
        launch = dialog.get_by_role("button", name="Launch 1 run").or_(dialog.get_by_role("button", name="Launch backfill"))
        launch_label = launch.inner_text()
        page.screenshot(path=str(ARTIFACTS / "backfill-dialog.png"))
        launch.click()
        page.get_by_text("Launched run").or_(page.get_by_text("Created backfill")).first.wait_for(timeout=30_000)
        timings["ui_to_launch"] = time.monotonic() - began

        with dg.DagsterInstance.get() as instance:
            launched = time.monotonic()
            runs = wait_for_runs(instance)
            timings["runs"] = time.monotonic() - launched
            all_runs = [r.dagster_run for r in instance.get_run_records()]
            backfills = instance.get_backfills()

        page.goto(f"{dagster_ui}/assets/products_published?view=partitions")
        page.get_by_text("Materialized (1)").wait_for(timeout=30_000)
        page.get_by_text("Missing (3)").wait_for(timeout=30_000)
        page.get_by_text(CHOSEN, exact=True).first.click()
        page.get_by_text("records_published").wait_for(timeout=30_000)
        page.wait_for_timeout(1000)
        page.screenshot(path=str(ARTIFACTS / "partitions.png"))
        browser.close()
    print(f"\nlaunched with {launch_label!r}; runs {[r.run_id[:8] for r in runs]}; backfills"
          f" {[b.backfill_id for b in backfills]}; timings {({k: round(v, 1) for k, v in timings.items()})}")

    # Dagster: runs of the chosen merchant only, all four assets, the config as given, all SUCCESS.
    assert runs, "no run was launched from the UI"
    assert {run_merchant(run) for run in runs} == {CHOSEN}, [(r.run_id, r.tags) for r in runs]
    assert all(run.status is dg.DagsterRunStatus.SUCCESS for run in runs), [(r.run_id, r.status) for r in runs]
    assert sorted({k.to_user_string() for run in runs for k in run.asset_selection}) == SYNC_ASSETS
    config = {"start": WINDOW_START, "end": WINDOW_END}
    assert all(run.run_config == {"ops": {"sync_products_step": {"config": config},
                                          "sync_collections_step": {"config": config}}} for run in runs)
    others = [r for r in all_runs if r.run_id not in {run.run_id for run in runs}]
    assert not [r for r in others if r.asset_selection and set(r.asset_selection) & {dg.AssetKey(k) for k in SYNC_ASSETS}]

    # State store: one historic sync per entity type, of exactly the window, for the chosen merchant only.
    store = StateStore(merchants_env)
    syncs, _ = store.list_syncs()
    store.dispose()
    assert {s.merchant_id for s in syncs} == {CHOSEN}, [(s.merchant_id, s.entity_type) for s in syncs]
    assert sorted(s.entity_type.value for s in syncs) == ["COLLECTION", "PRODUCT"]

    # Gateway: for the chosen merchant, exactly the source's valid records updated in the window.
    for entity, kind in ((EntityType.PRODUCT, "products"), (EntityType.COLLECTION, "collections")):
        [sync] = [s for s in syncs if s.entity_type is entity]
        assert sync.mode is SyncMode.HISTORIC and sync.requested_mode is SyncMode.HISTORIC
        assert (sync.window_start, sync.window_end) == WINDOW
        assert sync.run_id in {run.run_id for run in runs}
        catalogue = source(merchants_sandbox, CHOSEN, kind)
        in_window = [r for r in catalogue["records"] if updated_in_window(r)]
        assert in_window, f"the sandbox's {kind} of {CHOSEN} have no record updated in the window"
        expected = {r["id"] for r in in_window} - set(catalogue["invalid"]) - set(catalogue["refused"])
        assert sync.status is (SyncStatus.PARTIAL_SUCCESS if set(catalogue["refused"]) & {r["id"] for r in in_window}
                               else SyncStatus.SUCCESS), (sync.status, sync.error_message)
        assert sync.fetched == len(in_window)
        held = gateway(merchants_sandbox, CHOSEN, entity.value)
        assert set(held) == expected
        assert all(updated_in_window(record) for record in held.values())
        for merchant in ALL_MERCHANTS:
            if merchant != CHOSEN:
                assert gateway(merchants_sandbox, merchant, entity.value) == {}, merchant

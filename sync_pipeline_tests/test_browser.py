"""The Dagster UI as a data engineer uses it: Debian's Chromium, driven by Playwright, against
`dagster dev` on a temporary instance with real runs in it. Opens the asset graph, sees both
entity types, opens the partitions view, launches a backfill of three days, and checks from
the instance that exactly one run per entity type synced exactly that window."""

import os
import shutil
import signal
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
import requests

from sync_pipeline.settings import REPO_ROOT

from .conftest import free_port

CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = REPO_ROOT / "test-artifacts"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]

pytestmark = pytest.mark.skipif(
    not os.path.exists(CHROMIUM) and not os.environ.get("CI"),
    reason="Debian's chromium is not installed (make test installs it when it can)",
)


@pytest.fixture
def dagster_ui(sync_env, sandbox):
    """`dagster dev` (webserver and daemon) over a fresh instance that already holds a sync."""
    home = Path(os.environ["DAGSTER_HOME"])
    shutil.copy(REPO_ROOT / "dagster.yaml", home / "dagster.yaml")
    from sync_pipeline.cli import main

    assert main(["sync", "all"]) == 0  # real runs in the instance before the UI opens
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


def backfill_runs(instance) -> list:
    return [r.dagster_run for r in instance.get_run_records() if "dagster/backfill" in r.dagster_run.tags]


def test_a_backfill_launched_from_the_ui_is_one_run_per_entity_type(dagster_ui, sandbox):
    import dagster as dg
    from playwright.sync_api import sync_playwright

    from sync_pipeline.domain import EntityType, SyncMode
    from sync_pipeline.settings import state_url
    from sync_pipeline.state import StateStore

    ARTIFACTS.mkdir(exist_ok=True)
    today = datetime.now(timezone.utc).date()
    first, last = today - timedelta(days=40), today - timedelta(days=38)  # inside the dialog's 90 days
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1600, "height": 1000})
        page.goto(f"{dagster_ui}/asset-groups")
        try:  # the community dialog shows once per new instance
            page.get_by_role("button", name="Skip").click(timeout=10_000)
        except Exception:
            pass
        for group in ("collections", "products"):
            page.get_by_text(group, exact=True).last.dblclick()
            page.wait_for_timeout(500)
        for asset in ("products_staged", "products_published", "collections_staged", "collections_published"):
            page.get_by_text(asset, exact=True).first.wait_for(timeout=30_000)
        page.screenshot(path=str(ARTIFACTS / "asset-graph.png"))

        page.get_by_role("button", name="Materialize all").click()
        selection = page.get_by_placeholder("No matching partitions")
        selection.fill(f"[{first}...{last}]")
        selection.press("Enter")
        page.get_by_text("3 partitions").wait_for(timeout=10_000)
        page.screenshot(path=str(ARTIFACTS / "backfill-dialog.png"))
        page.get_by_role("button", name="Launch backfill").click()

        with dg.DagsterInstance.get() as instance:
            deadline = time.monotonic() + 180
            while time.monotonic() < deadline:
                runs = backfill_runs(instance)
                if len(runs) >= 2 and all(run.is_finished for run in runs):
                    break
                time.sleep(1)
            runs = backfill_runs(instance)
        page.goto(f"{dagster_ui}/assets/products_published?view=partitions")
        page.get_by_text("Materialized").first.wait_for(timeout=30_000)
        page.wait_for_timeout(2000)
        page.screenshot(path=str(ARTIFACTS / "partitions.png"))
        browser.close()

    assert len(runs) == 2, [run.run_id for run in runs]
    assert all(run.status.value == "SUCCESS" for run in runs)
    assert sorted(sorted(k.to_user_string() for k in run.asset_selection) for run in runs) == [
        ["collections_published", "collections_staged"], ["products_published", "products_staged"]]
    store = StateStore(state_url())
    start = datetime(first.year, first.month, first.day, tzinfo=timezone.utc)
    for entity, kind in ((EntityType.PRODUCT, "products"), (EntityType.COLLECTION, "collections")):
        [sync] = [s for s in store.history(entity) if s.run_id in {run.run_id for run in runs}]
        assert sync.mode is SyncMode.HISTORIC
        assert (sync.window_start, sync.window_end) == (start, start + timedelta(days=3))
        days = {(first + timedelta(days=d)).isoformat() for d in range(3)}
        in_range = [r for r in sandbox.source(kind)["records"] if r.get("updatedAt", "")[:10] in days]
        assert sync.fetched == len(in_range)
    store.dispose()

"""The daily syncs on a real instance: each enabled merchant in its own hour, a tick that only
reads, runs that take their lease when they start, and a tick for 1,000 merchants."""

import time
from datetime import datetime, timedelta, timezone

import dagster as dg
import pytest

from sync_pipeline.cli import main
from sync_pipeline.defs import build_defs
from sync_pipeline.defs.partitions import ensure_merchant_partitions
from sync_pipeline.defs.resources import StateStoreResource
from sync_pipeline.defs.runs import LEASE_TAG, MODE_TAG, ORIGIN_TAG, PARTITION_TAG, SYNC_TO_TAG
from sync_pipeline.domain import EntityType, SyncMode, SyncStatus, utcnow
from sync_pipeline.merchants import MerchantRegistry, MerchantSpec
from sync_pipeline.settings import state_url
from sync_pipeline.state import StateStore

SECRET = "a-test-secret-key-of-at-least-32-characters"


@pytest.fixture
def registry(sync_env, monkeypatch):
    monkeypatch.setenv("SYNC_SECRET_KEY", SECRET)
    monkeypatch.setenv("SYNC_RECONCILE_DAY", "off")  # every day a latest sync, unless a test says so
    return MerchantRegistry(StateStore(state_url()))


def add(registry: MerchantRegistry, merchant_id: str, hour: int, enabled: bool = True) -> None:
    registry.put(MerchantSpec(
        merchantId=merchant_id, productServiceUrl="http://127.0.0.1:9/", productServiceToken="p", gatewayToken="g",
        apiToken=f"{merchant_id}-api-token-0123456789", syncHourUtc=hour, enabled=enabled,
    ))


def evaluate_schedule(instance, name: str, when: datetime):
    defs = build_defs()
    schedule = defs.resolve_schedule_def(name)
    resources = {"state_store": StateStoreResource(url=state_url())}
    with dg.build_schedule_context(
        instance=instance, scheduled_execution_time=when, resources=resources, repository_def=defs.get_repository_def()
    ) as context:
        return schedule.evaluate_tick(context)


def at_hour(hour: int, day: int = 2) -> datetime:
    return datetime(2026, 3, day, hour, tzinfo=timezone.utc)  # 2026-03-02 is a Monday


def test_the_daily_schedule_ticks_every_hour_in_utc_and_runs_by_default():
    schedule = build_defs().resolve_schedule_def("daily_sync")
    assert (schedule.cron_schedule, schedule.execution_timezone) == ("0 * * * *", "UTC")
    assert schedule.default_status is dg.DefaultScheduleStatus.RUNNING


def test_a_tick_asks_for_each_merchant_due_in_its_hour_and_queues_nothing(registry):
    add(registry, "acme", 2)
    add(registry, "zeta", 5)
    add(registry, "gone", 2, enabled=False)
    with dg.DagsterInstance.get() as instance:
        result = evaluate_schedule(instance, "daily_sync", at_hour(2))
        later = evaluate_schedule(instance, "daily_sync", at_hour(5))
    assert [r.tags[PARTITION_TAG] for r in result.run_requests] == ["default", "acme"]  # default's hour is 2
    request = result.run_requests[1]
    assert request.tags[ORIGIN_TAG] == "schedule" and request.tags[SYNC_TO_TAG] == "2026-03-02T02:00:00Z"
    assert request.tags[LEASE_TAG] == "acme/PRODUCT"
    assert [r.tags[PARTITION_TAG] for r in later.run_requests] == ["zeta"]
    assert registry.store.active_syncs() == []  # evaluating a tick has no side effect


def test_a_weekly_full_reconcile_runs_half_a_day_after_each_merchants_daily_sync(registry, monkeypatch):
    add(registry, "acme", 2)
    assert "weekly_full_reconcile" not in {s.name for s in build_defs().schedules}  # switched off (`off`)
    monkeypatch.setenv("SYNC_RECONCILE_DAY", "sunday")
    reconcile = build_defs().resolve_schedule_def("weekly_full_reconcile")
    assert reconcile.cron_schedule == "0 * * * 0"
    with dg.DagsterInstance.get() as instance:
        daily = evaluate_schedule(instance, "daily_sync", at_hour(2, day=8))  # a Sunday: the daily sync is as ever
        full = evaluate_schedule(instance, "weekly_full_reconcile", at_hour(14, day=8))
    assert {r.tags[MODE_TAG] for r in daily.run_requests} == {"latest"}
    assert [(r.tags[PARTITION_TAG], r.tags[MODE_TAG]) for r in full.run_requests] == [("default", "full"), ("acme", "full")]
    assert all(SYNC_TO_TAG not in r.tags for r in full.run_requests)


def evaluate_chain(instance, cursor=None):
    defs = build_defs()
    with dg.build_sensor_context(instance=instance, cursor=cursor, repository_def=defs.get_repository_def()) as context:
        return defs.resolve_sensor_def("daily_collections_after_products").evaluate_tick(context)


def test_a_merchants_collections_follow_its_products_run_whatever_its_outcome(registry, sandbox):
    defs = build_defs()
    with dg.DagsterInstance.get() as instance:
        [request] = evaluate_schedule(instance, "daily_sync", at_hour(2)).run_requests
        assert evaluate_chain(instance).skip_message  # nothing has ended yet
        products = defs.resolve_job_def("sync_products").execute_in_process(instance=instance, tags=request.tags)
        assert products.success
        chained = evaluate_chain(instance)
        [collections] = chained.run_requests
        assert collections.job_name == "sync_collections" and collections.run_key == "default|COLLECTION|latest|2026-03-02T02:00:00+00:00"
        assert {k: collections.tags[k] for k in (PARTITION_TAG, MODE_TAG, SYNC_TO_TAG)} == {
            PARTITION_TAG: "default", MODE_TAG: "latest", SYNC_TO_TAG: "2026-03-02T02:00:00Z"}
        assert not evaluate_chain(instance, chained.cursor).run_requests  # asked for once
        run = defs.resolve_job_def("sync_collections").execute_in_process(instance=instance, tags=collections.tags)
        assert run.success
    [sync] = registry.store.history(EntityType.COLLECTION)
    [product_sync] = registry.store.history(EntityType.PRODUCT)
    assert sync.origin == "schedule" and sync.started_at > product_sync.finished_at


def test_a_scheduled_run_takes_its_lease_and_syncs_up_to_its_tick(registry, sandbox):
    assert main(["sync", "PRODUCT", "--mode", "full"]) == 0
    watermark = registry.store.watermark(EntityType.PRODUCT)
    tick = utcnow().replace(microsecond=0)
    defs = build_defs()
    with dg.DagsterInstance.get() as instance:
        [request] = evaluate_schedule(instance, "daily_sync", at_hour(2)).run_requests
        tags = {**request.tags, SYNC_TO_TAG: tick.isoformat()}
        run = defs.resolve_job_def("sync_products").execute_in_process(instance=instance, tags=tags)
    assert run.success
    [sync, _] = registry.store.history(EntityType.PRODUCT)
    assert (sync.origin, sync.mode, sync.status) == ("schedule", SyncMode.LATEST, SyncStatus.PARTIAL_SUCCESS)
    assert (sync.window_start, sync.window_end) == (watermark - timedelta(minutes=10), tick)  # the lookback


def test_a_scheduled_run_that_finds_its_type_busy_skips_quietly(registry):
    busy = registry.store.enqueue_sync(EntityType.PRODUCT, SyncMode.LATEST, origin="api")
    tags = {ORIGIN_TAG: "schedule", SYNC_TO_TAG: utcnow().isoformat()}
    with dg.DagsterInstance.get() as instance:
        ensure_merchant_partitions(instance, ["default"])
        run = build_defs().resolve_job_def("sync_products").execute_in_process(
            instance=instance, partition_key="default", tags=tags
        )
        materialized = instance.get_latest_materialization_event(dg.AssetKey("products_published"))
    assert run.success and materialized is None
    assert [s.sync_id for s in registry.store.history(EntityType.PRODUCT)] == [busy.sync_id]


def test_a_tick_for_a_thousand_merchants_takes_well_under_the_tick_timeout(registry, capsys):
    now = utcnow()
    from sync_pipeline.state.schema import merchants

    with registry.store.engine.begin() as conn:  # 1,000 rows at once; `add` would encrypt each
        conn.execute(merchants.insert(), [
            dict(merchant_id=f"m{i:04d}", product_service_url="http://x/", product_service_token="t", gateway_token="t",
                 sync_hour_utc=2, enabled=True, created_at=now, updated_at=now)
            for i in range(1000)
        ])
    with dg.DagsterInstance.get() as instance:
        started = time.perf_counter()
        result = evaluate_schedule(instance, "daily_sync", at_hour(2))
        seconds = time.perf_counter() - started
    assert len(result.run_requests) == 1001
    with capsys.disabled():
        print(f"\n  a tick for 1,000 merchants: {len(result.run_requests)} run requests in {seconds:.2f}s")
    assert seconds < 10  # Dagster's default tick timeout is 60 s


def test_the_daily_prune_job_runs_on_its_schedule(sync_env):
    schedule = build_defs().resolve_schedule_def("daily_prune_history")
    assert schedule.default_status is dg.DefaultScheduleStatus.RUNNING
    with dg.DagsterInstance.get() as instance:
        result = build_defs().resolve_job_def("prune_history").execute_in_process(instance=instance)
    assert result.success
    assert set(result.output_for_node("prune_state_store")) == {"record_events", "rejections", "batches", "syncs", "records"}

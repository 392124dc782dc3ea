"""The daily schedule on a real instance: a latest sync through the lease, skipped when busy;
and a range of days run as one historic sync per entity type."""

from datetime import datetime, timedelta, timezone

import dagster as dg

from sync_pipeline.cli import main
from sync_pipeline.defs import build_defs
from sync_pipeline.defs.partitions import RANGE_END_TAG, RANGE_START_TAG
from sync_pipeline.defs.resources import StateStoreResource
from sync_pipeline.defs.runs import ENTITY_TAG, SYNC_ID_TAG
from sync_pipeline.domain import EntityType, SyncMode, SyncStatus, utcnow
from sync_pipeline.settings import state_url
from sync_pipeline.state import StateStore


def evaluate_schedule(instance, name: str, when: datetime):
    schedule = build_defs().resolve_schedule_def(name)
    resources = {"state_store": StateStoreResource(url=state_url())}
    with dg.build_schedule_context(instance=instance, scheduled_execution_time=when, resources=resources) as context:
        return schedule.evaluate_tick(context)


def test_the_daily_schedule_runs_at_two_utc_by_default():
    schedule = build_defs().resolve_schedule_def("daily_products_sync")
    assert (schedule.cron_schedule, schedule.execution_timezone) == ("0 2 * * *", "UTC")
    assert schedule.default_status is dg.DefaultScheduleStatus.RUNNING


def test_a_tick_queues_a_latest_sync_up_to_the_tick_and_requests_its_run(sync_env):
    assert main(["sync", "PRODUCT", "--mode", "full"]) == 0
    store = StateStore(state_url())
    watermark = store.watermark(EntityType.PRODUCT)
    tick = utcnow().replace(microsecond=0)
    with dg.DagsterInstance.get() as instance:
        result = evaluate_schedule(instance, "daily_products_sync", tick)
    [request] = result.run_requests
    sync = store.get_sync(request.tags[SYNC_ID_TAG])
    assert (sync.status, sync.mode, sync.origin) == (SyncStatus.QUEUED, SyncMode.LATEST, "schedule")
    assert (sync.window_start, sync.window_end) == (watermark, tick)
    assert request.run_key == sync.sync_id and request.tags[ENTITY_TAG] == "PRODUCT"
    assert request.tags[RANGE_START_TAG] == request.tags[RANGE_END_TAG] == tick.date().isoformat()
    store.dispose()


def test_a_tick_is_skipped_with_the_reason_while_a_sync_of_the_type_is_busy(sync_env):
    store = StateStore(state_url())
    busy = store.enqueue_sync(EntityType.COLLECTION, SyncMode.LATEST, origin="api")
    with dg.DagsterInstance.get() as instance:
        result = evaluate_schedule(instance, "daily_collections_sync", utcnow())
    assert not result.run_requests
    assert busy.sync_id in result.skip_message and "queued" in result.skip_message
    assert [s.sync_id for s in store.history(EntityType.COLLECTION)] == [busy.sync_id]
    store.dispose()


def test_a_range_of_days_is_one_historic_sync_of_exactly_those_days(sync_env, sandbox):
    start, end = "2025-03-10", "2025-03-12"
    tags = {RANGE_START_TAG: start, RANGE_END_TAG: end}
    defs = build_defs()
    with dg.DagsterInstance.get() as instance:
        for job in ("sync_products", "sync_collections"):
            assert defs.resolve_job_def(job).execute_in_process(instance=instance, tags=tags).success
        runs = instance.get_run_records()
    assert len(runs) == 2
    store = StateStore(state_url())
    first = datetime(2025, 3, 10, tzinfo=timezone.utc)
    for entity, kind in ((EntityType.PRODUCT, "products"), (EntityType.COLLECTION, "collections")):
        [sync] = store.history(entity)
        assert sync.mode is SyncMode.HISTORIC
        assert (sync.window_start, sync.window_end) == (first, first + timedelta(days=3))
        in_range = {r["id"] for r in sandbox.source(kind)["records"]
                    if "id" in r and r.get("updatedAt", "")[:10] in ("2025-03-10", "2025-03-11", "2025-03-12")}
        assert sync.fetched == len(in_range) > 0
        held = set(sandbox.gateway(entity.value))
        assert held <= in_range and len(held) == sync.published
    store.dispose()


def test_the_checks_run_with_the_sync_and_refusals_turn_one_yellow(sync_env):
    assert main(["sync", "COLLECTION", "--mode", "full"]) == 0
    with dg.DagsterInstance.get() as instance:
        checks = {
            name: instance.event_log_storage.get_latest_asset_check_execution_by_key(
                [dg.AssetCheckKey(dg.AssetKey(asset), name)]
            )
            for asset, name in (("collections_staged", "rejected_share"), ("collections_published", "gateway_matches_staging"),
                                ("collections_published", "batch_failures"), ("collections_published", "fresh_within_26h"))
        }
    status = {name: next(iter(by_key.values())).status.value for name, by_key in checks.items()}
    # 2 of the 198 collections sent were refused (1.01% > 1%): a warning, the rest pass.
    assert status == {"rejected_share": "SUCCEEDED", "gateway_matches_staging": "SUCCEEDED",
                      "batch_failures": "FAILED", "fresh_within_26h": "SUCCEEDED"}


def test_the_freshness_check_goes_red_when_a_type_never_synced(sync_env):
    assert main(["sync", "PRODUCT", "--mode", "full"]) == 0
    with dg.DagsterInstance.get() as instance:
        result = build_defs().resolve_job_def("check_freshness").execute_in_process(instance=instance)
    evaluations = {e.asset_key.to_user_string(): e.passed for e in result.get_asset_check_evaluations()}
    assert evaluations == {"products_published": True, "collections_published": False}

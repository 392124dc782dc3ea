"""Sensors: queued sync requests (from the Sync API) become runs, one per sync; and every merchant
in the registry has its partition, so the UI lists it and its runs can be launched."""

from __future__ import annotations

import dagster as dg

from datetime import datetime, timezone

from ..domain import EntityType, SyncMode, SyncStatus, parse_time
from .partitions import MERCHANT_PARTITIONS, ensure_merchant_partitions, missing_merchant_partitions
from .resources import StateStoreResource
from .runs import MODE_TAG, ORIGIN_TAG, PARTITION_TAG, TICK_TAG, close_abandoned, job_name, run_tags_for
from .schedules import daily_run_request

LAUNCHED_BY_SENSOR = ("api",)
FINISHED = [dg.DagsterRunStatus.SUCCESS, dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.CANCELED]


def build_sync_requests_sensor(jobs: list) -> dg.SensorDefinition:
    return dg.SensorDefinition(
        name="sync_requests",
        evaluation_fn=sync_requests,
        minimum_interval_seconds=2,
        default_status=dg.DefaultSensorStatus.RUNNING,
        jobs=jobs,
        required_resource_keys={"state_store"},
        description="Launches each sync queued through the Sync API as a run (the sync id is the run key),"
        " and closes as 4900 Abandoned any sync whose run or process died.",
    )


def sync_requests(context: dg.SensorEvaluationContext):
    state_store: StateStoreResource = context.resources.state_store
    state = state_store.store()
    for abandoned in close_abandoned(state, context.instance):
        context.log.warning(f"closed sync {abandoned.sync_id} as Abandoned: {abandoned.error_message}")
    queued = [
        sync for sync in state.active_syncs()
        if sync.status is SyncStatus.QUEUED and sync.origin in LAUNCHED_BY_SENSOR
    ]
    if not queued:
        return dg.SkipReason("no queued sync requests")
    # A merchant added since the merchant_partitions sensor last ran gets its partition first.
    ensure_merchant_partitions(context.instance, [sync.merchant_id for sync in queued])
    return dg.SensorResult(
        run_requests=[
            dg.RunRequest(run_key=sync.sync_id, job_name=job_name(sync.entity_type), tags=run_tags_for(sync))
            for sync in queued
        ]
    )


def _missing_partitions(context: dg.SensorEvaluationContext, merchant_ids: list[str]) -> list:
    missing = missing_merchant_partitions(context.instance, merchant_ids)
    return [dg.AddDynamicPartitionsRequest(MERCHANT_PARTITIONS, missing)] if missing else []


def build_merchant_partitions_sensor() -> dg.SensorDefinition:
    @dg.sensor(
        name="merchant_partitions",
        minimum_interval_seconds=30,
        default_status=dg.DefaultSensorStatus.RUNNING,
        required_resource_keys={"state_store"},
        description="Adds a partition for every merchant in the registry (CLI or operator API), so the UI lists"
        " it; a disabled merchant keeps its partition and its history.",
    )
    def merchant_partitions(context: dg.SensorEvaluationContext):
        state_store: StateStoreResource = context.resources.state_store
        merchants = [merchant.merchant_id for merchant in state_store.registry().list()]
        requests = _missing_partitions(context, merchants)
        if not requests:
            return dg.SkipReason(f"all {len(merchants)} merchants have their partition")
        return dg.SensorResult(dynamic_partitions_requests=requests)

    return merchant_partitions


def build_collections_after_products_sensor() -> dg.SensorDefinition:
    @dg.sensor(
        name="daily_collections_after_products",
        minimum_interval_seconds=10,
        default_status=dg.DefaultSensorStatus.RUNNING,
        job_name=job_name(EntityType.COLLECTION),
        description="When a merchant's daily products run ends (whatever its outcome), asks for its collections"
        " run of the same day: collections are published after the products they reference.",
    )
    def daily_collections_after_products(context: dg.SensorEvaluationContext):
        since = datetime.fromtimestamp(float(context.cursor or 0), timezone.utc)
        ended = context.instance.get_run_records(
            dg.RunsFilter(
                job_name=job_name(EntityType.PRODUCT), tags={ORIGIN_TAG: "schedule"}, statuses=FINISHED,
                updated_after=since,
            ),
            order_by="update_timestamp", ascending=True, limit=1000,
        )
        if not ended:
            return dg.SkipReason("no daily products run has ended since the last look")
        requests = []
        for record in ended:
            tags = record.dagster_run.tags
            requests.append(
                daily_run_request(
                    tags[PARTITION_TAG], EntityType.COLLECTION, parse_time(tags[TICK_TAG]), SyncMode(tags[MODE_TAG])
                )
            )
        cursor = max(record.update_timestamp for record in ended).timestamp()
        return dg.SensorResult(run_requests=requests, cursor=str(cursor))

    return daily_collections_after_products

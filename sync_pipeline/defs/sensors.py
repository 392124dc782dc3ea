"""The sensor that turns queued sync requests (from the Sync API) into runs, one per sync."""

from __future__ import annotations

import dagster as dg

from ..domain import EntityType, SyncStatus
from .resources import StateStoreResource
from .runs import close_abandoned, run_tags_for

LAUNCHED_BY_SENSOR = ("api",)


def job_name(entity: EntityType) -> str:
    return f"sync_{entity.plural}"


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
    try:
        for abandoned in close_abandoned(state, context.instance):
            context.log.warning(f"closed sync {abandoned.sync_id} as Abandoned: {abandoned.error_message}")
        queued = [
            sync for sync in state.active_syncs()
            if sync.status is SyncStatus.QUEUED and sync.origin in LAUNCHED_BY_SENSOR
        ]
    finally:
        state.dispose()
    if not queued:
        return dg.SkipReason("no queued sync requests")
    return dg.SensorResult(
        run_requests=[
            dg.RunRequest(run_key=sync.sync_id, job_name=job_name(sync.entity_type), tags=run_tags_for(sync))
            for sync in queued
        ]
    )

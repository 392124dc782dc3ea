"""The daily sync of every merchant in its own hour, and the hourly freshness checks.

A tick only reads: it asks for a run per (merchant, type) due this hour that is not already
busy, and each run takes its lease when it starts. So evaluating the schedule (a retried tick,
*Test schedule* in the UI, a preview) never leaves a queued sync behind that no run will pick up."""

import dagster as dg

from ..domain import EntityType, SyncMode, utcnow
from ..merchants import MerchantRegistry
from ..settings import reconcile_weekday
from .partitions import ensure_merchant_partitions
from .resources import StateStoreResource
from .runs import PARTITION_TAG, scheduled_run_tags

HOURLY_CRON = "0 * * * *"
FRESHNESS_CRON = "17 * * * *"


def daily_sync_requests(registry: MerchantRegistry, entity: EntityType, tick) -> list[dg.RunRequest] | dg.SkipReason:
    """A latest sync of `entity`, up to the tick, for each enabled merchant due in the tick's
    hour; on the reconcile day (SYNC_RECONCILE_DAY, default Sunday) a full one, which catches
    anything a latest window could not see and propagates deletions, under the deletion guard."""
    due = registry.due_at(tick.hour)
    busy = {sync.merchant_id for sync in registry.store.active_syncs() if sync.entity_type is entity}
    mode = SyncMode.FULL if tick.weekday() == reconcile_weekday() else SyncMode.LATEST
    requests = [
        dg.RunRequest(
            run_key=f"{merchant}|{entity.value}|{tick.isoformat()}", tags=scheduled_run_tags(merchant, entity, tick, mode)
        )
        for merchant in due
        if merchant not in busy
    ]
    if not requests:
        return dg.SkipReason(
            f"no merchant is due at {tick.hour:02d}:00 UTC" if not due
            else f"every {entity.value} sync due at {tick.hour:02d}:00 UTC is already queued or running: "
            + ", ".join(sorted(busy & set(due))[:10])
        )
    return requests


def build_daily_schedule(entity: EntityType, job) -> dg.ScheduleDefinition:
    def evaluate(context: dg.ScheduleEvaluationContext):
        state_store: StateStoreResource = context.resources.state_store
        tick = min(context.scheduled_execution_time or utcnow(), utcnow())
        result = daily_sync_requests(state_store.registry(), entity, tick)
        if isinstance(result, dg.SkipReason):
            yield result
            return
        # A merchant added since the merchant_partitions sensor last ran gets its partition now:
        # a run request for a partition that does not exist would fail the whole tick.
        ensure_merchant_partitions(context.instance, [request.tags[PARTITION_TAG] for request in result])
        yield from result

    return dg.ScheduleDefinition(
        name=f"daily_{entity.plural}_sync",
        cron_schedule=HOURLY_CRON,
        execution_timezone="UTC",
        job=job,
        execution_fn=evaluate,
        required_resource_keys={"state_store"},
        default_status=dg.DefaultScheduleStatus.RUNNING,
        description=f"Every hour, a latest {entity.value} sync, up to the tick, of each enabled merchant whose"
        " syncHourUtc it is (default 02:00 UTC); on the reconcile day (SYNC_RECONCILE_DAY, default Sunday) a"
        " full one. A merchant whose sync of the type is already queued or running is skipped.",
    )


def build_freshness_schedule(job) -> dg.ScheduleDefinition:
    return dg.ScheduleDefinition(
        name="hourly_freshness_checks",
        cron_schedule=FRESHNESS_CRON,
        job=job,
        default_status=dg.DefaultScheduleStatus.RUNNING,
        description="Runs the freshness checks every hour, so a missed daily sync goes red on its own.",
    )

"""The daily sync of every merchant in its own hour, and the hourly freshness checks.

A tick only reads: it asks for a products run per merchant due this hour, and each run takes
its lease when it starts (or, finding its (merchant, type) busy, skips quietly; the run queue
holds it behind a queued one). So evaluating the schedule (a retried tick, *Test schedule* in the
UI, a preview) never leaves a queued sync behind that no run will pick up. Each merchant's
collections follow when its products run ends (sensors.py): collections are published after
the products they reference."""

import dagster as dg

from ..domain import EntityType, SyncMode, utcnow
from ..merchants import MerchantRegistry
from ..settings import reconcile_weekday
from .partitions import ensure_merchant_partitions
from .resources import StateStoreResource
from .runs import PARTITION_TAG, job_name, scheduled_run_tags

HOURLY_CRON = "0 * * * *"
FRESHNESS_CRON = "17 * * * *"


def daily_mode(tick) -> SyncMode:
    """Latest, or on the reconcile day (SYNC_RECONCILE_DAY, default Sunday) full: a full sync
    catches anything a latest window could not see and propagates deletions (under the guard)."""
    return SyncMode.FULL if tick.weekday() == reconcile_weekday() else SyncMode.LATEST


def daily_run_request(merchant: str, entity: EntityType, tick, mode: SyncMode) -> dg.RunRequest:
    return dg.RunRequest(
        run_key=f"{merchant}|{entity.value}|{tick.isoformat()}", job_name=job_name(entity),
        tags=scheduled_run_tags(merchant, entity, tick, mode),
    )


def daily_sync_requests(registry: MerchantRegistry, tick) -> list[dg.RunRequest] | dg.SkipReason:
    """A products sync, up to the tick, for each enabled merchant due in the tick's hour."""
    due = registry.due_at(tick.hour)
    if not due:
        return dg.SkipReason(f"no merchant is due at {tick.hour:02d}:00 UTC")
    mode = daily_mode(tick)
    return [daily_run_request(merchant, EntityType.PRODUCT, tick, mode) for merchant in due]


def build_daily_schedule(job) -> dg.ScheduleDefinition:
    def evaluate(context: dg.ScheduleEvaluationContext):
        state_store: StateStoreResource = context.resources.state_store
        tick = min(context.scheduled_execution_time or utcnow(), utcnow())
        result = daily_sync_requests(state_store.registry(), tick)
        if isinstance(result, dg.SkipReason):
            yield result
            return
        # A merchant added since the merchant_partitions sensor last ran gets its partition now:
        # a run request for a partition that does not exist would fail the whole tick.
        ensure_merchant_partitions(context.instance, [request.tags[PARTITION_TAG] for request in result])
        yield from result

    return dg.ScheduleDefinition(
        name="daily_sync",
        cron_schedule=HOURLY_CRON,
        execution_timezone="UTC",
        job=job,
        execution_fn=evaluate,
        required_resource_keys={"state_store"},
        default_status=dg.DefaultScheduleStatus.RUNNING,
        description="Every hour, a latest products sync, up to the tick, of each enabled merchant whose syncHourUtc"
        " it is (default 02:00 UTC), then its collections (sensor daily_collections_after_products); on the"
        " reconcile day (SYNC_RECONCILE_DAY, default Sunday) full ones.",
    )


def build_freshness_schedule(job) -> dg.ScheduleDefinition:
    return dg.ScheduleDefinition(
        name="hourly_freshness_checks",
        cron_schedule=FRESHNESS_CRON,
        job=job,
        default_status=dg.DefaultScheduleStatus.RUNNING,
        description="Runs the freshness checks every hour, so a missed daily sync goes red on its own.",
    )

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


RECONCILE_OFFSET_HOURS = 12  # a merchant's weekly full sync, half a day from its daily one


def daily_run_request(merchant: str, entity: EntityType, tick, mode: SyncMode) -> dg.RunRequest:
    return dg.RunRequest(
        run_key=f"{merchant}|{entity.value}|{mode.value}|{tick.isoformat()}", job_name=job_name(entity),
        tags=scheduled_run_tags(merchant, entity, tick, mode),
    )


def daily_sync_requests(registry: MerchantRegistry, tick, mode: SyncMode = SyncMode.LATEST) -> list[dg.RunRequest] | dg.SkipReason:
    """A products sync, up to the tick, for each enabled merchant due in the tick's hour: its
    daily latest sync, or (`full`) its weekly reconcile, RECONCILE_OFFSET_HOURS after that hour."""
    hour = tick.hour if mode is SyncMode.LATEST else (tick.hour - RECONCILE_OFFSET_HOURS) % 24
    due = registry.due_at(hour)
    if not due:
        return dg.SkipReason(f"no merchant is due at {tick.hour:02d}:00 UTC")
    return [daily_run_request(merchant, EntityType.PRODUCT, tick, mode) for merchant in due]


def _schedule(name: str, cron: str, job, mode: SyncMode, description: str) -> dg.ScheduleDefinition:
    def evaluate(context: dg.ScheduleEvaluationContext):
        state_store: StateStoreResource = context.resources.state_store
        tick = min(context.scheduled_execution_time or utcnow(), utcnow())
        result = daily_sync_requests(state_store.registry(), tick, mode)
        if isinstance(result, dg.SkipReason):
            yield result
            return
        # A merchant added since the merchant_partitions sensor last ran gets its partition now:
        # a run request for a partition that does not exist would fail the whole tick.
        ensure_merchant_partitions(context.instance, [request.tags[PARTITION_TAG] for request in result])
        yield from result

    return dg.ScheduleDefinition(
        name=name, cron_schedule=cron, execution_timezone="UTC", job=job, execution_fn=evaluate,
        required_resource_keys={"state_store"}, default_status=dg.DefaultScheduleStatus.RUNNING, description=description,
    )


def build_daily_schedule(job) -> dg.ScheduleDefinition:
    return _schedule(
        "daily_sync", HOURLY_CRON, job, SyncMode.LATEST,
        "Every hour, a latest products sync, up to the tick, of each enabled merchant whose syncHourUtc it is"
        " (default 02:00 UTC), then its collections (sensor daily_collections_after_products).",
    )


def build_reconcile_schedule(job) -> dg.ScheduleDefinition | None:
    """The weekly full reconcile: on SYNC_RECONCILE_DAY (default Sunday; `off`: none), a full sync
    of each merchant, RECONCILE_OFFSET_HOURS after its daily sync hour. It catches what latest
    windows could not see (records committed later than the lookback) and propagates deletions,
    under the deletion guard."""
    weekday = reconcile_weekday()
    if weekday is None:
        return None
    cron_day = (weekday + 1) % 7  # cron counts from Sunday, Python from Monday
    return _schedule(
        "weekly_full_reconcile", f"0 * * * {cron_day}", job, SyncMode.FULL,
        f"Every hour of the reconcile day (SYNC_RECONCILE_DAY), a full products sync, then collections, of each"
        f" enabled merchant whose syncHourUtc was {RECONCILE_OFFSET_HOURS} hours before: deletions and anything"
        " a latest window missed, under the deletion guard.",
    )


def build_freshness_schedule(job) -> dg.ScheduleDefinition:
    return dg.ScheduleDefinition(
        name="hourly_freshness_checks",
        cron_schedule=FRESHNESS_CRON,
        job=job,
        default_status=dg.DefaultScheduleStatus.RUNNING,
        description="Runs the freshness checks every hour, so a missed daily sync goes red on its own.",
    )

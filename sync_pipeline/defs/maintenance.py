"""Keeping the state store bounded: a daily job prunes what is older than SYNC_RETENTION_DAYS and
not needed (state/retention.py)."""

import dagster as dg

from ..settings import retention_days
from .resources import StateStoreResource

PRUNE_CRON = "40 4 * * *"


@dg.op(required_resource_keys={"state_store"})
def prune_state_store(context: dg.OpExecutionContext) -> dict:
    """Deletes syncs, batches, rejections and record events older than the retention, keeping
    each (merchant, type)'s last successful sync and every record's current state."""
    state_store: StateStoreResource = context.resources.state_store
    days = retention_days()
    pruned = state_store.store().prune_history(days)
    context.log.info(f"pruned what is older than {days:g} days: " + ", ".join(f"{n} {table}" for table, n in pruned.items()))
    return pruned


@dg.job(description="Prunes the state store's history older than SYNC_RETENTION_DAYS (default 90).")
def prune_history():
    prune_state_store()


prune_schedule = dg.ScheduleDefinition(
    name="daily_prune_history",
    cron_schedule=PRUNE_CRON,
    execution_timezone="UTC",
    job=prune_history,
    default_status=dg.DefaultScheduleStatus.RUNNING,
    description="Every day at 04:40 UTC, prunes history older than SYNC_RETENTION_DAYS (default 90 days).",
)

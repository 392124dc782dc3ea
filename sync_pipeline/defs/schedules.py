"""The daily latest sync of each entity type, through the same lease as every other way in."""


import os

import dagster as dg

from ..domain import EntityType, SyncMode, utcnow
from ..errors import EntityBusy
from .resources import StateStoreResource
from .runs import close_abandoned, run_tags_for

DAILY_CRON = os.environ.get("SYNC_SCHEDULE_CRON", "0 2 * * *")
TIMEZONE = os.environ.get("SYNC_SCHEDULE_TIMEZONE", "UTC")
FRESHNESS_CRON = "17 * * * *"


def build_daily_schedule(entity: EntityType, job) -> dg.ScheduleDefinition:
    def evaluate(context: dg.ScheduleEvaluationContext):
        state_store: StateStoreResource = context.resources.state_store
        state = state_store.store()
        try:
            close_abandoned(state, context.instance, entity)
            sync_to = min(context.scheduled_execution_time or utcnow(), utcnow())
            sync = state.enqueue_sync(entity, SyncMode.LATEST, origin="schedule", sync_to=sync_to)
        except EntityBusy as busy:
            return dg.SkipReason(f"skipped: {busy}. The next tick syncs from where the last success ended.")
        except ValueError as error:
            return dg.SkipReason(f"skipped: {error}")
        finally:
            state.dispose()
        return dg.RunRequest(run_key=sync.sync_id, tags=run_tags_for(sync))

    return dg.ScheduleDefinition(
        name=f"daily_{entity.plural}_sync",
        cron_schedule=DAILY_CRON,
        execution_timezone=TIMEZONE,
        job=job,
        execution_fn=evaluate,
        required_resource_keys={"state_store"},
        default_status=dg.DefaultScheduleStatus.RUNNING,
        description=f"A latest {entity.value} sync every day ({DAILY_CRON}, {TIMEZONE}); skipped, with the"
        " reason, while a sync of the type is queued or running.",
    )


def build_freshness_schedule(job) -> dg.ScheduleDefinition:
    return dg.ScheduleDefinition(
        name="hourly_freshness_checks",
        cron_schedule=FRESHNESS_CRON,
        job=job,
        default_status=dg.DefaultScheduleStatus.RUNNING,
        description="Runs the freshness checks every hour, so a missed daily sync goes red on its own.",
    )

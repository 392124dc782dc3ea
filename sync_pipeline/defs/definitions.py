"""The one Definitions object: assets, checks, jobs, schedules and the sensor, with resources."""

from __future__ import annotations

import dagster as dg

from ..domain import EntityType
from .assets import build_sync_assets
from .checks import build_freshness_check
from .executors import sync_executor
from .maintenance import prune_history, prune_schedule
from .resources import default_resources
from .runs import ENTITY_TAG
from .schedules import build_daily_schedule, build_freshness_schedule, build_reconcile_schedule
from .runs import job_name
from .sensors import build_collections_after_products_sensor, build_merchant_partitions_sensor, build_sync_requests_sensor


def build_defs() -> dg.Definitions:
    assets, freshness_checks, jobs, schedules = [], [], [], []
    for entity in EntityType:
        step = build_sync_assets(entity)
        assets.append(step)
        freshness = build_freshness_check(entity, dg.AssetKey(f"{entity.plural}_published"))
        freshness_checks.append(freshness)
        job = dg.define_asset_job(
            job_name(entity),
            # The freshness check looks at every merchant: it runs hourly on its own, not in each sync.
            selection=dg.AssetSelection.groups(entity.plural) - dg.AssetSelection.checks(freshness),
            tags={ENTITY_TAG: entity.value},
            description=f"One {entity.value} sync of one merchant (the partition): stage, then publish.",
            # One step per sync: in the run's process, or on a worker of the distributed engine.
            executor_def=sync_executor(),
        )
        jobs.append(job)
    freshness_job = dg.define_asset_job(
        "check_freshness",
        selection=dg.AssetSelection.checks(*freshness_checks),
        description="The freshness checks alone: has each type synced successfully within 26 hours?",
    )
    products_job = next(job for job in jobs if job.name == job_name(EntityType.PRODUCT))
    reconcile = build_reconcile_schedule(products_job)
    schedules += [build_daily_schedule(products_job), *([reconcile] if reconcile else []),
                  build_freshness_schedule(freshness_job), prune_schedule]
    resources = default_resources()
    return dg.Definitions(
        assets=assets,
        asset_checks=freshness_checks,
        jobs=[*jobs, freshness_job, prune_history],
        schedules=schedules,
        sensors=[
            build_sync_requests_sensor(jobs), build_merchant_partitions_sensor(), build_collections_after_products_sensor()
        ],
        resources=resources,
        executor=sync_executor(),
    )


defs = build_defs()

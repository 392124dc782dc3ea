"""The one Definitions object: assets, checks, jobs, schedules and the sensor, with resources."""

from __future__ import annotations

import os

import dagster as dg
from dagster_duckdb import DuckDBResource

from ..domain import EntityType
from ..settings import staging_path
from .assets import build_sync_assets, staging_key
from .checks import build_freshness_check
from .resources import default_resources
from .runs import ENTITY_TAG
from .schedules import build_daily_schedule, build_freshness_schedule
from .sensors import build_sync_requests_sensor, job_name


# DuckDB may otherwise take 80 % of the machine's memory as cache; staging spills to disk instead,
# so the sync's memory stays flat however large the catalogue.
DUCKDB_CONFIG = {
    "memory_limit": os.environ.get("SYNC_DUCKDB_MEMORY_LIMIT", "128MB"),
    "threads": int(os.environ.get("SYNC_DUCKDB_THREADS", "2")),
    "preserve_insertion_order": False,
}


def build_defs() -> dg.Definitions:
    assets, freshness_checks, jobs, schedules = [], [], [], []
    for entity in EntityType:
        staged, published = build_sync_assets(entity)
        assets += [staged, published]
        freshness_checks.append(build_freshness_check(entity, published.key))
        job = dg.define_asset_job(
            job_name(entity),
            selection=dg.AssetSelection.groups(entity.plural),
            tags={ENTITY_TAG: entity.value},
            description=f"One {entity.value} sync: stage, then publish.",
            # One process per run: the sync's owner process is the run's, start to end.
            executor_def=dg.in_process_executor,
        )
        jobs.append(job)
        schedules.append(build_daily_schedule(entity, job))
    freshness_job = dg.define_asset_job(
        "check_freshness",
        selection=dg.AssetSelection.checks(*freshness_checks),
        description="The freshness checks alone: has each type synced successfully within 26 hours?",
    )
    schedules.append(build_freshness_schedule(freshness_job))
    resources = {
        **default_resources(),
        **{
            staging_key(entity): DuckDBResource(database=str(staging_path(entity)), connection_config=DUCKDB_CONFIG)
            for entity in EntityType
        },
    }
    return dg.Definitions(
        assets=assets,
        asset_checks=freshness_checks,
        jobs=[*jobs, freshness_job],
        schedules=schedules,
        sensors=[build_sync_requests_sensor(jobs)],
        resources=resources,
        executor=dg.in_process_executor,
    )


defs = build_defs()

"""The one Definitions object: assets and jobs per entity type, with their resources."""

from __future__ import annotations

import dagster as dg
from dagster_duckdb import DuckDBResource

from ..domain import EntityType
from ..settings import staging_path
from .assets import build_sync_assets, staging_key
from .runs import ENTITY_TAG
from .sensors import build_sync_requests_sensor, job_name
from .resources import default_resources


def build_defs() -> dg.Definitions:
    assets = [asset for entity in EntityType for asset in build_sync_assets(entity)]
    jobs = [
        dg.define_asset_job(
            job_name(entity),
            selection=dg.AssetSelection.groups(entity.plural),
            tags={ENTITY_TAG: entity.value},
            description=f"One {entity.value} sync: stage, then publish.",
            # One process per run: the sync's owner process is the run's, start to end.
            executor_def=dg.in_process_executor,
        )
        for entity in EntityType
    ]
    resources = {
        **default_resources(),
        **{staging_key(entity): DuckDBResource(database=str(staging_path(entity))) for entity in EntityType},
    }
    return dg.Definitions(
        assets=assets,
        jobs=jobs,
        sensors=[build_sync_requests_sensor(jobs)],
        resources=resources,
        executor=dg.in_process_executor,
    )


defs = build_defs()

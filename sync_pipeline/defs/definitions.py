"""The one Definitions object: assets and jobs per entity type, with their resources."""

from __future__ import annotations

import dagster as dg
from dagster_duckdb import DuckDBResource

from ..domain import EntityType
from ..settings import staging_path
from .assets import ENTITY_TAG, build_sync_assets, staging_key
from .resources import default_resources


def job_name(entity: EntityType) -> str:
    return f"sync_{entity.plural}"


def build_defs() -> dg.Definitions:
    assets = [asset for entity in EntityType for asset in build_sync_assets(entity)]
    jobs = [
        dg.define_asset_job(
            job_name(entity),
            selection=dg.AssetSelection.groups(entity.plural),
            tags={ENTITY_TAG: entity.value},
            description=f"One {entity.value} sync: stage, then publish.",
        )
        for entity in EntityType
    ]
    resources = {
        **default_resources(),
        **{staging_key(entity): DuckDBResource(database=str(staging_path(entity))) for entity in EntityType},
    }
    return dg.Definitions(assets=assets, jobs=jobs, resources=resources)


defs = build_defs()

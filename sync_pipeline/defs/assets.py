"""Two assets per entity type: `<type>_staged` (fetch, stage, validate) and `<type>_published`
(publish what changed, follow the batches, record the sync). Thin: the work is in pipeline.py.

Both are partitioned by day. A run covers one range of days: a backfill of last March is one
historic sync of [March 1, April 1); a latest or full sync labels the days its window covers."""

from typing import Optional

import dagster as dg
from dagster_duckdb import DuckDBResource

from ..domain import EntityType, SyncMode, SyncStatus, Window, parse_time, utcnow
from ..errors import EntityBusy, status_for
from ..pipeline import fetch_and_stage, publish_changes
from ..staging import StagingStore
from ..state import StateStore, SyncRecord
from . import checks
from .partitions import daily_partitions, partition_window
from .resources import GatewayResource, ProductServiceResource, StateStoreResource
from .runs import SYNC_ID_TAG, close_abandoned

# Dagster puts assets that share partitions and backfill policy into one backfill run; a policy
# of each type's own keeps a backfill of both types at one run per entity type, each with its
# own lease, as if launched separately. Either way a selected range is one run, not one per day.
BACKFILL_POLICIES = {
    EntityType.PRODUCT: dg.BackfillPolicy.single_run(),
    EntityType.COLLECTION: dg.BackfillPolicy.multi_run(max_partitions_per_run=100_000),
}


class SyncConfig(dg.Config):
    """How to sync when the run does not carry a queued request (launched from the UI).

    With no mode, the selected days are synced as a historic range.
    """

    mode: Optional[str] = None  # latest | full | historic
    sync_to: Optional[str] = None  # latest: up to this time (default now)
    start: Optional[str] = None  # historic: [start, end); default the selected days
    end: Optional[str] = None
    allow_deletions: bool = False  # full: go on even above the deletion safety share
    deletion_share: float = 0.10


def staging_key(entity: EntityType) -> str:
    return f"{entity.plural}_staging_db"


def _optional_time(text: Optional[str]):
    return parse_time(text) if text else None


def _claim_sync(context: dg.AssetExecutionContext, state: StateStore, entity: EntityType, config: SyncConfig) -> SyncRecord:
    """The sync this run carries out: the queued one named by the run's tag, or a new one.

    Either way the lease is the state store's: a second sync of the type fails here, fast.
    """
    close_abandoned(state, context.instance, entity)
    tagged = context.run.tags.get(SYNC_ID_TAG)
    sync = state.get_sync(tagged) if tagged else None
    if sync is not None and sync.status is SyncStatus.QUEUED:
        return sync
    try:
        if sync is not None:  # a re-execution of a finished run: the same request, as a new sync
            request = dict(mode=sync.requested_mode, sync_to=sync.sync_to, allow_deletions=sync.allow_deletions)
            if sync.requested_mode is SyncMode.HISTORIC:
                request.update(start=sync.window_start, end=sync.window_end)
        elif config.mode is None and (context.has_partition_key or context.has_partition_key_range):
            days = partition_window(context, utcnow())
            request = dict(mode=SyncMode.HISTORIC, start=days.start, end=days.end)
        elif config.mode is None:
            request = dict(mode=SyncMode.LATEST)
        else:
            request = dict(
                mode=SyncMode(config.mode),
                sync_to=_optional_time(config.sync_to),
                start=_optional_time(config.start),
                end=_optional_time(config.end),
                allow_deletions=config.allow_deletions,
            )
        return state.enqueue_sync(entity, origin="dagster", **request)
    except EntityBusy as busy:
        raise dg.Failure(description=f"{busy}; this run does not start a second one.") from None
    except ValueError as error:
        raise dg.Failure(description=f"cannot sync {entity.value}: {error}") from None


def _fail(state: StateStore, sync_id: str, error: BaseException) -> dg.Failure:
    status = status_for(error)
    state.finish_sync(sync_id, status, error_message=str(error))
    return dg.Failure(description=f"sync {sync_id} ended {status.code} {status.text}: {error}")


def _window_metadata(window: Window) -> dict:
    return {
        "window_start": dg.MetadataValue.timestamp(window.start) if window.start else "beginning",
        "window_end": dg.MetadataValue.timestamp(window.end),
        "window_hours": round(((window.end - window.start).total_seconds() / 3600) if window.start else -1.0, 2),
    }


def build_sync_assets(entity: EntityType) -> list[dg.AssetsDefinition]:
    name = entity.plural
    staged_key, published_key = dg.AssetKey(f"{name}_staged"), dg.AssetKey(f"{name}_published")

    @dg.asset(
        key=staged_key,
        group_name=name,
        kinds={"duckdb"},
        partitions_def=daily_partitions,
        backfill_policy=BACKFILL_POLICIES[entity],
        check_specs=checks.staged_check_specs(staged_key),
        required_resource_keys={"product_service", "state_store", staging_key(entity)},
        description=(
            f"Pages the product service's /{name} for the sync's window (latest, full or historic),"
            " streams them into DuckDB in bulk, keeps the latest version of each record, validates it,"
            " and keeps rejected records with their reason. A full sync also finds deletions."
        ),
    )
    def staged(context: dg.AssetExecutionContext, config: SyncConfig) -> dg.MaterializeResult:
        product_service: ProductServiceResource = context.resources.product_service
        state_store: StateStoreResource = context.resources.state_store
        selection = context.run.asset_selection
        if selection and published_key not in selection:
            raise dg.Failure(description=f"materialize {name}_staged together with {published_key.to_user_string()}")
        state = state_store.store()
        sync = _claim_sync(context, state, entity, config)
        state.start_sync(sync.sync_id, run_id=context.run.run_id)
        window = sync.window
        context.log.info(f"sync {sync.sync_id}: {sync.mode.value} {entity.value} sync of {_describe(window)}")
        duckdb: DuckDBResource = getattr(context.resources, staging_key(entity))
        source = product_service.client()
        try:
            with duckdb.get_connection() as connection:
                result = fetch_and_stage(
                    source, StagingStore(connection), entity, window, sync.sync_id,
                    full=sync.mode is SyncMode.FULL, allow_deletions=sync.allow_deletions,
                    deletion_share=config.deletion_share, progress=context.log.info,
                )
        except Exception as error:
            raise _fail(state, sync.sync_id, error) from error
        finally:
            source.close()
        counts = result.counts
        state.update_counts(sync.sync_id, fetched=counts.fetched, rejected=counts.rejected)
        context.log.info(
            f"staged {counts.valid} valid and {counts.rejected} rejected of {counts.fetched} fetched"
            f" in {result.pages} pages, {result.seconds:.1f}s; {result.to_delete} to delete"
        )
        return dg.MaterializeResult(
            metadata={
                "sync_id": sync.sync_id,
                "mode": sync.mode.value,
                **_window_metadata(window),
                "records_fetched": counts.fetched,
                "records_valid": counts.valid,
                "records_rejected": counts.rejected,
                "records_to_delete": result.to_delete,
                "pages": result.pages,
                "duration_seconds": round(result.seconds, 3),
                "records_per_second": round(counts.fetched / max(result.seconds, 1e-9), 1),
            },
            check_results=[checks.rejected_share_result(result)],
        )

    @dg.asset(
        key=published_key,
        group_name=name,
        deps=[staged],
        kinds={"api"},
        partitions_def=daily_partitions,
        backfill_policy=BACKFILL_POLICIES[entity],
        check_specs=checks.published_check_specs(published_key),
        required_resource_keys={"gateway", "state_store", staging_key(entity)},
        description=(
            f"Publishes to the gateway catalogue the staged {name} whose content changed since the"
            " gateway accepted them (and a full sync's confirmed deletions), in batches of at most 1000,"
            " follows each batch to COMPLETED or FAILED, and records the sync's outcome."
        ),
    )
    def published(context: dg.AssetExecutionContext) -> dg.MaterializeResult:
        gateway: GatewayResource = context.resources.gateway
        state_store: StateStoreResource = context.resources.state_store
        state = state_store.store()
        sync = state.sync_for_run(context.run.run_id)
        if sync is None or sync.status is not SyncStatus.IN_PROGRESS:
            raise dg.Failure(description=f"no {entity.value} sync in progress for this run: materialize {name}_staged with it")
        duckdb: DuckDBResource = getattr(context.resources, staging_key(entity))
        client = gateway.client()
        try:
            with duckdb.get_connection() as connection:
                staging = StagingStore(connection)
                result = publish_changes(
                    client, staging, state, entity, sync.sync_id, workers=gateway.workers, progress=context.log.info
                )
                batches = state.batches_for_sync(sync.sync_id)
                num_records = staging.published_count()
                refused = [str(item.get("id")) for b in batches if b.bulk_operation_type == "UPSERT" for item in b.failed_products]
                matches = checks.gateway_matches_result(
                    held=num_records,
                    staged=staging.staged_count(),
                    refused=len(refused),
                    unexplained=staging.unexplained_unpublished(refused),
                    orphans=staging.orphan_count(),
                    reported=sum(b.success_count for b in batches if b.batch_status == "COMPLETED"),
                    marked=result.published + result.deleted,
                )
        except Exception as error:
            raise _fail(state, sync.sync_id, error) from error
        finally:
            client.close()
        status = SyncStatus.PARTIAL_SUCCESS if result.failed else SyncStatus.SUCCESS
        final = state.finish_sync(
            sync.sync_id, status, num_records=num_records, published=result.published, failed=result.failed,
            deleted=result.deleted, batches=result.batches, data_pushed=result.data_pushed,
            error_message=f"the gateway refused {result.failed} items; they go again next sync" if result.failed else None,
        )
        context.log.info(
            f"sync {sync.sync_id} {status.text}: published {result.published}, refused {result.failed},"
            f" deleted {result.deleted} in {result.batches} batches; the gateway holds {num_records}"
        )
        total_seconds = (final.finished_at - final.started_at).total_seconds() if final.started_at else result.seconds
        return dg.MaterializeResult(
            metadata={
                "sync_id": sync.sync_id,
                "status": f"{status.code} {status.text}",
                "records_published": result.published,
                "records_failed": result.failed,
                "records_deleted": result.deleted,
                "records_rejected": final.rejected,
                "batches": result.batches,
                "num_records": num_records,
                "publish_seconds": round(result.seconds, 3),
                "duration_seconds": round(total_seconds, 3),
                "records_per_second": round(final.fetched / max(total_seconds, 1e-9), 1),
            },
            check_results=[
                matches,
                checks.batch_failures_result(result, sum(b.batch_status == "FAILED" for b in batches)),
            ],
        )

    return [staged, published]


def _describe(window: Window) -> str:
    start = window.start.isoformat() if window.start else "the beginning"
    return f"[{start}, {window.end.isoformat()})"

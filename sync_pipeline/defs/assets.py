"""Two assets per entity type, `<type>_staged` (fetch, stage, validate) and `<type>_published`
(publish what changed, follow the batches, record the sync), made by one step: a sync runs on
one worker from start to end, with its DuckDB scratch local to that worker and everything it
must keep in the state store. Thin: the work is in pipeline.py.

Both are partitioned by merchant (partitions.py). The window of a run is that of the queued
request it carries out (Sync API, CLI), or its run config (launchpad, backfills): a historic
range, latest or full; with nothing said, a latest sync."""

import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Optional

import dagster as dg

from ..domain import EntityType, SyncMode, SyncStatus, Window, parse_time
from .. import progress
from ..errors import EntityBusy, status_for
from ..memory import limit_malloc_arenas
from ..progress import ProgressEvent
from ..pipeline import PublishResult, StageResult, SyncScratch, adopt_legacy_holdings, fetch_and_stage, publish_changes
from ..settings import data_dir, duckdb_settings, record_policy, scratch_path
from ..staging import StagingStore, connect_scratch
from ..state import StateStore, SyncRecord
from . import checks
from .partitions import merchant_partitions
from .resources import GatewayResource, ProductServiceResource, StateStoreResource
from .runs import MODE_TAG, ORIGIN_TAG, SYNC_ID_TAG, SYNC_TO_TAG, close_abandoned

# One run per merchant: a backfill over all merchants is as many runs, which the run queue
# takes a few at a time (SYNC_MAX_CONCURRENT_SYNCS).
BACKFILL_POLICY = dg.BackfillPolicy.multi_run(max_partitions_per_run=1)


class SyncConfig(dg.Config):
    """How to sync when the run does not carry a queued request (the launchpad, a backfill).

    With `start` and `end`, a historic sync of that range; with no mode, a latest one.
    """

    mode: Optional[str] = None  # latest | full | historic
    sync_to: Optional[str] = None  # latest: up to this time (default now)
    start: Optional[str] = None  # historic: records updated in [start, end)
    end: Optional[str] = None
    allow_deletions: bool = False  # full: go on even above the deletion safety share
    deletion_share: float = 0.10


def _optional_time(text: Optional[str]):
    return parse_time(text) if text else None


def _request_from(context: dg.AssetExecutionContext, config: SyncConfig) -> dict:
    """The sync a run without a queued request asks for: from its config, or its schedule's tags."""
    tags = context.run.tags
    mode = config.mode or tags.get(MODE_TAG) or (
        SyncMode.HISTORIC.value if config.start or config.end else SyncMode.LATEST.value
    )
    return dict(
        mode=SyncMode(mode),
        sync_to=_optional_time(config.sync_to or tags.get(SYNC_TO_TAG)),
        start=_optional_time(config.start),
        end=_optional_time(config.end),
        allow_deletions=config.allow_deletions,
    )


def _claim_sync(
    context: dg.AssetExecutionContext, state: StateStore, entity: EntityType, config: SyncConfig
) -> SyncRecord | None:
    """The sync this run carries out: the queued one named by the run's tag, or a new one; None
    when a daily run finds its (merchant, type) busy (it skips: the next day catches up).

    Either way the lease is the state store's: a second sync of the type fails here, fast.
    """
    merchant = context.partition_key
    close_abandoned(state, context.instance, entity, merchant)
    tagged = context.run.tags.get(SYNC_ID_TAG)
    sync = state.get_sync(tagged, merchant=merchant) if tagged else None
    enabled = _registry(context).is_enabled(merchant)
    if sync is not None and sync.status is SyncStatus.QUEUED and sync.entity_type is entity:
        if not enabled:  # queued before its merchant was disabled: a disabled merchant is never synced
            state.finish_sync(sync.sync_id, SyncStatus.FAILED, error_message=f"merchant {merchant} is disabled")
            raise dg.Failure(description=f"merchant {merchant} is disabled: sync {sync.sync_id} not run")
        return sync
    origin = context.run.tags.get(ORIGIN_TAG, "dagster")
    try:
        if not enabled:
            raise ValueError(f"merchant {merchant} is disabled")
        if sync is not None:  # a re-execution of a finished run: the same request, as a new sync
            request = dict(mode=sync.requested_mode, sync_to=sync.sync_to, allow_deletions=sync.allow_deletions)
            if sync.requested_mode is SyncMode.HISTORIC:
                request.update(start=sync.window_start, end=sync.window_end)
        else:
            request = _request_from(context, config)
        return state.enqueue_sync(entity, origin=origin, merchant=merchant, **request)
    except EntityBusy as busy:
        if origin == "schedule":
            context.log.warning(f"skipped: {busy}. The next daily sync starts from where the last success ended.")
            return None
        raise dg.Failure(description=f"{busy}; this run does not start a second one.") from None
    except ValueError as error:
        raise dg.Failure(description=f"cannot sync {entity.value} of merchant {merchant}: {error}") from None


def _registry(context: dg.AssetExecutionContext):
    state_store: StateStoreResource = context.resources.state_store
    return state_store.registry()


def _fail(state: StateStore, sync_id: str, error: BaseException) -> dg.Failure:
    """Close the sync with the status its error maps to, and what the gateway now holds (a sync
    that failed while publishing may have changed it)."""
    status = status_for(error)
    sync = state.get_sync(sync_id)
    try:
        held = state.count_held(sync.entity_type, merchant=sync.merchant_id)
    except Exception:  # the state store itself may be what failed
        held = None
    state.finish_sync(sync_id, status, error_message=str(error), num_records=held)
    return dg.Failure(description=f"sync {sync_id} ended {status.code} {status.text}: {error}")


def _window_metadata(window: Window) -> dict:
    return {
        "window_start": dg.MetadataValue.timestamp(window.start) if window.start else "beginning",
        "window_end": dg.MetadataValue.timestamp(window.end),
        "window_hours": round(((window.end - window.start).total_seconds() / 3600) if window.start else -1.0, 2),
    }


@contextmanager
def sync_scratch(state: StateStore, sync: SyncRecord) -> Iterator[SyncScratch]:
    """A scratch directory and DuckDB file of this sync's own, removed when it ends, whatever
    happens: runs keep nothing on disk, so any worker can run any sync."""
    directory = scratch_path(sync.merchant_id, sync.entity_type, sync.sync_id)
    directory.mkdir(parents=True, exist_ok=True)
    try:
        with connect_scratch(directory / "staging.duckdb", **duckdb_settings()) as connection:
            yield SyncScratch(
                state=state, staging=StagingStore(connection, **record_policy()), directory=directory,
                merchant=sync.merchant_id, entity=sync.entity_type, sync_id=sync.sync_id,
            )
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def build_sync_assets(entity: EntityType) -> dg.AssetsDefinition:
    name = entity.plural
    staged_key, published_key = dg.AssetKey(f"{name}_staged"), dg.AssetKey(f"{name}_published")

    @dg.multi_asset(
        name=f"sync_{name}_step",
        specs=[
            dg.AssetSpec(
                staged_key, group_name=name, kinds={"duckdb"}, skippable=True,
                description=(
                    f"The {name} of the sync's window (latest, full or historic), paged from the product"
                    f" service's /{name} into the run's DuckDB scratch in bulk: the latest version of each"
                    " record, validated, with rejected records kept with their reason. A full sync also"
                    " finds deletions."
                ),
            ),
            dg.AssetSpec(
                published_key, group_name=name, kinds={"api"}, skippable=True,
                # collections are published after the products they name (the daily run of a
                # merchant's collections follows its products run: sensors.py)
                deps=[staged_key, *([dg.AssetKey("products_published")] if entity is EntityType.COLLECTION else [])],
                description=(
                    f"The {name} the gateway catalogue holds: the staged records whose content changed since"
                    " the gateway accepted them (and a full sync's confirmed deletions), sent in batches of"
                    " at most 1000 and followed to COMPLETED or FAILED; what it holds is kept in the state store."
                ),
            ),
        ],
        check_specs=[
            *checks.staged_check_specs(staged_key), *checks.published_check_specs(published_key),
            *([checks.references_check_spec(published_key)] if entity is EntityType.COLLECTION else []),
        ],
        partitions_def=merchant_partitions,
        backfill_policy=BACKFILL_POLICY,
        # Subsettable only so that a skipped daily run may materialize nothing: a sync always
        # makes both assets, and a selection of one of them fails at once, saying so.
        can_subset=True,
        required_resource_keys={"product_service", "gateway", "state_store"},
    )
    def sync_step(context: dg.AssetExecutionContext, config: SyncConfig):
        product_service: ProductServiceResource = context.resources.product_service
        gateway: GatewayResource = context.resources.gateway
        state_store: StateStoreResource = context.resources.state_store
        if set(context.selected_asset_keys) != {staged_key, published_key}:
            raise dg.Failure(
                description=f"materialize {staged_key.to_user_string()} and {published_key.to_user_string()} together:"
                " one sync makes both"
            )
        state = state_store.store()
        sync = _claim_sync(context, state, entity, config)
        if sync is None:
            return
        sync = state.start_sync(sync.sync_id, run_id=context.run.run_id)
        context.log.info(
            f"sync {sync.sync_id}: {sync.mode.value} {entity.value} sync of merchant {sync.merchant_id},"
            f" {_describe(sync.window)}"
        )
        limit_malloc_arenas()  # before the threads that fetch and publish start
        try:  # whatever goes wrong from here on closes the sync with its reason
            connection = state_store.registry().connection(sync.merchant_id)
            with sync_scratch(state, sync) as scratch:
                staged = _stage(context, product_service, connection, scratch, sync, config)
                yield _staged_result(staged_key, sync, staged)
                published = _publish(context, gateway, connection, scratch, sync)
                yield _published_result(context, published_key, state, scratch, sync, published)
        except dg.Failure:
            raise
        except Exception as error:
            raise _fail(state, sync.sync_id, error) from error

    return sync_step


def _stage(
    context, product_service: ProductServiceResource, connection, scratch: SyncScratch, sync: SyncRecord, config: SyncConfig
) -> StageResult:
    source = product_service.client(connection)
    try:
        if adopted := adopt_legacy_holdings(scratch, data_dir()):
            context.log.info(f"took the {adopted} records the gateway held from the old local staging file")
        result = fetch_and_stage(
            source, scratch, sync.window, full=sync.mode is SyncMode.FULL, allow_deletions=sync.allow_deletions,
            deletion_share=config.deletion_share, progress=_progress(context),
        )
    except Exception as error:
        raise _fail(scratch.state, sync.sync_id, error) from error
    finally:
        source.close()
    counts = result.counts
    scratch.state.update_counts(sync.sync_id, fetched=counts.fetched, rejected=counts.rejected)
    context.log.info(
        f"staged {counts.valid} valid and {counts.rejected} rejected of {counts.fetched} fetched"
        f" in {result.pages} pages ({result.fetched_by_id} more fetched by id; {result.unparsed} listed as the"
        f" gateway holds them, not parsed), {result.seconds:.1f}s;"
        f" {result.to_delete} to delete"
    )
    return result


def _staged_result(key: dg.AssetKey, sync: SyncRecord, result: StageResult) -> dg.MaterializeResult:
    counts = result.counts
    return dg.MaterializeResult(
        asset_key=key,
        metadata={
            "sync_id": sync.sync_id,
            "mode": sync.mode.value,
            **_window_metadata(sync.window),
            "records_fetched": counts.fetched,
            "records_valid": counts.valid,
            "records_rejected": counts.rejected,
            "records_fetched_by_id": result.fetched_by_id,
            "records_unparsed": result.unparsed,
            "records_to_delete": result.to_delete,
            "pages": result.pages,
            "duration_seconds": round(result.seconds, 3),
            "records_per_second": round(counts.fetched / max(result.seconds, 1e-9), 1),
        },
        check_results=[checks.rejected_share_result(key, result)],
    )


def _publish(context, gateway: GatewayResource, connection, scratch: SyncScratch, sync: SyncRecord) -> PublishResult:
    client = gateway.client(connection)
    try:
        return publish_changes(
            client, scratch, workers=gateway.in_flight, sending=gateway.sending_at_once, progress=_progress(context)
        )
    except Exception as error:
        raise _fail(scratch.state, sync.sync_id, error) from error
    finally:
        client.close()


def _published_result(
    context, key: dg.AssetKey, state: StateStore, scratch: SyncScratch, sync: SyncRecord, result: PublishResult
) -> dg.MaterializeResult:
    # a full sync's scratch knows every row of its (merchant, type): no count in the state store
    num_records = (
        scratch.staging.held_count() if sync.mode is SyncMode.FULL
        else state.count_held(sync.entity_type, merchant=sync.merchant_id)
    )
    batches = state.batches_for_sync(sync.sync_id)
    matches = checks.gateway_matches_result(
        key,
        scratch.staging.publish_check(full=sync.mode is SyncMode.FULL),
        held=num_records,
        reported=sum(b.success_count for b in batches if b.batch_status == "COMPLETED"),
        marked=result.published + result.deleted,
    )
    problems = state.problem_records(sync.entity_type, scratch.staging.park_after, merchant=sync.merchant_id)
    status, message = _outcome(result)
    final = state.finish_sync(
        sync.sync_id, status, num_records=num_records, published=result.published, failed=result.failed,
        deleted=result.deleted, batches=result.batches, data_pushed=result.data_pushed, error_message=message,
        parked=problems["parked"][0], invalid_held=problems["invalid_held"][0],
    )
    context.log.info(
        f"sync {sync.sync_id} {status.text}: published {result.published}, refused {result.failed},"
        f" deleted {result.deleted} in {result.batches} batches; the gateway holds {num_records}"
        f" ({final.parked} parked, {final.invalid_held} held though now invalid at the source)"
    )
    if not status.is_success:
        raise dg.Failure(description=f"sync {sync.sync_id} ended {status.code} {status.text}: {message}")
    total_seconds = (final.finished_at - final.started_at).total_seconds() if final.started_at else result.seconds
    return dg.MaterializeResult(
        asset_key=key,
        metadata={
            "sync_id": sync.sync_id,
            "status": f"{status.code} {status.text}",
            "records_published": result.published,
            "records_failed": result.failed,
            "records_deleted": result.deleted,
            "records_rejected": final.rejected,
            "records_parked": final.parked,
            "records_invalid_but_held": final.invalid_held,
            "batches": result.batches,
            "num_records": num_records,
            "publish_seconds": round(result.seconds, 3),
            "duration_seconds": round(total_seconds, 3),
            "records_per_second": round(final.fetched / max(total_seconds, 1e-9), 1),
        },
        check_results=[
            matches,
            checks.batch_failures_result(key, result),
            *checks.problem_records_results(key, problems),
            *([_references_result(key, state, scratch, sync)] if sync.entity_type is EntityType.COLLECTION else []),
        ],
    )


def _references_result(key: dg.AssetKey, state: StateStore, scratch: SyncScratch, sync: SyncRecord):
    """Which collections of this sync name products the gateway does not hold."""
    references = scratch.staging.referenced_ids()
    held = state.held_among(EntityType.PRODUCT, (product for _, product in references), merchant=sync.merchant_id)
    missing: dict[str, list[str]] = {}
    for collection, product in references:
        if product not in held:
            missing.setdefault(collection, []).append(product)
    return checks.references_result(key, missing, len({collection for collection, _ in references}))


def _outcome(result: PublishResult) -> tuple[SyncStatus, str | None]:
    """How a sync that published ends: 4200 if a batch failed as a whole (nothing of it applied),
    2100 if the gateway refused items one by one, else 2000."""
    if result.failed_batches:
        return SyncStatus.GATEWAY_UNAVAILABLE, (
            f"{result.failed_batches} of {result.batches} batches ended FAILED at the gateway, none of their items"
            " applied; they go again next sync"
        )
    if result.failed:
        return SyncStatus.PARTIAL_SUCCESS, (
            f"the gateway refused {result.failed} items; they go again next sync (an item refused again at the"
            " same version is parked until it changes)"
        )
    return SyncStatus.SUCCESS, None


# Seconds between two progress lines of a phase in the run's log. Each line is an event the
# instance stores as the sync goes (about 13 ms of the sync's main thread): a line every 50 pages
# and every 20 batches made 70 of a 1M first sync, 0.9 s; one every 5 s makes 7.
PROGRESS_LOG_SECONDS = 5.0


def _progress(context):
    """Progress to the run's log (a line every PROGRESS_LOG_SECONDS of each phase) and to any
    listener in this process (the `sync` command's progress bar)."""
    logged: dict[str, float] = {}  # phase -> its seconds at its last line

    def note(event: ProgressEvent) -> None:
        progress.report(event)
        if event.seconds - logged.get(event.phase, 0.0) >= PROGRESS_LOG_SECONDS:
            logged[event.phase] = event.seconds
            context.log.info(event.describe())

    return note


def _describe(window: Window) -> str:
    start = window.start.isoformat() if window.start else "the beginning"
    return f"[{start}, {window.end.isoformat()})"

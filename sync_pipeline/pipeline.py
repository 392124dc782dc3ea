"""The two steps of a sync as plain functions, free of Dagster:
fetch_and_stage (everything that reads the product service) and publish_changes (everything
that writes the gateway). The Dagster assets call these and record what they return."""

from __future__ import annotations

import logging
import os
import queue
import signal
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import TypeVar

from .domain import EntityType, Window
from .errors import DeletionGuardError, GatewayError
from .gateway import BatchOutcome, GatewayClient, Operation, idempotency_key
from .sources import ProductServiceClient
from .staging import ChangedRecord, PageRows, StageCounts, StagingStore, to_rows
from .state import StateStore

log = logging.getLogger(__name__)

T = TypeVar("T")
Progress = Callable[[str], None]
CRASH_ENV = "SYNC_PIPELINE_CRASH_AT"


def crash_point(name: str) -> None:
    """Test hook: SIGKILL this process at the named point when SYNC_PIPELINE_CRASH_AT says so,
    to prove that a sync killed anywhere is closed by the next one, which converges."""
    if os.environ.get(CRASH_ENV) == name:
        os.kill(os.getpid(), signal.SIGKILL)


@dataclass(frozen=True)
class StageResult:
    counts: StageCounts
    pages: int
    to_delete: int
    seconds: float


@dataclass(frozen=True)
class PublishResult:
    published: int
    failed: int
    deleted: int
    batches: int
    seconds: float

    @property
    def data_pushed(self) -> bool:
        return self.published > 0 or self.deleted > 0


def prefetch(items: Iterator[T], depth: int = 2) -> Iterator[T]:
    """Run `items` in a thread, `depth` ahead, so the next page downloads while this one stages."""
    buffer: queue.Queue = queue.Queue(maxsize=depth)
    done = object()
    stop = threading.Event()

    def produce() -> None:
        try:
            for item in items:
                if stop.is_set():
                    return
                buffer.put((item, None))
            buffer.put((done, None))
        except BaseException as error:  # handed to the consumer, raised there
            buffer.put((done, error))

    thread = threading.Thread(target=produce, name="prefetch", daemon=True)
    thread.start()
    try:
        while True:
            item, error = buffer.get()
            if error is not None:
                raise error
            if item is done:
                return
            yield item
    finally:
        stop.set()
        while thread.is_alive():  # unblock a producer waiting on a full buffer
            try:
                buffer.get_nowait()
            except queue.Empty:
                thread.join(0.05)


def fetch_and_stage(
    source: ProductServiceClient,
    staging: StagingStore,
    entity: EntityType,
    window: Window,
    sync_id: str,
    *,
    full: bool,
    deletion_share: float = 0.10,
    allow_deletions: bool = False,
    chunk_rows: int = 5_000,
    progress: Progress | None = None,
) -> StageResult:
    """Page the window into `fetched` in bulk chunks, dedupe and validate into `staged`.

    A full sync also finds the records the gateway holds that the source no longer lists,
    confirms each with a 404, and applies the deletion guard before anything is published.
    """
    started = time.monotonic()
    staging.begin_fetch()
    rows = PageRows()
    seen = pages = 0
    for page in prefetch(source.fetch_pages(entity, window)):
        to_rows(entity, page.records, seen, rows)
        seen += len(page.records)
        pages += 1
        if len(rows) >= chunk_rows:
            staging.load_rows(rows)
            rows = PageRows()
        if pages == 2:
            crash_point("fetching")
        if progress and pages % 50 == 0:
            elapsed = time.monotonic() - started
            progress(f"{pages} pages, {seen} records, {seen / max(elapsed, 1e-9):,.0f} records/s")
    staging.load_rows(rows)
    counts = staging.stage_fetched(sync_id, full=full)
    crash_point("staged")
    to_delete = 0
    if full:
        to_delete = _plan_deletions(source, staging, entity, deletion_share, allow_deletions)
    return StageResult(counts=counts, pages=pages, to_delete=to_delete, seconds=time.monotonic() - started)


def _plan_deletions(
    source: ProductServiceClient, staging: StagingStore, entity: EntityType, share: float, allow: bool
) -> int:
    candidates = staging.deletion_candidates()
    held = staging.published_count()
    if candidates and len(candidates) > share * held and not allow:
        raise DeletionGuardError(
            f"a full sync would delete {len(candidates)} of the {held} {entity.plural} the gateway holds"
            f" ({100 * len(candidates) / held:.1f}%), above the safety share of {100 * share:.0f}%;"
            " nothing was deleted. If the source really lost them, run again allowing deletions"
            " (--allow-deletions, or allow_deletions: true in the run config)."
        )
    with ThreadPoolExecutor(max_workers=8, thread_name_prefix="confirm") as pool:
        gone = list(pool.map(lambda item: source.get_one(entity, item[0]) is None, candidates))
    confirmed = [item for item, is_gone in zip(candidates, gone) if is_gone]
    staging.set_deletions(confirmed)
    return len(confirmed)


def publish_changes(
    gateway: GatewayClient,
    staging: StagingStore,
    state: StateStore,
    entity: EntityType,
    sync_id: str,
    *,
    batch_size: int = 1000,
    workers: int = 4,
    progress: Progress | None = None,
) -> PublishResult:
    """Send every staged record whose content changed since the gateway accepted it, then the
    confirmed deletions, in batches followed to their end. Only accepted items are marked."""
    started = time.monotonic()
    totals = {"published": 0, "failed": 0, "deleted": 0, "batches": 0}

    def submit_and_follow(operation: Operation, items: list[ChangedRecord]) -> BatchOutcome:
        key = state.usable_idempotency_key(
            idempotency_key(entity, operation, (item.fingerprint for item in items))
        )
        if operation is Operation.UPSERT:
            batch_id = gateway.submit_upsert(entity, [item.raw for item in items], key)
        else:
            batch_id = gateway.submit_delete(entity, [item.id for item in items], key)
        crash_point("publishing")
        state.record_batch(
            batch_id=batch_id, sync_id=sync_id, entity=entity, operation=operation.value,
            idempotency_key=key, item_count=len(items),
        )
        crash_point("waiting")
        outcome = gateway.wait_for_batch(batch_id)
        state.record_batch_outcome(
            batch_id, batch_status=outcome.batch_status, success_count=outcome.success_count,
            fail_count=outcome.fail_count, failed_products=outcome.failed_items, ratio=outcome.ratio,
        )
        return outcome

    def send(operation: Operation, items: list[ChangedRecord]) -> list[tuple[list[ChangedRecord], BatchOutcome]]:
        """Submit and follow one batch; a batch the gateway finds too large goes as two halves."""
        try:
            return [(items, submit_and_follow(operation, items))]
        except GatewayError as error:
            if error.http_status != 413 or len(items) == 1:
                raise
            half = len(items) // 2
            log.info("the gateway found a batch of %d too large: sending it as two of %d", len(items), half)
            return send(operation, items[:half]) + send(operation, items[half:])

    def settle(future: Future, operation: Operation) -> None:
        for items, outcome in future.result():
            totals["batches"] += 1
            if outcome.batch_status != "COMPLETED":
                totals["failed"] += len(items)
                continue
            refused = outcome.failed_ids
            accepted = [item for item in items if item.id not in refused]
            if operation is Operation.UPSERT:
                staging.mark_published(accepted, sync_id)
                totals["published"] += len(accepted)
            else:
                staging.mark_deleted([item.id for item in accepted], sync_id)
                totals["deleted"] += len(accepted)
            totals["failed"] += len(items) - len(accepted)
        if progress and totals["batches"] % 20 == 0:
            progress(f"{totals['batches']} batches settled, {totals['published']} records published")

    staging.fold_accepted()  # what a sync that died had got accepted
    deletions = [ChangedRecord(id=i, raw="", content_hash="deleted", published_hash=h) for i, h in staging.pending_deletions()]
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="publish") as pool:
        pending: dict[Future, Operation] = {}

        def drain(limit: int) -> None:
            while len(pending) > limit:
                finished, _ = wait(pending, return_when=FIRST_COMPLETED)
                for future in finished:
                    settle(future, pending.pop(future))

        try:
            for chunk in staging.changed_since_publish(batch_size):
                pending[pool.submit(send, Operation.UPSERT, chunk)] = Operation.UPSERT
                drain(workers * 2)
            for start in range(0, len(deletions), batch_size):
                chunk = deletions[start : start + batch_size]
                pending[pool.submit(send, Operation.DELETE, chunk)] = Operation.DELETE
                drain(workers * 2)
            drain(0)
        except BaseException:
            for future in pending:
                future.cancel()
            raise
        finally:
            staging.fold_accepted()
    return PublishResult(seconds=time.monotonic() - started, **totals)

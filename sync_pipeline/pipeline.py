"""The two halves of a sync as plain functions, free of Dagster: fetch_and_stage (everything
that reads the product service) and publish_changes (everything that writes the gateway).
The Dagster asset calls both, in one step, and records what they return.

A sync starts from the state store alone: what the gateway holds and is owed for this
(merchant, type) is read into the run's DuckDB scratch, and what the sync changes is written
back. A run on an empty disk therefore behaves exactly like one on the disk of the last run."""

from __future__ import annotations

import gc
import logging
import os
import queue
import signal
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TypeVar

import numpy as np

from .domain import DEFAULT_MERCHANT, EntityType, Window, utcnow
from .errors import DeletionGuardError, GatewayError
from .gateway import (
    REFUSED_REQUEST, UPSERT_ENVELOPE, BatchOutcome, BatchWatcher, GatewayClient, Operation, idempotency_key_of,
)
from .progress import ProgressEvent
from .sources import ProductServiceClient
from .staging import (
    ChangedBatch, ListedIndex, ListedSame, Outcome, PageRows, StageCounts, StagingStore, listed_digests_of, parse_listed,
    to_rows,
)
from .settings import usable_cores
from .staging.legacy import export_legacy_holdings, legacy_staging_file
from .staging.parsing import ParseProcess
from .state import StateStore
from .writebehind import WriteBehind

log = logging.getLogger(__name__)

T = TypeVar("T")
Progress = Callable[[ProgressEvent], None]
CRASH_ENV = "SYNC_PIPELINE_CRASH_AT"
LOAD_ALL_ABOVE = 50_000  # records listed by a latest or historic sync
LISTED_CHUNK_ROWS = 100_000  # records listed unchanged, loaded at a time (2.4 MB of arrays)
# Parse chunks of listed records in a process of their own (see staging/parsing.py) where this
# process may keep more than one core busy (a pod limited to one CPU may see all its node's cores).
PARSE_APART = usable_cores() > 1
PARSE_APART_AFTER = 10_000  # records parsed in this process before the next chunks go apart
PARSED_AHEAD = 2  # chunks handed to the parsing process and not loaded yet, at most (about 2.5 MB each)
SAVE_EVERY_BATCHES = 100  # while publishing, the answers are written back to the state store this often
SPLIT_STATUSES = frozenset({400, 413})  # the gateway refuses the request: halve the batch
# Types whose unchanged records a full sync takes from their listed bytes, unparsed. Not
# collections: their product references are read from every listed collection's JSON.
UNPARSED_WHEN_UNCHANGED = frozenset({EntityType.PRODUCT})


def crash_point(name: str) -> None:
    """Test hook: SIGKILL this process at the named point when SYNC_PIPELINE_CRASH_AT says so,
    to prove that a sync killed anywhere is closed by the next one, which converges."""
    if os.environ.get(CRASH_ENV) == name:
        os.kill(os.getpid(), signal.SIGKILL)


@dataclass
class SyncScratch:
    """One sync's working set: its scratch DuckDB and the state store it reads and writes back."""

    state: StateStore
    staging: StagingStore
    directory: Path  # the run's own scratch directory, for the files moved to and fro
    merchant: str
    entity: EntityType
    sync_id: str
    _files: int = field(default=0, repr=False)
    writes: WriteBehind | None = field(default=None, repr=False)  # see `writing_behind`
    _writing_out: ThreadPoolExecutor | None = field(default=None, repr=False)
    _written: Future | None = field(default=None, repr=False)  # the last save's files
    _imports: deque[Future] = field(default_factory=deque, repr=False)  # the saves the state store has not taken yet

    def _file(self, name: str, suffix: str = ".csv") -> Path:
        self._files += 1
        return self.directory / f"{name}-{self._files}{suffix}"

    def load_known(self, **which) -> int:
        """Read this (merchant, type)'s rows (all, or `ids=` and `pending=`) into the scratch."""
        return self.load_exported(*self.export_known(**which))

    def export_known(self, **which) -> tuple[Path, int]:
        """Write this (merchant, type)'s rows (all, or some by id) to a CSV file of the scratch
        (from any thread)."""
        path = self._file("known")
        return path, self.state.export_records(self.entity, path, merchant=self.merchant, **which)

    def load_exported(self, path: Path, count: int, *, beside: bool = False) -> int:
        """Load the file `export_known` wrote; `beside`: on a DuckDB connection of its own, from
        a thread other than the one using the scratch's."""
        self.staging.load_known(path, beside=beside)
        path.unlink()
        return count

    def load_known_beside(self) -> int:
        """`load_known` of all rows, from a thread other than the one using the scratch's."""
        return self.load_exported(*self.export_known(), beside=True)

    def save(self, *, settled_only: bool = False) -> None:
        """Write back to the state store the rows this sync changed since the last save (with
        `settled_only`, only those the gateway has answered for), and the records' trail events.

        The scratch hands them over in a DuckDB connection of their own and forgets them. They
        are written to files, and the state store takes the files: in this thread; or, inside
        `writing_behind`, the files are written in a thread of their own and taken in the thread
        of the state store's writes, while this one goes on publishing. So one save's files are
        written while the state store takes the save before: a 1M first sync's publishing
        thread waited 14.5 s of its 46 s for the two one after the other. A save waits for the
        files of the save before (one save's rows are out of the scratch at a time) and for the
        state store to take the one before that (a save that failed stops the sync at the next).
        Should the state store fail to take them, the sync fails, as a crash there would: the
        next sync starts from what the state store has, and the gateway replays what it was sent
        again."""
        if self._written is not None:
            self._written.result()
        while len(self._imports) > 1:
            self._imports.popleft().result()
        rows_path, events_path = self._file("rows"), self._file("events")
        unsaved = self.staging.take_unsaved(settled_only=settled_only)
        try:
            self.staging.mark_saved()
            if self.writes is None or self._writing_out is None:
                self._take(unsaved.to_csv(rows_path, events_path), rows_path, events_path)
                return
            written = self._written = self._writing_out.submit(unsaved.to_csv, rows_path, events_path)
        except BaseException:
            unsaved.close()  # written or not: its rows are let go of
            raise
        self._imports.append(self.writes(lambda: self._take(written.result(), rows_path, events_path)))

    @contextmanager
    def writing_behind(self) -> Iterator[WriteBehind]:
        """Inside, the saves go to the state store in threads of their own while this one goes
        on (see `save` and `WriteBehind`), after whatever else is written through `writes`; every
        write is in the state store when the block ends, or its error is raised."""
        with WriteBehind() as writes, ThreadPoolExecutor(max_workers=1, thread_name_prefix="save-files") as files:
            self.writes, self._writing_out = writes, files
            try:
                yield writes
            finally:
                self.writes, self._writing_out, self._written = None, None, None
                self._imports.clear()

    def _take(self, counts: tuple[int, int], rows_path: Path, events_path: Path) -> None:
        """The state store takes a save's files (`counts`: their rows and events)."""
        rows, events = counts
        if rows:
            self.state.import_records(self.entity, rows_path, merchant=self.merchant)
        rows_path.unlink(missing_ok=True)
        if events:
            self.state.import_events(self.entity, self.sync_id, events_path, merchant=self.merchant)
        events_path.unlink(missing_ok=True)


def adopt_legacy_holdings(scratch: SyncScratch, data_dir: Path) -> int:
    """The first sync of `default` after an upgrade from local-disk staging takes the gateway's
    holdings from the old DuckDB file into the state store (and renames the file), so it re-sends
    nothing; any other sync finds nothing to adopt."""
    legacy = legacy_staging_file(data_dir, scratch.entity.plural)
    if scratch.merchant != DEFAULT_MERCHANT or legacy is None:
        return 0
    adopted = 0
    if not scratch.state.count_records(scratch.entity, merchant=scratch.merchant):
        path = scratch._file("legacy")
        adopted = export_legacy_holdings(legacy, path)
        if adopted:
            scratch.state.import_records(scratch.entity, path, merchant=scratch.merchant)
    legacy.rename(legacy.with_name(legacy.name + ".adopted"))
    return adopted


@dataclass(frozen=True)
class StageResult:
    counts: StageCounts
    pages: int
    to_delete: int
    seconds: float
    fetched_by_id: int = 0
    unparsed: int = 0  # listed byte for byte as the gateway holds them: taken without parsing


@dataclass(frozen=True)
class PublishResult:
    published: int
    failed: int
    deleted: int
    batches: int
    failed_batches: int
    seconds: float

    @property
    def data_pushed(self) -> bool:
        return self.published > 0 or self.deleted > 0


@contextmanager
def paused_gc() -> Iterator[None]:
    """Pause the cyclic garbage collector's own timing over a loop that makes objects by the
    million (pages parsed into dicts, records to publish). Each automatic collection would walk
    them and the whole long-lived heap, Dagster's included, again and again: that cost a fifth
    of a no-change re-sync at 1M records. Parsed records hold no cycles, so reference counting
    frees them; the loop calls `collect_young` now and then for the few cycles that do form
    (an exception kept across an HTTP retry holds its frame, and the frame a request body)."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def collect_young() -> None:
    """Collect the young generations only: cycles made since the last call, not the old heap."""
    gc.collect(1)


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
    scratch: SyncScratch,
    window: Window,
    *,
    full: bool,
    deletion_share: float = 0.10,
    allow_deletions: bool = False,
    chunk_rows: int = 5_000,
    parse_apart: bool | None = None,
    progress: Progress | None = None,
) -> StageResult:
    """Page the window into the scratch in bulk chunks, dedupe, validate, and note what the
    gateway is owed, in the scratch and then in the state store. `parse_apart`: parse whole
    chunks of listed records in a process of their own (see `_stage_pages`); by default
    (PARSE_APART) where this process may use more than one core.

    A sync that does not list everything (latest, historic) also fetches by id the records
    the gateway is still owed from earlier syncs (refused, or in a failed batch), so nothing is
    left behind by a window that moved on. A full sync finds the records the gateway holds that
    the listing no longer shows, applies the deletion guard, and asks for each by id: a 404
    confirms a deletion; a record that is there (updated while the listing paged) is staged.
    """
    started = time.monotonic()
    staging, entity = scratch.staging, scratch.entity
    parse_apart = PARSE_APART if parse_apart is None else parse_apart
    if full:
        # The hashes of what may be taken unparsed first; the rest of the state store's rows
        # are read meanwhile, on a thread of their own, while the pages come.
        index = (
            ListedIndex.of(scratch.state.listed_digests(entity, merchant=scratch.merchant))
            if entity in UNPARSED_WHEN_UNCHANGED else None
        )
        # DuckDB's cap is lowered by the index's size meanwhile: the two together take no more
        # memory than the cap alone (a million rows loaded while the index was held put up to
        # 20 MiB more on a re-sync's peak).
        with staging.cap_lowered_by(index.nbytes if index is not None else 0), \
                ThreadPoolExecutor(max_workers=1, thread_name_prefix="known") as reader:
            loaded = reader.submit(scratch.load_known_beside)
            seen, pages = _stage_pages(source, scratch, window, chunk_rows, started, progress, index, parse_apart)
            loaded.result()
        del index  # 20 MB at a million
    else:
        seen, pages = _stage_pages(source, scratch, window, chunk_rows, started, progress, parse_apart=parse_apart)
    unparsed = staging.stage_listed()
    if full:
        # what the gateway holds or is owed that the listing no longer shows: gone, or moved out
        # of the window while it was paged (updated since); the guard counts them first
        missing = _deletion_candidates(staging, entity, deletion_share, allow_deletions)
    else:
        ids = staging.fetched_ids()
        # Asking for a few ids is cheap; for a window that lists many, reading every row is faster.
        scratch.load_known(**({} if len(ids) > LOAD_ALL_ABOVE else {"ids": ids, "pending": True}))
        missing = staging.pending_not_fetched()  # owed from earlier syncs, outside this window
    found = _fetch_by_id(source, entity, missing)
    gone = [record_id for record_id, record in zip(missing, found) if record is None]
    present = [record for record in found if record is not None]
    staging.load_rows(to_rows(entity, present, seen))
    now = utcnow()
    # `fetched` counts what the listing returned; records fetched by id are counted apart.
    counts = replace(staging.stage_fetched(scratch.sync_id, now=now), fetched=seen)
    scratch.state.save_rejections(scratch.sync_id, entity, staging.rejected_rows(), merchant=scratch.merchant)
    crash_point("staged")
    staging.mark_gone(gone, now)  # confirmed by a 404: deleted from the gateway if it holds them
    # Nothing is written back yet: publishing does, once per record, as the gateway answers.
    return StageResult(
        counts=counts, pages=pages, to_delete=len(staging.pending_deletions()),
        seconds=time.monotonic() - started, fetched_by_id=len(present), unparsed=unparsed,
    )


def _stage_pages(
    source: ProductServiceClient, scratch: SyncScratch, window: Window, chunk_rows: int, started: float,
    progress: Progress | None, index: ListedIndex | None = None, parse_apart: bool = False,
) -> tuple[int, int]:
    """Page the window into `fetched`, `chunk_rows` parsed records per bulk load (and records
    listed unchanged `LISTED_CHUNK_ROWS` at a time: each load has a cost of its own, about a
    millisecond, and they are 24 bytes each). Returns (records, pages).

    Each record comes as the bytes the source listed. With an `index` (a full sync, see
    `ListedIndex`), a record listed exactly as the gateway holds it is not parsed: its hash goes
    to `listed`, and `StagingStore.stage_listed` makes its `fetched` row from the state store's.
    Every other record is parsed, validated and staged with the hash of its bytes. With
    `parse_apart`, once PARSE_APART_AFTER records have been parsed here, the next chunks are
    parsed in a process of their own (`ParseProcess`; a listing with fewer to parse never starts
    it), up to PARSED_AHEAD at a time, while this thread goes on fetching and loading.

    The cyclic garbage collector is paused meanwhile (see `paused_gc`); parsed records hold no
    cycles, so reference counting frees each page as soon as it is staged."""
    staging, entity = scratch.staging, scratch.entity
    rows, same = PageRows(), ListedSame()
    seen = pages = loads = parsed_here = 0
    # listed records not sorted yet, numbered from `listed_from`: sorted `chunk_rows` at a time,
    # as the index is read faster a few thousand digests at once than a page's
    listed, listed_from = [], 0
    parsing: ParseProcess | None = None
    parsed: deque[Future] = deque()  # chunks handed to `parsing`, in order, not loaded yet

    def sort_listed(apart: bool = False) -> None:
        nonlocal parsing, parsed_here
        raws, seqs, hashes = _sort_listed(listed, listed_from, index, same)
        if apart and parsing is not None and raws:
            parsed.append(parsing.submit(raws, seqs, hashes))
            while len(parsed) > PARSED_AHEAD:
                staging.load_rows(parsed.popleft().result())
            return
        parse_listed(entity, raws, seqs, hashes, rows)
        parsed_here += len(raws)
        if apart and parsing is None and parsed_here >= PARSE_APART_AFTER:
            parsing = stack.enter_context(ParseProcess(entity))

    with paused_gc(), ExitStack() as stack:
        for page in prefetch(source.fetch_pages(entity, window, listed=True)):
            if page.listed:
                if not listed:
                    listed_from = seen
                listed += page.records
            else:
                if listed:  # the records waiting are numbered in one run, from `listed_from`
                    sort_listed()
                    listed = []
                to_rows(entity, page.records, seen, rows)
            seen += len(page.records)
            pages += 1
            if len(listed) >= chunk_rows:
                sort_listed(apart=parse_apart)
                listed = []
            if len(rows) >= chunk_rows:
                staging.load_rows(rows)
                rows = PageRows()
                loads += 1
                if loads % 4 == 0:
                    collect_young()
            if len(same) >= LISTED_CHUNK_ROWS:
                staging.load_listed(same)
                same = ListedSame()
            if pages == 2:
                crash_point("fetching")
            if progress:
                progress(ProgressEvent("fetching", pages=pages, records=seen, seconds=time.monotonic() - started))
        if listed:
            sort_listed()
        while parsed:
            staging.load_rows(parsed.popleft().result())
    staging.load_rows(rows)
    staging.load_listed(same)
    return seen, pages


def _sort_listed(
    raws: list, first_seq: int, index: ListedIndex | None, same: ListedSame
) -> tuple[list, list[int], list[str]]:
    """Hash each listed record's bytes; note those `index` holds (listed as the gateway holds
    them) in `same`, by sequence and digest, as arrays. Returns the rest, to be parsed: their
    bytes, sequences and hashes (hex)."""
    digests = listed_digests_of(raws)
    joined = b"".join(digests)
    held = index.contains(joined) if index is not None else np.zeros(len(raws), dtype=bool)
    if held.any():
        same.add(first_seq + np.flatnonzero(held), np.frombuffer(joined, dtype=np.uint8).reshape(-1, 16)[held].tobytes())
    offsets = np.flatnonzero(~held).tolist()
    return (
        [raws[offset] for offset in offsets],
        [first_seq + offset for offset in offsets],
        [digests[offset].hex() for offset in offsets],
    )


def _fetch_by_id(source: ProductServiceClient, entity: EntityType, ids: list[str]) -> list[dict | None]:
    """Each record as the product service has it now, or None where it answers 404."""
    if not ids:
        return []
    with ThreadPoolExecutor(max_workers=8, thread_name_prefix="by-id") as pool:
        return list(pool.map(lambda record_id: source.get_one(entity, record_id), ids))


def _deletion_candidates(staging: StagingStore, entity: EntityType, share: float, allow: bool) -> list[str]:
    """The ids a full listing no longer shows, each to be confirmed gone (404) or fetched; raises
    DeletionGuardError, deleting nothing, when more than `share` of what the gateway holds would go."""
    candidates = staging.deletion_candidates()
    held = staging.held_count()
    to_delete = sum(is_held for _, is_held in candidates)
    if to_delete and to_delete > share * held and not allow:
        raise DeletionGuardError(
            f"a full sync would delete {to_delete} of the {held} {entity.plural} the gateway holds"
            f" ({100 * to_delete / held:.1f}%), above the safety share of {100 * share:.0f}%;"
            " nothing was deleted. If the source really lost them, run again allowing deletions"
            " (--allow-deletions, or allow_deletions: true in the run config)."
        )
    return [record_id for record_id, _ in candidates]


def publish_changes(
    gateway: GatewayClient,
    scratch: SyncScratch,
    *,
    batch_size: int = 1000,
    workers: int = 16,
    sending: int = 4,
    save_every: int | None = None,
    progress: Progress | None = None,
) -> PublishResult:
    """Send every staged record whose version the gateway is owed, then the confirmed
    deletions, in batches followed to their end: at most `workers` batches at the gateway at
    once, all followed by one `BatchWatcher`; of those, at most `sending` (no more than
    `workers`) are being sent: made and not yet taken by the gateway, each holding its request
    body, about a megabyte, where a batch being followed holds its ids and hashes alone (a batch
    the gateway takes in parts, once all are taken). What the gateway did with each item
    is folded into the scratch and written back to the state store every `save_every` batches
    (SAVE_EVERY_BATCHES) and at the end, so a sync that dies loses at most three times that
    much bookkeeping: the batches since the last save, that save's, whose files are being
    written, and the one before it, which the state store is taking (the gateway replays the
    rest). The state store's writes (the batches, the saves) are made behind, in threads of
    their own, while the next batches go out (`WriteBehind`, `SyncScratch.save`)."""
    started = time.monotonic()
    save_every = SAVE_EVERY_BATCHES if save_every is None else save_every
    staging, state, entity, merchant, sync_id = (
        scratch.staging, scratch.state, scratch.entity, scratch.merchant, scratch.sync_id
    )
    totals = {"published": 0, "failed": 0, "deleted": 0, "batches": 0, "failed_batches": 0}
    unsaved_batches = 0

    def submit(operation: Operation, items: ChangedBatch) -> tuple[str, float]:
        """Hand one batch to the gateway and note it; returns its id and when it was sent."""
        key = idempotency_key_of(entity, operation, items.fingerprints(), merchant)
        key = state.usable_idempotency_key(key, merchant)
        submitted, submitted_at = time.monotonic(), utcnow()
        if operation is Operation.UPSERT:
            batch_id = gateway.submit_upsert_body(entity, items.body, len(items), key)
        else:
            batch_id = gateway.submit_delete(entity, items.id_list(), key)
        crash_point("publishing")
        writes(
            state.record_batch, batch_id=batch_id, sync_id=sync_id, entity=entity, operation=operation.value,
            idempotency_key=key, item_count=len(items), merchant=merchant, submitted_at=submitted_at,
        )
        return batch_id, submitted

    def follow(batch_id: str, submitted: float) -> BatchOutcome:
        crash_point("waiting")
        outcome = watcher.follow(batch_id, submitted)
        # Not waited for, even when the batch had failures (which spend its key): a batch with
        # one refusal among a thousand is the common case, and waiting behind a save stalled
        # every publishing thread. A crash before it is written costs one sync: the rerun is
        # answered by the gateway's replay, records the failures, and the sync after it retries
        # them under a new key.
        writes(
            state.record_batch_outcome, batch_id, batch_status=outcome.batch_status,
            success_count=outcome.success_count, fail_count=outcome.fail_count,
            failed_products=outcome.failed_items, ratio=outcome.ratio, finished_at=utcnow(),
        )
        return outcome

    def send_upsert(items: ChangedBatch) -> list[tuple[ChangedBatch, BatchOutcome]]:
        """`send` a batch made when one of the `sending` places was free; the place is free again
        once the gateway has taken all of the batch, or sending it failed."""
        freed = False

        def free_place() -> None:
            nonlocal freed
            if not freed:
                freed = True
                sending_places.release()

        try:
            return send(Operation.UPSERT, items, free_place)
        finally:
            free_place()

    def send(
        operation: Operation, items: ChangedBatch, taken: Callable[[], None] = lambda: None
    ) -> list[tuple[ChangedBatch, BatchOutcome]]:
        """Submit one batch, call `taken`, then follow it to its end. Only the submission is
        split (see `submit_parts`): an error while the batch is followed ends the sync (a rerun
        replays the batch by its key)."""
        parts = submit_parts(operation, items)
        taken()
        return [
            (part, refused if refused is not None else follow(batch_id, submitted))
            for part, refused, batch_id, submitted in parts
        ]

    def submit_parts(
        operation: Operation, items: ChangedBatch
    ) -> list[tuple[ChangedBatch, BatchOutcome | None, str, float]]:
        """Submit a batch. One the gateway refuses as malformed (400) or too large (413) goes as
        two halves, and so on until the item it refuses is alone: that item is refused with the
        gateway's reason, and everything else is submitted. Returns each part with the outcome
        of an item refused on its own, or with its batch id and when it was sent."""
        try:
            batch_id, submitted = submit(operation, items)
        except GatewayError as error:
            if error.http_status not in SPLIT_STATUSES:
                raise
            if len(items) == 1:
                reason = f"HTTP {error.http_status} from the gateway: {error.detail or error}"
                log.warning("the gateway refused %s %s on its own: %s", entity.value, items[0].id, reason)
                return [(items, BatchOutcome.refused_request(items[0].id, reason, operation.value), "", 0.0)]
            half = len(items) // 2
            log.info("the gateway refused a batch of %d (HTTP %s): sending it as two halves",
                     len(items), error.http_status)
            parts = submit_parts(operation, items[:half]) + submit_parts(operation, items[half:])
        else:
            parts = [(items, None, batch_id, submitted)]
        items.let_go_of_json()  # the gateway has it, whole or in parts
        return parts

    def settle(future: Future, operation: Operation) -> None:
        nonlocal unsaved_batches
        for items, outcome in future.result():
            unsaved_batches += 1
            if outcome.batch_status != REFUSED_REQUEST:
                totals["batches"] += 1
            if outcome.batch_status == "FAILED":
                totals["failed_batches"] += 1
                totals["failed"] += len(items)
                _note(staging, Outcome.FAILED, items, outcome.batch_id, {})
                continue
            refused = outcome.failed_reasons
            batch_id = outcome.batch_id or None
            accepted, rejected_items = items.partition(refused)
            if operation is Operation.UPSERT:
                _note(staging, Outcome.HELD, accepted, batch_id, {})
                _note(staging, Outcome.REFUSED, rejected_items, batch_id, refused)
                totals["published"] += len(accepted)
            else:
                _note(staging, Outcome.DELETED, accepted, batch_id, {})
                _note(staging, Outcome.FAILED, rejected_items, batch_id, refused)
                totals["deleted"] += len(accepted)
            totals["failed"] += len(rejected_items)
        if unsaved_batches >= save_every:
            staging.fold_outcomes(utcnow())
            scratch.save(settled_only=True)
            unsaved_batches = 0
            collect_young()
        if progress:
            progress(ProgressEvent("publishing", batches=totals["batches"], records=totals["published"],
                                   seconds=time.monotonic() - started))

    deletions = ChangedBatch.deletions(staging.pending_deletions())
    with paused_gc(), scratch.writing_behind() as writes, BatchWatcher(gateway, max_in_flight=workers) as watcher, \
            ThreadPoolExecutor(max_workers=workers, thread_name_prefix="publish") as pool:
        pending: dict[Future, Operation] = {}
        batches = staging.changed_since_publish(batch_size, UPSERT_ENVELOPE)
        # a batch is made (its JSON read and joined) only when a place to send it is free
        sending_places = threading.BoundedSemaphore(max(1, min(sending, workers)))

        def drain(limit: int) -> None:
            while len(pending) > limit:
                finished, _ = wait(pending, return_when=FIRST_COMPLETED)
                for future in finished:
                    settle(future, pending.pop(future))

        try:
            while True:
                sending_places.acquire()
                chunk = next(batches, None)
                if chunk is None:
                    sending_places.release()
                    break
                pending[pool.submit(send_upsert, chunk)] = Operation.UPSERT
                drain(workers)
            for start in range(0, len(deletions), batch_size):
                chunk = deletions[start : start + batch_size]
                pending[pool.submit(send, Operation.DELETE, chunk)] = Operation.DELETE
                drain(workers)
            drain(0)
        except BaseException:
            batches.close()  # its slice's JSON is let go of
            for future in pending:
                future.cancel()
            watcher.close()  # batches still at the gateway are not waited for: a rerun replays them
            raise
        finally:
            staging.fold_outcomes(utcnow())
            scratch.save()
    return PublishResult(seconds=time.monotonic() - started, **totals)


def _note(staging: StagingStore, kind: str, items: ChangedBatch, batch_id: str, reasons: dict[str, str]) -> None:
    if items:
        staging.record_outcomes(
            kind, items.ids, items.content_hashes, batch_id,
            [reasons.get(item_id) for item_id in items.id_list()] if reasons else None,
        )

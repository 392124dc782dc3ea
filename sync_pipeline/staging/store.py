"""The DuckDB scratch of one sync: load the listing in bulk, dedupe, validate, and diff it against
what the gateway holds. Everything here lives for one run; what must outlast it is read from
and written back to the state store as CSV (see state/records.py).

Tables:
  fetched   what this sync listed (and fetched by id), as loaded: one row per record seen,
            duplicates too; a temporary table, so transient rows cost no write-ahead log. A
            record a full sync took as unchanged from its listed bytes (see `listed`) has no
            JSON here: its id, time and hash are the state store's
  listed    (fetch sequence, hash of the listed bytes) of the records a full sync found listed
            exactly as the gateway holds them: `stage_listed` turns them into `fetched` rows
  known     the state store's rows for this (merchant, type) that this sync touches: the last
            valid version seen at the source, what the gateway holds, refusals, deletions, and
            `pending` (1: the gateway is owed the source's version; 2: a confirmed deletion).
            Rows this sync changes are marked `dirty` and written back (`take_unsaved`);
            `answered` marks those the gateway has answered for this sync (see `settled`).
            A row's own `seen` (its valid version) and `published` (what the gateway holds) are
            the trail's newest events: no trail row repeats them (state.records
            `_superseded_events`). `published_unsaved` marks a row published since its last
            save, whose `published` goes to `events` if a deletion clears it before the save
  outcomes  what the gateway said about each item sent, appended per batch and folded into
            `known` in one set operation (then kept in `settled` for the sync's checks)
  events    each record's trail this sync (rejected, refused, parked, failed, gone, deleted;
            a row's own seen and published are `known`), written to the state store with the
            changed rows; a table of the database, not of one connection, so a save can take them
  saving, saving_events
            what one save writes back, taken from `known` and `events` into temporary tables of
            a connection of its own (see `Unsaved`)
"""

from __future__ import annotations

import csv
import shutil
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa

from ..domain import Event
from ..state.records import UNCHANGED_IF_LISTED_SAME
from .changes import SCHEMA as CHANGED_SCHEMA
from .changes import DELETED, NO_ENVELOPE, ChangedBatch, copied
from .records import PageRows

PENDING_PUBLISH, PENDING_DELETE = 1, 2
PARKED_WHERE = "refused_hash = source_hash"  # refused at the version the source still has
TIME_FORMAT = "%Y-%m-%d %H:%M:%S.%f"  # UTC, as the state store's CSV files carry times

# The state store's record columns (state/records.py COLUMNS), with their DuckDB types.
KNOWN_COLUMNS: dict[str, str] = {
    "record_id": "VARCHAR",
    "source_hash": "VARCHAR",
    "listed_hash": "VARCHAR",
    "source_updated_at": "TIMESTAMPTZ",
    "source_sync_id": "VARCHAR",
    "source_seen_at": "TIMESTAMPTZ",
    "rejected_reason": "VARCHAR",
    "rejected_at": "TIMESTAMPTZ",
    "held_hash": "VARCHAR",
    "held_batch_id": "VARCHAR",
    "held_at": "TIMESTAMPTZ",
    "refused_hash": "VARCHAR",
    "refused_reason": "VARCHAR",
    "refused_at": "TIMESTAMPTZ",
    "refused_times": "INTEGER",
    "gone_at": "TIMESTAMPTZ",
    "deleted_batch_id": "VARCHAR",
    "deleted_at": "TIMESTAMPTZ",
    "pending": "SMALLINT",
}

SCHEMA = f"""
SET TimeZone = 'UTC';
CREATE TEMP TABLE IF NOT EXISTS fetched (
    seq BIGINT, id VARCHAR, updated_at TIMESTAMPTZ, raw VARCHAR, reason VARCHAR, content_hash VARCHAR,
    listed_hash VARCHAR, unparsed BOOLEAN NOT NULL DEFAULT false
);
CREATE TEMP TABLE IF NOT EXISTS listed (seq BIGINT, listed_hash VARCHAR);
CREATE TABLE IF NOT EXISTS known (
    {", ".join(f"{name} {kind}" for name, kind in KNOWN_COLUMNS.items())}, dirty BOOLEAN DEFAULT false,
    answered BOOLEAN DEFAULT false, published_unsaved BOOLEAN DEFAULT false
);
CREATE TEMP TABLE IF NOT EXISTS outcomes (
    id VARCHAR NOT NULL, kind VARCHAR NOT NULL, content_hash VARCHAR, batch_id VARCHAR, reason VARCHAR
);
CREATE TEMP TABLE IF NOT EXISTS settled (
    id VARCHAR NOT NULL, kind VARCHAR NOT NULL, content_hash VARCHAR, batch_id VARCHAR, reason VARCHAR
);
CREATE TABLE IF NOT EXISTS events (
    record_id VARCHAR NOT NULL, event_at TIMESTAMPTZ NOT NULL, event VARCHAR NOT NULL, content_hash VARCHAR,
    batch_id VARCHAR, detail VARCHAR
);
"""

LISTED = pa.schema([("seq", pa.int64()), ("digest", pa.binary(16))])
OUTCOMES = pa.schema([(name, pa.string()) for name in ("id", "kind", "content_hash", "batch_id", "reason")])

OUTCOMES_FLUSH_ROWS = 20_000
# changed records sorted (and held in memory, JSON and all) at a time before publishing: at 1M
# products, slices of 20,000 put 25 MiB more on a first sync's peak and were no faster
SLICE_ROWS = 5_000
# known rows one UPDATE changes at most, and fetch sequences whose changes are listed (and
# sorted) by one statement before publishing: DuckDB keeps what an UPDATE changed in memory until
# it commits, and a million rows at once, changed or sorted, did not fit the scratch's cap
WRITE_PART_ROWS = 25_000  # rows of a save sorted at a time (see Unsaved._copy_in_key_order)
UPDATE_PART_ROWS = 100_000
# DuckDB's CSV reader otherwise asks for a buffer of about 32 MiB a thread at once, which a 64 MB
# cap cannot give; a state store row is a few hundred bytes
CSV_BUFFER_BYTES = 4 << 20
MIN_CAP_BYTES = 32 << 20  # `cap_lowered_by` lowers DuckDB's cap to this at most


class ListedIndex:
    """Hashes of listed bytes (16-byte digests, as two 64-bit halves), looked up a few thousand
    at a time.

    Sorted, and cut into about as many buckets as hashes by their leading bits, so a lookup
    reads its bucket's few entries instead of binary-searching the whole array (which, at a
    million hashes, costs a cache miss per step)."""

    def __init__(self, high: np.ndarray, low: np.ndarray):
        order = np.argsort(high)  # a bucket is read whole: its entries need no order of their own
        self.high, self.low = high[order], low[order]
        bits = max(1, int(len(self.high)).bit_length())
        self.shift = np.uint64(64 - bits)
        buckets = np.arange((1 << bits) + 1, dtype=np.uint64)
        self.starts = np.searchsorted(self.high >> self.shift, buckets).astype(np.int32)  # 4 MB at a million
        self.widest = int(np.diff(self.starts).max())

    @classmethod
    def of(cls, digests: bytes | bytearray) -> ListedIndex | None:
        """The index of these digests (16 bytes each, one after the other), or None when none."""
        if not digests:
            return None
        halves = np.frombuffer(digests, dtype=">u8").reshape(-1, 2)
        return cls(halves[:, 0].astype(np.uint64), halves[:, 1].astype(np.uint64))

    def __len__(self) -> int:
        return len(self.high)

    @property
    def nbytes(self) -> int:
        return self.high.nbytes + self.low.nbytes + self.starts.nbytes

    def contains(self, digests: bytes) -> np.ndarray:
        """For each 16-byte digest in `digests` (concatenated), whether it is in the index."""
        pairs = np.frombuffer(digests, dtype=">u8").reshape(-1, 2).astype(np.uint64)
        high, low = pairs[:, 0], pairs[:, 1]
        bucket = (high >> self.shift).astype(np.int64)
        first, end = self.starts[bucket], self.starts[bucket + 1]
        found = np.zeros(len(high), dtype=bool)
        last = len(self.high) - 1
        for step in range(self.widest):
            at = np.minimum(first + step, last)
            found |= (first + step < end) & (self.high[at] == high) & (self.low[at] == low)
        return found


class ListedSame:
    """Records listed as the gateway holds them, gathered for one bulk load into `listed` (of up
    to `pipeline.LISTED_CHUNK_ROWS`): their fetch sequences and 16-byte digests as arrays, no
    Python object per record (a full re-sync of a million records gathers a million)."""

    def __init__(self) -> None:
        self.seqs: list[np.ndarray] = []
        self.digests: list[bytes] = []  # 16 bytes a record, one after the other
        self.count = 0

    def add(self, seqs: np.ndarray, digests: bytes) -> None:
        if len(seqs):
            self.seqs.append(seqs)
            self.digests.append(digests)
            self.count += len(seqs)

    def __len__(self) -> int:
        return self.count

    def table(self) -> pa.Table:
        digests = b"".join(self.digests)
        return pa.Table.from_arrays(
            [pa.array(np.concatenate(self.seqs), pa.int64()),
             pa.FixedSizeBinaryArray.from_buffers(pa.binary(16), self.count, [None, pa.py_buffer(digests)])],
            schema=LISTED,
        )


class Outcome:
    """What the gateway did with an item: the `kind` column of `outcomes`."""

    HELD = "held"  # applied: the gateway holds this version
    REFUSED = "refused"  # refused per item, with the gateway's reason
    FAILED = "failed"  # its batch ended FAILED or was never settled: nothing applied
    DELETED = "deleted"


@dataclass(frozen=True)
class StageCounts:
    fetched: int  # rows listed, duplicates included
    unique: int  # distinct records after dedupe
    valid: int
    rejected: int


@dataclass(frozen=True)
class PublishCheck:
    """After publishing: does the gateway hold what this sync staged?"""

    staged: int  # valid records of this sync
    held_current: int  # of those, held by the gateway at the version staged
    refused: int  # refused per item this sync (or parked)
    failed: int  # in batches that failed this sync
    unexplained: int  # neither held, refused nor failed: they were never sent
    orphans: int  # full syncs: held but no longer listed, and not deleted


def connect_scratch(path: Path, *, memory_limit: str = "64MB", threads: int = 2) -> duckdb.DuckDBPyConnection:
    """A DuckDB file for one run. DuckDB would otherwise take 80 % of the machine's memory as
    cache; it spills to disk beyond `memory_limit` instead, so memory stays flat in catalogue size."""
    return duckdb.connect(
        str(path),
        config={"memory_limit": memory_limit, "threads": threads, "preserve_insertion_order": False},
    )


def _without_fsst(db: duckdb.DuckDBPyConnection) -> None:
    """Keep the scratch's strings without DuckDB's FSST compression (nor, where this DuckDB has
    it, dictionary-FSST), for the whole DuckDB database of `db` (a global setting) while it is
    open. They are mostly hex hashes, which it packs to half at a high cost each time it writes
    them: a million of the state store's rows took 1.25 s to load instead of 0.75 s, and a first
    sync's million new rows 1.65 s to insert instead of 1.08 s; the steps after read them no
    slower. The scratch file is about twice as large, and thrown away. A speed-up only: a DuckDB
    without the setting (1.1) or without dict_fsst (1.2) keeps what it can."""
    for methods in ("fsst,dict_fsst", "fsst"):
        try:
            db.execute(f"SET disabled_compression_methods = '{methods}'")
            return
        except duckdb.Error:  # 1.2: InvalidInputException (no dict_fsst); 1.1: CatalogException (no setting)
            continue


class StagingStore:
    """`park_after`: a record refused this many times in a row at the same version is parked (not
    sent again until its content changes); None never parks. `withdraw_invalid`: a record the
    gateway holds whose source version became invalid is deleted from the gateway, instead of
    the gateway keeping its last valid version."""

    def __init__(
        self, connection: duckdb.DuckDBPyConnection, *, park_after: int | None = None, withdraw_invalid: bool = False
    ):
        self.db = connection
        self.park_after = park_after
        self.withdraw_invalid = withdraw_invalid
        self._saved_where = "dirty"
        _without_fsst(self.db)
        self.db.execute(SCHEMA)
        self._outcomes: list[pa.Table] = []  # not folded yet (record_outcomes)
        self._outcome_rows = 0

    def _scalar(self, sql: str, params: list | None = None):
        # fetchall, not fetchone: a result left unfinished blocks the connection's next call.
        return self.db.execute(sql, params or []).fetchall()[0][0]

    # --- what the state store knows ------------------------------------------------------
    def load_known(self, path: Path, *, beside: bool = False) -> None:
        """Add the state store's rows: a CSV file whose header names some of the KNOWN_COLUMNS
        (those the diff reads; the others stay null here, and the state store keeps them).

        `beside`: on a connection of its own (`known` is a table of the database, not of one
        connection), from another thread while this store's goes on: a full sync loads them
        while it pages, as none of its steps meanwhile reads or writes `known`."""
        if not beside:
            _load_known_csv(self.db, path)
            return
        with self.db.cursor() as apart:
            apart.execute("SET TimeZone = 'UTC'")  # a session of its own: the file's times are UTC
            _load_known_csv(apart, path)

    @contextmanager
    def cap_lowered_by(self, size: int) -> Iterator[None]:
        """DuckDB's memory cap lowered by `size` bytes inside (what the sync holds outside DuckDB
        meanwhile, so that the two together stay within the cap alone), down to MIN_CAP_BYTES at
        most, and as it was after. A cap of a GiB or more is left as it is: memory is not what
        such a deployment is short of, and DuckDB shows it to a tenth of a GiB only, which is
        all there is to restore it from (a cap in MiB is restored to within 0.05 MiB)."""
        was = self._scalar("SELECT current_setting('memory_limit')")
        number, unit = was.split()
        cap = int(float(number) * (1 << 20)) if unit == "MiB" else None
        if size <= 0 or cap is None or cap <= MIN_CAP_BYTES:
            yield
            return
        lowered = max(cap - size, MIN_CAP_BYTES)
        self.db.execute(f"SET memory_limit = '{lowered >> 10}KiB'")
        try:
            yield
        finally:
            self.db.execute(f"SET memory_limit = '{was}'")

    def unsaved_to_csv(self, rows_path: Path, events_path: Path, *, settled_only: bool = False) -> tuple[int, int]:
        """Write the rows this sync changed and the trail events not yet saved (for the state
        store); `settled_only`: only rows the gateway has answered for. `mark_saved` forgets
        them. Returns (rows, events)."""
        return self.take_unsaved(settled_only=settled_only).to_csv(rows_path, events_path)

    def take_unsaved(self, *, settled_only: bool = False) -> Unsaved:
        """The rows this sync changed and the trail events not yet saved, copied into a DuckDB
        connection of their own, for `Unsaved.to_csv` to write out from any thread while this
        store goes on (`mark_saved` forgets them here); `settled_only`: only rows the gateway has
        answered for (a save while publishing, so a record is not written once before it is
        sent and again after)."""
        where = "dirty" + (" AND answered" if settled_only else "")
        # Copied from `known` once: each part of the write-out, and each count, would scan the
        # whole catalogue again (about 20 scans a save: 0.95 s a save of 100,000 of 1M rows,
        # 0.45 s once copied). Temporary tables, as `fetched`: no write-ahead log, and they spill.
        apart = self.db.cursor()  # a session of its own: its settings too
        try:
            apart.execute("SET TimeZone = 'UTC'")  # the files' times are UTC (TIME_FORMAT)
            apart.execute(f"CREATE TEMP TABLE saving AS SELECT * FROM known WHERE {where}")
            apart.execute("CREATE TEMP TABLE saving_events AS SELECT *, rowid AS position FROM events")
        except BaseException:
            apart.close()
            raise
        self._saved_where = where
        return Unsaved(apart)

    def mark_saved(self) -> None:
        """Forget what `take_unsaved` took (or `unsaved_to_csv` wrote): it is written back from
        there. Nothing changed meanwhile: the scratch's tables are changed from one thread."""
        self.db.execute(
            f"UPDATE known SET dirty = false, published_unsaved = false WHERE {self._saved_where}"
        )
        self.db.execute("DELETE FROM events")

    def fetched_ids(self) -> list[str]:
        return [row[0] for row in self.db.execute("SELECT DISTINCT id FROM fetched WHERE id IS NOT NULL").fetchall()]

    def pending_not_fetched(self) -> list[str]:
        """Records the gateway is owed a version of that this sync did not list: fetched by id."""
        return [
            row[0]
            for row in self.db.execute(
                f"""
                SELECT record_id FROM known
                WHERE pending = {PENDING_PUBLISH} AND record_id NOT IN (SELECT id FROM fetched WHERE id IS NOT NULL)
                ORDER BY record_id
                """
            ).fetchall()
        ]

    # --- fetch -------------------------------------------------------------------------
    def load_rows(self, rows: PageRows | pa.Table) -> None:
        """Bulk-load a chunk of rows (or their `PageRows.table`) through Arrow: one INSERT per
        chunk, never per row."""
        if not len(rows):
            return
        chunk = rows.table() if isinstance(rows, PageRows) else rows
        self.db.register("incoming_chunk", chunk)
        try:
            self.db.execute(
                "INSERT INTO fetched (seq, id, updated_at, raw, reason, content_hash, listed_hash)"
                " SELECT seq, id, TRY_CAST(updated_at AS TIMESTAMPTZ), raw, reason, md5(raw), listed_hash"
                " FROM (SELECT * REPLACE (decode(raw) AS raw) FROM incoming_chunk)"
            )
        finally:
            self.db.unregister("incoming_chunk")

    # --- records listed as the gateway holds them ------------------------------------------
    def load_listed(self, same: ListedSame) -> None:
        """Note records listed as the gateway holds them (see `ListedIndex`), by fetch sequence."""
        if len(same):
            self.db.register("listed_chunk", same.table())
            try:
                self.db.execute("INSERT INTO listed SELECT seq, lower(hex(digest)) FROM listed_chunk")
            finally:
                self.db.unregister("listed_chunk")

    def stage_listed(self) -> int:
        """Add a `fetched` row for each record noted by `load_listed`, from what the state store
        knows of it: its id, time and content hash; no JSON (it is not sent). Returns how many."""
        expected = self._scalar("SELECT count(*) FROM listed")
        if not expected:
            return 0
        [(added,)] = self.db.execute(
            f"""
            INSERT INTO fetched (seq, id, updated_at, content_hash, listed_hash, unparsed)
            SELECT l.seq, k.record_id, k.source_updated_at, k.source_hash, k.listed_hash, true
            FROM listed l JOIN (SELECT * FROM known WHERE {UNCHANGED_IF_LISTED_SAME}) k ON k.listed_hash = l.listed_hash
            """
        ).fetchall()
        if added != expected:  # the index was read from these rows: nothing can tell them apart
            raise RuntimeError(f"{expected} records were listed as the gateway holds them, but {added} were found")
        self.db.execute("DELETE FROM listed")
        return added

    # --- stage -------------------------------------------------------------------------
    def stage_fetched(self, sync_id: str, *, now: datetime) -> StageCounts:
        """Dedupe `fetched` (latest updatedAt wins) and fold what the source showed into `known`:
        new versions, records that became invalid (their last valid version is kept) or valid
        again, records that came back. Then say for each what the gateway is owed."""
        db = self.db
        fetched = self._scalar("SELECT count(*) FROM fetched")
        # No transaction around these steps: the scratch is thrown away if a sync fails, and one
        # transaction holding every change of a large catalogue would not fit DuckDB's memory cap.
        # Duplicates are rare (a record updated while the listing paged): rank only those ids
        # and drop the older copies in place, so no step copies the catalogue's JSON.
        db.execute(
            """
            DELETE FROM fetched WHERE seq IN (
                SELECT seq FROM (
                    SELECT seq, row_number() OVER (
                        PARTITION BY id ORDER BY updated_at DESC NULLS LAST, seq DESC
                    ) AS rank
                    FROM fetched
                    WHERE id IN (SELECT id FROM fetched WHERE id IS NOT NULL GROUP BY id HAVING count(*) > 1)
                ) WHERE rank > 1
            )
            """
        )
        # What changed, first, narrow (no JSON): new records, new versions, records that became
        # invalid or valid again, records that came back. An unchanged catalogue yields nothing,
        # and nothing below touches more rows than changed (each step fits DuckDB's memory cap).
        # Rows `stage_listed` made are left out: each is its known row's own id, version and
        # listed hash, which UNCHANGED_IF_LISTED_SAME holds for, so none of them can change
        # anything; a full re-sync of a million unchanged records then joins none of them.
        db.execute("DROP TABLE IF EXISTS changes")
        # A row only `listed_only` is the same version listed as other bytes (keys reordered, or
        # first seen by a release that kept no listed hash): only its listed hash is remembered,
        # so that the next full sync need not parse it.
        changed = """(
            k.record_id IS NULL OR k.gone_at IS NOT NULL
            OR (f.reason IS NULL AND (k.source_hash IS DISTINCT FROM f.content_hash OR k.rejected_reason IS NOT NULL))
            OR (f.reason IS NOT NULL AND k.rejected_reason IS DISTINCT FROM f.reason)
        )"""
        db.execute(
            f"""
            CREATE TEMP TABLE changes AS
            SELECT f.id, f.content_hash, f.updated_at, f.reason, f.listed_hash, k.record_id IS NULL AS is_new,
                   NOT {changed} AS listed_only, (row_number() OVER () - 1) // {UPDATE_PART_ROWS} AS part
            FROM fetched f LEFT JOIN known k ON k.record_id = f.id
            WHERE f.id IS NOT NULL AND NOT f.unparsed AND (
                {changed}
                OR (f.reason IS NULL AND f.listed_hash IS NOT NULL AND k.listed_hash IS DISTINCT FROM f.listed_hash)
            )
            """
        )
        # and the trail: a rejected version, with the reason (a new valid version's `seen` is
        # its row)
        db.execute(
            f"""
            INSERT INTO events SELECT id, ?, '{Event.REJECTED}', content_hash, NULL, reason
            FROM changes WHERE NOT listed_only AND reason IS NOT NULL
            """,
            [now],
        )
        db.execute(
            """
            INSERT INTO known (record_id, source_hash, listed_hash, source_updated_at, source_sync_id, source_seen_at,
                               rejected_reason, rejected_at, refused_times, pending, dirty)
            SELECT id, CASE WHEN reason IS NULL THEN content_hash END, CASE WHEN reason IS NULL THEN listed_hash END,
                   CASE WHEN reason IS NULL THEN updated_at END,
                   CASE WHEN reason IS NULL THEN ? END, CASE WHEN reason IS NULL THEN ? END,
                   reason, CASE WHEN reason IS NOT NULL THEN ? END, 0, 0, true
            FROM changes WHERE is_new
            """,
            [sync_id, now, now],
        )
        # Known rows are updated a part of the changes at a time: DuckDB holds what an UPDATE
        # changed in memory until it commits, and a million rows changed at once (every record
        # of a full sync listed as other bytes, say) would not fit its cap.
        for part in range(self._scalar("SELECT coalesce(max(part) + 1, 0) FROM changes WHERE NOT is_new")):
            db.execute(
                """
                UPDATE known SET source_hash = c.content_hash, listed_hash = c.listed_hash,
                    source_updated_at = c.updated_at, source_sync_id = ?, source_seen_at = ?, rejected_reason = NULL,
                    rejected_at = NULL, gone_at = NULL, dirty = true
                FROM changes c
                WHERE c.id = known.record_id AND c.part = ? AND NOT c.is_new AND c.reason IS NULL AND NOT c.listed_only
                """,
                [sync_id, now, part],
            )
            db.execute(
                """
                UPDATE known SET rejected_reason = c.reason, rejected_at = ?, gone_at = NULL, dirty = true
                FROM changes c
                WHERE c.id = known.record_id AND c.part = ? AND NOT c.is_new AND c.reason IS NOT NULL
                """,
                [now, part],
            )
            db.execute(
                "UPDATE known SET listed_hash = c.listed_hash, dirty = true FROM changes c"
                " WHERE c.id = known.record_id AND c.part = ? AND c.listed_only",
                [part],
            )
        self._settle_pending()
        [(unique, valid)] = db.execute(
            "SELECT count(*), count(*) FILTER (WHERE reason IS NULL) FROM fetched"
        ).fetchall()
        return StageCounts(fetched=fetched, unique=unique, valid=valid, rejected=unique - valid)

    def _settle_pending(self, among: str = "") -> None:
        """`pending` from the rest of the row: a confirmed deletion of something held is owed
        as a delete (and, if so set, a held record now invalid); a valid version the gateway
        does not hold (and has not parked) as a publish. `among`: a condition narrowing the
        rows to look at. One pass over the table, no join: it must fit DuckDB's memory cap."""
        parked = "false" if self.park_after is None else f"({PARKED_WHERE} AND refused_times >= {int(self.park_after)})"
        withdraw = "true" if self.withdraw_invalid else "false"
        new_pending = f"""CASE
            WHEN gone_at IS NOT NULL THEN CASE WHEN held_hash IS NOT NULL THEN {PENDING_DELETE} ELSE 0 END
            WHEN {withdraw} AND rejected_reason IS NOT NULL AND held_hash IS NOT NULL THEN {PENDING_DELETE}
            WHEN source_hash IS NOT NULL AND rejected_reason IS NULL
                 AND source_hash IS DISTINCT FROM held_hash AND NOT {parked} THEN {PENDING_PUBLISH}
            ELSE 0 END"""
        self.db.execute(
            f"UPDATE known SET pending = {new_pending}, dirty = true"
            f" WHERE pending IS DISTINCT FROM ({new_pending}) {('AND ' + among) if among else ''}"
        )

    def rejected_rows(self) -> list[tuple[str | None, str, str]]:
        """(id, reason, raw JSON) of every invalid record this sync saw."""
        return self.db.execute("SELECT id, reason, raw FROM fetched WHERE reason IS NOT NULL ORDER BY seq").fetchall()

    # --- deletions -----------------------------------------------------------------------
    def deletion_candidates(self) -> list[tuple[str, bool]]:
        """(id, held) of records a full listing no longer shows that the gateway holds or is
        owed: each must be confirmed gone (404) before anything is deleted."""
        return self.db.execute(
            f"""
            SELECT record_id, held_hash IS NOT NULL FROM known
            WHERE gone_at IS NULL AND (held_hash IS NOT NULL OR pending = {PENDING_PUBLISH})
              AND record_id NOT IN (SELECT id FROM fetched WHERE id IS NOT NULL)
            ORDER BY record_id
            """
        ).fetchall()

    def mark_gone(self, ids: list[str], now: datetime) -> None:
        """Records the source confirmed gone: deleted from the gateway if it holds them."""
        if not ids:
            return
        self.db.register("gone_ids", pa.table({"id": pa.array(ids, pa.string())}))
        try:
            self.db.execute(
                f"INSERT INTO events SELECT id, ?, '{Event.GONE}', NULL, NULL, 'the product service answers 404'"
                " FROM gone_ids",
                [now],
            )
            self.db.execute(
                "UPDATE known SET gone_at = ?, dirty = true WHERE record_id IN (SELECT id FROM gone_ids)", [now]
            )
        finally:
            self.db.unregister("gone_ids")
        self._settle_pending()

    def held_count(self) -> int:
        return self._scalar("SELECT count(*) FROM known WHERE held_hash IS NOT NULL")

    def pending_deletions(self) -> list[tuple[str, str]]:
        return self.db.execute(
            f"SELECT record_id, held_hash FROM known WHERE pending = {PENDING_DELETE} ORDER BY record_id"
        ).fetchall()

    # --- diff --------------------------------------------------------------------------
    def count_changed(self) -> int:
        return self._scalar(f"SELECT count(*) {_CHANGED_FROM}")

    def changed_since_publish(
        self, chunk_size: int, envelope: tuple[bytes, bytes] = NO_ENVELOPE
    ) -> Iterator[ChangedBatch]:
        """Records fetched this sync whose version the gateway is owed, `chunk_size` at a time
        (the last batch may be shorter), in a fixed order: slice by slice in the order they
        were fetched, by id within each slice. Each batch's JSON is held with `envelope` before and
        after it (see `ChangedBatch`).

        The order makes batches the same after a crash (same listing, same content, same
        idempotency keys). Sorting the whole catalogue's JSON at once would not fit DuckDB's
        memory cap, so the changes are first listed narrow (fetch sequence and hashes; no JSON)
        in fetch order, UPDATE_PART_ROWS sequences at a time (in one statement when no more than
        that many are owed); that list is cut into slices of about SLICE_ROWS by quantiles of the
        sequence, and each slice takes its JSON from `fetched` by sequence and is sorted and read
        in turn. The parsed rows of `fetched` (the only ones with JSON to send) and `to_publish`
        are stored in fetch order, so DuckDB's zone maps let each slice read its own rows only:
        the JSON is read once, not once a slice.
        """
        if chunk_size < 1:
            raise ValueError(f"a batch holds at least one record, not {chunk_size}")
        db = self.db
        owed = self._scalar(f"SELECT count(*) FROM known WHERE pending = {PENDING_PUBLISH}")
        if not owed:
            return  # nothing owed (a full re-sync that found nothing new): no join of a million rows
        db.execute("DROP TABLE IF EXISTS to_publish")
        db.execute("CREATE TEMP TABLE to_publish (seq BIGINT, content_hash VARCHAR, held_hash VARCHAR)")
        # listed a range of fetch sequences at a time: a million changes sorted at once do not
        # fit the memory cap (a full re-sync that finds every record changed failed so at 1M)
        [(first, last)] = db.execute("SELECT min(seq), max(seq) FROM fetched").fetchall()
        if first is not None:
            # no more than that owed: all in one statement, instead of one join of the catalogue a part
            part = UPDATE_PART_ROWS if owed > UPDATE_PART_ROWS else last + 1 - first
            for low in range(first, last + 1, part):
                db.execute(
                    f"INSERT INTO to_publish SELECT f.seq, f.content_hash, k.held_hash {_CHANGED_FROM}"
                    " AND f.seq >= ? AND f.seq < ? ORDER BY f.seq",
                    [low, low + part],
                )
        changed = self._scalar("SELECT count(*) FROM to_publish")
        slices = max(1, -(-changed // SLICE_ROWS))
        bounds: list[int] = []
        if slices > 1:
            cuts = [i / slices for i in range(1, slices)]
            [(bounds,)] = db.execute(f"SELECT quantile_disc(seq, {cuts}) FROM to_publish").fetchall()
            bounds = sorted(set(bounds))
        edges = [None, *bounds, None]
        rest = None  # a slice's last records, short of a batch: the first of the next slice's batch
        for low, high in zip(edges, edges[1:]):
            where, params = "", []
            if low is not None:
                where, params = where + " AND f.seq >= ? AND t.seq >= ?", params + [low, low]
            if high is not None:
                where, params = where + " AND f.seq < ? AND t.seq < ?", params + [high, high]
            # The whole slice is read before the first batch is yielded: the caller records
            # outcomes on this connection between batches, which would end an open result. In
            # Arrow: a batch's JSON is joined for its request as it is made, and let go once sent.
            table = _arrow(db.sql(
                "SELECT f.id, f.raw, t.content_hash, t.held_hash FROM to_publish t JOIN fetched f ON f.seq = t.seq"
                f" WHERE true {where} ORDER BY f.id",
                params=params,
            )).cast(CHANGED_SCHEMA)
            if rest is not None:
                table = pa.concat_tables([rest, table])
            start = 0
            while table.num_rows - start >= chunk_size:
                yield ChangedBatch.of_rows(table.slice(start, chunk_size), envelope)
                start += chunk_size
            # copied: a slice would keep this slice's whole result alive while the next is read
            rest = copied(table.slice(start)) if start < table.num_rows else None
            del table
        if rest is not None:
            yield ChangedBatch.of_rows(rest, envelope)

    def referenced_ids(self) -> list[tuple[str, str]]:
        """(collection id, product id) for each product the valid collections of this sync name."""
        return self.db.execute(
            """
            SELECT id, product_id FROM (
                SELECT id, unnest(json_extract_string(raw, '$.productIds[*]')) AS product_id
                FROM fetched WHERE reason IS NULL
            ) WHERE product_id IS NOT NULL ORDER BY id, product_id
            """
        ).fetchall()

    # --- outcome -------------------------------------------------------------------------
    def record_outcomes(
        self, kind: str, ids: Sequence[str] | pa.Array | pa.ChunkedArray,
        hashes: Sequence[str | None] | pa.Array | pa.ChunkedArray, batch_id: str | None,
        reasons: Sequence[str | None] | None = None,
    ) -> None:
        """Note what the gateway did with these items (cheap, append-only); `fold_outcomes`
        applies them to `known`. `ids` and `hashes` as lists or Arrow arrays (a batch's
        columns); `reasons` None for none."""
        # Buffered and written in large chunks. Losing the buffer in a crash loses nothing:
        # the next sync sends those items again under the same keys, and the gateway replays.
        count = len(ids)
        if not count:
            return
        self._outcomes.append(pa.table(
            [
                _strings(ids), pa.array([kind] * count, pa.string()), _strings(hashes),
                pa.array([batch_id] * count, pa.string()),
                pa.nulls(count, pa.string()) if reasons is None else _strings(reasons),
            ],
            schema=OUTCOMES,
        ))
        self._outcome_rows += count
        if self._outcome_rows >= OUTCOMES_FLUSH_ROWS:
            self._flush_outcomes()

    def _flush_outcomes(self) -> None:
        if not self._outcomes:
            return
        table = pa.concat_tables(self._outcomes)
        self.db.register("outcomes_chunk", table)
        try:
            self.db.execute("INSERT INTO outcomes SELECT * FROM outcomes_chunk")
        finally:
            self.db.unregister("outcomes_chunk")
        self._outcomes, self._outcome_rows = [], 0

    def fold_outcomes(self, now: datetime) -> None:
        """Apply the buffered outcomes to `known` in set operations: what the gateway now
        holds, refused (counting refusals of the same version in a row) or deleted. Each kind's
        statement runs only when the kind is among the outcomes: each is a pass over `known`,
        the whole catalogue, and most folds hold nothing but `held`.

        A record is sent once a sync, so it has one answer between two saves: a second `held`
        would overwrite the first before the state store could keep it as a `published` event."""
        self._flush_outcomes()
        db = self.db
        kinds = {kind for (kind,) in db.execute("SELECT DISTINCT kind FROM outcomes").fetchall()}
        if not kinds:
            return
        if Outcome.DELETED in kinds:
            # an unsaved `published` goes to `events` before the deletion clears what it is made of
            before = f"published_unsaved AND record_id IN (SELECT id FROM outcomes WHERE kind = '{Outcome.DELETED}')"
            db.execute(
                f"INSERT INTO events SELECT record_id, held_at, '{Event.PUBLISHED}', held_hash, held_batch_id, NULL"
                f" FROM known WHERE {before}"
            )
            db.execute(f"UPDATE known SET published_unsaved = false WHERE {before}")
        # a `published` event is its row
        db.execute(
            f"""
            INSERT INTO events SELECT id, ?, kind,
                CASE WHEN kind = '{Outcome.DELETED}' THEN NULL ELSE NULLIF(content_hash, '{DELETED}') END, batch_id, reason
            FROM outcomes WHERE kind <> '{Outcome.HELD}'
            """,
            [now],
        )
        if self.park_after and Outcome.REFUSED in kinds:
            db.execute(
                f"""
                INSERT INTO events SELECT o.id, ?, '{Event.PARKED}', o.content_hash, o.batch_id,
                    'refused {self.park_after} times in a row at this version: not sent again until it changes'
                FROM outcomes o JOIN known k ON k.record_id = o.id
                WHERE o.kind = '{Outcome.REFUSED}' AND k.refused_hash = o.content_hash
                  AND k.refused_times + 1 = {int(self.park_after)} AND k.source_hash = o.content_hash
                """,
                [now],
            )
        # every row an outcome touches is `answered` (a save while publishing writes it back): a
        # flag, not a lookup in `settled` at each save, a table that grows to the whole catalogue.
        # DuckDB pays for every column an UPDATE sets, on every row (about 1 s a text column a
        # million rows): a refusal is cleared apart, on the few rows that have one.
        if Outcome.HELD in kinds:
            db.execute(
                "UPDATE known SET refused_hash = NULL, refused_reason = NULL, refused_at = NULL, refused_times = 0"
                f" FROM outcomes o WHERE o.id = known.record_id AND o.kind = '{Outcome.HELD}'"
                " AND known.refused_hash IS NOT NULL"
            )
        changes = {
            Outcome.HELD: "held_hash = o.content_hash, held_batch_id = o.batch_id, held_at = ?, published_unsaved = true",
            Outcome.REFUSED: "refused_times = CASE WHEN refused_hash = o.content_hash THEN refused_times + 1 ELSE 1 END,"
                             " refused_hash = o.content_hash, refused_reason = o.reason, refused_at = ?",
            Outcome.DELETED: "held_hash = NULL, held_batch_id = NULL, held_at = NULL, deleted_batch_id = o.batch_id,"
                             " deleted_at = ?",
        }
        for kind, change in changes.items():
            if kind in kinds:
                db.execute(
                    f"UPDATE known SET {change}, dirty = true, answered = true"
                    f" FROM outcomes o WHERE o.id = known.record_id AND o.kind = '{kind}'",
                    [now],
                )
        if Outcome.FAILED in kinds:
            db.execute(
                "UPDATE known SET answered = true"
                f" WHERE record_id IN (SELECT id FROM outcomes WHERE kind = '{Outcome.FAILED}') AND NOT answered"
            )
        self._settle_pending(among="record_id IN (SELECT id FROM outcomes)")
        db.execute("INSERT INTO settled SELECT * FROM outcomes")
        db.execute("DELETE FROM outcomes")

    def publish_check(self, *, full: bool) -> PublishCheck:
        """Count, for the records staged this sync, where each ended up. A row `stage_listed`
        made is held at its version by construction (UNCHANGED_IF_LISTED_SAME), and publishing
        sends none of them: they are counted as such, not joined (a million in a full re-sync)."""
        [(unparsed,)] = self.db.execute("SELECT count(*) FROM fetched WHERE unparsed").fetchall()
        # The gateway's last answer is looked up only for the records it does not hold at the
        # version staged (a few, most syncs): one ordered aggregate of all of `settled` (a first
        # sync's million answers) took most of this check's 0.7 s.
        [(staged, held_current, refused, failed, unexplained)] = self.db.execute(
            f"""
            WITH staged AS MATERIALIZED (
                SELECT f.id, k.held_hash = f.content_hash AS current,
                       k.held_hash IS DISTINCT FROM f.content_hash AS is_behind, k.pending
                FROM fetched f JOIN known k ON k.record_id = f.id
                WHERE f.reason IS NULL AND NOT f.unparsed
            ), behind AS (SELECT id, pending FROM staged WHERE is_behind),
            answers AS (
                SELECT id, last(kind ORDER BY rowid) AS kind FROM settled
                WHERE id IN (SELECT id FROM behind) GROUP BY id
            )
            SELECT (SELECT count(*) FROM staged), (SELECT count(*) FROM staged WHERE current),
                   count(*) FILTER (WHERE s.kind = '{Outcome.REFUSED}' OR b.pending = 0),
                   count(*) FILTER (WHERE s.kind = '{Outcome.FAILED}'),
                   count(*) FILTER (WHERE b.pending <> 0 AND s.kind IS NULL)
            FROM behind b LEFT JOIN answers s ON s.id = b.id
            """
        ).fetchall()
        staged, held_current = staged + unparsed, held_current + unparsed
        orphans = 0
        if full:
            orphans = self._scalar(
                "SELECT count(*) FROM known WHERE held_hash IS NOT NULL"
                " AND record_id NOT IN (SELECT id FROM fetched WHERE id IS NOT NULL)"
            )
        return PublishCheck(staged, held_current, refused, failed, unexplained, orphans)


_CHANGED_FROM = f"""
FROM fetched f JOIN known k ON k.record_id = f.id
WHERE f.reason IS NULL AND k.pending = {PENDING_PUBLISH} AND k.source_hash = f.content_hash
"""


class Unsaved:
    """What one save writes back, taken from the scratch by `StagingStore.take_unsaved` into a
    DuckDB connection of its own: its temporary tables `saving` (the rows of `known`) and
    `saving_events` (the trail events noted apart, numbered in the order they happened). Written
    out once, from any thread: DuckDB gives up the interpreter lock while it sorts and writes,
    so the sync's thread goes on publishing meanwhile."""

    def __init__(self, db: duckdb.DuckDBPyConnection):
        self.db = db

    def _scalar(self, sql: str):
        return self.db.execute(sql).fetchall()[0][0]

    def to_csv(self, rows_path: Path, events_path: Path) -> tuple[int, int]:
        """Write the rows and their events to the files; returns (rows, events). The connection
        is closed after, written or not."""
        try:
            return self._to_csv(rows_path, events_path)
        finally:
            self.close()

    def close(self) -> None:
        with suppress(duckdb.Error):  # a scratch DuckDB gave up on: its own error is the one to see
            self.db.close()

    def _to_csv(self, rows_path: Path, events_path: Path) -> tuple[int, int]:
        rows = self._scalar("SELECT count(*) FROM saving")
        with self._one_thread():
            if rows:
                columns = ", ".join(
                    f"strftime({name}, '{TIME_FORMAT}') AS {name}" if kind == "TIMESTAMPTZ" else name
                    for name, kind in KNOWN_COLUMNS.items()
                )
                # in key order: the state store's indexes take sorted rows far faster than shuffled
                self._copy_in_key_order(columns, "saving", "record_id", rows, rows_path)
            # the trail events noted apart (a row's own `seen` and `published` are the row: see
            # state.records._superseded_events), by record, each record's in the order they
            # happened (the state store numbers them in file order, and its trail index takes
            # them in key order)
            events = self._scalar("SELECT count(*) FROM saving_events")
            if events:
                self._copy_in_key_order(
                    f"record_id, strftime(event_at, '{TIME_FORMAT}') AS event_at, event, content_hash, batch_id, detail",
                    "saving_events", "record_id, position", events, events_path,
                )
        return rows, events

    def _copy_in_key_order(self, columns: str, source: str, order: str, rows: int, path: Path) -> None:
        """Write `columns` of the relation `source` to the CSV file `path` (with a header), ordered
        by `order` (record_id first), about WRITE_PART_ROWS rows sorted at a time: by ranges of
        record_id cut at a sample's quantiles (an exact quantile of a million ids holds them all
        in memory), each part appended to the file in turn. One sort of a whole save's wide rows
        (100,000 of them) did not fit a 52 MB cap; a part's fits in far less. Each part scans the
        whole source again (four parts a save at 1M): the 1M first sync took as long as with one
        sort (110-115 s against 111 s)."""
        parts = -(-rows // WRITE_PART_ROWS)
        bounds: list[str] = []
        if parts > 1:
            sample = sorted(
                record_id for (record_id,) in self.db.execute(
                    f"SELECT record_id FROM {source} WHERE record_id IS NOT NULL"
                    f" USING SAMPLE reservoir({100 * parts} ROWS)"
                ).fetchall()
            )
            bounds = sorted({sample[len(sample) * i // parts] for i in range(1, parts)}) if sample else []
        edges: list[str | None] = [None, *bounds, None]
        part = path.with_name(path.name + ".part")
        try:
            with path.open("wb") as out:
                for number, (low, high) in enumerate(zip(edges, edges[1:])):
                    if low is None and high is None:
                        where, params = "true", []
                    elif low is None:
                        where, params = "record_id < ?", [high]
                    elif high is None:
                        where, params = "record_id >= ? OR record_id IS NULL", [low]  # nulls sort last
                    else:
                        where, params = "record_id >= ? AND record_id < ?", [low, high]
                    self.db.execute(
                        f"COPY (SELECT {columns} FROM {source} WHERE {where} ORDER BY {order}) TO '{_sql_path(part)}'"
                        f" (FORMAT csv, HEADER {str(number == 0).lower()}, DELIMITER ',')",
                        params,
                    )
                    with part.open("rb") as written:
                        shutil.copyfileobj(written, out)
        finally:
            part.unlink(missing_ok=True)

    @contextmanager
    def _one_thread(self) -> Iterator[None]:
        """Run what is inside on one DuckDB thread. A sort of wide rows (the write-back, in key
        order) fails within the memory cap on two threads (`Out of Memory Error: failed to
        allocate data of size 30.2 MiB (119.7 MiB/122.0 MiB used)` at 1M rows, DuckDB 2.0),
        where one thread has the whole cap to itself and spills. The setting is the database's:
        the scratch's own queries meanwhile (a save is written out beside publishing) run on one
        thread too, which made publishing no slower when tried for all of it."""
        threads = self._scalar("SELECT current_setting('threads')")
        self.db.execute("SET threads = 1")
        try:
            yield
        finally:
            self.db.execute(f"SET threads = {int(threads)}")


def _load_known_csv(db: duckdb.DuckDBPyConnection, path: Path) -> None:
    """INSERT into `known` the rows of a CSV file whose header names some of the KNOWN_COLUMNS."""
    with path.open(newline="") as source:
        names = next(csv.reader(source), None)
    if not names:
        return
    columns = {name: KNOWN_COLUMNS[name] for name in names}
    reader = (
        "read_csv(?, header = true, auto_detect = false, delim = ',', quote = '\"', escape = '\"',"
        f" new_line = '\\n', nullstr = '', columns = {columns!r}, buffer_size = {CSV_BUFFER_BYTES})"
    )
    db.execute(f"INSERT INTO known ({', '.join(columns)}) SELECT {', '.join(columns)} FROM {reader}", [str(path)])


def _strings(values: Sequence[str | None] | pa.Array | pa.ChunkedArray) -> pa.Array | pa.ChunkedArray:
    if isinstance(values, (pa.Array, pa.ChunkedArray)):
        return values if values.type == pa.string() else values.cast(pa.string())
    return pa.array(values, pa.string())


def _arrow(relation: duckdb.DuckDBPyRelation) -> pa.Table:
    """The relation's rows as one Arrow table (`to_arrow_table`: DuckDB 2.0 deprecates
    `fetch_arrow_table`, which older versions have)."""
    to_table = getattr(relation, "to_arrow_table", None) or relation.fetch_arrow_table
    return to_table()


def _sql_path(path: Path) -> str:
    return str(path).replace("'", "''")

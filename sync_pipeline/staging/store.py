"""The DuckDB staging file of one entity type.

Tables:
  fetched    what the current sync listed, as loaded (one row per record seen, duplicates too);
             a temporary table: it needs no durability, so it costs no write-ahead log or checkpoint
  staged     the latest valid version of every live record known: the source's image
  published  what the gateway accepted: id and content hash, so only changes are sent
  accepted   what the gateway accepted in the batches of the sync under way, appended per batch
             and folded into `published` in one set operation (content_hash NULL: deleted)
  to_delete  records a full sync found gone from the source (confirmed by a 404), to delete
  rejected   every invalid record seen, with its raw JSON, the reason and the sync
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import duckdb
import pyarrow as pa

from .records import PageRows

SCHEMA = """
DROP TABLE IF EXISTS main.fetched;
CREATE TEMP TABLE IF NOT EXISTS fetched (
    seq BIGINT, id VARCHAR, updated_at TIMESTAMPTZ, raw VARCHAR, reason VARCHAR, content_hash VARCHAR
);
CREATE TABLE IF NOT EXISTS staged (
    id VARCHAR NOT NULL, updated_at TIMESTAMPTZ, raw VARCHAR NOT NULL,
    content_hash VARCHAR NOT NULL, sync_id VARCHAR
);
CREATE TABLE IF NOT EXISTS published (
    id VARCHAR NOT NULL, content_hash VARCHAR NOT NULL, sync_id VARCHAR, published_at TIMESTAMPTZ
);
CREATE TABLE IF NOT EXISTS accepted (
    id VARCHAR NOT NULL, content_hash VARCHAR, sync_id VARCHAR
);
CREATE TABLE IF NOT EXISTS to_delete (
    id VARCHAR NOT NULL, content_hash VARCHAR NOT NULL
);
CREATE TABLE IF NOT EXISTS rejected (
    sync_id VARCHAR, id VARCHAR, raw VARCHAR, reason VARCHAR, rejected_at TIMESTAMPTZ
);
"""

FETCHED_SCHEMA = pa.schema(
    [
        ("seq", pa.int64()),
        ("id", pa.string()),
        ("updated_at", pa.string()),  # as sent; DuckDB parses it in bulk (validity was checked in Python)
        ("raw", pa.string()),
        ("reason", pa.string()),
    ]
)
ACCEPTED_FLUSH_ROWS = 20_000
SLICE_ROWS = 50_000  # changed records sorted at a time before publishing


@dataclass(frozen=True)
class StageCounts:
    fetched: int  # rows listed, duplicates included
    unique: int  # distinct records after dedupe
    valid: int
    rejected: int


@dataclass(frozen=True)
class ChangedRecord:
    id: str
    raw: str
    content_hash: str
    published_hash: str | None

    @property
    def fingerprint(self) -> str:
        return f"{self.id}:{self.published_hash}:{self.content_hash}"


class StagingStore:
    def __init__(self, connection: duckdb.DuckDBPyConnection):
        self.db = connection
        self.db.execute(SCHEMA)
        self._accepted: tuple[list, list, list] = ([], [], [])

    def _scalar(self, sql: str, params: list | None = None):
        # fetchall, not fetchone: a result left unfinished blocks the connection's next call.
        return self.db.execute(sql, params or []).fetchall()[0][0]

    # --- fetch -------------------------------------------------------------------------
    def begin_fetch(self) -> None:
        self.db.execute("DELETE FROM fetched")
        self.db.execute("DELETE FROM to_delete")

    def load_rows(self, rows: PageRows) -> None:
        """Bulk-load a chunk of rows through Arrow: one INSERT per chunk, never per row."""
        if not len(rows):
            return
        chunk = pa.Table.from_pydict(
            {
                "seq": rows.seq,
                "id": rows.id,
                "updated_at": rows.updated_at,
                "raw": rows.raw,
                "reason": rows.reason,
            },
            schema=FETCHED_SCHEMA,
        )
        self.db.register("incoming_chunk", chunk)
        try:
            self.db.execute(
                "INSERT INTO fetched SELECT seq, id, TRY_CAST(updated_at AS TIMESTAMPTZ), raw, reason, md5(raw)"
                " FROM incoming_chunk"
            )
        finally:
            self.db.unregister("incoming_chunk")

    # --- stage -------------------------------------------------------------------------
    def stage_fetched(self, sync_id: str, *, full: bool) -> StageCounts:
        """Dedupe `fetched` (latest updatedAt wins), keep rejects, merge valid rows into `staged`.

        A full sync replaces the image with what was listed; a record listed but rejected
        keeps its earlier valid version, so it is neither republished nor deleted.
        """
        db = self.db
        fetched = self._scalar("SELECT count(*) FROM fetched")
        db.execute("BEGIN")
        try:
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
            db.execute(
                "INSERT INTO rejected SELECT ?, id, raw, reason, now() FROM fetched WHERE reason IS NOT NULL",
                [sync_id],
            )
            # Only what changed is written: an unchanged catalogue rewrites nothing.
            db.execute(
                """
                DELETE FROM staged WHERE id IN (
                    SELECT f.id FROM fetched f JOIN staged s USING (id)
                    WHERE f.reason IS NULL AND f.content_hash <> s.content_hash
                )
                """
            )
            if full:  # gone from the listing: no longer part of the source's image
                db.execute("DELETE FROM staged WHERE id NOT IN (SELECT id FROM fetched WHERE id IS NOT NULL)")
            db.execute(
                """
                INSERT INTO staged
                SELECT f.id, f.updated_at, f.raw, f.content_hash, ? FROM fetched f
                WHERE f.reason IS NULL AND NOT EXISTS (SELECT 1 FROM staged s WHERE s.id = f.id)
                """,
                [sync_id],
            )
            [(unique, valid)] = db.execute(
                "SELECT count(*), count(*) FILTER (WHERE reason IS NULL) FROM fetched"
            ).fetchall()
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        return StageCounts(fetched=fetched, unique=unique, valid=valid, rejected=unique - valid)

    # --- diff --------------------------------------------------------------------------
    def count_changed(self) -> int:
        return self._scalar(f"SELECT count(*) {_CHANGED_FROM}")

    def changed_since_publish(self, chunk_size: int) -> Iterator[list[ChangedRecord]]:
        """Staged records whose content differs from what the gateway accepted, in id order.

        The order makes batches the same after a crash (same content, same idempotency key).
        Sorting the whole catalogue's JSON at once would not fit DuckDB's memory limit, so the
        changed ids are cut into slices by quantile (a narrow pass), and each slice is sorted and
        streamed in turn: the same order, a fraction of the memory.
        """
        changed = self.count_changed()
        slices = max(1, -(-changed // SLICE_ROWS))
        bounds: list[str] = []
        if slices > 1:
            cuts = [i / slices for i in range(1, slices)]
            [(bounds,)] = self.db.execute(f"SELECT quantile_disc(s.id, {cuts}) {_CHANGED_FROM}").fetchall()
            bounds = sorted(set(bounds))
        edges = [None, *bounds, None]
        cursor = self.db.cursor()
        chunk: list[ChangedRecord] = []
        try:
            for low, high in zip(edges, edges[1:]):
                where, params = "", []
                if low is not None:
                    where, params = where + " AND s.id >= ?", params + [low]
                if high is not None:
                    where, params = where + " AND s.id < ?", params + [high]
                cursor.execute(
                    f"SELECT s.id, s.raw, s.content_hash, p.content_hash {_CHANGED_FROM} {where} ORDER BY s.id", params
                )
                while rows := cursor.fetchmany(chunk_size - len(chunk)):
                    chunk += [ChangedRecord(*row) for row in rows]
                    if len(chunk) == chunk_size:
                        yield chunk
                        chunk = []
            if chunk:
                yield chunk
        finally:
            cursor.close()

    def deletion_candidates(self) -> list[tuple[str, str]]:
        """(id, hash) of records the gateway holds that the last full listing did not list."""
        return self.db.execute(
            """
            SELECT id, content_hash FROM published
            WHERE id NOT IN (SELECT id FROM fetched WHERE id IS NOT NULL)
            ORDER BY id
            """
        ).fetchall()

    def set_deletions(self, records: list[tuple[str, str]]) -> None:
        self.db.execute("DELETE FROM to_delete")
        if records:
            table = pa.table({"id": [r[0] for r in records], "content_hash": [r[1] for r in records]})
            self.db.register("deletions_chunk", table)
            try:
                self.db.execute("INSERT INTO to_delete SELECT * FROM deletions_chunk")
            finally:
                self.db.unregister("deletions_chunk")

    def pending_deletions(self) -> list[tuple[str, str]]:
        return self.db.execute("SELECT id, content_hash FROM to_delete ORDER BY id").fetchall()

    # --- outcome -------------------------------------------------------------------------
    def mark_published(self, records: list[ChangedRecord], sync_id: str) -> None:
        """Note records the gateway accepted (cheap, append-only); `fold_accepted` applies them."""
        self._append_accepted([r.id for r in records], [r.content_hash for r in records], sync_id)

    def mark_deleted(self, ids: list[str], sync_id: str | None = None) -> None:
        """Note records the gateway deleted; `fold_accepted` applies them."""
        self._append_accepted(ids, [None] * len(ids), sync_id)

    def _append_accepted(self, ids: list[str], hashes: list[str | None], sync_id: str | None) -> None:
        # Buffered and written in large chunks. Losing the buffer in a crash loses nothing:
        # the next sync sends those items again under the same keys, and the gateway replays.
        buffered_ids, buffered_hashes, buffered_syncs = self._accepted
        buffered_ids += ids
        buffered_hashes += hashes
        buffered_syncs += [sync_id] * len(ids)
        if len(buffered_ids) >= ACCEPTED_FLUSH_ROWS:
            self._flush_accepted()

    def _flush_accepted(self) -> None:
        ids, hashes, sync_ids = self._accepted
        if not ids:
            return
        table = pa.table(
            {"id": pa.array(ids, pa.string()), "content_hash": pa.array(hashes, pa.string()),
             "sync_id": pa.array(sync_ids, pa.string())}
        )
        self.db.register("accepted_chunk", table)
        try:
            self.db.execute("INSERT INTO accepted SELECT id, content_hash, sync_id FROM accepted_chunk")
        finally:
            self.db.unregister("accepted_chunk")
        self._accepted = ([], [], [])

    def fold_accepted(self) -> None:
        """Apply everything the gateway accepted to `published` (and deletions to the image), in
        one transaction. Rows left by a sync that died are folded by the next one: the gateway
        did apply them."""
        self._flush_accepted()
        db = self.db
        db.execute("BEGIN")
        try:
            db.execute("DELETE FROM published WHERE id IN (SELECT id FROM accepted)")
            db.execute(
                """
                INSERT INTO published
                SELECT id, last(content_hash ORDER BY rowid), last(sync_id ORDER BY rowid), now()
                FROM (SELECT rowid, * FROM accepted) GROUP BY id
                HAVING last(content_hash ORDER BY rowid) IS NOT NULL
                """
            )
            gone = "SELECT id FROM accepted WHERE content_hash IS NULL"
            db.execute(f"DELETE FROM staged WHERE id IN ({gone})")
            db.execute(f"DELETE FROM to_delete WHERE id IN ({gone})")
            db.execute("DELETE FROM accepted")
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    def unexplained_unpublished(self, refused_ids: list[str]) -> int:
        """Staged records the gateway never accepted and did not refuse: they were not sent."""
        table = pa.table({"id": pa.array(refused_ids, pa.string())})
        self.db.register("refused_ids", table)
        try:
            return self._scalar("""
                SELECT count(*) FROM staged s
                WHERE NOT EXISTS (SELECT 1 FROM published p WHERE p.id = s.id)
                  AND s.id NOT IN (SELECT id FROM refused_ids)
                """)
        finally:
            self.db.unregister("refused_ids")

    def orphan_count(self) -> int:
        """Records the gateway holds that are not in the source's image (unconfirmed deletions)."""
        return self._scalar("SELECT count(*) FROM published WHERE id NOT IN (SELECT id FROM staged)")

    def published_count(self) -> int:
        return self._scalar("SELECT count(*) FROM published")

    def staged_count(self) -> int:
        return self._scalar("SELECT count(*) FROM staged")

    def rejected_for_sync(self, sync_id: str) -> list[tuple[str | None, str, str]]:
        return self.db.execute(
            "SELECT id, reason, raw FROM rejected WHERE sync_id = ? ORDER BY id", [sync_id]
        ).fetchall()


_CHANGED_FROM = """
FROM staged s LEFT JOIN published p USING (id)
WHERE p.content_hash IS DISTINCT FROM s.content_hash
"""

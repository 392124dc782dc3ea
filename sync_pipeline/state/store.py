"""Repository over the state store: every read and write of syncs and batches goes through here."""

from __future__ import annotations

import hashlib
import os
import re
import socket
import threading
import uuid
from dataclasses import dataclass, fields
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from ..domain import DEFAULT_MERCHANT, EntityType, SyncMode, SyncStatus, Window, as_utc, resolve_window, utcnow
from ..errors import EntityBusy
from ..settings import sync_lookback
from . import records, retention, schema
from .schema import ACTIVE_CODES, SUCCESS_CODES, batches, syncs


@dataclass(frozen=True)
class SyncRecord:
    sync_id: str
    merchant_id: str
    entity_type: EntityType
    mode: SyncMode
    requested_mode: SyncMode
    window_start: datetime | None
    window_end: datetime | None
    sync_to: datetime | None
    status: SyncStatus
    requested_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    run_id: str | None
    origin: str
    allow_deletions: bool
    fetched: int
    rejected: int
    published: int
    failed: int
    deleted: int
    batches: int
    parked: int
    invalid_held: int
    num_records: int | None
    data_pushed: bool
    error_message: str | None
    worker_host: str | None
    worker_pid: int | None

    @classmethod
    def from_row(cls, row: Any) -> "SyncRecord":
        m = row._mapping
        values = {f.name: m[f.name] for f in fields(cls) if f.name != "status"}
        values["entity_type"] = EntityType(m["entity_type"])
        values["mode"] = SyncMode(m["mode"])
        values["requested_mode"] = SyncMode(m["requested_mode"])
        for name in ("window_start", "window_end", "sync_to", "requested_at", "started_at", "finished_at"):
            values[name] = as_utc(values[name])
        return cls(status=SyncStatus.from_code(m["status_code"]), **values)

    @property
    def window(self) -> Window | None:
        return Window(self.window_start, self.window_end) if self.window_end else None


@dataclass(frozen=True)
class BatchRecord:
    batch_id: str
    sync_id: str
    merchant_id: str
    entity_type: EntityType
    bulk_operation_type: str
    idempotency_key: str
    item_count: int
    batch_status: str
    success_count: int
    fail_count: int
    failed_products: list
    ratio: str | None
    submitted_at: datetime
    finished_at: datetime | None

    @classmethod
    def from_row(cls, row: Any) -> "BatchRecord":
        m = dict(row._mapping)
        m["entity_type"] = EntityType(m["entity_type"])
        m["submitted_at"] = as_utc(m["submitted_at"])
        m["finished_at"] = as_utc(m["finished_at"])
        return cls(**m)


# Each batch a sync has at the gateway (SYNC_GATEWAY_IN_FLIGHT, 16 by default) records itself
# from its own thread: on SQLite the pool keeps that many connections once opened (beyond
# SQLAlchemy's 5, each batch would open and set up a connection of its own, three times), and
# opens more while needed. PostgreSQL keeps SQLAlchemy's 5: every process holding 20 idle
# connections would press on the server's connection limit.
SQLITE_POOL_SIZE = 20
POOL_OVERFLOW = 40


def create_state_engine(url: str) -> Engine:
    for plain in ("postgresql://", "postgres://"):
        if url.startswith(plain):  # SQLAlchemy 2.1 would pick psycopg 3; psycopg2 is what ships
            url = "postgresql+psycopg2://" + url[len(plain):]
    if url.startswith("sqlite"):
        engine = sa.create_engine(url, connect_args={"timeout": 30}, pool_size=SQLITE_POOL_SIZE, max_overflow=POOL_OVERFLOW)

        @sa.event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_connection, _record):  # noqa: ANN001
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.close()

        return engine
    return sa.create_engine(url, pool_pre_ping=True, max_overflow=POOL_OVERFLOW)


# An advisory lock id all processes agree on: schema upgrades on PostgreSQL run one at a time.
SCHEMA_LOCK_ID = 0x53594E43  # "SYNC"


class StateStore:
    def __init__(self, url: str):
        if url.startswith("sqlite:///"):
            Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        self.url = url
        self.engine = create_state_engine(url)
        self._upgrade()

    @property
    def is_postgres(self) -> bool:
        return self.engine.dialect.name == "postgresql"

    def dispose(self) -> None:
        self.engine.dispose()

    def _upgrade(self) -> None:
        """Create the schema, or bring an older one up to date, in one transaction.

        On PostgreSQL the transaction first takes an advisory lock, so processes starting
        together upgrade one after the other (the later ones find the work done). On SQLite a
        process that loses the race to create a table tries once more."""
        for attempt in range(2):
            try:
                with self.engine.begin() as conn:
                    if self.is_postgres:
                        conn.execute(sa.text("SELECT pg_advisory_xact_lock(:id)"), {"id": SCHEMA_LOCK_ID})
                    self._upgrade_in(conn)
                return
            except sa.exc.OperationalError:
                if attempt or self.is_postgres:
                    raise

    @staticmethod
    def _upgrade_in(conn: sa.Connection) -> None:
        schema.metadata.create_all(conn)
        current = conn.execute(sa.select(sa.func.max(schema.schema_version.c.version))).scalar()
        if current is None:
            conn.execute(schema.schema_version.insert().values(version=schema.CURRENT_VERSION, applied_at=utcnow()))
            return
        for version, statements in schema.MIGRATIONS:
            if version > current:
                for statement in statements:
                    if isinstance(statement, tuple):  # (dialect, SQL): for that database only
                        dialect, statement = statement
                        if dialect != conn.dialect.name:
                            continue
                    if not _adds_a_column_it_has(conn, statement):  # a table create_all just made
                        conn.execute(sa.text(statement))
                conn.execute(schema.schema_version.insert().values(version=version, applied_at=utcnow()))

    def ping(self) -> bool:
        with self.engine.connect() as conn:
            return conn.execute(sa.text("SELECT 1")).scalar() == 1

    # --- the lease --------------------------------------------------------------------
    def enqueue_sync(
        self,
        entity: EntityType,
        mode: SyncMode = SyncMode.LATEST,
        *,
        origin: str,
        merchant: str = DEFAULT_MERCHANT,
        sync_to: datetime | None = None,
        start: datetime | None = None,
        end: datetime | None = None,
        allow_deletions: bool = False,
        now: datetime | None = None,
        lookback: timedelta | None = None,
    ) -> SyncRecord:
        """Insert a Queued sync with its window resolved now; the unique index lets in only
        one active sync per (merchant, type).

        The window is fixed at request time (a latest sync runs up to the moment it was asked
        for): while this sync is active no other sync of the type can move the watermark.
        Raises ValueError for a window that cannot be synced, and EntityBusy, naming the
        active sync, when one is already queued or running.
        """
        now = now or utcnow()
        actual_mode, window = resolve_window(
            mode, now=now, watermark=self.watermark(entity, merchant=merchant), sync_to=sync_to, start=start, end=end,
            lookback=sync_lookback() if lookback is None else lookback,
        )
        sync_id = str(uuid.uuid4())
        values = dict(
            sync_id=sync_id,
            merchant_id=merchant,
            entity_type=entity.value,
            mode=actual_mode.value,
            requested_mode=mode.value,
            window_start=window.start,
            window_end=window.end,
            sync_to=sync_to,
            status_code=SyncStatus.QUEUED.code,
            status=SyncStatus.QUEUED.text,
            requested_at=now,
            origin=origin,
            allow_deletions=allow_deletions,
            worker_host=socket.gethostname(),
            worker_pid=os.getpid(),
        )
        try:
            with self.engine.begin() as conn:
                conn.execute(syncs.insert().values(**values))
        except sa.exc.IntegrityError:
            active = self.active_sync(entity, merchant=merchant)
            if active is None:  # finished between our insert and this read: say so plainly
                raise EntityBusy(entity, "(just finished)", SyncStatus.IN_PROGRESS, merchant) from None
            raise EntityBusy(entity, active.sync_id, active.status, merchant) from None
        return self.get_sync(sync_id)

    def start_sync(self, sync_id: str, *, run_id: str) -> SyncRecord:
        """Queued -> InProgress, recording the run and its process."""
        with self.engine.begin() as conn:
            updated = conn.execute(
                syncs.update()
                .where(syncs.c.sync_id == sync_id, syncs.c.status_code == SyncStatus.QUEUED.code)
                .values(
                    status_code=SyncStatus.IN_PROGRESS.code,
                    status=SyncStatus.IN_PROGRESS.text,
                    started_at=utcnow(),
                    run_id=run_id,
                    worker_host=socket.gethostname(),
                    worker_pid=os.getpid(),
                )
            ).rowcount
        if updated != 1:
            current = self.get_sync(sync_id)
            state = current.status.text if current else "unknown"
            raise ValueError(f"sync {sync_id} cannot start: it is {state}, not Queued")
        return self.get_sync(sync_id)

    def finish_sync(
        self,
        sync_id: str,
        status: SyncStatus,
        *,
        error_message: str | None = None,
        num_records: int | None = None,
        **counts: int,
    ) -> SyncRecord:
        """Close an active sync with its final status; a sync already closed is left alone."""
        values: dict[str, Any] = dict(
            status_code=status.code, status=status.text, finished_at=utcnow(), error_message=error_message, **counts
        )
        if num_records is not None:
            values["num_records"] = num_records
        with self.engine.begin() as conn:
            conn.execute(
                syncs.update()
                .where(syncs.c.sync_id == sync_id, syncs.c.status_code.in_(ACTIVE_CODES))
                .values(**values)
            )
        return self.get_sync(sync_id)

    def update_counts(self, sync_id: str, **counts: Any) -> None:
        with self.engine.begin() as conn:
            conn.execute(syncs.update().where(syncs.c.sync_id == sync_id).values(**counts))

    # --- batches ----------------------------------------------------------------------
    def record_batch(
        self,
        *,
        batch_id: str,
        sync_id: str,
        entity: EntityType,
        operation: str,
        idempotency_key: str,
        item_count: int,
        merchant: str = DEFAULT_MERCHANT,
        submitted_at: datetime | None = None,
    ) -> None:
        """Record a submitted batch (sent now, or at `submitted_at`); a batch id seen again
        (idempotent replay) is kept once."""
        with self.engine.begin() as conn:
            exists = conn.execute(
                sa.select(batches.c.batch_id).where(batches.c.batch_id == batch_id, batches.c.merchant_id == merchant)
            ).first()
            if exists:
                conn.execute(batches.update().where(batches.c.batch_id == batch_id).values(sync_id=sync_id))
                return
            conn.execute(
                batches.insert().values(
                    batch_id=batch_id,
                    sync_id=sync_id,
                    merchant_id=merchant,
                    entity_type=entity.value,
                    bulk_operation_type=operation,
                    idempotency_key=idempotency_key,
                    item_count=item_count,
                    batch_status="QUEUED",
                    failed_products=[],
                    submitted_at=submitted_at or utcnow(),
                )
            )

    def record_batch_outcome(
        self, batch_id: str, *, batch_status: str, success_count: int, fail_count: int, failed_products: list, ratio: str,
        finished_at: datetime | None = None,
    ) -> None:
        with self.engine.begin() as conn:
            conn.execute(
                batches.update()
                .where(batches.c.batch_id == batch_id)
                .values(
                    batch_status=batch_status,
                    success_count=success_count,
                    fail_count=fail_count,
                    failed_products=failed_products,
                    ratio=ratio,
                    finished_at=finished_at or utcnow(),
                )
            )

    def usable_idempotency_key(self, base_key: str, merchant: str = DEFAULT_MERCHANT) -> str:
        """The key to send a batch under. A key whose batch ended with failures is spent, so
        the retry gets a successor key; any other known key is reused, so a batch whose
        outcome was lost (a crash) is answered by the gateway's replay, not applied twice."""
        key = base_key
        with self.engine.connect() as conn:
            while True:
                row = conn.execute(
                    sa.select(batches.c.batch_id, batches.c.batch_status, batches.c.fail_count).where(
                        batches.c.idempotency_key == key, batches.c.merchant_id == merchant
                    )
                ).first()
                if row is None or (row.batch_status != "FAILED" and row.fail_count == 0):
                    return key
                key = hashlib.sha256(f"{key}:{row.batch_id}".encode()).hexdigest()

    def get_batch(self, batch_id: str, merchant: str | None = None) -> BatchRecord | None:
        """The batch; with `merchant`, only if it is that merchant's."""
        query = sa.select(batches).where(batches.c.batch_id == batch_id)
        if merchant is not None:
            query = query.where(batches.c.merchant_id == merchant)
        with self.engine.connect() as conn:
            row = conn.execute(query).first()
        return BatchRecord.from_row(row) if row else None

    def batches_for_sync(self, sync_id: str) -> list[BatchRecord]:
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.select(batches).where(batches.c.sync_id == sync_id).order_by(batches.c.submitted_at)
            ).all()
        return [BatchRecord.from_row(row) for row in rows]

    # --- records ----------------------------------------------------------------------
    def save_rejections(
        self, sync_id: str, entity: EntityType, rows: list[tuple[str | None, str, str]], *, merchant: str = DEFAULT_MERCHANT
    ) -> None:
        """Keep every invalid record a sync saw: its id (if any), the reason and its raw JSON."""
        if not rows:
            return
        now = utcnow()
        with self.engine.begin() as conn:
            conn.execute(
                schema.rejections.insert(),
                [
                    dict(sync_id=sync_id, merchant_id=merchant, entity_type=entity.value, record_id=record_id,
                         reason=reason, raw=raw, rejected_at=now)
                    for record_id, reason, raw in rows
                ],
            )

    def rejections_for_sync(self, sync_id: str) -> list[tuple[str | None, str, str]]:
        rejections = schema.rejections
        with self.engine.connect() as conn:
            return [
                tuple(row)
                for row in conn.execute(
                    sa.select(rejections.c.record_id, rejections.c.reason, rejections.c.raw)
                    .where(rejections.c.sync_id == sync_id)
                    .order_by(rejections.c.rejection_id)
                )
            ]

    def export_records(self, entity: EntityType, path: Path, *, merchant: str = DEFAULT_MERCHANT, **which: Any) -> int:
        return records.export_records(self.engine, merchant, entity, path, **which)

    def listed_digests(self, entity: EntityType, *, merchant: str = DEFAULT_MERCHANT) -> bytearray:
        return records.listed_digests(self.engine, merchant, entity)

    def import_records(self, entity: EntityType, path: Path, *, merchant: str = DEFAULT_MERCHANT) -> int:
        return records.import_records(self.engine, merchant, entity, path)

    def problem_records(self, entity: EntityType, park_after: int | None, *, merchant: str = DEFAULT_MERCHANT) -> dict:
        return records.problem_records(self.engine, merchant, entity, park_after)

    def held_among(self, entity: EntityType, ids, *, merchant: str = DEFAULT_MERCHANT) -> set[str]:
        return records.held_among(self.engine, merchant, entity, ids)

    def import_events(self, entity: EntityType, sync_id: str, path: Path, *, merchant: str = DEFAULT_MERCHANT) -> int:
        return records.import_events(self.engine, merchant, entity, sync_id, path)

    def prune_history(self, older_than_days: float, now: datetime | None = None) -> dict[str, int]:
        return retention.prune_history(self.engine, (now or utcnow()) - timedelta(days=older_than_days))

    def count_held(self, entity: EntityType, *, merchant: str = DEFAULT_MERCHANT) -> int:
        return records.count_records(self.engine, merchant, entity)

    def count_records(self, entity: EntityType, *, merchant: str = DEFAULT_MERCHANT) -> int:
        return records.count_records(self.engine, merchant, entity, held_only=False)

    # --- reads ------------------------------------------------------------------------
    def get_sync(self, sync_id: str, merchant: str | None = None) -> SyncRecord | None:
        query = sa.select(syncs).where(syncs.c.sync_id == sync_id)
        if merchant is not None:
            query = query.where(syncs.c.merchant_id == merchant)
        return self._one(query)

    def sync_for_run(self, run_id: str) -> SyncRecord | None:
        return self._one(sa.select(syncs).where(syncs.c.run_id == run_id).order_by(syncs.c.requested_at.desc()))

    def active_sync(self, entity: EntityType, *, merchant: str = DEFAULT_MERCHANT) -> SyncRecord | None:
        return self._one(sa.select(syncs).where(*_of(merchant, entity), syncs.c.status_code.in_(ACTIVE_CODES)))

    def last_successful(self, entity: EntityType, *, merchant: str = DEFAULT_MERCHANT) -> SyncRecord | None:
        return self._one(
            sa.select(syncs)
            .where(*_of(merchant, entity), syncs.c.status_code.in_(SUCCESS_CODES))
            .order_by(syncs.c.finished_at.desc())
        )

    def held_now(self, entity: EntityType, *, merchant: str = DEFAULT_MERCHANT) -> int | None:
        """How many records the gateway holds now, as the last finished sync that counted them
        found (a failed sync that published counts too)."""
        with self.engine.connect() as conn:
            return conn.execute(
                sa.select(syncs.c.num_records)
                .where(*_of(merchant, entity), syncs.c.num_records.is_not(None), syncs.c.finished_at.is_not(None))
                .order_by(syncs.c.finished_at.desc())
                .limit(1)
            ).scalar()

    def last_success_times(self, entity: EntityType) -> dict[str, datetime]:
        """When each merchant's last successful sync of `entity` finished."""
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.select(syncs.c.merchant_id, sa.func.max(syncs.c.finished_at))
                .where(syncs.c.entity_type == entity.value, syncs.c.status_code.in_(SUCCESS_CODES))
                .group_by(syncs.c.merchant_id)
            ).all()
        return {merchant: as_utc(finished) for merchant, finished in rows}

    def watermark(self, entity: EntityType, *, merchant: str = DEFAULT_MERCHANT) -> datetime | None:
        """Where the next latest sync starts: the window end of the last successful
        full or latest sync (historic ranges do not move it)."""
        with self.engine.connect() as conn:
            value = conn.execute(
                sa.select(syncs.c.window_end)
                .where(
                    *_of(merchant, entity),
                    syncs.c.status_code.in_(SUCCESS_CODES),
                    syncs.c.mode.in_((SyncMode.FULL.value, SyncMode.LATEST.value)),
                )
                .order_by(syncs.c.window_end.desc())
                .limit(1)
            ).scalar()
        return as_utc(value)

    def active_syncs(self, merchant: str | None = None) -> list[SyncRecord]:
        query = sa.select(syncs).where(syncs.c.status_code.in_(ACTIVE_CODES)).order_by(syncs.c.requested_at)
        if merchant is not None:
            query = query.where(syncs.c.merchant_id == merchant)
        return self._all(query)

    def history(self, entity: EntityType, limit: int = 20, *, merchant: str = DEFAULT_MERCHANT) -> list[SyncRecord]:
        return self._all(
            sa.select(syncs).where(*_of(merchant, entity)).order_by(syncs.c.requested_at.desc()).limit(limit)
        )

    def list_syncs(
        self,
        *,
        merchant: str | None = None,
        status_code: int | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        limit: int = 50,
        after: tuple[datetime, str] | None = None,
    ) -> tuple[list[SyncRecord], dict[int, int]]:
        """Syncs of every merchant (or one), newest first, requested in [since, until), with the
        count of each status code among all that match; `after` is the (requested_at, sync_id)
        of the last one of the previous page."""
        where = []
        if merchant is not None:
            where.append(syncs.c.merchant_id == merchant)
        if status_code is not None:
            where.append(syncs.c.status_code == status_code)
        if since is not None:
            where.append(syncs.c.requested_at >= since)
        if until is not None:
            where.append(syncs.c.requested_at < until)
        page = sa.select(syncs).where(*where)
        if after is not None:
            page = page.where(sa.tuple_(syncs.c.requested_at, syncs.c.sync_id) < sa.tuple_(*after))
        page = page.order_by(syncs.c.requested_at.desc(), syncs.c.sync_id.desc()).limit(limit)
        totals = sa.select(syncs.c.status_code, sa.func.count()).where(*where).group_by(syncs.c.status_code)
        with self.engine.connect() as conn:
            found = [SyncRecord.from_row(row) for row in conn.execute(page)]
            counts = {code: count for code, count in conn.execute(totals)}
        return found, counts

    def _all(self, query: sa.Select) -> list[SyncRecord]:
        with self.engine.connect() as conn:
            return [SyncRecord.from_row(row) for row in conn.execute(query).all()]

    def _one(self, query: sa.Select) -> SyncRecord | None:
        with self.engine.connect() as conn:
            row = conn.execute(query.limit(1)).first()
        return SyncRecord.from_row(row) if row else None


_OPEN: dict[tuple[str, int], StateStore] = {}
_OPEN_LOCK = threading.Lock()


def open_state_store(url: str) -> StateStore:
    """The process's one StateStore (one engine, one connection pool, the schema checked once)
    for `url`. A forked child gets its own: pooled connections must not cross a fork."""
    key = (url, os.getpid())
    with _OPEN_LOCK:
        store = _OPEN.get(key)
        if store is None:
            store = _OPEN[key] = StateStore(url)
        return store


def _of(merchant: str, entity: EntityType) -> tuple:
    return (syncs.c.merchant_id == merchant, syncs.c.entity_type == entity.value)


def _adds_a_column_it_has(conn: sa.Connection, statement: str) -> bool:
    """Whether `statement` adds a column that its table already has: create_all makes a table
    missing from an older store in its current form, so a later migration's column is there."""
    added = re.fullmatch(r"ALTER TABLE (\w+) ADD COLUMN (\w+) .*", statement)
    return bool(added) and added[2] in {column["name"] for column in sa.inspect(conn).get_columns(added[1])}

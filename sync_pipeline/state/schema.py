"""Tables of the state store, and the code that creates and upgrades them.

Everything a sync needs from earlier syncs lives here, keyed by merchant: the syncs and their
lease, the batches, and `records`, one row per (merchant, type, record id) saying what the
source last showed and what the gateway holds. A run needs nothing else: its DuckDB file is
scratch."""

from __future__ import annotations

import sqlalchemy as sa

from ..domain import ACTIVE_STATUSES, DEFAULT_MERCHANT, SUCCESS_STATUSES

metadata = sa.MetaData()

# The codes a sync has while it holds its (merchant, type) lease, and once it has succeeded.
ACTIVE_CODES = tuple(sorted(status.code for status in ACTIVE_STATUSES))
SUCCESS_CODES = tuple(sorted(status.code for status in SUCCESS_STATUSES))
MERCHANT_ID = sa.String(40)

syncs = sa.Table(
    "syncs",
    metadata,
    sa.Column("sync_id", sa.String(64), primary_key=True),
    sa.Column("merchant_id", MERCHANT_ID, nullable=False, server_default=DEFAULT_MERCHANT),
    sa.Column("entity_type", sa.String(16), nullable=False),
    sa.Column("mode", sa.String(16), nullable=False),
    sa.Column("requested_mode", sa.String(16), nullable=False),
    sa.Column("window_start", sa.DateTime(timezone=True)),
    sa.Column("window_end", sa.DateTime(timezone=True)),
    sa.Column("sync_to", sa.DateTime(timezone=True)),
    sa.Column("status_code", sa.Integer, nullable=False),
    sa.Column("status", sa.String(32), nullable=False),
    sa.Column("requested_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("started_at", sa.DateTime(timezone=True)),
    sa.Column("finished_at", sa.DateTime(timezone=True)),
    sa.Column("run_id", sa.String(64)),
    sa.Column("origin", sa.String(32), nullable=False, server_default="cli"),
    sa.Column("allow_deletions", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Column("fetched", sa.Integer, nullable=False, server_default="0"),
    sa.Column("rejected", sa.Integer, nullable=False, server_default="0"),
    sa.Column("published", sa.Integer, nullable=False, server_default="0"),
    sa.Column("failed", sa.Integer, nullable=False, server_default="0"),
    sa.Column("deleted", sa.Integer, nullable=False, server_default="0"),
    sa.Column("batches", sa.Integer, nullable=False, server_default="0"),
    # after the sync, for its (merchant, type): records parked after repeated refusals, and
    # records the gateway holds whose source version has since become invalid
    sa.Column("parked", sa.Integer, nullable=False, server_default="0"),
    sa.Column("invalid_held", sa.Integer, nullable=False, server_default="0"),
    sa.Column("num_records", sa.Integer),
    sa.Column("data_pushed", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Column("error_message", sa.Text),
    # The process that owns the sync (the CLI while queued, the run's process once started),
    # so a sync whose process died can be told from one still running.
    sa.Column("worker_host", sa.String(255)),
    sa.Column("worker_pid", sa.Integer),
    # The lease: at most one queued or running sync per (merchant, type), enforced by the database.
    sa.Index(
        "one_active_sync_per_merchant_entity",
        "merchant_id",
        "entity_type",
        unique=True,
        sqlite_where=sa.text(f"status_code IN {ACTIVE_CODES}"),
        postgresql_where=sa.text(f"status_code IN {ACTIVE_CODES}"),
    ),
    sa.Index("syncs_by_merchant_entity_time", "merchant_id", "entity_type", "requested_at"),
    sa.Index("syncs_by_time", "requested_at"),
    sa.Index("syncs_by_run", "run_id"),
)

batches = sa.Table(
    "batches",
    metadata,
    sa.Column("batch_id", sa.String(128), primary_key=True),
    sa.Column("sync_id", sa.String(64), sa.ForeignKey("syncs.sync_id"), nullable=False),
    sa.Column("merchant_id", MERCHANT_ID, nullable=False, server_default=DEFAULT_MERCHANT),
    sa.Column("entity_type", sa.String(16), nullable=False),
    sa.Column("bulk_operation_type", sa.String(16), nullable=False),
    sa.Column("idempotency_key", sa.String(128), nullable=False),
    sa.Column("item_count", sa.Integer, nullable=False),
    sa.Column("batch_status", sa.String(16), nullable=False),
    sa.Column("success_count", sa.Integer, nullable=False, server_default="0"),
    sa.Column("fail_count", sa.Integer, nullable=False, server_default="0"),
    sa.Column("failed_products", sa.JSON, nullable=False, default=list),
    sa.Column("ratio", sa.String(16)),
    sa.Column("submitted_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("finished_at", sa.DateTime(timezone=True)),
    sa.Index("batches_by_sync", "sync_id"),
    sa.Index("batches_by_key", "idempotency_key"),
)

# One row per record a sync has seen, per (merchant, type): the source's side (the last version
# seen, valid or rejected) and the gateway's side (what it holds, what it refused, what is to be
# deleted). `pending` says what the next sync owes the gateway for this record, so a sync that
# does not list it (a latest window) still finds it: 1 = publish the source's version, 2 = delete.
records = sa.Table(
    "records",
    metadata,
    sa.Column("merchant_id", MERCHANT_ID, primary_key=True),
    sa.Column("entity_type", sa.String(16), primary_key=True),
    sa.Column("record_id", sa.Text, primary_key=True),
    # the source: the last valid version seen (hash of its JSON, its updatedAt, the sync that fetched it)
    sa.Column("source_hash", sa.String(32)),
    # the bytes the source listed that version as (a 16-byte BLAKE2b in hex, keyed with the rules
    # version): a later full sync that lists the same bytes knows the record unchanged unparsed
    # (an older release's md5 under rules 1 never matches: such a record is parsed once more)
    sa.Column("listed_hash", sa.String(32)),
    sa.Column("source_updated_at", sa.DateTime(timezone=True)),
    sa.Column("source_sync_id", sa.String(64)),
    sa.Column("source_seen_at", sa.DateTime(timezone=True)),
    # set while the last version seen was invalid (the valid one above is kept)
    sa.Column("rejected_reason", sa.Text),
    sa.Column("rejected_at", sa.DateTime(timezone=True)),
    # the gateway: the version it holds and the batch that applied it
    sa.Column("held_hash", sa.String(32)),
    sa.Column("held_batch_id", sa.String(128)),
    sa.Column("held_at", sa.DateTime(timezone=True)),
    # the gateway's last refusal of this record: which version, why, how many times in a row
    sa.Column("refused_hash", sa.String(32)),
    sa.Column("refused_reason", sa.Text),
    sa.Column("refused_at", sa.DateTime(timezone=True)),
    sa.Column("refused_times", sa.Integer, nullable=False, server_default="0"),
    # gone from the source (a 404 confirmed it), and the batch that deleted it from the gateway
    sa.Column("gone_at", sa.DateTime(timezone=True)),
    sa.Column("deleted_batch_id", sa.String(128)),
    sa.Column("deleted_at", sa.DateTime(timezone=True)),
    sa.Column("pending", sa.SmallInteger, nullable=False, server_default="0"),
    sa.Index(
        "records_refused",
        "merchant_id",
        "entity_type",
        sqlite_where=sa.text("refused_hash IS NOT NULL OR rejected_reason IS NOT NULL"),
        postgresql_where=sa.text("refused_hash IS NOT NULL OR rejected_reason IS NOT NULL"),
    ),
    sa.Index(
        "records_pending",
        "merchant_id",
        "entity_type",
        "pending",
        sqlite_where=sa.text("pending <> 0"),
        postgresql_where=sa.text("pending <> 0"),
    ),
    # SQLite only: the few records the gateway does not hold, so that what it holds is counted
    # as all of them (the primary key's index alone) less these, not by reading every row
    # (records.count_records). On PostgreSQL a column in an index's WHERE makes every update of
    # held_hash a non-HOT one (a new entry in the primary key's index), for no faster count.
    sa.Index("records_unheld", "merchant_id", "entity_type", sqlite_where=sa.text("held_hash IS NULL")).ddl_if(
        dialect="sqlite"
    ),
)

# Each record's trail: what happened to it, sync by sync (see domain.Event). Its newest `seen`
# and `published` are its row in `records`, written here once a later row replaces them (one row,
# `seen+published`, for a version seen and published by the same sync; records.py
# `_superseded_events`). Pruned after SYNC_RETENTION_DAYS; the record's current state above is
# what the next sync needs.
record_events = sa.Table(
    "record_events",
    metadata,
    sa.Column("event_id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True, autoincrement=True),
    sa.Column("merchant_id", MERCHANT_ID, nullable=False),
    sa.Column("entity_type", sa.String(16), nullable=False),
    sa.Column("record_id", sa.Text, nullable=False),
    sa.Column("sync_id", sa.String(64), nullable=False),
    sa.Column("event_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("event", sa.String(16), nullable=False),
    sa.Column("content_hash", sa.String(32)),
    sa.Column("batch_id", sa.String(128)),
    sa.Column("detail", sa.Text),
    sa.Index("record_events_by_record", "merchant_id", "entity_type", "record_id", "event_at"),
    sa.Index("record_events_by_time", "event_at"),
)

# Every invalid record a sync saw, with its raw JSON and the reason: rejected, never dropped.
rejections = sa.Table(
    "rejections",
    metadata,
    sa.Column("rejection_id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("sync_id", sa.String(64), nullable=False),
    sa.Column("merchant_id", MERCHANT_ID, nullable=False),
    sa.Column("entity_type", sa.String(16), nullable=False),
    sa.Column("record_id", sa.Text),
    sa.Column("reason", sa.Text, nullable=False),
    sa.Column("raw", sa.Text, nullable=False),
    sa.Column("rejected_at", sa.DateTime(timezone=True), nullable=False),
    sa.Index("rejections_by_sync", "sync_id"),
    sa.Index("rejections_by_record", "merchant_id", "entity_type", "record_id"),
)

# The merchant registry (CONTRACT §6). Outside services' tokens are encrypted; Sync API tokens
# are kept as hashes only. The merchant `default` has no row unless it is disabled or given an
# hour: its connection comes from the environment (§5).
merchants = sa.Table(
    "merchants",
    metadata,
    sa.Column("merchant_id", MERCHANT_ID, primary_key=True),
    sa.Column("product_service_url", sa.Text),
    sa.Column("product_service_token", sa.Text),  # encrypted
    sa.Column("gateway_token", sa.Text),  # encrypted
    sa.Column("api_token_hash", sa.String(64)),
    sa.Column("api_read_token_hash", sa.String(64)),
    sa.Column("sync_hour_utc", sa.SmallInteger, nullable=False, server_default="2"),
    sa.Column("enabled", sa.Boolean, nullable=False, server_default=sa.true()),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    # a token is one merchant's: the database refuses a second (NULLs, no read token, may repeat)
    sa.Index("merchants_by_api_token", "api_token_hash", unique=True),
    sa.Index("merchants_by_api_read_token", "api_read_token_hash", unique=True),
    sa.Index("merchants_by_hour", "sync_hour_utc", "enabled"),
)

schema_version = sa.Table(
    "schema_version",
    metadata,
    sa.Column("version", sa.Integer, primary_key=True),
    sa.Column("applied_at", sa.DateTime(timezone=True), nullable=False),
)

# Upgrades after version 1, in order: (version, [SQL statements]). Version 1 is create_all of
# the first schema; tables added later are created by create_all before these run. A statement
# given as (dialect, SQL) runs on that database only.
_ACTIVE = ", ".join(str(code) for code in ACTIVE_CODES)
MIGRATIONS: list[tuple[int, list[str | tuple[str, str]]]] = [
    (2, ["ALTER TABLE syncs ADD COLUMN worker_host VARCHAR(255)", "ALTER TABLE syncs ADD COLUMN worker_pid INTEGER"]),
    (
        3,
        [
            f"ALTER TABLE syncs ADD COLUMN merchant_id VARCHAR(40) NOT NULL DEFAULT '{DEFAULT_MERCHANT}'",
            f"ALTER TABLE batches ADD COLUMN merchant_id VARCHAR(40) NOT NULL DEFAULT '{DEFAULT_MERCHANT}'",
            "DROP INDEX IF EXISTS one_active_sync_per_entity",
            "DROP INDEX IF EXISTS syncs_by_entity_time",
            "CREATE UNIQUE INDEX one_active_sync_per_merchant_entity ON syncs (merchant_id, entity_type)"
            f" WHERE status_code IN ({_ACTIVE})",
            "CREATE INDEX syncs_by_merchant_entity_time ON syncs (merchant_id, entity_type, requested_at)",
            "CREATE INDEX syncs_by_time ON syncs (requested_at)",
            "CREATE INDEX batches_by_key ON batches (idempotency_key)",
            "ALTER TABLE syncs ADD COLUMN parked INTEGER NOT NULL DEFAULT 0",
            "ALTER TABLE syncs ADD COLUMN invalid_held INTEGER NOT NULL DEFAULT 0",
        ],
    ),
    (4, ["ALTER TABLE records ADD COLUMN listed_hash VARCHAR(32)"]),
    # IF NOT EXISTS: create_all makes it with the table, where a store had no records table yet
    (5, [("sqlite", "CREATE INDEX IF NOT EXISTS records_unheld ON records (merchant_id, entity_type) WHERE held_hash IS NULL")]),
]
CURRENT_VERSION = 1 + len(MIGRATIONS)

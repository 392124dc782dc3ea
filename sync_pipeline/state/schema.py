"""Tables of the state store, and the code that creates and upgrades them."""

from __future__ import annotations

import sqlalchemy as sa

from ..domain import ACTIVE_STATUSES, SUCCESS_STATUSES

metadata = sa.MetaData()

# The codes a sync has while it holds its entity type's lease, and once it has succeeded.
ACTIVE_CODES = tuple(sorted(status.code for status in ACTIVE_STATUSES))
SUCCESS_CODES = tuple(sorted(status.code for status in SUCCESS_STATUSES))

syncs = sa.Table(
    "syncs",
    metadata,
    sa.Column("sync_id", sa.String(64), primary_key=True),
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
    sa.Column("num_records", sa.Integer),
    sa.Column("data_pushed", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Column("error_message", sa.Text),
    # The process that owns the sync (the CLI while queued, the run's process once started),
    # so a sync whose process died can be told from one still running.
    sa.Column("worker_host", sa.String(255)),
    sa.Column("worker_pid", sa.Integer),
    # The lease: at most one queued or running sync per entity type, enforced by the database.
    sa.Index(
        "one_active_sync_per_entity",
        "entity_type",
        unique=True,
        sqlite_where=sa.text(f"status_code IN {ACTIVE_CODES}"),
        postgresql_where=sa.text(f"status_code IN {ACTIVE_CODES}"),
    ),
    sa.Index("syncs_by_entity_time", "entity_type", "requested_at"),
    sa.Index("syncs_by_run", "run_id"),
)

batches = sa.Table(
    "batches",
    metadata,
    sa.Column("batch_id", sa.String(128), primary_key=True),
    sa.Column("sync_id", sa.String(64), sa.ForeignKey("syncs.sync_id"), nullable=False),
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
)

schema_version = sa.Table(
    "schema_version",
    metadata,
    sa.Column("version", sa.Integer, primary_key=True),
    sa.Column("applied_at", sa.DateTime(timezone=True), nullable=False),
)

# Upgrades after version 1, in order: (version, [SQL statements]). Version 1 is create_all.
MIGRATIONS: list[tuple[int, list[str]]] = [
    (2, ["ALTER TABLE syncs ADD COLUMN worker_host VARCHAR(255)", "ALTER TABLE syncs ADD COLUMN worker_pid INTEGER"]),
]
CURRENT_VERSION = 1 + len(MIGRATIONS)

"""Upgrading a deployment from the days when what the gateway holds lived in a DuckDB file per
entity type on local disk (`$SYNC_DATA_DIR/products.duckdb`, table `published`): the first sync
of the merchant `default` after the upgrade takes those holdings into the state store, so it
re-sends nothing, and sets the file aside."""

from __future__ import annotations

from pathlib import Path

import duckdb

from .store import KNOWN_COLUMNS, TIME_FORMAT, _sql_path


def legacy_staging_file(data_dir: Path, plural: str) -> Path | None:
    path = data_dir / f"{plural}.duckdb"
    return path if path.is_file() else None


def export_legacy_holdings(legacy: Path, csv_path: Path) -> int:
    """Write the old file's `published` rows as state store records (CSV); returns how many.
    A file without that table (not one of ours) gives 0."""
    with duckdb.connect(str(legacy), read_only=True) as db:
        db.execute("SET TimeZone = 'UTC'")
        tables = {row[0] for row in db.execute("SELECT table_name FROM duckdb_tables()").fetchall()}
        if "published" not in tables:
            return 0
        values = {name: "NULL" for name in KNOWN_COLUMNS}
        values.update(
            record_id="id", held_hash="content_hash", held_batch_id="NULL",
            held_at=f"strftime(published_at, '{TIME_FORMAT}')", refused_times="0", pending="0",
        )
        select = ", ".join(f"{expression} AS {name}" for name, expression in values.items())
        db.execute(f"COPY (SELECT {select} FROM published) TO '{_sql_path(csv_path)}' (HEADER, DELIMITER ',')")
        return db.execute("SELECT count(*) FROM published").fetchall()[0][0]

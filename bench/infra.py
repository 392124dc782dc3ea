"""What the multi-merchant and state-store benchmarks share: throw-away PostgreSQL databases,
their sizes, and CPU seconds read from /proc (of one process, of the database's backends, of
the whole machine), so a figure can say how busy the machine was while it was taken."""

from __future__ import annotations

import os
import secrets
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import psycopg2

PG_ADMIN = os.environ.get("BENCH_PG_ADMIN", "host=127.0.0.1 port=5432 user=postgres dbname=postgres")
PG_URL_BASE = os.environ.get("BENCH_PG_URL", "postgresql+psycopg2://postgres@127.0.0.1:5432")
TICKS = os.sysconf("SC_CLK_TCK")
MIB = 1024 * 1024


# --- throw-away databases ------------------------------------------------------------------
def _admin():
    connection = psycopg2.connect(PG_ADMIN)
    connection.autocommit = True
    return connection


def _admin_execute(sql: str) -> None:
    connection = _admin()
    try:
        with connection.cursor() as cursor:
            cursor.execute(sql)
    finally:
        connection.close()


def create_database(prefix: str) -> tuple[str, str]:
    """A new, empty database named after `prefix`: (name, SQLAlchemy URL)."""
    name = f"{prefix}_{secrets.token_hex(4)}"
    _admin_execute(f'CREATE DATABASE "{name}"')
    return name, f"{PG_URL_BASE}/{name}"


def drop_database(name: str) -> None:
    _admin_execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@contextmanager
def throwaway_database(prefix: str, keep: bool = False) -> Iterator[tuple[str, str]]:
    name, url = create_database(prefix)
    try:
        yield name, url
    finally:
        if not keep:
            drop_database(name)


def pg_connect(url: str):
    """A plain psycopg2 connection (autocommit) to the database at a SQLAlchemy URL."""
    dsn = url.replace("postgresql+psycopg2://", "postgresql://")
    connection = psycopg2.connect(dsn)
    connection.autocommit = True
    return connection


TABLES = ("records", "syncs", "batches", "rejections", "merchants")


def database_sizes(url: str, tables: tuple[str, ...] = TABLES) -> dict:
    """The database's size, and per table: rows, total bytes (heap, indexes, TOAST) and index bytes."""
    connection = pg_connect(url)
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_database_size(current_database())")
            out: dict = {"database_bytes": cursor.fetchone()[0], "tables": {}}
            for table in tables:
                cursor.execute(
                    "SELECT pg_total_relation_size(%s::regclass), pg_indexes_size(%s::regclass),"
                    " pg_relation_size(%s::regclass)",
                    (table, table, table),
                )
                total, indexes, heap = cursor.fetchone()
                cursor.execute(f"SELECT count(*) FROM {table}")
                rows = cursor.fetchone()[0]
                cursor.execute(
                    "SELECT n_dead_tup, n_tup_upd, n_tup_hot_upd, autovacuum_count FROM pg_stat_user_tables"
                    " WHERE relname = %s", (table,),
                )
                dead, updated, hot, autovacuums = cursor.fetchone() or (None, None, None, None)
                out["tables"][table] = {
                    "rows": rows, "total_bytes": total, "index_bytes": indexes, "heap_bytes": heap,
                    "dead_rows": dead, "updates": updated, "hot_updates": hot, "autovacuums": autovacuums,
                }
    finally:
        connection.close()
    return out


def pg_settings(url: str) -> dict:
    connection = pg_connect(url)
    try:
        with connection.cursor() as cursor:
            found = {}
            for name in ("server_version", "shared_buffers", "work_mem", "maintenance_work_mem", "synchronous_commit"):
                cursor.execute(f"SHOW {name}")
                found[name] = cursor.fetchone()[0]
            return found
    finally:
        connection.close()


# --- CPU from /proc ------------------------------------------------------------------------
def process_cpu_seconds(pid: int) -> float:
    """user + system CPU of one process so far (0 if it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / TICKS


def pg_backends_cpu(databases: list[str]) -> float:
    """CPU seconds used so far by the PostgreSQL backends connected to these databases (their
    process title is `postgres: USER DATABASE HOST(PORT) STATE`); backends that have exited are
    not counted, so take differences while the clients keep their connections. The title may
    carry the cluster's name first: `postgres: 15/main: USER DATABASE ...`."""
    total = 0.0
    wanted = set(databases)
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            title = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").split()
        except OSError:
            continue
        if not title or title[0] != "postgres:":
            continue
        words = [word for word in title[1:] if not word.endswith(":")]  # drop the cluster name, "15/main:"
        if len(words) >= 2 and words[1] in wanted:
            total += process_cpu_seconds(int(entry.name))
    return total


def pg_cluster_cpu() -> float | None:
    """CPU seconds used so far by the whole PostgreSQL server: the postmaster, the backends it
    has reaped (its cutime and cstime) and those still running. Every database's, other people's
    included; None when the server is not a process of this machine we can read."""
    postmaster = None
    children: list[tuple[int, int]] = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            args = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if args and args[0].endswith(b"/postgres") and b"-D" in args:
            postmaster = (int(entry.name), stat)
        children.append((int(entry.name), int(stat[1])))
    if postmaster is None:
        return None
    pid, stat = postmaster
    total = sum(int(v) for v in stat[11:15]) / TICKS  # utime, stime, cutime, cstime
    return total + sum(process_cpu_seconds(child) for child, parent in children if parent == pid)


@dataclass(frozen=True)
class MachineCpu:
    """The whole machine's CPU time so far: busy and total, in seconds of all cores."""

    busy: float
    total: float

    @classmethod
    def now(cls) -> MachineCpu:
        values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
        idle = values[3] + values[4]  # idle + iowait
        total = sum(values[:8])
        return cls((total - idle) / TICKS, total / TICKS)

    def since(self, earlier: MachineCpu) -> dict:
        busy, total = self.busy - earlier.busy, self.total - earlier.total
        return {"busy_core_seconds": round(busy, 1), "busy_share": round(busy / total, 3) if total else 0.0}


def machine() -> dict:
    """What the figures were taken on."""
    load = os.getloadavg()
    mem_total = 0
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            mem_total = int(line.split()[1]) * 1024
    return {"cores": os.cpu_count(), "memory_gib": round(mem_total / 1024**3, 1), "load_average_1m": round(load[0], 2)}


class Stopwatch:
    def __init__(self) -> None:
        self.started = time.perf_counter()

    @property
    def seconds(self) -> float:
        return time.perf_counter() - self.started


def mib(value: float) -> float:
    return round(value / MIB, 1)


def dagster_sizes(url: str) -> dict:
    """A PostgreSQL-backed Dagster instance's database: its size, runs and event-log rows."""
    connection = pg_connect(url)
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_database_size(current_database())")
            out = {"database_bytes": cursor.fetchone()[0]}
            for table in ("runs", "event_logs"):
                cursor.execute(f"SELECT count(*), pg_total_relation_size('{table}') FROM {table}")
                out[f"{table}_rows"], out[f"{table}_bytes"] = cursor.fetchone()
    finally:
        connection.close()
    return out


def bytes_per_row_at_scale(url: str, table: str, key: str, target_rows: int = 20_000) -> dict:
    """Total bytes (heap, indexes, TOAST) per row of a history table once it holds `target_rows`:
    its rows are copied, with new keys, until it does; so a table of a few hundred rows, mostly
    empty pages, is measured as it will be. Only for a throw-away database."""
    connection = pg_connect(url)
    try:
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT column_name, column_default FROM information_schema.columns"
                " WHERE table_name = %s ORDER BY ordinal_position", (table,),
            )
            columns = cursor.fetchall()
            names = [name for name, default in columns if not (default or "").startswith("nextval(")]
            values = [
                "gen_random_uuid()::text" if name == key else name for name in names
            ]
            cursor.execute(f"SELECT count(*) FROM {table}")
            rows = cursor.fetchone()[0]
            if rows == 0:
                return {"rows": 0}
            original = rows
            while rows < target_rows:
                cursor.execute(
                    f"INSERT INTO {table} ({', '.join(names)}) SELECT {', '.join(values)} FROM {table}"
                    f" LIMIT %s", (target_rows - rows,),
                )
                rows += cursor.rowcount
            cursor.execute(f"VACUUM ANALYZE {table}")
            cursor.execute("SELECT pg_total_relation_size(%s::regclass)", (table,))
            total = cursor.fetchone()[0]
    finally:
        connection.close()
    return {"copied_from_rows": original, "rows": rows, "total_bytes": total, "bytes_per_row": round(total / rows, 1)}


def compact_bytes(url: str, table: str) -> int:
    """The table's total size once VACUUM FULL has rewritten it without dead rows (what
    autovacuum converges to, give or take free space). Only for a throw-away database."""
    connection = pg_connect(url)
    try:
        with connection.cursor() as cursor:
            cursor.execute(f"VACUUM FULL {table}")
            cursor.execute("SELECT pg_total_relation_size(%s::regclass)", (table,))
            return cursor.fetchone()[0]
    finally:
        connection.close()

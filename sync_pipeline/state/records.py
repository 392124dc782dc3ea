"""Bulk moves of per-record state between the state store and a run's scratch, as files.

A sync reads the rows of its (merchant, type) at the start and writes back the rows it changed;
nothing else about records is kept between runs. CSV is the interchange because both ends move
it in bulk without Python touching each value: PostgreSQL with COPY, DuckDB with read_csv and
COPY TO. On SQLite (one machine, the default) rows are written back through the DBAPI, by one
executemany over the CSV reader into a temporary table, or a large file's by SQLite reading the
file itself in a child process, off the sync's interpreter lock (`_APART`); all of a (merchant, type)'s rows are read
out as CSV lines
that SQLite writes itself, a chunk of thousands of rows per statement, with the interpreter
lock given up for each. Read a row at a time into Python's csv module, they held the
interpreter lock that the thread parsing the listing needs, for most of a full re-sync of a
million records. (SQLite wrote JSON lines before, as fast; but DuckDB's JSON reader asks for
a 32 MiB buffer a thread, which the scratch's 64 MB cap cannot give.)
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import closing
from pathlib import Path

import sqlalchemy as sa

from ..domain import EntityType, Event
from .schema import records

# Every column after the key, in the order of the CSV files.
COLUMNS: list[str] = [c.name for c in records.columns if c.name not in ("merchant_id", "entity_type")]
# What a sync's diff reads (staging/store.py): all a sync loads into its scratch. The rest (when
# and by which sync or batch) is only ever written, so it stays in the state store.
DIFF_COLUMNS = ["record_id", "source_hash", "listed_hash", "source_updated_at", "rejected_reason", "held_hash",
                "refused_hash", "refused_times", "gone_at", "pending"]
# Each written-only column belongs to a group with a stamp (a time set whenever the group is
# written) and a key among DIFF_COLUMNS (null when the group is cleared). A row written back
# takes a group from the file where its stamp is set (this sync wrote it), clears it where its
# key is null, and keeps what the state store holds otherwise (the scratch never had it).
WRITTEN_ONLY: dict[str, tuple[str | None, list[str]]] = {  # stamp: (key, columns)
    "source_seen_at": ("source_hash", ["source_sync_id", "source_seen_at"]),
    "rejected_at": ("rejected_reason", ["rejected_at"]),
    "held_at": ("held_hash", ["held_batch_id", "held_at"]),
    "refused_at": ("refused_hash", ["refused_reason", "refused_at"]),
    "deleted_at": (None, ["deleted_batch_id", "deleted_at"]),  # never cleared
}
# A record a full sync may take as unchanged from its listed bytes alone: valid when last seen,
# held by the gateway at that version, nothing owed, not gone (see pipeline._stage_pages).
UNCHANGED_IF_LISTED_SAME = (
    "listed_hash IS NOT NULL AND rejected_reason IS NULL AND gone_at IS NULL AND pending = 0"
    " AND held_hash = source_hash"
)
ID_CHUNK = 500
SQLITE_BATCH = 20_000


def export_records(
    engine: sa.Engine,
    merchant: str,
    entity: EntityType,
    path: Path,
    *,
    ids: Iterable[str] | None = None,
    pending: bool = False,
) -> int:
    """Write the DIFF_COLUMNS of the records of (merchant, entity) to `path` as CSV with a header
    (empty for null). All of them; or those with the given ids, plus (with `pending`) every
    record the gateway is still owed something for. Returns how many rows were written.
    """
    key = (records.c.merchant_id == merchant, records.c.entity_type == entity.value)
    columns = [records.c[name] for name in DIFF_COLUMNS]
    if ids is None:
        queries = [sa.select(*columns).where(*key)]
    else:
        id_list = list(ids)
        queries = [
            sa.select(*columns).where(*key, records.c.record_id.in_(id_list[i : i + ID_CHUNK]))
            for i in range(0, len(id_list), ID_CHUNK)
        ]
        if pending:
            queries.append(sa.select(*columns).where(*key, records.c.pending != 0))
    count = 0
    with path.open("w", newline="") as out:
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(DIFF_COLUMNS)
        with engine.connect() as conn:
            if conn.dialect.name == "postgresql" and ids is None:
                return _copy_out(conn, queries[0], out)
            if conn.dialect.name == "sqlite" and ids is None:  # the stored text, as CSV lines SQLite writes
                for text, rows in _concatenated_chunks(conn, merchant, entity, _SQLITE_CSV_LINE, "group_concat({}, char(10))"):
                    out.write(text)
                    out.write("\n")
                    count += rows
                return count
            seen: set[str] = set()
            for query in queries:
                for row in conn.execution_options(stream_results=True).execute(query):
                    if ids is not None and row[0] in seen:  # a pending record also asked for by id
                        continue
                    if ids is not None:
                        seen.add(row[0])
                    writer.writerow(_csv_values(row))
                    count += 1
    return count


def _concatenated_chunks(
    conn: sa.Connection, merchant: str, entity: EntityType, value: str, concat: str, where: str = "true"
) -> Iterator[tuple[str, int]]:
    """(text, rows) for each chunk of SQLITE_BATCH rows of (merchant, entity) matching `where`,
    by key: `value` of each row joined into one string by the database's aggregate `concat`
    (with `{}` for the value), in one statement a chunk, after the last chunk's last id."""
    chunk = (
        f"SELECT {concat.format('value')}, max(record_id), count(*) FROM ("
        f" SELECT record_id, {value} AS value FROM records WHERE merchant_id = :merchant AND entity_type = :entity"
        f" AND {where} AFTER ORDER BY record_id LIMIT {SQLITE_BATCH}) AS chunk"
    )
    first, rest = sa.text(chunk.replace(" AFTER ", " ")), sa.text(chunk.replace(" AFTER ", " AND record_id > :after "))
    last = None
    while True:
        params = {"merchant": merchant, "entity": entity.value, "after": last}
        text, last, rows = conn.execute(first if last is None else rest, params).one()
        if not rows:
            return
        yield text, rows


def _quoted(name: str) -> str:
    """SQL for a CSV field of text that comes from the source (ids, rejection reasons): quoted,
    a quote doubled; null for null."""
    return f"""'"' || replace({name}, '"', '""') || '"'"""


def _printf(names: list[str]) -> str:
    """SQL for the CSV fields of these columns, empty for null (as `printf` writes a null `%s`)."""
    return f"printf('{','.join('%s' for _ in names)}', {', '.join(names)})"


# One CSV line of DIFF_COLUMNS, empty for null. The columns the pipeline alone writes (hex
# hashes, times, integers: no comma, quote or line break to escape; quoting them made the export
# 30 % slower) go through `printf`, which writes a null `%s` empty: a million rows took 4.2-5.0 s
# of CPU against 4.9-6.8 s with each field joined by `||` and `ifnull`. The source's text stays
# outside it: `printf` stops at a NUL character, which an id or a rejection reason may hold
# (every field in one `printf`, 2.6-4.6 s, cut such a line short).
assert DIFF_COLUMNS[0] == "record_id" and DIFF_COLUMNS[4] == "rejected_reason"
_SQLITE_CSV_LINE = " || ',' || ".join([
    _quoted("record_id"),  # never null
    _printf(DIFF_COLUMNS[1:4]),
    f"ifnull({_quoted('rejected_reason')}, '')",
    _printf(DIFF_COLUMNS[5:]),
])


def listed_digests(engine: sa.Engine, merchant: str, entity: EntityType) -> bytearray:
    """The listed hashes of the records of (merchant, entity) that UNCHANGED_IF_LISTED_SAME holds
    for, as digests of 16 bytes each, one after the other. Read in chunks by key, each as one
    string the database concatenates: a million of them as Python strings would take about
    100 MB at once, and a row at a time the interpreter's time."""
    concat = "group_concat({}, '')" if engine.dialect.name == "sqlite" else "string_agg({}, '')"
    digests = bytearray()
    with engine.connect() as conn:
        for text, _ in _concatenated_chunks(conn, merchant, entity, "listed_hash", concat, UNCHANGED_IF_LISTED_SAME):
            digests += bytes.fromhex(text)
    return digests


def _copy_out(conn: sa.Connection, query: sa.Select, out) -> int:
    """COPY the query's rows out of PostgreSQL into `out`, in UTC."""
    sql = str(query.compile(conn, compile_kwargs={"literal_binds": True}))
    raw = conn.connection.dbapi_connection
    with raw.cursor() as cursor:
        cursor.execute("SET TIME ZONE 'UTC'")
        cursor.copy_expert(f"COPY ({sql}) TO STDOUT WITH (FORMAT csv)", out)
        rows = cursor.rowcount
    return max(rows, 0)


def _csv_values(row) -> list:
    return ["" if value is None else value for value in row]


def import_records(engine: sa.Engine, merchant: str, entity: EntityType, path: Path) -> int:
    """Insert or update the records in the CSV file `path` (a header naming the DIFF_COLUMNS and
    any others of COLUMNS, times in UTC as `YYYY-MM-DD HH:MM:SS[.ffffff]`, empty for null) in one
    transaction. The written-only columns of a row already stored are merged (see WRITTEN_ONLY).
    A `seen` or `published` version that a row stops saying goes to the trail first (see
    `_superseded_events`)."""
    columns = _header(path)
    if columns[:1] != ["record_id"] or not set(DIFF_COLUMNS) <= set(columns) <= set(COLUMNS):
        raise ValueError(f"{path}: the header must start with record_id and name all of {DIFF_COLUMNS}, not {columns}")
    updates = {name: f"excluded.{name}" for name in columns[1:]}
    for _, group in WRITTEN_ONLY.values():
        for name in group:
            updates[name] = _merged(name, lambda column: f"excluded.{column}", "records")
    upsert = "ON CONFLICT (merchant_id, entity_type, record_id) DO UPDATE SET " + ", ".join(
        f"{name} = {value}" for name, value in updates.items()
    )
    fixed = {"merchant_id": merchant, "entity_type": entity.value}
    before = _superseded_events(engine.dialect.name, merchant, entity, columns)
    return _load_csv(engine, "records", fixed, columns, path, upsert, before=before)


def _merged(name: str, new: Callable[[str], str], stored: str) -> str:
    """SQL for what the upsert of `import_records` leaves in the written-only column `name` (see
    WRITTEN_ONLY): `new(column)` is the incoming value of a column, `stored` the stored row's
    table or alias."""
    stamp, (key, _) = next((stamp, group) for stamp, group in WRITTEN_ONLY.items() if name in group[1])
    cleared = f"WHEN {new(key)} IS NULL THEN NULL " if key else ""
    return f"CASE WHEN {new(stamp)} IS NOT NULL THEN {new(name)} {cleared}ELSE {stored}.{name} END"


def _superseded_events(dialect: str, merchant: str, entity: EntityType, columns: list[str]) -> list[str]:
    """SQL that writes to the trail the `seen` and `published` versions of stored rows that the
    rows in `incoming` replace or clear, before they are merged in (`import_records`).

    A record's row is its newest trail: the version last seen (`source_*`) and the one the
    gateway holds (`held_*`) are events that no `record_events` row repeats while the row still
    says them (trail.py shows them from the row). So a first sync of a million records writes no
    trail rows for them, where it wrote a million: its state store file is 320 MiB, not 613, and
    its child processes (the parsing and these imports) took 18-20 core-seconds, not 21-25.
    Each version goes to `record_events` here once it is replaced: as one `seen+published` row
    when both are replaced at once, the gateway held the version seen and the sync that saw it
    sent it; else as a row each. Not twice: a row an older release wrote as the events happened
    is not written again. A published version whose batch is pruned is past the retention
    itself, and is not written."""
    sqlite = dialect == "sqlite"

    def incoming(name: str) -> str:
        if name not in columns:
            return "NULL"  # as the upsert takes it: `excluded.name` is null
        return f"NULLIF(i.{name}, '')" if sqlite else f"i.{name}"

    differs = "IS NOT" if sqlite else "IS DISTINCT FROM"
    seen_at = "r.source_seen_at" if sqlite else "to_char(r.source_seen_at AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.US')"
    temporary = "CREATE TEMP TABLE superseded" + ("" if sqlite else " ON COMMIT DROP")
    same = "IS" if sqlite else "IS NOT DISTINCT FROM"
    both = f"seen AND published AND held_hash {same} source_hash AND held_sync_id {same} source_sync_id"
    return [
        "DROP TABLE IF EXISTS temp.superseded" if sqlite else "DROP TABLE IF EXISTS pg_temp.superseded",
        # one pass over the file, the few rows whose versions go into a table of their own
        f"""{temporary} AS SELECT * FROM (
            SELECT r.record_id, r.source_sync_id, r.source_seen_at, {seen_at} AS seen_text, r.source_hash,
                   r.held_at, r.held_hash, r.held_batch_id, b.sync_id AS held_sync_id,
                   (r.source_seen_at IS NOT NULL AND r.source_sync_id IS NOT NULL
                    AND ({_merged('source_seen_at', incoming, 'r')}) {differs} r.source_seen_at) AS seen,
                   (r.held_at IS NOT NULL AND b.sync_id IS NOT NULL
                    AND ({_merged('held_at', incoming, 'r')}) {differs} r.held_at) AS published
            FROM incoming i CROSS JOIN records r
            LEFT JOIN batches b ON b.batch_id = r.held_batch_id AND b.merchant_id = r.merchant_id
            WHERE r.merchant_id = {_sql_literal(merchant)} AND r.entity_type = {_sql_literal(entity.value)}
              AND r.record_id = i.record_id
        ) AS stored WHERE seen OR published""",
        f"""INSERT INTO record_events (merchant_id, entity_type, record_id, sync_id, event_at, event, content_hash,
                                       batch_id, detail)
            SELECT {_sql_literal(merchant)}, {_sql_literal(entity.value)}, record_id, sync_id, event_at, event,
                   content_hash, batch_id, detail FROM (
                SELECT record_id, source_sync_id AS sync_id, held_at AS event_at, '{Event.SEEN_PUBLISHED}' AS event,
                       held_hash AS content_hash, held_batch_id AS batch_id, seen_text AS detail
                FROM superseded WHERE {both}
                UNION ALL
                SELECT record_id, source_sync_id, source_seen_at, '{Event.SEEN}', source_hash, NULL, NULL
                FROM superseded WHERE seen AND NOT ({both})
                UNION ALL
                SELECT record_id, held_sync_id, held_at, '{Event.PUBLISHED}', held_hash, held_batch_id, NULL
                FROM superseded WHERE published AND NOT ({both})
            ) AS versions
            WHERE NOT EXISTS (
                SELECT 1 FROM record_events e
                WHERE e.merchant_id = {_sql_literal(merchant)} AND e.entity_type = {_sql_literal(entity.value)}
                  AND e.record_id = versions.record_id AND e.event_at = versions.event_at AND e.event = versions.event
            )""",
        "DROP TABLE temp.superseded" if sqlite else "DROP TABLE pg_temp.superseded",
    ]


def _header(path: Path) -> list[str]:
    """The column names on the first line of the CSV file `path` (none for an empty file)."""
    with path.open(newline="", encoding="utf-8") as source:
        return next(csv.reader(source), [])


def _load_csv(
    engine: sa.Engine, table: str, fixed: dict[str, str], columns: list[str], path: Path, suffix: str = "",
    *, before: Sequence[str] = (),
) -> int:
    """Insert the rows of a CSV file (`columns`, with a header) into `table`, each with the
    `fixed` values too, in one transaction, through a table `incoming` of the file's rows:
    PostgreSQL's by COPY, SQLite's by one executemany over the CSV reader, or for a large file
    read by SQLite itself in a child process (see `_import_apart`). `suffix`: an ON CONFLICT
    clause; `before`: statements over `incoming` run first, in the same transaction. Returns the
    rows inserted or updated."""
    names = ", ".join(columns)
    targets = ", ".join([*fixed, *columns])
    if engine.dialect.name == "sqlite":
        # The fixed values are literals in the statement, and SQLite turns an empty value into null.
        literals = ", ".join(_sql_literal(value) for value in fixed.values())
        fields = ", ".join(f"NULLIF(incoming.{name}, '')" for name in columns)
        insert = f"INSERT INTO {table} ({targets}) SELECT {literals}, {fields} FROM temp.incoming WHERE true {suffix}"
        statements = [*before, insert]
        (database, *_), _ = engine.dialect.create_connect_args(engine.url)  # the file, as the engine opens it
        if database != ":memory:" and not database.startswith("file:") and path.stat().st_size > APART_ABOVE_BYTES:
            return _import_apart(database, columns, statements, path)
        # The CSV reader's rows go to executemany as they are, no Python per row.
        with engine.begin() as conn, closing(conn.connection.dbapi_connection.cursor()) as cursor, \
                path.open(newline="", encoding="utf-8") as source:
            reader = csv.reader(source)
            next(reader)
            # the write lock first, as a child takes it: a statement that reads the database
            # before one that writes it would fail at once, not wait, if another took it between
            if not conn.connection.dbapi_connection.in_transaction:
                cursor.execute("BEGIN IMMEDIATE")
            cursor.execute("DROP TABLE IF EXISTS temp.incoming")
            cursor.execute(f"CREATE TEMP TABLE incoming ({names})")
            cursor.executemany(f"INSERT INTO temp.incoming VALUES ({', '.join('?' for _ in columns)})", reader)
            for statement in statements:
                cursor.execute(statement)
            rows = cursor.rowcount
            cursor.execute("DROP TABLE temp.incoming")
            return rows
    with engine.begin() as conn, conn.connection.dbapi_connection.cursor() as cursor, path.open() as source:
        cursor.execute("SET LOCAL TIME ZONE 'UTC'")
        cursor.execute(f"CREATE TEMP TABLE incoming ON COMMIT DROP AS SELECT {names} FROM {table} WITH NO DATA")
        cursor.copy_expert(f"COPY incoming ({names}) FROM STDIN WITH (FORMAT csv, HEADER true)", source)
        for statement in before:
            cursor.execute(statement)
        cursor.execute(
            f"INSERT INTO {table} ({targets}) SELECT {', '.join('%s' for _ in fixed)}, {names} FROM incoming {suffix}",
            tuple(fixed.values()),
        )
        return cursor.rowcount


# What `_import_apart` runs. SQLite reads the file itself, through the CSV virtual table `vsv`
# of sqlean.py (SQLite with its extensions built in), as `temp.incoming`, its columns named by
# the file's header, and the statements take its rows. A file with a NUL character goes through
# Python's CSV reader and executemany into a temporary table instead: `vsv` ends a value at a
# NUL, which an id or a reason may hold.
_APART = """
import json, os, sys
database, columns, statements, path, parent = sys.argv[1:]
columns, statements = json.loads(columns), json.loads(statements)
gone = "the sync this was written for is gone: not committed"

def orphaned():
    return os.getppid() != int(parent)

with open(path, "rb") as data:
    by_python = any(b"\\0" in chunk for chunk in iter(lambda: data.read(1 << 20), b""))
if not by_python:
    try:
        import sqlean as dbapi
        dbapi.extensions.enable("vsv")
    except ImportError:  # installed without it: Python's reader, as with a NUL
        by_python = True
if by_python:
    import csv, sqlite3 as dbapi
db = dbapi.connect(database, timeout=30, isolation_level=None)
db.execute("PRAGMA synchronous=NORMAL")
db.set_progress_handler(orphaned, 100_000)  # a statement of a sync that died is interrupted
try:
    db.execute("BEGIN IMMEDIATE")
    if by_python:
        db.execute(f"CREATE TEMP TABLE incoming ({', '.join(columns)})")
        with open(path, newline="", encoding="utf-8") as source:
            reader = csv.reader(source)
            next(reader)
            db.executemany(f"INSERT INTO temp.incoming VALUES ({', '.join('?' for _ in columns)})", reader)
    else:
        quoted = path.replace("'", "''")
        db.execute(f"CREATE VIRTUAL TABLE temp.incoming USING vsv(filename='{quoted}', header=yes)")
    for statement in statements:
        rows = db.execute(statement).rowcount
except dbapi.Error as error:
    sys.exit(gone if orphaned() else f"{type(error).__name__}: {error}")
if orphaned():
    sys.exit(gone)
db.execute("COMMIT")
print(rows)
"""
APART_ABOVE_BYTES = 1 << 20  # about 4,000 records' rows: below it, a child's start costs more than it saves


def _import_apart(database: str, columns: list[str], statements: list[str], path: Path) -> int:
    """Run the statements of `_load_csv` in a child process, and return the last one's row count.

    Python's sqlite3 binds each row under the interpreter lock and gives it up for each row's
    step. Run so in a thread of the sync, the import and the sync's main thread handed the lock to
    each other at every row: a 1M first sync's imports took 24 s of that thread, the main thread
    still waited 5.7 s for them, and the sync was no faster. Apart, they take a core of their
    own; and SQLite reading the CSV itself takes a third less of it than Python's reader and
    executemany did (`_APART`). A child whose sync died meanwhile (killed) is interrupted within
    a few milliseconds and commits nothing: what that sync knew is not written after it, and the
    lock is not held for long."""
    done = subprocess.run(
        [sys.executable, "-I", "-c", _APART, database, json.dumps(columns), json.dumps(statements), str(path),
         str(os.getpid())],
        capture_output=True, text=True,
    )
    if done.returncode:
        errors = done.stderr.strip().splitlines()
        raise RuntimeError(f"SQLite did not take {path.name}: {errors[-1] if errors else f'exit code {done.returncode}'}")
    return int(done.stdout)


def _sql_literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def problem_records(
    engine: sa.Engine, merchant: str, entity: EntityType, park_after: int | None, limit: int = 20
) -> dict[str, tuple[int, list[tuple[str, str]]]]:
    """The records of (merchant, entity) a data engineer should look at, each kind as (count,
    the first `limit` (id, reason)): `parked` (refused again and again at the version the source
    still has: not sent until it changes) and `invalid_held` (published, then became invalid at
    the source: the gateway keeps the last valid version)."""
    key = (records.c.merchant_id == merchant, records.c.entity_type == entity.value)
    kinds = {
        "invalid_held": (records.c.rejected_reason, (records.c.rejected_reason.is_not(None), records.c.held_hash.is_not(None))),
    }
    if park_after:
        kinds["parked"] = (
            records.c.refused_reason,
            (records.c.refused_hash == records.c.source_hash, records.c.refused_times >= park_after,
             records.c.pending == 0),
        )
    found: dict[str, tuple[int, list[tuple[str, str]]]] = {"parked": (0, []), "invalid_held": (0, [])}
    with engine.connect() as conn:
        for kind, (reason, where) in kinds.items():
            count = conn.execute(sa.select(sa.func.count()).where(*key, *where)).scalar_one()
            listed = conn.execute(
                sa.select(records.c.record_id, reason).where(*key, *where).order_by(records.c.record_id).limit(limit)
            ).all() if count else []
            found[kind] = (count, [(record_id, text or "") for record_id, text in listed])
    return found


def held_among(engine: sa.Engine, merchant: str, entity: EntityType, ids: Iterable[str]) -> set[str]:
    """Which of these ids the gateway holds for (merchant, entity)."""
    id_list = sorted(set(ids))
    held: set[str] = set()
    with engine.connect() as conn:
        for i in range(0, len(id_list), ID_CHUNK):
            held.update(
                conn.execute(
                    sa.select(records.c.record_id).where(
                        records.c.merchant_id == merchant, records.c.entity_type == entity.value,
                        records.c.held_hash.is_not(None), records.c.record_id.in_(id_list[i : i + ID_CHUNK]),
                    )
                ).scalars()
            )
    return held


EVENT_COLUMNS = ["record_id", "event_at", "event", "content_hash", "batch_id", "detail"]


def import_events(engine: sa.Engine, merchant: str, entity: EntityType, sync_id: str, path: Path) -> int:
    """Append a sync's record events from the CSV file `path` (EVENT_COLUMNS, with a header)."""
    columns = _header(path)
    if columns != EVENT_COLUMNS:
        raise ValueError(f"{path}: the header must be {EVENT_COLUMNS}, not {columns}")
    fixed = {"merchant_id": merchant, "entity_type": entity.value, "sync_id": sync_id}
    return _load_csv(engine, "record_events", fixed, EVENT_COLUMNS, path)


def count_records(engine: sa.Engine, merchant: str, entity: EntityType, *, held_only: bool = True) -> int:
    """How many records of (merchant, entity) the gateway holds from this service (or, not
    `held_only`, the state store knows). On SQLite, those it holds are all of them less those it
    does not (`records_unheld`), each count read from an index alone: counted by each row's
    held_hash, SQLite read every row (at 1M records, 0.50 s of a latest sync, against 0.07 s)."""
    where = [records.c.merchant_id == merchant, records.c.entity_type == entity.value]
    count = sa.select(sa.func.count()).select_from(records)
    if not held_only:
        query = count.where(*where)
    elif engine.dialect.name == "sqlite":  # in one statement: one snapshot of both
        unheld = count.where(*where, records.c.held_hash.is_(None))
        query = sa.select(count.where(*where).scalar_subquery() - unheld.scalar_subquery())
    else:
        query = count.where(*where, records.c.held_hash.is_not(None))
    with engine.connect() as conn:
        return conn.execute(query).scalar_one()

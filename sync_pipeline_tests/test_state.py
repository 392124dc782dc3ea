"""The state store on SQLite and PostgreSQL: the lease, the lifecycle, the watermark, batches."""

from datetime import datetime, timedelta, timezone

import pytest
import sqlalchemy as sa

from sync_pipeline.domain import EntityType, SyncMode, SyncStatus, Window
from sync_pipeline.errors import EntityBusy
from sync_pipeline.state import StateStore
from sync_pipeline.state.schema import CURRENT_VERSION

P, C = EntityType.PRODUCT, EntityType.COLLECTION
T0 = datetime(2026, 3, 1, tzinfo=timezone.utc)


def run_to_end(store: StateStore, entity, mode=SyncMode.FULL, window=Window(None, T0), status=SyncStatus.SUCCESS):
    sync = store.enqueue_sync(
        entity, mode, origin="test", sync_to=window.end if mode is not SyncMode.HISTORIC else None,
        start=window.start if mode is SyncMode.HISTORIC else None, end=window.end if mode is SyncMode.HISTORIC else None,
        lookback=timedelta(0),
    )
    assert sync.window == window
    store.start_sync(sync.sync_id, run_id=f"run-{sync.sync_id}")
    return store.finish_sync(sync.sync_id, status, num_records=5, published=5)


def test_a_second_sync_of_a_type_is_refused_naming_the_first(state_store):
    first = state_store.enqueue_sync(P, SyncMode.LATEST, origin="test")
    with pytest.raises(EntityBusy) as busy:
        state_store.enqueue_sync(P, SyncMode.FULL, origin="test")
    assert first.sync_id in str(busy.value)
    assert "queued" in str(busy.value)


def test_types_do_not_block_each_other(state_store):
    state_store.enqueue_sync(P, SyncMode.LATEST, origin="test")
    state_store.enqueue_sync(C, SyncMode.LATEST, origin="test")


def test_a_running_sync_holds_the_lease_and_finishing_releases_it(state_store):
    sync = state_store.enqueue_sync(P, SyncMode.FULL, origin="test")
    started = state_store.start_sync(sync.sync_id, run_id="r1")
    assert started.status is SyncStatus.IN_PROGRESS and started.run_id == "r1"
    with pytest.raises(EntityBusy, match="inprogress"):
        state_store.enqueue_sync(P, SyncMode.FULL, origin="test")
    state_store.finish_sync(sync.sync_id, SyncStatus.SOURCE_UNAVAILABLE, error_message="down")
    assert state_store.enqueue_sync(P, SyncMode.FULL, origin="test").status is SyncStatus.QUEUED


def test_a_finished_sync_is_not_reopened(state_store):
    final = run_to_end(state_store, P)
    again = state_store.finish_sync(final.sync_id, SyncStatus.FAILED, error_message="late")
    assert again.status is SyncStatus.SUCCESS
    with pytest.raises(ValueError, match="not Queued"):
        state_store.start_sync(final.sync_id, run_id="r")


def test_the_watermark_is_the_end_of_the_last_successful_full_or_latest_sync(state_store):
    assert state_store.watermark(P) is None
    run_to_end(state_store, P, window=Window(None, T0))
    run_to_end(state_store, P, SyncMode.LATEST, Window(T0, T0 + timedelta(days=1)), SyncStatus.PARTIAL_SUCCESS)
    run_to_end(state_store, P, SyncMode.LATEST, Window(T0 + timedelta(days=1), T0 + timedelta(days=2)), SyncStatus.GATEWAY_UNAVAILABLE)
    run_to_end(state_store, P, SyncMode.HISTORIC, Window(T0 - timedelta(days=9), T0 + timedelta(days=5)))
    assert state_store.watermark(P) == T0 + timedelta(days=1)
    assert state_store.watermark(C) is None


def test_a_latest_sync_is_resolved_when_asked_for(state_store):
    first = state_store.enqueue_sync(P, SyncMode.LATEST, origin="test", now=T0)
    assert (first.mode, first.requested_mode, first.window) == (SyncMode.FULL, SyncMode.LATEST, Window(None, T0))
    state_store.start_sync(first.sync_id, run_id="r")
    state_store.finish_sync(first.sync_id, SyncStatus.SUCCESS)
    second = state_store.enqueue_sync(P, origin="test", now=T0 + timedelta(hours=3))
    # from the watermark less the lookback (SYNC_LOOKBACK, 10 minutes): late commits are caught
    assert (second.mode, second.window) == (SyncMode.LATEST, Window(T0 - timedelta(minutes=10), T0 + timedelta(hours=3)))


def test_a_window_that_cannot_be_synced_is_refused_before_queueing(state_store):
    with pytest.raises(ValueError, match="future"):
        state_store.enqueue_sync(P, SyncMode.HISTORIC, origin="test", start=T0, end=datetime(2999, 1, 1, tzinfo=timezone.utc))
    assert state_store.active_sync(P) is None


def test_history_is_newest_first_with_every_count(state_store):
    first = run_to_end(state_store, P)
    second = run_to_end(state_store, P, SyncMode.LATEST, Window(T0, T0 + timedelta(hours=1)))
    history = state_store.history(P)
    assert [s.sync_id for s in history] == [second.sync_id, first.sync_id]
    assert history[0].window_start == T0 and history[0].num_records == 5
    assert state_store.last_successful(P).sync_id == second.sync_id


def test_batches_are_recorded_once_with_their_outcome(state_store):
    sync = state_store.enqueue_sync(P, SyncMode.FULL, origin="test")
    for _ in range(2):
        state_store.record_batch(batch_id="b1", sync_id=sync.sync_id, entity=P, operation="UPSERT", idempotency_key="k1", item_count=3)
    state_store.record_batch_outcome(
        "b1", batch_status="COMPLETED", success_count=2, fail_count=1, failed_products=[{"id": "x", "reason": "no"}], ratio="66.67"
    )
    [batch] = state_store.batches_for_sync(sync.sync_id)
    assert (batch.batch_status, batch.success_count, batch.fail_count, batch.ratio) == ("COMPLETED", 2, 1, "66.67")
    assert batch.failed_products == [{"id": "x", "reason": "no"}]
    assert state_store.get_batch("nope") is None


def test_a_key_whose_batch_had_failures_is_spent_and_any_other_is_reused(state_store):
    sync = state_store.enqueue_sync(P, SyncMode.FULL, origin="test")
    assert state_store.usable_idempotency_key("k") == "k"
    state_store.record_batch(batch_id="b1", sync_id=sync.sync_id, entity=P, operation="UPSERT", idempotency_key="k", item_count=1)
    assert state_store.usable_idempotency_key("k") == "k"  # outcome unknown: replay it
    state_store.record_batch_outcome("b1", batch_status="FAILED", success_count=0, fail_count=1, failed_products=[], ratio="0.00")
    successor = state_store.usable_idempotency_key("k")
    assert successor != "k"
    assert state_store.usable_idempotency_key("k") == successor


def test_the_schema_is_created_once_and_reopened(state_store):
    run_to_end(state_store, P)
    reopened = StateStore(state_store.url)
    assert reopened.ping()
    assert reopened.last_successful(P) is not None
    reopened.dispose()


RECORD_HEADER = (
    "record_id,source_hash,listed_hash,source_updated_at,source_sync_id,source_seen_at,rejected_reason,rejected_at,"
    "held_hash,held_batch_id,held_at,refused_hash,refused_reason,refused_at,refused_times,gone_at,"
    "deleted_batch_id,deleted_at,pending\n"
)


def test_records_go_out_to_the_scratch_narrow_and_come_back_merged_per_merchant(state_store, tmp_path):
    import csv

    from sync_pipeline.state.records import DIFF_COLUMNS
    from sync_pipeline.state.schema import records

    incoming = tmp_path / "in.csv"
    incoming.write_text(
        RECORD_HEADER
        + 'a,h1,l1,2025-03-01 10:00:00.000000,s1,2026-03-01 00:00:00.123456,,,h1,b1,2026-03-01 00:00:01.000000,,,,0,,,,0\n'
        + 'b,h2,,2025-03-01 11:00:00.000000,s1,2026-03-01 00:00:00.000000,,,,,,h2,"refused, ""quoted""\nreason",'
        + '2026-03-01 00:00:02.000000,1,,,,1\n'
    )
    assert state_store.import_records(P, incoming) == 2
    assert state_store.import_records(P, incoming, merchant="acme") == 2
    assert state_store.count_held(P) == 1 and state_store.count_held(C) == 0

    def stored(merchant: str = "default") -> dict:
        with state_store.engine.connect() as conn:
            rows = conn.execute(sa.select(records).where(records.c.merchant_id == merchant, records.c.entity_type == "PRODUCT"))
            return {row.record_id: row for row in rows}

    assert stored("acme")["b"].refused_reason == 'refused, "quoted"\nreason'
    # only what the diff reads goes out to the scratch
    out = tmp_path / "out.csv"
    assert state_store.export_records(P, out, merchant="acme") == 2
    rows = {row["record_id"]: row for row in csv.DictReader(out.open())}
    assert list(rows["a"]) == DIFF_COLUMNS
    assert rows["b"]["refused_hash"] == "h2" and rows["b"]["refused_times"] == "1" and rows["b"]["pending"] == "1"
    assert rows["a"]["held_hash"] == "h1" and rows["a"]["rejected_reason"] == "" and rows["a"]["listed_hash"] == "l1"
    # by id, plus whatever is still owed
    assert state_store.export_records(P, out, ids=["a"], pending=True) == 2
    assert state_store.export_records(P, out, ids=["a"]) == 1
    # The scratch writes its rows back whole, null where it never loaded a column: a group this
    # sync wrote (its stamp set) replaces the stored one, a cleared key clears its group, and
    # anything else keeps what the state store holds.
    incoming.write_text(
        RECORD_HEADER + "a,h1,l1,2025-03-01 10:00:00.000000,,,,,h1,,,,,,0,,,,0\n"
        + "b,h2,,2025-03-01 11:00:00.000000,,,,,h2,b2,2026-03-02 00:00:00.000000,,,,0,,,,0\n"
    )
    state_store.import_records(P, incoming)
    a, b = stored()["a"], stored()["b"]
    assert (a.held_batch_id, a.source_sync_id, str(a.source_updated_at)[:19]) == ("b1", "s1", "2025-03-01 10:00:00")
    assert (b.held_hash, b.held_batch_id, str(b.held_at)[:10]) == ("h2", "b2", "2026-03-02")
    assert (b.refused_hash, b.refused_reason, b.refused_at, b.refused_times) == (None, None, None, 0)
    assert (b.source_sync_id, str(b.source_updated_at)[:19]) == ("s1", "2025-03-01 11:00:00")
    assert state_store.count_held(P) == 2 and state_store.count_held(P, merchant="acme") == 1
    # a file that does not name what the diff reads is refused, not half-applied
    incoming.write_text("record_id,source_hash\na,h9\n")
    with pytest.raises(ValueError, match="header"):
        state_store.import_records(P, incoming)
    assert stored()["a"].source_hash == "h1"


def test_all_of_a_merchants_records_reach_the_scratch_as_the_same_rows_as_those_asked_for_by_id(
    state_store, tmp_path
):
    import csv
    import io

    from sync_pipeline.staging import StagingStore
    from sync_pipeline.staging.store import connect_scratch

    rows = "".join(
        f"p{n:05d},h{n},l{n},2025-03-01 10:00:00.{n:06d},s1,2026-03-01 00:00:00.000000,,,h{n},b1,"
        f"2026-03-01 00:00:01.000000,,,,0,,,,0\n"
        for n in range(45_000)  # more than one chunk of the SQLite export
    )
    odd = io.StringIO()
    csv.writer(odd, lineterminator="\n").writerow([
        'z\u00e9"q', "h2", "", "2025-03-01 11:00:00.000000", "s1", "2026-03-01 00:00:00.000000", 'bad, "quoted"\nreason',
        "2026-03-01 00:00:00.000000", "", "", "", "h2", "refused \u2603", "2026-03-01 00:00:02.000000", "3",
        "2026-03-02 00:00:00.000000", "", "", "1",
    ])
    incoming = tmp_path / "in.csv"
    incoming.write_text(RECORD_HEADER + rows + odd.getvalue(), encoding="utf-8")
    state_store.import_records(P, incoming)
    state_store.import_records(P, incoming, merchant="acme")

    def scratch_rows(path) -> list[tuple]:
        with connect_scratch(tmp_path / f"{path.name}.duckdb") as db:
            staging = StagingStore(db)
            staging.load_known(path)
            return db.execute("SELECT * EXCLUDE (dirty, answered, published_unsaved) FROM known ORDER BY record_id").fetchall()

    fastest, plain = tmp_path / "all.csv", tmp_path / "by-id.csv"  # written by the database / by Python
    assert state_store.export_records(P, fastest) == 45_001
    ids = [f"p{n:05d}" for n in range(45_000)] + ['z\u00e9"q']
    assert state_store.export_records(P, plain, ids=ids) == 45_001
    loaded = scratch_rows(fastest)
    assert loaded == scratch_rows(plain)
    last = loaded[-1]
    assert last[0] == 'z\u00e9"q' and last[6] == 'bad, "quoted"\nreason' and last[18] == 1
    assert str(last[14]) == "3" and last[15] is not None  # refused_times, gone_at
    empty = tmp_path / "none.csv"
    assert state_store.export_records(P, empty, merchant="nobody") == 0
    assert scratch_rows(empty) == []


@pytest.mark.parametrize("where", ["here", "apart"])
def test_a_row_that_replaces_a_seen_or_published_version_keeps_the_old_one_in_the_trail(state_store, tmp_path, monkeypatch, where):
    """A record's row is its newest `seen` and `published`: no trail row repeats them. A row
    written over them puts them in `record_events` first, once, as the sync that saw and
    published them would have: one `seen+published` row when that sync published the version it
    saw, else one each. A published version whose batch is pruned is past the retention: not
    kept. On SQLite, in this process and in a child process (a large file), the same."""
    from sync_pipeline.state import records
    from sync_pipeline.state.schema import record_events
    from sync_pipeline.trail import record_trail

    if where == "apart":
        if state_store.engine.dialect.name != "sqlite":
            pytest.skip("a child process takes large files into SQLite only")
        monkeypatch.setattr(records, "APART_ABOVE_BYTES", 0)
    s1, s2 = run_to_end(state_store, P).sync_id, run_to_end(state_store, P).sync_id
    for batch, sync in (("b1", s1), ("b2", s2), ("b3", s2)):
        state_store.record_batch(batch_id=batch, sync_id=sync, entity=P, operation="UPSERT", idempotency_key=batch,
                                 item_count=1)
    t1, t2, t3, t4 = (f"2026-03-0{day} 00:00:00.000000" for day in (1, 2, 3, 4))

    def save(name: str, *rows: tuple[str, ...]) -> None:
        path = tmp_path / f"{name}.csv"
        lines = [f"{r},{sh},,2025-03-01 10:00:00.000000,{sy},{seen},,,{hh},{hb},{held},,,,0,,,,0\n"
                 for r, sh, sy, seen, hh, hb, held in rows]
        path.write_text(RECORD_HEADER + "".join(lines))
        state_store.import_records(P, path)

    save(
        "first",
        ("a", "h1", s1, t1, "h1", "b1", t2),
        ("l", "h1", s1, t1, "h1", "b1", t2),  # its trail row written by an older release, below
        ("b", "h1", s1, t1, "h1", "b1", t2),
        ("c", "h1", s1, t1, "h1", "b1", t2),
        ("e", "h1", s1, t1, "h1", "pruned", t2),
        ("g", "h1", s1, t1, "h1", "b2", t2),  # published by another sync than the one that saw it
    )
    second = (
        ("a", "h2", s2, t3, "h2", "b3", t4),  # a new version, seen and published
        ("b", "h1", "", "", "h1", "", ""),  # written back unchanged
        ("c", "h1", "", "", "", "", ""),  # deleted from the gateway
        ("e", "h1", "", "", "", "", ""),
        ("g", "h2", s2, t3, "h2", "b3", t4),
        ("l", "h2", s2, t3, "h2", "b3", t4),
    )
    with state_store.engine.begin() as conn:
        conn.execute(record_events.insert().values(
            merchant_id="default", entity_type="PRODUCT", record_id="l", sync_id=s1,
            event_at=datetime(2026, 3, 2), event="seen+published", content_hash="h1", batch_id="b1", detail=t1,
        ))
    save("second", *second)
    save("again", *second)  # the same rows once more: nothing is replaced

    with state_store.engine.connect() as conn:
        trail = sorted(
            (row.record_id, row.sync_id, str(row.event_at)[:19], row.event, row.content_hash, row.batch_id, row.detail)
            for row in conn.execute(sa.select(record_events))
        )
    assert trail == sorted([
        ("a", s1, t2[:19], "seen+published", "h1", "b1", t1),
        ("c", s1, t2[:19], "published", "h1", "b1", None),
        ("g", s1, t1[:19], "seen", "h1", None, None),
        ("g", s2, t2[:19], "published", "h1", "b2", None),
        ("l", s1, t2[:19], "seen+published", "h1", "b1", t1),  # once
    ])
    shown = record_trail(state_store, P, "a", merchant="default", park_after=None).events
    assert [(e["event"], e["contentHash"], e["syncId"], e["batchId"]) for e in shown] == [
        ("published", "h2", s2, "b3"), ("seen", "h2", s2, None), ("published", "h1", s1, "b1"), ("seen", "h1", s1, None),
    ]
    # a trail row an older release wrote as it happened is not shown twice beside the row
    with state_store.engine.begin() as conn:
        conn.execute(record_events.insert().values(
            merchant_id="default", entity_type="PRODUCT", record_id="b", sync_id=s1,
            event_at=datetime(2026, 3, 2), event="seen+published", content_hash="h1", batch_id="b1", detail=t1,
        ))
    shown = record_trail(state_store, P, "b", merchant="default", park_after=None).events
    assert [(e["event"], e["at"], e["syncId"]) for e in shown] == [
        ("published", "2026-03-02T00:00:00Z", s1), ("seen", "2026-03-01T00:00:00Z", s1),
    ]


def test_a_small_save_waits_for_another_writer_of_sqlite(tmp_path):
    """A save reads the stored rows before it writes (the versions it replaces): it takes the
    write lock first, so another sync's import holding it makes it wait, not fail."""
    import sqlite3
    import threading
    import time

    store = StateStore(f"sqlite:///{tmp_path / 'state.db'}")
    path = tmp_path / "rows.csv"
    path.write_text(RECORD_HEADER + "a,h1,,2025-03-01 10:00:00.000000,s1,2026-03-01 00:00:00.000000,,,,,,,,,0,,,,1\n")
    other = sqlite3.connect(tmp_path / "state.db", isolation_level=None, check_same_thread=False)
    other.execute("BEGIN IMMEDIATE")
    threading.Timer(0.5, lambda: other.execute("COMMIT")).start()
    began = time.monotonic()
    assert store.import_records(P, path) == 1
    assert time.monotonic() - began >= 0.4 and store.count_records(P) == 1
    other.close()
    store.dispose()


def test_explain_shows_a_held_version_whose_batch_is_gone_from_an_unknown_sync(tmp_path, monkeypatch, capsys):
    """A holding whose batch the state store no longer has (pruned, or adopted from the old local
    staging) is still the newest `published` of the trail, by a sync it cannot name."""
    from sync_pipeline.cli import main

    url = f"sqlite:///{tmp_path / 'state.db'}"
    monkeypatch.setenv("SYNC_STATE_URL", url)
    store = StateStore(url)
    path = tmp_path / "rows.csv"
    path.write_text(RECORD_HEADER + "a,h1,,2025-03-01 10:00:00.000000,s1,2026-03-01 00:00:00.000000,,,"
                    "h1,b-gone,2026-03-01 00:00:01.000000,,,,0,,,,0\n")
    store.import_records(P, path)
    assert main(["explain", "PRODUCT", "a"]) == 0
    events = capsys.readouterr().out.split("events, newest first:")[1].splitlines()
    assert "published sync unknown (its batch is no longer in the state store)  batch b-gone" in events[1]
    assert "seen      sync s1" in events[2]
    store.dispose()


def test_the_sqlite_export_keeps_ids_and_reasons_with_a_nul_a_comma_a_quote_or_a_line_break(tmp_path):
    """SQLite writes a merchant's rows as CSV lines itself, the pipeline's own columns through
    `printf`, which stops at a NUL character: the source's text (ids, rejection reasons) may hold
    one, and must reach the scratch whole (PostgreSQL stores no NUL in text at all)."""
    import csv

    from sync_pipeline.staging import StagingStore
    from sync_pipeline.staging.store import connect_scratch

    store = StateStore(f"sqlite:///{tmp_path / 'state.db'}")
    odd = {"a\x00b": "bad\x00reason", "c,d": "why, \"quoted\"", "e\nf": "two\nlines", 'g"h': None}
    incoming = tmp_path / "in.csv"
    with incoming.open("w", newline="", encoding="utf-8") as out:
        out.write(RECORD_HEADER)
        for record_id, reason in odd.items():
            csv.writer(out, lineterminator="\n").writerow([
                record_id, "h1", "l1", "2025-03-01 10:00:00.000000", "s1", "2026-03-01 00:00:00.000000", reason or "",
                "2026-03-01 00:00:00.000000" if reason else "", "h1", "b1", "2026-03-01 00:00:01.000000", "", "", "",
                "0", "", "", "", "0",
            ])
    store.import_records(P, incoming)

    def scratch_rows(path) -> list[tuple]:
        with connect_scratch(tmp_path / f"{path.name}.duckdb") as db:
            StagingStore(db).load_known(path)
            return db.execute("SELECT record_id, rejected_reason, held_hash, pending FROM known ORDER BY record_id").fetchall()

    fastest, plain = tmp_path / "all.csv", tmp_path / "by-id.csv"  # written by SQLite / by Python
    assert store.export_records(P, fastest) == store.export_records(P, plain, ids=list(odd)) == 4
    assert scratch_rows(fastest) == scratch_rows(plain) == [(i, odd[i], "h1", 0) for i in sorted(odd)]
    store.dispose()


@pytest.mark.parametrize("nul", [False, True], ids=["read-by-sqlite", "with-a-nul"])
def test_a_large_file_goes_into_sqlite_from_a_child_process_exactly_as_it_would_from_this_one(tmp_path, monkeypatch, nul):
    """A large save is written into SQLite by a child process (off the sync's interpreter lock),
    which has SQLite read the file itself, or (a NUL character in it) Python's CSV reader: the
    same rows, merged the same way, as in this process; a refusal is an error naming the reason
    and applies nothing; and a child whose sync has died commits nothing."""
    import csv
    from types import SimpleNamespace

    from sync_pipeline.state import records

    def write(path, version: str, count: int) -> None:
        with path.open("w", newline="", encoding="utf-8") as out:
            out.write(RECORD_HEADER)
            rows = csv.writer(out, lineterminator="\n")
            odd = ["a\x00b" if nul else "a'b", "c,d", "e\nf", 'g"h', "\u00e9\u2603"]
            for n, record_id in enumerate(odd + [f"p{n:06d}" for n in range(count)]):
                held = n % 3 != 0
                rows.writerow([
                    record_id, f"h{version}{n}", "", "2025-03-01 10:00:00.000000", f"s{version}",
                    "2026-03-01 00:00:00.000000" if version == "1" or n % 2 else "", "bad, \"quoted\"\nreason" if n % 7 == 0 else "",
                    "2026-03-01 00:00:00.000000" if n % 7 == 0 else "", f"h{version}{n}" if held else "",
                    f"b{version}" if held else "", "2026-03-01 00:00:01.000000" if held else "", "", "", "", "0", "", "", "", "0",
                ])
        events = path.with_suffix(".events")
        with events.open("w", newline="", encoding="utf-8") as out:
            rows = csv.writer(out, lineterminator="\n")
            rows.writerow(records.EVENT_COLUMNS)
            for n in range(count):
                rows.writerow([f"p{n:06d}", "2026-03-01 00:00:00.000000", "seen+published", f"h{version}{n}", f"b{version}", ""])

    first, second = tmp_path / "first's.csv", tmp_path / "second.csv"  # a quote in a path, too
    write(first, "1", 6_000)
    write(second, "2", 3_000)  # merged over the first: groups kept, replaced or cleared
    stores = {}
    for where, above in (("here", 1 << 40), ("apart", 0)):
        monkeypatch.setattr(records, "APART_ABOVE_BYTES", above)
        store = stores[where] = StateStore(f"sqlite:///{tmp_path / where}.db")
        assert store.import_records(P, first) == 6_005
        assert store.import_records(P, second) == 3_005
        assert store.import_events(P, "s1", first.with_suffix(".events")) == 6_000

    def stored(store, table) -> list[tuple]:
        with store.engine.connect() as conn:
            return conn.exec_driver_sql(f"SELECT * FROM {table} ORDER BY 1, 2, 3, 4").fetchall()

    for table in ("records", "record_events"):
        assert stored(stores["here"], table) == stored(stores["apart"], table)
    assert len(stored(stores["apart"], "records")) == 6_005
    apart = stores["apart"]
    with apart.engine.begin() as conn:
        conn.exec_driver_sql(
            "CREATE TRIGGER refuse BEFORE UPDATE ON records WHEN new.record_id = 'p000042' BEGIN SELECT RAISE(ABORT, 'no room'); END"
        )
    before = stored(apart, "records")
    with pytest.raises(RuntimeError, match="SQLite did not take first's.csv: .*no room"):
        apart.import_records(P, first)
    assert stored(apart, "records") == before  # one transaction: nothing of it applied
    with apart.engine.begin() as conn:
        conn.exec_driver_sql("DROP TRIGGER refuse")
    monkeypatch.setattr(records, "os", SimpleNamespace(getpid=lambda: -1))  # as if the sync had died
    with pytest.raises(RuntimeError, match="is gone: not committed"):
        apart.import_records(P, first)
    assert stored(apart, "records") == before
    for store in stores.values():
        store.dispose()


def test_only_records_held_at_the_version_last_listed_and_owed_nothing_may_be_taken_unparsed(state_store):
    from hashlib import md5

    from sync_pipeline.state.schema import records

    def listed(record_id: str) -> bytes:
        return md5(record_id.encode()).digest()

    def row(record_id: str, merchant: str = "default", **changes) -> dict:
        held = dict(merchant_id=merchant, entity_type="PRODUCT", record_id=record_id, source_hash="h",
                    listed_hash=listed(record_id).hex(), held_hash="h", refused_times=0, pending=0)
        return {**held, **changes}

    with state_store.engine.begin() as conn:
        for values in (
            row("held"), row("other-merchant", merchant="acme"),
            row("never-listed", listed_hash=None),  # last seen by a release that kept no listed hash
            row("older-held", held_hash="h0", pending=1),  # the gateway is owed the new version
            row("invalid-now", rejected_reason="title is missing"),
            row("gone", gone_at=T0),
            row("refused", held_hash=None, refused_hash="h", refused_times=1, pending=1),
        ):
            conn.execute(records.insert().values(**values))
    assert state_store.listed_digests(P) == listed("held")
    assert state_store.listed_digests(P, merchant="acme") == listed("other-merchant")
    assert state_store.listed_digests(C) == b""


def test_what_the_gateway_holds_is_counted_right_and_on_sqlite_from_indexes_alone(state_store):
    """On SQLite, all of a (merchant, type)'s records less the few the gateway does not hold,
    each count from an index: counting by each row's held_hash read every row."""
    from sync_pipeline.state.schema import records

    def row(record_id: str, merchant: str = "default", entity: str = "PRODUCT", **changes) -> dict:
        return dict(merchant_id=merchant, entity_type=entity, record_id=record_id, source_hash="h", held_hash="h",
                    refused_times=0, pending=0) | changes

    with state_store.engine.begin() as conn:
        for values in (
            row("a"), row("b"), row("c", held_hash="h0", pending=1),  # held, one at an older version
            row("refused", held_hash=None, refused_hash="h", refused_times=1, pending=1),
            row("never-valid", source_hash=None, held_hash=None, rejected_reason="title is missing"),
            row("deleted", held_hash=None, gone_at=T0, deleted_at=T0),
            row("theirs", merchant="acme"), row("a-collection", entity="COLLECTION"),
        ):
            conn.execute(records.insert().values(**values))
    ran = []

    def note(conn, cursor, sql, params, *_):
        ran.append((sql, params))

    sa.event.listen(state_store.engine, "before_cursor_execute", note)
    try:
        assert state_store.count_held(P) == 3
    finally:
        sa.event.remove(state_store.engine, "before_cursor_execute", note)
    assert state_store.count_records(P) == 6
    assert (state_store.count_held(P, merchant="acme"), state_store.count_held(C)) == (1, 1)
    assert state_store.count_held(P, merchant="nobody") == 0
    if state_store.engine.dialect.name == "sqlite":
        sql, params = ran[0]  # the count of what the gateway holds, as count_held runs it
        with state_store.engine.connect() as conn:
            plan = str(conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {sql}", params).fetchall())
        assert "COVERING INDEX sqlite_autoindex_records_1" in plan and "records_unheld" in plan, plan


def test_a_sqlite_store_of_the_last_release_gets_the_index_of_records_not_held(state_store):
    """Schema version 4 had no `records_unheld`: opening a SQLite store makes it, for the rows it
    has. PostgreSQL goes without it (see the schema) and counts as before."""
    from sync_pipeline.state.schema import records

    url = state_store.engine.url.render_as_string(hide_password=False)
    sqlite = state_store.engine.dialect.name == "sqlite"
    with state_store.engine.begin() as conn:
        if sqlite:
            conn.exec_driver_sql("DROP INDEX records_unheld")
        conn.exec_driver_sql("UPDATE schema_version SET version = 4")  # a fresh store has one row
        conn.execute(records.insert().values(merchant_id="default", entity_type="PRODUCT", record_id="refused",
                                             held_hash=None, refused_times=1, pending=1))
    reopened = StateStore(url)
    try:
        with reopened.engine.connect() as conn:
            indexes = {index["name"] for index in sa.inspect(conn).get_indexes("records")}
            versions = [row[0] for row in conn.exec_driver_sql("SELECT version FROM schema_version ORDER BY version")]
        assert ("records_unheld" in indexes) is sqlite and versions[-1] == CURRENT_VERSION
        assert (reopened.count_held(P), reopened.count_records(P)) == (0, 1)
    finally:
        reopened.dispose()


def test_a_record_is_not_pruned_while_a_sync_of_its_type_is_queued_or_running(state_store):
    from sync_pipeline.state.schema import records

    with state_store.engine.begin() as conn:
        conn.execute(records.insert().values(merchant_id="default", entity_type="PRODUCT", record_id="gone",
                                             held_hash=None, gone_at=T0, refused_times=0, pending=0))
    sync = state_store.enqueue_sync(P, SyncMode.FULL, origin="cli")
    now = T0 + timedelta(days=200)
    assert state_store.prune_history(90, now=now)["records"] == 0  # the sync may have read it
    state_store.finish_sync(sync.sync_id, SyncStatus.FAILED, error_message="stopped")
    assert state_store.prune_history(90, now=now)["records"] == 1


def test_processes_starting_together_on_a_fresh_postgresql_database_upgrade_it_once(postgres_url):
    import subprocess
    import sys

    code = "import sys; from sync_pipeline.state import StateStore; StateStore(sys.argv[1]).ping()"
    processes = [subprocess.Popen([sys.executable, "-c", code, postgres_url], stderr=subprocess.PIPE) for _ in range(4)]
    errors = [(p.wait(60), p.stderr.read().decode()[-500:]) for p in processes]
    assert all(code == 0 for code, _ in errors), errors
    store = StateStore(postgres_url)
    with store.engine.connect() as conn:
        versions = [row[0] for row in conn.exec_driver_sql("SELECT version FROM schema_version ORDER BY version")]
    assert versions == [CURRENT_VERSION]
    store.dispose()


def test_an_old_single_merchant_store_is_upgraded_in_place(tmp_path):
    """A state store of the last release (schema version 2: no merchants) keeps its history, as
    the merchant default's, and gets the per-(merchant, type) lease."""
    import sqlite3

    path = tmp_path / "old.db"
    with sqlite3.connect(path) as db:
        db.executescript(
            """
            CREATE TABLE syncs (sync_id VARCHAR(64) PRIMARY KEY, entity_type VARCHAR(16) NOT NULL, mode VARCHAR(16) NOT NULL,
              requested_mode VARCHAR(16) NOT NULL, window_start DATETIME, window_end DATETIME, sync_to DATETIME,
              status_code INTEGER NOT NULL, status VARCHAR(32) NOT NULL, requested_at DATETIME NOT NULL,
              started_at DATETIME, finished_at DATETIME, run_id VARCHAR(64), origin VARCHAR(32) DEFAULT 'cli' NOT NULL,
              allow_deletions BOOLEAN DEFAULT 0 NOT NULL, fetched INTEGER DEFAULT 0 NOT NULL, rejected INTEGER DEFAULT 0 NOT NULL,
              published INTEGER DEFAULT 0 NOT NULL, failed INTEGER DEFAULT 0 NOT NULL, deleted INTEGER DEFAULT 0 NOT NULL,
              batches INTEGER DEFAULT 0 NOT NULL, num_records INTEGER, data_pushed BOOLEAN DEFAULT 0 NOT NULL,
              error_message TEXT, worker_host VARCHAR(255), worker_pid INTEGER);
            CREATE UNIQUE INDEX one_active_sync_per_entity ON syncs (entity_type) WHERE status_code IN (1000, 1100);
            CREATE INDEX syncs_by_entity_time ON syncs (entity_type, requested_at);
            CREATE INDEX syncs_by_run ON syncs (run_id);
            CREATE TABLE batches (batch_id VARCHAR(128) PRIMARY KEY, sync_id VARCHAR(64) NOT NULL REFERENCES syncs (sync_id),
              entity_type VARCHAR(16) NOT NULL, bulk_operation_type VARCHAR(16) NOT NULL, idempotency_key VARCHAR(128) NOT NULL,
              item_count INTEGER NOT NULL, batch_status VARCHAR(16) NOT NULL, success_count INTEGER DEFAULT 0 NOT NULL,
              fail_count INTEGER DEFAULT 0 NOT NULL, failed_products JSON NOT NULL, ratio VARCHAR(16),
              submitted_at DATETIME NOT NULL, finished_at DATETIME);
            CREATE TABLE schema_version (version INTEGER PRIMARY KEY, applied_at DATETIME NOT NULL);
            INSERT INTO schema_version VALUES (1, '2026-11-01 00:00:00.000000'), (2, '2026-11-02 00:00:00.000000');
            INSERT INTO syncs (sync_id, entity_type, mode, requested_mode, window_end, status_code, status, requested_at,
              started_at, finished_at, num_records)
              VALUES ('old-1', 'PRODUCT', 'full', 'full', '2026-11-20 00:00:00.000000', 2000, 'Success',
                      '2026-11-20 00:00:00.000000', '2026-11-20 00:00:01.000000', '2026-11-20 00:01:00.000000', 42);
            """
        )
    store = StateStore(f"sqlite:///{path}")
    last = store.last_successful(P)
    assert (last.sync_id, last.merchant_id, last.num_records) == ("old-1", "default", 42)
    assert store.watermark(P) == datetime(2026, 11, 20, tzinfo=timezone.utc)
    store.enqueue_sync(P, origin="test")
    store.enqueue_sync(P, origin="test", merchant="acme")  # another merchant is not blocked
    with pytest.raises(EntityBusy):
        store.enqueue_sync(P, origin="test")
    store.dispose()


def test_history_is_pruned_but_never_what_the_next_sync_or_the_api_needs(state_store):
    from sync_pipeline.state.schema import batches, record_events, records, rejections, syncs

    old = [run_to_end(state_store, P, SyncMode.LATEST if i else SyncMode.FULL, Window(T0 + timedelta(days=i - 1) if i else None,
           T0 + timedelta(days=i))) for i in range(3)]
    failed = run_to_end(state_store, P, SyncMode.LATEST, Window(T0 + timedelta(days=2), T0 + timedelta(days=3)),
                        SyncStatus.GATEWAY_UNAVAILABLE)
    historic = run_to_end(state_store, C, SyncMode.HISTORIC, Window(T0 - timedelta(days=30), T0 - timedelta(days=20)))
    state_store.record_batch(batch_id="b-old", sync_id=old[0].sync_id, entity=P, operation="UPSERT", idempotency_key="k", item_count=1)
    now = T0 + timedelta(days=200)
    with state_store.engine.begin() as conn:
        conn.execute(syncs.update().values(finished_at=syncs.c.window_end))  # everything finished long ago
        conn.execute(record_events.insert().values(merchant_id="default", entity_type="PRODUCT", record_id="a",
                                                   sync_id=old[0].sync_id, event_at=T0, event="seen"))
        conn.execute(rejections.insert().values(sync_id=old[0].sync_id, merchant_id="default", entity_type="PRODUCT",
                                                record_id="z", reason="bad", raw="{}", rejected_at=T0))
        conn.execute(records.insert(), [
            dict(merchant_id="default", entity_type="PRODUCT", record_id="held", held_hash="h", gone_at=None,
                 refused_times=0, pending=0),
            dict(merchant_id="default", entity_type="PRODUCT", record_id="gone", held_hash=None, gone_at=T0,
                 refused_times=0, pending=0),
            dict(merchant_id="default", entity_type="PRODUCT", record_id="owed", gone_at=T0, held_hash="h",
                 refused_times=0, pending=2),
        ])
    watermark = state_store.watermark(P)
    pruned = state_store.prune_history(90, now=now)
    assert pruned == {"record_events": 1, "rejections": 1, "batches": 1, "syncs": 3, "records": 1}
    remaining = {s.sync_id for s in state_store.history(P, 50)} | {s.sync_id for s in state_store.history(C, 50)}
    # the last success of each type is kept; here it also makes the watermark
    assert remaining == {old[2].sync_id, historic.sync_id} and failed.sync_id not in remaining
    assert state_store.watermark(P) == watermark and state_store.last_successful(C).sync_id == historic.sync_id
    with state_store.engine.connect() as conn:
        assert sorted(conn.execute(sa.select(records.c.record_id)).scalars()) == ["held", "owed"]
        assert conn.execute(sa.select(sa.func.count()).select_from(batches)).scalar() == 0
    assert state_store.prune_history(90, now=now) == {k: 0 for k in pruned}


def test_a_store_of_the_last_release_gets_the_listed_hash_column(tmp_path):
    import sqlite3

    path = tmp_path / "v3.db"
    StateStore(f"sqlite:///{path}").dispose()
    with sqlite3.connect(path) as db:  # as the last release left it: schema version 3, no listed_hash
        db.execute("ALTER TABLE records DROP COLUMN listed_hash")
        db.execute("UPDATE schema_version SET version = 3")
        db.execute("INSERT INTO records (merchant_id, entity_type, record_id, source_hash, held_hash, refused_times,"
                   " pending) VALUES ('default', 'PRODUCT', 'a', 'h', 'h', 0, 0)")
    store = StateStore(f"sqlite:///{path}")
    assert store.listed_digests(P) == b""  # kept, but parsed once more before it can be taken unparsed
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT max(version) FROM schema_version").fetchone() == (CURRENT_VERSION,)
        assert db.execute("SELECT record_id, listed_hash FROM records").fetchall() == [("a", None)]
    store.dispose()


def test_a_file_whose_header_is_not_the_state_store_s_columns_is_refused_and_nothing_is_stored(tmp_path):
    """The rows' header must name the diff's columns, and the events' be EVENT_COLUMNS, in order:
    a file from elsewhere (or empty) is a clear error, not rows in the wrong columns."""
    from sync_pipeline.state import records

    store = StateStore(f"sqlite:///{tmp_path / 'state.db'}")
    shuffled = tmp_path / "events.csv"
    shuffled.write_text(",".join(reversed(records.EVENT_COLUMNS)) + "\np1,,,,2026-03-01 00:00:00.000000,seen\n")
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    with pytest.raises(ValueError, match="the header must be"):
        store.import_events(EntityType.PRODUCT, "s1", shuffled)
    with pytest.raises(ValueError, match="the header must start with record_id"):
        store.import_records(EntityType.PRODUCT, empty)
    with store.engine.connect() as conn:
        assert conn.exec_driver_sql("SELECT count(*) FROM record_events").scalar_one() == 0
        assert conn.exec_driver_sql("SELECT count(*) FROM records").scalar_one() == 0
    store.dispose()

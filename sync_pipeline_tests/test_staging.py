"""The DuckDB scratch of a sync: dedupe, rejects kept, change detection against what the gateway
holds, what is owed across syncs, deletions. Each `Sync` here is a fresh scratch that starts
from the previous one's written-back rows, as a real run starts from the state store."""

import csv
import json
from datetime import datetime, timezone

import numpy as np
import pytest

from sync_pipeline.domain import EntityType
from sync_pipeline.staging import Outcome, StagingStore, connect_scratch, to_rows
from sync_pipeline.staging.store import PENDING_DELETE, PENDING_PUBLISH, Event

NOW = datetime(2026, 3, 1, tzinfo=timezone.utc)
LATER = datetime(2026, 3, 1, 0, 0, 5, 250_000, tzinfo=timezone.utc)


def product(record_id: str, updated: str = "2025-03-01T10:00:00Z", **fields) -> dict:
    return {"id": record_id, "title": f"Title {record_id}", "updatedAt": updated, "listPrice": 100, **fields}


class Syncs:
    """Successive syncs, each in a scratch of its own, handing their state on as CSV."""

    def __init__(self, tmp_path):
        self.tmp_path = tmp_path
        self.number = 0
        self.state = tmp_path / "state.csv"
        self.connection = None

    def next(self) -> StagingStore:
        if self.connection is not None:
            self.connection.execute(f"COPY (SELECT * EXCLUDE (dirty, answered, published_unsaved) FROM known) TO '{self.state}' (HEADER)")
            self.connection.close()
        self.number += 1
        self.connection = connect_scratch(self.tmp_path / f"scratch-{self.number}.duckdb")
        staging = StagingStore(self.connection)
        if self.state.exists():
            staging.load_known(self.state)
        return staging


@pytest.fixture
def syncs(tmp_path):
    chain = Syncs(tmp_path)
    yield chain
    if chain.connection is not None:
        chain.connection.close()


def stage(staging: StagingStore, records: list, sync_id: str = "s1"):
    staging.load_rows(to_rows(EntityType.PRODUCT, records, first_seq=0))
    return staging.stage_fetched(sync_id, now=NOW)


def publish_all(staging: StagingStore) -> list[str]:
    ids = []
    for chunk in staging.changed_since_publish(1000):
        staging.record_outcomes(Outcome.HELD, [r.id for r in chunk], [r.content_hash for r in chunk], "b1", [None] * len(chunk))
        ids += [record.id for record in chunk]
    staging.fold_outcomes(NOW)
    return ids


def pending(staging: StagingStore) -> dict[str, int]:
    return dict(staging.db.execute("SELECT record_id, pending FROM known WHERE pending <> 0").fetchall())


def test_a_record_seen_twice_keeps_its_latest_version(syncs):
    staging = syncs.next()
    counts = stage(staging, [product("a", "2025-03-01T10:00:00Z", title="old"), product("a", "2025-03-01T11:00:00Z", title="new")])
    assert (counts.fetched, counts.unique, counts.valid) == (2, 1, 1)
    [changed] = next(staging.changed_since_publish(10))
    assert '"title":"new"' in changed.raw


def test_latest_wins_even_when_listed_first(syncs):
    staging = syncs.next()
    stage(staging, [product("a", "2025-03-01T11:00:00Z", title="new"), product("a", "2025-03-01T10:00:00Z", title="old")])
    [changed] = next(staging.changed_since_publish(10))
    assert '"title":"new"' in changed.raw


def test_rejected_records_are_kept_with_raw_json_and_reason_and_never_published(syncs):
    staging = syncs.next()
    counts = stage(staging, [product("a"), product("b", listPrice=-3), {"title": "no id"}], sync_id="s9")
    assert counts.rejected == 2
    rejected = staging.rejected_rows()
    assert {(r[0], "negative" in r[1] or "id" in r[1]) for r in rejected} == {("b", True), (None, True)}
    assert all(r[2].startswith("{") for r in rejected)
    assert publish_all(staging) == ["a"]


def test_nothing_is_published_twice(syncs):
    staging = syncs.next()
    stage(staging, [product("a"), product("b")])
    assert publish_all(staging) == ["a", "b"]
    staging = syncs.next()
    stage(staging, [product("a"), product("b")], sync_id="s2")
    assert staging.count_changed() == 0


def test_an_unchanged_listing_writes_nothing_back(syncs, tmp_path):
    staging = syncs.next()
    stage(staging, [product("a"), product("b")])
    publish_all(staging)
    assert staging.unsaved_to_csv(tmp_path / "first.csv", tmp_path / "first-events.csv") == (2, 0)  # the rows are their seen and published
    staging.mark_saved()
    staging = syncs.next()
    stage(staging, [product("a"), product("b")], sync_id="s2")
    assert staging.unsaved_to_csv(tmp_path / "second.csv", tmp_path / "second-events.csv") == (0, 0)


def test_a_save_while_publishing_writes_back_only_what_the_gateway_has_answered_for(syncs, tmp_path):
    staging = syncs.next()
    stage(staging, [product("a"), product("b"), product("c")])
    staging.record_outcomes(Outcome.HELD, ["a"], [None], "b1", [None])
    staging.record_outcomes(Outcome.FAILED, ["b"], [None], "b2", [None])
    staging.fold_outcomes(NOW)
    # a and b were answered for (held, failed); c was staged but not sent yet
    assert staging.unsaved_to_csv(tmp_path / "1.csv", tmp_path / "1-events.csv", settled_only=True)[0] == 2
    assert sorted(row.split(",")[0] for row in (tmp_path / "1.csv").read_text().splitlines()[1:]) == ["a", "b"]
    staging.mark_saved()
    assert staging.unsaved_to_csv(tmp_path / "2.csv", tmp_path / "2-events.csv", settled_only=True)[0] == 0
    staging.record_outcomes(Outcome.HELD, ["b"], [None], "b3", [None])
    staging.fold_outcomes(NOW)
    assert staging.unsaved_to_csv(tmp_path / "3.csv", tmp_path / "3-events.csv", settled_only=True)[0] == 1
    staging.mark_saved()
    # the last save writes the rest
    assert staging.unsaved_to_csv(tmp_path / "4.csv", tmp_path / "4-events.csv")[0] == 1
    assert (tmp_path / "4.csv").read_text().splitlines()[1].startswith("c,")


def test_a_fold_of_one_kind_of_answer_marks_its_record_answered(syncs, tmp_path):
    # a fold runs only the passes for the kinds of answer it holds
    staging = syncs.next()
    stage(staging, [product("a"), product("b"), product("c"), product("d")])
    answers = [(Outcome.REFUSED, "a", "too long"), (Outcome.FAILED, "b", None), (Outcome.DELETED, "c", None),
               (Outcome.HELD, "d", None)]
    for n, (kind, record_id, reason) in enumerate(answers):
        staging.record_outcomes(kind, [record_id], [None], f"b{n}", [reason])
        staging.fold_outcomes(NOW)
        rows, events = staging.unsaved_to_csv(tmp_path / f"{n}.csv", tmp_path / f"{n}-events.csv", settled_only=True)
        assert rows == 1 and (tmp_path / f"{n}.csv").read_text().splitlines()[1].startswith(f"{record_id},")
        if kind == Outcome.HELD:  # its `published` is its row
            assert events == 0 and f",b{n}," in (tmp_path / f"{n}.csv").read_text()
        else:
            trail = [line.split(",") for line in (tmp_path / f"{n}-events.csv").read_text().splitlines()[1:]]
            assert [record_id, kind] in [row[:3:2] for row in trail]
        staging.mark_saved()
    staging.fold_outcomes(NOW)  # nothing to fold
    assert staging.unsaved_to_csv(tmp_path / "end.csv", tmp_path / "end-events.csv", settled_only=True) == (0, 0)


def test_a_save_writes_only_the_trail_events_its_rows_do_not_say(syncs, tmp_path):
    """A row's `seen` and `published` are the row: the state store keeps them as trail rows only
    once a later row replaces them. A `published` that a deletion clears before its row is saved
    goes to the trail with the deletion."""
    from sync_pipeline.staging.store import TIME_FORMAT

    staging = syncs.next()
    stage(staging, [product("a"), product("b"), product("c"), product("d"), product("e")])
    hashes = dict(staging.db.execute("SELECT record_id, source_hash FROM known").fetchall())
    staging.record_outcomes(Outcome.HELD, ["a", "e"], [hashes["a"], hashes["e"]], "b1", [None, None])
    staging.record_outcomes(Outcome.REFUSED, ["b"], [hashes["b"]], "b1", ["too long"])
    staging.record_outcomes(Outcome.HELD, ["d"], ["another"], "b1", [None])  # not the version seen
    staging.fold_outcomes(LATER)
    staging.record_outcomes(Outcome.DELETED, ["e"], ["deleted"], "b2", [None])  # before its row is saved
    staging.fold_outcomes(LATER)

    def trail(name: str, **save) -> list[list[str]]:
        _, events = staging.unsaved_to_csv(tmp_path / f"{name}.csv", tmp_path / f"{name}-events.csv", **save)
        staging.mark_saved()
        if not events:
            return []
        return [row.split(",") for row in (tmp_path / f"{name}-events.csv").read_text().splitlines()[1:]]

    published_at = LATER.strftime(TIME_FORMAT)
    assert trail("while", settled_only=True) == [
        ["b", published_at, Event.REFUSED, hashes["b"], "b1", "too long"],
        ["e", published_at, Event.PUBLISHED, hashes["e"], "b1", ""],
        ["e", published_at, Event.DELETED, "", "b2", ""],
    ]
    rows = {row.split(",")[0]: row for row in (tmp_path / "while.csv").read_text().splitlines()[1:]}
    assert sorted(rows) == ["a", "b", "d", "e"]  # c is not answered yet: its row waits
    assert f",{hashes['a']},b1,{published_at}," in rows["a"] and ",another,b1," in rows["d"]
    assert trail("end") == []
    staging.record_outcomes(Outcome.HELD, ["c"], [hashes["c"]], "b3", [None])
    staging.fold_outcomes(LATER)
    assert trail("late") == []


def test_only_changed_content_is_published_again(syncs):
    staging = syncs.next()
    stage(staging, [product("a"), product("b")])
    publish_all(staging)
    staging = syncs.next()
    stage(staging, [product("a", "2025-03-02T10:00:00Z", title="changed"), product("b", "2025-03-02T10:00:00Z")], sync_id="s2")
    # b's updatedAt moved, so its content hash did too: both go; a record with identical JSON would not.
    assert publish_all(staging) == ["a", "b"]
    staging = syncs.next()
    stage(staging, [product("a", "2025-03-02T10:00:00Z", title="changed")], sync_id="s3")
    assert staging.count_changed() == 0


def test_key_order_does_not_count_as_a_change(syncs):
    staging = syncs.next()
    stage(staging, [{"listPrice": 1, "id": "a", "title": "t", "updatedAt": "2025-03-01T10:00:00Z"}])
    publish_all(staging)
    staging = syncs.next()
    stage(staging, [{"id": "a", "title": "t", "updatedAt": "2025-03-01T10:00:00Z", "listPrice": 1}], sync_id="s2")
    assert staging.count_changed() == 0


def test_a_refused_record_stays_owed_and_a_later_sync_that_does_not_list_it_finds_it(syncs):
    staging = syncs.next()
    stage(staging, [product("a"), product("b")])
    chunk = next(staging.changed_since_publish(10))
    staging.record_outcomes(Outcome.HELD, ["a"], [chunk[0].content_hash], "b1", [None])
    staging.record_outcomes(Outcome.REFUSED, ["b"], [chunk[1].content_hash], "b1", ["sku is blocked"])
    staging.fold_outcomes(NOW)
    assert pending(staging) == {"b": PENDING_PUBLISH}
    staging = syncs.next()
    stage(staging, [product("c")], sync_id="s2")  # a latest window that does not list b
    assert staging.pending_not_fetched() == ["b"]
    [(times, reason)] = staging.db.execute("SELECT refused_times, refused_reason FROM known WHERE record_id = 'b'").fetchall()
    assert (times, reason) == (1, "sku is blocked")


def test_a_record_refused_twice_at_the_same_version_is_parked(syncs):
    staging = syncs.next()
    staging.park_after = 2
    stage(staging, [product("a")])
    for _ in range(2):
        [record] = next(staging.changed_since_publish(10))
        staging.record_outcomes(Outcome.REFUSED, ["a"], [record.content_hash], "b", ["no"])
        staging.fold_outcomes(NOW)
    assert pending(staging) == {}
    staging = syncs.next()
    staging.park_after = 2
    stage(staging, [product("a", title="fixed")], sync_id="s2")  # new content: owed again
    assert pending(staging) == {"a": PENDING_PUBLISH}


def test_a_published_record_that_becomes_invalid_keeps_its_last_valid_version(syncs):
    staging = syncs.next()
    stage(staging, [product("a")])
    publish_all(staging)
    staging = syncs.next()
    stage(staging, [product("a", "2025-03-02T10:00:00Z", listPrice=-1)], sync_id="s2")
    [(held, source, reason)] = staging.db.execute(
        "SELECT held_hash, source_hash, rejected_reason FROM known"
    ).fetchall()
    assert held == source and "negative" in reason
    assert staging.count_changed() == 0 and pending(staging) == {}


def test_a_full_sync_finds_what_the_source_no_longer_lists(syncs):
    staging = syncs.next()
    stage(staging, [product("a"), product("b"), product("c")])
    publish_all(staging)
    staging = syncs.next()
    stage(staging, [product("a"), product("c", listPrice=-1)], sync_id="s2")
    # c is listed (though now invalid): not a deletion candidate; b is.
    assert staging.deletion_candidates() == [("b", True)]
    staging.mark_gone(["b"], NOW)
    assert [record_id for record_id, _ in staging.pending_deletions()] == ["b"]
    staging.record_outcomes(Outcome.DELETED, ["b"], [None], "b9", [None])
    staging.fold_outcomes(NOW)
    assert staging.held_count() == 2
    assert staging.pending_deletions() == []
    [(deleted_by,)] = staging.db.execute("SELECT deleted_batch_id FROM known WHERE record_id = 'b'").fetchall()
    assert deleted_by == "b9"


def test_a_deletion_that_failed_is_still_owed_by_the_next_sync(syncs):
    staging = syncs.next()
    stage(staging, [product("a"), product("b")])
    publish_all(staging)
    staging.mark_gone(["b"], NOW)
    staging.record_outcomes(Outcome.FAILED, ["b"], [None], "b2", [None])
    staging.fold_outcomes(NOW)
    staging = syncs.next()
    assert pending(staging) == {"b": PENDING_DELETE}


def test_each_change_carries_its_own_json_content_hash_and_the_hash_the_gateway_holds(syncs, monkeypatch):
    # a slice's rows are read in fetch order and sorted by id apart from what the gateway holds
    import sync_pipeline.staging.store as store

    monkeypatch.setattr(store, "SLICE_ROWS", 7)
    staging = syncs.next()
    stage(staging, [product(f"p{(i * 7) % 30:03d}") for i in range(30)])
    publish_all(staging)
    held = dict(staging.db.execute("SELECT record_id, held_hash FROM known").fetchall())
    staging = syncs.next()
    stage(staging, [product(f"p{(i * 11) % 30:03d}", title=f"New {(i * 11) % 30}") for i in range(30)], sync_id="s2")
    source = dict(staging.db.execute("SELECT record_id, source_hash FROM known").fetchall())
    changed = [record for chunk in staging.changed_since_publish(4) for record in chunk]
    assert len(changed) == 30
    for record in changed:
        assert json.loads(record.raw)["title"] == f"New {int(record.id[1:])}"
        assert record.content_hash == source[record.id] != held[record.id] == record.published_hash


def test_changes_come_slice_by_slice_in_fetch_order_and_by_id_within_each(syncs, monkeypatch):
    import sync_pipeline.staging.store as store

    monkeypatch.setattr(store, "SLICE_ROWS", 7)
    staging = syncs.next()
    records = [product(f"p{i:03d}") for i in range(50)]
    fetched = [records[(i * 17) % 50] for i in range(50)]  # the listing's order
    stage(staging, fetched)
    chunks = list(staging.changed_since_publish(8))
    assert [len(c) for c in chunks] == [8, 8, 8, 8, 8, 8, 2]
    order = [r.id for c in chunks for r in c]
    assert sorted(order) == [r["id"] for r in records]  # each once
    # the same order every time (a rerun after a crash makes the same batches)
    assert [r.id for c in staging.changed_since_publish(8) for r in c] == order
    # cut where everything before was fetched before everything after: pieces of the fetch
    # order, slices or finer, each sorted by id
    position = {r["id"]: i for i, r in enumerate(fetched)}
    pieces, start = [], 0
    for cut in range(1, len(order) + 1):
        if cut == len(order) or max(position[i] for i in order[:cut]) < min(position[i] for i in order[cut:]):
            pieces.append(order[start:cut])
            start = cut
    assert len(pieces) >= 7  # 50 changes in slices of about 7
    assert all(piece == sorted(piece) for piece in pieces)


def test_an_updated_at_without_an_offset_is_utc_in_duckdb_as_in_python(syncs):
    from sync_pipeline.domain import parse_time

    staging = syncs.next()
    stage(staging, [product("a", "2025-03-01T10:00:00"), product("b", "2025-03-01T10:00:00+02:00")])
    found = dict(staging.db.execute("SELECT record_id, source_updated_at FROM known").fetchall())
    assert found["a"] == parse_time("2025-03-01T10:00:00") and found["b"] == parse_time("2025-03-01T08:00:00Z")


def test_the_scratch_and_the_state_store_agree_on_the_record_columns():
    from sync_pipeline.staging.store import KNOWN_COLUMNS
    from sync_pipeline.state.records import COLUMNS

    assert list(KNOWN_COLUMNS) == COLUMNS  # the CSV files between them are matched by position


# The id of the i-th of many records made in SQL, for the tests of large syncs under a small cap.
RECORD_ID = "'gid://shopify/Product/' || lpad(i::varchar, 8, '0')"


def capped_scratch(tmp_path) -> StagingStore:
    """A scratch under a 48 MB cap on two threads, below the default 64 MB: a test's few hundred
    thousand rows stand for the million a real sync has under its cap."""
    return StagingStore(connect_scratch(tmp_path / "scratch.duckdb", memory_limit="48MB", threads=2))


def insert_held(staging: StagingStore, count: int, **columns: str) -> None:
    """`count` known rows (numbered `i`) held at the version last seen, as a first sync leaves
    them; `columns`: more columns, each as an SQL expression of `i`."""
    held = {
        "record_id": RECORD_ID, "source_hash": "md5(i::varchar)", "source_updated_at": "now()",
        "source_sync_id": "'sync-1'", "held_hash": "md5(i::varchar)", "held_batch_id": "md5((i // 1000)::varchar)",
        "held_at": "now()", **columns,
    }
    staging.db.execute(
        f"INSERT INTO known ({', '.join(held)}) SELECT {', '.join(held.values())} FROM range({count}) t(i)"
    )


def test_a_large_write_back_fits_the_memory_cap(tmp_path):
    """Sorting the write-back (its rows and trail events, in key order) on two threads asked
    DuckDB for a 64 MiB block per thread: a 1M first sync failed at the 128 MB cap. Scaled
    down: 300k rows and 900k events at a 48 MB cap; 300k
    rows and 600k events failed the same way before. At 48 MB, one sort of the whole write-back
    on one thread failed so too (`failed to pin block of size 256.0 KiB`), as a 1M first sync
    did: it is sorted a part at a time."""
    staging = capped_scratch(tmp_path)
    connection, record_id = staging.db, RECORD_ID
    insert_held(staging, 300_000, dirty="true", published_unsaved="true")
    for event in ("refused", "failed", "gone"):
        connection.execute(
            f"INSERT INTO events SELECT {record_id}, now(), '{event}', md5(i::varchar), NULL, NULL FROM range(300000) t(i)"
        )
    assert staging.unsaved_to_csv(tmp_path / "rows.csv", tmp_path / "events.csv") == (300_000, 900_000)
    assert staging.db.execute("SELECT current_setting('threads')").fetchall() == [(2,)]
    with (tmp_path / "events.csv").open() as events:
        next(events)
        first, second = next(events), next(events)
    assert first.startswith("gid://shopify/Product/00000000,") and ",refused," in first and ",failed," in second
    for name, count in (("rows.csv", 300_000), ("events.csv", 900_000)):  # written in parts: none lost, all in order
        with (tmp_path / name).open() as written:
            next(written)
            ids = [line.partition(",")[0] for line in written]
        assert len(ids) == count and ids == sorted(ids) and len(set(ids)) == 300_000
    connection.close()


@pytest.mark.parametrize("change", ["listed as other bytes", "new content"])
def test_a_full_sync_that_finds_every_record_changed_fits_the_memory_cap(tmp_path, change):
    """A full sync that lists every record as other bytes (as the first after LISTED_RULES
    changes does) or with new content updates every known row. As one UPDATE, a 1M full sync
    ran out of the 128 MB cap (DuckDB holds what an UPDATE changed until it commits); scaled
    down: 300k rows at a 64 MB cap failed the same way (the test runs at the 48 MB cap)."""
    staging = capped_scratch(tmp_path)
    connection, record_id = staging.db, RECORD_ID
    insert_held(staging, 300_000, listed_hash="md5('l' || i::varchar)", refused_times="0", pending="0")
    content = "md5(i::varchar)" if change == "listed as other bytes" else "md5('new' || i::varchar)"
    connection.execute(
        "INSERT INTO fetched (seq, id, updated_at, raw, reason, content_hash, listed_hash)"
        f" SELECT i, {record_id}, now(), NULL, NULL, {content}, md5('m' || i::varchar) FROM range(300000) t(i)"
    )
    counts = staging.stage_fetched("s2", now=NOW)
    assert (counts.unique, counts.valid) == (300_000, 300_000)
    [(listed, sources, owed, dirty)] = connection.execute(
        "SELECT count(*) FILTER (WHERE listed_hash = md5('m' || substr(record_id, 23)::int::varchar)),"
        " count(*) FILTER (WHERE source_sync_id = 's2'), count(*) FILTER (WHERE pending = 1),"
        " count(*) FILTER (WHERE dirty) FROM known"
    ).fetchall()
    assert (listed, dirty) == (300_000, 300_000)  # every row, in every part
    assert (sources, owed) == ((0, 0) if change == "listed as other bytes" else (300_000, 300_000))
    connection.close()


def test_a_full_sync_that_finds_every_record_changed_lists_its_changes_within_the_memory_cap(tmp_path):
    """The changes are listed in fetch order before publishing. Sorted in one statement, those
    of a 1M full re-sync that found every record changed did not fit the 128 MB cap; scaled
    down: 500k at a 64 MB cap failed the same way (the test runs at the 48 MB cap)."""
    staging = capped_scratch(tmp_path)
    connection, record_id = staging.db, RECORD_ID
    connection.execute(
        f"INSERT INTO known (record_id, source_hash, held_hash, refused_times, pending)"
        f" SELECT {record_id}, md5('new' || i::varchar), md5(i::varchar), 0, {PENDING_PUBLISH} FROM range(500000) t(i)"
    )
    connection.execute(  # fetched in the reverse order of the ids
        "INSERT INTO fetched (seq, id, updated_at, raw, reason, content_hash, listed_hash)"
        f" SELECT 499999 - i, {record_id}, now(), '{{}}', NULL, md5('new' || i::varchar), NULL FROM range(500000) t(i)"
    )
    ids = [record.id for chunk in staging.changed_since_publish(10_000) for record in chunk]
    assert len(set(ids)) == 500_000
    assert int(ids[0][-8:]) > 490_000 and int(ids[-1][-8:]) < 10_000  # in fetch order, slice by slice
    connection.close()


def test_a_full_sync_takes_a_record_listed_as_the_gateway_holds_it_without_parsing_it(syncs):
    import orjson

    from sync_pipeline.staging import ListedIndex, listed_digest
    from sync_pipeline.state.records import UNCHANGED_IF_LISTED_SAME

    def listed_index(staging):  # what the state store gives a full sync, from the rows handed on
        found = staging.db.execute(f"SELECT listed_hash FROM known WHERE {UNCHANGED_IF_LISTED_SAME}").fetchall()
        return ListedIndex.of(b"".join(bytes.fromhex(h) for (h,) in found))

    def stage_listed(staging, raws: list[bytes], index=None):
        """The page loop's own step: records the index holds are noted by hash, the rest parsed."""
        from sync_pipeline.pipeline import _sort_listed
        from sync_pipeline.staging import ListedSame, parse_listed

        listed = ListedSame()
        rows = parse_listed(EntityType.PRODUCT, *_sort_listed(raws, 0, index, listed))
        staging.load_rows(rows)
        staging.load_listed(listed)
        seqs = set(np.concatenate(listed.seqs).tolist()) if listed.seqs else set()
        same = [seq in seqs for seq in range(len(raws))]
        return same, staging.stage_listed(), staging.stage_fetched("s", now=NOW)

    first = [orjson.dumps(product(name)) for name in ("a", "b", "c", "d")]
    staging = syncs.next()
    assert listed_index(staging) is None  # nothing held yet: everything is parsed
    stage_listed(staging, first)
    assert publish_all(staging) == ["a", "b", "c", "d"]
    # d is owed (refused, say): it is always parsed
    staging.db.execute("UPDATE known SET pending = 1, held_hash = NULL WHERE record_id = 'd'")

    staging = syncs.next()
    index = listed_index(staging)
    assert len(index) == 3
    reordered = orjson.dumps(dict(reversed(list(product("c").items()))))  # same content, other bytes
    second = [first[0], orjson.dumps(product("b", title="new")), reordered, first[3]]
    same, unparsed, counts = stage_listed(staging, second, index)
    assert same == [True, False, False, False] and unparsed == 1
    assert (counts.unique, counts.valid) == (4, 4)
    assert [record.id for chunk in staging.changed_since_publish(10) for record in chunk] == ["b", "d"]
    listed = dict(staging.db.execute("SELECT record_id, listed_hash FROM known").fetchall())
    assert listed["c"] == listed_digest(reordered).hex()  # remembered: the next sync need not parse it
    assert listed["a"] == listed_digest(first[0]).hex()
    assert staging.db.execute("SELECT raw FROM fetched WHERE id = 'a'").fetchall() == [(None,)]



@pytest.mark.parametrize("other", ["newer", "older", "same time"])
def test_a_record_taken_unparsed_and_listed_again_as_other_bytes_is_deduped_and_checked_as_if_joined(syncs, other):
    """A record listed twice by one full sync (updated while the listing paged): once as the
    gateway holds it (taken unparsed, left out of the diff and of publish_check's join) and once
    with new content. The latest copy wins either way, and publish_check counts what the whole
    join of the rows staged counts."""
    import orjson

    from sync_pipeline.pipeline import _sort_listed
    from sync_pipeline.staging import ListedIndex, ListedSame, parse_listed
    from sync_pipeline.state.records import UNCHANGED_IF_LISTED_SAME

    held = [orjson.dumps(product(name)) for name in ("a", "b")]
    staging = syncs.next()
    staging.load_rows(to_rows(EntityType.PRODUCT, [orjson.loads(raw) for raw in held], 0))
    staging.stage_fetched("s1", now=NOW)
    assert publish_all(staging) == ["a", "b"]

    staging = syncs.next()
    found = staging.db.execute(f"SELECT listed_hash FROM known WHERE {UNCHANGED_IF_LISTED_SAME}").fetchall()
    assert found == []  # rows staged from parsed records remember no listed hash: give them one
    staging.db.execute("UPDATE known SET listed_hash = ? WHERE record_id = 'a'", [_digest_hex(held[0])])
    staging.db.execute("UPDATE known SET listed_hash = ? WHERE record_id = 'b'", [_digest_hex(held[1])])
    index = ListedIndex.of(b"".join(bytes.fromhex(_digest_hex(raw)) for raw in held))
    updated = {"newer": "2025-03-01T11:00:00Z", "older": "2025-03-01T09:00:00Z", "same time": "2025-03-01T10:00:00Z"}
    listing = [held[0], held[1], orjson.dumps(product("a", updated[other], title="new"))]
    same = ListedSame()
    rows = parse_listed(EntityType.PRODUCT, *_sort_listed(listing, 0, index, same))
    staging.load_rows(rows)
    staging.load_listed(same)
    assert staging.stage_listed() == 2
    counts = staging.stage_fetched("s2", now=NOW)
    assert (counts.fetched, counts.unique, counts.valid) == (3, 2, 2)
    # the latest copy wins; at the same time, the one listed last
    assert [r.id for chunk in staging.changed_since_publish(10) for r in chunk] == ([] if other == "older" else ["a"])
    publish_all(staging)
    [(staged, held_current)] = staging.db.execute(  # the join publish_check no longer makes for unparsed rows
        "SELECT count(*), count(*) FILTER (WHERE k.held_hash = f.content_hash)"
        " FROM fetched f JOIN known k ON k.record_id = f.id WHERE f.reason IS NULL"
    ).fetchall()
    check = staging.publish_check(full=True)
    assert (check.staged, check.held_current, check.unexplained, check.orphans) == (staged, held_current, 0, 0) == (
        check.staged, 2, 0, 0
    )


def _digest_hex(raw: bytes) -> str:
    from sync_pipeline.staging import listed_digest

    return listed_digest(raw).hex()

@pytest.mark.parametrize("size", [1, 2, 1000, 50_000])
def test_the_listed_index_finds_exactly_the_digests_it_holds(size):
    import hashlib
    import random

    from sync_pipeline.staging import ListedIndex

    held = [hashlib.md5(str(i).encode()).digest() for i in range(size)]
    twin = held[0][:8] + bytes(8)  # the same first half as a held digest, another second half
    others = [hashlib.md5(f"other {i}".encode()).digest() for i in range(500)] + [twin]
    asked = random.Random(size).sample(held, min(size, 500)) + others
    index = ListedIndex.of(b"".join(held))
    assert len(index) == size
    assert index.contains(b"".join(asked)).tolist() == [digest in set(held) for digest in asked]
    assert ListedIndex.of(b"") is None


def test_a_chunk_staged_from_one_buffer_keeps_each_records_json_even_an_empty_one(syncs):
    """Each record's canonical JSON comes out of the chunk's one buffer as it went in, a record
    too deeply nested to be read included (its JSON is empty, its reason kept)."""
    nested: list = []
    for _ in range(100_000):
        nested = [nested]
    records = [product("a", title="é \u2603"), {**product("b"), "deep": nested}, product("c")]
    staging = syncs.next()
    counts = stage(staging, records)
    assert (counts.valid, counts.rejected) == (2, 1)
    [(record_id, reason, raw)] = staging.rejected_rows()
    assert (record_id, reason, raw) == ("b", "nested too deeply to be read", "")
    published = {r.id: json.loads(r.raw) for chunk in staging.changed_since_publish(10) for r in chunk}
    assert published == {"a": product("a", title="é \u2603"), "c": product("c")}


def test_nothing_is_listed_to_publish_when_nothing_is_owed(syncs):
    staging = syncs.next()
    stage(staging, [product("a"), product("b")])
    assert publish_all(staging) == ["a", "b"]
    staging = syncs.next()
    stage(staging, [product("a"), product("b")])
    assert pending(staging) == {}
    assert list(staging.changed_since_publish(10)) == []
    staging.db.execute("UPDATE known SET pending = 1, held_hash = NULL WHERE record_id = 'b'")
    assert [r.id for chunk in staging.changed_since_publish(10) for r in chunk] == ["b"]


def test_a_few_owed_among_many_fetched_are_listed_in_one_statement_in_the_order_of_parts(tmp_path, monkeypatch):
    """At most UPDATE_PART_ROWS owed: listed by one statement over every fetch sequence, in the
    same order as part by part."""
    from sync_pipeline.staging import store

    staging = StagingStore(connect_scratch(tmp_path / "scratch.duckdb"))
    insert_held(staging, 250_000, pending=f"CASE WHEN hash(i) % 250 = 0 THEN {PENDING_PUBLISH} ELSE 0 END")
    staging.db.execute(
        "INSERT INTO fetched (seq, id, updated_at, raw, reason, content_hash)"
        f" SELECT 249999 - i, {RECORD_ID}, now(), '{{}}', NULL, md5(i::varchar) FROM range(250000) t(i)"
    )
    owed = staging._scalar(f"SELECT count(*) FROM known WHERE pending = {PENDING_PUBLISH}")
    assert 500 < owed <= store.UPDATE_PART_ROWS
    monkeypatch.setattr(store, "SLICE_ROWS", 300)
    in_one = [record.id for chunk in staging.changed_since_publish(100) for record in chunk]
    monkeypatch.setattr(store, "UPDATE_PART_ROWS", 500)  # fewer than owed: part by part
    in_parts = [record.id for chunk in staging.changed_since_publish(100) for record in chunk]
    assert len(in_one) == owed and in_one == in_parts

def test_the_write_back_in_parts_is_byte_for_byte_the_write_back_in_one_sort(tmp_path, monkeypatch):
    """Rows and trail events written a few at a time, by ranges of record_id, make the same
    files as one sort of all: ids with a NUL, accents, an emoji, a line break, a quote and a
    comma; events of one record that must stay in order; reasons that span lines."""
    from sync_pipeline.staging import store

    staging = StagingStore(connect_scratch(tmp_path / "scratch.duckdb"))
    awkward = ["a\x00b", "é", "😀", "line\nbreak", 'quote"d', "com,ma", "Z", "z", "a", "\uffff"]
    staging.db.execute(
        "CREATE TEMP TABLE ids AS SELECT row_number() OVER () AS i, id FROM"
        " (SELECT unnest(?) || '-' || n::varchar AS id FROM range(40) t(n))",
        [awkward],
    )
    staging.db.execute("INSERT INTO known (record_id, dirty) VALUES (NULL, true)")  # sorts last
    staging.db.execute(
        "INSERT INTO known (record_id, source_hash, source_seen_at, held_hash, held_at, rejected_reason,"
        " dirty, published_unsaved)"
        " SELECT id, md5(id), now(), CASE WHEN i % 3 = 0 THEN md5(id) END, now(),"
        " CASE WHEN i % 5 = 0 THEN 'two' || chr(10) || 'lines, \"quoted\"' END, true, i % 3 = 0 FROM ids"
    )
    for event in ("refused", "failed", "parked"):
        staging.db.execute(
            f"INSERT INTO events SELECT id, now() + to_seconds(i), '{event}', md5(id), 'b-' || i::varchar,"
            " 'detail' || chr(10) || id FROM ids WHERE i % 4 <> 0"
        )

    def write(name: str) -> tuple[bytes, bytes, tuple[int, int]]:
        counts = staging.unsaved_to_csv(tmp_path / f"{name}-rows.csv", tmp_path / f"{name}-events.csv")
        return (tmp_path / f"{name}-rows.csv").read_bytes(), (tmp_path / f"{name}-events.csv").read_bytes(), counts

    whole = write("whole")
    monkeypatch.setattr(store, "WRITE_PART_ROWS", 7)
    assert write("parts") == whole
    assert whole[2][0] == 401 and whole[0].count(b"\n") > 401
    staging.db.close()


@pytest.mark.parametrize("refused, kept", [
    ("dict_fsst", "SET disabled_compression_methods = 'fsst'"),  # DuckDB 1.2: no dictionary-FSST
    ("disabled_compression_methods", None),  # DuckDB 1.1: no such setting
])
def test_a_duckdb_without_the_compression_setting_or_dict_fsst_still_opens_a_scratch(refused, kept):
    """Turning FSST off is a speed-up only: an older DuckDB that refuses it keeps what it can."""
    import duckdb

    from sync_pipeline.staging.store import _without_fsst

    class OlderDuckDB:
        def __init__(self):
            self.taken: list[str] = []

        def execute(self, sql: str):
            if refused in sql:
                error = duckdb.InvalidInputException if refused == "dict_fsst" else duckdb.CatalogException
                raise error(f"unrecognized: {refused}")
            self.taken.append(sql)

    older = OlderDuckDB()
    _without_fsst(older)
    assert older.taken == ([kept] if kept else [])
    current = duckdb.connect()
    _without_fsst(current)
    assert current.execute("SELECT current_setting('disabled_compression_methods')").fetchall() == [("FSST,DICT_FSST",)]


def test_a_save_writes_its_times_in_utc_whatever_the_machine_s_time_zone(tmp_path):
    """A save is written out from a DuckDB connection of its own (a session of its own, which
    starts in the machine's time zone): its times are UTC all the same, as the state store reads
    them."""
    import os
    import subprocess
    import sys

    script = """
import sys
from pathlib import Path
from sync_pipeline.staging import StagingStore, connect_scratch
folder = Path(sys.argv[1])
staging = StagingStore(connect_scratch(folder / "scratch.duckdb"))
staging.db.execute(
    "INSERT INTO known (record_id, source_hash, source_seen_at, held_hash, held_at, dirty)"
    " VALUES ('a', 'h', TIMESTAMPTZ '2026-03-01 00:00:00+00', 'h', TIMESTAMPTZ '2026-03-01 00:00:05+00', true)"
)
staging.db.execute("INSERT INTO events VALUES ('a', TIMESTAMPTZ '2026-03-01 00:00:10+00', 'refused', 'h', 'b1', 'no')")
print(staging.unsaved_to_csv(folder / "rows.csv", folder / "events.csv"))
"""
    tokyo = {**os.environ, "TZ": "Asia/Tokyo"}
    subprocess.run([sys.executable, "-c", script, str(tmp_path)], env=tokyo, check=True, capture_output=True)
    row = next(csv.DictReader((tmp_path / "rows.csv").open()))
    assert (row["source_seen_at"], row["held_at"]) == ("2026-03-01 00:00:00.000000", "2026-03-01 00:00:05.000000")
    event = next(csv.DictReader((tmp_path / "events.csv").open()))
    assert event["event_at"] == "2026-03-01 00:00:10.000000"


def test_the_state_store_s_rows_loaded_beside_are_those_loaded_on_the_scratch_s_connection_times_in_utc(tmp_path):
    """A full sync loads what the state store knows from a thread of its own, on a DuckDB
    connection of its own (a session that starts in the machine's time zone), while it pages: the
    rows and their times are those the scratch's own connection loads."""
    import os
    import subprocess
    import sys

    (tmp_path / "known.csv").write_text(
        "record_id,source_hash,source_updated_at,held_hash,pending\n"
        'a,h1,2026-03-01 00:00:00.000000,h1,0\n"b, \u00e9",h2,2026-03-01 23:30:00.500000,,1\n',
        encoding="utf-8",
    )
    script = """
import sys, threading
from pathlib import Path
from sync_pipeline.staging import StagingStore, connect_scratch
folder = Path(sys.argv[1])
for beside in (False, True):
    staging = StagingStore(connect_scratch(folder / f"scratch-{beside}.duckdb"))
    loading = threading.Thread(target=staging.load_known, args=(folder / "known.csv",), kwargs={"beside": beside})
    loading.start()
    loading.join()
    rows = staging.db.execute(
        "SELECT record_id, source_hash, strftime(source_updated_at, '%Y-%m-%d %H:%M:%S.%f'), held_hash, pending"
        " FROM known ORDER BY record_id"
    ).fetchall()
    print(repr(rows))
"""
    tokyo = {**os.environ, "TZ": "Asia/Tokyo"}
    done = subprocess.run([sys.executable, "-c", script, str(tmp_path)], env=tokyo, check=True, capture_output=True, text=True)
    here, beside = done.stdout.splitlines()
    assert here == beside == repr([
        ("a", "h1", "2026-03-01 00:00:00.000000", "h1", 0), ("b, \u00e9", "h2", "2026-03-01 23:30:00.500000", None, 1),
    ])


@pytest.mark.parametrize("limit, size, inside", [
    ("64MB", 20 << 20, "41.0 MiB"),  # 61.0 MiB (64 MB) less 20 MiB
    ("64MB", 1 << 20, "60.0 MiB"),
    ("64MB", 40 << 20, "32.0 MiB"),  # no lower than MIN_CAP_BYTES
    ("24MB", 1 << 20, "22.8 MiB"),  # already below it: as it is
    ("2000MB", 20 << 20, "1.8 GiB"),  # a GiB or more: as it is
])
def test_duckdb_s_cap_is_lowered_by_what_is_held_outside_it_and_restored_after(tmp_path, limit, size, inside):
    with connect_scratch(tmp_path / "scratch.duckdb", memory_limit=limit) as db:
        staging = StagingStore(db)

        def cap() -> str:
            return db.execute("SELECT current_setting('memory_limit')").fetchall()[0][0]

        was = cap()
        with staging.cap_lowered_by(size):
            assert cap() == inside
        assert cap() == was
        with pytest.raises(RuntimeError), staging.cap_lowered_by(size):
            raise RuntimeError("a sync that fails midway")
        assert cap() == was

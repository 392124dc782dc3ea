"""DuckDB staging: dedupe, rejects kept, change detection, full-sync image, deletions."""

import duckdb
import pytest

from sync_pipeline.domain import EntityType
from sync_pipeline.staging import StagingStore, to_rows


def product(record_id: str, updated: str = "2025-03-01T10:00:00Z", **fields) -> dict:
    return {"id": record_id, "title": f"Title {record_id}", "updatedAt": updated, "listPrice": 100, **fields}


@pytest.fixture
def staging(tmp_path):
    connection = duckdb.connect(str(tmp_path / "products.duckdb"))
    yield StagingStore(connection)
    connection.close()


def stage(staging: StagingStore, records: list, sync_id: str = "s1", full: bool = False):
    staging.begin_fetch()
    staging.load_rows(to_rows(EntityType.PRODUCT, records, first_seq=0))
    return staging.stage_fetched(sync_id, full=full)


def publish_all(staging: StagingStore, sync_id: str = "s1") -> list[str]:
    ids = []
    for chunk in staging.changed_since_publish(1000):
        staging.mark_published(chunk, sync_id)
        ids += [record.id for record in chunk]
    staging.fold_accepted()
    return ids


def test_a_record_seen_twice_keeps_its_latest_version(staging):
    counts = stage(staging, [product("a", "2025-03-01T10:00:00Z", title="old"), product("a", "2025-03-01T11:00:00Z", title="new")])
    assert (counts.fetched, counts.unique, counts.valid) == (2, 1, 1)
    [changed] = next(staging.changed_since_publish(10))
    assert '"title":"new"' in changed.raw


def test_latest_wins_even_when_listed_first(staging):
    stage(staging, [product("a", "2025-03-01T11:00:00Z", title="new"), product("a", "2025-03-01T10:00:00Z", title="old")])
    [changed] = next(staging.changed_since_publish(10))
    assert '"title":"new"' in changed.raw


def test_rejected_records_are_kept_with_raw_json_and_reason_and_never_published(staging):
    counts = stage(staging, [product("a"), product("b", listPrice=-3), {"title": "no id"}], sync_id="s9")
    assert counts.rejected == 2
    rejected = staging.rejected_for_sync("s9")
    assert {(r[0], "negative" in r[1] or "id" in r[1]) for r in rejected} == {("b", True), (None, True)}
    assert publish_all(staging) == ["a"]


def test_nothing_is_published_twice(staging):
    stage(staging, [product("a"), product("b")])
    assert publish_all(staging) == ["a", "b"]
    stage(staging, [product("a"), product("b")], sync_id="s2")
    assert staging.count_changed() == 0


def test_only_changed_content_is_published_again(staging):
    stage(staging, [product("a"), product("b")])
    publish_all(staging)
    stage(staging, [product("a", "2025-03-02T10:00:00Z", title="changed"), product("b", "2025-03-02T10:00:00Z")], sync_id="s2")
    # b's updatedAt moved, so its content hash did too: both go; a record with identical JSON would not.
    assert publish_all(staging, "s2") == ["a", "b"]
    stage(staging, [product("a", "2025-03-02T10:00:00Z", title="changed")], sync_id="s3")
    assert staging.count_changed() == 0


def test_key_order_does_not_count_as_a_change(staging):
    stage(staging, [{"listPrice": 1, "id": "a", "title": "t", "updatedAt": "2025-03-01T10:00:00Z"}])
    publish_all(staging)
    stage(staging, [{"id": "a", "title": "t", "updatedAt": "2025-03-01T10:00:00Z", "listPrice": 1}], sync_id="s2")
    assert staging.count_changed() == 0


def test_refused_records_stay_unpublished_and_go_again(staging):
    stage(staging, [product("a"), product("b")])
    chunk = next(staging.changed_since_publish(10))
    staging.mark_published([r for r in chunk if r.id == "a"], "s1")
    staging.fold_accepted()
    assert [r.id for r in next(staging.changed_since_publish(10))] == ["b"]


def test_an_incremental_sync_merges_into_the_image(staging):
    stage(staging, [product("a"), product("b")], full=True)
    stage(staging, [product("c")], sync_id="s2")
    assert staging.staged_count() == 3


def test_a_full_sync_finds_what_the_source_no_longer_lists(staging):
    stage(staging, [product("a"), product("b"), product("c")], full=True)
    publish_all(staging)
    stage(staging, [product("a"), product("c", listPrice=-1)], sync_id="s2", full=True)
    # c is listed (though now invalid): not a deletion candidate; b is.
    assert [c[0] for c in staging.deletion_candidates()] == ["b"]
    assert staging.staged_count() == 2  # a, and c's last valid version
    staging.set_deletions(staging.deletion_candidates())
    staging.mark_deleted(["b"])
    staging.fold_accepted()
    assert staging.published_count() == 2
    assert staging.pending_deletions() == []


def test_changes_come_in_id_order_across_slices(staging, monkeypatch):
    import sync_pipeline.staging.store as store

    monkeypatch.setattr(store, "SLICE_ROWS", 7)
    records = [product(f"p{i:03d}") for i in range(50)]
    stage(staging, list(reversed(records)))
    chunks = list(staging.changed_since_publish(8))
    assert [len(c) for c in chunks] == [8, 8, 8, 8, 8, 8, 2]
    assert [r.id for c in chunks for r in c] == [r["id"] for r in records]

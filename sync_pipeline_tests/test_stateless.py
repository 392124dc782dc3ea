"""Runs need no disk of their own: with the state store on PostgreSQL and the data directory
emptied between syncs, a sync re-sends nothing unchanged, finds deletions, and a latest sync
applies exactly the changes."""

import shutil

import pytest
from dagster import AssetKey, DagsterInstance

from sync_pipeline.cli import main
from sync_pipeline.domain import EntityType, SyncMode, SyncStatus
from sync_pipeline.settings import data_dir
from sync_pipeline.state import StateStore

from .test_e2e import expected_gateway


@pytest.fixture
def pg_env(sync_env, postgres_url, monkeypatch):
    monkeypatch.setenv("SYNC_STATE_URL", postgres_url)
    return postgres_url


def empty_data_dir() -> None:
    shutil.rmtree(data_dir())


def last(url: str, entity: EntityType):
    store = StateStore(url)
    try:
        return store.history(entity, 1)[0]
    finally:
        store.dispose()


def test_a_full_sync_on_an_empty_disk_resends_nothing_unchanged_and_finds_deletions(pg_env, sandbox):
    assert main(["sync", "PRODUCT", "--mode", "full"]) == 0
    refused = last(pg_env, EntityType.PRODUCT).failed  # still owed: parsed again, and sent again
    empty_data_dir()
    gone = sandbox.admin("POST", "/source/products/delete", json={"count": 12})["ids"]
    changed = sandbox.admin("POST", "/source/products/update", json={"count": 7})["ids"]
    applied = sandbox.stats()["gateway"]["itemsApplied"]
    assert main(["sync", "PRODUCT", "--mode", "full"]) == 0
    sync = last(pg_env, EntityType.PRODUCT)
    assert (sync.published, sync.deleted) == (7, 12)
    with DagsterInstance.get() as instance:
        staged = instance.get_latest_materialization_event(AssetKey("products_staged")).asset_materialization
    # only what changed or is owed was parsed: the rest was listed byte for byte as the gateway holds it
    valid = staged.metadata["records_valid"].value
    assert refused > 0 and staged.metadata["records_unparsed"].value == valid - 7 - refused
    assert sandbox.stats()["gateway"]["itemsApplied"] - applied == 7 + 12
    held = sandbox.gateway("PRODUCT")
    assert not set(gone) & set(held)
    assert all(held[i]["title"].endswith("v2") for i in changed)
    assert held == expected_gateway(sandbox, "PRODUCT")
    assert sync.num_records == len(held)


@pytest.mark.parametrize("load", ["by id", "all rows"])
def test_a_latest_sync_on_an_empty_disk_applies_exactly_the_changes(pg_env, sandbox, load, monkeypatch):
    if load == "all rows":  # a window listing many records reads every row instead of asking by id
        monkeypatch.setattr("sync_pipeline.pipeline.LOAD_ALL_ABOVE", 3)
    assert main(["sync", "all"]) == 0  # the first is a full one
    empty_data_dir()
    updated = sandbox.admin("POST", "/source/collections/update", json={"count": 5})["ids"]
    created = sandbox.admin("POST", "/source/collections/create", json={"count": 3})["ids"]
    stats = sandbox.stats()["gateway"]
    assert main(["sync", "COLLECTION"]) == 0
    sync = last(pg_env, EntityType.COLLECTION)
    refused = len(sandbox.source("collections")["refused"])
    # the refused ones are owed from the last sync: fetched by id, sent again, refused again
    assert (sync.mode, sync.fetched, sync.published, sync.failed) == (SyncMode.LATEST, 8, 8, refused)
    after = sandbox.stats()["gateway"]
    assert after["itemsApplied"] - stats["itemsApplied"] == 8
    assert after["itemsAppliedTwice"] == 0
    held = sandbox.gateway("COLLECTION")
    assert set(updated + created) <= set(held)
    assert held == expected_gateway(sandbox, "COLLECTION")


def test_the_scratch_is_gone_after_every_sync(sync_env, sandbox):
    assert main(["sync", "COLLECTION", "--mode", "full"]) == 0
    scratch = data_dir() / "scratch"
    assert not scratch.exists() or not any(scratch.iterdir())


def test_an_upgraded_deployment_adopts_what_its_old_local_staging_file_says_the_gateway_holds(sync_env, sandbox, monkeypatch):
    import duckdb

    from sync_pipeline.settings import state_url

    assert main(["sync", "PRODUCT", "--mode", "full"]) == 0
    store = StateStore(state_url())
    held = store.count_held(EntityType.PRODUCT)
    legacy = data_dir() / "products.duckdb"  # what the old releases kept on local disk
    with store.engine.connect() as conn:
        rows = conn.exec_driver_sql("SELECT record_id, held_hash FROM records WHERE held_hash IS NOT NULL").fetchall()
    store.dispose()
    with duckdb.connect(str(legacy)) as db:
        db.execute("CREATE TABLE published (id VARCHAR, content_hash VARCHAR, sync_id VARCHAR, published_at TIMESTAMPTZ)")
        db.executemany("INSERT INTO published VALUES (?, ?, 's0', now())", rows)
    # the old release's state store knew no records
    monkeypatch.setenv("SYNC_STATE_URL", f"sqlite:///{data_dir() / 'upgraded-state.db'}")
    applied = sandbox.stats()["gateway"]["itemsApplied"]
    assert main(["sync", "PRODUCT", "--mode", "full"]) == 0
    assert last(state_url(), EntityType.PRODUCT).published == 0
    assert sandbox.stats()["gateway"]["itemsApplied"] == applied
    assert not legacy.exists() and legacy.with_name("products.duckdb.adopted").exists()
    store = StateStore(state_url())
    assert store.count_held(EntityType.PRODUCT) == held
    store.dispose()


def assert_the_rerun_converges(sandbox, store: StateStore, kept: int) -> None:
    """A full sync after one that failed leaves the gateway as the source says, sending only
    what the state store did not take (`kept` records held)."""
    from sync_pipeline.settings import state_url

    assert main(["sync", "PRODUCT", "--mode", "full"]) == 0
    held = sandbox.gateway("PRODUCT")
    assert held == expected_gateway(sandbox, "PRODUCT")
    rerun = last(state_url(), EntityType.PRODUCT)
    assert rerun.num_records == len(held) == store.count_held(EntityType.PRODUCT)
    assert rerun.published == len(held) - kept  # what the state store took is not sent again
    store.dispose()


def test_a_save_whose_files_cannot_be_written_fails_the_sync_and_the_rerun_converges(sync_env, sandbox, monkeypatch):
    import duckdb

    from sync_pipeline.settings import state_url
    from sync_pipeline.staging.store import Unsaved

    # saves every two batches, their files written in a thread of their own; the third cannot be
    written = Unsaved._to_csv
    calls = []

    def third_fails(self, rows_path, events_path):
        calls.append(rows_path)
        if len(calls) == 3:
            raise duckdb.IOException(f'Could not write file "{rows_path}": No space left on device')
        return written(self, rows_path, events_path)

    monkeypatch.setattr("sync_pipeline.pipeline.SAVE_EVERY_BATCHES", 2)
    monkeypatch.setattr(Unsaved, "_to_csv", third_fails)
    assert main(["sync", "PRODUCT", "--mode", "full"]) != 0
    failed = last(state_url(), EntityType.PRODUCT)
    assert failed.status is SyncStatus.FAILED and "No space left on device" in failed.error_message
    store = StateStore(state_url())
    kept = store.count_held(EntityType.PRODUCT)  # the two saves before went in
    assert kept > 0
    monkeypatch.setattr(Unsaved, "_to_csv", written)
    assert_the_rerun_converges(sandbox, store, kept)


def test_a_save_the_state_store_refuses_fails_the_sync_and_the_rerun_converges(sync_env, sandbox, monkeypatch):
    from sync_pipeline.settings import state_url

    # saves every two batches: the state store takes them behind, from a child process, while
    # the sync goes on publishing; and the trail's table refuses every row
    monkeypatch.setattr("sync_pipeline.pipeline.SAVE_EVERY_BATCHES", 2)
    monkeypatch.setattr("sync_pipeline.state.records.APART_ABOVE_BYTES", 0)
    store = StateStore(state_url())
    with store.engine.begin() as conn:
        conn.exec_driver_sql(
            "CREATE TRIGGER refuse_events BEFORE INSERT ON record_events BEGIN SELECT RAISE(ABORT, 'the disk is full'); END"
        )
    assert main(["sync", "PRODUCT", "--mode", "full"]) != 0
    failed = last(state_url(), EntityType.PRODUCT)
    assert failed.status is SyncStatus.FAILED and "the disk is full" in failed.error_message
    kept = store.count_held(EntityType.PRODUCT)  # the records' rows of each save went in before its events failed
    assert kept > 0
    with store.engine.begin() as conn:
        conn.exec_driver_sql("DROP TRIGGER refuse_events")
    assert_the_rerun_converges(sandbox, store, kept)

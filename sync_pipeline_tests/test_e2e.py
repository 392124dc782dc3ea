"""End to end: the CLI runs real Dagster runs on a temporary instance against the real sandbox."""

import pytest
from dagster import AssetKey, DagsterInstance

from sync_pipeline.cli import main
from sync_pipeline.domain import EntityType, SyncMode, SyncStatus
from sync_pipeline.settings import state_url
from sync_pipeline.state import StateStore

from .conftest import free_port

ENTITIES = {"PRODUCT": "products", "COLLECTION": "collections"}


def expected_gateway(sandbox, entity_type: str) -> dict[str, dict]:
    """What the gateway must hold: the source's valid records, less those it refuses."""
    source = sandbox.source(ENTITIES[entity_type])
    skip = set(source["invalid"]) | set(source["refused"])
    return {r["id"]: r for r in source["records"] if r.get("id") not in skip}


def last_sync(entity: EntityType):
    store = StateStore(state_url())
    try:
        return store.history(entity, 1)[0]
    finally:
        store.dispose()


def test_a_full_sync_leaves_the_gateway_holding_every_valid_record_field_for_field(sync_env, sandbox):
    assert main(["sync", "all", "--mode", "full"]) == 0
    for entity_type in ENTITIES:
        expected = expected_gateway(sandbox, entity_type)
        assert sandbox.gateway(entity_type) == expected
        sync = last_sync(EntityType(entity_type))
        source = sandbox.source(ENTITIES[entity_type])
        assert sync.status is SyncStatus.PARTIAL_SUCCESS  # the planted refusals
        assert sync.rejected == len(source["invalid"]) > 0
        assert sync.failed == len(source["refused"]) > 0
        assert sync.published == sync.num_records == len(expected)
    assert any("x-merchant-rank" in r for r in sandbox.gateway("PRODUCT").values())  # unknown fields kept


def test_a_second_sync_publishes_nothing(sync_env, sandbox):
    assert main(["sync", "PRODUCT", "--mode", "full"]) == 0
    applied = sandbox.stats()["gateway"]["itemsApplied"]
    assert main(["sync", "PRODUCT"]) == 0
    second = last_sync(EntityType.PRODUCT)
    assert second.mode is SyncMode.LATEST and second.published == 0
    assert sandbox.stats()["gateway"]["itemsApplied"] == applied
    assert main(["sync", "PRODUCT", "--mode", "full"]) == 0
    assert last_sync(EntityType.PRODUCT).published == 0


def test_a_latest_sync_publishes_exactly_the_records_that_changed(sync_env, sandbox):
    assert main(["sync", "PRODUCT"]) == 0  # the first latest sync is a full one
    assert last_sync(EntityType.PRODUCT).mode is SyncMode.FULL
    updated = sandbox.admin("POST", "/source/products/update", json={"count": 50})["ids"]
    created = sandbox.admin("POST", "/source/products/create", json={"count": 20})["ids"]
    applied = sandbox.stats()["gateway"]["itemsApplied"]
    assert main(["sync", "PRODUCT"]) == 0
    sync = last_sync(EntityType.PRODUCT)
    assert (sync.mode, sync.fetched, sync.published) == (SyncMode.LATEST, 70, 70)
    assert sandbox.stats()["gateway"]["itemsApplied"] - applied == 70
    held = sandbox.gateway("PRODUCT")
    source = {r["id"]: r for r in sandbox.source("products")["records"] if "id" in r}
    assert all(held[i] == source[i] for i in updated + created)
    assert held == expected_gateway(sandbox, "PRODUCT")


def test_an_unreachable_product_service_fails_the_sync_with_a_readable_reason(sync_env, monkeypatch):
    monkeypatch.setenv("PRODUCT_SERVICE_URL", f"http://127.0.0.1:{free_port()}")
    assert main(["sync", "COLLECTION"]) == 1
    sync = last_sync(EntityType.COLLECTION)
    assert sync.status is SyncStatus.SOURCE_UNAVAILABLE
    assert "product service unreachable" in sync.error_message and "/collections" in sync.error_message


def test_a_full_sync_deletes_what_the_source_no_longer_has(sync_env, sandbox):
    assert main(["sync", "PRODUCT", "--mode", "full"]) == 0
    gone = sandbox.admin("POST", "/source/products/delete", json={"count": 30})["ids"]
    assert main(["sync", "PRODUCT", "--mode", "full"]) == 0
    sync = last_sync(EntityType.PRODUCT)
    assert sync.deleted == 30
    held = sandbox.gateway("PRODUCT")
    assert not set(gone) & set(held)
    assert held == expected_gateway(sandbox, "PRODUCT")
    assert sync.num_records == len(held)


def test_the_deletion_guard_deletes_nothing_above_the_safety_share(sync_env, sandbox):
    assert main(["sync", "PRODUCT", "--mode", "full"]) == 0
    held = sandbox.gateway("PRODUCT")
    sandbox.admin("POST", "/source/products/delete", json={"count": 1000})
    assert main(["sync", "PRODUCT", "--mode", "full"]) == 1
    sync = last_sync(EntityType.PRODUCT)
    assert sync.status is SyncStatus.DELETION_GUARD
    assert "would delete 1000" in sync.error_message and "--allow-deletions" in sync.error_message
    assert sandbox.gateway("PRODUCT") == held
    assert main(["sync", "PRODUCT", "--mode", "full", "--allow-deletions"]) == 0
    assert last_sync(EntityType.PRODUCT).deleted == 1000
    assert sandbox.gateway("PRODUCT") == expected_gateway(sandbox, "PRODUCT")


def test_a_historic_sync_takes_only_its_range(sync_env, sandbox):
    assert main(["sync", "COLLECTION", "--mode", "historic", "--start", "2025-03-01T00:00:00Z", "--end", "2025-04-01T00:00:00Z"]) == 0
    sync = last_sync(EntityType.COLLECTION)
    march = [r for r in sandbox.source("collections")["records"] if r.get("updatedAt", "").startswith("2025-03")]
    assert sync.mode is SyncMode.HISTORIC and sync.fetched == len(march) > 0
    assert set(sandbox.gateway("COLLECTION")) <= {r["id"] for r in march}


def test_a_busy_entity_type_exits_3_and_leaves_the_queued_sync_alone(sync_env, capsys):
    store = StateStore(state_url())
    queued = store.enqueue_sync(EntityType.PRODUCT, SyncMode.LATEST, origin="test")
    assert main(["sync", "PRODUCT"]) == 3
    assert queued.sync_id in capsys.readouterr().err
    assert store.get_sync(queued.sync_id).status is SyncStatus.QUEUED
    store.dispose()


@pytest.mark.parametrize(
    "argv",
    [
        ["sync", "SHOES"],
        ["sync", "PRODUCT", "--mode", "sometimes"],
        ["sync", "PRODUCT", "--mode", "historic", "--start", "yesterday", "--end", "2025-01-01T00:00:00Z"],
        ["sync", "PRODUCT", "--mode", "historic", "--start", "2025-02-01T00:00:00Z", "--end", "2025-01-01T00:00:00Z"],
        ["sync", "PRODUCT", "--mode", "historic", "--start", "2025-02-01T00:00:00Z"],
        ["sync", "PRODUCT", "--sync-to", "2999-01-01T00:00:00Z"],
        [],
    ],
)
def test_bad_arguments_exit_2_with_one_line(argv, sync_env, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err and "error" in err[-1]


def test_runs_are_recorded_in_the_instance_with_plottable_metadata(sync_env):
    assert main(["sync", "COLLECTION", "--mode", "full"]) == 0
    with DagsterInstance.get() as instance:
        staged = instance.get_latest_materialization_event(AssetKey("collections_staged")).asset_materialization
        published = instance.get_latest_materialization_event(AssetKey("collections_published")).asset_materialization
    assert staged.metadata["records_fetched"].value == 200
    assert staged.metadata["records_rejected"].value > 0
    for key in ("records_published", "records_failed", "batches", "duration_seconds", "records_per_second", "num_records"):
        assert isinstance(published.metadata[key].value, (int, float)), key


def test_status_prints_the_last_syncs(sync_env, capsys):
    assert main(["sync", "COLLECTION", "--mode", "full"]) == 0
    capsys.readouterr()
    assert main(["status", "COLLECTION"]) == 0
    out = capsys.readouterr().out
    assert "COLLECTION" in out and "2100 PartialSuccess" in out and "the gateway holds" in out

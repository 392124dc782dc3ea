"""The production profile: Dagster's run, event and schedule storage and the state store all in
PostgreSQL, and a real sync recorded there."""

import shutil

import dagster as dg

from sync_pipeline.cli import main
from sync_pipeline.domain import EntityType, SyncStatus
from sync_pipeline.settings import REPO_ROOT
from sync_pipeline.state import StateStore


def test_a_sync_runs_with_dagster_storage_and_state_in_postgres(sync_env, sandbox, postgres_url, monkeypatch):
    home = sync_env / "dagster_home"
    shutil.copy(REPO_ROOT / "deploy" / "dagster.yaml", home / "dagster.yaml")
    monkeypatch.setenv("DAGSTER_PG_URL", postgres_url)
    monkeypatch.setenv("SYNC_STATE_URL", postgres_url)
    assert main(["sync", "COLLECTION", "--mode", "full"]) == 0
    with dg.DagsterInstance.get() as instance:
        assert type(instance.run_storage).__name__ == "PostgresRunStorage"
        queue = instance.run_coordinator.get_run_queue_config()
        assert queue.max_concurrent_runs == 4  # SYNC_MAX_CONCURRENT_SYNCS, defaulted by the CLI
        assert [limit["key"] for limit in queue.tag_concurrency_limits] == ["sync_lease"]
        [run] = instance.get_runs()
        assert run.job_name == "sync_collections" and run.status is dg.DagsterRunStatus.SUCCESS
        assert instance.get_latest_materialization_event(dg.AssetKey("collections_published")) is not None
    store = StateStore(postgres_url)
    [sync] = store.history(EntityType.COLLECTION)
    assert sync.status is SyncStatus.PARTIAL_SUCCESS and sync.num_records == len(sandbox.gateway("COLLECTION"))
    store.dispose()

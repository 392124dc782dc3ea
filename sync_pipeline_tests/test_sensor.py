"""Queued requests become runs: the sensor on a real instance, the run, the status through the API;
and every other way in meets the same lease."""

import os
import signal
import subprocess
import sys
import threading
import time

import dagster as dg
import pytest
import requests

from sync_pipeline.defs import build_defs
from sync_pipeline.defs.partitions import ensure_merchant_partitions
from sync_pipeline.defs.resources import StateStoreResource
from sync_pipeline.defs.runs import ENTITY_TAG, SYNC_ID_TAG
from sync_pipeline.domain import EntityType, SyncMode, SyncStatus
from sync_pipeline.settings import state_url
from sync_pipeline.state import StateStore

from .conftest import start_api, start_sandbox, stop_process, stop_sandbox

WRITE = {"Authorization": "Bearer write-token"}


@pytest.fixture
def small_sandbox():
    """A catalogue small enough that the gateway refuses nothing: a clean Success."""
    box = start_sandbox("--products", "300", "--collections", "30")
    yield box
    stop_sandbox(box)


@pytest.fixture
def env(sync_env, small_sandbox, monkeypatch):
    monkeypatch.setenv("PRODUCT_SERVICE_URL", small_sandbox.url)
    monkeypatch.setenv("GATEWAY_URL", small_sandbox.url)
    return sync_env


def evaluate_sensor(defs: dg.Definitions, instance: dg.DagsterInstance):
    sensor = defs.resolve_sensor_def("sync_requests")
    resources = {"state_store": StateStoreResource(url=state_url())}
    with dg.build_sensor_context(instance=instance, resources=resources) as context:
        return sensor.evaluate_tick(context)


def test_put_then_sensor_then_run_gives_a_success_the_api_reports(env, small_sandbox):
    api = start_api(state_url(), env / "dagster_home")
    try:
        accepted = requests.put(f"{api.url}/sync/COLLECTION", headers=WRITE).json()["data"]
        defs = build_defs()
        with dg.DagsterInstance.get() as instance:
            result = evaluate_sensor(defs, instance)
            [run_request] = result.run_requests
            assert run_request.run_key == accepted["syncId"]
            assert run_request.tags.items() >= {SYNC_ID_TAG: accepted["syncId"], ENTITY_TAG: "COLLECTION"}.items()
            seen = []

            def watch() -> None:
                while not seen or seen[-1] not in ("Success", "PartialSuccess", "Failed", "SourceUnavailable"):
                    data = requests.get(f"{api.url}/sync/COLLECTION/history", headers=WRITE).json()["data"]
                    if not seen or seen[-1] != data[0]["syncStatus"]:
                        seen.append(data[0]["syncStatus"])
                    time.sleep(0.005)

            watcher = threading.Thread(target=watch)
            watcher.start()
            run = defs.resolve_job_def(run_request.job_name).execute_in_process(instance=instance, tags=run_request.tags)
            watcher.join(30)
            assert run.success
            # The same request does not launch twice.
            assert not evaluate_sensor(defs, instance).run_requests
        assert seen == ["Queued", "InProgress", "Success"]
        status = requests.get(f"{api.url}/sync/COLLECTION", headers=WRITE).json()["data"]
        assert status["numRecords"] == len(small_sandbox.gateway("COLLECTION")) == 30
        history = requests.get(f"{api.url}/sync/COLLECTION/history", headers=WRITE).json()["data"]
        assert history[0]["syncId"] == accepted["syncId"] and history[0]["dataPushed"] is True
    finally:
        stop_process(api.process)


def test_the_sensor_skips_when_nothing_is_queued(env):
    defs = build_defs()
    with dg.DagsterInstance.get() as instance:
        result = evaluate_sensor(defs, instance)
    assert not result.run_requests and "no queued" in result.skip_message


def test_a_materialization_from_the_ui_fails_fast_while_a_sync_is_queued(env):
    store = StateStore(state_url())
    queued = store.enqueue_sync(EntityType.PRODUCT, SyncMode.LATEST, origin="api")
    with dg.DagsterInstance.get() as instance:
        ensure_merchant_partitions(instance, ["default"])
        result = build_defs().resolve_job_def("sync_products").execute_in_process(
            instance=instance, partition_key="default", raise_on_error=False
        )
    assert not result.success
    [failure] = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
    assert queued.sync_id in failure.step_failure_data.error.message
    assert store.get_sync(queued.sync_id).status is SyncStatus.QUEUED  # untouched
    assert [s.sync_id for s in store.history(EntityType.PRODUCT)] == [queued.sync_id]
    store.dispose()


def test_a_sync_whose_run_failed_is_closed_as_abandoned_by_the_next(env):
    store = StateStore(state_url())
    stuck = store.enqueue_sync(EntityType.COLLECTION, SyncMode.LATEST, origin="api")
    with dg.DagsterInstance.get() as instance:
        # A run for it that died before its first step: the run is FAILURE, the sync still Queued.
        run = instance.create_run_for_job(
            build_defs().resolve_job_def("sync_collections"), tags={SYNC_ID_TAG: stuck.sync_id}
        )
        instance.report_run_failed(run)
        result = evaluate_sensor(build_defs(), instance)
    closed = store.get_sync(stuck.sync_id)
    assert closed.status is SyncStatus.ABANDONED and run.run_id in closed.error_message
    assert not result.run_requests
    assert store.enqueue_sync(EntityType.COLLECTION, SyncMode.LATEST, origin="api")
    store.dispose()


def test_a_killed_cli_sync_is_abandoned_and_the_next_one_converges(env, small_sandbox):
    slow = subprocess.Popen(
        [sys.executable, "-c", "import time, sys; sys.argv=['x']; time.sleep(60)"],
    )
    store = StateStore(state_url())
    # A sync owned by a process that is then killed: its lease must not outlive it.
    sync = store.enqueue_sync(EntityType.PRODUCT, SyncMode.FULL, origin="cli")
    store.update_counts(sync.sync_id, worker_pid=slow.pid)
    os.kill(slow.pid, signal.SIGKILL)
    slow.wait()
    from sync_pipeline.cli import main

    assert main(["sync", "PRODUCT", "--mode", "full"]) == 0
    assert store.get_sync(sync.sync_id).status is SyncStatus.ABANDONED
    assert store.history(EntityType.PRODUCT)[0].status is SyncStatus.SUCCESS
    store.dispose()

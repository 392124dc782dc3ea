"""The distributed engine for real: syncs of several merchants run as Celery tasks (dagster-celery,
SYNC_EXECUTOR=celery) on two worker processes over the local Redis, each worker with an empty
data directory of its own, the state store and Dagster's storage in PostgreSQL. Whichever worker
takes a sync, the gateway ends up holding exactly each merchant's catalogue."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import dagster as dg
import pytest
import requests

from sync_pipeline.defs.partitions import ensure_merchant_partitions
from sync_pipeline.defs.runs import run_tags_for
from sync_pipeline.domain import EntityType, SyncMode, SyncStatus
from sync_pipeline.merchants import MerchantRegistry, MerchantSpec
from sync_pipeline.sandbox.merchants import merchant_credentials, numbered_merchant_id
from sync_pipeline.settings import REPO_ROOT
from sync_pipeline.state import StateStore, SyncRecord

from .conftest import Sandbox, start_sandbox, stop_sandbox
from .workers import CeleryWorker, RedisBroker, claim_redis_db, start_run, start_worker

redis = pytest.importorskip("redis", reason="the distributed extra (dagster-celery[redis]) is not installed")
pytest.importorskip("dagster_celery", reason="the distributed extra (dagster-celery[redis]) is not installed")

RUN_TIMEOUT = 90
MERCHANTS = [numbered_merchant_id(n) for n in range(1, 5)]
SECRET_KEY = "distributed-test-secret-key-0123456789abcdef"
INSTANCE_YAML = """\
storage:
  postgres:
    postgres_url:
      env: DAGSTER_PG_URL
telemetry:
  enabled: false
"""


@dataclass
class Cluster:
    sandbox: Sandbox
    state: StateStore
    workers: list[CeleryWorker]
    root: Path

    def merchant_admin(self, merchant: str, path: str) -> dict:
        response = requests.get(f"{self.sandbox.url}/m/{merchant}/_admin{path}", timeout=30)
        response.raise_for_status()
        return response.json()

    def expected_gateway(self, merchant: str) -> dict[str, dict]:
        """What the gateway must hold for the merchant: its valid products, less those refused."""
        source = self.merchant_admin(merchant, "/source/products")
        skip = set(source["invalid"]) | set(source["refused"])
        return {r["id"]: r for r in source["records"] if r.get("id") not in skip}

    def held(self, merchant: str) -> dict[str, dict]:
        return self.merchant_admin(merchant, "/gateway/PRODUCT")["records"]

    def items_applied(self, merchant: str) -> int:
        return self.merchant_admin(merchant, "/stats")["gateway"]["itemsApplied"]

    def worker_of(self, sync: SyncRecord) -> CeleryWorker | None:
        return next((w for w in self.workers if w.owns(sync.worker_pid)), None)


def _reachable(url: str) -> bool:
    try:
        client = redis.Redis.from_url(url, socket_connect_timeout=2)
        try:
            return bool(client.ping())
        finally:
            client.close()
    except redis.RedisError:
        return False


@pytest.fixture
def cluster(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, postgres_url: str):
    """A sandbox playing four merchants, registered; a Dagster instance in PostgreSQL; a Redis
    database of our own as broker; two Celery workers, each with an empty data directory."""
    if not _reachable("redis://127.0.0.1:6379/0"):
        if os.environ.get("CI"):
            pytest.fail("Redis is not reachable at 127.0.0.1:6379")
        pytest.skip("Redis is not reachable at 127.0.0.1:6379")
    home = tmp_path / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text(INSTANCE_YAML)
    sandbox = start_sandbox(
        "--merchants", str(len(MERCHANTS)), "--merchant-products", "300", "--merchant-collections", "20"
    )
    broker: RedisBroker | None = None
    workers: list[CeleryWorker] = []
    state = StateStore(postgres_url)
    try:
        broker = claim_redis_db()
        for name, value in {
            "DAGSTER_HOME": str(home), "DAGSTER_PG_URL": postgres_url, "SYNC_STATE_URL": postgres_url,
            "SYNC_SECRET_KEY": SECRET_KEY, "GATEWAY_URL": sandbox.url, "SYNC_DATA_DIR": str(tmp_path / "launcher-data"),
            "SYNC_EXECUTOR": "celery", "SYNC_CELERY_BROKER": broker.url,
        }.items():
            monkeypatch.setenv(name, value)
        monkeypatch.delenv("SYNC_CELERY_BACKEND", raising=False)
        registry = MerchantRegistry(state)
        for merchant in MERCHANTS:
            registry.put(MerchantSpec(
                merchantId=merchant, **merchant_credentials(sandbox.url, merchant),
                apiToken=f"{merchant}-api-token-0123456789",
            ))
        with dg.DagsterInstance.get() as instance:  # creates Dagster's schema before any worker looks
            ensure_merchant_partitions(instance, MERCHANTS)
        # The workers rebuild the job from sync_pipeline_tests.workers: the repository on their path.
        path = os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))
        worker_env = {**os.environ, "PYTHONPATH": path}
        for name in ("w1", "w2"):  # one at a time: each loads the code and the instance on its own
            workers.append(start_worker(name, broker.url, worker_env, tmp_path))
        yield Cluster(sandbox, state, workers, tmp_path)
    finally:
        for worker in workers:
            worker.stop()
        if broker is not None:
            broker.release()
        state.dispose()
        stop_sandbox(sandbox)


@dataclass
class Outcome:
    sync: SyncRecord
    run_status: dg.DagsterRunStatus | None
    run_pid: int  # the process that orchestrated the run
    celery_worker: str | None  # who took the step, as Dagster's engine event says


def full_syncs(cluster: Cluster, merchants: list[str]) -> dict[str, Outcome]:
    """Queue a full product sync of each merchant as the Sync API would, then launch their runs
    at once, each orchestrated by a process of its own; how each ended."""
    queued = {
        m: cluster.state.enqueue_sync(EntityType.PRODUCT, SyncMode.FULL, origin="api", merchant=m) for m in merchants
    }
    runs = {m: start_run(run_tags_for(sync), cluster.root / f"run-{sync.sync_id}.log") for m, sync in queued.items()}
    try:
        for merchant, process in runs.items():
            process.join(RUN_TIMEOUT)
            if process.is_alive():
                pytest.fail(f"the run of {merchant} did not end in {RUN_TIMEOUT}s")
    finally:
        for process in runs.values():
            if process.is_alive():
                process.kill()
    outcomes = {}
    with dg.DagsterInstance.get() as instance:
        for merchant, process in runs.items():
            sync = cluster.state.get_sync(queued[merchant].sync_id)
            run = instance.get_run_by_id(sync.run_id) if sync.run_id else None
            outcomes[merchant] = Outcome(
                sync, run.status if run else None, process.pid, run and celery_worker_of_run(instance, run.run_id)
            )
    return outcomes


def celery_worker_of_run(instance: dg.DagsterInstance, run_id: str) -> str | None:
    for record in instance.get_records_for_run(run_id, of_type=dg.DagsterEventType.ENGINE_EVENT).records:
        metadata = record.event_log_entry.dagster_event.engine_event_data.metadata
        if "Celery worker" in metadata:
            return metadata["Celery worker"].value
    return None


def files_under(path: Path) -> list[Path]:
    return [p for p in path.rglob("*") if p.is_file()] if path.exists() else []


def test_syncs_of_several_merchants_run_on_different_workers_and_converge(cluster: Cluster):
    ran_on: dict[str, CeleryWorker] = {}
    for merchant, outcome in full_syncs(cluster, MERCHANTS).items():
        sync = outcome.sync
        assert outcome.run_status is dg.DagsterRunStatus.SUCCESS, f"{merchant}: run {sync.run_id} {outcome.run_status}"
        assert sync.status in (SyncStatus.SUCCESS, SyncStatus.PARTIAL_SUCCESS), f"{merchant}: {sync.error_message}"
        expected = cluster.expected_gateway(merchant)
        assert cluster.held(merchant) == expected
        assert sync.published == sync.num_records == len(expected)
        worker = cluster.worker_of(sync)
        assert worker is not None, f"{merchant}: the sync ran in process {sync.worker_pid}, in no worker"
        assert sync.worker_pid not in (os.getpid(), outcome.run_pid)
        assert (outcome.celery_worker or "").startswith(f"{worker.name}@")
        ran_on[merchant] = worker
    assert {w.name for w in ran_on.values()} == {"w1", "w2"}, f"the syncs did not spread: {ran_on}"
    for worker in cluster.workers:
        assert files_under(worker.data_dir) == [], f"{worker.name} kept files"
    assert files_under(cluster.root / "launcher-data") == []

    # The same merchant again on the other worker, whose disk never saw it: nothing to send.
    merchant, first = next(iter(ran_on.items()))
    applied = cluster.items_applied(merchant)
    first.stop()
    [again] = full_syncs(cluster, [merchant]).values()
    assert again.run_status is dg.DagsterRunStatus.SUCCESS
    assert cluster.worker_of(again.sync) not in (None, first)
    assert again.sync.status in (SyncStatus.SUCCESS, SyncStatus.PARTIAL_SUCCESS)
    assert (again.sync.published, again.sync.deleted) == (0, 0)
    assert cluster.items_applied(merchant) == applied
    held = cluster.held(merchant)
    assert held == cluster.expected_gateway(merchant) and again.sync.num_records == len(held)
    assert all(files_under(worker.data_dir) == [] for worker in cluster.workers)

"""Real Celery workers for the distributed engine (SYNC_EXECUTOR=celery): a Redis database of the
test's own as broker, worker processes started and stopped as process groups, and the runs that
hand them syncs, each orchestrated by a process of its own.

The workers import this module to rebuild the job (`sync_products_job`): keep it free of pytest."""

from __future__ import annotations

import multiprocessing
import os
import random
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import dagster as dg

from sync_pipeline.defs import build_defs
from sync_pipeline.defs.runs import job_name
from sync_pipeline.domain import EntityType

REPO_ROOT = Path(__file__).resolve().parent.parent
REDIS_HOST = os.environ.get("SYNC_TEST_REDIS_HOST", "127.0.0.1:6379")
OWNER_KEY = "sync_pipeline_tests:owner"  # expires: a test killed before its teardown frees its database
USED_KEY = "sync_pipeline_tests:used"  # stays: what is left there is a test's, and may be dropped


# --- a broker of the test's own ---------------------------------------------------------------


@dataclass
class RedisBroker:
    url: str
    db: int
    token: str

    def client(self):
        import redis

        return redis.Redis.from_url(self.url)

    def release(self) -> None:
        """Drop whatever the test left in its database: queued tasks, results, bindings."""
        client = self.client()
        try:
            if client.get(OWNER_KEY) == self.token.encode():
                client.flushdb()
        finally:
            client.close()


def claim_redis_db() -> RedisBroker:
    """A Redis database (1-15) of this test's own: an empty one, or one a killed test left behind.
    Marked as taken, so a test running beside it picks another; raises when none is free."""
    import redis

    token = uuid.uuid4().hex
    for db in random.sample(range(1, 16), 15):
        url = f"redis://{REDIS_HOST}/{db}"
        client = redis.Redis.from_url(url)
        try:
            if not client.set(OWNER_KEY, token, nx=True, ex=3600):
                continue  # taken by a running test
            if client.dbsize() == 1 or client.exists(USED_KEY):
                for key in client.scan_iter():
                    if key != OWNER_KEY.encode():
                        client.delete(key)
                client.set(USED_KEY, "1")
                return RedisBroker(url, db, token)
            client.delete(OWNER_KEY)  # someone else's data: leave it alone
        finally:
            client.close()
    raise RuntimeError(f"no free Redis database at {REDIS_HOST} for the Celery broker")


# --- the workers -----------------------------------------------------------------------------


def worker_command(name: str, broker: str) -> list[str]:
    """The worker as a deployment would run it: dagster-celery's app, one sync at a time, taking
    a task only when it is free to run it."""
    return [
        sys.executable, "-m", "celery", "-A", "dagster_celery.app",
        "-b", broker, "--result-backend", broker,
        "worker", "-n", f"{name}@%h", "--concurrency=1", "--prefetch-multiplier=1",
        "--without-gossip", "--without-mingle", "--loglevel=INFO",
    ]


@dataclass
class CeleryWorker:
    name: str
    data_dir: Path
    log: Path
    process: subprocess.Popen

    @property
    def pid(self) -> int:
        return self.process.pid

    def is_ready(self) -> bool:
        return " ready." in self.log.read_text(errors="replace")

    def owns(self, pid: int) -> bool:
        """True when `pid` is this worker or one of its pool's processes."""
        seen = 0
        while pid > 1 and seen < 10:
            if pid == self.pid:
                return True
            pid = _parent_of(pid)
            seen += 1
        return False

    def stop(self) -> None:
        """Warm shutdown of the whole process group, then a kill if it lingers."""
        if self.process.poll() is not None:
            return
        _signal_group(self.process, signal.SIGTERM)
        try:
            self.process.wait(20)
        except subprocess.TimeoutExpired:
            _signal_group(self.process, signal.SIGKILL)
            self.process.wait(10)


def start_worker(name: str, broker: str, env: dict[str, str], root: Path, timeout: float = 60) -> CeleryWorker:
    """A Celery worker with an empty data directory of its own under `root`, once it is ready."""
    data_dir = root / f"{name}-data"
    data_dir.mkdir(parents=True)
    log = root / f"{name}.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            worker_command(name, broker),
            env={**env, "SYNC_DATA_DIR": str(data_dir)},
            cwd=str(REPO_ROOT),
            stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: stopped with its pool, whatever happens
        )
    worker = CeleryWorker(name, data_dir, log, process)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"worker {name} exited {process.returncode}:\n{log.read_text(errors='replace')[-3000:]}")
        if worker.is_ready():
            return worker
        time.sleep(0.2)
    worker.stop()
    raise RuntimeError(f"worker {name} was not ready in {timeout:.0f}s:\n{log.read_text(errors='replace')[-3000:]}")


def _signal_group(process: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(process.pid, sig)  # the group is the worker's own (start_new_session)
    except ProcessLookupError:
        pass


def _parent_of(pid: int) -> int:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0
    # The command name is in parentheses and may hold spaces: the fields after it are plain.
    return int(stat.rsplit(")", 1)[1].split()[1])


# --- the runs --------------------------------------------------------------------------------
# A run's own process orchestrates it, as under a run launcher: it hands the sync's step to the
# Celery queue and follows it. Forked from the test's process (no second import of Dagster);
# Dagster's loggers are not safe to set up from several threads of one process at once.


def sync_products_job() -> dg.JobDefinition:
    """The product sync job, for `dg.reconstructable`: the run's process and the worker each call
    it, so each builds the job with the executor its own SYNC_EXECUTOR names (the test's process
    may have imported `sync_pipeline.defs` earlier with the in-process one)."""
    return build_defs().resolve_job_def(job_name(EntityType.PRODUCT))


def _execute_run(tags: dict[str, str], log: str) -> None:
    with open(log, "wb") as out:
        os.dup2(out.fileno(), 1)
        os.dup2(out.fileno(), 2)
    with dg.DagsterInstance.get() as instance:
        result = dg.execute_job(dg.reconstructable(sync_products_job), instance=instance, tags=tags)
    os._exit(0 if result.success else 1)


def start_run(tags: dict[str, str], log: Path) -> multiprocessing.Process:
    """A product sync run with these tags, orchestrated by a process of its own."""
    process = multiprocessing.get_context("fork").Process(target=_execute_run, args=(tags, str(log)), daemon=True)
    process.start()
    return process

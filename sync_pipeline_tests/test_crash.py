"""Crash safety: a sync SIGKILLed while fetching, after staging, while publishing or while
waiting for batches is closed as 4900 Abandoned by the next sync of its type, which converges to
the exact expected catalogue with nothing applied twice, and removes the dead sync's scratch."""

import subprocess
import sys

import pytest

from sync_pipeline.cli import main
from sync_pipeline.domain import EntityType, SyncStatus
from sync_pipeline.pipeline import CRASH_ENV
from sync_pipeline.settings import scratch_path, state_url
from sync_pipeline.state import StateStore

from .test_e2e import expected_gateway


def sync_in_subprocess(*args: str, crash_at: str) -> subprocess.CompletedProcess:
    import os

    env = {**os.environ, CRASH_ENV: crash_at}
    return subprocess.run(
        [sys.executable, "-m", "sync_pipeline.cli", "sync", "PRODUCT", *args],
        env=env, capture_output=True, text=True, timeout=300,
    )


@pytest.mark.parametrize("point", ["fetching", "staged", "publishing", "waiting"])
def test_a_sync_killed_anywhere_is_abandoned_and_the_next_converges(point, sync_env, sandbox):
    killed = sync_in_subprocess("--mode", "full", crash_at=point)
    assert killed.returncode == -9, killed.stdout + killed.stderr
    store = StateStore(state_url())
    [dead] = store.history(EntityType.PRODUCT)
    assert dead.status is SyncStatus.IN_PROGRESS  # nobody closed it: the process died
    scratch = scratch_path(dead.merchant_id, EntityType.PRODUCT, dead.sync_id)
    assert scratch.is_dir()  # left behind by the killed process

    assert main(["sync", "PRODUCT"]) == 0
    closed = store.get_sync(dead.sync_id)
    assert closed.status is SyncStatus.ABANDONED and "is gone" in closed.error_message
    assert not scratch.exists()
    assert sandbox.gateway("PRODUCT") == expected_gateway(sandbox, "PRODUCT")
    stats = sandbox.stats()["gateway"]
    assert stats["itemsAppliedTwice"] == 0
    if point in ("publishing", "waiting"):
        assert stats["replays"] >= 1  # the batch sent before the kill was answered, not re-applied
    store.dispose()

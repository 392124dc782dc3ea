"""How runs and syncs are linked (run tags), and finding syncs whose run died: the Dagster
run's real state, and the owning process."""

from __future__ import annotations

import os
import socket

from datetime import timedelta

import dagster as dg

from ..domain import EntityType, SyncStatus, utcnow
from ..state import StateStore, SyncRecord
from .partitions import partition_range_tags

SYNC_ID_TAG = "sync_pipeline/sync_id"
ENTITY_TAG = "sync_entity_type"
NEVER_LAUNCHED_AFTER = timedelta(minutes=10)


def run_tags_for(sync: SyncRecord) -> dict[str, str]:
    """The tags of the run that carries out `sync`: its id, its entity type (the run queue's
    limit key) and the days its window covers."""
    return {SYNC_ID_TAG: sync.sync_id, ENTITY_TAG: sync.entity_type.value, **partition_range_tags(sync.window)}


def process_is_gone(host: str | None, pid: int | None) -> bool:
    """True only when we can tell: the process ran on this host and no longer exists."""
    if host != socket.gethostname() or not pid:
        return False
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def why_dead(instance: dg.DagsterInstance, sync: SyncRecord) -> str | None:
    """Why this active sync can never finish, or None while it may still."""
    if sync.run_id:
        run = instance.get_run_by_id(sync.run_id)
        if run is not None and run.status in (
            dg.DagsterRunStatus.SUCCESS, dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.CANCELED
        ):
            return f"its run {sync.run_id} ended {run.status.value} without closing the sync"
    else:
        runs = instance.get_run_records(dg.RunsFilter(tags={SYNC_ID_TAG: sync.sync_id}))
        if runs and all(r.dagster_run.is_finished for r in runs):
            return f"its run {runs[0].dagster_run.run_id} ended {runs[0].dagster_run.status.value} before the sync started"
        if runs:
            return None
        if sync.origin == "schedule" and utcnow() - sync.requested_at > NEVER_LAUNCHED_AFTER:
            return f"its scheduled run was never launched ({NEVER_LAUNCHED_AFTER} after the tick)"
        if sync.origin not in ("cli", "dagster"):  # an API request waits for the sensor
            return None
    if process_is_gone(sync.worker_host, sync.worker_pid):
        return f"its process {sync.worker_pid} on {sync.worker_host} is gone"
    return None


def close_abandoned(state: StateStore, instance: dg.DagsterInstance, entity: EntityType | None = None) -> list[SyncRecord]:
    """Close as 4900 Abandoned every active sync (of `entity`, or all) whose run or process died."""
    closed = []
    for sync in state.active_syncs():
        if entity is not None and sync.entity_type is not entity:
            continue
        reason = why_dead(instance, sync)
        if reason:
            closed.append(state.finish_sync(sync.sync_id, SyncStatus.ABANDONED, error_message=f"abandoned: {reason}"))
    return closed

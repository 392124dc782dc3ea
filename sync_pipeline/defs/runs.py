"""How runs and syncs are linked (run tags), and finding syncs whose run died: the Dagster
run's real state, and the owning process.

Tags hold ids and times, never a secret: the run looks its merchant's connection up in the
registry when it starts."""

from __future__ import annotations

import os
import shutil
import socket

import dagster as dg

from ..domain import EntityType, SyncMode, SyncStatus, format_time
from ..settings import scratch_path
from ..state import StateStore, SyncRecord

PARTITION_TAG = "dagster/partition"
SYNC_ID_TAG = "sync_pipeline/sync_id"
ORIGIN_TAG = "sync_pipeline/origin"
SYNC_TO_TAG = "sync_pipeline/sync_to"
MODE_TAG = "sync_pipeline/mode"
TICK_TAG = "sync_pipeline/tick"
ENTITY_TAG = "sync_entity_type"
MERCHANT_TAG = "sync_merchant"
# The run queue's limit key (dagster.yaml): one run per unique value, i.e. per (merchant, type).
LEASE_TAG = "sync_lease"


def job_name(entity: EntityType) -> str:
    return f"sync_{entity.plural}"


def lease_tags(merchant: str, entity: EntityType) -> dict[str, str]:
    """The merchant (also as the run's partition), the entity type, and the run queue's key.

    The partition is given as the run's tag rather than as a run request's partition key:
    Dagster checks a partition key with one storage query per request (11 ms on SQLite, most of
    a tick for 1,000 merchants); whoever asks for the run has made sure the partition exists."""
    return {
        PARTITION_TAG: merchant, MERCHANT_TAG: merchant, ENTITY_TAG: entity.value,
        LEASE_TAG: f"{merchant}/{entity.value}",
    }


def run_tags_for(sync: SyncRecord) -> dict[str, str]:
    """The tags of the run that carries out `sync`: its id, its merchant and entity type, and
    the run queue's (merchant, type) key."""
    return {SYNC_ID_TAG: sync.sync_id, **lease_tags(sync.merchant_id, sync.entity_type)}


def scheduled_run_tags(merchant: str, entity: EntityType, sync_to, mode: SyncMode) -> dict[str, str]:
    """The tags of a daily run: it takes its lease when it starts, syncing up to the tick (a
    latest sync, or the weekly full reconcile)."""
    tags = {ORIGIN_TAG: "schedule", TICK_TAG: format_time(sync_to), MODE_TAG: mode.value, **lease_tags(merchant, entity)}
    if mode is SyncMode.LATEST:
        tags[SYNC_TO_TAG] = format_time(sync_to)
    return tags


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
        if sync.origin == "api":  # an API request waits for the sensor to launch its run
            return None
    if process_is_gone(sync.worker_host, sync.worker_pid):
        return f"its process {sync.worker_pid} on {sync.worker_host} is gone"
    return None


def close_abandoned(
    state: StateStore, instance: dg.DagsterInstance, entity: EntityType | None = None, merchant: str | None = None
) -> list[SyncRecord]:
    """Close as 4900 Abandoned every active sync (of `entity` and `merchant`, or all) whose run or
    process died."""
    closed = []
    for sync in state.active_syncs(merchant):
        if entity is not None and sync.entity_type is not entity:
            continue
        reason = why_dead(instance, sync)
        if reason:
            closed.append(state.finish_sync(sync.sync_id, SyncStatus.ABANDONED, error_message=f"abandoned: {reason}"))
            # Its scratch, if it died on this machine: nothing in it is needed any more.
            shutil.rmtree(scratch_path(sync.merchant_id, sync.entity_type, sync.sync_id), ignore_errors=True)
    return closed

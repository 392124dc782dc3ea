"""Configuration from the environment, with the defaults of CONTRACT §5, in one place."""

from __future__ import annotations

import os
from pathlib import Path

from datetime import timedelta

from .domain import EntityType, parse_duration

SANDBOX_URL = "http://127.0.0.1:8765"
SANDBOX_PRODUCT_TOKEN = "sandbox-product-token"
SANDBOX_GATEWAY_TOKEN = "sandbox-gateway-token"
REPO_ROOT = Path(__file__).resolve().parent.parent

DEFAULTS = {
    "PRODUCT_SERVICE_URL": SANDBOX_URL,
    "PRODUCT_SERVICE_TOKEN": SANDBOX_PRODUCT_TOKEN,
    "GATEWAY_URL": SANDBOX_URL,
    "GATEWAY_TOKEN": SANDBOX_GATEWAY_TOKEN,
    "SYNC_DATA_DIR": "data",
}


def env(name: str) -> str:
    """The variable's value, or its CONTRACT §5 default."""
    return os.environ.get(name) or DEFAULTS[name]


def data_dir() -> Path:
    path = Path(env("SYNC_DATA_DIR")).resolve()
    path.mkdir(parents=True, exist_ok=True)
    return path


def state_url() -> str:
    return os.environ.get("SYNC_STATE_URL") or f"sqlite:///{data_dir() / 'state.db'}"


def scratch_path(merchant: str, entity: EntityType, sync_id: str) -> Path:
    """Where a sync keeps its DuckDB scratch: a directory of its own, removed when it ends (or,
    if its process died, when the sync is closed as abandoned)."""
    return data_dir() / "scratch" / f"{merchant}-{entity.plural}-{sync_id}"


def max_concurrent_syncs() -> int:
    """The deployment's cap on syncs running at once (CONTRACT §6), for Dagster's run queue."""
    return int(os.environ.get("SYNC_MAX_CONCURRENT_SYNCS") or 4)


def gateway_in_flight() -> int:
    """How many batches a sync keeps at the gateway at once, submitted and not yet ended
    (SYNC_GATEWAY_IN_FLIGHT, default 16). The gateway's 429s slow it further."""
    return _at_least_one("SYNC_GATEWAY_IN_FLIGHT", 16)


def gateway_sending() -> int:
    """How many of those batches a sync sends at once: each holds its request body (about a
    megabyte of records' JSON) until the gateway has taken it; the rest are followed by their
    ids alone (SYNC_GATEWAY_SENDING, default 4)."""
    return _at_least_one("SYNC_GATEWAY_SENDING", 4)


def _at_least_one(name: str, default: int) -> int:
    """The whole number in the environment variable `name` (`default` when unset or empty)."""
    text = os.environ.get(name) or str(default)
    try:
        value = int(text)
    except ValueError:
        raise ValueError(f"{name} must be a whole number, not {text!r}") from None
    if value < 1:
        raise ValueError(f"{name} must be at least 1, not {value}")
    return value


def sync_lookback() -> timedelta:
    """How far before the watermark a latest sync reads (SYNC_LOOKBACK, default 10m), to catch
    records a source commits late."""
    return parse_duration(os.environ.get("SYNC_LOOKBACK") or "10m")


def reconcile_weekday() -> int | None:
    """The weekday (0 = Monday) on which each merchant's daily sync is a full one, reconciling
    what latest syncs cannot see and deletions (SYNC_RECONCILE_DAY: mon..sun, default sun;
    `off` never)."""
    text = (os.environ.get("SYNC_RECONCILE_DAY") or "sun").strip().lower()
    if text in ("off", "none", "never", "no"):
        return None
    days = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
    if text[:3] not in days:
        raise ValueError(f"SYNC_RECONCILE_DAY must be a weekday (mon..sun) or off, not {text!r}")
    return days.index(text[:3])


def retention_days() -> float:
    """How long the state store keeps syncs, batches, rejections and record trails
    (SYNC_RETENTION_DAYS, default 90)."""
    return float(os.environ.get("SYNC_RETENTION_DAYS") or 90)


def record_policy() -> dict:
    """What a sync does with problem records: park a record the gateway refused this many times
    in a row at one version (SYNC_PARK_AFTER_REFUSALS, default 2; 0 never parks), and whether to
    withdraw from the gateway a record whose source version became invalid
    (SYNC_WITHDRAW_INVALID, default no: the gateway keeps its last valid version)."""
    park_after = int(os.environ.get("SYNC_PARK_AFTER_REFUSALS") or 2)
    withdraw = (os.environ.get("SYNC_WITHDRAW_INVALID") or "").strip().lower() in ("1", "true", "yes", "on")
    return {"park_after": park_after or None, "withdraw_invalid": withdraw}


def duckdb_settings() -> dict:
    """DuckDB's memory cap (it spills to disk beyond it) and threads, for every run's scratch."""
    return {
        "memory_limit": os.environ.get("SYNC_DUCKDB_MEMORY_LIMIT", "64MB"),
        "threads": int(os.environ.get("SYNC_DUCKDB_THREADS", "2")),
    }


# A cgroup's CPU quota (a Kubernetes pod's CPU limit), v2 and v1: (quota file, period file or None).
_CPU_QUOTAS = (
    ("/sys/fs/cgroup/cpu.max", None),
    ("/sys/fs/cgroup/cpu/cpu.cfs_quota_us", "/sys/fs/cgroup/cpu/cpu.cfs_period_us"),
)


def usable_cores() -> float:
    """How many cores this process may keep busy: those it may run on (where the system says:
    not on macOS), and no more than its cgroup's CPU quota, where it has one."""
    cores: float = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    for quota_file, period_file in _CPU_QUOTAS:
        try:
            text = Path(quota_file).read_text().split()
            quota, period = text[0], (text[1] if period_file is None else Path(period_file).read_text().strip())
        except (OSError, IndexError):
            continue
        if quota not in ("max", "-1"):
            cores = min(cores, int(quota) / int(period))
        break
    return cores

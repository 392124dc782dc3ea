"""Where a sync's step executes: in the run's own process (the default), or on the workers of a
distributed engine the deployment already has (SYNC_EXECUTOR=celery: dagster-celery, broker
SYNC_CELERY_BROKER). A sync is one step that needs nothing on local disk from earlier runs, so
any worker can take any sync."""

from __future__ import annotations

import os

import dagster as dg

EXECUTOR_ENV = "SYNC_EXECUTOR"
BROKER_ENV = "SYNC_CELERY_BROKER"
BACKEND_ENV = "SYNC_CELERY_BACKEND"


def sync_executor() -> dg.ExecutorDefinition:
    kind = os.environ.get(EXECUTOR_ENV, "in_process")
    if kind == "in_process":
        return dg.in_process_executor
    if kind == "celery":
        from dagster_celery import celery_executor  # installed with the `distributed` extra

        # Named by variable, not by value: a broker URL may hold a password, and run config is shown in the UI.
        broker = {"env": BROKER_ENV} if os.environ.get(BROKER_ENV) else "redis://127.0.0.1:6379/0"
        backend = {"env": BACKEND_ENV} if os.environ.get(BACKEND_ENV) else broker
        return celery_executor.configured({"broker": broker, "backend": backend}, name="celery")
    raise ValueError(f"{EXECUTOR_ENV} must be in_process or celery, not {kind!r}")

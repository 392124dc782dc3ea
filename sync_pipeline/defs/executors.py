"""Where a sync's step executes: in the run's own process (the default), or on the workers of a
distributed engine the deployment already has (SYNC_EXECUTOR=celery: dagster-celery, broker
SYNC_CELERY_BROKER). A sync is one step that needs nothing on local disk from earlier runs, so
any worker can take any sync.

A worker is dagster-celery's app on the same broker, one sync at a time:

    celery -A dagster_celery.app -b "$SYNC_CELERY_BROKER" --result-backend "$SYNC_CELERY_BROKER" \
        worker -n w1@%h --concurrency=1 --prefetch-multiplier=1

with the runs' environment (SYNC_EXECUTOR, SYNC_STATE_URL, SYNC_SECRET_KEY, GATEWAY_URL, ...),
this package importable, and Dagster's storage reachable (PostgreSQL, or the same SQLite files on
one machine): a task brings the run's instance and job with it. Its SYNC_DATA_DIR is its own."""

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

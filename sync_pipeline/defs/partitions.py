"""The sync assets are partitioned by merchant: one dynamic partition per merchant in the
registry. The partitions view lists every merchant with its last sync; a backfill over one
merchant or all of them launches one run per merchant, its window given in the run config
(a historic range, latest, or full).

Why not days, or merchants × days: 1,000 merchants × daily partitions since 2025-01-01 is about
700,000 partitions, seven times what Dagster recommends per asset; merchants alone stay in the
thousands, and a date range is a property of the run, not of the asset."""

from __future__ import annotations

from collections.abc import Iterable

import dagster as dg

MERCHANT_PARTITIONS = "merchants"
merchant_partitions = dg.DynamicPartitionsDefinition(name=MERCHANT_PARTITIONS)


def missing_merchant_partitions(instance: dg.DagsterInstance, merchant_ids: Iterable[str]) -> list[str]:
    """The merchants that have no partition yet."""
    existing = set(instance.get_dynamic_partitions(MERCHANT_PARTITIONS))
    return [merchant_id for merchant_id in dict.fromkeys(merchant_ids) if merchant_id not in existing]


def ensure_merchant_partitions(instance: dg.DagsterInstance, merchant_ids: Iterable[str]) -> list[str]:
    """Add the merchants that have no partition yet; returns those added."""
    missing = missing_merchant_partitions(instance, merchant_ids)
    if missing:
        instance.add_dynamic_partitions(MERCHANT_PARTITIONS, missing)
    return missing

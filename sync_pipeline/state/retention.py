"""Bounded history: what the state store keeps of the past, SYNC_RETENTION_DAYS long.

Pruned: syncs finished before the cutoff and their batches, rejections, record events, and the
rows of records long gone from both the source and the gateway. Never pruned: what the next
sync needs (every record's current state, the syncs whose windows make the watermark, the
batches whose idempotency keys were spent, and their syncs) and the last successful sync of
each (merchant, type), which the Sync API reports."""

from __future__ import annotations

from datetime import datetime

import sqlalchemy as sa

from .schema import ACTIVE_CODES, SUCCESS_CODES, batches, record_events, records, rejections, syncs


def kept_syncs() -> sa.Select:
    """Per (merchant, type): the last successful sync, and the last successful full or latest
    one (its window end is the watermark); as a query, so no list of ids grows with merchants."""
    selects = []
    for modes in (None, ("full", "latest")):
        ranked = sa.select(
            syncs.c.sync_id,
            sa.func.row_number()
            .over(partition_by=(syncs.c.merchant_id, syncs.c.entity_type), order_by=syncs.c.finished_at.desc())
            .label("rank"),
        ).where(syncs.c.status_code.in_(SUCCESS_CODES))
        if modes:
            ranked = ranked.where(syncs.c.mode.in_(modes))
        subquery = ranked.subquery()
        selects.append(sa.select(subquery.c.sync_id).where(subquery.c.rank == 1))
    return sa.union(*selects)


def prune_history(engine: sa.Engine, cutoff: datetime) -> dict[str, int]:
    """Delete what is older than `cutoff` and not needed; returns how many rows of each table."""
    counts: dict[str, int] = {}
    with engine.begin() as conn:
        old = (
            sa.select(syncs.c.sync_id)
            .where(syncs.c.finished_at < cutoff, syncs.c.status_code.not_in(ACTIVE_CODES))
            .where(syncs.c.sync_id.not_in(kept_syncs()))
        )
        # a batch whose key was spent (it failed, or items in it did) stays: the next key of the
        # chain is derived from it, and the gateway must not be asked the spent key again
        spent = sa.or_(batches.c.batch_status == "FAILED", batches.c.fail_count > 0)
        counts["record_events"] = conn.execute(sa.delete(record_events).where(record_events.c.event_at < cutoff)).rowcount
        counts["rejections"] = conn.execute(sa.delete(rejections).where(rejections.c.rejected_at < cutoff)).rowcount
        counts["batches"] = conn.execute(sa.delete(batches).where(batches.c.sync_id.in_(old), sa.not_(spent))).rowcount
        still_referenced = sa.select(batches.c.sync_id).where(batches.c.sync_id.is_not(None))
        counts["syncs"] = conn.execute(
            sa.delete(syncs).where(syncs.c.sync_id.in_(old), syncs.c.sync_id.not_in(still_referenced))
        ).rowcount
        # not under a sync queued or running: it may have read the row and will write it back
        busy = sa.exists().where(
            syncs.c.merchant_id == records.c.merchant_id, syncs.c.entity_type == records.c.entity_type,
            syncs.c.status_code.in_(ACTIVE_CODES),
        )
        counts["records"] = conn.execute(
            sa.delete(records).where(
                records.c.held_hash.is_(None), records.c.pending == 0, records.c.gone_at < cutoff, ~busy,
            )
        ).rowcount
    return counts

"""Why a record is, or is not, at the gateway: its state and its trail, from the state store alone
(`sync-pipeline explain`, `GET /records/{entityType}/{id}`)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import sqlalchemy as sa

from .domain import EntityType, Event, as_utc, format_time, parse_time
from .staging.store import PENDING_DELETE, PENDING_PUBLISH
from .state import StateStore
from .state.schema import batches, record_events, records, rejections

EVENTS_SHOWN = 20


@dataclass(frozen=True)
class Trail:
    merchant_id: str
    entity: EntityType
    record_id: str
    state: dict[str, Any]  # the record's row
    last_rejection: dict[str, Any] | None
    events: list[dict[str, Any]]  # newest first
    park_after: int | None

    @property
    def parked(self) -> bool:
        s = self.state
        return bool(
            self.park_after and s["refused_hash"] and s["refused_hash"] == s["source_hash"]
            and s["refused_times"] >= self.park_after and s["pending"] == 0
        )

    def sentence(self) -> str:
        """One sentence: is the record current at the gateway, and why (not)."""
        s = self.state
        held, source = s["held_hash"], s["source_hash"]
        if s["gone_at"] and not held:
            if s["deleted_batch_id"]:
                return (f"Not at the gateway: gone from the source (404 since {_t(s['gone_at'])}), deleted from the"
                        f" gateway by batch {s['deleted_batch_id']} at {_t(s['deleted_at'])}.")
            return f"Not at the gateway: gone from the source (404 since {_t(s['gone_at'])}); the gateway never held it."
        if s["pending"] == PENDING_DELETE:
            why = (f"gone from the source (404 since {_t(s['gone_at'])})" if s["gone_at"]
                   else f"its source version is invalid ({s['rejected_reason']}) and invalid records are withdrawn")
            return f"Still at the gateway, to be deleted: {why}; the next sync sends the deletion."
        if s["rejected_reason"]:
            if held:
                return (f"The gateway holds the last valid version (batch {s['held_batch_id']}, {_t(s['held_at'])}),"
                        f" not the current one: the source's version is invalid since {_t(s['rejected_at'])}:"
                        f" {s['rejected_reason']}.")
            return (f"Not at the gateway: the source's version is invalid since {_t(s['rejected_at'])}:"
                    f" {s['rejected_reason']}.")
        if held and held == source:
            return (f"Current at the gateway: it holds the version seen at the source on {_t(s['source_seen_at'])}"
                    f" (updatedAt {_t(s['source_updated_at'])}), applied by batch {s['held_batch_id']} at"
                    f" {_t(s['held_at'])}.")
        where = "Not current at the gateway" if held else "Not at the gateway"
        if self.parked:
            return (f"{where}: the gateway refused its current version {s['refused_times']} times"
                    f" ({s['refused_reason']}), so it is parked: not sent again until its content changes.")
        if s["refused_hash"] and s["refused_hash"] == source:
            return (f"{where}: the gateway refused its current version at {_t(s['refused_at'])}"
                    f" ({s['refused_reason']}); the next sync sends it again.")
        if s["pending"] == PENDING_PUBLISH:
            return (f"{where} yet: the version seen on {_t(s['source_seen_at'])} is owed to the gateway (its last batch"
                    " failed or the sync stopped before sending it); the next sync sends it.")
        return f"{where}: the gateway holds version {held or 'none'}, the source's is {source or 'unknown'}."

    def as_dict(self) -> dict[str, Any]:
        s = self.state
        return {
            "merchantId": self.merchant_id,
            "entityType": self.entity.value,
            "id": self.record_id,
            "explanation": self.sentence(),
            "source": {
                "updatedAt": _t(s["source_updated_at"]), "contentHash": s["source_hash"],
                "fetchedBySync": s["source_sync_id"], "fetchedAt": _t(s["source_seen_at"]),
                "valid": s["rejected_reason"] is None,
                "rejectedReason": s["rejected_reason"], "rejectedSince": _t(s["rejected_at"]),
                "goneSince": _t(s["gone_at"]),
            },
            "gateway": {
                "contentHash": s["held_hash"], "batchId": s["held_batch_id"], "appliedAt": _t(s["held_at"]),
                "current": bool(s["held_hash"]) and s["held_hash"] == s["source_hash"] and not s["rejected_reason"],
            },
            "refusal": None if not s["refused_hash"] else {
                "contentHash": s["refused_hash"], "reason": s["refused_reason"], "at": _t(s["refused_at"]),
                "times": s["refused_times"], "parked": self.parked,
            },
            "deletion": {
                "pending": s["pending"] == PENDING_DELETE,
                "batchId": s["deleted_batch_id"], "deletedAt": _t(s["deleted_at"]),
            },
            "owed": {0: None, PENDING_PUBLISH: "publish", PENDING_DELETE: "delete"}.get(s["pending"]),
            "lastRejection": self.last_rejection,
            "events": self.events,
        }


def _t(value: datetime | None) -> str | None:
    return format_time(value) if value else None


def _shown(event: sa.Row) -> list[dict[str, Any]]:
    """A row of the trail as the events it stands for, newest first: one, or (a version seen and
    published by the same sync, stored as one row) `published`, then `seen`."""
    shown = {
        "at": _t(as_utc(event.event_at)), "event": event.event, "syncId": event.sync_id,
        "contentHash": event.content_hash, "batchId": event.batch_id, "detail": event.detail,
    }
    if event.event != Event.SEEN_PUBLISHED:
        return [shown]
    seen_at = datetime.fromisoformat(event.detail).replace(tzinfo=timezone.utc)  # staging's TIME_FORMAT, microseconds or not
    return [
        {**shown, "event": Event.PUBLISHED, "detail": None},
        {**shown, "at": _t(seen_at), "event": Event.SEEN, "batchId": None, "detail": None},
    ]


def _of_row(state: dict[str, Any], published_by: str | None) -> list[dict[str, Any]]:
    """The newest `published` and `seen` events, which are the record's row itself (the state
    store writes them to `record_events` once the row no longer says them)."""
    events = []
    if state["held_at"]:
        events.append({
            "at": _t(state["held_at"]), "event": Event.PUBLISHED, "syncId": published_by,
            "contentHash": state["held_hash"], "batchId": state["held_batch_id"], "detail": None,
        })
    if state["source_seen_at"]:
        events.append({
            "at": _t(state["source_seen_at"]), "event": Event.SEEN, "syncId": state["source_sync_id"],
            "contentHash": state["source_hash"], "batchId": None, "detail": None,
        })
    return events


def _newest_first(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The events by time, newest first, each once (the row's own events may also be stored, by
    a release that wrote them to `record_events` as they happened). At one time, the order given
    stands."""
    once, seen = [], set()
    for event in events:
        key = (event["event"], event["at"], event["contentHash"], event["batchId"])
        if key not in seen:
            seen.add(key)
            once.append(event)
    return sorted(once, key=lambda event: parse_time(event["at"]), reverse=True)


def record_trail(
    store: StateStore, entity: EntityType, record_id: str, *, merchant: str, park_after: int | None
) -> Trail | None:
    """The record's state and its last events, or None when no sync has seen it."""
    key = (records.c.merchant_id == merchant, records.c.entity_type == entity.value, records.c.record_id == record_id)
    with store.engine.connect() as conn:
        row = conn.execute(sa.select(records).where(*key)).first()
        if row is None:
            return None
        state = {name: as_utc(value) if isinstance(value, datetime) else value for name, value in row._mapping.items()}
        published_by = None if not state["held_batch_id"] else conn.execute(
            sa.select(batches.c.sync_id).where(batches.c.batch_id == state["held_batch_id"], batches.c.merchant_id == merchant)
        ).scalar()
        stored = [
            shown
            for event in conn.execute(
                sa.select(record_events)
                .where(record_events.c.merchant_id == merchant, record_events.c.entity_type == entity.value,
                       record_events.c.record_id == record_id)
                .order_by(record_events.c.event_at.desc(), record_events.c.event_id.desc())
                .limit(EVENTS_SHOWN)
            )
            for shown in _shown(event)
        ]
        events = _newest_first(_of_row(state, published_by) + stored)[:EVENTS_SHOWN]
        rejection = conn.execute(
            sa.select(rejections.c.sync_id, rejections.c.reason, rejections.c.raw, rejections.c.rejected_at)
            .where(rejections.c.merchant_id == merchant, rejections.c.entity_type == entity.value,
                   rejections.c.record_id == record_id)
            .order_by(rejections.c.rejection_id.desc())
            .limit(1)
        ).first()
    last_rejection = None if rejection is None else {
        "syncId": rejection.sync_id, "reason": rejection.reason, "raw": rejection.raw,
        "at": _t(as_utc(rejection.rejected_at)),
    }
    return Trail(merchant, entity, record_id, state, last_rejection, events, park_after)

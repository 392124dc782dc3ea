"""The state store (SQLAlchemy): syncs, batches, the per-entity lease and watermark."""

from .store import BatchRecord, StateStore, SyncRecord

__all__ = ["BatchRecord", "StateStore", "SyncRecord"]

"""The state store (SQLAlchemy): merchants, syncs, batches, records, the per-(merchant, type) lease."""

from .store import BatchRecord, StateStore, SyncRecord, open_state_store

__all__ = ["BatchRecord", "StateStore", "SyncRecord", "open_state_store"]

"""DuckDB scratch of one sync: load pages in bulk, dedupe, validate, diff against what the gateway holds."""

from .records import PageRows, rejection_reason, to_rows
from .store import ChangedRecord, Outcome, PublishCheck, StageCounts, StagingStore, connect_scratch

__all__ = [
    "ChangedRecord", "Outcome", "PageRows", "PublishCheck", "StageCounts", "StagingStore", "connect_scratch",
    "rejection_reason", "to_rows",
]

"""DuckDB staging: load pages in bulk, dedupe, validate, diff against what the gateway accepted."""

from .records import PageRows, rejection_reason, to_rows
from .store import ChangedRecord, StagingStore, StageCounts

__all__ = ["ChangedRecord", "PageRows", "StageCounts", "StagingStore", "rejection_reason", "to_rows"]

"""The gateway catalogue, write side: batch submit, and following batches to their end."""

from .client import (
    REFUSED_REQUEST, UPSERT_ENVELOPE, BatchOutcome, GatewayClient, Operation, idempotency_key, idempotency_key_of,
)
from .watcher import BatchWatcher

__all__ = ["REFUSED_REQUEST", "UPSERT_ENVELOPE", "BatchOutcome", "BatchWatcher", "GatewayClient", "Operation",
           "idempotency_key", "idempotency_key_of"]

"""The gateway catalogue, write side: batch submit and batch status polling."""

from .client import BatchOutcome, GatewayClient, Operation, idempotency_key

__all__ = ["BatchOutcome", "GatewayClient", "Operation", "idempotency_key"]

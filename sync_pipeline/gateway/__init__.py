"""The gateway catalogue, write side: batch submit and batch status polling."""

from .client import REFUSED_REQUEST, BatchOutcome, GatewayClient, Operation, idempotency_key

__all__ = ["REFUSED_REQUEST", "BatchOutcome", "GatewayClient", "Operation", "idempotency_key"]

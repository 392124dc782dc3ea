"""The sandbox's gateway catalogue: what it holds, the batches it was sent, idempotency keys."""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any

import orjson

ENTITY_TYPES = ("PRODUCT", "COLLECTION")
REFUSAL_REASON = "refused by catalogue policy: sku is blocked for this merchant"


@dataclass
class Batch:
    batch_id: str
    entity_type: str
    operation: str
    items: list[Any]  # records (UPSERT) or ids (DELETE)
    status: str = "QUEUED"
    success_count: int = 0
    fail_count: int = 0
    failed: list[dict] = field(default_factory=list)

    def to_wire(self) -> dict[str, Any]:
        total = self.success_count + self.fail_count
        ratio = f"{100 * self.success_count / total:.2f}" if total else "0.00"
        return {
            "batchId": self.batch_id,
            "batchStatus": self.status,
            "successCount": self.success_count,
            "failCount": self.fail_count,
            "failedProducts": self.failed,
            "ratio": ratio,
            "bulkOperationType": self.operation,
        }


class GatewayCatalogue:
    def __init__(self, refused: dict[str, set[str]]):
        self.holdings: dict[str, dict[str, bytes]] = {entity: {} for entity in ENTITY_TYPES}
        self.refused = refused  # entity type -> ids refused per item
        self.batches: dict[str, Batch] = {}
        self.keys: dict[str, str] = {}  # idempotency key -> batch id
        self.counter = itertools.count(1)
        # itemsAppliedTwice: an upsert of content the gateway already held, or a delete of what
        # it did not hold; a sync that never sends a change twice keeps it at 0.
        self.stats = {"batches": 0, "replays": 0, "itemsApplied": 0, "itemsRefused": 0, "itemsAppliedTwice": 0}

    def submit(self, entity_type: str, operation: str, items: list[Any], key: str) -> tuple[Batch, bool]:
        """Accept a batch; the same key again returns the first batch and applies nothing."""
        existing = self.keys.get(key)
        if existing is not None:
            self.stats["replays"] += 1
            return self.batches[existing], False
        batch = Batch(f"b-{next(self.counter):08d}", entity_type, operation, items)
        self.batches[batch.batch_id] = batch
        self.keys[key] = batch.batch_id
        self.stats["batches"] += 1
        return batch, True

    def process(self, batch: Batch) -> None:
        batch.status = "PROCESSING"

    def complete(self, batch: Batch) -> None:
        """Apply a batch item by item; refused items are reported and not applied."""
        held = self.holdings[batch.entity_type]
        refused = self.refused.get(batch.entity_type, set())
        for item in batch.items:
            if batch.operation == "DELETE":
                if held.pop(str(item), None) is None:
                    self.stats["itemsAppliedTwice"] += 1
                batch.success_count += 1
                continue
            record_id = item.get("id") if isinstance(item, dict) else None
            if not isinstance(record_id, str) or not record_id:
                batch.failed.append({"id": record_id, "reason": "record has no id"})
            elif record_id in refused:
                batch.failed.append({"id": record_id, "reason": REFUSAL_REASON})
            else:
                encoded = orjson.dumps(item)
                if held.get(record_id) == encoded:
                    self.stats["itemsAppliedTwice"] += 1
                held[record_id] = encoded
                batch.success_count += 1
        batch.fail_count = len(batch.failed)
        self.stats["itemsApplied"] += batch.success_count
        self.stats["itemsRefused"] += batch.fail_count
        batch.items = []  # applied: free the memory
        batch.status = "COMPLETED"

    def fail(self, batch: Batch, reason: str) -> None:
        """End a batch FAILED: nothing applied."""
        batch.failed = [{"id": item if batch.operation == "DELETE" else item.get("id"), "reason": reason} for item in batch.items]
        batch.fail_count = len(batch.failed)
        batch.items = []
        batch.status = "FAILED"

    def snapshot(self) -> bytes:
        return orjson.dumps({entity: {k: orjson.Fragment(v) for k, v in held.items()} for entity, held in self.holdings.items()})

    def restore(self, data: bytes) -> None:
        for entity, held in orjson.loads(data).items():
            self.holdings[entity] = {k: orjson.dumps(v) for k, v in held.items()}

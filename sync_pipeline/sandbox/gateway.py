"""The sandbox's gateway: one batch service, a catalogue per gateway token (CONTRACT §3, §6).

Batch ids are unique across tokens and a batch is visible only to the token that sent it;
idempotency keys, holdings, refusals and poisoned ids belong to one token's catalogue.

Holdings keep each record's JSON text exactly as it was sent: numbers keep every digit
(integers over 64 bits, long decimals, `1e400`). A body that orjson parses and re-encodes to
the very bytes sent (what a compact JSON encoder produces) is taken on that fast path;
anything else is split with `exactjson`, which keeps the original text of each record.

Poisoned ids (an admin switch): an UPSERT batch holding one of them is refused whole with a
400 naming the record, as a gateway refuses a record it cannot accept; other batches go on.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson

from .exactjson import loads_exact

ENTITY_TYPES = ("PRODUCT", "COLLECTION")
OPERATIONS = {"UPSERT": "records", "DELETE": "ids"}  # operation -> the body field of its items
MAX_BATCH_ITEMS = 1000
REFUSAL_REASON = "refused by catalogue policy: sku is blocked for this merchant"


class BadBatch(ValueError):
    """A batch body the gateway answers 400 to; the message is the envelope's detail."""


# An UPSERT item: (its id as sent, or None; its JSON text exactly as sent). A plain tuple,
# because a batch makes a thousand of them on the hot path.
Record = tuple[Any, bytes]


@dataclass
class Batch:
    batch_id: str
    owner: str  # the merchant whose gateway token sent it
    entity_type: str
    operation: str
    items: list[Any]  # Records (UPSERT) or ids (DELETE)
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


# --- reading a batch body --------------------------------------------------------------
def read_batch(raw: bytes) -> tuple[str, list[Any]]:
    """(operation, items) of a batch body; UPSERT items are `Record`s. Raises BadBatch."""
    body = _parse(raw)
    operation = body.get("operation") if isinstance(body, dict) else None
    field_name = OPERATIONS.get(operation)
    if field_name is None:
        raise BadBatch("operation must be UPSERT or DELETE")
    items = body.get(field_name)
    if not isinstance(items, list) or not items:
        raise BadBatch(f"{field_name} must be a non-empty array")
    if len(items) > MAX_BATCH_ITEMS:
        raise BadBatch(f"{len(items)} items; a batch holds at most {MAX_BATCH_ITEMS}")
    if operation == "UPSERT":
        items = _exact_records(raw, body, items)
    return operation, items


def _parse(raw: bytes) -> Any:
    """The body's values, possibly approximate: orjson, or the standard library for what
    orjson refuses (numbers beyond a double, such as 1e400)."""
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as error:
        try:
            return loads_exact(raw, depth=0).value
        except ValueError:
            raise BadBatch(f"body is not JSON: {error}") from None


def _exact_records(raw: bytes, body: dict, records: list[Any]) -> list[Record]:
    """Each record with its exact text: orjson's encoding when re-encoding the whole body
    gives back the bytes sent (so nothing was lost), else the record's slice of the body."""
    try:
        texts = [orjson.dumps(record) for record in records]
        members = {k: orjson.Fragment(b"[" + b",".join(texts) + b"]") if k == "records" else v for k, v in body.items()}
        lossless = orjson.dumps(members) == raw
    except TypeError:  # an integer orjson will not encode
        lossless = False
    if not lossless:
        try:
            exact = loads_exact(raw, depth=2)["records"]
        except ValueError as error:  # what orjson took but the standard library will not
            raise BadBatch(f"body is not JSON: {error}") from None
        texts = [element.text.encode() for element in exact]
    ids = [record.get("id") if isinstance(record, dict) else None for record in records]
    return list(zip(ids, texts, strict=True))


# --- the catalogues ------------------------------------------------------------------
class GatewayCatalogue:
    """What one gateway token's merchant has in the catalogue, and how it got there."""

    def __init__(self, refused: Callable[[str], set[str]]):
        self.holdings: dict[str, dict[str, bytes]] = {entity: {} for entity in ENTITY_TYPES}
        self.refused = refused  # entity type -> ids refused per item (planted by the source catalogue)
        self.keys: dict[str, str] = {}  # idempotency key -> batch id
        self.poisoned: set[str] = set()  # ids whose UPSERT batches are refused whole
        # itemsAppliedTwice: an upsert of content the gateway already held, or a delete of what
        # it did not hold; a sync that never sends a change twice keeps it at 0.
        self.stats = {"batches": 0, "replays": 0, "itemsApplied": 0, "itemsRefused": 0, "itemsAppliedTwice": 0}

    def poison_in(self, operation: str, items: list[Any]) -> str | None:
        """The first poisoned record id of an UPSERT batch, if any."""
        if operation != "UPSERT" or not self.poisoned:
            return None
        return next((record_id for record_id, _ in items if isinstance(record_id, str) and record_id in self.poisoned), None)

    def complete(self, batch: Batch) -> None:
        """Apply a batch item by item; refused items are reported and not applied."""
        held = self.holdings[batch.entity_type]
        refused = self.refused(batch.entity_type)
        for item in batch.items:
            if batch.operation == "DELETE":
                if held.pop(str(item), None) is None:
                    self.stats["itemsAppliedTwice"] += 1
                batch.success_count += 1
                continue
            record_id, text = item
            if not isinstance(record_id, str) or not record_id:
                batch.failed.append({"id": record_id, "reason": "record has no id"})
            elif record_id in refused:
                batch.failed.append({"id": record_id, "reason": REFUSAL_REASON})
            else:
                if held.get(record_id) == text:
                    self.stats["itemsAppliedTwice"] += 1
                held[record_id] = text
                batch.success_count += 1
        batch.fail_count = len(batch.failed)
        self.stats["itemsApplied"] += batch.success_count
        self.stats["itemsRefused"] += batch.fail_count
        batch.items = []  # applied: free the memory
        batch.status = "COMPLETED"

    def fail(self, batch: Batch, reason: str) -> None:
        """End a batch FAILED: nothing applied."""
        batch.failed = [{"id": item if batch.operation == "DELETE" else item[0], "reason": reason} for item in batch.items]
        batch.fail_count = len(batch.failed)
        batch.items = []
        batch.status = "FAILED"

    def holdings_json(self) -> dict[str, dict[str, orjson.Fragment]]:
        """The holdings, ready for orjson.dumps, each record as its exact text."""
        return {entity: {k: orjson.Fragment(v) for k, v in held.items()} for entity, held in self.holdings.items()}

    def restore(self, holdings: dict[str, Any]) -> None:
        """Take back `holdings_json` as read by `loads_exact(..., depth=2)` (id -> Exact)."""
        for entity in ENTITY_TYPES:
            if isinstance(holdings.get(entity), dict):
                self.holdings[entity] = {k: v.text.encode() for k, v in holdings[entity].items()}


class Gateway:
    """The one gateway all tokens share: it numbers batches and finds them again."""

    def __init__(self) -> None:
        self.batches: dict[str, Batch] = {}
        self.counter = itertools.count(1)

    def submit(
        self, owner: str, catalogue: GatewayCatalogue, entity_type: str, operation: str, items: list[Any], key: str
    ) -> tuple[Batch, bool]:
        """Accept a batch; the same key again (from the same token) returns the first batch
        and applies nothing."""
        existing = catalogue.keys.get(key)
        if existing is not None:
            catalogue.stats["replays"] += 1
            return self.batches[existing], False
        batch = Batch(f"b-{next(self.counter):08d}", owner, entity_type, operation, items)
        self.batches[batch.batch_id] = batch
        catalogue.keys[key] = batch.batch_id
        catalogue.stats["batches"] += 1
        return batch, True

    def batch(self, owner: str, batch_id: str) -> Batch | None:
        """The batch, if `owner` sent it: another token's batch is as good as absent."""
        batch = self.batches.get(batch_id)
        return batch if batch is not None and batch.owner == owner else None

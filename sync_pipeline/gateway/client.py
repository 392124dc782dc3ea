"""Client of the gateway catalogue (CONTRACT §3): submit batches, follow them to their end."""

from __future__ import annotations

import enum
import hashlib
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import orjson
import requests

from ..domain import EntityType
from ..errors import GatewayError
from ..http import build_session, describe_error_body

MAX_BATCH_ITEMS = 1000
# an upsert's request body, around its records' JSON joined by commas (CONTRACT §3)
UPSERT_ENVELOPE = (b'{"operation":"UPSERT","records":[', b"]}")
TERMINAL_STATUSES = frozenset({"COMPLETED", "FAILED"})
# Ours, not the gateway's: it refused the request holding this one item (400 or 413), so there
# is no batch; the item is refused with the gateway's reason and the rest goes on.
REFUSED_REQUEST = "REFUSED_REQUEST"


class Operation(str, enum.Enum):
    UPSERT = "UPSERT"
    DELETE = "DELETE"


@dataclass(frozen=True)
class BatchOutcome:
    """A batch as the gateway reports it (seed 003 fields)."""

    batch_id: str
    batch_status: str
    success_count: int
    fail_count: int
    failed_items: list[dict] = field(default_factory=list)
    ratio: str = "0.00"
    operation: str = "UPSERT"

    @property
    def failed_reasons(self) -> dict[str, str]:
        """The id of each item the gateway refused, with its reason."""
        return {str(item.get("id")): str(item.get("reason") or "") for item in self.failed_items}

    @classmethod
    def refused_request(cls, item_id: str, reason: str, operation: str) -> "BatchOutcome":
        return cls("", REFUSED_REQUEST, 0, 1, [{"id": item_id, "reason": reason}], "0.00", operation)

    @classmethod
    def from_wire(cls, data: dict) -> "BatchOutcome":
        return cls(
            batch_id=str(data["batchId"]),
            batch_status=str(data["batchStatus"]),
            success_count=int(data.get("successCount") or 0),
            fail_count=int(data.get("failCount") or 0),
            failed_items=list(data.get("failedProducts") or []),
            ratio=str(data.get("ratio") or "0.00"),
            operation=str(data.get("bulkOperationType") or "UPSERT"),
        )


def idempotency_key(
    entity: EntityType, operation: Operation, fingerprints: Iterable[str], merchant: str = "default"
) -> str:
    """A key that is the same whenever the same change is sent again.

    Fingerprints name each item and the state it moves the gateway from and to
    (id, old hash, new hash), so a rerun after a crash repeats the key and is not applied
    twice, while a later, genuinely new change to the same content gets a new key.
    """
    return idempotency_key_of(
        entity, operation, b"".join(b"\x00" + fingerprint.encode() for fingerprint in fingerprints), merchant
    )


def idempotency_key_of(entity: EntityType, operation: Operation, fingerprints: bytes, merchant: str = "default") -> str:
    """`idempotency_key` from the fingerprints given as bytes: each UTF-8, after a NUL byte
    (`ChangedBatch.fingerprints`)."""
    # the merchant too (not `default`'s, whose keys stay as they were): a gateway whose keys are
    # global must not answer one merchant's batch with another's
    scope = f"{entity.value}:{operation.value}" if merchant == "default" else f"{merchant}:{entity.value}:{operation.value}"
    return hashlib.sha256(scope.encode() + fingerprints).hexdigest()


class GatewayClient:
    def __init__(
        self,
        base_url: str,
        token: str,
        *,
        timeout: tuple[float, float] = (5.0, 60.0),
        retries: int = 5,
        backoff: float = 0.2,
        poll_interval: float = 0.05,
        poll_interval_max: float = 2.0,
        batch_timeout: float = 600.0,
        pool_size: int = 8,
        cut_off_retries: int = 3,
    ):
        self.cut_off_retries = cut_off_retries
        self.base_url = base_url.rstrip("/") + "/product-gateway/v1/catalog"
        self.timeout = timeout
        self.poll_interval = poll_interval
        self.poll_interval_max = poll_interval_max
        self.batch_timeout = batch_timeout
        self.session = build_session(token, retries=retries, backoff=backoff, pool_size=pool_size)

    def close(self) -> None:
        self.session.close()

    def submit_upsert(self, entity: EntityType, raw_records: Sequence[str], key: str) -> str:
        """Submit records given as JSON text, unchanged; return the batch id."""
        return self.submit_upsert_json(entity, ",".join(raw_records).encode(), len(raw_records), key)

    def submit_upsert_json(self, entity: EntityType, records_json: bytes, count: int, key: str) -> str:
        """Submit `count` records given as their JSON joined by commas, unchanged; return the batch id."""
        before, after = UPSERT_ENVELOPE
        return self.submit_upsert_body(entity, b"".join((before, records_json, after)), count, key)

    def submit_upsert_body(self, entity: EntityType, body: bytes, count: int, key: str) -> str:
        """Submit `count` records given as the request's whole body: their JSON joined by commas
        inside UPSERT_ENVELOPE (a batch held so is sent without another copy of its records).
        Returns the batch id."""
        _check_size(count)
        if not (body.startswith(UPSERT_ENVELOPE[0]) and body.endswith(UPSERT_ENVELOPE[1])):
            raise ValueError("an upsert's body is its records' JSON inside UPSERT_ENVELOPE")
        return self._submit(entity, body, key)

    def submit_delete(self, entity: EntityType, ids: Sequence[str], key: str) -> str:
        _check_size(len(ids))
        body = orjson.dumps({"operation": "DELETE", "ids": list(ids)})
        return self._submit(entity, body, key)

    def get_batch(self, batch_id: str) -> BatchOutcome:
        url = f"{self.base_url}/batches/{batch_id}"
        response = self._call("GET", url)
        self._raise_for_status(response, url)
        return BatchOutcome.from_wire(orjson.loads(response.content)["data"])

    def _submit(self, entity: EntityType, body: bytes, key: str) -> str:
        url = f"{self.base_url}/{entity.value}/batches"
        response = self._call(
            "POST",
            url,
            data=body,
            headers={"Content-Type": "application/json", "Idempotency-Key": key},
        )
        self._raise_for_status(response, url)
        return str(orjson.loads(response.content)["data"]["batchId"])

    def _call(self, method: str, url: str, **kwargs) -> requests.Response:
        # urllib3 retries 429/5xx and refused connections. A response cut off mid-body (the
        # gateway may have done the work) is retried here: a batch goes again under the same
        # Idempotency-Key, so the gateway answers with the batch it already has.
        for attempt in range(self.cut_off_retries + 1):
            if attempt:
                time.sleep(self.poll_interval * (2**attempt))
            try:
                response = self.session.request(method, url, timeout=self.timeout, **kwargs)
                response.content  # read it all here, where a cut-off is caught  # noqa: B018
                return response
            except (requests.exceptions.ChunkedEncodingError, requests.exceptions.ContentDecodingError) as error:
                problem = str(error)  # the text, not the exception: that would keep this frame (and the body)
            except requests.RequestException as error:
                raise GatewayError(f"{url}: gateway unreachable ({type(error).__name__}: {error})") from error
        raise GatewayError(f"{url}: the gateway's response was cut off {self.cut_off_retries + 1} times ({problem})")

    @staticmethod
    def _raise_for_status(response: requests.Response, url: str) -> None:
        if response.status_code < 400:
            return
        detail = describe_error_body(response)
        raise GatewayError(
            f"{url}: HTTP {response.status_code} from the gateway: {detail}", http_status=response.status_code, detail=detail
        )


def _check_size(count: int) -> None:
    if not 0 < count <= MAX_BATCH_ITEMS:
        raise ValueError(f"a batch holds 1 to {MAX_BATCH_ITEMS} items, not {count}")

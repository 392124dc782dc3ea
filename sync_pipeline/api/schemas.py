"""Typed request and response bodies of the Sync API. The OpenAPI document is generated from
these same models (openapi.py), so the two cannot drift apart."""

from __future__ import annotations

from typing import Annotated, Any, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field

from ..merchants import MerchantSpec

EntityTypeName = Literal["PRODUCT", "COLLECTION"]
# ISO-8601 UTC, e.g. 2024-05-01T00:00:00Z; kept a string so the API, not pydantic, says what is wrong.
UtcTime = Annotated[str, Field(json_schema_extra={"format": "date-time"})]


class Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class LatestSyncRequest(Body):
    syncTo: Optional[UtcTime] = Field(None, description="Sync changes up to this time (exclusive); default now.")


class HistoricSyncRequest(Body):
    start: UtcTime = Field(description="Records updated from this time (inclusive).")
    end: UtcTime = Field(description="Records updated before this time (exclusive); not in the future.")


class ErrorItem(BaseModel):
    status: str = Field(description="The HTTP status code applicable to the problem.")
    title: str = Field(description="A short human-readable description of the problem.")
    detail: str = Field(description="A human-readable explanation specific to this occurrence.")


class ErrorEnvelope(BaseModel):
    error: list[ErrorItem]


class SyncStatus(BaseModel):
    entityType: EntityTypeName
    updatedAt: UtcTime = Field(description="When the last successful sync finished.")
    numRecords: int = Field(description="Records of this type the gateway holds from this service.")


class SyncStatusResponse(BaseModel):
    data: SyncStatus
    meta: dict[str, Any]


class SyncAccepted(BaseModel):
    syncId: str
    entityType: EntityTypeName
    syncStatusCode: int
    syncStatus: str
    mode: Literal["latest", "full", "historic"]
    requestedAt: UtcTime
    syncTo: Optional[UtcTime] = None
    windowStart: Optional[UtcTime] = None
    windowEnd: Optional[UtcTime] = None


class SyncAcceptedResponse(BaseModel):
    data: SyncAccepted
    meta: dict[str, Any]


class SyncHistoryItem(BaseModel):
    syncId: str
    merchantId: str
    entityType: EntityTypeName
    syncStatusCode: int
    syncStatus: str
    syncUtc: UtcTime = Field(description="When the sync started (or was requested, if it has not started).")
    dataPushed: bool
    windowStart: Optional[UtcTime]
    windowEnd: Optional[UtcTime]
    numRecords: Optional[int]
    rejectedCount: int
    failCount: int
    errorMessage: Optional[str]
    mode: Literal["latest", "full", "historic"]
    fetchedCount: int
    publishedCount: int
    deletedCount: int
    parkedCount: int = Field(description="Records parked after repeated refusals at one version, after this sync.")
    invalidHeldCount: int = Field(description="Records the gateway holds whose source version has since become invalid.")
    finishedUtc: Optional[UtcTime]


class SyncHistoryResponse(BaseModel):
    data: list[SyncHistoryItem]
    meta: dict[str, Any]


class FailedItem(BaseModel):
    id: Optional[str]
    reason: str


class Batch(BaseModel):
    batchId: str
    batchStatus: str
    successCount: int
    failCount: int
    failedProducts: list[FailedItem]
    ratio: Optional[str]
    bulkOperationType: str
    syncId: str
    entityType: EntityTypeName
    itemCount: int
    submittedUtc: UtcTime
    finishedUtc: Optional[UtcTime]


class BatchResponse(BaseModel):
    data: Batch
    meta: dict[str, Any]


class SyncHealthResponse(BaseModel):
    data: list[SyncHistoryItem]
    meta: dict[str, Any] = Field(description='{"totals": {"<statusCode>": n, ...}, "nextCursor": "..." or null}')


class MerchantPutRequest(MerchantSpec):
    """A merchant to add, or the fields to change; the id comes from the path."""

    merchantId: Optional[str] = Field(None, description="If given, the same as in the path.")


class MerchantView(BaseModel):
    merchantId: str
    productServiceUrl: Optional[str]
    syncHourUtc: int
    enabled: bool
    hasReadToken: bool


class MerchantResponse(BaseModel):
    data: MerchantView
    meta: dict[str, Any]


class MerchantListResponse(BaseModel):
    data: list[MerchantView]
    meta: dict[str, Any]


class RecordTrailResponse(BaseModel):
    data: dict[str, Any] = Field(
        description="explanation (one sentence: is the record current at the gateway, and why not), source,"
        " gateway, refusal, deletion, owed, lastRejection and events (newest first)"
    )
    meta: dict[str, Any]


class Health(BaseModel):
    status: Literal["ok", "degraded"]
    stateStore: Literal["reachable", "unreachable"]

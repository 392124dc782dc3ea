"""The Sync API (Starlette). Routes are declared once, in OPERATIONS; the Starlette routes and
the OpenAPI document are both built from that list. Route functions only parse, call, render."""

from __future__ import annotations

import hmac
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
from pydantic import BaseModel, ValidationError
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.middleware import Middleware
from starlette.middleware.errors import ServerErrorMiddleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from ..domain import EntityType, SyncMode, format_time, parse_time
from ..state import StateStore, SyncRecord
from . import schemas
from .errors import HANDLERS, ApiError, envelope

BASE_PATH = "/product-gateway/v1"
MAX_BODY_BYTES = 16 * 1024
READ, WRITE, PUBLIC = "read", "write", "public"


@dataclass(frozen=True)
class QueryParam:
    name: str
    description: str
    minimum: int
    maximum: int
    default: int


@dataclass(frozen=True)
class Operation:
    method: str
    path: str  # under BASE_PATH
    operation_id: str
    summary: str
    handler: Callable[..., tuple[int, BaseModel]]
    access: str
    ok: tuple[int, type[BaseModel]]
    errors: tuple[int, ...]
    body: type[BaseModel] | None = None
    body_required: bool = False
    query: tuple[QueryParam, ...] = ()
    description: str = ""


@dataclass
class Call:
    """What a route function receives: the parsed request."""

    entity: EntityType | None
    body: BaseModel | None
    query: dict[str, int]
    path: dict[str, str] = field(default_factory=dict)


class SyncApi:
    """The behaviour behind the routes, over the state store."""

    def __init__(self, store: StateStore, reap: Callable[[StateStore, EntityType], None] | None = None):
        self.store = store
        self.reap = reap or (lambda store, entity: None)

    def status(self, call: Call) -> tuple[int, BaseModel]:
        last = self.store.last_successful(call.entity)
        if last is None:
            raise ApiError(404, f"no {call.entity.value} sync has succeeded yet")
        return 200, schemas.SyncStatusResponse(
            data=schemas.SyncStatus(
                entityType=call.entity.value, updatedAt=format_time(last.finished_at), numRecords=last.num_records or 0
            ),
            meta={
                "syncId": last.sync_id,
                "syncStatusCode": last.status.code,
                "syncStatus": last.status.text,
                "mode": last.mode.value,
                "windowStart": format_time(last.window_start),
                "windowEnd": format_time(last.window_end),
            },
        )

    def enqueue_latest(self, call: Call) -> tuple[int, BaseModel]:
        sync_to = _time_field(call.body.syncTo, "syncTo") if call.body is not None else None
        return self._enqueue(call.entity, SyncMode.LATEST, sync_to=sync_to)

    def enqueue_historic(self, call: Call) -> tuple[int, BaseModel]:
        start, end = _time_field(call.body.start, "start"), _time_field(call.body.end, "end")
        return self._enqueue(call.entity, SyncMode.HISTORIC, start=start, end=end)

    def _enqueue(self, entity: EntityType, mode: SyncMode, **window: Any) -> tuple[int, BaseModel]:
        self.reap(self.store, entity)
        try:  # the window is resolved and checked now: a bad request is a 400, not a failed sync
            sync = self.store.enqueue_sync(entity, mode, origin="api", **window)
        except ValueError as error:
            raise ApiError(400, str(error)) from None
        return 202, _accepted(sync)

    def history(self, call: Call) -> tuple[int, BaseModel]:
        syncs = self.store.history(call.entity, call.query["limit"])
        return 200, schemas.SyncHistoryResponse(data=[_history_item(s) for s in syncs], meta={"count": len(syncs)})

    def batch(self, call: Call) -> tuple[int, BaseModel]:
        batch = self.store.get_batch(call.path["batchId"])
        if batch is None:
            raise ApiError(404, f"no batch {call.path['batchId']!r}")
        return 200, schemas.BatchResponse(
            data=schemas.Batch(
                batchId=batch.batch_id,
                batchStatus=batch.batch_status,
                successCount=batch.success_count,
                failCount=batch.fail_count,
                failedProducts=[
                    schemas.FailedItem(id=None if i.get("id") is None else str(i.get("id")), reason=str(i.get("reason", "")))
                    for i in batch.failed_products
                ],
                ratio=batch.ratio,
                bulkOperationType=batch.bulk_operation_type,
                syncId=batch.sync_id,
                entityType=batch.entity_type.value,
                itemCount=batch.item_count,
                submittedUtc=format_time(batch.submitted_at),
                finishedUtc=format_time(batch.finished_at),
            ),
            meta={},
        )

    def health(self, call: Call) -> tuple[int, BaseModel]:
        try:
            reachable = self.store.ping()
        except Exception:
            reachable = False
        if reachable:
            return 200, schemas.Health(status="ok", stateStore="reachable")
        return 503, schemas.Health(status="degraded", stateStore="unreachable")


def _time_field(text: str | None, name: str):
    if text is None:
        return None
    try:
        return parse_time(text)
    except (ValueError, TypeError):
        raise ApiError(400, f"{name} is not an ISO-8601 time: {text!r}") from None


def _accepted(sync: SyncRecord) -> schemas.SyncAcceptedResponse:
    return schemas.SyncAcceptedResponse(
        data=schemas.SyncAccepted(
            syncId=sync.sync_id,
            entityType=sync.entity_type.value,
            syncStatusCode=sync.status.code,
            syncStatus=sync.status.text,
            mode=sync.mode.value,
            requestedAt=format_time(sync.requested_at),
            syncTo=format_time(sync.sync_to),
            windowStart=format_time(sync.window_start),
            windowEnd=format_time(sync.window_end),
        ),
        meta={},
    )


def _history_item(sync: SyncRecord) -> schemas.SyncHistoryItem:
    return schemas.SyncHistoryItem(
        syncId=sync.sync_id,
        entityType=sync.entity_type.value,
        syncStatusCode=sync.status.code,
        syncStatus=sync.status.text,
        syncUtc=format_time(sync.started_at or sync.requested_at),
        dataPushed=sync.data_pushed,
        windowStart=format_time(sync.window_start),
        windowEnd=format_time(sync.window_end),
        numRecords=sync.num_records,
        rejectedCount=sync.rejected,
        failCount=sync.failed,
        errorMessage=sync.error_message,
        mode=sync.mode.value,
        fetchedCount=sync.fetched,
        publishedCount=sync.published,
        deletedCount=sync.deleted,
        finishedUtc=format_time(sync.finished_at),
    )


def operations(api: SyncApi) -> list[Operation]:
    limit = QueryParam("limit", "How many syncs to return, newest first.", 1, 100, 20)
    auth_errors = (401, 403)
    return [
        Operation("GET", "/sync/{entityType}", "getSyncStatus", "Get the last successful sync of an entity type",
                  api.status, READ, (200, schemas.SyncStatusResponse), (400, *auth_errors, 404, 500, 503)),
        Operation("PUT", "/sync/{entityType}", "enqueueSync", "Enqueue a latest sync of an entity type",
                  api.enqueue_latest, WRITE, (202, schemas.SyncAcceptedResponse), (400, *auth_errors, 429, 500, 503),
                  description="Only one sync per entity type can be queued or in progress at a time: 429 otherwise."),
        Operation("POST", "/sync/{entityType}/latest", "enqueueLatestSync",
                  "Enqueue a sync from the end of the last successful sync up to syncTo",
                  api.enqueue_latest, WRITE, (202, schemas.SyncAcceptedResponse), (400, *auth_errors, 413, 429, 500, 503),
                  body=schemas.LatestSyncRequest),
        Operation("POST", "/sync/{entityType}/historic", "enqueueHistoricSync",
                  "Enqueue a sync of the records updated in [start, end)",
                  api.enqueue_historic, WRITE, (202, schemas.SyncAcceptedResponse), (400, *auth_errors, 413, 429, 500, 503),
                  body=schemas.HistoricSyncRequest, body_required=True),
        Operation("GET", "/sync/{entityType}/history", "getSyncHistory", "List the syncs of an entity type, newest first",
                  api.history, READ, (200, schemas.SyncHistoryResponse), (400, *auth_errors, 500, 503), query=(limit,)),
        Operation("GET", "/batches/{batchId}", "getBatch", "Get a gateway batch as recorded",
                  api.batch, READ, (200, schemas.BatchResponse), (400, *auth_errors, 404, 500, 503)),
        Operation("GET", "/healthz", "health", "Health: the state store is reachable",
                  api.health, PUBLIC, (200, schemas.Health), (503,)),
    ]


class Tokens:
    def __init__(self, write: str, read: str | None):
        if not write:
            raise ValueError("SYNC_API_TOKEN is required")
        self.write = write.encode()
        self.read = read.encode() if read else None

    def access_of(self, request: Request) -> str | None:
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return None
        given = token.strip().encode()
        # compare_digest on both, always, so timing tells nothing about which token is near.
        is_write = hmac.compare_digest(given, self.write)
        is_read = self.read is not None and hmac.compare_digest(given, self.read)
        return WRITE if is_write else READ if is_read else None


def _endpoint(operation: Operation, tokens: Tokens):
    async def endpoint(request: Request) -> Response:
        if operation.access != PUBLIC:
            access = tokens.access_of(request)
            if access is None:
                raise ApiError(401, "a valid bearer token is required", {"WWW-Authenticate": "Bearer"})
            if operation.access == WRITE and access != WRITE:
                raise ApiError(403, "this token may only read")
        call = Call(
            entity=_entity(request.path_params.get("entityType")),
            body=await _body(request, operation),
            query=_query(request, operation),
            path=dict(request.path_params),
        )
        status, model = await run_in_threadpool(operation.handler, call)
        return Response(model.model_dump_json(), status_code=status, media_type="application/json")

    return endpoint


def _entity(text: str | None) -> EntityType | None:
    if text is None:
        return None
    try:
        return EntityType(text)
    except ValueError:
        raise ApiError(400, f"entityType must be PRODUCT or COLLECTION, not {text[:40]!r}") from None


async def _body(request: Request, operation: Operation) -> BaseModel | None:
    if operation.body is None:
        return None
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        raise ApiError(413, f"the body is over {MAX_BODY_BYTES} bytes")
    raw = b""
    async for chunk in request.stream():
        raw += chunk
        if len(raw) > MAX_BODY_BYTES:
            raise ApiError(413, f"the body is over {MAX_BODY_BYTES} bytes")
    if not raw.strip():
        if operation.body_required:
            raise ApiError(400, "a JSON body is required")
        return None
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as error:
        raise ApiError(400, f"the body is not valid JSON: {error}") from None
    if not isinstance(data, dict):
        raise ApiError(400, "the body must be a JSON object")
    try:
        return operation.body.model_validate(data)
    except ValidationError as error:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'body'}: {e['msg']}" for e in error.errors(include_url=False)
        )
        raise ApiError(400, f"invalid body: {problems}") from None


def _query(request: Request, operation: Operation) -> dict[str, int]:
    values = {}
    for param in operation.query:
        text = request.query_params.get(param.name)
        if text is None:
            values[param.name] = param.default
            continue
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or not param.minimum <= value <= param.maximum:
            raise ApiError(400, f"{param.name} must be an integer from {param.minimum} to {param.maximum}")
        values[param.name] = value
    return values


def create_app(
    store: StateStore,
    write_token: str,
    read_token: str | None = None,
    reap: Callable[[StateStore, EntityType], Any] | None = None,
) -> Starlette:
    from .openapi import build_openapi

    api = SyncApi(store, reap)
    tokens = Tokens(write_token, read_token)
    ops = operations(api)
    document = orjson.dumps(build_openapi(ops, BASE_PATH))

    async def openapi(request: Request) -> Response:
        return Response(document, media_type="application/json")

    routes = [Route(BASE_PATH + op.path, _endpoint(op, tokens), methods=[op.method]) for op in ops]
    routes += [Route(BASE_PATH + "/openapi.json", openapi, methods=["GET"]), Route("/openapi.json", openapi, methods=["GET"])]
    routes += [Route("/healthz", _endpoint(ops[-1], tokens), methods=["GET"])]

    async def server_error(request: Request, error: Exception) -> Response:
        return envelope(500, "the server could not answer this request; it has been logged")

    app = Starlette(
        routes=routes,
        exception_handlers=HANDLERS,
        middleware=[Middleware(ServerErrorMiddleware, handler=server_error)],
    )
    app.state.api = api
    return app

"""The Sync API (Starlette). Routes are declared once, in OPERATIONS; the Starlette routes and
the OpenAPI document are both built from that list. Route functions only parse, call, render.

Who may do what (CONTRACT §4, §6): the bearer token decides the merchant. A merchant's tokens
see only that merchant (another merchant's syncs and batches are 404, as if absent); the
operator token (`SYNC_OPERATOR_TOKEN`) names the merchant with `?merchantId=` and has the
operator calls (the registry, the sync health list)."""

from __future__ import annotations

import base64
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
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

from ..domain import DEFAULT_MERCHANT, EntityType, SyncMode, check_merchant_id, format_time, parse_time
from ..crypto import SecretKeyError
from ..merchants import InvalidMerchant, MerchantRegistry, Principal, parse_spec
from ..settings import record_policy
from ..state import StateStore, SyncRecord
from ..trail import record_trail
from . import schemas
from .errors import HANDLERS, ApiError, envelope

BASE_PATH = "/product-gateway/v1"
MAX_BODY_BYTES = 16 * 1024
READ, WRITE, OPERATOR, PUBLIC = "read", "write", "operator", "public"
access_log = logging.getLogger("sync_pipeline.api.access")

Reap = Callable[[StateStore, EntityType, str], Any]


@dataclass(frozen=True)
class QueryParam:
    name: str
    description: str
    kind: str = "integer"  # integer | string | time
    minimum: int | None = None
    maximum: int | None = None
    default: Any = None


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
    also_ok: tuple[int, ...] = ()  # other success codes with the same body

    @property
    def per_merchant(self) -> bool:
        """A §4 call: about one merchant, named by the token or, for the operator, ?merchantId=."""
        return self.access in (READ, WRITE)


@dataclass
class Call:
    """What a route function receives: the parsed request."""

    entity: EntityType | None
    body: BaseModel | None
    query: dict[str, Any]
    path: dict[str, str] = field(default_factory=dict)
    merchant: str = DEFAULT_MERCHANT  # whose data this call is about


class SyncApi:
    """The behaviour behind the routes, over the state store and the merchant registry."""

    def __init__(self, store: StateStore, registry: MerchantRegistry, reap: Reap | None = None):
        self.store = store
        self.registry = registry
        self.reap = reap or (lambda store, entity, merchant: None)

    # --- §4: one merchant's syncs ---------------------------------------------------------
    def status(self, call: Call) -> tuple[int, BaseModel]:
        last = self.store.last_successful(call.entity, merchant=call.merchant)
        if last is None:
            raise ApiError(404, f"no {call.entity.value} sync has succeeded yet")
        held = self.store.held_now(call.entity, merchant=call.merchant)
        return 200, schemas.SyncStatusResponse(
            data=schemas.SyncStatus(
                entityType=call.entity.value, updatedAt=format_time(last.finished_at),
                numRecords=held if held is not None else (last.num_records or 0),
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
        return self._enqueue(call, SyncMode.LATEST, sync_to=sync_to)

    def enqueue_historic(self, call: Call) -> tuple[int, BaseModel]:
        start, end = _time_field(call.body.start, "start"), _time_field(call.body.end, "end")
        return self._enqueue(call, SyncMode.HISTORIC, start=start, end=end)

    def _enqueue(self, call: Call, mode: SyncMode, **window: Any) -> tuple[int, BaseModel]:
        if not self.registry.is_enabled(call.merchant):
            raise ApiError(409, f"merchant {call.merchant} is disabled: it is never synced until it is enabled")
        self.reap(self.store, call.entity, call.merchant)
        try:  # the window is resolved and checked now: a bad request is a 400, not a failed sync
            sync = self.store.enqueue_sync(call.entity, mode, origin="api", merchant=call.merchant, **window)
        except ValueError as error:
            raise ApiError(400, str(error)) from None
        return 202, _accepted(sync)

    def history(self, call: Call) -> tuple[int, BaseModel]:
        syncs = self.store.history(call.entity, call.query["limit"], merchant=call.merchant)
        return 200, schemas.SyncHistoryResponse(data=[_history_item(s) for s in syncs], meta={"count": len(syncs)})

    def batch(self, call: Call) -> tuple[int, BaseModel]:
        batch = self.store.get_batch(call.path["batchId"], merchant=call.merchant)
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

    def record(self, call: Call) -> tuple[int, BaseModel]:
        trail = record_trail(
            self.store, call.entity, call.path["recordId"], merchant=call.merchant,
            park_after=record_policy()["park_after"],
        )
        if trail is None:
            raise ApiError(404, f"no sync has seen {call.entity.value} {call.path['recordId'][:100]!r}")
        return 200, schemas.RecordTrailResponse(data=trail.as_dict(), meta={})

    # --- §6: the operator -----------------------------------------------------------------
    def put_merchant(self, call: Call) -> tuple[int, BaseModel]:
        merchant_id = _merchant_id(call.path["merchantId"])
        given = call.body.model_dump(exclude_unset=True) if call.body is not None else {}
        if given.get("merchantId", merchant_id) != merchant_id:
            raise ApiError(400, f"merchantId {given['merchantId']!r} in the body is not {merchant_id!r} of the path")
        try:
            created = self.registry.put(parse_spec({**given, "merchantId": merchant_id}))
        except InvalidMerchant as error:
            raise ApiError(400, str(error)) from None
        except SecretKeyError as error:  # the deployment's setting, not the request: no secret in it
            raise ApiError(503, str(error)) from None
        return (201 if created else 200), _merchant_response(self.registry, merchant_id)

    def list_merchants(self, call: Call) -> tuple[int, BaseModel]:
        merchants = self.registry.list()
        return 200, schemas.MerchantListResponse(
            data=[schemas.MerchantView(**m.public()) for m in merchants], meta={"count": len(merchants)}
        )

    def disable_merchant(self, call: Call) -> tuple[int, BaseModel]:
        merchant_id = _merchant_id(call.path["merchantId"])
        if self.registry.get(merchant_id) is None:
            raise ApiError(404, f"no merchant {merchant_id!r}")
        self.registry.set_enabled(merchant_id, False)
        return 200, _merchant_response(self.registry, merchant_id)

    def sync_health(self, call: Call) -> tuple[int, BaseModel]:
        query = call.query
        syncs, totals = self.store.list_syncs(
            merchant=query.get("merchantId"), status_code=query.get("statusCode"), since=query.get("since"),
            until=query.get("until"), limit=query["limit"] + 1, after=_decode_cursor(query.get("cursor")),
        )
        page, more = syncs[: query["limit"]], len(syncs) > query["limit"]
        next_cursor = _encode_cursor(page[-1]) if more and page else None
        return 200, schemas.SyncHealthResponse(
            data=[_history_item(s) for s in page],
            meta={"totals": {str(code): count for code, count in sorted(totals.items())}, "nextCursor": next_cursor},
        )

    def health(self, call: Call) -> tuple[int, BaseModel]:
        try:
            reachable = self.store.ping()
        except Exception:
            reachable = False
        if reachable:
            return 200, schemas.Health(status="ok", stateStore="reachable")
        return 503, schemas.Health(status="degraded", stateStore="unreachable")


def _merchant_id(text: str) -> str:
    try:
        return check_merchant_id(text)
    except ValueError as error:
        raise ApiError(400, str(error)) from None


def _merchant_response(registry: MerchantRegistry, merchant_id: str) -> schemas.MerchantResponse:
    return schemas.MerchantResponse(data=schemas.MerchantView(**registry.get(merchant_id).public()), meta={})


def _encode_cursor(sync: SyncRecord) -> str:
    return base64.urlsafe_b64encode(f"{sync.requested_at.isoformat()}|{sync.sync_id}".encode()).decode()


def _decode_cursor(text: str | None) -> tuple[datetime, str] | None:
    if not text:
        return None
    try:
        stamp, _, sync_id = base64.urlsafe_b64decode(text.encode()).decode().partition("|")
        return parse_time(stamp), sync_id
    except (ValueError, UnicodeDecodeError):
        raise ApiError(400, "cursor is not one this API issued") from None


def _time_field(text: str | None, name: str):
    if text is None:
        return None
    try:
        return parse_time(text)
    except ValueError as error:
        raise ApiError(400, f"{name}: {error}") from None


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
        merchantId=sync.merchant_id,
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
        parkedCount=sync.parked,
        invalidHeldCount=sync.invalid_held,
        finishedUtc=format_time(sync.finished_at),
    )


MERCHANT_PARAM = QueryParam(
    "merchantId", "Operator token only: the merchant this call is about (required for it).", kind="string"
)


def operations(api: SyncApi) -> list[Operation]:
    limit = QueryParam("limit", "How many syncs to return, newest first.", minimum=1, maximum=100, default=20)
    auth_errors = (401, 403)
    per_merchant = (MERCHANT_PARAM,)
    return [
        Operation("GET", "/sync/{entityType}", "getSyncStatus", "Get the last successful sync of an entity type",
                  api.status, READ, (200, schemas.SyncStatusResponse), (400, *auth_errors, 404, 500, 503),
                  query=per_merchant),
        Operation("PUT", "/sync/{entityType}", "enqueueSync", "Enqueue a latest sync of an entity type",
                  api.enqueue_latest, WRITE, (202, schemas.SyncAcceptedResponse), (400, *auth_errors, 404, 409, 429, 500, 503),
                  query=per_merchant,
                  description="Only one sync per entity type can be queued or in progress at a time: 429 otherwise."),
        Operation("POST", "/sync/{entityType}/latest", "enqueueLatestSync",
                  "Enqueue a sync from the end of the last successful sync up to syncTo",
                  api.enqueue_latest, WRITE, (202, schemas.SyncAcceptedResponse),
                  (400, *auth_errors, 404, 409, 413, 429, 500, 503), body=schemas.LatestSyncRequest, query=per_merchant),
        Operation("POST", "/sync/{entityType}/historic", "enqueueHistoricSync",
                  "Enqueue a sync of the records updated in [start, end)",
                  api.enqueue_historic, WRITE, (202, schemas.SyncAcceptedResponse),
                  (400, *auth_errors, 404, 409, 413, 429, 500, 503),
                  body=schemas.HistoricSyncRequest, body_required=True, query=per_merchant),
        Operation("GET", "/sync/{entityType}/history", "getSyncHistory", "List the syncs of an entity type, newest first",
                  api.history, READ, (200, schemas.SyncHistoryResponse), (400, *auth_errors, 404, 500, 503),
                  query=(limit, MERCHANT_PARAM)),
        Operation("GET", "/batches/{batchId}", "getBatch", "Get a gateway batch as recorded",
                  api.batch, READ, (200, schemas.BatchResponse), (400, *auth_errors, 404, 500, 503), query=per_merchant),
        Operation("GET", "/records/{entityType}/{recordId}", "explainRecord",
                  "Why a record is, or is not, at the gateway: its state and its trail",
                  api.record, READ, (200, schemas.RecordTrailResponse), (400, *auth_errors, 404, 500, 503),
                  query=per_merchant),
        Operation("PUT", "/merchants/{merchantId}", "putMerchant", "Add a merchant, or update the fields given",
                  api.put_merchant, OPERATOR, (200, schemas.MerchantResponse), (400, *auth_errors, 413, 500, 503),
                  body=schemas.MerchantPutRequest, body_required=True, also_ok=(201,),
                  description="201 when the merchant was added, 200 when it was updated. Tokens are never returned."),
        Operation("GET", "/merchants", "listMerchants", "List the merchants (no secret)",
                  api.list_merchants, OPERATOR, (200, schemas.MerchantListResponse), (*auth_errors, 500, 503)),
        Operation("DELETE", "/merchants/{merchantId}", "disableMerchant", "Disable a merchant; its history is kept",
                  api.disable_merchant, OPERATOR, (200, schemas.MerchantResponse), (400, *auth_errors, 404, 500, 503)),
        Operation("GET", "/syncs", "listSyncs", "The sync health list: every merchant's syncs, newest first",
                  api.sync_health, OPERATOR, (200, schemas.SyncHealthResponse), (400, *auth_errors, 500, 503),
                  query=(
                      QueryParam("merchantId", "Only this merchant's syncs.", kind="string"),
                      QueryParam("statusCode", "Only syncs with this status code.", minimum=1000, maximum=9999),
                      QueryParam("since", "Requested at or after this time.", kind="time"),
                      QueryParam("until", "Requested before this time.", kind="time"),
                      QueryParam("limit", "Page size.", minimum=1, maximum=500, default=50),
                      QueryParam("cursor", "meta.nextCursor of the previous page.", kind="string"),
                  )),
        Operation("GET", "/healthz", "health", "Health: the state store is reachable",
                  api.health, PUBLIC, (200, schemas.Health), (503,)),
    ]


def _bearer(request: Request) -> str | None:
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    token = token.strip()
    return token if scheme.lower() == "bearer" and token else None


def _authorize(operation: Operation, principal: Principal | None, requested: str | None, registry: MerchantRegistry) -> str:
    """The merchant this call is about, or the ApiError that refuses it."""
    if principal is None:
        raise ApiError(401, "a valid bearer token is required", {"WWW-Authenticate": "Bearer"})
    if operation.access == OPERATOR:
        if not principal.is_operator:
            raise ApiError(403, "this call needs the operator token")
        return DEFAULT_MERCHANT
    if operation.access == WRITE and not principal.can_write:
        raise ApiError(403, "this token may only read")
    if principal.is_operator:
        if requested is None:
            raise ApiError(400, "the operator token names the merchant: add ?merchantId=ID")
        if registry.get(requested) is None:
            raise ApiError(404, f"no merchant {requested!r}")
        return requested
    if requested is not None and requested != principal.merchant_id:  # as if it did not exist
        raise ApiError(404, f"no merchant {requested!r}")
    return principal.merchant_id


def _endpoint(operation: Operation, registry: MerchantRegistry):
    async def endpoint(request: Request) -> Response:
        merchant = DEFAULT_MERCHANT
        if operation.access != PUBLIC:
            token = _bearer(request)
            principal = await run_in_threadpool(registry.principal_for, token) if token else None
            if principal is None:  # before anything else is read: no token learns how a query is checked
                raise ApiError(401, "a valid bearer token is required", {"WWW-Authenticate": "Bearer"})
            query = _query(request, operation)
            requested = query.get("merchantId") if operation.per_merchant else None
            merchant = await run_in_threadpool(_authorize, operation, principal, requested, registry)
            request.state.merchant = None if principal.is_operator and not operation.per_merchant else merchant
        else:
            query = {}
        call = Call(
            entity=_entity(request.path_params.get("entityType")),
            body=await _body(request, operation),
            query=query,
            path=dict(request.path_params),
            merchant=merchant,
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


def _query(request: Request, operation: Operation) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for param in operation.query:
        text = request.query_params.get(param.name)
        if text is None:
            if param.default is not None:
                values[param.name] = param.default
            continue
        values[param.name] = _query_value(param, text)
    return values


def _query_value(param: QueryParam, text: str) -> Any:
    if param.kind == "time":
        return _time_field(text, param.name)
    if param.kind == "string":
        if param.name == "merchantId":
            return _merchant_id(text)
        if len(text) > 512:
            raise ApiError(400, f"{param.name} is too long")
        return text
    try:
        value = int(text)
    except ValueError:
        value = None
    if value is None or not param.minimum <= value <= param.maximum:
        raise ApiError(400, f"{param.name} must be an integer from {param.minimum} to {param.maximum}")
    return value


class AccessLog:
    """One structured line per request: method, path, status, duration, merchant. The query
    string is left out (it may hold nothing secret today, but a log line should never need care),
    and tokens are never read here."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = {"code": 500}

        async def send_and_note(message) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_note)
        finally:
            access_log.info(
                json.dumps(
                    {
                        "method": scope["method"],
                        "path": scope["path"],
                        "status": status["code"],
                        "durationMs": round((time.perf_counter() - started) * 1000, 2),
                        "merchant": scope.get("state", {}).get("merchant"),
                    }
                )
            )


def create_app(store: StateStore, registry: MerchantRegistry | None = None, reap: Reap | None = None) -> Starlette:
    from .openapi import build_openapi

    registry = registry or MerchantRegistry(store)
    api = SyncApi(store, registry, reap)
    ops = operations(api)
    document = orjson.dumps(build_openapi(ops, BASE_PATH))

    async def openapi(request: Request) -> Response:
        return Response(document, media_type="application/json")

    # a record id may hold a slash: the route takes the rest of the path
    routes = [
        Route(BASE_PATH + op.path.replace("{recordId}", "{recordId:path}"), _endpoint(op, registry), methods=[op.method])
        for op in ops
    ]
    routes += [Route(BASE_PATH + "/openapi.json", openapi, methods=["GET"]), Route("/openapi.json", openapi, methods=["GET"])]
    health = next(op for op in ops if op.operation_id == "health")
    routes += [Route("/healthz", _endpoint(health, registry), methods=["GET"])]

    async def server_error(request: Request, error: Exception) -> Response:
        return envelope(500, "the server could not answer this request; it has been logged")

    app = Starlette(
        routes=routes,
        exception_handlers=HANDLERS,
        middleware=[Middleware(AccessLog), Middleware(ServerErrorMiddleware, handler=server_error)],
    )
    app.state.api = api
    return app

"""The sandbox HTTP server (Starlette): product service (CONTRACT §2), gateway catalogue (§3),
and an admin surface under /_admin for tests and demos."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass
from pathlib import Path

import orjson
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from ..domain import parse_time, utcnow
from .catalogue import Catalogue, decode_cursor, to_micros
from .faults import Fault, make_fault
from .gateway import ENTITY_TYPES, GatewayCatalogue

log = logging.getLogger(__name__)

KINDS = ("products", "collections")
PROBLEM_BASE = "http://bento-gousto.com/api-docs/"
MAX_BATCH_ITEMS = 1000


@dataclass
class SandboxConfig:
    products: int = 5000
    collections: int = 200
    seed: int = 42
    faults: str = "none"
    product_token: str = "sandbox-product-token"
    gateway_token: str = "sandbox-gateway-token"
    queue_delay: float = 0.02  # seconds a batch stays QUEUED
    process_delay: float = 0.03  # seconds a batch stays PROCESSING
    state_file: str | None = None  # where the gateway's holdings survive a restart


# --- response helpers ------------------------------------------------------------------
def raw_json(body: bytes, status: int = 200, headers: dict | None = None) -> Response:
    return Response(body, status_code=status, media_type="application/json", headers=headers)


def problem(status: int, kind: str, title: str, detail: str | None = None, headers: dict | None = None) -> Response:
    body = {"type": PROBLEM_BASE + kind, "title": title, "status": status}
    if detail:
        body["detail"] = detail
    return Response(orjson.dumps(body), status_code=status, media_type="application/problem+json", headers=headers)


def envelope(status: int, title: str, detail: str, headers: dict | None = None) -> Response:
    body = {"error": [{"status": str(status), "title": title, "detail": detail}]}
    return raw_json(orjson.dumps(body), status, headers)


def bearer(request: Request) -> str | None:
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


class Sandbox:
    def __init__(self, config: SandboxConfig):
        self.config = config
        self.catalogue = Catalogue(config.products, config.collections, config.seed)
        self.gateway = GatewayCatalogue(
            {"PRODUCT": self.catalogue.products.refused, "COLLECTION": self.catalogue.collections.refused}
        )
        self.fault: Fault = make_fault(config.faults)
        self.requests = {"product": 0, "gateway": 0}
        if config.state_file and Path(config.state_file).exists():
            self.gateway.restore(Path(config.state_file).read_bytes())

    def save(self) -> None:
        if self.config.state_file:
            path = Path(self.config.state_file)
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp")
            tmp.write_bytes(self.gateway.snapshot())
            tmp.replace(path)

    # --- product service ----------------------------------------------------------------
    def with_faults(self, side: str, handler):
        """Wrap a handler of one side with the current fault: delay, answer early, or spoil
        the answer after the work is done."""

        async def endpoint(request: Request) -> Response:
            self.requests[side] += 1
            fault = self.fault
            if not fault.applies(side):
                return await handler(request)
            fault.counts[side] += 1
            if delay := fault.delay(side):
                await asyncio.sleep(delay)
            early = fault.before(side, request)
            if early is not None:
                return early
            return fault.after(side, request, await handler(request))

        return endpoint

    def _product_guard(self, request: Request) -> Response | None:
        token = bearer(request)
        if token is None:
            return problem(401, "unauthorised", "No authorisation token provided")
        if token != self.config.product_token:
            return problem(401, "unauthorised", "Unauthorised token provided")
        return None

    async def list_records(self, request: Request) -> Response:
        if (refusal := self._product_guard(request)) is not None:
            return refusal
        kind = request.url.path.strip("/")
        query = request.query_params
        try:
            limit = int(query.get("limit", "100"))
            if not 1 <= limit <= MAX_BATCH_ITEMS:
                raise ValueError
        except ValueError:
            return invalid_request("limit", "limit must be an integer from 1 to 1000")
        bounds = {}
        for name in ("updatedSince", "updatedBefore"):
            text = query.get(name)
            try:
                bounds[name] = to_micros(parse_time(text)) if text else None
            except ValueError:
                return invalid_request(name, f"{name} is not an ISO-8601 time: {text!r}")
        cursor = None
        if query.get("cursor"):
            try:
                cursor = decode_cursor(query["cursor"])
            except ValueError:
                return invalid_request("cursor", "cursor is not one this service issued")
        records, next_cursor = self.catalogue.entity(kind).page(
            bounds["updatedSince"], bounds["updatedBefore"], limit, cursor
        )
        meta = orjson.dumps({"nextCursor": next_cursor})
        return raw_json(b'{"data":[' + b",".join(records) + b'],"meta":' + meta + b"}")

    async def get_record(self, request: Request) -> Response:
        if (refusal := self._product_guard(request)) is not None:
            return refusal
        kind = request.url.path.strip("/").split("/")[0]
        raw = self.catalogue.entity(kind).get(request.path_params["record_id"])
        if raw is None:
            return problem(404, "entity-not-found", "Entity not found", f"no {kind[:-1]} {request.path_params['record_id']!r}")
        return raw_json(raw)

    # --- gateway catalogue ------------------------------------------------------------
    def _gateway_guard(self, request: Request) -> Response | None:
        token = bearer(request)
        if token is None:
            return envelope(401, "Unauthorized", "no bearer token")
        if token != self.config.gateway_token:
            return envelope(401, "Unauthorized", "unknown bearer token")
        return None

    async def submit_batch(self, request: Request) -> Response:
        if (refusal := self._gateway_guard(request)) is not None:
            return refusal
        entity_type = request.path_params["entity_type"]
        if entity_type not in ENTITY_TYPES:
            return envelope(400, "Bad Request", f"entityType must be PRODUCT or COLLECTION, not {entity_type!r}")
        key = request.headers.get("idempotency-key", "").strip()
        if not key:
            return envelope(400, "Bad Request", "the Idempotency-Key header is required")
        raw = await request.body()
        limit = self.fault.max_body_bytes() if self.fault.applies("gateway") else None
        if limit is not None and len(raw) > limit:
            self.fault.hit()
            return envelope(413, "Payload Too Large", f"the body is {len(raw)} bytes; at most {limit} are taken")
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError as error:
            return envelope(400, "Bad Request", f"body is not JSON: {error}")
        operation = body.get("operation") if isinstance(body, dict) else None
        field = {"UPSERT": "records", "DELETE": "ids"}.get(operation)
        if field is None:
            return envelope(400, "Bad Request", "operation must be UPSERT or DELETE")
        items = body.get(field)
        if not isinstance(items, list) or not items:
            return envelope(400, "Bad Request", f"{field} must be a non-empty array")
        if len(items) > MAX_BATCH_ITEMS:
            return envelope(400, "Bad Request", f"{len(items)} items; a batch holds at most {MAX_BATCH_ITEMS}")
        batch, is_new = self.gateway.submit(entity_type, operation, items, key)
        if is_new:
            self._schedule(batch)
        return raw_json(orjson.dumps({"data": {"batchId": batch.batch_id}}), 202)

    def _schedule(self, batch) -> None:
        loop = asyncio.get_running_loop()
        number = self.gateway.stats["batches"]

        def finish() -> None:
            if self.fault.applies("gateway") and self.fault.batch_fails(number):
                self.gateway.fail(batch, "batch rejected by the catalogue")
            else:
                self.gateway.complete(batch)

        def process() -> None:
            self.gateway.process(batch)
            loop.call_later(self.config.process_delay, finish)

        loop.call_later(self.config.queue_delay, process)

    async def get_batch(self, request: Request) -> Response:
        if (refusal := self._gateway_guard(request)) is not None:
            return refusal
        batch = self.gateway.batches.get(request.path_params["batch_id"])
        if batch is None:
            return envelope(404, "Not Found", f"no batch {request.path_params['batch_id']!r}")
        return raw_json(orjson.dumps({"data": batch.to_wire()}))

    # --- admin ----------------------------------------------------------------------
    async def healthz(self, request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def admin_source(self, request: Request) -> Response:
        catalogue = self.catalogue.entity(_kind(request))
        body = orjson.dumps(
            {
                "records": [orjson.Fragment(catalogue.records[key[1]]) for key in catalogue.keys],
                "invalid": sorted(catalogue.invalid & catalogue.records.keys()),
                "refused": sorted(catalogue.refused & catalogue.records.keys()),
            }
        )
        return raw_json(body)

    async def admin_change(self, request: Request) -> Response:
        kind = _kind(request)
        action = request.path_params["action"]
        try:
            body = orjson.loads(await request.body() or b"{}")
        except orjson.JSONDecodeError:
            return envelope(400, "Bad Request", "body is not JSON")
        ids = body.get("ids")
        count = int(body.get("count", 0))
        if action == "update":
            changed = self.catalogue.update(kind, ids=ids, count=count, now=utcnow())
        elif action == "create":
            changed = self.catalogue.create(kind, count=count, now=utcnow())
        elif action == "delete":
            changed = self.catalogue.delete(kind, ids=ids, count=count)
        else:
            return envelope(404, "Not Found", f"no admin action {action!r}")
        return JSONResponse({"ids": changed})

    async def admin_gateway(self, request: Request) -> Response:
        entity_type = request.path_params["entity_type"]
        if entity_type not in ENTITY_TYPES:
            return envelope(404, "Not Found", f"no entity type {entity_type!r}")
        held = self.gateway.holdings[entity_type]
        return raw_json(orjson.dumps({"records": {k: orjson.Fragment(v) for k, v in held.items()}}))

    async def admin_stats(self, request: Request) -> Response:
        return JSONResponse(
            {
                "requests": self.requests,
                "gateway": self.gateway.stats,
                "fault": self.fault.name,
                "faultSides": list(self.fault.sides),
                "faultsInjected": self.fault.injected,
            }
        )

    async def admin_faults(self, request: Request) -> Response:
        try:
            name = orjson.loads(await request.body()).get("name", "none")
            self.fault = make_fault(name)
        except (orjson.JSONDecodeError, AttributeError, ValueError) as error:
            return envelope(400, "Bad Request", str(error))
        return JSONResponse({"fault": self.fault.name})


def invalid_request(field: str, detail: str) -> Response:
    body = {
        "type": PROBLEM_BASE + "invalid-request",
        "title": "Invalid request",
        "status": 400,
        "errors": [{"title": f"invalid {field}", "detail": detail}],
        "detail": detail,
    }
    return Response(orjson.dumps(body), status_code=400, media_type="application/problem+json")


def _kind(request: Request) -> str:
    kind = request.path_params["kind"]
    if kind not in KINDS:
        raise HTTPException(404, f"no such kind {kind!r}")
    return kind


def create_app(config: SandboxConfig | None = None) -> Starlette:
    sandbox = Sandbox(config or SandboxConfig())

    @contextlib.asynccontextmanager
    async def lifespan(app):
        yield
        sandbox.save()

    async def not_found(request: Request, exc: Exception) -> Response:
        status = getattr(exc, "status_code", 500)
        return envelope(status, "Error", str(getattr(exc, "detail", exc)))

    routes = [
        Route("/healthz", sandbox.healthz),
        Route("/products", sandbox.with_faults("product", sandbox.list_records)),
        Route("/collections", sandbox.with_faults("product", sandbox.list_records)),
        Route("/products/{record_id:path}", sandbox.with_faults("product", sandbox.get_record)),
        Route("/collections/{record_id:path}", sandbox.with_faults("product", sandbox.get_record)),
        Route("/product-gateway/v1/catalog/batches/{batch_id}", sandbox.with_faults("gateway", sandbox.get_batch)),
        Route(
            "/product-gateway/v1/catalog/{entity_type}/batches",
            sandbox.with_faults("gateway", sandbox.submit_batch),
            methods=["POST"],
        ),
        Route("/_admin/source/{kind}", sandbox.admin_source),
        Route("/_admin/source/{kind}/{action}", sandbox.admin_change, methods=["POST"]),
        Route("/_admin/gateway/{entity_type}", sandbox.admin_gateway),
        Route("/_admin/stats", sandbox.admin_stats),
        Route("/_admin/faults", sandbox.admin_faults, methods=["PUT"]),
    ]
    app = Starlette(routes=routes, lifespan=lifespan, exception_handlers={HTTPException: not_found})
    app.state.sandbox = sandbox
    return app


def serve(config: SandboxConfig, host: str = "127.0.0.1", port: int = 8765) -> None:
    import uvicorn

    uvicorn.run(create_app(config), host=host, port=port, log_level="warning")

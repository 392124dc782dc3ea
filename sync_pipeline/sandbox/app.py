"""The sandbox HTTP server (Starlette): product services (CONTRACT §2), the gateway catalogue
(§3), for many merchants (§6), and an admin surface under /_admin for tests and demos.

Every merchant serves the same routes: the merchant `default` at the root, another merchant
`ID` under `/m/ID` (see `merchants`). The gateway is one, at the root; its bearer token says
whose catalogue a batch goes to. Admin routes (`{prefix}` is empty for `default`):

- `GET {prefix}/_admin/source/{kind}`: the source records, invalid and refused ids.
- `POST {prefix}/_admin/source/{kind}/{update|create|delete}` `{"ids"?, "count"?,
  "updatedAtOffsetSeconds"?}`: change the source; the offset (e.g. -30) dates created or
  updated records that many seconds from now, so a late commit can land inside a window a
  sync has already read.
- `POST {prefix}/_admin/source/{kind}/put` with a JSON array of records: each is stored and
  served exactly as sent (big integers, long decimals, `1e400` and all); `id` and a
  parseable `updatedAt` are required, else 400 and nothing is stored.
- `GET {prefix}/_admin/gateway/{ENTITY}`: what the gateway holds for the merchant's token.
- `PUT {prefix}/_admin/poison` `{"ids": [...]}`: the gateway answers 400 to any UPSERT batch
  of the merchant holding one of these ids (an empty list heals it).
- `PUT {prefix}/_admin/faults` `{"name"}`: the merchant's fault (see `faults`).
- `GET {prefix}/_admin/stats`: the merchant's requests, gateway stats and fault; at the root
  also how many merchants there are and the requests of all of them.
- `PUT /_admin/merchants/{id}` `{"products"?, "collections"?, "seed"?, "faults"?}`: create a
  merchant, or give it a new source catalogue (its gateway holdings stay); `GET
  /_admin/merchants` lists the merchants other than `default`.

Batches run through QUEUED and PROCESSING for `queue_delay` and `process_delay` seconds (or,
with `process_delay_max`, a random time between the two for each batch); both may be 0, and a
batch then completes as soon as the server's loop gets to it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import orjson
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Mount, Route

from ..domain import parse_time, utcnow
from .catalogue import decode_cursor, to_micros
from .exactjson import loads_exact
from .faults import make_fault
from .gateway import ENTITY_TYPES, BadBatch, Batch, Gateway, read_batch
from .merchants import (
    DEFAULT_MERCHANT,
    GATEWAY_TOKEN,
    PRODUCT_TOKEN,
    CatalogueSpec,
    MerchantSandbox,
    is_merchant_id,
    merchant_prefix,
    merchant_seed,
    numbered_merchant_id,
)

log = logging.getLogger(__name__)

KINDS = ("products", "collections")
MAX_LIMIT = 1000  # the most records a list page may be asked for
PROBLEM_BASE = "http://bento-gousto.com/api-docs/"


@dataclass
class SandboxConfig:
    products: int = 5000
    collections: int = 200
    seed: int = 42
    faults: str = "none"
    product_token: str = PRODUCT_TOKEN
    gateway_token: str = GATEWAY_TOKEN
    queue_delay: float = 0.02  # seconds a batch stays QUEUED (0: no wait)
    process_delay: float = 0.03  # seconds a batch stays PROCESSING (0: no wait)
    process_delay_max: float | None = None  # if set, each batch PROCESSING for a random time up to this
    state_file: str | None = None  # where the gateway's holdings survive a restart
    merchants: int = 0  # merchants besides `default` made at start: m0001, m0002, ...
    merchant_products: int = 2000  # the catalogue of a merchant made without one given
    merchant_collections: int = 50


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


def invalid_request(field: str, detail: str) -> Response:
    body = {
        "type": PROBLEM_BASE + "invalid-request",
        "title": "Invalid request",
        "status": 400,
        "errors": [{"title": f"invalid {field}", "detail": detail}],
        "detail": detail,
    }
    return Response(orjson.dumps(body), status_code=400, media_type="application/problem+json")


def bearer(request: Request) -> str | None:
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


def bad_request(detail: str) -> Response:
    return envelope(400, "Bad Request", detail)


class Sandbox:
    def __init__(self, config: SandboxConfig):
        self.config = config
        self.gateway = Gateway()
        self.default = self._make_merchant(DEFAULT_MERCHANT, CatalogueSpec(config.products, config.collections, config.seed))
        _ = self.default.catalogue  # generated now, as always: /healthz answers once it is ready
        self.merchants: dict[str, MerchantSandbox] = {}  # every merchant but `default`
        self.by_gateway_token = {self.default.gateway_token: self.default}
        for number in range(1, config.merchants + 1):
            self.put_merchant(numbered_merchant_id(number))
        if config.state_file and Path(config.state_file).exists():
            self.restore(Path(config.state_file).read_bytes())

    # --- merchants ----------------------------------------------------------------------
    def _make_merchant(self, merchant_id: str, spec: CatalogueSpec, faults: str | None = None) -> MerchantSandbox:
        config = self.config
        return MerchantSandbox.make(merchant_id, spec, faults or config.faults, config.product_token, config.gateway_token)

    def merchant_spec(
        self, merchant_id: str, products: int | None = None, collections: int | None = None, seed: int | None = None
    ) -> CatalogueSpec:
        """A merchant's catalogue: the sizes for merchants and a seed from the base seed and
        its id, unless told otherwise."""
        config = self.config
        return CatalogueSpec(
            config.merchant_products if products is None else products,
            config.merchant_collections if collections is None else collections,
            merchant_seed(config.seed, merchant_id) if seed is None else seed,
        )

    def put_merchant(
        self, merchant_id: str, spec: CatalogueSpec | None = None, faults: str | None = None
    ) -> tuple[MerchantSandbox, bool]:
        """Make a merchant, or give one a new source catalogue (and fault, if named); its
        tokens and gateway holdings stay. True when it is new."""
        spec = spec or self.merchant_spec(merchant_id)
        merchant = self.merchants.get(merchant_id)
        if merchant is not None:
            merchant.replace_catalogue(spec)
            if faults is not None:
                merchant.fault = make_fault(faults)
            return merchant, False
        merchant = self._make_merchant(merchant_id, spec, faults)
        self.merchants[merchant_id] = merchant
        self.by_gateway_token[merchant.gateway_token] = merchant
        return merchant, True

    def merchant_at(self, request: Request) -> MerchantSandbox | None:
        """The merchant whose prefix the request's path is under (none: `default`)."""
        merchant_id = request.path_params.get("merchant_id")
        return self.default if merchant_id is None else self.merchants.get(merchant_id)

    # --- the state file ---------------------------------------------------------------
    def snapshot(self) -> bytes:
        """Every token's holdings: the default merchant's at the top (the shape from before
        merchants), the others under "merchants" with the catalogue they were made with."""
        merchants = {
            merchant_id: {"catalogue": merchant.spec.to_json(), "holdings": merchant.gateway.holdings_json()}
            for merchant_id, merchant in self.merchants.items()
        }
        return orjson.dumps({**self.default.gateway.holdings_json(), "merchants": merchants})

    def restore(self, data: bytes) -> None:
        saved = loads_exact(data, depth=2)
        self.default.gateway.restore(saved)
        for merchant_id, entry in saved.get("merchants", {}).items():
            merchant = loads_exact(entry.text, depth=3)
            spec = CatalogueSpec(**{name: value.value for name, value in merchant["catalogue"].items()})
            self.put_merchant(merchant_id, spec)[0].gateway.restore(merchant["holdings"])

    def save(self) -> None:
        if self.config.state_file:
            path = Path(self.config.state_file)
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp")
            tmp.write_bytes(self.snapshot())
            tmp.replace(path)

    # --- what every route goes through --------------------------------------------------
    async def through_fault(
        self, merchant: MerchantSandbox, side: str, request: Request, answer: Callable[[], Awaitable[Response]]
    ) -> Response:
        """Count a request of one side and pass it through the merchant's fault: delay,
        answer early, or spoil the answer after the work is done."""
        merchant.requests[side] += 1
        fault = merchant.fault
        if not fault.applies(side):
            return await answer()
        fault.counts[side] += 1
        if delay := fault.delay(side):
            await asyncio.sleep(delay)
        early = fault.before(side, request)
        if early is not None:
            return early
        return fault.after(side, request, await answer())

    def product_endpoint(self, handler, kind: str):
        """A product service route of the merchant in the path, behind its token and fault."""

        async def endpoint(request: Request) -> Response:
            merchant = self.merchant_at(request)
            if merchant is None:
                return problem(404, "not-found", "Not found", f"no merchant {request.path_params['merchant_id']!r}")

            async def answer() -> Response:
                token = bearer(request)
                if token is None:
                    return problem(401, "unauthorised", "No authorisation token provided")
                if token != merchant.product_token:
                    return problem(401, "unauthorised", "Unauthorised token provided")
                return await handler(request, merchant, kind)

            return await self.through_fault(merchant, "product", request, answer)

        return endpoint

    def gateway_endpoint(self, handler):
        """A gateway route for the merchant of the bearer token; requests with no known token
        go through the default merchant's fault and are refused."""

        async def endpoint(request: Request) -> Response:
            token = bearer(request)
            merchant = self.by_gateway_token.get(token) if token else None

            async def answer() -> Response:
                if token is None:
                    return envelope(401, "Unauthorized", "no bearer token")
                if merchant is None:
                    return envelope(401, "Unauthorized", "unknown bearer token")
                return await handler(request, merchant)

            return await self.through_fault(merchant or self.default, "gateway", request, answer)

        return endpoint

    def admin_endpoint(self, handler):
        """An admin route of the merchant in the path."""

        async def endpoint(request: Request) -> Response:
            merchant = self.merchant_at(request)
            if merchant is None:
                return envelope(404, "Not Found", f"no merchant {request.path_params['merchant_id']!r}")
            return await handler(request, merchant)

        return endpoint

    # --- product service ----------------------------------------------------------------
    async def list_records(self, request: Request, merchant: MerchantSandbox, kind: str) -> Response:
        query = request.query_params
        try:
            limit = int(query.get("limit", "100"))
            if not 1 <= limit <= MAX_LIMIT:
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
        records, next_cursor = merchant.catalogue.entity(kind).page(
            bounds["updatedSince"], bounds["updatedBefore"], limit, cursor
        )
        meta = orjson.dumps({"nextCursor": next_cursor})
        return raw_json(b'{"data":[' + b",".join(records) + b'],"meta":' + meta + b"}")

    async def get_record(self, request: Request, merchant: MerchantSandbox, kind: str) -> Response:
        record_id = request.path_params["record_id"]
        raw = merchant.catalogue.entity(kind).get(record_id)
        if raw is None:
            return problem(404, "entity-not-found", "Entity not found", f"no {kind[:-1]} {record_id!r}")
        return raw_json(raw)

    # --- gateway catalogue ------------------------------------------------------------
    async def submit_batch(self, request: Request, merchant: MerchantSandbox) -> Response:
        entity_type = request.path_params["entity_type"]
        if entity_type not in ENTITY_TYPES:
            return bad_request(f"entityType must be PRODUCT or COLLECTION, not {entity_type!r}")
        key = request.headers.get("idempotency-key", "").strip()
        if not key:
            return bad_request("the Idempotency-Key header is required")
        raw = await request.body()
        fault = merchant.fault
        limit = fault.max_body_bytes() if fault.applies("gateway") else None
        if limit is not None and len(raw) > limit:
            fault.hit()
            return envelope(413, "Payload Too Large", f"the body is {len(raw)} bytes; at most {limit} are taken")
        try:
            operation, items = read_batch(raw)
        except BadBatch as error:
            return bad_request(str(error))
        if (poisoned := merchant.gateway.poison_in(operation, items)) is not None:
            return bad_request(f"record {poisoned}: field meta is not acceptable")
        batch, is_new = self.gateway.submit(merchant.merchant_id, merchant.gateway, entity_type, operation, items, key)
        if is_new:
            self._schedule(batch, merchant)
        return raw_json(orjson.dumps({"data": {"batchId": batch.batch_id}}), 202)

    def _schedule(self, batch: Batch, merchant: MerchantSandbox) -> None:
        loop = asyncio.get_running_loop()
        number = merchant.gateway.stats["batches"]

        def finish() -> None:
            if merchant.fault.applies("gateway") and merchant.fault.batch_fails(number):
                merchant.gateway.fail(batch, "batch rejected by the catalogue")
            else:
                merchant.gateway.complete(batch)

        def process() -> None:
            batch.status = "PROCESSING"
            low, high = self.config.process_delay, self.config.process_delay_max
            loop.call_later(low if high is None else random.uniform(low, high), finish)

        loop.call_later(self.config.queue_delay, process)

    async def get_batch(self, request: Request, merchant: MerchantSandbox) -> Response:
        batch = self.gateway.batch(merchant.merchant_id, request.path_params["batch_id"])
        if batch is None:
            return envelope(404, "Not Found", f"no batch {request.path_params['batch_id']!r}")
        return raw_json(orjson.dumps({"data": batch.to_wire()}))

    # --- admin ----------------------------------------------------------------------
    async def healthz(self, request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def admin_source(self, request: Request, merchant: MerchantSandbox) -> Response:
        catalogue = merchant.catalogue.entity(_kind(request))
        body = orjson.dumps(
            {
                "records": [orjson.Fragment(catalogue.records[key[1]]) for key in catalogue.keys],
                "invalid": sorted(catalogue.invalid & catalogue.records.keys()),
                "refused": sorted(catalogue.refused & catalogue.records.keys()),
            }
        )
        return raw_json(body)

    async def admin_change(self, request: Request, merchant: MerchantSandbox) -> Response:
        kind = _kind(request)
        action = request.path_params["action"]
        raw = await request.body()
        if action == "put":
            try:
                records = records_to_put(raw)
            except ValueError as error:
                return bad_request(str(error))
            return JSONResponse({"ids": merchant.catalogue.put_texts(kind, records)})
        try:
            body = orjson.loads(raw or b"{}")
            if not isinstance(body, dict):
                raise ValueError("the body must be a JSON object")
            ids, count = body.get("ids"), int(body.get("count", 0))
            now = utcnow() + timedelta(seconds=_number(body.get("updatedAtOffsetSeconds", 0)))
        except (orjson.JSONDecodeError, TypeError, ValueError, OverflowError) as error:
            return bad_request(f"body is not an admin change: {error}")
        catalogue = merchant.catalogue
        if action == "update":
            changed = catalogue.update(kind, ids=ids, count=count, now=now)
        elif action == "create":
            changed = catalogue.create(kind, count=count, now=now)
        elif action == "delete":
            changed = catalogue.delete(kind, ids=ids, count=count)
        else:
            return envelope(404, "Not Found", f"no admin action {action!r}")
        return JSONResponse({"ids": changed})

    async def admin_gateway(self, request: Request, merchant: MerchantSandbox) -> Response:
        entity_type = request.path_params["entity_type"]
        if entity_type not in ENTITY_TYPES:
            return envelope(404, "Not Found", f"no entity type {entity_type!r}")
        held = merchant.gateway.holdings[entity_type]
        return raw_json(orjson.dumps({"records": {k: orjson.Fragment(v) for k, v in held.items()}}))

    async def admin_poison(self, request: Request, merchant: MerchantSandbox) -> Response:
        try:
            ids = orjson.loads(await request.body()).get("ids")
        except (orjson.JSONDecodeError, AttributeError):
            ids = None
        if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
            return bad_request('the body must be {"ids": [record ids]}')
        merchant.gateway.poisoned = set(ids)
        return JSONResponse({"ids": sorted(merchant.gateway.poisoned)})

    async def admin_stats(self, request: Request, merchant: MerchantSandbox) -> Response:
        stats = merchant.stats()
        if merchant is self.default:
            everyone = [self.default, *self.merchants.values()]
            stats["merchants"] = len(self.merchants)
            stats["allRequests"] = {side: sum(m.requests[side] for m in everyone) for side in ("product", "gateway")}
        return JSONResponse(stats)

    async def admin_faults(self, request: Request, merchant: MerchantSandbox) -> Response:
        try:
            merchant.fault = make_fault(orjson.loads(await request.body()).get("name", "none"))
        except (orjson.JSONDecodeError, AttributeError, ValueError) as error:
            return bad_request(str(error))
        return JSONResponse({"fault": merchant.fault.name})

    async def admin_put_merchant(self, request: Request) -> Response:
        merchant_id = request.path_params["merchant_id"]
        if not is_merchant_id(merchant_id) or merchant_id == DEFAULT_MERCHANT:
            return bad_request(f"merchant id {merchant_id!r} is not [a-z0-9][a-z0-9-]{{0,39}} or is 'default'")
        try:
            spec, faults = self._merchant_request(merchant_id, await request.body())
        except ValueError as error:
            return bad_request(str(error))
        merchant, created = self.put_merchant(merchant_id, spec, faults)
        return JSONResponse(merchant_json(request, merchant), status_code=201 if created else 200)

    def _merchant_request(self, merchant_id: str, raw: bytes) -> tuple[CatalogueSpec, str | None]:
        """The catalogue and fault a PUT /_admin/merchants/{id} body asks for."""
        try:
            body = orjson.loads(raw or b"{}")
        except orjson.JSONDecodeError as error:
            raise ValueError(f"body is not JSON: {error}") from None
        if not isinstance(body, dict):
            raise ValueError("the body must be a JSON object")
        sizes = {name: body.get(name) for name in ("products", "collections", "seed")}
        for name, value in sizes.items():
            minimum = None if name == "seed" else 0
            if value is not None and (type(value) is not int or (minimum is not None and value < minimum)):
                raise ValueError(f"{name} must be an integer" + ("" if minimum is None else f" >= {minimum}"))
        faults = body.get("faults")
        if faults is not None:
            make_fault(str(faults))  # raises ValueError naming the known faults
        return self.merchant_spec(merchant_id, **sizes), faults

    async def admin_merchants(self, request: Request) -> Response:
        return JSONResponse({"merchants": [merchant_json(request, m) for _, m in sorted(self.merchants.items())]})


def merchant_json(request: Request, merchant: MerchantSandbox) -> dict[str, str]:
    """A merchant as the admin surface shows it: where and how to reach it from this sandbox."""
    return {
        "merchantId": merchant.merchant_id,
        "productServiceUrl": str(request.base_url).rstrip("/") + merchant_prefix(merchant.merchant_id),
        "productServiceToken": merchant.product_token,
        "gatewayToken": merchant.gateway_token,
    }


def records_to_put(raw: bytes) -> list[tuple[str, int, bytes]]:
    """(id, updatedAt micros, exact text) of each record of a JSON array; ValueError when the
    body is not an array of objects with a non-empty string `id` and a parseable `updatedAt`."""
    try:
        elements = loads_exact(raw, depth=1)
    except (ValueError, UnicodeDecodeError) as error:
        raise ValueError(f"body is not JSON: {error}") from None
    if not isinstance(elements, list):
        raise ValueError("the body must be a JSON array of records")
    records = []
    for position, element in enumerate(elements):
        record = element.value
        record_id = record.get("id") if isinstance(record, dict) else None
        if not isinstance(record_id, str) or not record_id:
            raise ValueError(f"record {position} has no id")
        try:
            micros = to_micros(parse_time(record.get("updatedAt")))
        except ValueError:
            raise ValueError(f"record {record_id}: updatedAt {record.get('updatedAt')!r} is not a time") from None
        records.append((record_id, micros, element.text.encode()))
    return records


def _number(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"updatedAtOffsetSeconds must be a number, not {value!r}")
    return value


def _kind(request: Request) -> str:
    kind = request.path_params["kind"]
    if kind not in KINDS:
        raise HTTPException(404, f"no such kind {kind!r}")
    return kind


def merchant_routes(sandbox: Sandbox) -> list[BaseRoute]:
    """What every merchant serves: at the root for `default`, under /m/{merchant_id} for the rest."""
    product, admin = sandbox.product_endpoint, sandbox.admin_endpoint
    return [
        Route("/products", product(sandbox.list_records, "products")),
        Route("/collections", product(sandbox.list_records, "collections")),
        Route("/products/{record_id:path}", product(sandbox.get_record, "products")),
        Route("/collections/{record_id:path}", product(sandbox.get_record, "collections")),
        Route("/_admin/source/{kind}", admin(sandbox.admin_source)),
        Route("/_admin/source/{kind}/{action}", admin(sandbox.admin_change), methods=["POST"]),
        Route("/_admin/gateway/{entity_type}", admin(sandbox.admin_gateway)),
        Route("/_admin/poison", admin(sandbox.admin_poison), methods=["PUT"]),
        Route("/_admin/stats", admin(sandbox.admin_stats)),
        Route("/_admin/faults", admin(sandbox.admin_faults), methods=["PUT"]),
    ]


def create_app(config: SandboxConfig | None = None) -> Starlette:
    sandbox = Sandbox(config or SandboxConfig())

    @contextlib.asynccontextmanager
    async def lifespan(app):
        yield
        sandbox.save()

    async def not_found(request: Request, exc: Exception) -> Response:
        status = getattr(exc, "status_code", 500)
        return envelope(status, "Error", str(getattr(exc, "detail", exc)))

    gateway = sandbox.gateway_endpoint
    routes = [
        Route("/healthz", sandbox.healthz),
        Route("/product-gateway/v1/catalog/batches/{batch_id}", gateway(sandbox.get_batch)),
        Route("/product-gateway/v1/catalog/{entity_type}/batches", gateway(sandbox.submit_batch), methods=["POST"]),
        Route("/_admin/merchants", sandbox.admin_merchants),
        Route("/_admin/merchants/{merchant_id}", sandbox.admin_put_merchant, methods=["PUT"]),
        *merchant_routes(sandbox),
        Mount("/m/{merchant_id}", routes=merchant_routes(sandbox)),
    ]
    app = Starlette(routes=routes, lifespan=lifespan, exception_handlers={HTTPException: not_found})
    app.state.sandbox = sandbox
    return app


def serve(config: SandboxConfig, host: str = "127.0.0.1", port: int = 8765) -> None:
    import uvicorn

    uvicorn.run(create_app(config), host=host, port=port, log_level="warning")

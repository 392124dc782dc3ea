"""Every error of the Sync API becomes the seed 000 envelope, JSON, with the right status."""

from __future__ import annotations

import logging

import orjson
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from ..errors import EntityBusy

log = logging.getLogger(__name__)

TITLES = {
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    409: "Conflict",
    413: "Payload Too Large",
    429: "Too Many Requests",
    500: "Internal Server Error",
    503: "Service Unavailable",
}
RETRY_AFTER_SECONDS = 30


class ApiError(Exception):
    def __init__(self, status: int, detail: str, headers: dict[str, str] | None = None):
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.headers = headers or {}


def envelope(status: int, detail: str, headers: dict[str, str] | None = None) -> Response:
    body = {"error": [{"status": str(status), "title": TITLES.get(status, "Error"), "detail": detail}]}
    return Response(orjson.dumps(body), status_code=status, media_type="application/json", headers=headers)


async def api_error(request: Request, error: Exception) -> Response:
    assert isinstance(error, ApiError)
    return envelope(error.status, error.detail, error.headers)


async def entity_busy(request: Request, error: Exception) -> Response:
    return envelope(429, str(error), {"Retry-After": str(RETRY_AFTER_SECONDS)})


async def http_error(request: Request, error: Exception) -> Response:
    assert isinstance(error, HTTPException)
    detail = {404: f"no such resource: {request.url.path}", 405: f"{request.method} is not allowed on {request.url.path}"}
    return envelope(error.status_code, detail.get(error.status_code, str(error.detail)), dict(error.headers or {}))


async def unexpected(request: Request, error: Exception) -> Response:
    log.exception("unexpected error on %s %s", request.method, request.url.path)
    return envelope(500, "the server could not answer this request; it has been logged")


HANDLERS = {ApiError: api_error, EntityBusy: entity_busy, HTTPException: http_error, Exception: unexpected}

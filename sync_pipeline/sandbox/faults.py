"""Switchable faults of the sandbox, deterministic so tests can count on them.

A fault is named `NAME` (both sides) or `NAME:product` / `NAME:gateway` (one side). It can answer
a request in place of the real handler, cut a response off mid-body, fail whole batches, or
slow things down. Counters, not randomness, decide which requests are hit.

Each merchant has a fault of its own, with its own counters, so one merchant's traffic never
shifts what another sees: its product service's requests go through it, and so do gateway
requests carrying its gateway token (requests with no known token go through the default
merchant's). Batch numbers (`batch_fails`) count that merchant's batches.
"""

from __future__ import annotations

import orjson
from starlette.requests import Request
from starlette.responses import Response

SIDES = ("product", "gateway")


class CutOffResponse(Response):
    """Headers promise more than is sent, then the connection ends: a dropped connection as
    the client sees it (IncompleteRead), after the server did its work."""

    def __init__(self, body: bytes = b'{"data": [', status_code: int = 200):
        super().__init__(body, status_code=status_code, media_type="application/json")

    async def __call__(self, scope, receive, send) -> None:
        await send({
            "type": "http.response.start",
            "status": self.status_code,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(self.body) + 4096).encode())],
        })
        await send({"type": "http.response.body", "body": self.body, "more_body": True})
        raise ConnectionAbortedError("sandbox fault: connection dropped mid-response")


def is_listing(request: Request) -> bool:
    """A product list page, rather than one record, under any merchant's prefix."""
    return "record_id" not in request.path_params


def problem(status: int, title: str, headers: dict | None = None) -> Response:
    body = {"type": "about:blank", "title": title, "status": status}
    return Response(orjson.dumps(body), status_code=status, media_type="application/problem+json", headers=headers)


def gateway_error(status: int, title: str, headers: dict | None = None) -> Response:
    body = {"error": [{"status": str(status), "title": title, "detail": f"sandbox fault: {title}"}]}
    return Response(orjson.dumps(body), status_code=status, media_type="application/json", headers=headers)


class Fault:
    """No fault. Subclasses override the hooks they need."""

    name = "none"

    def __init__(self, sides: tuple[str, ...] = SIDES):
        self.sides = sides
        self.counts = {side: 0 for side in SIDES}
        self.injected = 0  # how many requests the fault answered in place of the real handler

    def applies(self, side: str) -> bool:
        return side in self.sides

    def before(self, side: str, request: Request) -> Response | None:
        """Called before the handler; a Response replaces the real answer."""
        return None

    def after(self, side: str, request: Request, response: Response) -> Response:
        """Called after the handler; may replace the real answer (the work is done)."""
        return response

    def delay(self, side: str) -> float:
        return 0.0

    def batch_fails(self, batch_number: int) -> bool:
        return False

    def max_body_bytes(self) -> int | None:
        return None

    def hit(self) -> None:
        self.injected += 1


class Flaky(Fault):
    """Of every 10 requests on a side: the 2nd gets 429 with Retry-After, the 5th a 503, and
    the 8th is answered and then dropped mid-response (a gateway batch is accepted first)."""

    name = "flaky"

    def before(self, side, request):
        n = self.counts[side] % 10
        if n == 1:
            self.hit()
            headers = {"Retry-After": "1"}
            return problem(429, "Too many requests", headers) if side == "product" else gateway_error(429, "Too Many Requests", headers)
        if n == 4:
            self.hit()
            return problem(503, "Service unavailable") if side == "product" else gateway_error(503, "Service Unavailable")
        return None

    def after(self, side, request, response):
        if self.counts[side] % 10 == 7:
            self.hit()
            return CutOffResponse(bytes(response.body[:20]), response.status_code)
        return response


class Slow(Fault):
    """Every request waits 0.2 s."""

    name = "slow"

    def delay(self, side):
        self.hit()
        return 0.2


class Garbage(Fault):
    """Every 4th product list page is a 200 whose body is cut off or is not JSON at all; a
    retry of it is clean."""

    name = "garbage"
    every = 4

    def after(self, side, request, response):
        if side != "product" or not is_listing(request):
            return response
        n = self.counts[side]
        if n % self.every == self.every - 1:
            self.hit()
            body = bytes(response.body)
            bad = body[: len(body) // 2] if (n // self.every) % 2 == 0 else b"<html><body>502 Bad Gateway</body></html>"
            return Response(bad, status_code=200, media_type="application/json")
        return response


class GarbageAlways(Garbage):
    """Every product list page after the first is garbage, however often it is asked for."""

    name = "garbage-always"

    def after(self, side, request, response):
        if side != "product" or not is_listing(request) or not request.query_params.get("cursor"):
            return response
        self.hit()
        return Response(b'{"data": [{"id": "p1", "tit', status_code=200, media_type="application/json")


class BatchFailed(Fault):
    """Every 3rd batch ends FAILED: none of its items applied."""

    name = "batch-failed"

    def batch_fails(self, batch_number):
        failed = batch_number % 3 == 1
        if failed:
            self.hit()
        return failed


class TooLarge(Fault):
    """The gateway answers 413 to a batch body over 64 KiB."""

    name = "too-large"

    def max_body_bytes(self):
        return 64 * 1024


class PollRefused(Fault):
    """Every question about a batch's status gets 400; batches are taken as usual."""

    name = "poll-refused"

    def before(self, side, request):
        if side == "gateway" and request.method == "GET" and "/batches/" in request.url.path:
            self.hit()
            return gateway_error(400, "Bad Request")
        return None


class Auth(Fault):
    """The first request on a side gets 401, every later one 403."""

    name = "auth"

    def before(self, side, request):
        self.hit()
        status, title = (401, "Unauthorised token provided") if self.counts[side] == 1 else (403, "Invalid permissions for request")
        return problem(status, title) if side == "product" else gateway_error(status, title)


FAULTS: dict[str, type[Fault]] = {
    fault.name: fault for fault in (Fault, Flaky, Slow, Garbage, GarbageAlways, BatchFailed, TooLarge, PollRefused, Auth)
}


def make_fault(spec: str) -> Fault:
    """`NAME`, `NAME:product` or `NAME:gateway`."""
    name, _, side = spec.partition(":")
    if name not in FAULTS:
        raise ValueError(f"unknown fault {name!r}; known: {', '.join(sorted(FAULTS))}")
    if side and side not in SIDES:
        raise ValueError(f"unknown side {side!r}; known: product, gateway")
    fault = FAULTS[name]((side,) if side else SIDES)
    return fault

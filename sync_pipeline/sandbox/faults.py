"""Switchable faults of the sandbox. Each fault can answer a request in place of the real
handler (return a Response) or let it through (return None). Deterministic: no randomness."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response


class Fault:
    name = "none"

    def on_product_request(self, request: Request) -> Response | None:
        return None

    def on_gateway_request(self, request: Request) -> Response | None:
        return None

    def batch_fails(self, batch_number: int) -> bool:
        return False


FAULTS: dict[str, type[Fault]] = {"none": Fault}


def make_fault(name: str) -> Fault:
    try:
        return FAULTS[name]()
    except KeyError:
        raise ValueError(f"unknown fault {name!r}; known: {', '.join(sorted(FAULTS))}") from None

"""Dagster resources for the outside parties and the state store, configured from the environment."""

from __future__ import annotations

import os

import dagster as dg

from ..gateway import GatewayClient
from ..settings import DEFAULTS, state_url
from ..sources import ProductServiceClient
from ..state import StateStore


def env_or_default(name: str) -> str | dg.EnvVar:
    """EnvVar when set (so secrets stay out of the UI), else the CONTRACT §5 default."""
    return dg.EnvVar(name) if os.environ.get(name) else DEFAULTS[name]


class ProductServiceResource(dg.ConfigurableResource):
    """The merchant's product service (read)."""

    url: str
    token: str
    page_size: int = 1000

    def client(self) -> ProductServiceClient:
        return ProductServiceClient(self.url, self.token, page_size=self.page_size)


class GatewayResource(dg.ConfigurableResource):
    """The gateway catalogue (batch writes)."""

    url: str
    token: str
    workers: int = 4

    def client(self) -> GatewayClient:
        return GatewayClient(self.url, self.token, pool_size=max(8, self.workers * 2))


class StateStoreResource(dg.ConfigurableResource):
    """The state store: syncs, batches, the per-entity lease and watermark."""

    url: str

    def store(self) -> StateStore:
        return StateStore(self.url)


def default_resources() -> dict[str, dg.ConfigurableResource]:
    return {
        "product_service": ProductServiceResource(
            url=env_or_default("PRODUCT_SERVICE_URL"), token=env_or_default("PRODUCT_SERVICE_TOKEN")
        ),
        "gateway": GatewayResource(url=env_or_default("GATEWAY_URL"), token=env_or_default("GATEWAY_TOKEN")),
        "state_store": StateStoreResource(
            url=dg.EnvVar("SYNC_STATE_URL") if os.environ.get("SYNC_STATE_URL") else state_url()
        ),
    }

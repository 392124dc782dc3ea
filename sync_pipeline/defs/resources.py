"""Dagster resources for the outside parties and the state store, configured from the environment.

No resource holds a merchant's token: a run asks the registry for its merchant's connection
when it starts, so no secret ever reaches run config, tags or the UI."""

from __future__ import annotations

import os

import dagster as dg

from ..gateway import GatewayClient
from ..merchants import Connection, MerchantRegistry
from ..settings import DEFAULTS, gateway_in_flight, gateway_sending, state_url
from ..sources import ProductServiceClient
from ..state import StateStore, open_state_store


def env_or_default(name: str) -> str | dg.EnvVar:
    """EnvVar when set (so the value stays out of the UI), else the CONTRACT §5 default."""
    return dg.EnvVar(name) if os.environ.get(name) else DEFAULTS[name]


class ProductServiceResource(dg.ConfigurableResource):
    """A merchant's product service (read); where it is and its token come from the registry."""

    page_size: int = 1000

    def client(self, connection: Connection) -> ProductServiceClient:
        return ProductServiceClient(
            connection.product_service_url, connection.product_service_token, page_size=self.page_size
        )


class GatewayResource(dg.ConfigurableResource):
    """The gateway catalogue (batch writes): one URL for all merchants, told apart by token."""

    url: str
    workers: int = 0  # batches at the gateway at once; 0: SYNC_GATEWAY_IN_FLIGHT (default 16)
    sending: int = 0  # of those, sent at once (bodies held); 0: SYNC_GATEWAY_SENDING (default 4)

    @property
    def in_flight(self) -> int:
        return self.workers or gateway_in_flight()

    @property
    def sending_at_once(self) -> int:
        return self.sending or gateway_sending()

    def client(self, connection: Connection) -> GatewayClient:
        # a connection for each batch being submitted and one for each being asked about
        return GatewayClient(self.url, connection.gateway_token, pool_size=2 * self.in_flight)


class StateStoreResource(dg.ConfigurableResource):
    """The state store: merchants, syncs, batches, records, the per-(merchant, type) lease."""

    url: str

    def store(self) -> StateStore:
        return open_state_store(self.url)

    def registry(self) -> MerchantRegistry:
        return MerchantRegistry(self.store())


def default_resources() -> dict[str, dg.ConfigurableResource]:
    return {
        "product_service": ProductServiceResource(),
        "gateway": GatewayResource(url=env_or_default("GATEWAY_URL")),
        "state_store": StateStoreResource(
            url=dg.EnvVar("SYNC_STATE_URL") if os.environ.get("SYNC_STATE_URL") else state_url()
        ),
    }

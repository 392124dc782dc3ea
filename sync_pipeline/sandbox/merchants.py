"""The merchants the sandbox plays (CONTRACT §6): each has a product service of its own under a
path prefix, its own tokens, and its own catalogue at the one gateway.

The merchant `default` is the one at the root (`/products`, `sandbox-product-token`,
`sandbox-gateway-token`), generated from the sandbox's `--seed` exactly as before merchants
existed. Another merchant `ID` lives under `/m/ID`, with tokens `sandbox-product-token-ID` and
`sandbox-gateway-token-ID`, and a catalogue seeded from the base seed and its id (crc32, so the
same id gives the same catalogue in every process). Catalogues are generated on first use, so
starting hundreds of merchants costs nothing until they are read.
"""

from __future__ import annotations

import re
import zlib
from dataclasses import dataclass, field

from .catalogue import Catalogue
from .faults import Fault, make_fault
from .gateway import GatewayCatalogue

DEFAULT_MERCHANT = "default"
MERCHANT_ID = re.compile(r"[a-z0-9][a-z0-9-]{0,39}")
PRODUCT_TOKEN = "sandbox-product-token"
GATEWAY_TOKEN = "sandbox-gateway-token"
KIND_OF_ENTITY = {"PRODUCT": "products", "COLLECTION": "collections"}


def is_merchant_id(text: str) -> bool:
    return MERCHANT_ID.fullmatch(text) is not None


def numbered_merchant_id(number: int) -> str:
    """The id of the `number`th merchant made at start: m0001, m0002, ..."""
    return f"m{number:04d}"


def merchant_seed(base_seed: int, merchant_id: str) -> int:
    """A catalogue seed for a merchant: stable across processes, different per merchant."""
    return zlib.crc32(f"{base_seed}:{merchant_id}".encode())


def merchant_prefix(merchant_id: str) -> str:
    """Where a merchant's product service lives on the sandbox: the root for `default`."""
    return "" if merchant_id == DEFAULT_MERCHANT else f"/m/{merchant_id}"


def merchant_tokens(
    merchant_id: str, product_token: str = PRODUCT_TOKEN, gateway_token: str = GATEWAY_TOKEN
) -> tuple[str, str]:
    """(product service token, gateway token) of a merchant, from the sandbox's base tokens."""
    if merchant_id == DEFAULT_MERCHANT:
        return product_token, gateway_token
    return f"{product_token}-{merchant_id}", f"{gateway_token}-{merchant_id}"


def merchant_credentials(base_url: str, merchant_id: str) -> dict[str, str]:
    """What a merchant needs to sync against the sandbox at `base_url` (default tokens):
    productServiceUrl, productServiceToken, gatewayToken."""
    product_token, gateway_token = merchant_tokens(merchant_id)
    return {
        "productServiceUrl": base_url.rstrip("/") + merchant_prefix(merchant_id),
        "productServiceToken": product_token,
        "gatewayToken": gateway_token,
    }


@dataclass(frozen=True)
class CatalogueSpec:
    """What a merchant's source catalogue is generated from."""

    products: int
    collections: int
    seed: int

    def to_json(self) -> dict[str, int]:
        return {"products": self.products, "collections": self.collections, "seed": self.seed}


@dataclass
class MerchantSandbox:
    """One merchant as the sandbox plays it: its product service and its gateway catalogue."""

    merchant_id: str
    spec: CatalogueSpec
    product_token: str
    gateway_token: str
    fault: Fault
    requests: dict[str, int] = field(default_factory=lambda: {"product": 0, "gateway": 0})
    gateway: GatewayCatalogue = field(init=False)
    _catalogue: Catalogue | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        self.gateway = GatewayCatalogue(self._refused)

    @classmethod
    def make(
        cls, merchant_id: str, spec: CatalogueSpec, faults: str, product_token: str, gateway_token: str
    ) -> MerchantSandbox:
        """A merchant with its tokens derived from the sandbox's base tokens."""
        product, gateway = merchant_tokens(merchant_id, product_token, gateway_token)
        return cls(merchant_id, spec, product, gateway, make_fault(faults))

    @property
    def catalogue(self) -> Catalogue:
        """The source catalogue, generated on first use."""
        if self._catalogue is None:
            self._catalogue = Catalogue(self.spec.products, self.spec.collections, self.spec.seed)
        return self._catalogue

    def replace_catalogue(self, spec: CatalogueSpec) -> None:
        """A new source catalogue (generated on first use); the gateway keeps what it holds."""
        self.spec = spec
        self._catalogue = None

    def _refused(self, entity_type: str) -> set[str]:
        # Refusals are planted by the source catalogue, so the gateway asks it (and so makes it).
        return self.catalogue.entity(KIND_OF_ENTITY[entity_type]).refused

    def stats(self) -> dict:
        return {
            "requests": self.requests,
            "gateway": self.gateway.stats,
            "fault": self.fault.name,
            "faultSides": list(self.fault.sides),
            "faultsInjected": self.fault.injected,
        }


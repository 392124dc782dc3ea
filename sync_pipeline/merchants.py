"""The merchant registry (CONTRACT §6): who the merchants are, how to reach their product service
and the gateway on their behalf, and which Sync API tokens are theirs.

The merchant `default` is the one the §5 variables describe; it needs no row. A row for it only
ever holds `enabled` and `syncHourUtc`. Every other merchant is a row: outside services' tokens
encrypted (crypto.SecretBox), Sync API tokens as hashes. Nothing here returns a secret except
`connection`, which a run uses to talk to the outside services."""

from __future__ import annotations

import hmac
import os
from dataclasses import dataclass
from datetime import datetime
from typing import Optional
from urllib.parse import urlparse

import sqlalchemy as sa
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from .crypto import SecretBox, hash_token, tokens_equal
from .domain import DEFAULT_MERCHANT, SyncStatus, check_merchant_id, utcnow
from .settings import env
from .state import StateStore
from .state.schema import merchants

DEFAULT_SYNC_HOUR = 2
MIN_API_TOKEN_LENGTH = 16


class MerchantSpec(BaseModel):
    """A merchant as `merchants add` and `PUT /merchants/{id}` take it. On an update, fields left
    out keep their stored values, so a change of hour does not need the tokens again."""

    model_config = ConfigDict(extra="forbid")

    merchantId: str = Field(description="[a-z0-9][a-z0-9-]{0,39}")
    productServiceUrl: Optional[str] = Field(None, max_length=2048, description="Base URL of the merchant's product service.")
    productServiceToken: Optional[str] = Field(None, min_length=1, max_length=4096)
    gatewayToken: Optional[str] = Field(None, min_length=1, max_length=4096, description="The gateway tells merchants apart by it.")
    apiToken: Optional[str] = Field(
        None, min_length=MIN_API_TOKEN_LENGTH, max_length=4096, description="Sync API token: read and write."
    )
    apiReadToken: Optional[str] = Field(
        None, min_length=MIN_API_TOKEN_LENGTH, max_length=4096, description="Sync API token: read only."
    )
    syncHourUtc: Optional[int] = Field(None, ge=0, le=23, description="Hour of the daily sync, UTC; default 2.")
    enabled: Optional[bool] = Field(None, description="Default true; a disabled merchant is never synced.")

    @field_validator("merchantId")
    @classmethod
    def _merchant_id(cls, value: Optional[str]) -> Optional[str]:
        return value if value is None else check_merchant_id(value)

    @field_validator("productServiceUrl")
    @classmethod
    def _url(cls, value: Optional[str]) -> Optional[str]:
        if value is not None:
            parsed = urlparse(value)
            if parsed.scheme not in ("http", "https") or not parsed.netloc:
                raise ValueError("productServiceUrl must be an http(s) URL")
            if parsed.username or parsed.password or parsed.query:  # shown by `merchants list`: no secret in it
                raise ValueError("productServiceUrl must hold no credentials or query; the token goes in productServiceToken")
        return value


REQUIRED_ON_CREATE = ("productServiceUrl", "productServiceToken", "gatewayToken", "apiToken")
ENVIRONMENT_ONLY = ("productServiceUrl", "productServiceToken", "gatewayToken", "apiToken", "apiReadToken")


class InvalidMerchant(ValueError):
    """A merchant spec that cannot be stored; the message says why."""


def parse_spec(data: object) -> MerchantSpec:
    """A MerchantSpec from decoded JSON, or InvalidMerchant naming every problem."""
    if not isinstance(data, dict):
        raise InvalidMerchant("a merchant is a JSON object")
    try:
        return MerchantSpec.model_validate(data)
    except ValidationError as error:
        raise InvalidMerchant(
            "; ".join(
                f"{'.'.join(str(p) for p in e['loc']) or 'merchant'}: {e['msg']}" for e in error.errors(include_url=False)
            )
        ) from None


@dataclass(frozen=True)
class Merchant:
    """A merchant as anyone may see it: no secret."""

    merchant_id: str
    product_service_url: str | None
    sync_hour_utc: int
    enabled: bool
    has_read_token: bool
    created_at: datetime | None
    updated_at: datetime | None

    def public(self) -> dict:
        return {
            "merchantId": self.merchant_id,
            "productServiceUrl": self.product_service_url,
            "syncHourUtc": self.sync_hour_utc,
            "enabled": self.enabled,
            "hasReadToken": self.has_read_token,
        }


@dataclass(frozen=True)
class Connection:
    """What a run needs to sync a merchant: secrets, held only in memory for the run."""

    merchant_id: str
    product_service_url: str
    product_service_token: str
    gateway_token: str

    def __repr__(self) -> str:  # never print a token by accident
        return f"Connection(merchant_id={self.merchant_id!r}, product_service_url={self.product_service_url!r})"


@dataclass(frozen=True)
class Principal:
    """Who a Sync API bearer token belongs to."""

    merchant_id: str | None  # None: the operator
    can_write: bool

    @property
    def is_operator(self) -> bool:
        return self.merchant_id is None


class UnknownMerchant(LookupError):
    pass


class MerchantRegistry:
    def __init__(self, store: StateStore, secrets: SecretBox | None = None):
        self.store = store
        self._secrets = secrets

    @property
    def secrets(self) -> SecretBox:
        if self._secrets is None:
            self._secrets = SecretBox.from_env()
        return self._secrets

    # --- writes -------------------------------------------------------------------------
    def put(self, spec: MerchantSpec) -> bool:
        """Add the merchant, or update it with the fields given; True when it was added."""
        existing = self._row(spec.merchantId)
        given = spec.model_dump(exclude_unset=True, exclude={"merchantId"})
        if spec.merchantId == DEFAULT_MERCHANT:
            fixed = sorted(set(given) & set(ENVIRONMENT_ONLY))
            if fixed:
                raise InvalidMerchant(
                    f"the merchant default is configured by the environment (PRODUCT_SERVICE_*, GATEWAY_TOKEN,"
                    f" SYNC_API_*): only syncHourUtc and enabled can be set here, not {', '.join(fixed)}"
                )
        elif existing is None:
            missing = [name for name in REQUIRED_ON_CREATE if given.get(name) is None]
            if missing:
                raise InvalidMerchant(f"a new merchant needs {', '.join(missing)}")
        for name in ("apiToken", "apiReadToken"):
            if given.get(name) is not None:
                self._check_token_is_free(spec.merchantId, given[name])
        values = self._column_values(given)
        now = utcnow()
        try:
            with self.store.engine.begin() as conn:
                if existing is None:
                    conn.execute(
                        merchants.insert().values(merchant_id=spec.merchantId, created_at=now, updated_at=now, **values)
                    )
                elif values:
                    conn.execute(
                        merchants.update().where(merchants.c.merchant_id == spec.merchantId).values(updated_at=now, **values)
                    )
        except sa.exc.IntegrityError:
            if existing is None and self._row(spec.merchantId) is not None:
                return self.put(spec)  # added meanwhile by another request: this one updates it
            raise InvalidMerchant("this API token is already in use; give each merchant tokens of its own") from None
        return existing is None

    def _column_values(self, given: dict) -> dict:
        values: dict = {}
        if "productServiceUrl" in given:
            values["product_service_url"] = given["productServiceUrl"]
        for name, column in (("productServiceToken", "product_service_token"), ("gatewayToken", "gateway_token")):
            if given.get(name) is not None:
                values[column] = self.secrets.encrypt(given[name])
        for name, column in (("apiToken", "api_token_hash"), ("apiReadToken", "api_read_token_hash")):
            if name in given:
                values[column] = None if given[name] is None else hash_token(given[name])
        if given.get("syncHourUtc") is not None:
            values["sync_hour_utc"] = given["syncHourUtc"]
        if given.get("enabled") is not None:
            values["enabled"] = given["enabled"]
        return values

    def _check_token_is_free(self, merchant_id: str, token: str) -> None:
        principal = self.principal_for(token, include_disabled=True)
        if principal is not None and principal.merchant_id != merchant_id:
            raise InvalidMerchant("this API token is already in use; give each merchant tokens of its own")

    def set_enabled(self, merchant_id: str, enabled: bool) -> None:
        """Enable or disable a merchant; history is kept either way. Disabling closes the syncs
        it has queued (a disabled merchant is never synced); one already running finishes."""
        if merchant_id != DEFAULT_MERCHANT and self._row(merchant_id) is None:
            raise UnknownMerchant(f"no merchant {merchant_id!r}")
        self.put(MerchantSpec(merchantId=merchant_id, enabled=enabled))
        if not enabled:
            for sync in self.store.active_syncs(merchant_id):
                if sync.status is SyncStatus.QUEUED:
                    self.store.finish_sync(sync.sync_id, SyncStatus.FAILED, error_message=f"merchant {merchant_id} disabled")

    # --- reads --------------------------------------------------------------------------
    def _row(self, merchant_id: str):
        with self.store.engine.connect() as conn:
            return conn.execute(sa.select(merchants).where(merchants.c.merchant_id == merchant_id)).first()

    def get(self, merchant_id: str) -> Merchant | None:
        row = self._row(merchant_id)
        if merchant_id == DEFAULT_MERCHANT:
            return _default_merchant(row)
        return _merchant(row) if row is not None else None

    def list(self) -> list[Merchant]:
        """Every merchant, `default` first, then by id."""
        with self.store.engine.connect() as conn:
            rows = conn.execute(sa.select(merchants).order_by(merchants.c.merchant_id)).all()
        default_row = next((row for row in rows if row.merchant_id == DEFAULT_MERCHANT), None)
        return [_default_merchant(default_row)] + [_merchant(row) for row in rows if row.merchant_id != DEFAULT_MERCHANT]

    def due_at(self, hour: int) -> list[str]:
        """The enabled merchants whose daily sync is in this UTC hour."""
        with self.store.engine.connect() as conn:
            rows = conn.execute(
                sa.select(merchants.c.merchant_id).where(
                    merchants.c.sync_hour_utc == hour, merchants.c.enabled.is_(True),
                    merchants.c.merchant_id != DEFAULT_MERCHANT,
                )
            ).scalars().all()
        default = self.get(DEFAULT_MERCHANT)
        due = [DEFAULT_MERCHANT] if default.enabled and default.sync_hour_utc == hour else []
        return due + sorted(rows)

    def is_enabled(self, merchant_id: str) -> bool:
        merchant = self.get(merchant_id)
        return merchant is not None and merchant.enabled

    def connection(self, merchant_id: str) -> Connection:
        """How to reach the merchant's product service and the gateway on its behalf."""
        if merchant_id == DEFAULT_MERCHANT:
            return Connection(
                DEFAULT_MERCHANT, env("PRODUCT_SERVICE_URL"), env("PRODUCT_SERVICE_TOKEN"), env("GATEWAY_TOKEN")
            )
        row = self._row(merchant_id)
        if row is None:
            raise UnknownMerchant(f"no merchant {merchant_id!r}")
        return Connection(
            merchant_id,
            row.product_service_url,
            self.secrets.decrypt(row.product_service_token),
            self.secrets.decrypt(row.gateway_token),
        )

    def principal_for(self, token: str, *, include_disabled: bool = False) -> Principal | None:
        """Whose Sync API token this is: the operator's, the default merchant's (§5 variables)
        or a registered merchant's; None for an unknown token or a disabled merchant's."""
        operator = os.environ.get("SYNC_OPERATOR_TOKEN")
        if operator and _same(token, operator):
            return Principal(None, True)
        if include_disabled or self.is_enabled(DEFAULT_MERCHANT):
            write, read = os.environ.get("SYNC_API_TOKEN"), os.environ.get("SYNC_API_READ_TOKEN")
            if write and _same(token, write):
                return Principal(DEFAULT_MERCHANT, True)
            if read and _same(token, read):
                return Principal(DEFAULT_MERCHANT, False)
        digest = hash_token(token)
        query = sa.select(merchants.c.merchant_id, merchants.c.api_token_hash, merchants.c.api_read_token_hash).where(
            sa.or_(merchants.c.api_token_hash == digest, merchants.c.api_read_token_hash == digest)
        )
        if not include_disabled:
            query = query.where(merchants.c.enabled.is_(True))
        with self.store.engine.connect() as conn:
            row = conn.execute(query.limit(1)).first()
        if row is None:
            return None
        return Principal(row.merchant_id, tokens_equal(token, row.api_token_hash))


def _same(given: str, expected: str) -> bool:
    return hmac.compare_digest(given.encode(), expected.encode())


def _merchant(row) -> Merchant:
    return Merchant(
        merchant_id=row.merchant_id,
        product_service_url=row.product_service_url,
        sync_hour_utc=row.sync_hour_utc,
        enabled=bool(row.enabled),
        has_read_token=row.api_read_token_hash is not None,
        created_at=row.created_at,
        updated_at=row.updated_at,
    )


def _default_merchant(row) -> Merchant:
    return Merchant(
        merchant_id=DEFAULT_MERCHANT,
        product_service_url=env("PRODUCT_SERVICE_URL"),
        sync_hour_utc=row.sync_hour_utc if row is not None else DEFAULT_SYNC_HOUR,
        enabled=bool(row.enabled) if row is not None else True,
        has_read_token=bool(os.environ.get("SYNC_API_READ_TOKEN")),
        created_at=row.created_at if row is not None else None,
        updated_at=row.updated_at if row is not None else None,
    )

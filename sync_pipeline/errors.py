"""One exception hierarchy, mapped once to sync statuses (here) and to exit codes (cli.py)."""

from __future__ import annotations

from .domain import DEFAULT_MERCHANT, EntityType, SyncStatus


class SyncError(Exception):
    """A sync could not finish; `status` is how it is recorded."""

    status = SyncStatus.FAILED


class SourceError(SyncError):
    """The product service failed or refused, after retries."""

    status = SyncStatus.SOURCE_UNAVAILABLE


class GatewayError(SyncError):
    """The gateway catalogue failed or refused, after retries."""

    status = SyncStatus.GATEWAY_UNAVAILABLE

    def __init__(self, message: str, http_status: int | None = None, detail: str | None = None):
        super().__init__(message)
        self.http_status = http_status
        self.detail = detail  # what the gateway said, when it answered


class DeletionGuardError(SyncError):
    """A full sync would delete more than the safety share of the catalogue."""

    status = SyncStatus.DELETION_GUARD


class EntityBusy(SyncError):
    """A sync of this (merchant, entity type) is already queued or in progress."""

    def __init__(self, entity: EntityType, sync_id: str, status: SyncStatus, merchant: str = DEFAULT_MERCHANT):
        self.entity = entity
        self.merchant = merchant
        self.sync_id = sync_id
        self.active_status = status
        whose = "" if merchant == DEFAULT_MERCHANT else f" of merchant {merchant}"
        super().__init__(f"a {entity.value} sync{whose} is already {status.text.lower()}: sync {sync_id}")


def status_for(error: BaseException) -> SyncStatus:
    return error.status if isinstance(error, SyncError) else SyncStatus.FAILED

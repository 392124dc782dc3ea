"""Asset checks a data engineer wants to see go red. The per-sync checks are computed by the
assets themselves (they run with the sync); freshness is its own check, run hourly as well."""


import os
from datetime import timedelta

import dagster as dg

from ..domain import EntityType, format_time, utcnow
from ..pipeline import PublishResult, StageResult
from .resources import StateStoreResource

MAX_REJECTED_SHARE = float(os.environ.get("SYNC_MAX_REJECTED_SHARE", "0.02"))
MAX_REFUSED_SHARE = float(os.environ.get("SYNC_MAX_REFUSED_SHARE", "0.01"))
FRESHNESS_HOURS = float(os.environ.get("SYNC_FRESHNESS_HOURS", "26"))

REJECTED_SHARE = "rejected_share"
GATEWAY_MATCHES_STAGING = "gateway_matches_staging"
BATCH_FAILURES = "batch_failures"
FRESHNESS = "fresh_within_26h"


def staged_check_specs(key: dg.AssetKey) -> list[dg.AssetCheckSpec]:
    return [
        dg.AssetCheckSpec(
            REJECTED_SHARE, asset=key,
            description=f"At most {MAX_REJECTED_SHARE:.0%} of the records fetched are rejected as invalid.",
        )
    ]


def published_check_specs(key: dg.AssetKey) -> list[dg.AssetCheckSpec]:
    return [
        dg.AssetCheckSpec(
            GATEWAY_MATCHES_STAGING, asset=key,
            description="The gateway holds exactly the staged valid records less those it refused.",
        ),
        dg.AssetCheckSpec(
            BATCH_FAILURES, asset=key,
            description=f"No batch ended FAILED and at most {MAX_REFUSED_SHARE:.0%} of the items sent were refused.",
        ),
    ]


def rejected_share_result(stage: StageResult) -> dg.AssetCheckResult:
    counts = stage.counts
    share = counts.rejected / counts.unique if counts.unique else 0.0
    return dg.AssetCheckResult(
        check_name=REJECTED_SHARE,
        passed=share <= MAX_REJECTED_SHARE,
        metadata={"rejected": counts.rejected, "records": counts.unique, "share": round(share, 4),
                  "threshold": MAX_REJECTED_SHARE},
    )


def gateway_matches_result(
    *, held: int, staged: int, refused: int, unexplained: int, orphans: int, reported: int, marked: int
) -> dg.AssetCheckResult:
    """Every staged valid record is held by the gateway unless it refused it; the gateway holds
    nothing the source no longer has; and the gateway's own success counts match ours."""
    return dg.AssetCheckResult(
        check_name=GATEWAY_MATCHES_STAGING,
        passed=unexplained == 0 and orphans == 0 and reported == marked,
        metadata={
            "gateway_holds": held,
            "staged_valid": staged,
            "refused_this_sync": refused,
            "staged_never_sent": unexplained,
            "held_but_gone_from_source": orphans,
            "gateway_reported_applied": reported,
            "recorded_applied": marked,
        },
    )


def batch_failures_result(result: PublishResult, failed_batches: int) -> dg.AssetCheckResult:
    sent = result.published + result.failed + result.deleted
    share = result.failed / sent if sent else 0.0
    return dg.AssetCheckResult(
        check_name=BATCH_FAILURES,
        passed=failed_batches == 0 and share <= MAX_REFUSED_SHARE,
        severity=dg.AssetCheckSeverity.WARN,
        metadata={"items_sent": sent, "items_refused": result.failed, "refused_share": round(share, 4),
                  "failed_batches": failed_batches, "batches": result.batches},
    )


def build_freshness_check(entity: EntityType, published_key: dg.AssetKey) -> dg.AssetChecksDefinition:
    @dg.asset_check(
        asset=published_key,
        name=FRESHNESS,
        required_resource_keys={"state_store"},
        description=f"A {entity.value} sync succeeded within the last {FRESHNESS_HOURS:g} hours, however it was started.",
    )
    def freshness(context: dg.AssetCheckExecutionContext) -> dg.AssetCheckResult:
        state_store: StateStoreResource = context.resources.state_store
        store = state_store.store()
        try:
            last = store.last_successful(entity)
        finally:
            store.dispose()
        age = (utcnow() - last.finished_at) if last else None
        return dg.AssetCheckResult(
            passed=age is not None and age <= timedelta(hours=FRESHNESS_HOURS),
            metadata={
                "last_success": format_time(last.finished_at) if last else "never",
                "age_hours": round(age.total_seconds() / 3600, 2) if age else -1.0,
                "limit_hours": FRESHNESS_HOURS,
            },
        )

    return freshness

"""Asset checks a data engineer wants to see go red. The per-sync checks are computed by the
assets themselves (they run with the sync); freshness is its own check, run hourly as well."""


import os
from datetime import timedelta

import dagster as dg

from ..domain import EntityType, format_time, utcnow
from ..pipeline import PublishResult, StageResult
from ..staging import PublishCheck
from .resources import StateStoreResource

MAX_REJECTED_SHARE = float(os.environ.get("SYNC_MAX_REJECTED_SHARE", "0.02"))
MAX_REFUSED_SHARE = float(os.environ.get("SYNC_MAX_REFUSED_SHARE", "0.01"))
FRESHNESS_HOURS = float(os.environ.get("SYNC_FRESHNESS_HOURS", "26"))

REJECTED_SHARE = "rejected_share"
GATEWAY_MATCHES_STAGING = "gateway_matches_staging"
BATCH_FAILURES = "batch_failures"
PARKED = "parked_records"
INVALID_HELD = "invalid_but_held"
REFERENCES_HELD = "products_referenced_are_held"
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
        dg.AssetCheckSpec(
            PARKED, asset=key,
            description="No record is parked: refused by the gateway again and again at the version the source still"
            " has, so not sent until it changes. The metadata lists them with the gateway's reason.",
        ),
        dg.AssetCheckSpec(
            INVALID_HELD, asset=key,
            description="The gateway holds no record whose source version has since become invalid (it keeps the last"
            " valid one unless SYNC_WITHDRAW_INVALID is set). The metadata lists them with the reason.",
        ),
    ]


def references_check_spec(key: dg.AssetKey) -> dg.AssetCheckSpec:
    return dg.AssetCheckSpec(
        REFERENCES_HELD, asset=key,
        description="Every product the collections of the sync reference is held by the gateway (collections are"
        " published after the products they reference). The metadata lists collections with missing products.",
    )


def references_result(key: dg.AssetKey, missing: dict[str, list[str]], collections: int) -> dg.AssetCheckResult:
    """`missing`: collection id -> the product ids it names that the gateway does not hold."""
    listed = sorted(missing.items())[:20]
    return dg.AssetCheckResult(
        asset_key=key,
        check_name=REFERENCES_HELD,
        passed=not missing,
        severity=dg.AssetCheckSeverity.WARN,
        metadata={
            "collections_checked": collections,
            "collections_with_missing_products": len(missing),
            "missing_products": sum(len(ids) for ids in missing.values()),
            "first": dg.MetadataValue.md(
                "\n".join(f"- `{c}`: {', '.join(ids[:10])}{' …' if len(ids) > 10 else ''}" for c, ids in listed) or "none"
            ),
        },
    )


def problem_records_results(key: dg.AssetKey, problems: dict) -> list[dg.AssetCheckResult]:
    """Warnings for records that need a person: parked ones, and held ones now invalid."""
    results = []
    for name, kind in ((PARKED, "parked"), (INVALID_HELD, "invalid_held")):
        count, listed = problems[kind]
        results.append(
            dg.AssetCheckResult(
                asset_key=key,
                check_name=name,
                passed=count == 0,
                severity=dg.AssetCheckSeverity.WARN,
                metadata={
                    "records": count,
                    "first_ids": dg.MetadataValue.md(
                        "\n".join(f"- `{record_id}`: {reason}" for record_id, reason in listed) or "none"
                    ),
                },
            )
        )
    return results


def rejected_share_result(key: dg.AssetKey, stage: StageResult) -> dg.AssetCheckResult:
    counts = stage.counts
    share = counts.rejected / counts.unique if counts.unique else 0.0
    return dg.AssetCheckResult(
        asset_key=key,
        check_name=REJECTED_SHARE,
        passed=share <= MAX_REJECTED_SHARE,
        metadata={"rejected": counts.rejected, "records": counts.unique, "share": round(share, 4),
                  "threshold": MAX_REJECTED_SHARE},
    )


def gateway_matches_result(
    key: dg.AssetKey, check: PublishCheck, *, held: int, reported: int, marked: int
) -> dg.AssetCheckResult:
    """Every record staged this sync is held by the gateway at that version, unless the gateway
    refused it or its batch failed (both counted, and owed again); a full sync leaves the gateway
    holding nothing the source no longer lists; and the gateway's own success counts match ours."""
    return dg.AssetCheckResult(
        asset_key=key,
        check_name=GATEWAY_MATCHES_STAGING,
        passed=check.unexplained == 0 and check.orphans == 0 and reported == marked,
        metadata={
            "gateway_holds": held,
            "staged_valid": check.staged,
            "held_at_staged_version": check.held_current,
            "refused_this_sync": check.refused,
            "in_failed_batches": check.failed,
            "staged_never_sent": check.unexplained,
            "held_but_gone_from_source": check.orphans,
            "gateway_reported_applied": reported,
            "recorded_applied": marked,
        },
    )


def batch_failures_result(key: dg.AssetKey, result: PublishResult) -> dg.AssetCheckResult:
    sent = result.published + result.failed + result.deleted
    share = result.failed / sent if sent else 0.0
    return dg.AssetCheckResult(
        asset_key=key,
        check_name=BATCH_FAILURES,
        passed=result.failed_batches == 0 and share <= MAX_REFUSED_SHARE,
        severity=dg.AssetCheckSeverity.WARN,
        metadata={"items_sent": sent, "items_refused": result.failed, "refused_share": round(share, 4),
                  "failed_batches": result.failed_batches, "batches": result.batches},
    )


def build_freshness_check(entity: EntityType, published_key: dg.AssetKey) -> dg.AssetChecksDefinition:
    @dg.asset_check(
        asset=published_key,
        name=FRESHNESS,
        required_resource_keys={"state_store"},
        description=f"Every enabled merchant had a {entity.value} sync succeed within the last"
        f" {FRESHNESS_HOURS:g} hours, however it was started.",
    )
    def freshness(context: dg.AssetCheckExecutionContext) -> dg.AssetCheckResult:
        state_store: StateStoreResource = context.resources.state_store
        registry = state_store.registry()
        last = registry.store.last_success_times(entity)
        now = utcnow()
        enabled = [m.merchant_id for m in registry.list() if m.enabled]
        stale = sorted(
            (merchant for merchant in enabled
             if merchant not in last or now - last[merchant] > timedelta(hours=FRESHNESS_HOURS)),
            key=lambda merchant: last.get(merchant) or now - timedelta(days=36500),
        )
        oldest = last.get(stale[0]) if stale else min((last[m] for m in enabled if m in last), default=None)
        return dg.AssetCheckResult(
            passed=not stale,
            metadata={
                "merchants": len(enabled),
                "stale_merchants": len(stale),
                "stale": ", ".join(stale[:20]) + (" …" if len(stale) > 20 else "") if stale else "none",
                "oldest_last_success": format_time(oldest) if oldest else "never",
                "limit_hours": FRESHNESS_HOURS,
            },
        )

    return freshness

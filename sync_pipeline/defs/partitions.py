"""Daily partitions: the partition view shows, day by day, which days' changes were synced,
whichever way the sync was started. Every run carries the partition range its window covers."""

from __future__ import annotations

import os
from datetime import datetime, timedelta

import dagster as dg

from ..domain import Window, parse_time

RANGE_START_TAG = "dagster/asset_partition_range_start"
RANGE_END_TAG = "dagster/asset_partition_range_end"
PARTITIONS_START = os.environ.get("SYNC_PARTITIONS_START", "2025-01-01")

# end_offset=1: today's partition exists, so today's changes can be synced and shown.
daily_partitions = dg.DailyPartitionsDefinition(start_date=PARTITIONS_START, end_offset=1)


def partition_range_tags(window: Window) -> dict[str, str]:
    """The run tags that label a sync's window with the days it covers.

    A full sync (no window start) is labelled with the day it ran: Dagster records one event
    per partition per asset, and labelling every day since the first partition would add
    seconds per hundred days to each full sync. A window reaching before the first partition
    is labelled from the first one.
    """
    first = parse_time(PARTITIONS_START).date()
    last_day = (window.end - timedelta(microseconds=1)).date()
    start_day = max(first, last_day if window.start is None else window.start.date())
    end_day = max(first, last_day)
    return {RANGE_START_TAG: start_day.isoformat(), RANGE_END_TAG: max(start_day, end_day).isoformat()}


def partition_window(context: dg.AssetExecutionContext, now: datetime) -> Window:
    """The time window of the run's partition range, its end no later than now."""
    window = context.partition_time_window
    return Window(window.start, min(window.end, now))

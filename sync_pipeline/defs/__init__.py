"""Dagster only: resources, assets, checks, jobs, schedules, the sensor, and the Definitions."""

import warnings

import dagster as dg

# BackfillPolicy is "beta" in Dagster 1.13; it is what keeps a backfill at one run per type.
warnings.filterwarnings("ignore", message=".*backfill_policy.*", category=dg.BetaWarning)

from .definitions import build_defs, defs  # noqa: E402

__all__ = ["build_defs", "defs"]

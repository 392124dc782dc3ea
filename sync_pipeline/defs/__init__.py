"""Dagster only: resources, assets, jobs, and the Definitions that assemble them."""

from .definitions import build_defs, defs

__all__ = ["build_defs", "defs"]

"""The Sync API (CONTRACT §4): ask for a sync, read how the last one went."""

from .app import create_app

__all__ = ["create_app"]

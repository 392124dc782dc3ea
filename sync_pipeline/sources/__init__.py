"""The product service, read side: streaming pages and single records."""

from .client import Page, ProductServiceClient

__all__ = ["Page", "ProductServiceClient"]

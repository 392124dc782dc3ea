"""Client of the merchant's product service (CONTRACT §2): paged, streaming, retrying."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import requests

from .. import jsontext
from ..domain import EntityType, Window, format_time
from ..errors import SourceError
from ..http import build_session, describe_error_body

log = logging.getLogger(__name__)

MAX_PAGE_SIZE = 1000


@dataclass(frozen=True)
class Page:
    """`records`: parsed; or, from `fetch_pages(listed=True)` where the page reads as a plain
    list page, each record's bytes as the source sent them (`listed`)."""

    records: list[Any]
    next_cursor: str | None
    url: str
    listed: bool = False


class ProductServiceClient:
    def __init__(
        self,
        base_url: str,
        token: str,
        *,
        page_size: int = MAX_PAGE_SIZE,
        timeout: tuple[float, float] = (5.0, 60.0),
        retries: int = 5,
        backoff: float = 0.2,
        bad_body_retries: int = 3,
    ):
        self.base_url = base_url.rstrip("/")
        self.page_size = min(page_size, MAX_PAGE_SIZE)
        self.timeout = timeout
        self.backoff = backoff
        self.bad_body_retries = bad_body_retries
        self.session = build_session(token, retries=retries, backoff=backoff)

    def close(self) -> None:
        self.session.close()

    def fetch_pages(self, entity: EntityType, window: Window, *, listed: bool = False) -> Iterator[Page]:
        """Yield the pages of records updated in `window`, in (updatedAt, id) order; with `listed`,
        each record as its bytes where the page allows (see `Page`)."""
        url = f"{self.base_url}/{entity.path}"
        params: dict[str, Any] = {"limit": self.page_size, "updatedBefore": format_time(window.end)}
        if window.start is not None:
            params["updatedSince"] = format_time(window.start)
        cursor: str | None = None
        while True:
            if cursor is not None:
                params["cursor"] = cursor
            body = self._get_json(url, params, cursor, parse=_listed_or_parsed if listed else jsontext.loads)
            if isinstance(body, jsontext.RawPage):
                data, meta, as_listed = body.data, body.meta, True
            else:
                data = body.get("data") if isinstance(body, dict) else None
                meta = body.get("meta") if isinstance(body, dict) else None
                if not isinstance(data, list) or not isinstance(meta, dict):
                    raise SourceError(f"{url} (cursor {cursor}): a list page without data and meta")
                as_listed = False
            next_cursor = meta.get("nextCursor")
            yield Page(records=data, next_cursor=next_cursor, url=url, listed=as_listed)
            if not next_cursor:
                return
            cursor = next_cursor

    def get_one(self, entity: EntityType, record_id: str) -> dict[str, Any] | None:
        """The record, or None when the product service answers 404 (it no longer exists)."""
        url = f"{self.base_url}/{entity.path}/{requests.utils.quote(record_id, safe='')}"
        return self._get_json(url, None, None, missing_ok=True)

    def _get_json(
        self, url: str, params: dict[str, Any] | None, cursor: str | None, missing_ok: bool = False,
        parse: Callable[[bytes], Any] = jsontext.loads,
    ) -> Any:
        # urllib3 retries 429/5xx and refused connections; a 200 whose body is cut off (the
        # connection dropped mid-response) or is not JSON is retried here. A body that stays
        # bad fails the sync, naming the URL and cursor: nothing is built from it.
        where = f"{url} (cursor {cursor})" if cursor else url
        for attempt in range(self.bad_body_retries + 1):
            if attempt:
                time.sleep(self.backoff * (2 ** (attempt - 1)))
            try:
                response = self.session.get(url, params=params, timeout=self.timeout)
            except (requests.exceptions.ChunkedEncodingError, requests.exceptions.ContentDecodingError) as error:
                problem = f"the response was cut off ({_root_cause(error)})"
                log.warning("%s: %s, attempt %d", where, problem, attempt + 1)
                continue
            except requests.RequestException as error:
                raise SourceError(f"{where}: product service unreachable ({_root_cause(error)})") from error
            if missing_ok and _is_entity_not_found(response):
                return None
            self._raise_for_status(response, url)
            try:
                return parse(response.content)
            except ValueError as error:
                problem = f"the body is not valid JSON ({error})"
                log.warning("%s: %s, attempt %d", where, problem, attempt + 1)
        raise SourceError(f"{where}: {problem}, {self.bad_body_retries + 1} times")

    @staticmethod
    def _raise_for_status(response: requests.Response, url: str) -> None:
        if response.status_code < 400:
            return
        detail = describe_error_body(response)
        raise SourceError(f"{url}: HTTP {response.status_code} from the product service: {detail}")


def _listed_or_parsed(content: bytes) -> Any:
    """The page with its records as bytes, or, where it does not read as a plain list page,
    parsed whole (and checked as any body is)."""
    page = jsontext.loads_page(content)
    return page if page is not None else jsontext.loads(content)


def _is_entity_not_found(response: requests.Response) -> bool:
    """A 404 that says the record does not exist (CONTRACT §2: an `entity-not-found` problem), as
    opposed to a 404 for a wrong URL, which must never count as a confirmed deletion."""
    if response.status_code != 404:
        return False
    try:
        problem = response.json()
    except ValueError:
        return False
    return isinstance(problem, dict) and str(problem.get("type", "")).endswith("entity-not-found")


def _root_cause(error: BaseException) -> str:
    while error.__context__ is not None and error.__context__ is not error:
        error = error.__context__
    return f"{type(error).__name__}: {error}"[:300]

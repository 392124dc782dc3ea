"""JSON that keeps every number exactly as the source wrote it, and the canonical text of a record.

Bodies are parsed with msgspec in one pass: integers of any size as Python ints, and other
numbers as `ExactNumber`, which remembers its text (msgspec hands a number with a fraction or
an exponent to `float_hook` as it was written); the canonical text of a record then writes each
of them back as it came. A number no double can hold (1e400) makes its record invalid
(`NumberOutOfRange`), not the page. What msgspec refuses (not JSON, or text that is not
Unicode such as a lone `\\ud800` escape) is parsed again by the standard library, which keeps
lone surrogates, so such a record is rejected alone, and raises for what is not JSON at all.

`loads_page` reads a list page without parsing its records: each stays the bytes the source
sent (`msgspec.Raw`), so a sync can tell an unchanged record by those bytes alone.
"""

from __future__ import annotations

import json
import math
from typing import Any

import msgspec
import orjson


class ExactNumber(float):
    """A JSON number with a fraction or an exponent, as its source text and its double."""

    __slots__ = ("text",)

    def __new__(cls, text: str) -> "ExactNumber":
        number = super().__new__(cls, text)
        number.text = text
        return number


class NumberOutOfRange(ValueError):
    """A number no double can hold; its record cannot be published as it is."""


class RawPage(msgspec.Struct):
    """A list page (CONTRACT §2) whose records are still the bytes the source sent."""

    data: list[msgspec.Raw]
    meta: dict[str, Any]


_exact = msgspec.json.Decoder(float_hook=ExactNumber)
_raw_page = msgspec.json.Decoder(RawPage)


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def loads(content: bytes | msgspec.Raw) -> Any:
    """Parse a JSON body, keeping every number exact (see the module docstring)."""
    try:
        return _exact.decode(content)
    except (msgspec.DecodeError, RecursionError):  # a lone surrogate, nested deeper than the stack allows, not JSON
        return loads_exact(bytes(content))


def loads_exact(content: bytes) -> Any:
    """Parse with the standard library, every number exact; raises ValueError for what is not JSON."""
    return json.loads(content, parse_float=ExactNumber, parse_constant=_reject_constant)


def loads_page(content: bytes) -> RawPage | None:
    """The page with its records unparsed, or None when it is not a plain list page (not JSON,
    not UTF-8, a record msgspec cannot read, no data list or meta object): `loads` then says
    what it is. The bytes of a record left unparsed are not checked for UTF-8, so the body is."""
    try:
        content.decode()
        return _raw_page.decode(content)
    except (UnicodeDecodeError, msgspec.DecodeError, RecursionError):
        return None


def canonical_json(record: Any, *, strict: bool = True) -> bytes:
    """The record's canonical text in UTF-8, sorted keys, compact: the same content always gives
    the same text (and hash); exact numbers are written as they came. Raises NumberOutOfRange
    for a number no double holds, unless not `strict` (to keep a rejected record as it came).
    Bytes, as orjson writes them: `PageRows` copies them into one buffer that Arrow takes as it
    is, where a str would be encoded again, record by record."""
    try:  # an ExactNumber goes out as its text; orjson refuses an integer beyond 64 bits
        return orjson.dumps(record, option=orjson.OPT_SORT_KEYS, default=_as_written if strict else _as_sent)
    except TypeError:
        pass
    if has_exact(record):
        return _exact_dumps(record, "", strict).encode()
    return json.dumps(record, sort_keys=True, ensure_ascii=False, separators=(",", ":")).encode()


def _as_sent(value: Any) -> Any:
    if isinstance(value, ExactNumber):
        return orjson.Fragment(value.text)
    raise TypeError


def _as_written(value: Any) -> Any:
    if isinstance(value, ExactNumber) and not math.isfinite(value):
        raise NumberOutOfRange(f"a number is out of range: {value.text[:40]}")
    return _as_sent(value)


def has_exact(value: Any) -> bool:
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, ExactNumber):
            return True
        if isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return False


def _exact_dumps(value: Any, path: str, strict: bool) -> str:
    if isinstance(value, ExactNumber):
        if strict and not math.isfinite(value):
            raise NumberOutOfRange(f"{path or 'the record'}: {value.text[:40]} is out of range for a number")
        return value.text
    if isinstance(value, dict):
        return "{" + ",".join(
            json.dumps(key, ensure_ascii=False) + ":" + _exact_dumps(value[key], f"{path}.{key}" if path else key, strict)
            for key in sorted(value)
        ) + "}"
    if isinstance(value, list):
        return "[" + ",".join(_exact_dumps(item, f"{path}[{index}]", strict) for index, item in enumerate(value)) + "]"
    return json.dumps(value, ensure_ascii=False)

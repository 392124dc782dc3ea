"""JSON read so that every value keeps the exact text it was sent in.

The sandbox must hand back what it was given digit for digit (big integers such as
18446744073709551616, long decimals, `1e400`), which no parse-then-encode round trip
guarantees: orjson turns integers over 64 bits into doubles and floats into their shortest
form. So containers are split down to a chosen depth with the standard library's decoder
(`raw_decode` tells where each value ends), and each value below that depth is kept as its
original slice of text next to its parsed form. The parsed form is only for looking at
(ids, times); it may be approximate. Splitting is C-speed per value, so a batch of 1000
records costs about what one `json.loads` of the body does.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

_WHITESPACE = re.compile(r"[ \t\n\r]*")


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


_DECODER = json.JSONDecoder(parse_constant=_reject_constant)


@dataclass(frozen=True)
class Exact:
    """One JSON value: `text` exactly as sent, `value` parsed (numbers may be approximate)."""

    value: Any
    text: str


def loads_exact(text: str | bytes, depth: int = 1) -> Any:
    """Parse `text`, splitting objects and arrays `depth` levels down: below that depth,
    and for every scalar, a value is an `Exact`. `depth=0` gives one `Exact` for the whole.
    Raises ValueError (json.JSONDecodeError included) on anything that is not one JSON value."""
    if isinstance(text, bytes):
        text = text.decode("utf-8")
    try:
        value, end = _split(text, _skip(text, 0), depth)
    except RecursionError:
        raise ValueError("JSON nested too deeply") from None
    if _skip(text, end) != len(text):
        raise ValueError(f"extra data after the JSON value at char {end}")
    return value


def _skip(text: str, pos: int) -> int:
    return _WHITESPACE.match(text, pos).end()


def _split(text: str, pos: int, depth: int) -> tuple[Any, int]:
    opener = text[pos : pos + 1]
    if depth > 0 and opener == "{":
        return _split_object(text, pos + 1, depth - 1)
    if depth > 0 and opener == "[":
        return _split_array(text, pos + 1, depth - 1)
    value, end = _DECODER.raw_decode(text, pos)
    return Exact(value, text[pos:end]), end


def _split_object(text: str, pos: int, depth: int) -> tuple[dict[str, Any], int]:
    members: dict[str, Any] = {}
    pos = _skip(text, pos)
    if text.startswith("}", pos):
        return members, pos + 1
    while True:
        if not text.startswith('"', pos):
            raise ValueError(f"expected a member name at char {pos}")
        name, pos = _DECODER.raw_decode(text, pos)
        pos = _skip(text, pos)
        if not text.startswith(":", pos):
            raise ValueError(f"expected ':' at char {pos}")
        members[name], pos = _split(text, _skip(text, pos + 1), depth)
        pos = _skip(text, pos)
        if text.startswith("}", pos):
            return members, pos + 1
        if not text.startswith(",", pos):
            raise ValueError(f"expected ',' or '}}' at char {pos}")
        pos = _skip(text, pos + 1)


def _split_array(text: str, pos: int, depth: int) -> tuple[list[Any], int]:
    elements: list[Any] = []
    pos = _skip(text, pos)
    if text.startswith("]", pos):
        return elements, pos + 1
    while True:
        element, pos = _split(text, pos, depth)
        elements.append(element)
        pos = _skip(text, pos)
        if text.startswith("]", pos):
            return elements, pos + 1
        if not text.startswith(",", pos):
            raise ValueError(f"expected ',' or ']' at char {pos}")
        pos = _skip(text, pos + 1)

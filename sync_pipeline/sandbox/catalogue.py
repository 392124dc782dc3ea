"""The sandbox's source catalogue: a deterministic, seeded set of products and collections,
kept as pre-encoded JSON and an index ordered by (updatedAt, id) for cursor paging."""

from __future__ import annotations

import base64
import bisect
import random
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

import orjson

EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
CATALOGUE_START = datetime(2025, 1, 1, tzinfo=timezone.utc)
CATALOGUE_END = datetime(2026, 11, 1, tzinfo=timezone.utc)

ADJECTIVES = ["Classic", "Organic", "Crème", "Süß", "Łagodny", "Ñandú", "Premium", "Smoky", "Frío", "Ōkina",
              "Grüne", "Piquant", "Rustic", "Velvet", "北海道", "Zesty", "Ätherisch", "Golden", "Noir", "Čistý"]
NOUNS = ["Coffee Beans", "Tea Set", "Olive Oil", "Chocolate", "Hot Sauce", "Granola", "Honey", "Noodles",
         "Spice Mix", "Jam", "緑茶", "Soap", "Candle", "Café Mug", "Baguette", "Kimchi", "Muesli", "Pasta", "Salsa", "Fudge 🍫"]
TAGS = ["vegan", "gluten-free", "bestseller", "new", "limited", "bio", "fair-trade", "gift"]

# Planted problems: a record is invalid when its index hits one of these kinds, and the gateway
# refuses a handful of valid ones per item, so both paths are exercised on every run.
INVALID_KINDS = ["no-title", "empty-title", "negative-price", "string-price", "bad-updated-at", "no-id"]


def to_micros(value: datetime) -> int:
    return (value - EPOCH) // timedelta(microseconds=1)


def format_micros(micros: int) -> str:
    value = EPOCH + timedelta(microseconds=micros)
    text = value.strftime("%Y-%m-%dT%H:%M:%S")
    if value.microsecond:
        text += f".{value.microsecond:06d}"
    return text + "Z"


def encode_cursor(key: tuple[int, str]) -> str:
    return base64.urlsafe_b64encode(f"{key[0]}|{key[1]}".encode()).decode()


def decode_cursor(cursor: str) -> tuple[int, str]:
    micros, _, record_id = base64.urlsafe_b64decode(cursor.encode()).decode().partition("|")
    return int(micros), record_id


@dataclass
class EntityCatalogue:
    """One entity type's live records, as encoded JSON, indexed by (updated micros, id)."""

    kind: str  # "products" or "collections"
    prefix: str
    records: dict[str, bytes] = field(default_factory=dict)
    keys: list[tuple[int, str]] = field(default_factory=list)
    key_of: dict[str, tuple[int, str]] = field(default_factory=dict)
    invalid: set[str] = field(default_factory=set)
    refused: set[str] = field(default_factory=set)
    next_number: int = 1

    def put(self, internal_id: str, record: dict[str, Any], micros: int, *, bulk: bool = False) -> None:
        """Add or replace a record; in bulk mode the index is sorted once by `sort_index`."""
        self.put_text(internal_id, orjson.dumps(record), micros, bulk=bulk)

    def put_text(self, internal_id: str, text: bytes, micros: int, *, bulk: bool = False) -> None:
        """Add or replace a record given as JSON text, served byte for byte as given."""
        old = self.key_of.get(internal_id)
        if old is not None:
            del self.keys[bisect.bisect_left(self.keys, old)]
        key = (micros, internal_id)
        if bulk:
            self.keys.append(key)
        else:
            bisect.insort(self.keys, key)
        self.key_of[internal_id] = key
        self.records[internal_id] = text

    def sort_index(self) -> None:
        self.keys.sort()

    def remove(self, internal_id: str) -> bool:
        key = self.key_of.pop(internal_id, None)
        if key is None:
            return False
        del self.keys[bisect.bisect_left(self.keys, key)]
        del self.records[internal_id]
        return True

    def page(
        self, since: int | None, before: int | None, limit: int, cursor: tuple[int, str] | None
    ) -> tuple[list[bytes], str | None]:
        """One page of the listing: records in [since, before), after `cursor`, in key order."""
        lo = 0 if since is None else bisect.bisect_left(self.keys, (since, ""))
        hi = len(self.keys) if before is None else bisect.bisect_left(self.keys, (before, ""))
        if cursor is not None:
            lo = max(lo, bisect.bisect_right(self.keys, cursor))
        stop = min(lo + limit, hi)
        chosen = self.keys[lo:stop]
        records = [self.records[key[1]] for key in chosen]
        next_cursor = encode_cursor(chosen[-1]) if stop < hi and chosen else None
        return records, next_cursor

    def get(self, internal_id: str) -> bytes | None:
        return self.records.get(internal_id)

    def valid_ids(self) -> list[str]:
        return [key[1] for key in self.keys if key[1] not in self.invalid]

    def new_id(self) -> str:
        record_id = f"{self.prefix}-{self.next_number:07d}"
        self.next_number += 1
        if record_id in self.records:  # taken by a record put as text; generated ids never collide
            return self.new_id()
        return record_id


class Catalogue:
    def __init__(self, products: int = 5000, collections: int = 200, seed: int = 42):
        self.rng = random.Random(seed)
        self.products = EntityCatalogue("products", "prod")
        self.collections = EntityCatalogue("collections", "coll")
        span = int((CATALOGUE_END - CATALOGUE_START).total_seconds())
        start = to_micros(CATALOGUE_START)
        previous = start
        for index in range(products):
            # Every 25th record shares the previous one's updatedAt, so equal times straddle pages.
            micros = previous if index % 25 == 24 else start + self.rng.randrange(span) * 1_000_000
            previous = micros
            self._create_product(micros, index)
        product_ids = list(self.products.records)
        for index in range(collections):
            micros = start + self.rng.randrange(span) * 1_000_000
            self._create_collection(micros, index, product_ids)
        self.products.sort_index()
        self.collections.sort_index()

    def entity(self, kind: str) -> EntityCatalogue:
        return {"products": self.products, "collections": self.collections}[kind]

    # --- generation -----------------------------------------------------------------
    def _product(self, record_id: str, micros: int, created: int, version: int) -> dict[str, Any]:
        rng = self.rng
        title = f"{rng.choice(ADJECTIVES)} {rng.choice(NOUNS)}"
        record: dict[str, Any] = {
            "id": record_id,
            "title": title if version == 1 else f"{title} v{version}",
            "description": None if rng.random() < 0.1 else f"{title} — sourced with care. Nº {rng.randrange(10**6)}",
            "thumbnail": None
            if rng.random() < 0.12
            else {"url": f"https://img.example.com/{record_id}.jpg", "altText": None if rng.random() < 0.3 else title},
            "listPrice": rng.randrange(50, 250_000),
            "sku": f"SKU-{rng.randrange(16**8):08X}",
            "createdAt": format_micros(created),
            "updatedAt": format_micros(micros),
            "meta": {
                "source": {"system": "byop", "version": version},
                "tags": rng.sample(TAGS, rng.randrange(0, 4)),
                "dimensions": {"weightGrams": rng.randrange(10, 5000), "fragile": rng.random() < 0.2},
            },
        }
        if rng.random() < 0.15:
            record["brand"] = rng.choice(["Acme", "Maison Dupré", "Øresund & Co", None])
        if rng.random() < 0.05:
            record["x-merchant-rank"] = rng.randrange(1000)
        return record

    def _create_product(self, micros: int, index: int | None = None) -> str:
        catalogue = self.products
        record_id = catalogue.new_id()
        record = self._product(record_id, micros, micros, 1)
        if index is not None:
            self._plant(catalogue, record_id, record, index, modulus=997, refused_modulus=1009)
        catalogue.put(record_id, record, micros, bulk=index is not None)
        return record_id

    def _collection(self, record_id: str, micros: int, created: int, version: int, product_ids: list[str]) -> dict[str, Any]:
        rng = self.rng
        title = f"{rng.choice(ADJECTIVES)} {rng.choice(['Picks', 'Favourites', 'Essentials', 'Specials', 'セール'])}"
        return {
            "id": record_id,
            "title": title if version == 1 else f"{title} v{version}",
            "description": None if rng.random() < 0.2 else f"Our {title.lower()}",
            "thumbnail": None if rng.random() < 0.3 else {"url": f"https://img.example.com/{record_id}.png", "altText": title},
            "productIds": rng.sample(product_ids, min(len(product_ids), rng.randrange(3, 21))),
            "createdAt": format_micros(created),
            "updatedAt": format_micros(micros),
            "meta": {"source": {"system": "byop", "version": version}, "featured": rng.random() < 0.3},
        }

    def _create_collection(self, micros: int, index: int | None, product_ids: list[str]) -> str:
        catalogue = self.collections
        record_id = catalogue.new_id()
        record = self._collection(record_id, micros, micros, 1, product_ids)
        if index is not None:
            self._plant(catalogue, record_id, record, index, modulus=97, refused_modulus=101)
        catalogue.put(record_id, record, micros, bulk=index is not None)
        return record_id

    @staticmethod
    def _plant(catalogue: EntityCatalogue, record_id: str, record: dict, index: int, modulus: int, refused_modulus: int) -> None:
        if index % modulus == modulus // 2:
            kind = INVALID_KINDS[(index // modulus) % len(INVALID_KINDS)]
            if kind == "no-title":
                del record["title"]
            elif kind == "empty-title":
                record["title"] = "  "
            elif kind == "negative-price":
                record["listPrice"] = -100 if "listPrice" in record else None
            elif kind == "string-price":
                record["listPrice"] = "12.99"
            elif kind == "bad-updated-at":
                record["updatedAt"] = "last Tuesday"
            elif kind == "no-id":
                del record["id"]
            if catalogue.kind == "collections" and kind in ("negative-price", "string-price"):
                record["title"] = None
            catalogue.invalid.add(record_id)
        elif index % refused_modulus == refused_modulus // 3:
            catalogue.refused.add(record_id)

    # --- changes through the admin surface -------------------------------------------
    def _pick(self, catalogue: EntityCatalogue, count: int) -> list[str]:
        candidates = [i for i in catalogue.valid_ids() if i not in catalogue.refused]
        return sorted(self.rng.sample(candidates, min(count, len(candidates))))

    def update(self, kind: str, *, ids: list[str] | None, count: int, now: datetime) -> list[str]:
        catalogue = self.entity(kind)
        chosen = ids if ids is not None else self._pick(catalogue, count)
        micros = to_micros(now)
        records = {record_id: record for record_id in chosen if (record := _editable(catalogue.get(record_id))) is not None}
        updated = []
        bulk = len(records) > 100  # many changes: re-sort the index once instead of per record
        if bulk:
            catalogue.keys = [key for key in catalogue.keys if key[1] not in records]
            for record_id in records:
                del catalogue.key_of[record_id]
        for record_id, record in records.items():
            version = int(record.get("meta", {}).get("source", {}).get("version", 1)) + 1
            record["title"] = f"{str(record.get('title') or 'Untitled').split(' v')[0]} v{version}"
            record.setdefault("meta", {}).setdefault("source", {})["version"] = version
            record["updatedAt"] = format_micros(micros)
            catalogue.put(record_id, record, micros, bulk=bulk)
            updated.append(record_id)
        if bulk:
            catalogue.sort_index()
        return updated

    def create(self, kind: str, *, count: int, now: datetime) -> list[str]:
        micros = to_micros(now)
        if kind == "products":
            return [self._create_product(micros) for _ in range(count)]
        product_ids = self.products.valid_ids()
        return [self._create_collection(micros, None, product_ids) for _ in range(count)]

    def put_texts(self, kind: str, records: list[tuple[str, int, bytes]]) -> list[str]:
        """Add or replace records given as (id, updatedAt micros, JSON text)."""
        catalogue = self.entity(kind)
        for record_id, micros, text in records:
            catalogue.put_text(record_id, text, micros)
            catalogue.invalid.discard(record_id)  # whoever put it decides what it is now
        return [record_id for record_id, _, _ in records]

    def delete(self, kind: str, *, ids: list[str] | None, count: int) -> list[str]:
        catalogue = self.entity(kind)
        chosen = ids if ids is not None else self._pick(catalogue, count)
        return [record_id for record_id in chosen if catalogue.remove(record_id)]


def _editable(raw: bytes | None) -> dict[str, Any] | None:
    """A record `update` can change: one that exists and that orjson reads (a record put as
    text with numbers beyond a double is changed by putting it again)."""
    try:
        record = orjson.loads(raw) if raw is not None else None
    except orjson.JSONDecodeError:
        return None
    return record if isinstance(record, dict) else None

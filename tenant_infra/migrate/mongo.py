"""Versioned MongoDB collections and indexes per product, applied with pymongo.

A product declares them in ``migrations/<product>/mongo.toml`` (``[[versions]]``, each
with collections and indexes). The applied version lives in the tenant database's
``_schema_version`` collection. MongoDB has no transactional DDL, so every step is
idempotent (create-if-missing, same-spec ``create_index``) and the version is recorded
after each version completes: a re-run after a failure resumes where it stopped.
The decision "what to apply" (:func:`plan`) is pure and tested without a server.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tenant_infra.errors import InvalidInput

VERSION_COLLECTION = "_schema_version"
_VERSION_ID = "schema"


@dataclass(frozen=True)
class IndexSpec:
    name: str
    keys: tuple[tuple[str, int], ...]
    unique: bool = False
    expire_after_seconds: int | None = None

    def options(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name}
        if self.unique:
            out["unique"] = True
        if self.expire_after_seconds is not None:
            out["expireAfterSeconds"] = self.expire_after_seconds
        return out


@dataclass(frozen=True)
class CollectionSpec:
    name: str
    indexes: tuple[IndexSpec, ...] = ()


@dataclass(frozen=True)
class MongoVersion:
    version: int
    description: str
    collections: tuple[CollectionSpec, ...] = field(default=())


@dataclass(frozen=True)
class MongoResult:
    database: str
    before: int
    after: int
    applied: tuple[int, ...]


def parse_spec(data: dict[str, Any]) -> list[MongoVersion]:
    """Validate a spec: versions 1..n, contiguous; collection and index names unique."""
    versions: list[MongoVersion] = []
    for i, raw in enumerate(data.get("versions", []), start=1):
        if raw.get("version") != i:
            raise InvalidInput(f"mongo spec: version #{i} must be numbered {i}")
        colls = []
        for c in raw.get("collections", []):
            idx = tuple(
                IndexSpec(
                    name=x["name"],
                    keys=tuple((str(k), int(d)) for k, d in x["keys"]),
                    unique=bool(x.get("unique", False)),
                    expire_after_seconds=x.get("expire_after_seconds"),
                )
                for x in c.get("indexes", [])
            )
            if len({x.name for x in idx}) != len(idx):
                raise InvalidInput(f"mongo spec: duplicate index name in {c['name']}")
            colls.append(CollectionSpec(str(c["name"]), idx))
        versions.append(MongoVersion(i, str(raw.get("description", "")), tuple(colls)))
    return versions


def load_spec(script_location: Path) -> list[MongoVersion]:
    """The product's versions; empty if it declares none (no ``mongo.toml``)."""
    path = Path(script_location) / "mongo.toml"
    if not path.exists():
        return []
    return parse_spec(tomllib.loads(path.read_text()))


def plan(versions: list[MongoVersion], applied: int) -> list[MongoVersion]:
    """What to apply to a database at version ``applied`` (0 = never migrated)."""
    latest = versions[-1].version if versions else 0
    if applied < 0 or applied > latest:
        raise InvalidInput(
            f"mongo: database is at version {applied} but the spec only knows 1..{latest}"
        )
    return [v for v in versions if v.version > applied]


def current_version(db: Any) -> int:
    doc = db[VERSION_COLLECTION].find_one({"_id": _VERSION_ID})
    return int(doc["version"]) if doc else 0


def apply(db: Any, versions: list[MongoVersion]) -> MongoResult:
    """Bring one tenant database (a pymongo ``Database``) to the latest version."""
    before = current_version(db)
    todo = plan(versions, before)
    existing = set(db.list_collection_names()) if todo else set()
    for v in todo:
        for coll in v.collections:
            if coll.name not in existing:
                db.create_collection(coll.name, check_exists=False)
                existing.add(coll.name)
            for idx in coll.indexes:
                db[coll.name].create_index(list(idx.keys), **idx.options())
        db[VERSION_COLLECTION].update_one(
            {"_id": _VERSION_ID},
            {"$set": {"version": v.version, "applied_at": datetime.now(UTC)}},
            upsert=True,
        )
    return MongoResult(
        db.name, before, todo[-1].version if todo else before, tuple(v.version for v in todo)
    )


def migrate_product(client: Any, database: str, script_location: Path) -> MongoResult:
    """Convenience: load the product's spec and apply it to ``client[database]``."""
    return apply(client[database], load_spec(script_location))

"""The product catalog and per-tier limits, loaded from ``catalog.toml``.

Components never hard-code which stores a product needs: they ask the catalog.
"""

from __future__ import annotations

import tomllib
from enum import StrEnum
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Annotated

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictInt,
    ValidationError,
    field_validator,
    model_validator,
)

from tenant_infra.errors import InvalidInput
from tenant_infra.project import project_root
from tenant_infra.tenant import validate_product

#: Where the per-product Alembic script directories live in a checkout.
MIGRATIONS_ROOT = Path(__file__).resolve().parent / "migrations"


class Store(StrEnum):
    POSTGRESQL = "postgresql"
    MONGODB = "mongodb"
    RABBITMQ = "rabbitmq"
    VAULT = "vault"


class IsolationMode(StrEnum):
    """Where a service's relational data lives (seed 000)."""

    DATABASE = "DATABASE"
    SCHEMA = "SCHEMA"


class Product(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    description: str = ""
    stores: frozenset[Store]
    migrations: str | None = None
    #: The product's modules and the stores each reads its connections for (the seed
    #: client's ``databases`` keys); none declared: one module named after the product.
    modules: dict[str, frozenset[Store]] = Field(default_factory=dict)
    #: The module key under which the product reads its RabbitMQ connection.
    rabbitmq_module: str | None = None
    #: Where its ``migrations`` directory is: the package's, or a project's own.
    migrations_root: Path = MIGRATIONS_ROOT

    def needs(self, store: Store) -> bool:
        return store in self.stores

    def module_stores(self) -> dict[str, frozenset[Store]]:
        """Each module's data stores (PostgreSQL, MongoDB)."""
        data = frozenset({Store.POSTGRESQL, Store.MONGODB}) & self.stores
        return dict(self.modules) or {self.name: data}

    @property
    def script_location(self) -> Path | None:
        return self.migrations_root / self.migrations if self.migrations else None


class Limits(BaseModel):
    """Per-tenant resource limits; every field is required so no limit is ever unset."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    # Upper bounds keep values inside what PostgreSQL (int4) and RabbitMQ accept.
    pg_connection_limit: Annotated[StrictInt, Field(ge=1, le=10_000)]
    pg_statement_timeout_ms: Annotated[StrictInt, Field(ge=1, le=86_400_000)]
    #: A session idle inside a transaction holds back vacuum for its whole database.
    pg_idle_in_transaction_timeout_ms: Annotated[StrictInt, Field(ge=1, le=86_400_000)]
    broker_max_connections: Annotated[StrictInt, Field(ge=1, le=100_000)]
    broker_max_queues: Annotated[StrictInt, Field(ge=1, le=100_000)]
    broker_queue_max_length: Annotated[StrictInt, Field(ge=1, le=1_000_000_000)]
    #: Bytes per queue: a count cap alone lets large messages fill broker memory or disk.
    broker_queue_max_bytes: Annotated[StrictInt, Field(ge=1, le=1 << 50)]
    #: Life of a Vault token the service's auth role issues, in seconds: the token must
    #: be renewed (or the instance log in again) within it. At least a minute, at most
    #: 32 days (Vault's default ``max_lease_ttl``, which caps every token anyway).
    vault_token_ttl_s: Annotated[StrictInt, Field(ge=60, le=2_764_800)]
    #: No renewal takes such a token past this, in seconds: then the instance logs in again.
    vault_token_max_ttl_s: Annotated[StrictInt, Field(ge=60, le=2_764_800)]

    @model_validator(mode="after")
    def _token_ttls(self) -> Limits:
        if self.vault_token_ttl_s > self.vault_token_max_ttl_s:
            raise ValueError(
                f"vault_token_ttl_s ({self.vault_token_ttl_s}) is longer than "
                f"vault_token_max_ttl_s ({self.vault_token_max_ttl_s})"
            )
        return self


class Catalog(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    products: dict[str, Product]
    tiers: dict[str, Limits] = Field(min_length=1)

    @field_validator("products", mode="before")
    @classmethod
    def _named(cls, value: dict[str, dict[str, object]]) -> dict[str, dict[str, object]]:
        for name, spec in value.items():
            validate_product(name)
            spec.setdefault("name", name)
        return value

    def product(self, name: str) -> Product:
        try:
            return self.products[name]
        except KeyError:
            known = ", ".join(sorted(self.products))
            raise InvalidInput(f"unknown product {name!r} (known: {known})") from None

    def tier(self, name: str) -> Limits:
        try:
            return self.tiers[name]
        except KeyError:
            known = ", ".join(sorted(self.tiers))
            raise InvalidInput(f"unknown tier {name!r} (known: {known})") from None


#: A project's own products, beside its ``Pulumi.yaml``.
PROJECT_CATALOG = "catalog.toml"


def load_catalog() -> Catalog:
    """The built-in catalog, with the products of the project's ``catalog.toml`` (their
    migrations under the project's ``migrations/``), if it has one."""
    own = project_root() / PROJECT_CATALOG
    return _load(own if own.is_file() else None)


@cache
def _load(project_catalog: Path | None) -> Catalog:
    text = resources.files("tenant_infra").joinpath("catalog.toml").read_text()
    raw = tomllib.loads(text)
    if project_catalog is not None:
        try:
            extra = tomllib.loads(project_catalog.read_text())
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise InvalidInput(f"{project_catalog}: cannot be read: {exc}") from None
        unknown = set(extra) - {"products"}
        if unknown or not isinstance(extra.get("products", {}), dict):
            raise InvalidInput(f"{project_catalog}: only [products.<name>] tables belong here")
        for name, spec in extra.get("products", {}).items():
            if name in raw["products"]:
                raise InvalidInput(f"{project_catalog}: product {name!r} is built in already")
            if not isinstance(spec, dict):
                raise InvalidInput(f"{project_catalog}: products.{name} must be a table")
            raw["products"][name] = {
                **spec,
                "migrations_root": project_catalog.parent / "migrations",
            }
    try:
        return Catalog.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(p) for p in first["loc"])
        where = project_catalog or "the built-in catalog.toml"
        raise InvalidInput(f"{where}: {field}: {first['msg']}") from None

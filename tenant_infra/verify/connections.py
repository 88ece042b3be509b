"""The connections document (README "The connections document") and admin access.

A service's Vault secret is one JSON document: the stack outputs' connection info
plus the passwords. ``tenantctl verify`` reads the same shape from a file, so an
operator can verify a tenant outside Pulumi. Every name in it is derivable from the
tenant id and product; a document whose names disagree with the derivation is
refused, so verify never probes objects the tenant does not own under its name.

Passwords are :class:`pydantic.SecretStr`: reprs show ``**********`` and no error
message built here quotes a value.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, model_validator

from tenant_infra import inputs
from tenant_infra.catalog import IsolationMode, Store, load_catalog
from tenant_infra.config import Host, Platform, one_line
from tenant_infra.errors import InvalidInput
from tenant_infra.tenant import TenantNames, pg_shared_database, validate_tenant_id
from tenant_infra.vaultclient import VaultAccess, operator_vault, read_secret

__all__ = ["VaultAccess"]  # re-exported: verify's callers name it from here

Port = Field(ge=1, le=65535)


class _Section(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)


class PostgresConnection(_Section):
    host: Host
    port: int = Port
    database: str = Field(min_length=1, max_length=63)
    #: ``schema`` in the document (the name shadows a pydantic attribute).
    schema_name: str = Field(alias="schema", min_length=1, max_length=63)
    user: str = Field(min_length=1, max_length=63)
    password: SecretStr
    sslmode: Literal["disable", "allow", "prefer", "require", "verify-ca", "verify-full"] = "prefer"

    def params(self, database: str | None = None) -> dict[str, Any]:
        """libpq keyword parameters (the password never goes into a DSN string or argv)."""
        return {
            "host": self.host,
            "port": self.port,
            "dbname": database or self.database,
            "user": self.user,
            "password": self.password.get_secret_value(),
            "sslmode": self.sslmode,
            "connect_timeout": 10,
            "application_name": "tenantctl-verify",
            # Sent at connect, so it beats whatever the role set for itself (a role's
            # SQL_ASCII would hand every text back as bytes).
            "client_encoding": "UTF8",
        }


class RabbitmqConnection(_Section):
    host: Host
    port: int = Port
    vhost: str = Field(min_length=1)
    user: str = Field(min_length=1)
    password: SecretStr

    @property
    def tls(self) -> bool:
        """AMQPS by convention on 5671 (the document has no TLS flag)."""
        return self.port == 5671


class MongodbConnection(_Section):
    host: Host
    port: int | None = Field(None, ge=1, le=65535)
    database: str = Field(min_length=1)
    user: str = Field(min_length=1)
    password: SecretStr
    auth_source: str = Field("admin", alias="authSource")
    tls: bool | None = None


class ConnectionsDocument(_Section):
    """One service's connections: what it finds in Vault at ``tenants/<tenant>/<product>``."""

    tenant: str
    product: str
    isolation: IsolationMode
    postgresql: PostgresConnection
    rabbitmq: RabbitmqConnection | None = None
    mongodb: MongodbConnection | None = None

    def missing(self) -> list[str]:
        """The stores the product uses that the document has no section for."""
        product = load_catalog().product(self.product)
        present = {Store.RABBITMQ: self.rabbitmq, Store.MONGODB: self.mongodb}
        return [s.value for s, section in present.items() if product.needs(s) and section is None]

    @model_validator(mode="after")
    def _derived_names(self) -> ConnectionsDocument:
        validate_tenant_id(self.tenant)
        product = load_catalog().product(self.product)
        names = TenantNames(self.tenant).service(self.product)
        database = (
            names.pg_dedicated_database
            if self.isolation is IsolationMode.DATABASE
            else pg_shared_database(self.product)
        )
        expected: dict[str, tuple[str, str]] = {
            "postgresql.database": (self.postgresql.database, database),
            "postgresql.schema": (self.postgresql.schema_name, names.pg_schema),
        }
        if self.postgresql.user not in names.pg_logins():
            raise ValueError(
                f"postgresql.user is {self.postgresql.user!r}, not one of the service's logins "
                f"({names.pg_role}, or a later generation's or slot's)"
            )
        # Sections follow the product's stores in the catalog: none for a store it
        # does not use. A missing one is for its consumer to judge (a migration needs
        # PostgreSQL only; verify fails the store's checks).
        for store, section in ((Store.RABBITMQ, self.rabbitmq), (Store.MONGODB, self.mongodb)):
            if section is not None and not product.needs(store):
                raise ValueError(
                    f"product {self.product!r} uses no {store.value}: the document's "
                    f"{store.value} section is not its"
                )
        if self.rabbitmq is not None:
            expected["rabbitmq.vhost"] = (self.rabbitmq.vhost, names.tenant_names.vhost)
            _one_of("rabbitmq.user", self.rabbitmq.user, names.broker_logins())
        if self.mongodb is not None:
            expected["mongodb.database"] = (
                self.mongodb.database,
                names.tenant_names.mongo_database,
            )
            _one_of("mongodb.user", self.mongodb.user, names.mongo_logins())
        for where, (found, wanted) in expected.items():
            if found != wanted:
                raise ValueError(
                    f"{where} is {found!r}, but tenant {self.tenant!r} / {self.product!r} "
                    f"in {self.isolation.value} mode uses {wanted!r}"
                )
        return self


def parse_document(data: Any, where: str) -> ConnectionsDocument:
    """Validate one document; errors name the field and rule, never a value."""
    if not isinstance(data, Mapping):
        raise InvalidInput(f"{where}: a connections document must be a JSON object")
    try:
        return ConnectionsDocument.model_validate(dict(data))
    except ValidationError as exc:
        raise InvalidInput(one_line(exc, where)) from None
    except InvalidInput as exc:
        raise InvalidInput(f"{where}: {exc}") from None


def load_connections(source: Path | str | Mapping[str, Any]) -> list[ConnectionsDocument]:
    """Documents from a file (one document or a JSON list of them; ``-`` is standard
    input) or from a dict."""
    if isinstance(source, Mapping):
        return [parse_document(source, "connections")]
    where = str(source)
    # "-": standard input, so that no file holding every tenant's password need exist.
    data = inputs.read_json(where, "connections file")
    items = data if isinstance(data, list) else [data]
    if not items:
        raise InvalidInput(f"connections file {where!r} holds no document")
    return [
        parse_document(item, f"{where}[{i}]" if isinstance(data, list) else where)
        for i, item in enumerate(items)
    ]


# ---------------------------------------------------------------- admin access


@dataclass(frozen=True)
class RabbitmqAdmin:
    management_url: str
    user: str
    password: str = field(repr=False)


@dataclass(frozen=True)
class AdminAccess:
    """What verify may use to ask the platform what *others* can do to a tenant.

    ``None`` for a store means no admin access: the checks that need it fail with a
    reason saying which variable to set, since an unproven isolation is not a pass.
    PostgreSQL needs none: its catalogs, readable by the tenant role, hold the ACLs.
    """

    rabbitmq: RabbitmqAdmin | None = None
    vault: VaultAccess | None = None

    @classmethod
    def from_environment(
        cls,
        document: ConnectionsDocument,
        platform: Platform | None = None,
        environ: Mapping[str, str] | None = None,
        root: Path | None = None,
    ) -> AdminAccess:
        """Admin access by the conventions of :mod:`tenant_infra.credentials`.

        The admin user and management URL come only from the stack's ``platform``
        block, never from the document: a connections file must not be able to send the
        admin password to a host of its choosing. Passwords only from the environment.
        """
        env = os.environ if environ is None else environ
        rabbit: RabbitmqAdmin | None = None
        rabbit_password = env.get("TENANT_INFRA_RABBITMQ_PASSWORD")
        endpoint = platform.rabbitmq if platform else None
        if document.rabbitmq is not None and rabbit_password and endpoint is not None:
            rabbit = RabbitmqAdmin(endpoint.management_url, endpoint.admin_user, rabbit_password)
        return cls(
            rabbitmq=rabbit,
            vault=operator_vault(
                env, root=root, mount=platform.vault.kv_mount if platform else None
            ),
        )


def read_from_vault(
    vault: VaultAccess, tenant: str, products: Sequence[str], timeout: float = 10.0
) -> list[ConnectionsDocument]:
    """Each service's document from ``<mount>/data/tenants/<tenant>/<product>`` (KV v2)."""
    names = TenantNames(tenant)
    documents = []
    for product in products:
        secret = names.service(product).vault_secret
        data = read_secret(vault, secret, timeout)
        documents.append(parse_document(data, f"vault:{vault.mount}/{secret}"))
    return documents


def _one_of(where: str, found: str, logins: frozenset[str]) -> None:
    """A user of the service's, in whichever rotation slot."""
    if found not in logins:
        raise ValueError(
            f"{where} is {found!r}, not one of the service's users ({', '.join(sorted(logins))})"
        )

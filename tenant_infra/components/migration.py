"""Post-deploy migration of one tenant service's PostgreSQL storage, as a Pulumi resource.

A dynamic resource rather than a resource hook: a failed ``create``/``update`` keeps the
previous state, so the next ``pulumi up`` retries it, and ``diff`` lets ``pulumi preview``
show the pending move as ``head: "0002" => "0003"``. The provider connects AS THE
TENANT ROLE (least privilege) and runs the same engine as ``tenantctl migrate``: one
transaction, the lock on its own version table, ``search_path`` pinned to the tenant schema.

The provider is module-level code with no state: Pulumi pickles it with dill, so it
must not capture a secret or a large object. The password arrives as a secret input
and is never returned as an output nor put in a message.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pulumi
import pulumi.dynamic

from tenant_infra.components import stale_provider
from tenant_infra.migrate.sandbox import clean_text

#: Inputs that locate the storage; a change means "migrate there", not "replace".
_LOCATION = ("host", "port", "database", "schema", "user", "sslmode")
_PUBLIC = ("tenant", "product", "isolation", *_LOCATION, "head")


def head_revision(product: str) -> str | None:
    """The product's head revision (``None``: no migrations), read without importing
    revision code into this process, which holds the platform's secrets."""
    from tenant_infra.catalog import load_catalog
    from tenant_infra.migrate.revisions import declared_head

    location = load_catalog().product(product).script_location
    if location is None:
        return None
    return declared_head(location)


def _migrate(props: dict[str, Any]) -> str:
    """Bring the service's schema to ``props['head']``; the revision reached, or raise.

    The revisions run in a sandbox (:mod:`tenant_infra.migrate.sandbox`) that holds
    only this service's connection, never this process's environment.
    """
    from tenant_infra.catalog import load_catalog
    from tenant_infra.migrate.executors import migrate_one
    from tenant_infra.migrate.targets import MigrationTarget

    tenant, product, head = props["tenant"], props["product"], props["head"]
    location = load_catalog().product(product).script_location
    if location is None:
        raise RuntimeError(f"product {product} has no migrations (tenant {tenant})")
    target = MigrationTarget(
        schema=str(props["schema"]),
        database=str(props["database"]),
        tenant=tenant,
        product=product,
        role=str(props["user"]),
        params={
            "host": str(props["host"]),
            "port": str(int(props["port"])),
            "dbname": str(props["database"]),
            "user": str(props["user"]),
            "password": str(props["password"]),
            "sslmode": str(props.get("sslmode") or "prefer"),
            "connect_timeout": "15",
            "application_name": "tenant-infra-migrate",
        },
    )
    result = migrate_one(str(location), target, head)
    if result.status == "failed":
        raise RuntimeError(
            f"migration of tenant {tenant} product {product} to revision {head} failed"
            f" (still at {result.before or 'base'}): {result.error}"
        )
    return result.after or ""


def _outs(props: dict[str, Any], revision: str) -> dict[str, Any]:
    return {**{k: props.get(k) for k in _PUBLIC}, "revision": revision}


def suspended(props: dict[str, Any]) -> bool:
    """A suspended service's login is refused, so its marker waits at its revision: a new
    head is not a change then (an ``up`` of the fleet while it rests succeeds), and
    resuming, which restores the login first (``depends_on``), brings it to head. A
    marker created or moved while suspended records no revision (``""``), so resuming
    migrates it there. ``suspended`` is an input only: outputs change on create and
    update, never on the no-change diff of a suspension."""
    return bool(props.get("suspended"))


def _moved(olds: dict[str, Any], news: dict[str, Any], keys: tuple[str, ...]) -> bool:
    return any(olds.get(k) != news.get(k) for k in keys)


class ServiceMigrationProvider(pulumi.dynamic.ResourceProvider):
    """create/update = migrate to ``head``; diff = ``head`` differs from stored ``revision``."""

    def create(self, props: dict[str, Any]) -> pulumi.dynamic.CreateResult:
        revision = "" if suspended(props) else _migrate(props)
        return pulumi.dynamic.CreateResult(
            id_=f"{props['tenant']}/{props['product']}", outs=_outs(props, revision)
        )

    def diff(
        self, _id: str, _olds: dict[str, Any], _news: dict[str, Any]
    ) -> pulumi.dynamic.DiffResult:
        moved = _moved(_olds, _news, _LOCATION)
        behind = _olds.get("revision") != _news.get("head") and not suspended(_news)
        return pulumi.dynamic.DiffResult(
            changes=moved or behind or stale_provider(_olds),
            replaces=[k for k in ("tenant", "product") if _olds.get(k) != _news.get(k)],
            delete_before_replace=False,
        )

    def update(
        self, _id: str, _olds: dict[str, Any], _news: dict[str, Any]
    ) -> pulumi.dynamic.UpdateResult:
        if suspended(_news):  # moved or a new provider: recorded, never connected
            kept = "" if _moved(_olds, _news, _LOCATION) else _olds.get("revision") or ""
            return pulumi.dynamic.UpdateResult(outs=_outs(_news, kept))
        return pulumi.dynamic.UpdateResult(outs=_outs(_news, _migrate(_news)))

    def delete(self, _id: str, _props: dict[str, Any]) -> None:
        """Nothing to undo: the schema or database is removed by the storage component."""


@dataclass
class ServiceMigrationArgs:
    tenant: str
    product: str
    isolation: str
    host: pulumi.Input[str]
    port: pulumi.Input[int]
    database: pulumi.Input[str]
    schema: pulumi.Input[str]
    user: pulumi.Input[str]
    password: pulumi.Input[str]
    sslmode: pulumi.Input[str]
    head: str
    suspended: bool = False


class ServiceMigration(pulumi.dynamic.Resource, module="tenant", name="ServiceMigration"):
    """The service's storage at ``head``. Make it depend on the role, schema/database and
    grants; mark the service ready only after it (``depends_on`` or its ``revision``)."""

    revision: pulumi.Output[str]

    def __init__(
        self, name: str, args: ServiceMigrationArgs, opts: pulumi.ResourceOptions | None = None
    ) -> None:
        props: dict[str, Any] = {
            "tenant": args.tenant,
            "product": args.product,
            "isolation": args.isolation,
            "host": args.host,
            "port": args.port,
            "database": args.database,
            "schema": args.schema,
            "user": args.user,
            "password": pulumi.Output.secret(args.password),
            "sslmode": args.sslmode,
            "head": args.head,
            "suspended": args.suspended,
            "revision": None,
        }
        opts = pulumi.ResourceOptions.merge(
            opts, pulumi.ResourceOptions(additional_secret_outputs=["password"])
        )
        super().__init__(ServiceMigrationProvider(), name, props, opts)


# --------------------------------------------------------------------------- MongoDB


def mongo_head(product: str) -> int | None:
    """The latest version of the product's ``mongo.toml`` (``None``: it declares none)."""
    from tenant_infra.catalog import load_catalog
    from tenant_infra.migrate.mongo import load_spec

    location = load_catalog().product(product).script_location
    versions = load_spec(location) if location is not None else []
    return versions[-1].version if versions else None


def mongo_client_options(props: dict[str, Any]) -> dict[str, Any]:
    """pymongo arguments for the service user: SRV on Atlas, host and port otherwise."""
    from tenant_infra.mongodb import client_options

    return client_options(
        host=str(props["host"]),
        port=None if props.get("srv") else int(props["port"]),
        user=str(props["user"]),
        password=str(props["password"]),
        auth_source=str(props["auth_source"]),
        tls=bool(props["tls"]),
    )


def _migrate_mongo(props: dict[str, Any]) -> int:
    """Apply the product's MongoDB versions as the service, in a sandbox that holds only
    this service's connection (as :func:`_migrate` does)."""
    from tenant_infra.catalog import load_catalog
    from tenant_infra.migrate.sandbox import Sandbox
    from tenant_infra.migrate.worker import hello

    tenant, product = props["tenant"], props["product"]
    location = load_catalog().product(product).script_location
    assert location is not None
    port = 27017 if props.get("srv") else int(props["port"])
    with Sandbox(location, mongo=True) as sandbox:
        lane = sandbox.lane()
        try:
            lane.send(hello({}, "heads", head=sandbox.head, ports=[port, 53]))  # 53: SRV
            reply = lane.request(
                {
                    "op": "mongo",
                    "client": mongo_client_options(props),
                    "database": str(props["database"]),
                }
            )
        finally:
            lane.close()
    after = reply.get("after") if reply is not None else None
    if not isinstance(after, int):
        detail = reply.get("error") if reply is not None else "the migration process ended"
        raise RuntimeError(
            f"MongoDB migration of tenant {tenant} product {product} to version "
            f"{props['head']} failed: {clean_text(detail)}"
        )
    return after


_MONGO_LOCATION = ("host", "port", "database", "user")
_MONGO_PUBLIC = (
    "tenant",
    "product",
    "host",
    "port",
    "database",
    "user",
    "auth_source",
    "tls",
    "srv",
    "head",
)


class MongoMigrationProvider(pulumi.dynamic.ResourceProvider):
    """create/update = apply the product's MongoDB versions up to ``head`` as the service."""

    def create(self, props: dict[str, Any]) -> pulumi.dynamic.CreateResult:
        version = None if suspended(props) else _migrate_mongo(props)
        outs = {**{k: props.get(k) for k in _MONGO_PUBLIC}, "version": version}
        return pulumi.dynamic.CreateResult(
            id_=f"{props['tenant']}/{props['product']}/mongo", outs=outs
        )

    def diff(
        self, _id: str, _olds: dict[str, Any], _news: dict[str, Any]
    ) -> pulumi.dynamic.DiffResult:
        moved = _moved(_olds, _news, _MONGO_LOCATION)
        behind = _olds.get("version") != _news.get("head") and not suspended(_news)
        return pulumi.dynamic.DiffResult(
            changes=moved or behind or stale_provider(_olds),
            replaces=[k for k in ("tenant", "product") if _olds.get(k) != _news.get(k)],
        )

    def update(
        self, _id: str, _olds: dict[str, Any], _news: dict[str, Any]
    ) -> pulumi.dynamic.UpdateResult:
        if not suspended(_news):
            version = _migrate_mongo(_news)
        elif _moved(_olds, _news, _MONGO_LOCATION):
            version = None
        else:
            version = _olds.get("version")
        return pulumi.dynamic.UpdateResult(
            outs={**{k: _news.get(k) for k in _MONGO_PUBLIC}, "version": version}
        )

    def delete(self, _id: str, _props: dict[str, Any]) -> None:
        """Nothing to undo: collections go with the tenant database."""


class MongoMigration(pulumi.dynamic.Resource, module="tenant", name="MongoMigration"):
    """The service's MongoDB collections and indexes at the product's latest version."""

    version: pulumi.Output[int]

    def __init__(
        self,
        name: str,
        props: dict[str, pulumi.Input[Any]],
        opts: pulumi.ResourceOptions | None = None,
    ) -> None:
        props = {**props, "password": pulumi.Output.secret(props["password"]), "version": None}
        opts = pulumi.ResourceOptions.merge(
            opts, pulumi.ResourceOptions(additional_secret_outputs=["password"])
        )
        super().__init__(MongoMigrationProvider(), name, props, opts)

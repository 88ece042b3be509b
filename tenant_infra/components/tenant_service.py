"""One product registered as a service of a tenant: every store it needs, composed.

What a product needs comes from the catalog (``Product.stores``), never from code
here. Registering another service adds a sibling ``TenantService``; no existing
resource's name, parent or inputs depend on which other services exist.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pulumi

from tenant_infra.catalog import IsolationMode, Limits, Product, Store
from tenant_infra.components import PACKAGE
from tenant_infra.components.broker import BrokerUser, TenantVhost
from tenant_infra.components.migration import (
    MongoMigration,
    ServiceMigration,
    ServiceMigrationArgs,
    head_revision,
    mongo_head,
)
from tenant_infra.components.mongodb import MongoUser
from tenant_infra.components.postgres import PostgresArgs, PostgresStore, ServicePostgres
from tenant_infra.components.providers import Providers
from tenant_infra.components.vault import ServiceCredentials
from tenant_infra.config import AtlasMongo, Credentials, Promotion
from tenant_infra.tenant import ServiceNames


@dataclass(frozen=True)
class TenantServiceArgs:
    names: ServiceNames
    product: Product
    isolation: IsolationMode
    limits: Limits
    protect_data: bool
    #: Every login refused; everything stays declared (``tenantctl suspend``).
    suspended: bool = False
    #: Only the data is declared (role NOLOGIN, database or schema): a retained
    #: service, or one about to be purged. Users, secrets and migrations go.
    data_only: bool = False
    #: The live store's login generation, and a promotion under way (``tenantctl promote``).
    generation: int = 0
    promotion: Promotion | None = None
    #: Each store's logins, and a rotation under way (``tenantctl rotate``).
    credentials: Credentials = field(default_factory=Credentials)


class TenantService(pulumi.ComponentResource):
    """A tenant's service: PostgreSQL store and role, broker and MongoDB users, Vault secret."""

    #: Non-secret facts about the service, exported as the stack output ``services.<product>``.
    info: pulumi.Output[dict[str, Any]]

    def __init__(
        self,
        name: str,
        args: TenantServiceArgs,
        providers: Providers,
        vhost: TenantVhost | None,
        opts: pulumi.ResourceOptions | None = None,
    ) -> None:
        super().__init__(f"{PACKAGE}:tenant:TenantService", name, None, opts)
        names, platform = args.names, providers.platform
        self._platform = platform
        child = pulumi.ResourceOptions(parent=self)
        endpoint = platform.postgres_for(names.product)

        postgres = ServicePostgres(
            f"{name}-postgres",
            PostgresArgs(
                names,
                args.isolation,
                args.limits,
                args.protect_data,
                login=not (args.suspended or args.data_only),
                generation=args.generation,
                promotion=args.promotion,
                logins=args.credentials.postgres,
            ),
            providers,
            child,
        )
        postgres_doc: dict[str, Any] = {
            "host": endpoint.host,
            "port": endpoint.port,
            "database": postgres.database,
            "schema": postgres.schema,
            "user": postgres.role,
            "password": postgres.password,
            "sslmode": endpoint.sslmode,
        }
        document: dict[str, Any] = {
            "tenant": names.tenant,
            "product": names.product,
            "isolation": args.isolation.value,
            "postgresql": postgres_doc,
        }
        info: dict[str, Any] = {
            "isolation": args.isolation.value,
            "postgresql": {k: v for k, v in postgres_doc.items() if k != "password"},
        }
        self.postgres = postgres
        if args.data_only:
            self.info = pulumi.Output.from_input(info)
            self.register_outputs({"info": self.info})
            return
        head = head_revision(names.product)
        promotion = args.promotion
        if promotion is not None and not promotion.repointed and promotion.revision:
            # Neither store moves past the revision being copied until the move is over.
            head = promotion.revision
        if head is not None:
            # Seed 002, stage 4: the product's migrations run as the service's own role
            # once its storage exists; a failure fails the update and leaves the service
            # at its previous revision, and the next `up` retries.
            migration = self._migration(
                f"{name}-migration", args, postgres, args.isolation, head, postgres
            )
            info["revision"] = migration.revision
        target = postgres.target
        if target is not None and promotion and promotion.revision and not promotion.aborted:
            # The dedicated store of a promotion, at exactly the source's revision (its
            # data is copied next), as its own new login. Not a ``-migration``: the
            # service's state follows its live store only.
            self._migration(
                f"{name}-promotion-target",
                args,
                target,
                IsolationMode.DATABASE,
                promotion.revision,
                postgres,
            )

        if args.product.needs(Store.RABBITMQ):
            assert vhost is not None and platform.rabbitmq is not None
            broker = BrokerUser(
                f"{name}-rabbitmq",
                names,
                vhost,
                providers.rabbitmq(),
                args.suspended,
                child,
                args.credentials.rabbitmq,
            )
            rabbit_doc = {
                "host": platform.rabbitmq.amqp_host,
                "port": platform.rabbitmq.amqp_port,
                "vhost": vhost.name,
                "user": broker.username,
                "password": broker.password,
            }
            document["rabbitmq"] = rabbit_doc
            info["rabbitmq"] = {k: v for k, v in rabbit_doc.items() if k != "password"}

        if args.product.needs(Store.MONGODB):
            backend = platform.mongodb
            assert backend is not None
            mongo = MongoUser(
                f"{name}-mongodb",
                names,
                backend,
                providers.atlas() if isinstance(backend, AtlasMongo) else None,
                args.suspended,
                child,
                args.credentials.mongodb,
            )
            mongo_doc: dict[str, Any] = {
                "host": backend.host,
                "database": names.tenant_names.mongo_database,
                "user": mongo.username,
                "password": mongo.password,
                "authSource": "admin"
                if isinstance(backend, AtlasMongo)
                else names.tenant_names.mongo_database,
            }
            if not isinstance(backend, AtlasMongo):
                mongo_doc |= {"port": backend.port, "tls": backend.tls}
            document["mongodb"] = mongo_doc
            info["mongodb"] = {k: v for k, v in mongo_doc.items() if k != "password"}
            version = mongo_head(names.product)
            if version is not None:
                where: dict[str, Any] = (
                    {"host": backend.host, "port": 27017, "srv": True, "tls": True}
                    if isinstance(backend, AtlasMongo)
                    else {
                        "host": backend.host,
                        "port": backend.port,
                        "srv": False,
                        "tls": backend.tls,
                    }
                )
                # The product's collections and indexes, created as the service's own user.
                MongoMigration(
                    f"{name}-mongodb-migration",
                    {
                        "tenant": names.tenant,
                        "product": names.product,
                        **where,
                        "database": mongo_doc["database"],
                        "user": mongo.username,
                        "password": mongo.password,
                        "auth_source": mongo_doc["authSource"],
                        "head": version,
                        "suspended": args.suspended,
                    },
                    pulumi.ResourceOptions(parent=self, depends_on=[mongo]),
                )

        credentials = ServiceCredentials(
            f"{name}-vault",
            names,
            platform.vault.kv_mount,
            pulumi.Output.from_input(document),
            providers.vault(),
            child,
            auth=platform.vault.auth,
            limits=args.limits,
            suspended=args.suspended,
        )
        info["vault"] = credentials.info
        self.postgres = postgres
        self.info = pulumi.Output.from_input(info)
        self.register_outputs({"info": self.info})

    def _migration(
        self,
        name: str,
        args: TenantServiceArgs,
        store: ServicePostgres | PostgresStore,
        isolation: IsolationMode,
        head: str,
        after: pulumi.Resource,
    ) -> ServiceMigration:
        """``store`` brought to ``head`` by the product's revisions, as its own login."""
        endpoint = self._platform.postgres_for(args.names.product)
        return ServiceMigration(
            name,
            ServiceMigrationArgs(
                tenant=args.names.tenant,
                product=args.names.product,
                isolation=isolation.value,
                host=endpoint.host,
                port=endpoint.port,
                database=store.database,
                schema=store.schema,
                user=store.role,
                password=store.password,
                sslmode=endpoint.sslmode,
                head=head,
                suspended=args.suspended,
            ),
            pulumi.ResourceOptions(parent=self, depends_on=[after]),
        )

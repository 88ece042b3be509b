"""The control plane's registry, declared by the platform program with least privilege.

- Its own database on the platform's ``default`` PostgreSQL server, closed to PUBLIC
  (CONNECT and the ``public`` schema).
- ``registry.owner`` owns the database, its ``registry`` schema and every table, and
  runs the registry's migrations: the only role that can alter a table or the
  trigger that keeps the history append-only.
- ``registry.user``, the control plane's role: CONNECT, USAGE, and SELECT, INSERT,
  UPDATE, DELETE on the tables the owner creates (the history's trigger refuses the
  last two there); no DDL.
- ``registry.reader``, the multi-tenancy API's: CONNECT, USAGE and SELECT.

None has an attribute beyond LOGIN. Passwords come from the environment
(``TENANT_INFRA_REGISTRY_{OWNER_,,READER_}PASSWORD``), like every platform secret.
"""

from __future__ import annotations

import pulumi
import pulumi_postgresql as postgresql

from tenant_infra.components import PACKAGE
from tenant_infra.components.postgres import revoke_public, unprivileged_role
from tenant_infra.components.providers import Providers
from tenant_infra.config import RegistrySettings
from tenant_infra.registry.store import SCHEMA


class RegistryDatabase(pulumi.ComponentResource):
    """Database, schema, writer and reader of the registry."""

    database: pulumi.Output[str]

    def __init__(
        self,
        settings: RegistrySettings,
        providers: Providers,
        protect_data: bool,
        opts: pulumi.ResourceOptions | None = None,
    ) -> None:
        name = "platform-registry"
        super().__init__(f"{PACKAGE}:platform:RegistryDatabase", name, None, opts)
        credentials = providers.credentials
        admin = providers.postgres("default", "postgres", "admin")
        here = pulumi.ResourceOptions(parent=self, provider=admin)

        owner = unprivileged_role(
            f"{name}-owner", settings.owner, credentials.registry_password("owner"), here
        )
        writer = unprivileged_role(
            f"{name}-writer", settings.user, credentials.registry_password("user"), here
        )
        reader = unprivileged_role(
            f"{name}-reader", settings.reader, credentials.registry_password("reader"), here
        )
        database = postgresql.Database(
            f"{name}-db",
            name=settings.database,
            owner=owner.name,
            template="template0",
            encoding="UTF8",
            opts=pulumi.ResourceOptions.merge(
                here, pulumi.ResourceOptions(protect=protect_data, depends_on=[owner])
            ),
        )
        revoke_public(
            f"{name}-revoke-public",
            database.name,
            pulumi.ResourceOptions(parent=self, provider=admin, deleted_with=database),
        )
        inside = pulumi.ResourceOptions(
            parent=self,
            provider=providers.postgres("default", database.name, "registry", [database]),
            deleted_with=database,
        )
        revoke_public(f"{name}-revoke-public-schema", database.name, inside, schema="public")
        schema = postgresql.Schema(
            f"{name}-schema",
            name=SCHEMA,
            database=database.name,
            owner=owner.name,
            drop_cascade=not protect_data,
            opts=pulumi.ResourceOptions.merge(inside, pulumi.ResourceOptions(protect=protect_data)),
        )
        for key, role, privileges in (
            ("writer", writer, ["SELECT", "INSERT", "UPDATE", "DELETE"]),
            ("reader", reader, ["SELECT"]),
        ):
            postgresql.Grant(
                f"{name}-{key}-connect",
                role=role.name,
                database=database.name,
                object_type="database",
                privileges=["CONNECT"],
                opts=inside,
            )
            postgresql.Grant(
                f"{name}-{key}-usage",
                role=role.name,
                database=database.name,
                schema=schema.name,
                object_type="schema",
                privileges=["USAGE"],
                opts=inside,
            )
            postgresql.DefaultPrivileges(
                f"{name}-{key}-tables",
                role=role.name,
                owner=owner.name,
                database=database.name,
                schema=schema.name,
                object_type="table",
                privileges=privileges,
                opts=inside,
            )
        self.database = database.name
        self.register_outputs({"database": self.database})

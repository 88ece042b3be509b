"""The control plane's registry, declared by the platform program with least privilege.

- Its own database on the platform's ``default`` PostgreSQL server, owned by the
  control plane's role, closed to PUBLIC (CONNECT and the ``public`` schema).
- The control plane's role (``registry.user``): owns the database and its
  ``registry`` schema, so it is the only writer; nothing else (no superuser, no
  CREATEDB, no CREATEROLE).
- The read-only role (``registry.reader``) of the multi-tenancy API: CONNECT, USAGE
  on ``registry``, and SELECT on every table the control plane creates there
  (default privileges: the registry's migrations create its tables later).

Passwords come from the environment (``TENANT_INFRA_REGISTRY_PASSWORD``,
``TENANT_INFRA_REGISTRY_READER_PASSWORD``), like every platform secret.
"""

from __future__ import annotations

import pulumi
import pulumi_postgresql as postgresql

from components import PACKAGE
from components.postgres import revoke_public, unprivileged_role
from components.providers import Providers
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

        writer = unprivileged_role(
            f"{name}-writer", settings.user, credentials.registry_password(), here
        )
        reader = unprivileged_role(
            f"{name}-reader", settings.reader, credentials.registry_password(reader=True), here
        )
        database = postgresql.Database(
            f"{name}-db",
            name=settings.database,
            owner=writer.name,
            template="template0",
            encoding="UTF8",
            opts=pulumi.ResourceOptions.merge(
                here, pulumi.ResourceOptions(protect=protect_data, depends_on=[writer])
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
            owner=writer.name,
            drop_cascade=not protect_data,
            opts=pulumi.ResourceOptions.merge(inside, pulumi.ResourceOptions(protect=protect_data)),
        )
        postgresql.Grant(
            f"{name}-reader-connect",
            role=reader.name,
            database=database.name,
            object_type="database",
            privileges=["CONNECT"],
            opts=inside,
        )
        postgresql.Grant(
            f"{name}-reader-usage",
            role=reader.name,
            database=database.name,
            schema=schema.name,
            object_type="schema",
            privileges=["USAGE"],
            opts=inside,
        )
        postgresql.DefaultPrivileges(
            f"{name}-reader-select",
            role=reader.name,
            owner=writer.name,
            database=database.name,
            schema=schema.name,
            object_type="table",
            privileges=["SELECT"],
            opts=inside,
        )
        self.database = database.name
        self.register_outputs({"database": self.database})

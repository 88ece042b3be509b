"""What every tenant relies on, applied once per platform (the ``platform/`` project).

- Each product's shared database for SCHEMA-mode tenants, hardened: PUBLIC may not
  CONNECT to it (each tenant role is granted CONNECT by its own stack) nor create
  anything in, or even use, its ``public`` schema.
- On servers the platform controls (``closeMaintenanceDatabases``), PUBLIC's CONNECT
  on ``postgres`` and ``template1`` taken: tenant roles cannot leave objects there.
- The Vault KV v2 mount holding every tenant service's credentials.
- The Vault auth method product instances log in with (AppRole or Kubernetes), on
  which every tenant stack declares its services' roles.
"""

from __future__ import annotations

import pulumi
import pulumi_postgresql as postgresql
import pulumi_vault as vault

from tenant_infra.components import PACKAGE
from tenant_infra.components.postgres import revoke_public
from tenant_infra.components.providers import Providers
from tenant_infra.config import AppRoleAuth, KubernetesAuth
from tenant_infra.tenant import pg_shared_database


class ProductDatabase(pulumi.ComponentResource):
    """A product's shared database, closed to PUBLIC."""

    name: pulumi.Output[str]

    def __init__(
        self,
        product: str,
        providers: Providers,
        protect_data: bool,
        opts: pulumi.ResourceOptions | None = None,
    ) -> None:
        name = f"platform-{product}"
        super().__init__(f"{PACKAGE}:platform:ProductDatabase", name, None, opts)
        admin = providers.postgres(product, "postgres", "admin")
        database = postgresql.Database(
            f"{name}-db",
            name=pg_shared_database(product),
            template="template0",
            encoding="UTF8",
            opts=pulumi.ResourceOptions(parent=self, provider=admin, protect=protect_data),
        )
        inside = pulumi.ResourceOptions(
            parent=self,
            provider=providers.postgres(product, database.name, "shared", [database]),
            deleted_with=database,
        )
        revoke_public(
            f"{name}-revoke-public-database",
            database.name,
            pulumi.ResourceOptions.merge(inside, pulumi.ResourceOptions(provider=admin)),
        )
        revoke_public(f"{name}-revoke-public-schema", database.name, inside, schema="public")
        self.name = database.name
        self.register_outputs({"name": self.name})


def close_maintenance_databases(providers: Providers, server: str) -> None:
    """No PUBLIC CONNECT on ``postgres`` and ``template1`` of ``server`` (an endpoint key)."""
    admin = providers.postgres(server, "postgres", "admin")
    for database in ("postgres", "template1"):
        revoke_public(
            f"platform-{server}-revoke-public-{database}",
            database,
            pulumi.ResourceOptions(provider=admin),
        )


class CredentialsMount(pulumi.ComponentResource):
    """The KV v2 mount tenant credentials live in."""

    path: pulumi.Output[str]

    def __init__(
        self,
        mount: str,
        providers: Providers,
        protect_data: bool,
        opts: pulumi.ResourceOptions | None = None,
    ) -> None:
        name = "platform-vault"
        super().__init__(f"{PACKAGE}:platform:CredentialsMount", name, None, opts)
        kv = vault.Mount(
            f"{name}-kv",
            path=mount,
            type="kv",
            options={"version": "2"},
            description="tenant-infra: per-tenant service credentials",
            opts=pulumi.ResourceOptions(
                parent=self, provider=providers.vault(), protect=protect_data
            ),
        )
        self.path = kv.path
        self.register_outputs({"path": self.path})


class AuthMount(pulumi.ComponentResource):
    """The auth method every tenant service's role lives on, at ``auth.mount``.

    Protected like the KV mount: disabling it deletes every tenant's roles with it. For
    Kubernetes, the method's own configuration (the cluster's API address, its CA, and
    how Vault reviews service account tokens: ``auth/<mount>/config``) belongs to whoever
    runs the cluster, and is written there (README, "How a product instance logs in").
    """

    path: pulumi.Output[str]

    def __init__(
        self,
        auth: AppRoleAuth | KubernetesAuth,
        providers: Providers,
        protect_data: bool,
        opts: pulumi.ResourceOptions | None = None,
    ) -> None:
        name = "platform-vault-auth"
        super().__init__(f"{PACKAGE}:platform:AuthMount", name, None, opts)
        backend = vault.AuthBackend(
            f"{name}-{auth.method}",
            path=auth.mount,
            type=auth.method,
            description="tenant-infra: product instances log in as their tenant service",
            opts=pulumi.ResourceOptions(
                parent=self, provider=providers.vault(), protect=protect_data
            ),
        )
        self.path = backend.path
        self.register_outputs({"path": self.path})

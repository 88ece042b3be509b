"""Explicit provider instances built from the platform endpoints.

Providers are explicit (never ambient config) so that a tenant stack can only reach
the endpoints its config names, and so that credentials can be marked secret: the
RabbitMQ and Vault SDKs do not mark ``password``/``token`` secret themselves.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pulumi
import pulumi_mongodbatlas as atlas
import pulumi_postgresql as postgresql
import pulumi_rabbitmq as rabbitmq
import pulumi_vault as vault

from tenant_infra.config import AtlasMongo, Platform
from tenant_infra.credentials import PlatformCredentials


@dataclass
class Providers:
    """Lazily created providers, one per endpoint and database, shared by a stack."""

    prefix: str
    platform: Platform
    credentials: PlatformCredentials = field(repr=False)
    parent: pulumi.Resource | None = None
    _postgres: dict[tuple[str, str], postgresql.Provider] = field(default_factory=dict)
    _rabbitmq: rabbitmq.Provider | None = None
    _vault: vault.Provider | None = None
    _atlas: atlas.Provider | None = None

    def _opts(self, depends_on: list[pulumi.Resource] | None = None) -> pulumi.ResourceOptions:
        return pulumi.ResourceOptions(parent=self.parent, depends_on=depends_on)

    def postgres(
        self,
        product: str,
        database: pulumi.Input[str],
        key: str,
        depends_on: list[pulumi.Resource] | None = None,
    ) -> postgresql.Provider:
        """An admin provider for ``product``'s server connected to ``database``.

        ``key`` names the connection (``admin``, ``shared`` or a tenant database); the
        provider's own database matters because DROP OWNED on destroy runs only there.
        """
        if (product, key) not in self._postgres:
            endpoint = self.platform.postgres_for(product)
            self._postgres[(product, key)] = postgresql.Provider(
                f"{self.prefix}-{product}-pg-{key}",
                host=endpoint.host,
                port=endpoint.port,
                username=endpoint.admin_user,
                password=self.credentials.postgres_password(product),
                database=database,
                sslmode=endpoint.sslmode,
                superuser=endpoint.superuser,
                connect_timeout=15,
                opts=self._opts(depends_on),
            )
        return self._postgres[(product, key)]

    def rabbitmq(self) -> rabbitmq.Provider:
        if self._rabbitmq is None:
            endpoint = self.platform.rabbitmq
            assert endpoint is not None, "validated in TenantConfig"
            self._rabbitmq = rabbitmq.Provider(
                f"{self.prefix}-rabbitmq-admin",
                endpoint=endpoint.management_url,
                username=endpoint.admin_user,
                password=self.credentials.rabbitmq_password(),
                opts=self._opts(),
            )
        return self._rabbitmq

    def vault(self) -> vault.Provider:
        if self._vault is None:
            endpoint = self.platform.vault
            self._vault = vault.Provider(
                f"{self.prefix}-vault-admin",
                address=self.credentials.vault_address(str(endpoint.address)),
                token=self.credentials.vault_token(),
                # A child token would expire after max_lease_ttl (20 min by default),
                # mid-way through a long fleet run.
                skip_child_token=endpoint.skip_child_token,
                opts=self._opts(),
            )
        return self._vault

    def atlas(self) -> atlas.Provider:
        if self._atlas is None:
            assert isinstance(self.platform.mongodb, AtlasMongo)
            public_key, private_key = self.credentials.atlas_keys()
            self._atlas = atlas.Provider(
                f"{self.prefix}-atlas-admin",
                public_key=public_key,
                private_key=private_key,
                opts=self._opts(),
            )
        return self._atlas

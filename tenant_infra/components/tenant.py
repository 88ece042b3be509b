"""A tenant: the identity every service hangs under, and what its services share.

The tenant's vhost (and MongoDB database, which needs no resource) are shared by all
its services; each service is a ``TenantService`` child named ``<tenant>-<product>``.
"""

from __future__ import annotations

from typing import Any

import pulumi

from tenant_infra.catalog import Store, load_catalog
from tenant_infra.components import PACKAGE
from tenant_infra.components.broker import TenantVhost
from tenant_infra.components.providers import Providers
from tenant_infra.components.tenant_service import TenantService, TenantServiceArgs
from tenant_infra.config import TenantConfig
from tenant_infra.credentials import PlatformCredentials


class Tenant(pulumi.ComponentResource):
    """Everything one tenant stack declares."""

    services: dict[str, TenantService]

    def __init__(
        self,
        config: TenantConfig,
        credentials: PlatformCredentials,
        opts: pulumi.ResourceOptions | None = None,
    ) -> None:
        names = config.names
        super().__init__(f"{PACKAGE}:tenant:Tenant", names.tenant, None, opts)
        catalog = load_catalog()
        limits = config.effective_limits()
        providers = Providers(names.tenant, config.platform, credentials, parent=self)
        products = [catalog.product(spec.product) for spec in config.services]

        self.vhost: TenantVhost | None = None
        brokered = [
            spec
            for spec, product in zip(config.services, products, strict=True)
            if product.needs(Store.RABBITMQ)
        ]
        if brokered:
            # Shared by the tenant's services: protected while one of them is.
            self.vhost = TenantVhost(
                f"{names.tenant}-rabbitmq",
                names,
                limits,
                any(config.protects(spec) for spec in brokered),
                providers.rabbitmq(),
                pulumi.ResourceOptions(parent=self),
            )
        self.services = {}
        for spec, product in zip(config.services, products, strict=True):
            service_names = names.service(spec.product)
            self.services[spec.product] = TenantService(
                service_names.resource_prefix,
                TenantServiceArgs(
                    service_names,
                    product,
                    spec.isolation,
                    limits,
                    config.protects(spec),
                    suspended=spec.suspended,
                    data_only=spec.removal is not None,
                    generation=spec.generation,
                    promotion=spec.promotion,
                    credentials=spec.credentials,
                ),
                providers,
                self.vhost,
                pulumi.ResourceOptions(parent=self),
            )
        self.register_outputs({})

    def outputs(self) -> dict[str, Any]:
        """Stack outputs: non-secret connection info per service, by product."""
        return {product: service.info for product, service in self.services.items()}

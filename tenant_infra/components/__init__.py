"""Reusable Pulumi ``ComponentResource``s for tenant services.

- :mod:`components.postgres` — the service's login role and its DATABASE- or SCHEMA-mode store
- :mod:`components.broker`   — the tenant's RabbitMQ vhost and each service's scoped user
- :mod:`components.mongodb`  — each service's user scoped to the tenant's MongoDB database
- :mod:`components.vault`    — each service's credentials secret and read-only policy
- :mod:`components.tenant_service` — one product service of a tenant, composed of the above
- :mod:`components.tenant`   — a tenant: its shared vhost and its services
- :mod:`components.platform` — what every tenant relies on, applied once per platform
"""

#: Every component's type token starts with this package name.
PACKAGE = "tenant-infra"

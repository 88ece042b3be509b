"""What the registry keeps per service: everything a product needs but the secrets.

Built from the tenant's config and the catalog, so every value is derivable and none
is a credential: host, port and names per store, the modules and the stores each
reads, the tier's connection settings, and the Vault path of the connections
document (where the credentials are).
"""

from __future__ import annotations

from typing import Any

from tenant_infra.catalog import IsolationMode, Store, load_catalog
from tenant_infra.config import AtlasMongo, SelfHostedMongo, ServiceSpec, TenantConfig
from tenant_infra.tenant import pg_shared_database


def vault_path(config: TenantConfig, product: str) -> str:
    """``<kvMount>/tenants/<tenant>/<product>``: the KV path of the connections document."""
    return f"{config.platform.vault.kv_mount}/{config.names.service(product).vault_secret}"


def connection_settings(config: TenantConfig) -> dict[str, Any]:
    """Pool settings from the tenant's limits, in the seed client's shape."""
    limits = config.effective_limits()
    return {
        "max_open_conns": limits.pg_connection_limit,
        "max_idle_conns": max(1, limits.pg_connection_limit // 4),
        "statement_timeout": f"{limits.pg_statement_timeout_ms}ms",
    }


def connection_info(config: TenantConfig, spec: ServiceSpec) -> dict[str, Any]:
    """Where each store of the service is, and as whom: no password."""
    product = load_catalog().product(spec.product)
    names = config.names.service(spec.product)
    info: dict[str, Any] = {}
    if product.needs(Store.POSTGRESQL):
        endpoint = config.platform.postgres_for(spec.product)
        dedicated = spec.isolation is IsolationMode.DATABASE
        info["postgresql"] = {
            "host": endpoint.host,
            "port": endpoint.port,
            "database": names.pg_dedicated_database
            if dedicated
            else pg_shared_database(spec.product),
            "schema": names.pg_schema,
            "username": config.pg_login(spec.product),
            "sslmode": endpoint.sslmode,
        }
    if product.needs(Store.RABBITMQ) and config.platform.rabbitmq is not None:
        rabbit = config.platform.rabbitmq
        info["rabbitmq"] = {
            "host": rabbit.amqp_host,
            "port": rabbit.amqp_port,
            "vhost": config.names.vhost,
            "username": config.broker_login(spec.product),
            "tls": rabbit.amqp_port == 5671,
        }
    mongo = config.platform.mongodb
    if product.needs(Store.MONGODB) and mongo is not None:
        info["mongodb"] = {
            "host": mongo.host,
            "port": mongo.port if isinstance(mongo, SelfHostedMongo) else None,
            "database": config.names.mongo_database,
            "username": config.mongo_login(spec.product),
            # Self-hosted users live in the tenant's database (components/mongodb.py).
            "authSource": config.names.mongo_database
            if isinstance(mongo, SelfHostedMongo)
            else "admin",
            "tls": True if isinstance(mongo, AtlasMongo) else mongo.tls,
        }
    return info


def modules(product: str) -> dict[str, list[str]]:
    """Each module of the product and the data stores it reads."""
    return {
        module: sorted(store.value for store in stores)
        for module, stores in load_catalog().product(product).module_stores().items()
    }


def secret_paths(config: TenantConfig, product: str) -> dict[str, dict[str, str]]:
    """``secret_paths`` of the seed's events: module → store → the document's path."""
    path = vault_path(config, product)
    keys = {Store.POSTGRESQL: "postgresql_rw", Store.MONGODB: "mongodb"}
    return {
        module: {keys[Store(store)]: path for store in stores}
        for module, stores in modules(product).items()
    }


def messaging_config(config: TenantConfig, product: str) -> dict[str, str]:
    needs = load_catalog().product(product).needs(Store.RABBITMQ)
    return {"rabbitmq_secret_path": vault_path(config, product) if needs else ""}


def isolation_mode(spec_isolation: str) -> str:
    """The seed client's ``isolationMode``: ``schema`` or ``database``."""
    return "schema" if spec_isolation == IsolationMode.SCHEMA.value else "database"

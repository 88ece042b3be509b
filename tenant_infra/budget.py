"""The fleet's connection budget on each shared server.

Each tenant's limits hold on their own, but a fleet's limits add up: the tier's
connection limits of every tenant on one PostgreSQL server (per service role) and
one RabbitMQ node (per vhost) must leave the headroom the platform declares under
the server's maximum, or a fleet of well-behaved tenants can exhaust the server.
Checked from the stack files (``tenantctl plan``) and on the live server
(``tenantctl verify``, ``pg.connection_budget``).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from tenant_infra.catalog import Store, load_catalog
from tenant_infra.config import TenantConfig


@dataclass
class Server:
    """One server's ceiling and what the fleet's tenants may use of it."""

    where: str
    maximum: int | None
    reserved: int
    used: int = 0
    tenants: set[str] = field(default_factory=set)

    @property
    def available(self) -> int | None:
        return None if self.maximum is None else self.maximum - self.reserved

    def problem(self) -> str | None:
        available = self.available
        if available is None or self.used <= available:
            return None
        return (
            f"{self.where}: the connection limits of {len(self.tenants)} tenant(s) add up to "
            f"{self.used}, over {available} ({self.maximum} less {self.reserved} reserved)"
        )


def servers(configs: Iterable[TenantConfig]) -> list[Server]:
    """Every PostgreSQL server and RabbitMQ node the configs use, with their usage."""
    found: dict[str, Server] = {}
    catalog = load_catalog()
    for config in configs:
        limits = config.effective_limits()
        active = [s for s in config.services if s.removal is None]
        for spec in active:
            pg = config.platform.postgres_for(spec.product)
            where = f"PostgreSQL {pg.host}:{pg.port}"
            server = _server(found, where, pg.max_connections, pg.reserved_connections)
            server.used += limits.pg_connection_limit
            server.tenants.add(config.tenant)
        rabbit = config.platform.rabbitmq
        if rabbit is not None and any(
            catalog.product(s.product).needs(Store.RABBITMQ) for s in active
        ):
            where = f"RabbitMQ {rabbit.amqp_host}:{rabbit.amqp_port}"
            node = _server(found, where, rabbit.max_connections, rabbit.reserved_connections)
            node.used += limits.broker_max_connections
            node.tenants.add(config.tenant)
    return sorted(found.values(), key=lambda s: s.where)


def _server(found: dict[str, Server], where: str, maximum: int | None, reserved: int) -> Server:
    """The server at ``where``; stack files that disagree on its ceiling get the
    strictest reading (the lowest maximum, the most reserved)."""
    server = found.setdefault(where, Server(where, maximum, reserved))
    if maximum is not None:
        server.maximum = maximum if server.maximum is None else min(server.maximum, maximum)
    server.reserved = max(server.reserved, reserved)
    return server


def declared(config: TenantConfig) -> bool:
    """Whether the config declares a budget for a server its services use: only then
    is the rest of the fleet read (planning one tenant stays one file's work)."""
    endpoints = [config.platform.postgres_for(s.product) for s in config.services]
    rabbit = config.platform.rabbitmq
    return any(e.max_connections is not None for e in endpoints) or (
        rabbit is not None and rabbit.max_connections is not None
    )


def problems(configs: Iterable[TenantConfig]) -> list[str]:
    """One line per server whose tenants' limits leave less than its headroom."""
    return [p for p in (s.problem() for s in servers(configs)) if p is not None]

"""Ending a suspended service's open sessions.

The stack update of a suspension revokes every credential (``NOLOGIN``, RabbitMQ
permissions removed, MongoDB roles removed), but PostgreSQL and RabbitMQ keep the
connections already open. This closes them, with the platform's admin logins, so a
suspension takes effect at once. MongoDB needs nothing: a user whose roles are gone
is refused its next operation.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from urllib.parse import quote

import psycopg
import requests

from tenant_infra.catalog import Store, load_catalog
from tenant_infra.config import TenantConfig
from tenant_infra.credentials import PlatformCredentials
from tenant_infra.errors import BackendUnavailable, scrub

REASON = "tenant-infra: service suspended"


def close_sessions(
    config: TenantConfig, products: Sequence[str], environ: Mapping[str, str] | None = None
) -> list[str]:
    """Terminate the services' PostgreSQL backends and close their AMQP connections.

    Returns what was closed, as ``<store>:<login>`` lines.
    """
    credentials = PlatformCredentials(os.environ if environ is None else environ)
    catalog = load_catalog()
    closed: list[str] = []
    for product in products:
        names = config.names.service(product)
        endpoint = config.platform.postgres_for(product)
        password = credentials.postgres_password_value(product)
        try:
            with psycopg.connect(
                host=endpoint.host,
                port=endpoint.port,
                user=endpoint.admin_user,
                password=password,
                dbname="postgres",
                sslmode=endpoint.sslmode,
                connect_timeout=15,
                autocommit=True,
            ) as conn:
                rows = conn.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = %s",
                    (names.pg_role,),
                ).fetchall()
        except psycopg.Error as exc:
            raise BackendUnavailable(f"PostgreSQL: {scrub(str(exc).splitlines()[0])}") from None
        closed.append(f"postgresql:{names.pg_role} ({len(rows)} sessions)")
        rabbit = config.platform.rabbitmq
        if rabbit is None or not catalog.product(product).needs(Store.RABBITMQ):
            continue
        auth = (rabbit.admin_user, credentials.rabbitmq_password_value())
        try:
            # Closes every connection of the user, straight from connection tracking
            # (per-connection DELETE goes through the stats database, which lags by
            # seconds and misses a fresh connection).
            response = requests.delete(
                f"{rabbit.management_url}/api/connections/username/"
                f"{quote(names.broker_user, safe='')}",
                auth=auth,
                headers={"X-Reason": REASON},
                timeout=15,
            )
            response.raise_for_status()
        except requests.RequestException as exc:
            raise BackendUnavailable(f"RabbitMQ management API: {type(exc).__name__}") from None
        closed.append(f"rabbitmq:{names.broker_user}")
    return closed

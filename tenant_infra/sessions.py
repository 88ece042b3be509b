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
from tenant_infra.errors import BackendUnavailable, scrub

REASON = "tenant-infra: service suspended"


def close_sessions(
    config: TenantConfig, products: Sequence[str], environ: Mapping[str, str] | None = None
) -> dict[str, int]:
    """Terminate the services' PostgreSQL backends and close their AMQP connections.

    Returns how many were closed, per ``<store>:<login>``.
    """
    env = os.environ if environ is None else environ
    catalog = load_catalog()
    closed: dict[str, int] = {}
    for product in products:
        names = config.names.service(product)
        endpoint = config.platform.postgres_for(product)
        password = env.get(f"TENANT_INFRA_PG_PASSWORD_{product.upper()}") or env.get(
            "TENANT_INFRA_PG_PASSWORD"
        )
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
        closed[f"postgresql:{names.pg_role}"] = len(rows)
        rabbit = config.platform.rabbitmq
        if rabbit is None or not catalog.product(product).needs(Store.RABBITMQ):
            continue
        auth = (rabbit.admin_user, env.get("TENANT_INFRA_RABBITMQ_PASSWORD", ""))
        try:
            listed = requests.get(
                f"{rabbit.management_url}/api/connections", auth=auth, timeout=15
            )
            listed.raise_for_status()
            mine = [c["name"] for c in listed.json() if c.get("user") == names.broker_user]
            for name in mine:
                requests.delete(
                    f"{rabbit.management_url}/api/connections/{quote(name, safe='')}",
                    auth=auth,
                    headers={"X-Reason": REASON},
                    timeout=15,
                )
        except (requests.RequestException, ValueError) as exc:
            raise BackendUnavailable(f"RabbitMQ management API: {type(exc).__name__}") from None
        closed[f"rabbitmq:{names.broker_user}"] = len(mine)
    return closed

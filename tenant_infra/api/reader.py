"""The API's reads of the registry: one query per request, as its read-only role.

Each query also fetches the presented key's row, so authenticating costs no round
trip of its own. The connections query returns the rows' *version* (their tuple
versions and the service's time): anything an answer depends on changes it. Its JSON
columns come as text, decoded only when an answer is rendered anew. Statements are
prepared per pooled connection (psycopg does so after a few executions), and the
active-tenants list is built as JSON by PostgreSQL.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

import psycopg
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool

from tenant_infra.errors import BackendUnavailable
from tenant_infra.registry.store import SCHEMA

_KEY: Final = f"LEFT JOIN {SCHEMA}.api_keys k ON k.id = %(key)s AND k.revoked_at IS NULL"

CONNECTIONS_SQL: Final = f"""
SELECT k.scope, k.product AS key_product, k.hash,
       t.id, t.canonical, t.metadata::text, t.state AS tenant_state,
       s.product, s.isolation, s.state, s.modules::text, s.connection_settings::text,
       s.created_at, s.updated_at,
       s.xmin::text || ':' || t.xmin::text || '@' || s.updated_at::text AS version
FROM (VALUES (1)) AS one (x)
{_KEY}
LEFT JOIN {SCHEMA}.tenants t ON t.canonical = %(tenant)s
LEFT JOIN {SCHEMA}.services s ON s.tenant_id = t.id AND s.product = %(product)s
"""

ACTIVE_SQL: Final = f"""
SELECT k.scope, k.product AS key_product, k.hash,
       CASE WHEN k.id IS NOT NULL THEN (
           SELECT coalesce(json_agg(json_build_object(
                      'id', t.canonical,
                      'name', coalesce(t.metadata->>'name', t.id),
                      'status', 'active') ORDER BY t.canonical), '[]')::text
           FROM {SCHEMA}.services s JOIN {SCHEMA}.tenants t ON t.id = s.tenant_id
           WHERE s.product = %(product)s AND s.state = 'ready')
       END AS tenants
FROM (VALUES (1)) AS one (x)
{_KEY}
"""

TENANT_SQL: Final = f"""
SELECT k.scope, k.product AS key_product, k.hash,
       t.id, t.canonical, t.metadata, t.state AS tenant_state,
       (SELECT coalesce(json_object_agg(s.product, s.state), '{{}}')
        FROM {SCHEMA}.services s WHERE s.tenant_id = t.id) AS services
FROM (VALUES (1)) AS one (x)
{_KEY}
LEFT JOIN {SCHEMA}.tenants t ON t.canonical = %(tenant)s
"""


class RegistryReader:
    """A small pool of read-only connections to the registry."""

    def __init__(self, params: Mapping[str, Any], size: int = 4) -> None:
        self.where = f"{params.get('host')}:{params.get('port')}/{params.get('dbname')}"
        self.pool: AsyncConnectionPool[psycopg.AsyncConnection[dict[str, Any]]] = (
            AsyncConnectionPool(
                kwargs={**params, "row_factory": dict_row, "autocommit": True},
                min_size=1,
                max_size=size,
                open=False,
                timeout=10,
            )
        )

    async def open(self) -> None:
        await self.pool.open()

    async def close(self) -> None:
        await self.pool.close()

    async def one(self, sql: str, params: Mapping[str, Any]) -> dict[str, Any]:
        """The single row of one of the queries above."""
        try:
            async with self.pool.connection() as conn:
                cursor = await conn.execute(sql, params)
                row = await cursor.fetchone()
        except (psycopg.Error, OSError) as exc:
            detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise BackendUnavailable(f"registry at {self.where}: {detail}") from None
        assert row is not None  # every query selects from one row
        return row

"""The multi-tenancy API held to the seed platform client's decoding rules, on tenants
the replay backend provisioned on the real PostgreSQL and RabbitMQ."""

from __future__ import annotations

import uuid

import pika
import psycopg
import pytest

from tenant_infra import commands
from tests.api.conftest import Served
from tests.support.api import decode_active, decode_connections, decode_denied

LEDGER_MODULES = {"onboarding", "transaction", "crm-api", "plugin-fees"}


def connect_postgres(pg: dict[str, object], schema_mode: bool) -> list[tuple[object, ...]]:
    """What a product does with the served PostgreSQL: connect, set search_path in
    SCHEMA mode, and use the tenant's own tables."""
    options = f"-csearch_path={pg['schema']}" if schema_mode else ""
    with psycopg.connect(
        host=pg["host"], port=pg["port"], dbname=pg["database"], user=pg["username"],
        password=pg["password"], options=options, connect_timeout=5,
    ) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS api_probe (n int)")
        conn.execute("INSERT INTO api_probe VALUES (1)")
        return conn.execute(
            "SELECT current_schema(), current_user, count(*) FROM api_probe GROUP BY 1, 2"
        ).fetchall()


def connect_rabbitmq(rabbit: dict[str, object]) -> None:
    credentials = pika.PlainCredentials(str(rabbit["username"]), str(rabbit["password"]))
    connection = pika.BlockingConnection(
        pika.ConnectionParameters(
            str(rabbit["host"]), int(str(rabbit["port"])), str(rabbit["vhost"]), credentials,
            connection_attempts=1,
        )
    )
    try:
        channel = connection.channel()
        channel.queue_declare("api-probe", auto_delete=True)
    finally:
        connection.close()


@pytest.mark.parametrize("mode", ["SCHEMA", "DATABASE"])
def test_connections_decode_by_the_client_rules_and_connect_for_real(served: Served, mode: str) -> None:
    tenant = served.world.new_tenant("api")
    served.world.onboard(tenant, f"ledger:{mode}")
    key = served.key("ledger")

    response = served.connections(tenant, "ledger", key)
    assert response.status_code == 200, response.text
    assert response.headers["cache-control"] == "no-store"
    body = decode_connections(response.json())
    assert body["id"] == tenant and body["tenantSlug"] == tenant and body["service"] == "ledger"
    assert body["status"] == "active"
    assert body["isolationMode"] == ("schema" if mode == "SCHEMA" else "isolated")
    assert set(body["databases"]) == LEDGER_MODULES
    onboarding = body["databases"]["onboarding"]
    pg = onboarding["postgresql"]
    assert pg == body["databases"]["transaction"]["postgresql"]  # one database or schema
    assert pg["schema"] == f"tenant_{tenant.replace('-', '_')}"
    assert "postgresql" not in body["databases"]["crm-api"]
    assert onboarding["connectionSettings"]["statementTimeout"] == "30s"  # the standard tier
    rows = connect_postgres(pg, mode == "SCHEMA")
    assert rows == [(pg["schema"], pg["username"], 1)]
    rabbit = body["rabbitmq"]["ledger"]
    assert rabbit["vhost"] == tenant and rabbit["tls"] is False
    connect_rabbitmq(rabbit)

"""The client's JSON built from registry rows and documents, without a server."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tenant_infra.api import contract
from tests.support.api import DURATION_RE, decode_connections

AT = datetime(2026, 12, 2, 7, 44, tzinfo=UTC)


def rows(isolation: str = "SCHEMA", product: str = "ledger") -> dict[str, Any]:
    return {
        "id": "acme", "canonical": "acme", "metadata": {"name": "Acme Corp"},
        "product": product, "isolation": isolation, "state": "ready",
        "modules": {}, "connection_settings": {"max_open_conns": 25, "max_idle_conns": 6, "statement_timeout": "30000ms"},
        "created_at": AT, "updated_at": AT,
    }


def document(product: str = "ledger", **pg: Any) -> dict[str, Any]:
    return {
        "tenant": "acme", "product": product, "isolation": "SCHEMA",
        "postgresql": {"host": "db", "port": 5432, "database": product, "schema": "tenant_acme", "user": f"{product}_acme", "password": "pw", "sslmode": "require"} | pg,
        "rabbitmq": {"host": "mq", "port": 5671, "vhost": "acme", "user": f"{product}_acme", "password": "pw2"},
        "mongodb": {"host": "mongo", "port": 27017, "database": "acme", "user": f"{product}_acme", "password": "pw3", "authSource": "acme", "tls": False},
    }


def test_modules_come_from_the_catalog_and_each_gets_only_its_stores() -> None:
    row = rows()
    body = decode_connections(contract.connections(row, row, document()))
    assert set(body["databases"]) == {"onboarding", "transaction", "crm-api", "plugin-fees"}
    assert set(body["databases"]["onboarding"]) == {"postgresql", "mongodb", "connectionSettings"}
    assert set(body["databases"]["crm-api"]) == {"mongodb", "connectionSettings"}
    assert body["rabbitmq"] == {"ledger": {"host": "mq", "port": 5671, "vhost": "acme", "username": "ledger_acme", "password": "pw2", "tls": True}}
    assert body["messaging"]["rabbitmq"] == body["rabbitmq"]["ledger"]  # the older clients' form
    assert (body["tenantName"], body["createdAt"]) == ("Acme Corp", "2026-12-02T07:44:00Z")
    assert body["connectionSettings"] == {"maxOpenConns": 25, "maxIdleConns": 6, "statementTimeout": "30s"}


def test_isolation_modes_as_the_client_reads_them() -> None:
    assert contract.isolation_mode("SCHEMA") == "schema"
    assert contract.isolation_mode("DATABASE") == "isolated"
    row = rows("SCHEMA", "tracer")
    with pytest.raises(contract.DocumentMismatch, match="schema"):
        contract.connections(row, row, document("tracer", schema="1; DROP"))
    isolated = rows("DATABASE", "tracer")
    body = contract.connections(isolated, isolated, document("tracer", schema=None))
    assert "schema" not in body["databases"]["tracer"]["postgresql"]


def test_a_document_of_another_tenant_or_product_is_refused() -> None:
    row = rows()
    with pytest.raises(contract.DocumentMismatch):
        contract.connections(row, row, document() | {"tenant": "globex"})
    with pytest.raises(contract.DocumentMismatch):
        contract.connections(row, row, document("tracer"))


def test_an_atlas_document_is_served_as_a_uri_with_escaped_credentials() -> None:
    atlas = document()
    atlas["mongodb"] = {"host": "c0.mongodb.net", "database": "acme", "user": "u@x", "password": "p/:@?", "authSource": "admin"}
    row = rows()
    mongo = decode_connections(contract.connections(row, row, atlas))["databases"]["onboarding"]["mongodb"]
    assert mongo["uri"] == "mongodb+srv://u%40x:p%2F%3A%40%3F@c0.mongodb.net/acme?authSource=admin&tls=true"


@given(st.integers(min_value=1, max_value=86_400_000))
def test_every_statement_timeout_is_a_duration_the_client_accepts(millis: int) -> None:
    text = contract.duration(f"{millis}ms")
    assert DURATION_RE.fullmatch(text)
    value, unit = (int(text[:-2]), 1) if text.endswith("ms") else (int(text[:-1]), 1000)
    assert value * unit == millis


def test_a_403_carries_a_status_only_when_the_product_must_drop_the_tenant() -> None:
    assert contract.denied("suspended", "e", "C") == {"code": "C", "error": "e", "status": "suspended"}
    assert contract.denied(None, "e", "C") == {"code": "C", "error": "e"}

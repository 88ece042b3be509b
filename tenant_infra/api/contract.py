"""The seed platform client's JSON, built from registry rows and connections documents.

The shapes are the public client's (``LerianStudio/lib-commons``,
``commons/tenant-manager``; ``shared/notes/seed-platform-client-contract.md``): a
field of the wrong JSON type fails a product's whole decode, so every port is a
number, every flag a boolean, every time RFC 3339. Nothing here does I/O.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, Final
from urllib.parse import quote

from tenant_infra.catalog import IsolationMode, Store, load_catalog

#: What a product's ``schema`` must match, or it refuses the whole answer.
SCHEMA_RE: Final = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")

#: Service states, as the API answers them (anything else is not served: 404).
SERVED, SUSPENDED, PURGED = "ready", "suspended", ("retained", "purged", "deprovisioning")


class DocumentMismatch(ValueError):
    """A connections document that is not the service's (or lacks what it must hold)."""


def isolation_mode(isolation: str) -> str:
    """``schema`` for SCHEMA mode; ``isolated`` (a dedicated database) otherwise."""
    return "schema" if isolation == IsolationMode.SCHEMA.value else "isolated"


def rfc3339(at: datetime) -> str:
    return at.astimezone(UTC).isoformat().replace("+00:00", "Z")


def duration(text: str) -> str:
    """``30000ms`` as the client's shortest spelling (``30s``); digits and a unit."""
    match = re.fullmatch(r"(\d+)ms", text)
    if match is None:
        return text
    millis = int(match.group(1))
    return f"{millis // 1000}s" if millis % 1000 == 0 else f"{millis}ms"


def connection_settings(settings: Mapping[str, Any]) -> dict[str, Any]:
    """The registry's pool settings (``max_open_conns``...) in the client's camel case."""
    return {
        "maxOpenConns": int(settings["max_open_conns"]),
        "maxIdleConns": int(settings["max_idle_conns"]),
        "statementTimeout": duration(str(settings["statement_timeout"])),
    }


def tenant_name(tenant: Mapping[str, Any]) -> str:
    metadata = tenant.get("metadata") or {}
    return str(metadata.get("name") or tenant["id"])


def connections(
    tenant: Mapping[str, Any], service: Mapping[str, Any], document: Mapping[str, Any]
) -> dict[str, Any]:
    """The 200 answer of ``GET /v1/tenants/{id}/associations/{service}/connections``.

    ``tenant`` and ``service`` are registry rows (JSON decoded); ``document`` is the service's
    connections document (Vault): where and as whom to connect comes from it, so
    the user and password served always belong together.
    """
    product = str(service["product"])
    if document.get("tenant") != tenant["id"] or document.get("product") != product:
        raise DocumentMismatch(f"the connections document is not {tenant['id']}/{product}'s")
    catalog_product = load_catalog().product(product)
    settings = connection_settings(service["connection_settings"])
    stores = {module: set(names) for module, names in dict(service["modules"] or {}).items()} or {
        m: {s.value for s in ss} for m, ss in catalog_product.module_stores().items()
    }
    mode = isolation_mode(str(service["isolation"]))
    postgres = _postgresql(document, mode) if "postgresql" in document else None
    mongo = _mongodb(document["mongodb"]) if "mongodb" in document else None
    databases: dict[str, Any] = {}
    for module, names in sorted(stores.items()):
        entry: dict[str, Any] = {}
        if Store.POSTGRESQL.value in names and postgres is not None:
            entry["postgresql"] = postgres
        if Store.MONGODB.value in names and mongo is not None:
            entry["mongodb"] = mongo
        entry["connectionSettings"] = settings
        databases[module] = entry
    answer: dict[str, Any] = {
        "id": tenant["canonical"],
        "tenantSlug": tenant["id"],
        "tenantName": tenant_name(tenant),
        "service": product,
        "status": "active",
        "isolationMode": mode,
        "createdAt": rfc3339(service["created_at"]),
        "updatedAt": rfc3339(service["updated_at"]),
        "databases": databases,
        "connectionSettings": settings,
    }
    if "rabbitmq" in document:
        rabbit = document["rabbitmq"]
        flat = {
            "host": str(rabbit["host"]),
            "port": int(rabbit["port"]),
            "vhost": str(rabbit["vhost"]),
            "username": str(rabbit["user"]),
            "password": str(rabbit["password"]),
            "tls": bool(rabbit.get("tls", int(rabbit["port"]) == 5671)),
        }
        answer["rabbitmq"] = {catalog_product.rabbitmq_module or product: flat}
        # Clients before the per-module form read one object here (both decode safely).
        answer["messaging"] = {"rabbitmq": flat}
    return answer


def _postgresql(document: Mapping[str, Any], mode: str) -> dict[str, Any]:
    pg = document["postgresql"]
    schema = str(pg.get("schema") or "")
    if not SCHEMA_RE.fullmatch(schema):
        if mode == "schema":
            raise DocumentMismatch("a SCHEMA-mode document without a valid schema")
        schema = ""
    answer = {
        "host": str(pg["host"]),
        "port": int(pg["port"]),
        "database": str(pg["database"]),
        "username": str(pg["user"]),
        "password": str(pg["password"]),
        "sslmode": str(pg.get("sslmode") or "prefer"),
    }
    if schema:
        answer["schema"] = schema
    return answer


def _mongodb(mongo: Mapping[str, Any]) -> dict[str, Any]:
    if "port" not in mongo:  # Atlas: an SRV name, reachable by URI only
        user, password = quote(str(mongo["user"]), safe=""), quote(str(mongo["password"]), safe="")
        return {
            "uri": f"mongodb+srv://{user}:{password}@{mongo['host']}/{mongo['database']}"
            f"?authSource={quote(str(mongo['authSource']), safe='')}&tls=true",
            "database": str(mongo["database"]),
            "tls": True,
        }
    return {
        "host": str(mongo["host"]),
        "port": int(mongo["port"]),
        "database": str(mongo["database"]),
        "username": str(mongo["user"]),
        "password": str(mongo["password"]),
        "authSource": str(mongo["authSource"]),
        "tls": bool(mongo.get("tls", False)),
    }


def denied(status: str | None, error: str, code: str) -> dict[str, str]:
    """A 403 body: with ``status`` (``suspended``, ``purged``) a product drops the
    tenant; without it, access is denied."""
    body = {"code": code, "error": error}
    if status is not None:
        body["status"] = status
    return body

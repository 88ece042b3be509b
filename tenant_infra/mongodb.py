"""How every part of the project opens a MongoDB client (provisioning, migrations, verify).

One place decides SRV vs host:port and TLS, so the three never disagree about how a
service's connection document is used.
"""

from __future__ import annotations

from typing import Any


def client_options(
    *,
    host: str,
    port: int | None,
    user: str,
    password: str,
    auth_source: str,
    tls: bool,
    timeout_ms: int = 10_000,
) -> dict[str, Any]:
    """``MongoClient(**options)`` arguments; ``port=None`` means an SRV host (Atlas, TLS)."""
    common: dict[str, Any] = {
        "username": user,
        "password": password,
        "authSource": auth_source,
        "serverSelectionTimeoutMS": timeout_ms,
    }
    if port is None:
        return {"host": f"mongodb+srv://{host}/", "tls": True, **common}
    return {"host": host, "port": int(port), "tls": bool(tls), **common}

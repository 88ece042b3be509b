"""The multi-tenancy API served for real (uvicorn on a loopback socket), and the seed
platform client's decoding rules, as a test's client."""

from __future__ import annotations

import re
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

import requests
import uvicorn

from tenant_infra.api.server import Listen


@contextmanager
def running(app: Any, where: Listen | None = None) -> Iterator[str]:
    """``app`` served by uvicorn in a thread (HTTP/1.1, httptools, as ``tenantctl serve``
    runs it); yields its base URL."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", where.port if where else 0))
    port = sock.getsockname()[1]
    tls = where is not None and where.tls_cert is not None
    config = uvicorn.Config(
        app,
        http="httptools",
        log_level="info",
        ssl_certfile=str(where.tls_cert) if where and where.tls_cert else None,
        ssl_keyfile=str(where.tls_key) if where and where.tls_key else None,
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 15
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the API did not start")
        time.sleep(0.02)
    try:
        yield f"{'https' if tls else 'http'}://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(15)
        sock.close()


# --------------------------------------------------------- the client's rules

SCHEMA_RE = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
DURATION_RE = re.compile(r"[0-9]+\s*(us|ms|s|min|h|d)?")


def _typed(obj: dict[str, Any], field: str, kind: type | tuple[type, ...], where: str) -> Any:
    """A field the client decodes into a Go ``kind``: absent is a zero value; a wrong
    JSON type fails the whole decode (``bool`` is not an ``int`` in JSON)."""
    value = obj.get(field)
    if value is None:
        return None
    ok = isinstance(value, kind) and not (kind is int and isinstance(value, bool))
    assert ok, f"{where}.{field}: {type(value).__name__} is not {kind}"
    return value


def decode_connections(body: Any) -> dict[str, Any]:
    """``core.TenantConfig`` as ``encoding/json`` and the managers check it; raises
    AssertionError where a product would fail."""
    assert isinstance(body, dict)
    for field in ("id", "tenantSlug", "tenantName", "service", "status", "isolationMode"):
        _typed(body, field, str, "")
    for field in ("createdAt", "updatedAt"):
        value = _typed(body, field, str, "")
        if value is not None:  # time.Time: RFC 3339
            datetime.fromisoformat(value.replace("Z", "+00:00"))
    databases = _typed(body, "databases", dict, "") or {}
    for module, config in databases.items():
        assert isinstance(config, dict), module
        pg = _typed(config, "postgresql", dict, module)
        if pg is not None:
            for field in ("host", "database", "username", "password", "schema", "sslmode"):
                _typed(pg, field, str, f"{module}.postgresql")
            _typed(pg, "port", int, f"{module}.postgresql")
            if body.get("isolationMode") == "schema":
                assert SCHEMA_RE.fullmatch(pg.get("schema") or ""), "schema mode needs a schema"
            elif pg.get("schema"):
                assert SCHEMA_RE.fullmatch(pg["schema"])
        mongo = _typed(config, "mongodb", dict, module)
        if mongo is not None:
            for field in ("host", "database", "username", "password", "uri", "authSource"):
                _typed(mongo, field, str, f"{module}.mongodb")
            _typed(mongo, "port", int, f"{module}.mongodb")
            _typed(mongo, "tls", bool, f"{module}.mongodb")
        settings = _typed(config, "connectionSettings", dict, module)
        if settings is not None:
            _settings(settings, module)
    for module, rabbit in (_typed(body, "rabbitmq", dict, "") or {}).items():
        assert isinstance(rabbit, dict)
        for field in ("host", "vhost", "username", "password"):
            _typed(rabbit, field, str, f"rabbitmq.{module}")
        _typed(rabbit, "port", int, f"rabbitmq.{module}")
        _typed(rabbit, "tls", bool, f"rabbitmq.{module}")
    top = _typed(body, "connectionSettings", dict, "")
    if top is not None:
        _settings(top, "")
    return body


def _settings(settings: dict[str, Any], where: str) -> None:
    _typed(settings, "maxOpenConns", int, where)
    _typed(settings, "maxIdleConns", int, where)
    timeout = _typed(settings, "statementTimeout", str, where)
    assert timeout is None or DURATION_RE.fullmatch(timeout), timeout


def decode_denied(response: requests.Response) -> str | None:
    """A 403's ``status`` as the client reads it (``None``: plain access denied)."""
    assert response.status_code == 403
    try:
        body = response.json()
    except ValueError:
        return None
    status = body.get("status") if isinstance(body, dict) else None
    return str(status) if status else None


def decode_active(body: Any) -> list[dict[str, str]]:
    """``[]*TenantSummary``: a bare array of ``{id, name, status}`` strings."""
    assert isinstance(body, list)
    for entry in body:
        for field in ("id", "name", "status"):
            _typed(entry, field, str, "active")
    return body


def self_signed(folder: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 and its key, made here with openssl."""
    import subprocess

    cert, key = folder / "api.crt", folder / "api.key"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )
    return cert, key

"""``tenantctl serve``: where and how the API listens.

Plain HTTP only on a loopback address; anywhere else the API answers over TLS or
not at all, since its answers hold credentials. HTTP/1.1 only (uvicorn speaks no
HTTP/2), which is what the seed platform's client speaks.
"""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tenant_infra.errors import InvalidInput

#: Products keep idle connections 90 s; closing them later than the usual 5 s
#: spares a reconnect (and a TLS handshake) per poll.
KEEP_ALIVE_SECONDS = 75


@dataclass(frozen=True)
class Listen:
    host: str
    port: int
    tls_cert: Path | None = None
    tls_key: Path | None = None

    @property
    def scheme(self) -> str:
        return "https" if self.tls_cert else "http"

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}"


def is_loopback(host: str) -> bool:
    """Whether every address ``host`` names is a loopback one."""
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None)
    except OSError:
        return False
    return bool(infos) and all(ipaddress.ip_address(i[4][0]).is_loopback for i in infos)


def listen(address: str, tls_cert: Path | None = None, tls_key: Path | None = None) -> Listen:
    """``HOST:PORT`` (``[::1]:PORT`` for IPv6) checked before anything starts."""
    host, sep, port_text = address.rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    if not sep or not host or not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise InvalidInput(f"--listen {address!a}: expected HOST:PORT")
    if (tls_cert is None) != (tls_key is None):
        raise InvalidInput("--tls-cert and --tls-key go together")
    for path in (tls_cert, tls_key):
        if path is not None and not path.is_file():
            raise InvalidInput(f"{path}: no such file")
    if tls_cert is None and not is_loopback(host):
        raise InvalidInput(
            f"--listen {host}: plain HTTP only on a loopback address (its answers hold "
            "credentials); pass --tls-cert FILE --tls-key FILE to listen there"
        )
    return Listen(host, int(port_text), tls_cert, tls_key)


def run(app: Any, where: Listen, access_log: bool = True) -> None:
    """Serve ``app`` until interrupted."""
    import uvicorn

    uvicorn.run(
        app,
        host=where.host,
        port=where.port,
        ssl_certfile=str(where.tls_cert) if where.tls_cert else None,
        ssl_keyfile=str(where.tls_key) if where.tls_key else None,
        http="httptools",
        loop="uvloop",
        access_log=access_log,
        server_header=False,
        proxy_headers=False,
        timeout_keep_alive=KEEP_ALIVE_SECONDS,
        log_level="info",
    )

"""A stub Vault (KV v2 reads only) on loopback, recording every request it gets."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class StubVault:
    token: str
    #: ``<mount>/data/<path>`` → the secret's data, or raw bytes sent as the body.
    secrets: dict[str, dict[str, Any] | bytes] = field(default_factory=dict)
    #: (path, whether the right token came with it), in arrival order.
    requests: list[tuple[str, bool]] = field(default_factory=list)
    address: str = ""

    def put(self, mount: str, path: str, data: dict[str, Any] | bytes) -> None:
        self.secrets[f"{mount}/data/{path}"] = data


@contextmanager
def stub_vault(token: str, host: str = "127.0.0.1") -> Iterator[StubVault]:
    vault = StubVault(token)

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            authorized = self.headers.get("X-Vault-Token") == vault.token
            vault.requests.append((self.path, authorized))
            found = vault.secrets.get(self.path.removeprefix("/v1/"))
            if not authorized:
                self._send(403, b'{"errors":["permission denied"]}')
            elif found is None:
                self._send(404, b'{"errors":[]}')
            elif isinstance(found, bytes):
                self._send(200, found)
            else:
                self._send(200, json.dumps({"data": {"data": found}}).encode())

        def _send(self, code: int, body: bytes) -> None:
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            """Quiet."""

    server = ThreadingHTTPServer((host, 0), Handler)
    vault.address = f"http://{host}:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield vault
    finally:
        server.shutdown()
        server.server_close()

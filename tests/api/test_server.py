"""Where ``tenantctl serve`` listens: loopback in clear, TLS anywhere else."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from tenant_infra import commands
from tenant_infra.api.server import Listen, listen
from tenant_infra.cli import main
from tenant_infra.errors import InvalidInput
from tests.api.conftest import Served
from tests.support.api import decode_connections, running, self_signed

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("address", ["127.0.0.1:8080", "localhost:8080", "[::1]:8080", "127.9.9.9:1"])
def test_plain_http_on_loopback(address: str) -> None:
    assert listen(address).scheme == "http"


@pytest.mark.parametrize(
    ("address", "rule"),
    [
        ("0.0.0.0:8080", "loopback"),
        ("[::]:8080", "loopback"),
        ("10.1.2.3:8080", "loopback"),
        ("127.0.0.1", "HOST:PORT"),
        ("127.0.0.1:0", "HOST:PORT"),
        ("127.0.0.1:70000", "HOST:PORT"),
        (":8080", "HOST:PORT"),
        ("127.0.0.1:80a", "HOST:PORT"),
    ],
)
def test_anything_else_in_clear_is_refused(address: str, rule: str) -> None:
    with pytest.raises(InvalidInput, match=rule):
        listen(address)


def test_tls_files_are_checked_and_go_together(tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path)
    assert listen("0.0.0.0:8443", cert, key).scheme == "https"
    with pytest.raises(InvalidInput, match="together"):
        listen("0.0.0.0:8443", cert, None)
    with pytest.raises(InvalidInput, match="no such file"):
        listen("0.0.0.0:8443", cert, tmp_path / "missing.key")


def test_the_cli_refuses_before_reaching_anything(capsys: pytest.CaptureFixture[str]) -> None:
    for argv in (["serve", "--listen", "0.0.0.0:8080"], ["serve", "--connections", "docs.json"]):
        with pytest.raises(SystemExit) as info:
            main(argv)
        out, err = capsys.readouterr()
        assert (info.value.code, out) == (2, ""), argv
        assert len(err.strip().splitlines()) == 1


def test_over_tls_with_a_self_signed_certificate(served: Served, tmp_path: Path) -> None:
    tenant = served.world.new_tenant("tls")
    served.world.onboard(tenant, "tracer:DATABASE")
    key = served.key("tracer")
    cert, private = self_signed(tmp_path)
    app = commands.api(documents=served.documents, **served.world.kwargs())
    with running(app, Listen("127.0.0.1", 0, cert, private)) as url:
        assert url.startswith("https://")
        response = requests.get(
            f"{url}/v1/tenants/{tenant}/associations/tracer/connections",
            headers={"X-API-Key": key}, verify=str(cert), timeout=30,
        )
        assert response.status_code == 200
        decode_connections(response.json())
        with pytest.raises(requests.ConnectionError):
            requests.get(url.replace("https", "http") + "/v1/tenants/active", timeout=5)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_tenantctl_serve_with_documents_on_stdin_and_nothing_secret_in_its_logs(served: Served) -> None:
    """What an operator without Vault runs: the documents come on standard input
    (never a file, never argv); the logs show requests, not credentials."""
    world = served.world
    tenant = world.new_tenant("cli")
    world.onboard(tenant, "ledger:SCHEMA")
    key = served.key("ledger")
    document = world.backend.document(tenant, "ledger")
    shutil.copy(ROOT / "Pulumi.yaml", world.root / "Pulumi.yaml")
    port = free_port()
    tenantctl = Path(sys.executable).parent / "tenantctl"
    server = subprocess.Popen(
        [str(tenantctl), "serve", "--listen", f"127.0.0.1:{port}", "--connections", "-"],
        cwd=world.root, env={**os.environ, **world.plane.environ},
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        assert server.stdin is not None
        server.stdin.write(json.dumps([document]))
        server.stdin.close()
        url = f"http://127.0.0.1:{port}/v1/tenants/{tenant}/associations/ledger/connections"
        deadline = time.monotonic() + 30
        while True:
            try:
                response = requests.get(url, headers={"X-API-Key": key}, timeout=5)
                break
            except requests.ConnectionError:
                assert server.poll() is None and time.monotonic() < deadline
                time.sleep(0.1)
        assert response.status_code == 200
        served_pg = decode_connections(response.json())["databases"]["onboarding"]["postgresql"]
        assert served_pg["password"] == document["postgresql"]["password"]
        assert requests.get(url, headers={"X-API-Key": "nope"}, timeout=5).status_code == 401
    finally:
        server.send_signal(signal.SIGINT)
        server.wait(timeout=30)
        assert server.stdout is not None and server.stderr is not None
        out, err = server.stdout.read(), server.stderr.read()
    assert "GET /v1/tenants/" in out  # the access log is there
    for secret in (document["postgresql"]["password"], document["rabbitmq"]["password"], key):
        assert secret not in out + err

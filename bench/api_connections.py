"""The multi-tenancy API's connections endpoint under load, beside a Vault-less baseline.

Untimed: a registry database on the PostgreSQL at $PGHOST:$PGPORT (default
127.0.0.1:5432, trust auth), migrated by the tool itself, with N tenants whose
``ledger`` service is ready (inserted directly), a read-only role, a product key,
and one connections document per tenant handed to ``tenantctl serve --connections -``
on its standard input (as an operator without Vault runs it).

Timed, one after the other in one run: ``wrk`` (Debian's package) on loopback against

- ``tenantctl serve``: the real endpoint, cycling over every tenant (auth, one
  registry query, the document, the client's JSON);
- a baseline on the same framework and server settings that reads one row and
  returns static JSON, so the framework's own ceiling is visible.

    apt-get install -y wrk
    .venv/bin/python bench/api_connections.py --tenants 10000 --seconds 20 --connections 32
"""

from __future__ import annotations

import argparse
import json
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psycopg
from registry_root import ADMIN, REPO, registry_root

WRK_SCRIPT = """
local n, key, counter = {n}, "{key}", 0
request = function()
  counter = counter + 1
  local path = string.format("{path}", (counter % n) + 1)
  return wrk.format("GET", path, {{["X-API-Key"] = key}})
end
"""
CONNECTIONS_PATH = "/v1/tenants/tenant-%d/associations/ledger/connections"


def setup(root: Path, database: str, reader: str, n: int) -> dict[str, str]:
    env = registry_root(root, database, reader)
    with psycopg.connect(**(ADMIN | {"dbname": database}), autocommit=True) as conn:
        conn.execute(f"CREATE ROLE {reader} LOGIN")
        conn.execute(f"GRANT CONNECT ON DATABASE {database} TO {reader}")
        conn.execute(f"GRANT USAGE ON SCHEMA registry TO {reader}")
        conn.execute(f"GRANT SELECT ON ALL TABLES IN SCHEMA registry TO {reader}")
        conn.execute(
            "INSERT INTO registry.tenants (id, canonical, metadata, tier, state)"
            " SELECT 'tenant-' || i, 'tenant-' || i,"
            " jsonb_build_object('name', 'Tenant ' || i), 'standard',"
            " 'active' FROM generate_series(1, %s) i",
            (n,),
        )
        conn.execute(
            "INSERT INTO registry.services (tenant_id, product, isolation, state, revision,"
            " vault_path, connection, modules, connection_settings, announced)"
            " SELECT 'tenant-' || i, 'ledger', 'SCHEMA', 'ready', '0003',"
            " 'secret/tenants/tenant-' || i || '/ledger', '{}',"
            " '{\"onboarding\": [\"mongodb\", \"postgresql\"],"
            "   \"transaction\": [\"mongodb\", \"postgresql\"],"
            "   \"crm-api\": [\"mongodb\"], \"plugin-fees\": [\"mongodb\"]}',"
            " '{\"max_open_conns\": 25, \"max_idle_conns\": 6,"
            "   \"statement_timeout\": \"30000ms\"}', true FROM generate_series(1, %s) i",
            (n,),
        )
        conn.execute("ANALYZE")
    return env


def documents(n: int) -> str:
    """One connections document per tenant, as the platform program writes them."""
    docs = []
    for i in range(1, n + 1):
        tenant, key = f"tenant-{i}", f"tenant_{i}"
        docs.append(
            {
                "tenant": tenant,
                "product": "ledger",
                "isolation": "SCHEMA",
                "postgresql": {
                    "host": "db.internal", "port": 5432, "database": "ledger",
                    "schema": f"tenant_{key}", "user": f"ledger_{key}",
                    "password": secrets.token_urlsafe(24), "sslmode": "require",
                },
                "rabbitmq": {
                    "host": "mq.internal", "port": 5671, "vhost": tenant,
                    "user": f"ledger_{key}", "password": secrets.token_urlsafe(24),
                },
                "mongodb": {
                    "host": "mongo.internal", "port": 27017, "database": tenant,
                    "user": f"ledger_{key}", "password": secrets.token_urlsafe(24),
                    "authSource": tenant, "tls": True,
                },
            }
        )
    return json.dumps(docs)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_up(port: int, process: subprocess.Popen[Any]) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit("the server exited")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.1)
    raise SystemExit("the server did not start")


def wrk(port: int, script: Path, seconds: int, connections: int) -> dict[str, float]:
    out = subprocess.run(
        ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--latency", "-s", str(script),
         f"http://127.0.0.1:{port}"],
        capture_output=True, text=True, check=True,
    ).stdout
    def ms(label: str) -> float:
        match = re.search(rf"^\s+{label}\s+([\d.]+)(us|ms|s)\s*$", out, re.MULTILINE)
        assert match, out
        value, unit = float(match[1]), match[2]
        return value / 1000 if unit == "us" else value * 1000 if unit == "s" else value
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out)[1])  # type: ignore[index]
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors = re.search(r"Socket errors: (.*)", out)
    return {
        "rps": rps, "p50": ms("50%"), "p99": ms("99%"),
        "non2xx": float(non2xx[1]) if non2xx else 0.0, "errors": 1.0 if errors else 0.0,
    }


BASELINE = '''
import os, sys, uvicorn
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool
from starlette.applications import Starlette
from starlette.responses import Response
from starlette.routing import Route
pool = AsyncConnectionPool(kwargs={"host": os.environ["PGHOST"], "port": int(os.environ["PGPORT"]),
    "dbname": os.environ["BENCH_DB"], "user": os.environ["BENCH_READER"], "autocommit": True,
    "row_factory": dict_row}, min_size=1, max_size=4, open=False)
BODY = b'{"id":"x","status":"active","databases":{}}'
async def one(request):
    async with pool.connection() as conn:
        cur = await conn.execute("SELECT state FROM registry.services WHERE tenant_id = %s"
                                 " AND product = %s", (request.path_params["tenant"], "ledger"))
        await cur.fetchone()
    return Response(BODY, 200, {"Cache-Control": "no-store"}, "application/json")
async def lifespan(app):
    await pool.open(); yield; await pool.close()
app = Starlette(routes=[Route("/v1/tenants/{tenant}/associations/{service}/connections", one)],
                lifespan=lifespan)
uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), http="httptools", loop="uvloop",
            access_log=False, server_header=False, timeout_keep_alive=75, log_level="warning")
'''


def measure(
    name: str, command: list[str], env: dict[str, str], cwd: Path, stdin: str | None,
    port: int, script: Path, args: argparse.Namespace,
) -> dict[str, float]:
    process = subprocess.Popen(
        command, cwd=cwd, env=env, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL, text=True,
    )
    assert process.stdin is not None
    if stdin is not None:
        process.stdin.write(stdin)
    process.stdin.close()
    try:
        wait_up(port, process)
        # Warm-up, long enough to ask for every tenant once: the steady state of products
        # polling every 30 s is each answer already rendered once (the cache keeps
        # it 5 minutes, or until the registry records a change).
        wrk(port, script, args.warmup, args.connections)
        result = wrk(port, script, args.seconds, args.connections)
    finally:
        process.send_signal(signal.SIGINT)
        process.wait(30)
    print(
        f"| {name} | {result['rps']:.0f} | {result['p50']:.2f} | {result['p99']:.2f} |"
        f" {result['non2xx']:.0f} |",
        flush=True,
    )
    return result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tenants", type=int, default=10_000)
    parser.add_argument("--seconds", type=int, default=20)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--warmup", type=int, default=8)
    parser.add_argument("--access-log", action="store_true")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-api-"))
    token = secrets.token_hex(3)
    database, reader = f"bench_api_{token}", f"bench_api_reader_{token}"
    with psycopg.connect(**ADMIN, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {database}")
    try:
        env = setup(work, database, reader, args.tenants)
        sys.path.insert(0, str(REPO))
        from tenant_infra.api import keys
        from tenant_infra.registry import Registry

        key = keys.create(Registry.from_platform(work, env), "product", "ledger")
        port = free_port()
        script = work / "connections.lua"
        script.write_text(WRK_SCRIPT.format(n=args.tenants, key=key, path=CONNECTIONS_PATH))
        tenantctl = str(REPO / ".venv" / "bin" / "tenantctl")
        print(f"{args.tenants} tenants, wrk -t1 -c{args.connections} -d{args.seconds}s\n")
        print("| server | requests/s | p50, ms | p99, ms | non-2xx |")
        print("|---|---:|---:|---:|---:|")
        serve = [tenantctl, "serve", "--listen", f"127.0.0.1:{port}", "--connections", "-"]
        if not args.access_log:
            serve.append("--no-access-log")
        measure("tenantctl serve", serve, env, work, documents(args.tenants), port, script, args)
        baseline_env = {
            **env, "PGHOST": str(ADMIN["host"]), "PGPORT": str(ADMIN["port"]),
            "BENCH_DB": database, "BENCH_READER": reader,
        }
        measure(
            "baseline: one row, static JSON",
            [sys.executable, "-c", BASELINE, str(port)],
            baseline_env, work, None, port, script, args,
        )
    finally:
        with psycopg.connect(**ADMIN, autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {database} WITH (FORCE)")
            conn.execute(f"DROP ROLE IF EXISTS {reader}")
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

"""``tenantctl list --format json`` against a registry of N tenants, end to end.

Untimed: a registry database on the PostgreSQL at $PGHOST:$PGPORT (default
127.0.0.1:5432, user postgres, trust auth), its schema migrated by the tool itself,
then N tenants with two services each inserted directly (as the issue asks). Timed:
the whole ``tenantctl list --format json`` process, start-up included, its output
discarded; its peak RSS from ``/usr/bin/time -v``. Each N is run ``--repeat`` times
interleaved; the registry database is dropped at the end.

    .venv/bin/python bench/registry_list.py --tenants 1000 10000 --repeat 3
"""

from __future__ import annotations

import argparse
import os
import re
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psycopg
import yaml

REPO = Path(__file__).resolve().parents[1]
ADMIN = {
    "host": os.environ.get("PGHOST", "127.0.0.1"),
    "port": int(os.environ.get("PGPORT", "5432")),
    "user": os.environ.get("PGUSER", "postgres"),
    "dbname": "postgres",
}


def setup(root: Path, database: str, n: int) -> dict[str, str]:
    (root / "stacks").mkdir(parents=True)
    shutil.copy(REPO / "Pulumi.yaml", root / "Pulumi.yaml")
    dev = yaml.safe_load((REPO / "stacks" / "Pulumi.dev.yaml").read_text())["config"]
    server = {"host": ADMIN["host"], "port": ADMIN["port"], "adminUser": ADMIN["user"]}
    (root / "platform").mkdir()
    (root / "platform" / "Pulumi.bench.yaml").write_text(
        yaml.safe_dump(
            {
                "config": {
                    "tenant-infra:products": ["ledger"],
                    "tenant-infra:platform": dev["tenant-infra:platform"]
                    | {"postgres": {"default": server | {"sslmode": "disable"}}},
                    "tenant-infra:registry": {
                        "database": database, "owner": ADMIN["user"], "user": ADMIN["user"]
                    },
                }
            }
        )
    )
    env = {**os.environ, "TENANT_INFRA_PLATFORM_STACK": "bench"}
    sys.path.insert(0, str(REPO))
    from tenant_infra.registry import Registry

    Registry.from_platform(root, env).open()  # the schema, by the tool's own migrations
    with psycopg.connect(**(ADMIN | {"dbname": database}), autocommit=True) as conn:
        conn.execute(
            "INSERT INTO registry.tenants (id, canonical, metadata, tier, state)"
            " SELECT 'tenant-' || i, 'tenant-' || i,"
            " jsonb_build_object('name', 'Tenant ' || i), 'standard',"
            " 'active' FROM generate_series(1, %s) i",
            (n,),
        )
        for product, isolation in (("ledger", "SCHEMA"), ("tracer", "DATABASE")):
            conn.execute(
                "INSERT INTO registry.services (tenant_id, product, isolation, state, revision,"
                " vault_path, connection, modules, connection_settings, announced)"
                " SELECT 'tenant-' || i, %s, %s, 'ready', '0003',"
                " 'tenants/tenants/tenant-' || i || '/' || %s::text,"
                " jsonb_build_object('postgresql', jsonb_build_object('host', 'db', 'port', 5432,"
                "   'database', %s::text, 'schema', 'tenant_tenant_' || i,"
                "   'username', %s::text || '_' || i)),"
                " '{}', '{}', true FROM generate_series(1, %s) i",
                (product, isolation, product, product, product, n),
            )
        conn.execute("ANALYZE")
    return env


def run_once(root: Path, env: dict[str, str]) -> tuple[float, int]:
    timefile = root / "time.txt"
    started = time.perf_counter()
    subprocess.run(
        ["/usr/bin/time", "-v", "-o", str(timefile), str(REPO / ".venv" / "bin" / "tenantctl"),
         "list", "--format", "json"],
        cwd=root, env=env, stdout=subprocess.DEVNULL, check=True,
    )
    seconds = time.perf_counter() - started
    rss = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", timefile.read_text())[1])  # type: ignore[index]
    return seconds, rss


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tenants", type=int, nargs="+", default=[1000, 10000])
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-registry-"))
    worlds = {}
    try:
        for n in args.tenants:
            database = f"bench_registry_{n}_{secrets.token_hex(2)}"
            with psycopg.connect(**ADMIN, autocommit=True) as conn:
                conn.execute(f"CREATE DATABASE {database}")
            worlds[n] = (database, work / str(n), setup(work / str(n), database, n))
        results: dict[int, list[tuple[float, int]]] = {n: [] for n in args.tenants}
        for _ in range(args.repeat):
            for n in args.tenants:  # interleaved
                _db, root, env = worlds[n]
                results[n].append(run_once(root, env))
        print("| tenants | runs, s | median, s | peak RSS, MiB (median) |")
        print("|---:|---|---:|---:|")
        for n, runs in results.items():
            secs = " / ".join(f"{s:.2f}" for s, _ in runs)
            print(
                f"| {n} | {secs} | {statistics.median(s for s, _ in runs):.2f} |"
                f" {statistics.median(r for _, r in runs) / 1024:.0f} |"
            )
    finally:
        with psycopg.connect(**ADMIN, autocommit=True) as conn:
            for database, _root, _env in worlds.values():
                conn.execute(f"DROP DATABASE IF EXISTS {database} WITH (FORCE)")
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

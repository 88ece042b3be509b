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
import re
import secrets
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import psycopg
from registry_root import ADMIN, REPO, registry_root


def setup(root: Path, database: str, n: int) -> dict[str, str]:
    env = registry_root(root, database)
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

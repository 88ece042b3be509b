"""bench/promotion: one SCHEMA-mode ledger tenant of about 1 GB, moved two ways, side by side.

(a) ``pg_dump -Fc -n tenant_x ledger | pg_restore -d <fresh database>``: the baseline;
(b) ``tenantctl promote`` of the same tenant (``commands.promote`` through the replay
    backend on this machine's PostgreSQL), its copy and its verification reported
    apart, and (c) its write freeze, from the locks taken to the service repointed.

Rounds interleave (a) and (b); between rounds the promotion is aborted back to SCHEMA
mode (its data verified unchanged), so every round moves the same rows. Setup (the
tenant, its data) is untimed. Run from the checkout::

    .venv/bin/python bench/promotion/run.py --transactions 1250000 --rounds 2
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import secrets
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
from psycopg import sql

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from tenant_infra import commands  # noqa: E402
from tests.support import tenant_data  # noqa: E402
from tests.support.registry import control_plane  # noqa: E402
from tests.support.world import ADMIN, World, force_cleanup  # noqa: E402

os.environ.setdefault("TENANT_INFRA_RABBITMQ_PASSWORD", "guest")


def admin(database: str = "postgres") -> psycopg.Connection:  # type: ignore[type-arg]
    return psycopg.connect(**(ADMIN | {"dbname": database}), autocommit=True)


def seed(tenant: str, transactions: int) -> None:
    """The ledger's rows as the tenant's login, without its statement timeout."""
    key = tenant.replace("-", "_")
    script = tenant_data.LEDGER.format(transactions=transactions)
    with admin("ledger") as conn:
        conn.execute(sql.SQL("SET ROLE {}").format(sql.Identifier(f"ledger_{key}")))
        conn.execute(sql.SQL("SET search_path = {}").format(sql.Identifier(f"tenant_{key}")))
        conn.execute(script.encode())
        conn.execute("RESET ROLE")
        conn.execute(sql.SQL("VACUUM ANALYZE"))


@contextlib.contextmanager
def scratch_database() -> Iterator[str]:
    """An empty database for one plain ``pg_restore``, dropped after it."""
    target = f"bench_restore_{secrets.token_hex(3)}"
    with admin() as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(target)))
    try:
        yield target
    finally:
        with admin() as conn:
            conn.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(target)))


def dump_restore(schema: str) -> float:
    with scratch_database() as target:
        started = time.monotonic()
        dump = subprocess.Popen(
            ["pg_dump", "-h", "127.0.0.1", "-U", "postgres", "-Fc", "-n", schema, "ledger"],
            stdout=subprocess.PIPE,
        )
        subprocess.run(
            ["pg_restore", "-h", "127.0.0.1", "-U", "postgres", "--no-owner", "--no-acl",
             "-d", target],
            stdin=dump.stdout,
            check=True,
        )
        assert dump.wait() == 0
        return time.monotonic() - started


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--transactions", type=int, default=1_250_000)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder, control_plane(Path(folder)) as plane:
        world = World(Path(folder), plane)
        tenant = world.new_tenant("bench")
        key = tenant.replace("-", "_")
        try:
            world.onboard(tenant, "ledger:SCHEMA")
            seed(tenant, args.transactions)
            with admin("ledger") as conn:
                row = conn.execute(
                    "SELECT sum(pg_total_relation_size(c.oid)), sum(pg_relation_size(c.oid))"
                    " FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
                    " WHERE n.nspname = %s AND c.relkind = 'r'",
                    (f"tenant_{key}",),
                ).fetchone()
            assert row is not None
            sizes = {"tenant": tenant, "totalBytes": int(row[0]), "heapBytes": int(row[1])}
            print(json.dumps(sizes), flush=True)
            for round_ in range(1, args.rounds + 1):
                baseline = dump_restore(f"tenant_{key}")
                started = time.monotonic()
                outcome = commands.promote(tenant, "ledger", verify=world.verify, **world.kwargs())
                total = time.monotonic() - started
                detail = outcome.operation.detail  # type: ignore[union-attr]
                print(
                    json.dumps(
                        {
                            "round": round_,
                            "a_dump_restore_s": round(baseline, 2),
                            "b_promote_total_s": round(total, 2),
                            "b_copy_s": detail["copy"]["seconds"],
                            "b_verify_s": detail["verifySeconds"],
                            "c_write_freeze_s": detail["writeFreezeSeconds"],
                        }
                    ),
                    flush=True,
                )
                aborted = commands.promote(tenant, "ledger", abort=True, **world.kwargs())
                assert aborted.operation.state == "aborted"  # type: ignore[union-attr]
        finally:
            world.close()
            force_cleanup(tenant)


if __name__ == "__main__":
    main()

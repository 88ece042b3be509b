"""bench/backup: one SCHEMA-mode ledger tenant of about 1 GB, backed up and restored
two ways each, side by side in one run.

(a) plain ``pg_dump -Fc -n tenant_x ledger -f FILE``;
(b) ``tenantctl backup`` of the same tenant (``commands.backup``: the dump, the
    manifest's counts and checksums in the same snapshot, the vhost's topology, the
    sha256 of every file);
(c) plain ``pg_restore -d <empty database> FILE`` of (a)'s archive;
(d) ``tenantctl restore --swap`` of (b)'s set (``commands.restore`` through the replay
    backend: the set's sha256, the migrations, the rows, the indexes, the
    verification against the manifest, the swap), its load and verification apart.

Rounds interleave the four; after each restore the replaced data is dropped
(untimed), so every round moves the same rows. Setup is untimed. From the checkout::

    .venv/bin/python bench/backup/run.py --transactions 1250000 --rounds 3
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from bench.promotion.run import admin, scratch_database, seed  # noqa: E402
from tenant_infra import commands  # noqa: E402
from tests.support.registry import control_plane  # noqa: E402
from tests.support.world import World, force_cleanup  # noqa: E402

os.environ.setdefault("TENANT_INFRA_RABBITMQ_PASSWORD", "guest")
PG = ["-h", "127.0.0.1", "-U", "postgres"]


def plain_dump(schema: str, path: Path) -> float:
    started = time.monotonic()
    subprocess.run(["pg_dump", *PG, "-Fc", "-n", schema, "-f", str(path), "ledger"], check=True)
    return time.monotonic() - started


def plain_restore(path: Path) -> float:
    with scratch_database() as target:
        started = time.monotonic()
        subprocess.run(["pg_restore", *PG, "-d", target, str(path)], check=True)
        return time.monotonic() - started


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--transactions", type=int, default=1_250_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--backup-only", action="store_true", help="(a) and (b) only")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder, control_plane(Path(folder)) as plane:
        world = World(Path(folder), plane)
        tenant = world.new_tenant("bench")
        key = tenant.replace("-", "_")
        sets = Path(folder) / "backups"
        try:
            world.onboard(tenant, "ledger:SCHEMA")
            seed(tenant, args.transactions)
            with admin("ledger") as conn:
                row = conn.execute(
                    "SELECT sum(pg_total_relation_size(c.oid)) FROM pg_class c"
                    " JOIN pg_namespace n ON n.oid = c.relnamespace"
                    " WHERE n.nspname = %s AND c.relkind = 'r'",
                    (f"tenant_{key}",),
                ).fetchone()
            assert row is not None
            print(json.dumps({"tenant": tenant, "totalBytes": int(row[0])}), flush=True)
            for round_ in range(1, args.rounds + 1):
                archive = Path(folder) / f"plain-{round_}.dump"
                a = plain_dump(f"tenant_{key}", archive)
                started = time.monotonic()
                (result,) = commands.backup([tenant], to=sets, **world.kwargs())
                b = time.monotonic() - started
                assert result.status == "ok", result.to_json()
                if args.backup_only:
                    print(
                        json.dumps(
                            {
                                "round": round_,
                                "a_pg_dump_s": round(a, 2),
                                "b_backup_s": round(b, 2),
                                "backup_ratio": round(b / a, 3),
                                **result.timings,
                            }
                        ),
                        flush=True,
                    )
                    continue
                c = plain_restore(archive)
                started = time.monotonic()
                outcome = commands.restore(
                    tenant, "ledger", source=result.set, swap=True, backups=sets, **world.kwargs()
                )
                d = time.monotonic() - started
                detail = outcome.operation.detail  # type: ignore[union-attr]
                assert outcome.operation.state == "done"  # type: ignore[union-attr]
                commands.restore(tenant, "ledger", drop_previous=True, **world.kwargs())
                dump_bytes = Path(str(result.set), "postgresql.dump").stat().st_size
                print(
                    json.dumps(
                        {
                            "round": round_,
                            "a_pg_dump_s": round(a, 2),
                            "b_backup_s": round(b, 2),
                            "c_pg_restore_s": round(c, 2),
                            "d_restore_swap_s": round(d, 2),
                            "d_load_s": detail["loadSeconds"],
                            "d_verify_s": detail["verifySeconds"],
                            "backup_ratio": round(b / a, 3),
                            **{f"b_{k}": v for k, v in result.timings.items()},
                            "restore_ratio": round(d / c, 3),
                            "plain_dump_bytes": archive.stat().st_size,
                            "set_dump_bytes": dump_bytes,
                        }
                    ),
                    flush=True,
                )
                archive.unlink()
        finally:
            world.close()
            force_cleanup(tenant)


if __name__ == "__main__":
    main()

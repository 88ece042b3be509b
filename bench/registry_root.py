"""A throwaway project root whose platform definition names a bench registry.

Shared by the registry benchmarks: ``platform/Pulumi.bench.yaml`` on the PostgreSQL
at $PGHOST:$PGPORT (default 127.0.0.1:5432, trust auth), the registry's schema
migrated by the tool's own code. Returns the environment that selects it.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
ADMIN = {
    "host": os.environ.get("PGHOST", "127.0.0.1"),
    "port": int(os.environ.get("PGPORT", "5432")),
    "user": os.environ.get("PGUSER", "postgres"),
    "dbname": "postgres",
}


def registry_root(root: Path, database: str, reader: str | None = None) -> dict[str, str]:
    (root / "stacks").mkdir(parents=True)
    shutil.copy(REPO / "Pulumi.yaml", root / "Pulumi.yaml")
    dev = yaml.safe_load((REPO / "stacks" / "Pulumi.dev.yaml").read_text())["config"]
    server = {"host": ADMIN["host"], "port": ADMIN["port"], "adminUser": ADMIN["user"]}
    registry = {"database": database, "owner": ADMIN["user"], "user": ADMIN["user"]}
    (root / "platform").mkdir()
    (root / "platform" / "Pulumi.bench.yaml").write_text(
        yaml.safe_dump(
            {
                "config": {
                    "tenant-infra:products": ["ledger"],
                    "tenant-infra:platform": dev["tenant-infra:platform"]
                    | {"postgres": {"default": server | {"sslmode": "disable"}}},
                    "tenant-infra:registry": registry | ({"reader": reader} if reader else {}),
                }
            }
        )
    )
    env = {**os.environ, "TENANT_INFRA_PLATFORM_STACK": "bench"}
    sys.path.insert(0, str(REPO))
    from tenant_infra.registry import Registry

    Registry.from_platform(root, env).open()  # the schema, by the tool's own migrations
    return env

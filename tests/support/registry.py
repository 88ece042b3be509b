"""A throwaway control plane for tests: a registry database on the real PostgreSQL and
a platform definition naming it, with events on the real Redis in an environment of
its own (so that concurrent tests never see each other's events)."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import yaml
from psycopg import sql

ROOT = Path(__file__).resolve().parents[2]
ADMIN: dict[str, Any] = {"host": "127.0.0.1", "port": 5432, "user": "postgres", "dbname": "postgres"}
REDIS_PORT = 6379


@dataclass
class ControlPlane:
    root: Path
    stack: str
    database: str
    environment: str
    path: Path
    #: A read-only login of its own, as the platform program declares the reader.
    reader: str = "tenant_registry_reader"

    @property
    def environ(self) -> dict[str, str]:
        return {"TENANT_INFRA_PLATFORM_STACK": self.stack}

    @property
    def channel(self) -> str:
        return f"tenant-events:{self.environment}:"

    def write(self, redis_port: int = REDIS_PORT) -> None:
        """The platform definition, with events on ``redis_port`` (a closed port
        stands for Redis being down)."""
        dev = yaml.safe_load((ROOT / "stacks" / "Pulumi.dev.yaml").read_text())["config"]
        config = {
            "tenant-infra:products": ["ledger", "tracer"],
            "tenant-infra:protectData": False,
            "tenant-infra:platform": dev["tenant-infra:platform"],
            "tenant-infra:registry": {
                "database": self.database,
                "owner": "postgres",
                "user": "postgres",
                "reader": self.reader,
            },
            "tenant-infra:events": {
                "host": "127.0.0.1",
                "port": redis_port,
                "environment": self.environment,
            },
        }
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text(yaml.safe_dump({"config": config}))

    def rows(self, query: str, params: Any = None) -> list[dict[str, Any]]:
        with psycopg.connect(
            **(ADMIN | {"dbname": self.database}), row_factory=psycopg.rows.dict_row
        ) as conn:
            return conn.execute(query, params).fetchall()  # type: ignore[arg-type]


def _admin(statement: sql.Composable) -> None:
    with psycopg.connect(**ADMIN, autocommit=True) as conn:
        conn.execute(statement)


@contextmanager
def control_plane(root: Path, environment: str | None = None) -> Iterator[ControlPlane]:
    """A registry database and ``platform/Pulumi.<stack>.yaml`` under ``root``."""
    token = secrets.token_hex(4)
    plane = ControlPlane(
        root=root,
        stack=f"test-{token}",
        database=f"tenant_registry_{token}",
        environment=environment or f"test-{token}",
        path=root / "platform" / f"Pulumi.test-{token}.yaml",
        reader=f"tenant_registry_reader_{token}",
    )
    database, reader = sql.Identifier(plane.database), sql.Identifier(plane.reader)
    _admin(sql.SQL("CREATE DATABASE {}").format(database))
    _admin(sql.SQL("CREATE ROLE {} LOGIN").format(reader))
    try:
        # What components/registry.py grants the reader: CONNECT, USAGE, SELECT.
        _admin(sql.SQL("GRANT CONNECT ON DATABASE {} TO {}").format(database, reader))
        with psycopg.connect(**(ADMIN | {"dbname": plane.database}), autocommit=True) as conn:
            conn.execute("CREATE SCHEMA registry")
            conn.execute(sql.SQL("GRANT USAGE ON SCHEMA registry TO {}").format(reader))
            conn.execute(
                sql.SQL(
                    "ALTER DEFAULT PRIVILEGES IN SCHEMA registry GRANT SELECT ON TABLES TO {}"
                ).format(reader)
            )
        plane.write()
        yield plane
    finally:
        _admin(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(database))
        _admin(sql.SQL("DROP ROLE IF EXISTS {}").format(reader))


class Subscriber:
    """A Redis Pub/Sub subscriber on one channel, collecting decoded envelopes."""

    def __init__(self, channel: str, port: int = REDIS_PORT) -> None:
        import redis

        self.client = redis.Redis(host="127.0.0.1", port=port)
        self.pubsub = self.client.pubsub(ignore_subscribe_messages=True)
        self.pubsub.subscribe(channel)
        self.pubsub.get_message(timeout=1)  # the subscription confirmation

    def received(self, settle: float = 0.5) -> list[dict[str, Any]]:
        """Everything published so far (waits ``settle`` seconds for stragglers)."""
        import json
        import time

        events = []
        deadline = time.monotonic() + settle
        while time.monotonic() < deadline:
            message = self.pubsub.get_message(timeout=0.1)
            if message is not None:
                events.append(json.loads(message["data"]))
                deadline = time.monotonic() + settle
        return events

    def close(self) -> None:
        self.pubsub.close()
        self.client.close()

"""A neighbour changing a database's privileges at the same moment as the code under
test: the ``tuple concurrently updated`` conflict (``tenant_infra/retry.py``), made
to happen every time rather than once in a while."""

from __future__ import annotations

import contextlib
import secrets
import time
from collections.abc import Callable, Iterator

import psycopg
from psycopg import sql

from tenant_infra.retry import with_retries

ADMIN = {"host": "127.0.0.1", "port": 5432, "user": "postgres", "dbname": "postgres"}


@contextlib.contextmanager
def neighbour_grant(database: str) -> Iterator[Callable[..., None]]:
    """An open transaction that granted ``CONNECT`` on ``database`` to a role of its
    own. The function it yields waits until another session waits on that transaction
    (a change of the same ``pg_database`` row), then commits it: that session's
    statement then fails with ``tuple concurrently updated``. Leaving the block
    without it rolls the grant back; enter this after a thread pool the waiting
    session runs in, so that it ends first."""
    role = sql.Identifier(f"ti_neighbour_{secrets.token_hex(4)}")
    target = sql.Identifier(database)
    with psycopg.connect(**ADMIN, autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE ROLE {}").format(role))
        try:
            with psycopg.connect(**ADMIN) as neighbour:
                neighbour.execute(sql.SQL("GRANT CONNECT ON DATABASE {} TO {}").format(target, role))
                pid = neighbour.info.backend_pid

                def commit_once_waited_on(by: str = "", timeout: float = 20.0) -> None:
                    """``by``: a word of the waiting statement (the tests share servers)."""
                    deadline = time.monotonic() + timeout
                    while not admin.execute(
                        "SELECT 1 FROM pg_catalog.pg_stat_activity"
                        " WHERE %s = ANY(pg_catalog.pg_blocking_pids(pid))"
                        " AND strpos(query, %s) > 0",
                        (pid, by),
                    ).fetchone():
                        if time.monotonic() > deadline:
                            raise AssertionError(f"no session waited on the grant to {database}")
                        time.sleep(0.02)
                    neighbour.commit()

                yield commit_once_waited_on
        finally:  # on a database other tests' grants may be changing at this moment
            with_retries(
                lambda: admin.execute(sql.SQL("REVOKE ALL ON DATABASE {} FROM {}").format(target, role)),
                base_delay=0.1,
            )
            admin.execute(sql.SQL("DROP ROLE {}").format(role))

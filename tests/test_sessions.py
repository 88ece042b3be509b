"""The admin's session helpers on the real PostgreSQL."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import psycopg
import pytest
from psycopg import sql

from tenant_infra import retry
from tenant_infra.sessions import drop_owned
from tests.support.conflict import ADMIN, neighbour_grant


@pytest.fixture
def granted() -> Iterator[tuple[str, str]]:
    """A database, and a login with CONNECT on it and a table in it."""
    name = f"ti_sessions_{secrets.token_hex(4)}"
    ident = sql.Identifier(name)
    with psycopg.connect(**ADMIN, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(ident))
        conn.execute(sql.SQL("REVOKE ALL ON DATABASE {} FROM PUBLIC").format(ident))
        conn.execute(sql.SQL("CREATE ROLE {} LOGIN").format(ident))
        conn.execute(sql.SQL("CREATE ROLE {}").format(sql.Identifier(f"{name}_owner")))
        conn.execute(sql.SQL("GRANT CONNECT ON DATABASE {} TO {}").format(ident, ident))
        try:
            yield name, f"{name}_owner"
        finally:
            conn.execute(sql.SQL("DROP DATABASE {}").format(ident))
            conn.execute(sql.SQL("DROP ROLE {}").format(ident))
            conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(f"{name}_owner")))


def test_drop_owned_gets_past_a_neighbours_grant_on_the_same_database(
    granted: tuple[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    database, owner = granted
    monkeypatch.setattr(retry, "RETRY_BASE_DELAY", 0.0)
    with psycopg.connect(**(ADMIN | {"dbname": database}), autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE TABLE kept (id int)"))
        conn.execute(sql.SQL("ALTER TABLE kept OWNER TO {}").format(sql.Identifier(database)))
        with ThreadPoolExecutor(1) as pool, neighbour_grant(database) as commit_once_waited_on:
            dropping = pool.submit(drop_owned, conn, database, reassign_to=owner)
            commit_once_waited_on()
            dropping.result(timeout=30)
        kept = conn.execute("SELECT tableowner FROM pg_tables WHERE tablename = 'kept'")
        assert kept.fetchone() == (owner,)
        privilege = conn.execute(
            "SELECT has_database_privilege(%s, current_database(), 'CONNECT')", (database,)
        )
        assert privilege.fetchone() == (False,)

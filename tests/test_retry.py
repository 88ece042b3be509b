"""Transient conflicts: what PostgreSQL raises when two sessions change one database's
privileges at once, and the retry that gets past it."""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import psycopg
import pytest
from psycopg import sql

from tenant_infra.retry import TransientConflict, transient, with_retries
from tests.support.conflict import ADMIN, neighbour_grant


@pytest.fixture
def database() -> Iterator[str]:
    name = f"ti_retry_{secrets.token_hex(4)}"
    with psycopg.connect(**ADMIN, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        conn.execute(sql.SQL("REVOKE ALL ON DATABASE {} FROM PUBLIC").format(sql.Identifier(name)))
        conn.execute(sql.SQL("CREATE ROLE {}").format(sql.Identifier(name)))
        try:
            yield name
        finally:
            conn.execute(sql.SQL("DROP DATABASE {}").format(sql.Identifier(name)))
            conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(name)))


def _grant(database: str) -> None:
    with psycopg.connect(**ADMIN, autocommit=True) as conn:
        conn.execute(
            sql.SQL("GRANT CONNECT ON DATABASE {} TO {}").format(
                sql.Identifier(database), sql.Identifier(database)
            )
        )


def _granted(database: str) -> bool:
    with psycopg.connect(**ADMIN) as conn:
        row = conn.execute("SELECT has_database_privilege(%s, %s, 'CONNECT')", (database, database))
        return bool(row.fetchone() == (True,))


def test_postgresql_reports_a_neighbours_concurrent_grant_as_transient(database: str) -> None:
    with ThreadPoolExecutor(1) as pool, neighbour_grant(database) as commit_once_waited_on:
        granting = pool.submit(_grant, database)
        commit_once_waited_on()
        with pytest.raises(psycopg.Error) as raised:
            granting.result(timeout=30)
    assert transient(raised.value)
    assert not _granted(database)


def test_a_grant_retried_after_the_conflict_is_made(database: str) -> None:
    with ThreadPoolExecutor(1) as pool, neighbour_grant(database) as commit_once_waited_on:
        granting = pool.submit(with_retries, lambda: _grant(database), base_delay=0.0)
        commit_once_waited_on()
        granting.result(timeout=30)
    assert _granted(database)


def test_a_tenants_value_that_reads_like_a_conflict_is_not_retried() -> None:
    """The words in a value (a migration's failing row) are not the server's verdict."""
    calls: list[int] = []

    def fails() -> None:
        calls.append(1)
        with psycopg.connect(**ADMIN) as conn:
            conn.execute("SELECT 'tuple concurrently updated'::int")

    with pytest.raises(psycopg.errors.InvalidTextRepresentation, match="tuple concurrently"):
        with_retries(fails, sleep=lambda _s: None)
    assert len(calls) == 1


def test_two_first_grants_on_a_parameter_at_once_are_retried(database: str) -> None:
    """A parameter's privileges get their catalog row with the first grant: two at once
    both insert it, and the later fails on the key (the restore and promotion logins'
    ``GRANT SET ON PARAMETER``)."""
    parameter = sql.Identifier(f"tenant_infra_test.{database}")
    role = sql.Identifier(database)

    def grant() -> None:
        with psycopg.connect(**ADMIN, autocommit=True) as conn:
            conn.execute(sql.SQL("GRANT SET ON PARAMETER {} TO {}").format(parameter, role))

    with psycopg.connect(**ADMIN, autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE ROLE {}").format(sql.Identifier(f"{database}_first")))
        try:
            with psycopg.connect(**ADMIN) as first, ThreadPoolExecutor(2) as pool:
                first.execute(
                    sql.SQL("GRANT SET ON PARAMETER {} TO {}").format(
                        parameter, sql.Identifier(f"{database}_first")
                    )
                )
                unretried = pool.submit(grant)
                retried = pool.submit(with_retries, grant, base_delay=0.0)
                deadline = time.monotonic() + 20
                while len(_waiting_on(admin, first.info.backend_pid)) < 2:
                    assert time.monotonic() < deadline, "the two grants never waited"
                    time.sleep(0.02)
                first.commit()
                with pytest.raises(psycopg.errors.UniqueViolation) as raised:
                    unretried.result(timeout=30)
                retried.result(timeout=30)
            assert transient(raised.value)
            granted = admin.execute(
                "SELECT has_parameter_privilege(%s, %s, 'SET')",
                (database, f"tenant_infra_test.{database}"),
            )
            assert granted.fetchone() == (True,)
        finally:
            for who in (role, sql.Identifier(f"{database}_first")):
                admin.execute(sql.SQL("REVOKE ALL ON PARAMETER {} FROM {}").format(parameter, who))
            admin.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(f"{database}_first")))


def _waiting_on(conn: psycopg.Connection[Any], pid: int) -> list[Any]:
    return conn.execute(
        "SELECT pid FROM pg_stat_activity WHERE %s = ANY(pg_blocking_pids(pid))", (pid,)
    ).fetchall()


def test_a_conflict_that_persists_fails_after_the_last_attempt_with_growing_waits() -> None:
    waits: list[float] = []

    def conflicts() -> None:
        raise TransientConflict("tuple concurrently updated")

    with pytest.raises(TransientConflict):
        with_retries(conflicts, attempts=4, base_delay=1.0, sleep=waits.append)
    assert len(waits) == 3
    assert [1 <= w / 2**i <= 2 for i, w in enumerate(waits)] == [True] * 3

"""Target naming and discovery, DSN handling."""

from __future__ import annotations

import pytest
from pgsandbox import ADMIN, PgSandbox, admin_exec

from tenant_infra.errors import InvalidInput
from tenant_infra.migrate.connection import first_line, parse_dsn, redact, refuse_password_in_argv
from tenant_infra.migrate.targets import (
    database_mode_target,
    discover_databases_like,
    discover_product,
    discover_schemas_like,
    schema_mode_target,
    sort_for_reuse,
)


def test_names_come_from_tenant_py() -> None:
    s = schema_mode_target("globex-eu", "ledger")
    d = database_mode_target("globex-eu", "ledger")
    assert (s.schema, s.database, s.role) == ("tenant_globex_eu", "ledger", "ledger_globex_eu")
    assert (d.schema, d.database, d.role) == (
        "tenant_globex_eu",
        "ledger_globex_eu",
        "ledger_globex_eu",
    )
    assert s.where == "ledger.tenant_globex_eu" and s.label == "globex-eu"


def test_sort_groups_by_database() -> None:
    ts = [
        database_mode_target("b-b", "ledger"),
        schema_mode_target("z-z", "ledger"),
        schema_mode_target("a-a", "ledger"),
    ]
    assert [t.database for t in sort_for_reuse(ts)] == ["ledger", "ledger", "ledger_b_b"]


@pytest.mark.parametrize(
    ("dsn", "expected"),
    [
        (
            "postgresql+psycopg2://u:pw@h:5433/db",
            {"user": "u", "password": "pw", "host": "h", "port": "5433", "dbname": "db"},
        ),
        (
            "postgresql://u@h/db?sslmode=require",
            {"user": "u", "host": "h", "dbname": "db", "sslmode": "require"},
        ),
        ("host=h dbname=db user=u", {"host": "h", "dbname": "db", "user": "u"}),
    ],
)
def test_parse_dsn(dsn: str, expected: dict[str, str]) -> None:
    assert parse_dsn(dsn) == expected


def test_redact_and_errors_hide_password(monkeypatch: pytest.MonkeyPatch) -> None:
    p = parse_dsn("postgresql://u:topsecret@h:5433/db")
    assert redact(p) == "u@h:5433/db"
    assert "topsecret" not in first_line(RuntimeError("x password=topsecret y"))
    with pytest.raises(InvalidInput) as exc:
        parse_dsn("postgresql://u:topsecret@h:notaport/db?bad=1")
    assert "topsecret" not in str(exc.value)
    monkeypatch.setenv("TENANT_INFRA_ADMIN_DSN", "postgresql://x@y/z")
    assert parse_dsn(None) == {"user": "x", "host": "y", "dbname": "z"}


def test_discover_product_both_modes_ignores_non_tenants(pg: PgSandbox, product: str) -> None:
    s = pg.schema_tenant(product)
    d = pg.database_tenant(product)
    admin_exec("CREATE SCHEMA tenant_x", product)  # "x" is not a valid tenant id
    admin_exec("CREATE SCHEMA other", product)
    found = discover_product(ADMIN, product)
    assert sorted((t.tenant, t.database) for t in found) == sorted(
        [(s.tenant, product), (d.tenant, d.database)]
    )
    assert discover_product(ADMIN, PgSandbox.new_product()) == []


def test_generic_discovery(pg: PgSandbox, product: str) -> None:
    db = pg.database(product)
    for name in ("t_1", "t_2", "u_1"):
        admin_exec(f"CREATE SCHEMA {name}", db)
    params = {**ADMIN, "dbname": db}
    assert [t.schema for t in discover_schemas_like(params, "t\\_%")] == ["t_1", "t_2"]
    assert all(t.role is None and t.database is None for t in discover_schemas_like(params, "t%"))
    found = discover_databases_like(ADMIN, product, schema="app")
    assert [(t.database, t.schema) for t in found] == [(product, "app")]


@pytest.mark.parametrize(
    "dsn",
    [
        "postgresql://u:pw@h/db",
        "postgres://u:@h/db",
        "postgresql+psycopg://u:pw@h:5432/db",
        "postgresql://u@h/db?password=pw",
        "host=h user=u password=pw",
        "host=h user=u password='p w'",
        "host=h sslpassword=pw",
        "host=h password=pw port=notaport",  # unparsable: still refused, not quoted
    ],
)
def test_dsn_on_the_command_line_must_not_carry_a_password(dsn: str) -> None:
    with pytest.raises(InvalidInput, match=r"PGPASSWORD or ~/\.pgpass") as exc:
        refuse_password_in_argv(dsn)
    assert "pw" not in str(exc.value).replace("password", "")


@pytest.mark.parametrize(
    "dsn",
    [None, "", "postgresql://u@h/db", "host=h user=u", "postgresql://h:5432/db?sslmode=require"],
)
def test_dsn_without_password_is_accepted(dsn: str | None) -> None:
    refuse_password_in_argv(dsn)

"""The product script directories: realistic DDL, identical in both isolation modes,
and usable by plain Alembic through the shared env.py."""

from __future__ import annotations

import hashlib

import psycopg
import pytest
from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory
from conftest import LEDGER, TRACER
from pgsandbox import ADMIN, PgSandbox, Service, tables, version

from tenant_infra.catalog import load_catalog
from tenant_infra.migrate.connection import connect, with_database
from tenant_infra.migrate.engine import TenantMigrator


def definition(svc: Service) -> list[tuple[object, ...]]:
    """Columns, constraints and indexes of the tenant schema, schema name removed."""
    s = svc.schema
    cols = svc.sql(
        "SELECT table_name, column_name, data_type, numeric_precision, numeric_scale,"
        " character_maximum_length, is_nullable, column_default FROM information_schema.columns"
        f" WHERE table_schema = '{s}' ORDER BY 1, 2"
    )
    cons = svc.sql(
        "SELECT conrelid::regclass::text, conname, pg_get_constraintdef(oid) FROM pg_constraint"
        f" WHERE connamespace = '{s}'::regnamespace ORDER BY 1, 2"
    )
    idx = svc.sql(
        "SELECT tablename, indexname, replace(indexdef, schemaname || '.', '') FROM pg_indexes"
        f" WHERE schemaname = '{s}' ORDER BY 1, 2"
    )
    return [
        tuple(v.replace(s, "<schema>") if isinstance(v, str) else v for v in row)
        for row in [*cols, *cons, *idx]
    ]


def test_catalog_points_at_these_directories() -> None:
    cat = load_catalog()
    assert cat.product("ledger").script_location == LEDGER
    assert cat.product("tracer").script_location == TRACER
    for d in (LEDGER, TRACER):
        assert len(list(ScriptDirectory(str(d)).walk_revisions())) >= 3


@pytest.mark.parametrize("script", [LEDGER, TRACER], ids=["ledger", "tracer"])
def test_schema_and_database_tenants_are_identical(
    pg: PgSandbox, product: str, script: object
) -> None:
    s, d = pg.schema_tenant(product), pg.database_tenant(product)
    m = TenantMigrator(script)  # type: ignore[arg-type]
    try:
        assert m.upgrade(s.own_target).status == "migrated"
        assert m.upgrade(d.own_target).status == "migrated"
    finally:
        m.close()
    assert version(s) == version(d) == "0003"
    assert definition(s) == definition(d)
    assert len(definition(s)) > 40


def test_ledger_money_and_constraints(pg: PgSandbox, product: str) -> None:
    svc = pg.schema_tenant(product)
    m = TenantMigrator(LEDGER)
    try:
        m.upgrade(svc.own_target)
    finally:
        m.close()
    money = svc.sql(
        "SELECT table_name || '.' || column_name FROM information_schema.columns WHERE"
        f" table_schema = '{svc.schema}' AND data_type = 'numeric'"
        " AND (numeric_precision, numeric_scale) = (38, 18) ORDER BY 1"
    )
    assert ("operations.amount",) in money and ("balances.available",) in money
    fks = svc.sql(
        f"SELECT count(*) FROM pg_constraint WHERE contype = 'f' AND connamespace = "
        f"'{svc.schema}'::regnamespace"
    )
    assert fks[0][0] >= 8
    # As the tenant itself: a debit whose balance arithmetic is wrong is refused.
    with psycopg.connect(**svc.params()) as conn:  # type: ignore[arg-type]
        conn.execute(f"SET search_path TO {svc.schema}")
        org = conn.execute(
            "INSERT INTO organizations (legal_name, legal_document) VALUES"
            " ('Acme', '1') RETURNING id"
        ).fetchone()
        assert org is not None
        led = conn.execute(
            "INSERT INTO ledgers (organization_id, name) VALUES (%s, 'main') RETURNING id",
            (org[0],),
        ).fetchone()
        assert led is not None
        with pytest.raises(psycopg.errors.CheckViolation):
            conn.execute(
                "INSERT INTO accounts (ledger_id, alias, name, asset_code, type)"
                " VALUES (%s, 'bad alias!', 'x', 'BRL', 'deposit')",
                (led[0],),
            )


def test_tracer_audit_chain_is_append_only(pg: PgSandbox, product: str) -> None:
    svc = pg.schema_tenant(product)
    m = TenantMigrator(TRACER)
    try:
        assert m.upgrade(svc.own_target).status == "migrated"
    finally:
        m.close()
    h1 = hashlib.sha256(b"e1").digest()
    with psycopg.connect(**svc.params(), autocommit=True) as conn:  # type: ignore[arg-type]
        conn.execute(f"SET search_path TO {svc.schema}")
        conn.execute(
            "INSERT INTO audit_events (event_type, aggregate_type, aggregate_id, payload,"
            " hash) VALUES ('rule.created', 'rule', gen_random_uuid(), '{}', %s)",
            (h1,),
        )
        with pytest.raises(psycopg.errors.RaiseException, match="append-only"):
            conn.execute("DELETE FROM audit_events")
        with pytest.raises(psycopg.errors.CheckViolation):
            conn.execute(
                "INSERT INTO audit_events (event_type, aggregate_type, aggregate_id,"
                " payload, hash) VALUES ('x', 'rule', gen_random_uuid(), '{}', 'short')"
            )


def test_plain_alembic_with_given_connection(pg: PgSandbox, product: str) -> None:
    """The product env.py: config.attributes['connection'] + -x schema, as the tool does."""
    svc = pg.database_tenant(product)
    cfg = Config(str(LEDGER / "alembic.ini"), cmd_opts=None)
    cfg.cmd_opts = type("O", (), {"x": [f"schema={svc.schema}"]})()  # type: ignore[assignment]
    params = {**with_database(ADMIN, svc.database), "user": svc.role, "password": svc.password}
    with connect(params) as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "0002")
        conn.commit()
    assert version(svc) == "0002"
    assert "balances" not in tables(svc) and "operations" in tables(svc)
    assert tables(svc, "public") == set()

"""Two scratch databases on the real server holding the same tenant schema: a
source with rows, a target with the same tables (as migrations would make them)
and a login of its own, as a promotion's dedicated store has."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import psycopg
import pytest
from psycopg import sql

ADMIN: dict[str, Any] = {"host": "127.0.0.1", "port": 5432, "user": "postgres", "dbname": "postgres"}
SCHEMA = "tenant_pgdata"

#: A ledger-like schema: foreign keys (one deferred), numerics, an identity, a plain
#: sequence well past 1, a generated column, an enum array (text COPY), bytea, json,
#: and an append-only table whose trigger refuses UPDATE/DELETE and stamps inserts.
DDL = """
CREATE TYPE {s}.kind AS ENUM ('debit', 'credit');
CREATE SEQUENCE {s}.invoice_no START 1000;
CREATE TABLE {s}.accounts (
    id uuid PRIMARY KEY, alias text NOT NULL UNIQUE, balance numeric(38, 18) NOT NULL,
    opened timestamptz NOT NULL, tags {s}.kind[] NOT NULL DEFAULT '{{}}'
);
CREATE TABLE {s}.operations (
    seq bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    account_id uuid NOT NULL REFERENCES {s}.accounts (id) DEFERRABLE INITIALLY DEFERRED,
    amount numeric(38, 18) NOT NULL, kind {s}.kind NOT NULL, doubled numeric GENERATED ALWAYS AS (amount * 2) STORED,
    invoice bigint NOT NULL DEFAULT nextval('{s}.invoice_no'), payload jsonb, raw bytea, at interval
);
CREATE INDEX operations_account_amount ON {s}.operations (account_id, amount DESC) WHERE amount > 0;
CREATE FUNCTION {s}.append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN RAISE EXCEPTION 'inserts go through the product'; END IF;
    RAISE EXCEPTION 'append-only';
END $$;
CREATE TABLE {s}.audit (seq bigint PRIMARY KEY, hash bytea NOT NULL);
CREATE TRIGGER audit_guard BEFORE INSERT OR UPDATE OR DELETE ON {s}.audit
    FOR EACH ROW EXECUTE FUNCTION {s}.append_only();
CREATE TABLE {s}.alembic_version (version_num varchar(32) PRIMARY KEY);
"""

ROWS = """
INSERT INTO {s}.alembic_version VALUES ('0003');
INSERT INTO {s}.accounts
    SELECT gen_random_uuid(), 'acct-' || i, (i * 1.000000000000000001)::numeric(38, 18),
           now() - i * interval '1 hour', ARRAY['debit', 'credit']::{s}.kind[]
    FROM generate_series(1, 40) i;
INSERT INTO {s}.operations (account_id, amount, kind, payload, raw, at)
    SELECT a.id, i / 7.0, CASE WHEN i % 2 = 0 THEN 'debit' ELSE 'credit' END::{s}.kind,
           jsonb_build_object('i', i, 'note', E'tab\\there'), decode(md5(i::text), 'hex'), i * interval '1 minute'
    FROM generate_series(1, 500) i
    JOIN LATERAL (SELECT id FROM {s}.accounts ORDER BY alias LIMIT 1 OFFSET (i % 40)) a ON true;
ALTER TABLE {s}.audit DISABLE TRIGGER audit_guard;
INSERT INTO {s}.audit SELECT i, sha256(i::text::bytea) FROM generate_series(1, 50) i;
ALTER TABLE {s}.audit ENABLE TRIGGER audit_guard;
SELECT setval('{s}.invoice_no', 5000);
"""


@dataclass
class Pair:
    source_db: str
    target_db: str
    login: str
    schema: str = SCHEMA

    def params(self, database: str) -> dict[str, Any]:
        return ADMIN | {"dbname": database}

    @property
    def source(self) -> dict[str, Any]:
        return self.params(self.source_db)

    @property
    def target(self) -> dict[str, Any]:
        return self.params(self.target_db)

    def run(self, database: str, statement: str, params: Any = None) -> list[Any]:
        with psycopg.connect(**self.params(database), autocommit=True) as conn:
            cur = conn.execute(statement.format(s=self.schema).encode(), params)  # type: ignore[call-overload]
            return cur.fetchall() if cur.description else []


def _admin(statement: sql.Composable) -> None:
    with psycopg.connect(**ADMIN, autocommit=True) as conn:
        conn.execute(statement)


@pytest.fixture
def pair() -> Iterator[Pair]:
    token = secrets.token_hex(4)
    found = Pair(f"pgdata_src_{token}", f"pgdata_dst_{token}", f"pgdata_login_{token}")
    _admin(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(found.login)))
    try:
        for database in (found.source_db, found.target_db):
            _admin(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(database)))
            owner = found.login if database == found.target_db else "postgres"
            found.run(database, f"CREATE SCHEMA {{s}} AUTHORIZATION {owner}")
            found.run(database, f"SET ROLE {owner}; " + DDL)
        found.run(found.source_db, ROWS)
        found.run(found.target_db, "INSERT INTO {s}.alembic_version VALUES ('0003')")
        yield found
    finally:
        for database in (found.source_db, found.target_db):
            _admin(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(database)))
        _admin(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(found.login)))

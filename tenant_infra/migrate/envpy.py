"""The ``env.py`` of every product script directory, for running plain ``alembic``.

``tenantctl`` never executes env.py (it drives the script directory itself, see
:mod:`tenant_infra.migrate.engine`); this is for a human or a test running
``alembic -c migrations/<product>/alembic.ini -x schema=tenant_acme upgrade head`` with
the tenant role's connection in ``$TENANT_INFRA_DSN`` (``-x dsn=URL`` also works, but
argv is visible in ``ps``: no password there), or calling ``alembic.command.upgrade``
with ``config.attributes['connection']``. Connect as the tenant role, never as an
admin: tenant-owned code that a migration executes runs with the connecting user's
privileges. Both behave like the tool: one transaction, ``SET LOCAL search_path``
pinned to the tenant schema, version table inside it.
"""

from __future__ import annotations

import logging
import os
from logging.config import fileConfig

from alembic import context
from sqlalchemy import Connection

from tenant_infra.migrate.connection import make_engine, parse_dsn
from tenant_infra.tenant import quote_ident


def _schema() -> str:
    x = context.get_x_argument(as_dictionary=True)
    schema = x.get("schema") or os.environ.get("TENANT_SCHEMA")
    if not schema:
        raise SystemExit("env.py: pass -x schema=tenant_<key> (or set TENANT_SCHEMA)")
    return schema


def _online(conn: Connection, schema: str) -> None:
    context.configure(connection=conn, version_table_schema=schema, transactional_ddl=True)
    with context.begin_transaction():
        conn.exec_driver_sql(f"SET LOCAL search_path TO {quote_ident(schema)}")
        context.run_migrations()


def _log() -> None:
    """Say what runs, as Alembic's own env.py does (``Running upgrade 0002 -> 0003``):
    the ini's logging sections when it has them, else Alembic's INFO on stderr."""
    config = context.config
    if config.config_file_name and config.file_config.has_section("loggers"):
        fileConfig(config.config_file_name, disable_existing_loggers=False)
    elif not logging.getLogger().handlers:
        logging.basicConfig(format="%(levelname)-5.5s [%(name)s] %(message)s")
        logging.getLogger("alembic").setLevel(logging.INFO)


def run() -> None:
    """Entry point called by each product's env.py."""
    if "connection" not in context.config.attributes:  # a caller's own logging stays
        _log()
    schema = _schema()
    if context.is_offline_mode():
        context.configure(
            dialect_name="postgresql",
            version_table_schema=schema,
            transactional_ddl=True,
            literal_binds=True,
        )
        with context.begin_transaction():
            context.execute(f"SET LOCAL search_path TO {quote_ident(schema)}")
            context.run_migrations()
        return
    given = context.config.attributes.get("connection")
    if given is not None:
        _online(given, schema)
        return
    x = context.get_x_argument(as_dictionary=True)
    engine = make_engine(parse_dsn(x.get("dsn") or os.environ.get("TENANT_INFRA_DSN")))
    with engine.connect() as conn:
        _online(conn, schema)
        conn.commit()

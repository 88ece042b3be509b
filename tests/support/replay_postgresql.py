"""The statements cyrilgdn/terraform-provider-postgresql issues, per resource and operation.

The replay backend (``replay.py``) calls one function here per step, so what reaches
the real PostgreSQL is what the upstream provider would send. Each function cites the
upstream file and function it follows (read with the search tool; commits noted).
Identifiers are quoted as ``pq.QuoteIdentifier`` does and literals as
``pqQuoteLiteral`` does, through psycopg's ``sql`` module.

``values`` are a resource's inputs in Pulumi's camelCase, secrets already resolved.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import psycopg
from psycopg import sql

#: Inputs whose change replaces the resource (``ForceNew`` in the upstream schemas).
FORCE_NEW: dict[str, frozenset[str]] = {
    # resource_postgresql_role.go: no ForceNew attribute (name is renamed in place).
    "role:Role": frozenset(),
    # resource_postgresql_database.go: template, encoding, lc_collate, lc_ctype.
    "database:Database": frozenset({"template", "encoding", "lcCollate", "lcCtype"}),
    # resource_postgresql_schema.go: database.
    "schema:Schema": frozenset({"database"}),
    # resource_postgresql_grant.go: everything but privileges.
    "grant:Grant": frozenset(
        {"role", "database", "schema", "objectType", "objects", "columns", "withGrantOption"}
    ),
    # resource_postgresql_default_privileges.go: everything but privileges.
    "defaultPrivileges:DefaultPrivileges": frozenset(
        {"role", "database", "owner", "schema", "objectType", "withGrantOption"}
    ),
}


def ident(name: str) -> sql.Identifier:
    return sql.Identifier(name)


@contextmanager
def connect(
    provider: Mapping[str, Any], database: str | None = None, transaction: bool = True
) -> Iterator[psycopg.Connection[Any]]:
    """A connection as the provider makes it: its admin login, on ``database`` or its
    own default database (``startTransaction(client, database)`` in helpers.go)."""
    params = {
        "host": provider.get("host", "127.0.0.1"),
        "port": int(provider.get("port", 5432)),
        "user": provider.get("username", "postgres"),
        "dbname": database or provider.get("database") or "postgres",
        "sslmode": provider.get("sslmode") or "prefer",
        "connect_timeout": int(provider.get("connectTimeout", 15)),
        "application_name": "tenant-infra-replay",
    }
    if provider.get("password"):
        params["password"] = provider["password"]
    with psycopg.connect(**params, autocommit=not transaction) as conn:
        yield conn


def _lock_role(conn: psycopg.Connection[Any], role: str) -> None:
    """helpers.go ``pgLockRole``: serialize concurrent changes of one role."""
    conn.execute("SET statement_timeout = 0")
    conn.execute(
        "SELECT pg_advisory_xact_lock(oid::bigint) FROM pg_roles WHERE rolname = %s", (role,)
    )


# ----------------------------------------------------------------------------- Role
# postgresql/resource_postgresql_role.go @ 411869508c82ccf2f6d00c04d5ba20d730389fa0

_ROLE_FLAGS = (
    ("superuser", "SUPERUSER", False),
    ("createDatabase", "CREATEDB", False),
    ("createRole", "CREATEROLE", False),
    ("inherit", "INHERIT", True),
    ("login", "LOGIN", False),
    ("bypassRowLevelSecurity", "BYPASSRLS", False),
    ("replication", "REPLICATION", False),
)


def _flag(values: Mapping[str, Any], key: str, word: str, default: bool) -> sql.SQL:
    return sql.SQL(word if values.get(key, default) else "NO" + word)


def _role_settings(
    conn: psycopg.Connection[Any], values: Mapping[str, Any], old: Mapping[str, Any] | None
) -> None:
    """``alterSearchPath`` always; ``setStatementTimeout`` (and the idle timeout) when set
    or changed, ``RESET`` when changed back to 0; then ``setAssumeRole``."""
    role = ident(values["name"])
    paths = values.get("searchPaths") or []
    conn.execute(
        sql.SQL("ALTER ROLE {} SET search_path TO {}").format(
            role, sql.SQL(", ").join(ident(p) for p in paths) if paths else sql.SQL("DEFAULT")
        )
    )
    for key, setting in (
        ("statementTimeout", "statement_timeout"),
        ("idleInTransactionSessionTimeout", "idle_in_transaction_session_timeout"),
    ):
        new = int(values.get(key, 0) or 0)
        before = int((old or {}).get(key, 0) or 0)
        if old is not None and new == before:
            continue
        if new:
            conn.execute(
                sql.SQL("ALTER ROLE {} SET {} TO {}").format(
                    role, sql.SQL(setting), sql.Literal(new)
                )
            )
        elif old is not None:
            conn.execute(sql.SQL("ALTER ROLE {} RESET {}").format(role, sql.SQL(setting)))
    # ``setAssumeRole``: when set or changed, ``SET ROLE TO``; ``RESET ROLE`` when unset.
    assume = values.get("assumeRole") or ""
    if old is None or assume != ((old or {}).get("assumeRole") or ""):
        if assume:
            conn.execute(sql.SQL("ALTER ROLE {} SET ROLE TO {}").format(role, ident(assume)))
        elif old is not None:
            conn.execute(sql.SQL("ALTER ROLE {} RESET ROLE").format(role))


def role_create(provider: Mapping[str, Any], values: Mapping[str, Any]) -> None:
    """``resourcePostgreSQLRoleCreate``: one ``CREATE ROLE ... WITH`` carrying every
    option, memberships, then the role's settings, in one transaction."""
    options: list[sql.Composable] = []
    if values.get("password"):
        options.append(sql.SQL("ENCRYPTED PASSWORD {}").format(sql.Literal(values["password"])))
    options.append(sql.SQL("VALID UNTIL 'infinity'"))
    options.append(
        sql.SQL("CONNECTION LIMIT {}").format(sql.Literal(int(values.get("connectionLimit", -1))))
    )
    options += [_flag(values, key, word, default) for key, word, default in _ROLE_FLAGS]
    with connect(provider) as conn:
        conn.execute(
            sql.SQL("CREATE ROLE {} WITH {}").format(
                ident(values["name"]), sql.SQL(" ").join(options)
            )
        )
        for member_of in values.get("roles") or []:
            conn.execute(sql.SQL("GRANT {} TO {}").format(ident(member_of), ident(values["name"])))
        _role_settings(conn, values, None)


def role_update(
    provider: Mapping[str, Any],
    old: Mapping[str, Any],
    values: Mapping[str, Any],
    password_changed: bool,
) -> None:
    """``resourcePostgreSQLRoleUpdate``: only the statements whose attribute changed,
    then memberships and ``search_path`` re-applied."""
    name = values["name"]
    with connect(provider) as conn:
        _lock_role(conn, old["name"])
        if old["name"] != name:
            conn.execute(
                sql.SQL("ALTER ROLE {} RENAME TO {}").format(ident(old["name"]), ident(name))
            )
        if password_changed or old["name"] != name:
            # ``setRolePassword``: an unset password is sent as '' (the server clears it).
            conn.execute(
                sql.SQL("ALTER ROLE {} PASSWORD {}").format(
                    ident(name), sql.Literal(values.get("password") or "")
                )
            )
        for key, word, default in _ROLE_FLAGS:
            if old.get(key, default) != values.get(key, default):
                conn.execute(
                    sql.SQL("ALTER ROLE {} WITH {}").format(
                        ident(name), _flag(values, key, word, default)
                    )
                )
        if old.get("connectionLimit", -1) != values.get("connectionLimit", -1):
            conn.execute(
                sql.SQL("ALTER ROLE {} CONNECTION LIMIT {}").format(
                    ident(name), sql.Literal(int(values.get("connectionLimit", -1)))
                )
            )
        for member_of in old.get("roles") or []:
            conn.execute(sql.SQL("REVOKE {} FROM {}").format(ident(member_of), ident(name)))
        for member_of in values.get("roles") or []:
            conn.execute(sql.SQL("GRANT {} TO {}").format(ident(member_of), ident(name)))
        _role_settings(conn, values, old)


def role_delete(provider: Mapping[str, Any], values: Mapping[str, Any]) -> None:
    """``resourcePostgreSQLRoleDelete``: in the provider's own database only,
    ``REASSIGN OWNED`` to the provider's login and ``DROP OWNED``, then ``DROP ROLE``."""
    role = ident(values["name"])
    with connect(provider) as conn:
        _lock_role(conn, values["name"])
        if not values.get("skipReassignOwned"):
            admin = ident(provider.get("username", "postgres"))
            conn.execute(sql.SQL("REASSIGN OWNED BY {} TO {}").format(role, admin))
            conn.execute(sql.SQL("DROP OWNED BY {}").format(role))
        if not values.get("skipDropRole"):
            conn.execute(sql.SQL("DROP ROLE {}").format(role))


# ------------------------------------------------------------------------- Database
# postgresql/resource_postgresql_database.go @ 04541ab03520ed9c2349cbf71496087312954bac,
# with the drop sequence of the current provider (feature flags in config.go @ 86c8065).


def database_create(provider: Mapping[str, Any], values: Mapping[str, Any]) -> None:
    """``createDatabase``: one ``CREATE DATABASE`` with every option, outside a transaction."""
    owner = values.get("owner") or provider.get("username", "postgres")
    parts: list[sql.Composable] = [
        sql.SQL("CREATE DATABASE {} OWNER {}").format(ident(values["name"]), ident(owner))
    ]
    if values.get("template"):
        parts.append(sql.SQL("TEMPLATE {}").format(ident(values["template"])))
    if values.get("encoding"):
        parts.append(sql.SQL("ENCODING {}").format(sql.Literal(values["encoding"])))
    for key, word in (("lcCollate", "LC_COLLATE"), ("lcCtype", "LC_CTYPE")):
        if values.get(key):
            parts.append(sql.SQL("{} {}").format(sql.SQL(word), sql.Literal(values[key])))
    parts.append(
        sql.SQL("ALLOW_CONNECTIONS {} CONNECTION LIMIT {} IS_TEMPLATE {}").format(
            sql.SQL("true" if values.get("allowConnections", True) else "false"),
            sql.Literal(int(values.get("connectionLimit", -1))),
            sql.SQL("true" if values.get("isTemplate", False) else "false"),
        )
    )
    with connect(provider, transaction=False) as conn:
        conn.execute(sql.SQL(" ").join(parts))


def database_update(
    provider: Mapping[str, Any], old: Mapping[str, Any], values: Mapping[str, Any]
) -> None:
    """``resourcePostgreSQLDatabaseUpdate``: one ``ALTER DATABASE`` per changed attribute."""
    name = ident(values["name"])
    with connect(provider, transaction=False) as conn:
        if old["name"] != values["name"]:
            conn.execute(sql.SQL("ALTER DATABASE {} RENAME TO {}").format(ident(old["name"]), name))
        if old.get("owner") != values.get("owner") and values.get("owner"):
            conn.execute(
                sql.SQL("ALTER DATABASE {} OWNER TO {}").format(name, ident(values["owner"]))
            )
        if old.get("connectionLimit", -1) != values.get("connectionLimit", -1):
            conn.execute(
                sql.SQL("ALTER DATABASE {} CONNECTION LIMIT = {}").format(
                    name, sql.Literal(int(values.get("connectionLimit", -1)))
                )
            )
        for key, word, default in (
            ("allowConnections", "ALLOW_CONNECTIONS", True),
            ("isTemplate", "IS_TEMPLATE", False),
        ):
            if old.get(key, default) != values.get(key, default):
                conn.execute(
                    sql.SQL("ALTER DATABASE {} {} {}").format(
                        name, sql.SQL(word), sql.SQL("true" if values.get(key) else "false")
                    )
                )


def database_delete(provider: Mapping[str, Any], values: Mapping[str, Any]) -> None:
    """``resourcePostgreSQLDatabaseDelete``: close it to new connections, terminate the
    open ones, then ``DROP DATABASE ... WITH ( FORCE )`` (PostgreSQL >= 13)."""
    name = values["name"]
    with connect(provider, transaction=False) as conn:
        if values.get("isTemplate"):
            conn.execute(sql.SQL("ALTER DATABASE {} IS_TEMPLATE false").format(ident(name)))
        conn.execute(sql.SQL("ALTER DATABASE {} ALLOW_CONNECTIONS false").format(ident(name)))
        conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = %s AND pid <> pg_backend_pid()",
            (name,),
        )
        conn.execute(sql.SQL("DROP DATABASE {} WITH ( FORCE )").format(ident(name)))


# --------------------------------------------------------------------------- Schema
# postgresql/resource_postgresql_schema.go @ 34bc7327bcc5481beb990954da71ff23319bf961


def _schema_exists(conn: psycopg.Connection[Any], name: str) -> bool:
    row = conn.execute(
        "SELECT TRUE FROM pg_catalog.pg_namespace WHERE nspname = %s", (name,)
    ).fetchone()
    return row is not None


def schema_create(provider: Mapping[str, Any], values: Mapping[str, Any]) -> None:
    """``resourcePostgreSQLSchemaCreate``: in the target database, ``CREATE SCHEMA
    [IF NOT EXISTS] ... AUTHORIZATION owner``; an existing schema only changes owner."""
    name, owner = values["name"], values.get("owner")
    with connect(provider, values["database"]) as conn:
        if _schema_exists(conn, name) and values.get("ifNotExists", True):
            if owner:
                conn.execute(
                    sql.SQL("ALTER SCHEMA {} OWNER TO {}").format(ident(name), ident(owner))
                )
            return
        conn.execute(
            sql.SQL("CREATE SCHEMA {}{}{}").format(
                sql.SQL("IF NOT EXISTS " if values.get("ifNotExists", True) else ""),
                ident(name),
                sql.SQL(" AUTHORIZATION {}").format(ident(owner)) if owner else sql.SQL(""),
            )
        )


def schema_update(
    provider: Mapping[str, Any], old: Mapping[str, Any], values: Mapping[str, Any]
) -> None:
    """``resourcePostgreSQLSchemaUpdate``: rename, then owner; ``drop_cascade`` and
    ``if_not_exists`` live in state only."""
    with connect(provider, values["database"]) as conn:
        if old["name"] != values["name"]:
            conn.execute(
                sql.SQL("ALTER SCHEMA {} RENAME TO {}").format(
                    ident(old["name"]), ident(values["name"])
                )
            )
        if old.get("owner") != values.get("owner") and values.get("owner"):
            conn.execute(
                sql.SQL("ALTER SCHEMA {} OWNER TO {}").format(
                    ident(values["name"]), ident(values["owner"])
                )
            )


def schema_delete(provider: Mapping[str, Any], values: Mapping[str, Any]) -> None:
    """``resourcePostgreSQLSchemaDelete``: ``DROP SCHEMA ... RESTRICT`` unless
    ``drop_cascade``, which fails as soon as the schema holds tables."""
    with connect(provider, values["database"]) as conn:
        if not _schema_exists(conn, values["name"]):
            return
        conn.execute(
            sql.SQL("DROP SCHEMA {} {}").format(
                ident(values["name"]),
                sql.SQL("CASCADE" if values.get("dropCascade") else "RESTRICT"),
            )
        )


# ---------------------------------------------------------------------------- Grant
# postgresql/resource_postgresql_grant.go @ 04541ab03520ed9c2349cbf71496087312954bac
# (create/delete), privileges updated in place as in the current provider.

_PLURAL = {"table": "TABLES", "sequence": "SEQUENCES", "function": "FUNCTIONS", "type": "TYPES"}


def _grant_target(values: Mapping[str, Any]) -> sql.Composable:
    kind = values["objectType"]
    if kind == "database":
        return sql.SQL("DATABASE {}").format(ident(values["database"]))
    if kind == "schema":
        return sql.SQL("SCHEMA {}").format(ident(values["schema"]))
    if kind in _PLURAL and not values.get("objects"):
        return sql.SQL("ALL {} IN SCHEMA {}").format(
            sql.SQL(_PLURAL[kind]), ident(values["schema"])
        )
    raise NotImplementedError(f"replay: Grant of {kind} {values.get('objects')}")


def grant_create(provider: Mapping[str, Any], values: Mapping[str, Any]) -> None:
    """``resourcePostgreSQLGrantCreate``: revoke everything, then grant exactly
    ``privileges`` (none: a pure revoke), in the target database. ``"public"`` quoted
    is PUBLIC to PostgreSQL, as upstream relies on."""
    target, role = _grant_target(values), ident(values["role"])
    with connect(provider, values["database"]) as conn:
        conn.execute(sql.SQL("REVOKE ALL PRIVILEGES ON {} FROM {}").format(target, role))
        privileges = values.get("privileges") or []
        if privileges:
            conn.execute(
                sql.SQL("GRANT {} ON {} TO {}{}").format(
                    sql.SQL(",").join(sql.SQL(p) for p in privileges),
                    target,
                    role,
                    sql.SQL(" WITH GRANT OPTION" if values.get("withGrantOption") else ""),
                )
            )


def grant_update(
    provider: Mapping[str, Any], _old: Mapping[str, Any], values: Mapping[str, Any]
) -> None:
    """Only ``privileges`` can change in place: the create path again (revoke, grant)."""
    grant_create(provider, values)


def grant_delete(provider: Mapping[str, Any], values: Mapping[str, Any]) -> None:
    """``resourcePostgreSQLGrantDelete``: the ``REVOKE`` alone."""
    with connect(provider, values["database"]) as conn:
        conn.execute(
            sql.SQL("REVOKE ALL PRIVILEGES ON {} FROM {}").format(
                _grant_target(values), ident(values["role"])
            )
        )


# ---------------------------------------------------------------- DefaultPrivileges
# postgresql/resource_postgresql_default_privileges.go @ 8a787416f40b1c6416d12059a99ed5350c0e103a


def _default_privileges(values: Mapping[str, Any], verb: sql.Composable) -> sql.Composable:
    where = (
        sql.SQL("IN SCHEMA {}").format(ident(values["schema"]))
        if values.get("schema")
        else sql.SQL("")
    )
    return sql.SQL("ALTER DEFAULT PRIVILEGES FOR ROLE {} {} {}").format(
        ident(values["owner"]), where, verb
    )


def _revoke_default_privileges(conn: psycopg.Connection[Any], values: Mapping[str, Any]) -> None:
    _lock_role(conn, values["owner"])
    conn.execute(
        _default_privileges(
            values,
            sql.SQL("REVOKE ALL ON {} FROM {}").format(
                sql.SQL(_PLURAL[values["objectType"]]), ident(values["role"])
            ),
        )
    )


def default_privileges_create(provider: Mapping[str, Any], values: Mapping[str, Any]) -> None:
    """``resourcePostgreSQLDefaultPrivilegesCreate``: ``REVOKE ALL``, then ``GRANT``."""
    with connect(provider, values["database"]) as conn:
        _revoke_default_privileges(conn, values)
        privileges = values.get("privileges") or []
        if privileges:
            conn.execute(
                _default_privileges(
                    values,
                    sql.SQL("GRANT {} ON {} TO {}{}").format(
                        sql.SQL(",").join(sql.SQL(p) for p in privileges),
                        sql.SQL(_PLURAL[values["objectType"]]),
                        ident(values["role"]),
                        sql.SQL(" WITH GRANT OPTION" if values.get("withGrantOption") else ""),
                    ),
                )
            )


def default_privileges_update(
    provider: Mapping[str, Any], _old: Mapping[str, Any], values: Mapping[str, Any]
) -> None:
    """Update reuses the create function upstream."""
    default_privileges_create(provider, values)


def default_privileges_delete(provider: Mapping[str, Any], values: Mapping[str, Any]) -> None:
    """``resourcePostgreSQLDefaultPrivilegesDelete``: the ``REVOKE ALL`` alone."""
    with connect(provider, values["database"]) as conn:
        _revoke_default_privileges(conn, values)

"""PostgreSQL isolation checks, made AS THE TENANT ROLE on real connections.

Each check is a function returning a :class:`CheckResult`: a stable name (what a
failing report and a test point at), pass/fail, and a reason in words.

What the service *can* do is shown by doing it (connect, create a table in its own
schema, write and read it, all in a rolled-back transaction). What it *cannot* do is
shown by trying it and being refused with ``permission denied`` (SQLSTATE 42501);
an attempt that fails for another reason proves nothing and fails the check.

What *others* can do to the tenant is read from the system catalogs (``pg_database``,
``pg_namespace``, ``pg_class``, ``pg_default_acl``, ``pg_auth_members``). Every role
may read them and they hold the real ACLs, so the tenant's own connection is enough:
an operator needs only the connections document, no admin password.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Final

import psycopg
from psycopg import sql

from tenant_infra.catalog import IsolationMode, Limits, load_catalog
from tenant_infra.tenant import (
    TenantNames,
    tenant_from_database,
    tenant_from_role,
    tenant_from_schema,
)
from tenant_infra.verify.connections import ConnectionsDocument

#: Cap on the *real* cross-tenant attempts per kind (connections, schemas). The
#: catalog checks beside them cover every other tenant; the attempts prove the
#: catalog reading matches what the server enforces.
MAX_PROBES: Final = 20
MAINTENANCE_DATABASE: Final = "postgres"
INSUFFICIENT_PRIVILEGE: Final = "42501"


@dataclass(frozen=True)
class CheckResult:
    """One named check: ``ok`` is pass/fail, ``reason`` says why in words.

    A skipped check (its service is not reachable, or not configured) is ``ok``; the
    CLI's ``--strict`` counts it as a failure. A warning is ``ok`` too: a known
    exposure of the design (SCHEMA mode's shared catalogs), said, never a pass.
    """

    name: str
    ok: bool
    reason: str
    skipped: bool = False
    warning: bool = False

    def to_json(self) -> dict[str, Any]:
        status = (
            "skip"
            if self.skipped
            else "warn"
            if self.warning
            else ("pass" if self.ok else "fail")
        )
        return {"name": self.name, "status": status, "ok": self.ok, "reason": self.reason}


def passed(name: str, reason: str) -> CheckResult:
    return CheckResult(name, True, reason)


def failed(name: str, reason: str) -> CheckResult:
    return CheckResult(name, False, reason)


def skipped(name: str, reason: str) -> CheckResult:
    return CheckResult(name, True, reason, skipped=True)


def warned(name: str, reason: str) -> CheckResult:
    return CheckResult(name, True, reason, warning=True)


def describe(exc: BaseException, hide: Iterable[str] = ()) -> str:
    """First line of an error, with any secret scrubbed (defence in depth: drivers
    do not echo passwords, but a message must never be the one that does)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    text = lines[0] if lines else type(exc).__name__
    for secret in hide:
        if secret:
            text = text.replace(secret, "[secret]")
    return text[:300]


def _refused(exc: psycopg.Error) -> bool:
    """A refusal for lack of privilege (connection-time errors carry no SQLSTATE)."""
    return exc.sqlstate == INSUFFICIENT_PRIVILEGE or "permission denied" in str(exc)


# ------------------------------------------------------------------ PostgreSQL


PG_CHECKS: Final = (
    "pg.connect_own",
    "pg.create_and_read_own",
    "pg.role_attributes",
    "pg.cannot_create_in_public",
    "pg.cannot_create_schema",
    "pg.cannot_use_other_schemas",
    "pg.cannot_connect_other_databases",
    "pg.maintenance_database",
    "pg.public_cannot_connect",
    "pg.no_foreign_privileges",
    "pg.limits",
    "pg.role_settings",
    "pg.neighbour_visibility",
    "pg.connection_budget",
    "pg.no_refused_sessions",
)


class PgVerifier:
    """The PostgreSQL checks of one service, sharing one connection as the tenant."""

    def __init__(
        self,
        document: ConnectionsDocument,
        expected_limits: Limits | None = None,
        max_probes: int = MAX_PROBES,
        budget: tuple[int, int] | None = None,
    ) -> None:
        self.doc = document
        self.pg = document.postgresql
        self.expected = expected_limits
        self.max_probes = max_probes
        #: The server's declared ``maxConnections`` and ``reservedConnections``; ``None``:
        #: the platform declared no budget for this server, so going over is a warning.
        self.budget = budget
        self.limits: dict[str, Any] = {}
        self._hide = (self.pg.password.get_secret_value(),)
        self._token = secrets.token_hex(4)

    # ---------------------------------------------------------------- driver

    def run(self) -> list[CheckResult]:
        try:
            conn = psycopg.connect(**self.pg.params(), autocommit=True)
        except psycopg.Error as exc:
            reason = f"cannot connect to {self.pg.database} as {self.pg.user}: {self._d(exc)}"
            return [failed(PG_CHECKS[0], reason)] + [
                failed(name, "not run: the service cannot connect to its own database")
                for name in PG_CHECKS[1:]
            ]
        checks: list[Callable[[psycopg.Connection[Any]], CheckResult]] = [
            self.connect_own,
            self.create_and_read_own,
            self.role_attributes,
            self.cannot_create_in_public,
            self.cannot_create_schema,
            self.cannot_use_other_schemas,
            self.cannot_connect_other_databases,
            self.maintenance_database,
            self.public_cannot_connect,
            self.no_foreign_privileges,
            self.limits_in_force,
        ]
        checks += [self.role_settings, self.neighbour_visibility, self.connection_budget]
        checks += [self.no_refused_sessions]
        results = []
        with conn:
            # The tenant controls its role's search_path and its own schema: every
            # name below must resolve in pg_catalog, never to a look-alike it made.
            conn.execute("SET search_path = pg_catalog, pg_temp")
            for check, name in zip(checks, PG_CHECKS, strict=True):
                try:
                    results.append(check(conn))
                except psycopg.Error as exc:
                    results.append(failed(name, f"could not run: {self._d(exc)}"))
                except Exception as exc:  # what the tenant's settings made of a reply
                    results.append(failed(name, f"could not run: {type(exc).__name__}"))
        return results

    def _d(self, exc: BaseException) -> str:
        return describe(exc, self._hide)

    def _name(self, kind: str) -> str:
        return f"tenantctl_verify_{kind}_{self._token}"

    @staticmethod
    @contextmanager
    def _rolled_back(conn: psycopg.Connection[Any]) -> Iterator[None]:
        """Whatever happens inside is undone: verify leaves nothing behind."""
        with conn.transaction(force_rollback=True):
            yield

    def _attempt(self, conn: psycopg.Connection[Any], statement: sql.Composed) -> str | None:
        """Run ``statement`` and roll it back; ``None`` if refused for lack of
        privilege, else what happened (``"succeeded"`` or another error)."""
        try:
            with self._rolled_back(conn):
                conn.execute(statement)
        except psycopg.Error as exc:
            return None if _refused(exc) else f"failed for another reason: {self._d(exc)}"
        return "succeeded"

    # ---------------------------------------------------------------- checks

    def connect_own(self, conn: psycopg.Connection[Any]) -> CheckResult:
        row = conn.execute("SELECT current_user, current_database()").fetchone()
        assert row is not None
        return passed(PG_CHECKS[0], f"connected to {row[1]} as {row[0]}")

    def create_and_read_own(self, conn: psycopg.Connection[Any]) -> CheckResult:
        table = sql.Identifier(self.pg.schema_name, self._name("own"))
        marker = self._token
        try:
            with self._rolled_back(conn):
                conn.execute(
                    sql.SQL("CREATE TABLE {} (id int PRIMARY KEY, note text)").format(table)
                )
                conn.execute(sql.SQL("INSERT INTO {} VALUES (1, %s)").format(table), (marker,))
                row = conn.execute(
                    sql.SQL("SELECT note FROM {} WHERE id = 1").format(table)
                ).fetchone()
        except psycopg.Error as exc:
            return failed(PG_CHECKS[1], f"in schema {self.pg.schema_name}: {self._d(exc)}")
        if row is None or row[0] != marker:
            return failed(PG_CHECKS[1], "the row written was not read back")
        return passed(
            PG_CHECKS[1], f"created, wrote and read a table in {self.pg.schema_name} (rolled back)"
        )

    def role_attributes(self, conn: psycopg.Connection[Any]) -> CheckResult:
        """Plain roles: the login (``session_user``) and the role it acts as
        (``current_user``, the owner in the two-login model) hold no attribute, and no
        membership but the login's in that owner."""
        found: list[str] = []
        member_of: list[str] = []
        labels = ("SUPERUSER", "CREATEROLE", "CREATEDB", "REPLICATION", "BYPASSRLS")
        users = conn.execute("SELECT session_user, current_user").fetchone()
        assert users is not None
        login, owner = str(users[0]), str(users[1])
        for who in ("session_user", "current_user"):
            row = conn.execute(
                "SELECT rolsuper, rolcreaterole, rolcreatedb, rolreplication, rolbypassrls"
                f" FROM pg_roles WHERE rolname = {who}"
            ).fetchone()
            assert row is not None
            found += [label for label, on in zip(labels, row, strict=True) if on]
            member_of += [
                str(r[0]) + (" (WITH ADMIN OPTION)" if r[1] else "")
                for r in conn.execute(
                    "SELECT r.rolname, m.admin_option FROM pg_auth_members m"
                    " JOIN pg_roles r ON r.oid = m.roleid"
                    f" WHERE m.member = (SELECT oid FROM pg_roles WHERE rolname = {who})"
                    " ORDER BY 1"
                )
                # The login's one membership: the owner it acts as, without ADMIN OPTION.
                if not (who == "session_user" and login != owner and r[0] == owner and not r[1])
            ]
        found, member_of = list(dict.fromkeys(found)), list(dict.fromkeys(member_of))
        if found or member_of:
            parts = []
            if found:
                parts.append("has " + ", ".join(found))
            if member_of:
                parts.append("is a member of " + ", ".join(member_of))
            return failed(PG_CHECKS[2], f"role {self.pg.user} " + " and ".join(parts))
        return passed(
            PG_CHECKS[2],
            "plain LOGIN role: no superuser, createrole, createdb, "
            "replication, bypassrls or memberships but its owner's",
        )

    def cannot_create_in_public(self, conn: psycopg.Connection[Any]) -> CheckResult:
        exists = conn.execute("SELECT 1 FROM pg_namespace WHERE nspname = 'public'").fetchone()
        if exists is None:
            return passed(PG_CHECKS[3], f"{self.pg.database} has no public schema")
        table = sql.Identifier("public", self._name("public"))
        outcome = self._attempt(conn, sql.SQL("CREATE TABLE {} (id int)").format(table))
        if outcome is None:
            return passed(PG_CHECKS[3], f"CREATE TABLE in {self.pg.database}.public refused")
        return failed(PG_CHECKS[3], f"CREATE TABLE in {self.pg.database}.public {outcome}")

    def cannot_create_schema(self, conn: psycopg.Connection[Any]) -> CheckResult:
        schema = sql.Identifier(self._name("schema"))
        outcome = self._attempt(conn, sql.SQL("CREATE SCHEMA {}").format(schema))
        if outcome is None:
            return passed(PG_CHECKS[4], f"CREATE SCHEMA in {self.pg.database} refused")
        return failed(PG_CHECKS[4], f"CREATE SCHEMA in {self.pg.database} {outcome}")

    def cannot_use_other_schemas(self, conn: psycopg.Connection[Any]) -> CheckResult:
        """SCHEMA mode shares one database: this is where a leak would happen."""
        name = PG_CHECKS[5]
        others = [
            (r[0], r[1], r[2], r[3])
            for r in conn.execute(
                # As the owner the session acts as, or as its login after SET ROLE NONE.
                "SELECT n.nspname, has_schema_privilege(current_user, n.oid, 'USAGE')"
                " OR has_schema_privilege(session_user, n.oid, 'USAGE'),"
                " has_schema_privilege(current_user, n.oid, 'CREATE')"
                " OR has_schema_privilege(session_user, n.oid, 'CREATE'),"
                " (SELECT count(*) FROM information_schema.tables t"
                "   WHERE t.table_schema = n.nspname)"
                " FROM pg_namespace n WHERE n.nspname LIKE 'tenant\\_%%' AND n.nspname <> %s"
                " ORDER BY 1",
                (self.pg.schema_name,),
            )
            if tenant_from_schema(r[0]) is not None
        ]
        if not others:
            return passed(name, f"no other tenant schema in {self.pg.database} to probe")
        leaks: list[str] = []
        for schema, usage, create, visible in others:
            if usage or create:
                privileges = [p for p, on in (("USAGE", usage), ("CREATE", create)) if on]
                leaks.append(f"has {'+'.join(privileges)} on {schema}")
            if visible:
                leaks.append(f"sees {visible} table(s) of {schema} in information_schema")
        for schema, *_ in others[: self.max_probes]:
            leaks += self._probe_schema(conn, schema)
        if leaks:
            return failed(name, "; ".join(leaks))
        probed = min(len(others), self.max_probes)
        return passed(
            name,
            f"{len(others)} other tenant schema(s) in {self.pg.database}: no "
            f"privilege; CREATE TABLE and reads refused in {probed}",
        )

    def _probe_schema(self, conn: psycopg.Connection[Any], schema: str) -> list[str]:
        leaks = []
        target = sql.Identifier(schema, self._name("other"))
        outcome = self._attempt(conn, sql.SQL("CREATE TABLE {} (id int)").format(target))
        if outcome is not None:
            leaks.append(f"CREATE TABLE in {schema} {outcome}")
        tables = [
            r[0]
            for r in conn.execute(
                "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
                " WHERE n.nspname = %s AND c.relkind IN ('r', 'p', 'v', 'm') ORDER BY 1 LIMIT 3",
                (schema,),
            )
        ]
        for table in tables:
            query = sql.SQL("SELECT 1 FROM {} LIMIT 1").format(sql.Identifier(schema, table))
            outcome = self._attempt(conn, query)
            if outcome is not None:
                leaks.append(f"SELECT from {schema}.{table} {outcome}")
        return leaks

    def _other_databases(self, conn: psycopg.Connection[Any]) -> list[tuple[str, str]]:
        """Every tenant-data database but the service's own, with whose it is."""
        products = list(load_catalog().products)
        targets = []
        for (database,) in conn.execute(
            "SELECT datname FROM pg_database WHERE datallowconn AND NOT datistemplate ORDER BY 1"
        ):
            if database == self.pg.database:
                continue
            if database in products:
                targets.append((database, f"shared database of {database}"))
                continue
            for product in products:
                tenant = tenant_from_database(product, database)
                if tenant is not None:
                    targets.append((database, f"{product} database of tenant {tenant}"))
                    break
        return targets

    def cannot_connect_other_databases(self, conn: psycopg.Connection[Any]) -> CheckResult:
        name = PG_CHECKS[6]
        targets = self._other_databases(conn)
        if not targets:
            return passed(name, "no other tenant database on this server to probe")
        granted = {
            r[0]
            for r in conn.execute(
                "SELECT datname FROM pg_database WHERE datname = ANY(%s)"
                " AND (has_database_privilege(current_user, oid, 'CONNECT')"
                " OR has_database_privilege(session_user, oid, 'CONNECT'))",
                ([t[0] for t in targets],),
            )
        }
        leaks = [f"has CONNECT on {db} ({whose})" for db, whose in targets if db in granted]
        for database, whose in targets[: self.max_probes]:
            outcome = self._try_connect(database)
            if outcome is not None:
                leaks.append(f"connecting to {database} ({whose}) {outcome}")
        if leaks:
            return failed(name, "; ".join(dict.fromkeys(leaks)))
        probed = min(len(targets), self.max_probes)
        return passed(
            name,
            f"no CONNECT on {len(targets)} other tenant database(s); "
            f"{probed} connection attempt(s) refused",
        )

    def _try_connect(self, database: str) -> str | None:
        """``None`` if the server refuses the tenant a connection to ``database``."""
        try:
            with psycopg.connect(**self.pg.params(database)) as other:
                other.execute("SELECT 1")
        except psycopg.Error as exc:
            if _refused(exc) or "does not exist" in str(exc):
                return None
            return f"failed for another reason: {self._d(exc)}"
        return "succeeded"

    def maintenance_database(self, conn: psycopg.Connection[Any]) -> CheckResult:
        """PostgreSQL grants PUBLIC CONNECT on ``postgres`` by default: the role may get
        in, but must be able to create nothing there."""
        name, db = PG_CHECKS[7], MAINTENANCE_DATABASE
        # What the role owns in any database but its own (a large object in postgres or
        # template1 needs no privilege, and template1 is copied into every database made
        # from it); pg_shdepend is a shared catalog every role reads. What others grant
        # to it is their doing, not the tenant's (and purges and rotations clear it).
        elsewhere = [
            f"{database} ({count})"
            for database, count in conn.execute(
                "SELECT d.datname, count(*) FROM pg_shdepend s"
                " JOIN pg_database d ON d.oid = s.dbid"
                " WHERE s.refclassid = 'pg_authid'::regclass AND s.deptype = 'o'"
                " AND s.refobjid IN (SELECT oid FROM pg_roles"
                "   WHERE rolname IN (current_user, session_user))"
                " AND d.datname <> current_database() GROUP BY 1 ORDER BY 1"
            )
        ]
        if elsewhere:
            return failed(
                name,
                f"role {self.pg.user} owns or holds objects outside its database: "
                + ", ".join(elsewhere),
            )
        try:
            other = psycopg.connect(**self.pg.params(db), autocommit=True)
        except psycopg.Error as exc:
            if _refused(exc) or "does not exist" in str(exc):
                return passed(name, f"connection to {db} refused")
            return failed(name, f"connecting to {db} failed for another reason: {self._d(exc)}")
        with other:
            table = sql.Identifier("public", self._name("public"))
            outcome = self._attempt(other, sql.SQL("CREATE TABLE {} (id int)").format(table))
        if outcome is None:
            return passed(
                name, f"PUBLIC may connect to {db} (PostgreSQL default); CREATE TABLE there refused"
            )
        return failed(name, f"CREATE TABLE in {db}.public {outcome}")

    def public_cannot_connect(self, conn: psycopg.Connection[Any]) -> CheckResult:
        row = conn.execute(
            "SELECT has_database_privilege('public', %s, 'CONNECT'),"
            " has_database_privilege('public', %s, 'TEMPORARY')",
            (self.pg.database, self.pg.database),
        ).fetchone()
        assert row is not None
        held = [p for p, on in zip(("CONNECT", "TEMPORARY"), row, strict=True) if on]
        if held:
            return failed(PG_CHECKS[8], f"PUBLIC has {', '.join(held)} on {self.pg.database}")
        return passed(PG_CHECKS[8], f"PUBLIC has no CONNECT or TEMPORARY on {self.pg.database}")

    def no_foreign_privileges(self, conn: psycopg.Connection[Any]) -> CheckResult:
        """No role but the tenant's own (superusers and the database owner aside) holds
        a privilege on, owns, or can act as, anything of the tenant's."""
        dedicated = self.doc.isolation is IsolationMode.DATABASE
        names = TenantNames(self.doc.tenant).service(self.doc.product)
        rows = conn.execute(
            _FOREIGN_PRIVILEGES,
            {
                "schema": self.pg.schema_name,
                "dedicated": dedicated,
                # The service's slot logins: they own and hold nothing (the owners of
                # its stores, a promotion's included, are not among them).
                "own": sorted(names.pg_slot_logins()),
            },
        ).fetchall()
        findings = [f"{who} has {what} on {where}" for where, who, what in rows]
        if findings:
            return failed(PG_CHECKS[9], "; ".join(dict.fromkeys(findings)))
        scope = f"schema {self.pg.schema_name}, its objects" + (
            f", database {self.pg.database} (nor owns anything in it)" if dedicated else ""
        )
        return passed(
            PG_CHECKS[9],
            f"no other role holds privileges on {scope}, nor membership in {self.pg.user}",
        )

    def limits_in_force(self, conn: psycopg.Connection[Any]) -> CheckResult:
        row = conn.execute(
            "SELECT r.rolconnlimit, current_setting('statement_timeout'),"
            " current_setting('idle_in_transaction_session_timeout'), d.datconnlimit"
            " FROM pg_roles r, pg_database d"
            " WHERE r.rolname = session_user AND d.datname = current_database()"
        ).fetchone()
        assert row is not None
        role_limit, db_limit = int(row[0]), int(row[3])
        timeout_ms, idle_ms = _milliseconds(row[1]), _milliseconds(row[2])
        self.limits = {
            "pg_connection_limit": role_limit,
            "pg_statement_timeout_ms": timeout_ms,
            "pg_idle_in_transaction_timeout_ms": idle_ms,
        }
        dedicated = self.doc.isolation is IsolationMode.DATABASE
        if dedicated:
            self.limits["pg_database_connection_limit"] = db_limit
        problems = []
        if role_limit < 0:
            problems.append(f"role {self.pg.user} has no connection limit")
        if timeout_ms <= 0:
            problems.append(f"role {self.pg.user} has no statement timeout")
        if idle_ms <= 0:
            problems.append(f"role {self.pg.user} has no idle-in-transaction timeout")
        if dedicated and db_limit < 0:
            problems.append(f"database {self.pg.database} has no connection limit")
        if self.expected is not None:
            want = {
                "pg_connection_limit": self.expected.pg_connection_limit,
                "pg_statement_timeout_ms": self.expected.pg_statement_timeout_ms,
                "pg_idle_in_transaction_timeout_ms": (
                    self.expected.pg_idle_in_transaction_timeout_ms
                ),
            }
            if dedicated:
                want["pg_database_connection_limit"] = self.expected.pg_connection_limit
            problems += [
                f"{key} is {self.limits[key]}, the stack config says {value}"
                for key, value in want.items()
                if self.limits[key] != value
            ]
        shown = ", ".join(f"{k}={v}" for k, v in self.limits.items())
        if problems:
            return failed(PG_CHECKS[10], "; ".join(problems) + f" ({shown})")
        return passed(PG_CHECKS[10], shown)


    def role_settings(self, conn: psycopg.Connection[Any]) -> CheckResult:
        """The role's own settings (``ALTER ROLE ... SET``, which the tenant may run on
        itself) are exactly the platform's: its schema as ``search_path`` and its
        tier's timeouts, in every database; anything else drifted unseen."""
        name = PG_CHECKS[11]
        rows = conn.execute(
            "SELECT coalesce(d.datname, '*'), unnest(s.setconfig)"
            " FROM pg_db_role_setting s LEFT JOIN pg_database d ON d.oid = s.setdatabase"
            " WHERE s.setrole = (SELECT oid FROM pg_roles WHERE rolname = session_user)"
            " ORDER BY 1, 2"
        ).fetchall()
        acting = conn.execute("SELECT session_user <> current_user, current_user").fetchone()
        assert acting is not None
        found: dict[str, str] = {}
        extra = []
        for database, entry in rows:
            key, _, value = str(entry).partition("=")
            if database != "*":
                extra.append(f"{key} set for database {database}")
            else:
                found[key] = value
        want = {"search_path": self.pg.schema_name}
        if self.expected is not None:
            want["statement_timeout"] = str(self.expected.pg_statement_timeout_ms)
            want["idle_in_transaction_session_timeout"] = str(
                self.expected.pg_idle_in_transaction_timeout_ms
            )
        allowed = {"search_path", "statement_timeout", "idle_in_transaction_session_timeout"}
        if acting[0]:  # a login acting as its owner from its first statement
            allowed.add("role")
            want["role"] = str(acting[1])
        problems = extra + [f"{key} is set" for key in sorted(set(found) - allowed)]
        for key, value in want.items():
            have = found.get(key)
            if key == "search_path" and have is not None:
                have = ", ".join(p.strip().strip('"') for p in have.split(","))
            elif key == "role" and have is not None:
                have = have.strip('"')
            elif have is not None:  # a timeout: 30s and 30000 are one value
                have = str(_milliseconds(have))
            if have is None and key != "search_path":
                continue  # a missing timeout is pg.limits' finding
            if have != value:
                problems.append(f"{key} is {have!r}, not {value!r}")
        if problems:
            return failed(name, f"role {self.pg.user}: " + "; ".join(problems))
        return passed(name, f"role {self.pg.user} sets only " + ", ".join(sorted(found)))


    def neighbour_visibility(self, conn: psycopg.Connection[Any]) -> CheckResult:
        """What other roles in the same database can see of the tenant without any
        privilege: PostgreSQL lets every role read the catalogs. In SCHEMA mode that
        is every neighbour; it is a warning (the design's known exposure), never a pass."""
        name = PG_CHECKS[12]
        row = conn.execute(
            "SELECT count(*) FILTER (WHERE c.oid IS NOT NULL),"
            " (SELECT count(*) FROM pg_attribute a JOIN pg_class k ON k.oid = a.attrelid"
            "   WHERE k.relnamespace = n.oid AND a.attnum > 0 AND NOT a.attisdropped),"
            " (SELECT count(*) FROM pg_proc p WHERE p.pronamespace = n.oid)"
            " FROM pg_namespace n LEFT JOIN pg_class c ON c.relnamespace = n.oid"
            " WHERE n.nspname = %s GROUP BY n.oid",
            (self.pg.schema_name,),
        ).fetchone()
        relations, columns, functions = row if row is not None else (0, 0, 0)
        if self.doc.isolation is IsolationMode.DATABASE:
            return passed(
                name,
                f"a dedicated database: other tenants see only cluster-wide catalogs "
                f"(the role {self.pg.user} and the database {self.pg.database} by name)",
            )
        return warned(
            name,
            f"SCHEMA mode: every role in {self.pg.database} can read this schema's catalog "
            f"entries ({relations} relation, {columns} column and {functions} function names, "
            "function sources, the role's name and settings) and shares LISTEN/NOTIFY "
            "channels and advisory locks with it; the data itself stays private. DATABASE "
            "mode separates all of these",
        )


    def connection_budget(self, conn: psycopg.Connection[Any]) -> CheckResult:
        """The tenants' login roles on this server may not, together, open more
        connections than the server has, less what superusers and the platform keep."""
        name = PG_CHECKS[13]
        row = conn.execute(
            "SELECT current_setting('max_connections')::int,"
            " current_setting('superuser_reserved_connections')::int"
        ).fetchone()
        assert row is not None
        maximum, superusers = int(row[0]), int(row[1])
        declared, reserved = self.budget if self.budget is not None else (maximum, 10)
        maximum = min(maximum, declared)
        products = list(load_catalog().products)
        tenants = [
            (role, int(limit))
            for role, limit in conn.execute(
                "SELECT rolname, rolconnlimit FROM pg_roles WHERE rolcanlogin ORDER BY 1"
            )
            if any(tenant_from_role(p, role) is not None for p in products)
        ]
        unlimited = [role for role, limit in tenants if limit < 0]
        # A store's alternating logins count once, at the larger limit: both hold the
        # tier's limit only between a rotation's begin and finish (README, rotation).
        stores: dict[str, int] = {}
        for role, limit in tenants:
            # The login's owner's name: a legacy owner logs in beside its first login.
            key = _STORE_LOGIN.sub(lambda m: "" if m[1] == "0" else f"__g{m[1]}", role)
            stores[key] = max(stores.get(key, 0), limit)
        used = sum(limit for limit in stores.values() if limit > 0)
        available = maximum - superusers - reserved
        if unlimited or used > available:
            what = f"{len(unlimited)} tenant role(s) without a limit; " if unlimited else ""
            reason = (
                f"{what}{len(tenants)} tenant login roles may open {used} connections, over "
                f"{available} (max_connections {maximum} less {superusers} for superusers "
                f"and {reserved} reserved)"
            )
            if self.budget is None:  # no budget declared: said, not enforced
                return warned(name, reason + "; declare maxConnections to enforce it")
            return failed(name, reason)
        return passed(
            name,
            f"{len(tenants)} tenant login roles may open {used} of {available} connections",
        )

    def no_refused_sessions(self, conn: psycopg.Connection[Any]) -> CheckResult:
        """No session in the dedicated database of another role that may not connect
        to it: one a neighbour opened before PUBLIC's ``CONNECT`` was revoked outlives
        the revoke (an update evicts them: ``sessions.evict_refused``). The
        service's own roles are not counted: a rotation's drain ends theirs."""
        name = PG_CHECKS[14]
        if self.doc.isolation is not IsolationMode.DATABASE:
            return passed(name, f"a shared database: {self.pg.database} is every tenant's")
        own = TenantNames(self.doc.tenant).service(self.doc.product).pg_logins()
        roles = [
            str(role)
            for (role,) in conn.execute(
                "SELECT DISTINCT r.rolname FROM pg_stat_activity a"
                " JOIN pg_roles r ON r.oid = a.usesysid WHERE a.datname = current_database()"
                " AND r.rolname <> ALL(%s)"
                " AND NOT has_database_privilege(a.usesysid, a.datid, 'CONNECT') ORDER BY 1",
                (sorted(own),),
            )
        ]
        if roles:
            return failed(
                name,
                f"{', '.join(roles)} may not connect to {self.pg.database} but has a session "
                f"there (opened before its CONNECT was taken away); `tenantctl up "
                f"{self.doc.tenant}` ends it",
            )
        return passed(name, f"no other role without CONNECT has a session in {self.pg.database}")


#: A slot login's suffix (``__<generation><slot>``), after its owner's name.
_STORE_LOGIN: Final = re.compile(r"__([0-9])[ab]\Z")


def _milliseconds(setting: str) -> int:
    """A time setting as ``current_setting`` shows it (``30s``, ``1min``, ``0``)."""
    units = {"ms": 1, "s": 1000, "min": 60_000, "h": 3_600_000, "d": 86_400_000}
    text = str(setting).strip()
    for unit in sorted(units, key=len, reverse=True):
        if text.endswith(unit) and text[: -len(unit)].strip().isdigit():
            return int(text[: -len(unit)]) * units[unit]
    return int(text) if text.isdigit() else -1


#: Foreign privileges on a tenant's objects, as ``(where, who, what)``. Everything in
#: the schema is owned by the service's owner (``current_user``: a login acts as it);
#: grants are allowed to it, superusers (who bypass privileges anyway) and the database
#: owner (the platform admin). The service's logins own nothing anywhere (what a login
#: owns would outlive it; the rotation hands it to the owner) and hold nothing on the
#: tenant's objects but their membership in the owner (no ADMIN OPTION) and, in a
#: dedicated database, CONNECT. Grants *to* a login on others' objects are not the
#: tenant's doing (any owner may grant to any role): the rotation clears them.
#: ``PUBLIC`` appears as grantee 0. Functions and types keep
#: PUBLIC's implicit EXECUTE and USAGE while their ACL is untouched (NULL: harmless
#: without USAGE on the schema, which the schema ACL check covers); any explicit
#: grant to PUBLIC or a role is listed, and so is any grant on the tenant role's large
#: objects (which live outside every schema).
_FOREIGN_PRIVILEGES: Final = """
WITH me AS (SELECT oid FROM pg_roles WHERE rolname IN (current_user, session_user)),
owner AS (SELECT oid FROM pg_roles WHERE rolname = current_user),
logins AS (
    SELECT oid FROM pg_roles WHERE rolname = ANY(%(own)s) AND rolname <> current_user
),
ok AS (
    SELECT oid FROM pg_roles WHERE rolsuper
    UNION SELECT oid FROM owner
    UNION SELECT datdba FROM pg_database WHERE datname = current_database()
),
ns AS (SELECT oid, nspname, nspowner, nspacl FROM pg_namespace WHERE nspname = %(schema)s)
SELECT 'schema ' || ns.nspname, pg_get_userbyid(ns.nspowner), 'OWNERSHIP'
  FROM ns WHERE ns.nspowner NOT IN (SELECT oid FROM owner)
UNION ALL
SELECT 'schema ' || ns.nspname,
       CASE a.grantee WHEN 0 THEN 'PUBLIC' ELSE pg_get_userbyid(a.grantee) END,
       a.privilege_type
  FROM ns, aclexplode(ns.nspacl) a WHERE a.grantee NOT IN (SELECT oid FROM ok)
UNION ALL
SELECT ns.nspname || '.' || c.relname, pg_get_userbyid(c.relowner), 'OWNERSHIP'
  FROM pg_class c JOIN ns ON ns.oid = c.relnamespace
 WHERE c.relowner NOT IN (SELECT oid FROM owner)
UNION ALL
SELECT ns.nspname || '.' || p.proname || '()', pg_get_userbyid(p.proowner), 'OWNERSHIP'
  FROM pg_proc p JOIN ns ON ns.oid = p.pronamespace
 WHERE p.proowner NOT IN (SELECT oid FROM owner)
UNION ALL
SELECT 'type ' || ns.nspname || '.' || t.typname, pg_get_userbyid(t.typowner), 'OWNERSHIP'
  FROM pg_type t JOIN ns ON ns.oid = t.typnamespace
 WHERE t.typowner NOT IN (SELECT oid FROM owner)
UNION ALL
SELECT s.classid::regclass || ' ' || s.objid || ' in ' || coalesce(d.datname, 'the cluster'),
       pg_get_userbyid(s.refobjid), 'OWNERSHIP'
  FROM pg_shdepend s LEFT JOIN pg_database d ON d.oid = s.dbid
 WHERE s.refobjid IN (SELECT oid FROM logins) AND s.deptype = 'o'
   AND s.refclassid = 'pg_authid'::regclass
UNION ALL
SELECT ns.nspname || '.' || c.relname,
       CASE a.grantee WHEN 0 THEN 'PUBLIC' ELSE pg_get_userbyid(a.grantee) END,
       a.privilege_type
  FROM pg_class c JOIN ns ON ns.oid = c.relnamespace, aclexplode(c.relacl) a
 WHERE a.grantee NOT IN (SELECT oid FROM ok)
UNION ALL
SELECT ns.nspname || '.' || c.relname || '(' || a.attname || ')',
       CASE x.grantee WHEN 0 THEN 'PUBLIC' ELSE pg_get_userbyid(x.grantee) END,
       x.privilege_type
  FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid JOIN ns ON ns.oid = c.relnamespace,
       aclexplode(a.attacl) x
 WHERE a.attnum > 0 AND x.grantee NOT IN (SELECT oid FROM ok)
UNION ALL
SELECT ns.nspname || '.' || p.proname || '()',
       CASE a.grantee WHEN 0 THEN 'PUBLIC' ELSE pg_get_userbyid(a.grantee) END,
       a.privilege_type
  FROM pg_proc p JOIN ns ON ns.oid = p.pronamespace, aclexplode(p.proacl) a
 WHERE a.grantee NOT IN (SELECT oid FROM ok)
UNION ALL
SELECT 'type ' || ns.nspname || '.' || t.typname,
       CASE a.grantee WHEN 0 THEN 'PUBLIC' ELSE pg_get_userbyid(a.grantee) END,
       a.privilege_type
  FROM pg_type t JOIN ns ON ns.oid = t.typnamespace, aclexplode(t.typacl) a
 WHERE a.grantee NOT IN (SELECT oid FROM ok)
UNION ALL
SELECT 'large object ' || l.oid,
       CASE a.grantee WHEN 0 THEN 'PUBLIC' ELSE pg_get_userbyid(a.grantee) END,
       a.privilege_type
  FROM pg_largeobject_metadata l, aclexplode(l.lomacl) a
 WHERE l.lomowner IN (SELECT oid FROM me) AND a.grantee NOT IN (SELECT oid FROM ok)
UNION ALL
SELECT 'default privileges for new objects in ' || coalesce(ns.nspname, 'any schema'),
       CASE a.grantee WHEN 0 THEN 'PUBLIC' ELSE pg_get_userbyid(a.grantee) END,
       a.privilege_type
  FROM pg_default_acl d LEFT JOIN ns ON ns.oid = d.defaclnamespace, aclexplode(d.defaclacl) a
 WHERE (d.defaclnamespace = (SELECT oid FROM ns) OR d.defaclrole IN (SELECT oid FROM me))
   AND a.grantee NOT IN (SELECT oid FROM ok)
   AND NOT (a.grantee = 0 AND d.defaclobjtype IN ('f', 'T'))
UNION ALL
SELECT 'role ' || pg_get_userbyid(m.roleid), pg_get_userbyid(m.member),
       CASE WHEN m.admin_option THEN 'MEMBERSHIP WITH ADMIN OPTION' ELSE 'MEMBERSHIP' END
  FROM pg_auth_members m
 WHERE m.roleid IN (SELECT oid FROM me) AND m.member NOT IN (SELECT oid FROM ok)
   AND NOT (m.roleid IN (SELECT oid FROM owner) AND m.member IN (SELECT oid FROM logins)
            AND NOT m.admin_option)
UNION ALL
SELECT 'database ' || d.datname,
       CASE a.grantee WHEN 0 THEN 'PUBLIC' ELSE pg_get_userbyid(a.grantee) END,
       a.privilege_type
  FROM pg_database d, aclexplode(d.datacl) a
 WHERE %(dedicated)s AND d.datname = current_database()
   AND a.grantee NOT IN (SELECT oid FROM ok)
   AND NOT (a.grantee IN (SELECT oid FROM logins) AND a.privilege_type = 'CONNECT')
UNION ALL
SELECT s.classid::regclass || ' ' || s.objid || ' in ' || d.datname,
       pg_get_userbyid(s.refobjid), 'OWNERSHIP'
  FROM pg_shdepend s JOIN pg_database d ON d.oid = s.dbid
 WHERE %(dedicated)s AND d.datname = current_database() AND s.deptype = 'o'
   AND s.refclassid = 'pg_authid'::regclass
   AND s.refobjid NOT IN (SELECT oid FROM ok UNION SELECT oid FROM me UNION SELECT oid FROM logins)
ORDER BY 1, 2, 3
"""

"""Tenants on the real PostgreSQL and RabbitMQ, set up FROM THE OFFLINE PLAN.

The fixture walks the resources ``commands.plan`` says a tenant stack declares (and
the platform plan's shared database) and applies each with the equivalent SQL or
management-API call. Nothing here decides what a tenant gets: a grant missing from
(or added to) the components shows up as a leak in these tests. Resource types the
fixture does not know make it fail loudly, so it cannot silently fall behind them.

Names are unique per run (``tv<hex>-…`` tenants); the product's shared database is
the real ``ledger`` (the plan derives it), created if absent and dropped at the end
only if this run created it and no tenant schema is left in it. Everything created
is dropped even when a test fails.
"""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import psycopg
import pytest
import requests
from psycopg import sql

from tenant_infra import commands
from tenant_infra.config import PlatformConfig, read_stack_file
from tenant_infra.plan import Plan, PlannedResource, plan_platform
from tenant_infra.verify.connections import AdminAccess, RabbitmqAdmin

ROOT = Path(__file__).resolve().parents[2]
DEV_STACK = ROOT / "stacks" / "Pulumi.dev.yaml"
PRODUCT = "ledger"

ADMIN_PG: dict[str, Any] = psycopg.conninfo.conninfo_to_dict(
    os.environ.get("TENANT_INFRA_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
)
MANAGEMENT = os.environ.get("TENANT_INFRA_TEST_RABBITMQ_URL", "http://127.0.0.1:15672")
RABBIT_ADMIN = (
    os.environ.get("TENANT_INFRA_TEST_RABBITMQ_USER", "guest"),
    os.environ.get("TENANT_INFRA_TEST_RABBITMQ_PASSWORD", "guest"),
)

PG = "postgresql:index/"
RMQ = "rabbitmq:index/"
#: Declared resources with nothing to apply on PostgreSQL/RabbitMQ.
NOT_APPLIED = ("random:", "vault:", "pulumi-python:dynamic/", "mongodbatlas:")


# ------------------------------------------------------------------ low level


def admin_sql(
    statement: str | sql.Composed,
    database: str | None = None,
    params: tuple[Any, ...] | None = None,
) -> list[tuple[Any, ...]]:
    conninfo = dict(ADMIN_PG, dbname=database or ADMIN_PG.get("dbname", "postgres"))
    with psycopg.connect(**conninfo, autocommit=True) as conn:
        cur = conn.execute(statement, params)  # type: ignore[arg-type]
        return cur.fetchall() if cur.description else []


def rabbit(method: str, path: str, body: Any = None) -> requests.Response:
    response = requests.request(
        method, f"{MANAGEMENT}/api/{path}", auth=RABBIT_ADMIN, json=body, timeout=15
    )
    if method != "GET" and response.status_code not in (200, 201, 204, 404):
        raise AssertionError(f"{method} /api/{path}: HTTP {response.status_code} {response.text}")
    return response


def vh(vhost: str) -> str:
    return quote(vhost, safe="")


def ident(name: str) -> sql.Identifier:
    return sql.Identifier(name)


def _grantee(role: str) -> sql.Composable:
    return sql.SQL("PUBLIC") if role.lower() == "public" else ident(role)


# ------------------------------------------------------------------ applying a plan


def _only(resource: PlannedResource, known: set[str]) -> None:
    unknown = set(resource.inputs) - known
    if unknown:
        raise AssertionError(
            f"fixture does not know inputs {sorted(unknown)} of {resource.type} "
            f"{resource.name}: teach tests/verify/conftest.py how to apply them"
        )


def apply_role(r: PlannedResource, password: str) -> None:
    i = r.inputs
    _only(
        r,
        {
            "name",
            "login",
            "password",
            "superuser",
            "createDatabase",
            "createRole",
            "replication",
            "bypassRowLevelSecurity",
            "inherit",
            "connectionLimit",
            "statementTimeout",
            "idleInTransactionSessionTimeout",
            "searchPaths",
            "roles",
            "assumeRole",
            "skipDropRole",
            "skipReassignOwned",
        },
    )
    flags = [
        ("LOGIN", "NOLOGIN", i.get("login", False)),
        ("SUPERUSER", "NOSUPERUSER", i.get("superuser", False)),
        ("CREATEDB", "NOCREATEDB", i.get("createDatabase", False)),
        ("CREATEROLE", "NOCREATEROLE", i.get("createRole", False)),
        ("REPLICATION", "NOREPLICATION", i.get("replication", False)),
        ("BYPASSRLS", "NOBYPASSRLS", i.get("bypassRowLevelSecurity", False)),
        ("INHERIT", "NOINHERIT", i.get("inherit", True)),
    ]
    role = ident(i["name"])
    admin_sql(
        sql.SQL("CREATE ROLE {} {} PASSWORD {} CONNECTION LIMIT {}").format(
            role,
            sql.SQL(" ").join(sql.SQL(on if value else off) for on, off, value in flags),
            sql.Literal(password if "password" in i else None),
            sql.Literal(int(i.get("connectionLimit", -1))),
        )
    )
    if "statementTimeout" in i:
        admin_sql(
            sql.SQL("ALTER ROLE {} SET statement_timeout = {}").format(
                role, sql.Literal(int(i["statementTimeout"]))
            )
        )
    if "idleInTransactionSessionTimeout" in i:
        admin_sql(
            sql.SQL("ALTER ROLE {} SET idle_in_transaction_session_timeout = {}").format(
                role, sql.Literal(int(i["idleInTransactionSessionTimeout"]))
            )
        )
    if i.get("searchPaths"):
        admin_sql(
            sql.SQL("ALTER ROLE {} SET search_path = {}").format(
                role, sql.SQL(", ").join(ident(s) for s in i["searchPaths"])
            )
        )
    for member_of in i.get("roles") or []:
        admin_sql(sql.SQL("GRANT {} TO {}").format(ident(member_of), role))
    if i.get("assumeRole"):
        admin_sql(sql.SQL("ALTER ROLE {} SET ROLE TO {}").format(role, ident(i["assumeRole"])))


def apply_database(r: PlannedResource) -> None:
    i = r.inputs
    _only(r, {"name", "template", "encoding", "connectionLimit", "owner", "allowConnections"})
    parts = [sql.SQL("CREATE DATABASE {}").format(ident(i["name"]))]
    if "template" in i:
        parts.append(sql.SQL("TEMPLATE {}").format(ident(i["template"])))
    if "encoding" in i:
        parts.append(sql.SQL("ENCODING {}").format(sql.Literal(i["encoding"])))
    if "connectionLimit" in i:
        parts.append(sql.SQL("CONNECTION LIMIT {}").format(sql.Literal(int(i["connectionLimit"]))))
    if "owner" in i:
        parts.append(sql.SQL("OWNER {}").format(ident(i["owner"])))
    admin_sql(sql.SQL(" ").join(parts))


def apply_grant(r: PlannedResource) -> None:
    """The provider's Grant sets exactly ``privileges``: REVOKE ALL, then GRANT them."""
    i = r.inputs
    _only(
        r, {"role", "database", "schema", "objectType", "privileges", "objects", "withGrantOption"}
    )
    kind, grantee, privileges = i["objectType"], _grantee(i["role"]), i.get("privileges") or []
    if kind == "database":
        target = sql.SQL("DATABASE {}").format(ident(i["database"]))
    elif kind == "schema":
        target = sql.SQL("SCHEMA {}").format(ident(i["schema"]))
    elif kind in ("table", "sequence", "function") and not i.get("objects"):
        plural = {"table": "TABLES", "sequence": "SEQUENCES", "function": "FUNCTIONS"}[kind]
        target = sql.SQL("ALL {} IN SCHEMA {}").format(sql.SQL(plural), ident(i["schema"]))
    else:
        raise AssertionError(f"fixture cannot apply Grant {r.name} of {kind} {i.get('objects')}")
    admin_sql(sql.SQL("REVOKE ALL ON {} FROM {}").format(target, grantee), i["database"])
    if privileges:
        admin_sql(
            sql.SQL("GRANT {} ON {} TO {}{}").format(
                sql.SQL(", ").join(sql.SQL(p) for p in privileges),
                target,
                grantee,
                sql.SQL(" WITH GRANT OPTION" if i.get("withGrantOption") else ""),
            ),
            i["database"],
        )


def apply_schema(r: PlannedResource) -> None:
    i = r.inputs
    _only(r, {"name", "database", "owner", "ifNotExists", "dropCascade", "policies"})
    assert not i.get("policies"), "Schema policies are not applied by the fixture"
    admin_sql(
        sql.SQL("CREATE SCHEMA {} AUTHORIZATION {}").format(ident(i["name"]), ident(i["owner"])),
        i["database"],
    )


def apply_default_privileges(r: PlannedResource) -> None:
    i = r.inputs
    _only(r, {"role", "database", "schema", "owner", "objectType", "privileges"})
    plural = {
        "table": "TABLES",
        "sequence": "SEQUENCES",
        "function": "FUNCTIONS",
        "type": "TYPES",
        "schema": "SCHEMAS",
    }[i["objectType"]]
    where = sql.SQL(" IN SCHEMA {}").format(ident(i["schema"])) if i.get("schema") else sql.SQL("")
    privileges = i.get("privileges") or []
    verb = (
        sql.SQL("GRANT {} ON {} TO {}").format(
            sql.SQL(", ").join(sql.SQL(p) for p in privileges), sql.SQL(plural), _grantee(i["role"])
        )
        if privileges
        else sql.SQL("REVOKE ALL ON {} FROM {}").format(sql.SQL(plural), _grantee(i["role"]))
    )
    admin_sql(
        sql.SQL("ALTER DEFAULT PRIVILEGES FOR ROLE {}{} {}").format(ident(i["owner"]), where, verb),
        i["database"],
    )


def _number(value: Any) -> Any:
    return int(value) if isinstance(value, str) and value.isdigit() else value


def apply_rabbitmq(r: PlannedResource, passwords: dict[str, str]) -> None:
    i, kind = r.inputs, r.type.removeprefix(RMQ)
    if kind == "vHost:VHost":
        _only(r, {"name", "description", "maxConnections", "maxQueues", "defaultQueueType"})
        rabbit("PUT", f"vhosts/{vh(i['name'])}", {"description": i.get("description", "")})
        for key, limit in (("maxConnections", "max-connections"), ("maxQueues", "max-queues")):
            if key in i:
                rabbit("PUT", f"vhost-limits/{vh(i['name'])}/{limit}", {"value": int(i[key])})
    elif kind == "user:User":
        _only(r, {"name", "password", "tags"})
        rabbit(
            "PUT",
            f"users/{quote(i['name'], safe='')}",
            {"password": passwords[r.name], "tags": ",".join(i.get("tags") or [])},
        )
    elif kind == "permissions:Permissions":
        _only(r, {"user", "vhost", "permissions"})
        rabbit("PUT", f"permissions/{vh(i['vhost'])}/{quote(i['user'], safe='')}", i["permissions"])
    elif kind in ("operatorPolicy:OperatorPolicy", "policy:Policy"):
        _only(r, {"name", "vhost", "policy"})
        policy = i["policy"]
        operator = kind.startswith("operator")
        definition = {
            k: _number(v)
            for k, v in policy["definition"].items()
            if not operator or k in OPERATOR_POLICY_KEYS
        }
        path = "operator-policies" if operator else "policies"
        rabbit(
            "PUT",
            f"{path}/{vh(i['vhost'])}/{quote(i['name'], safe='')}",
            {
                "pattern": policy["pattern"],
                "priority": int(policy.get("priority", 0)),
                "apply-to": policy.get("applyTo", "all"),
                "definition": definition,
            },
        )
    else:
        raise AssertionError(f"fixture cannot apply {r.type} {r.name}")


#: Keys RabbitMQ (3.x) accepts in an OPERATOR policy (rabbit_policies.erl registers
#: no operator validator for ``overflow``). The fixture applies these and leaves the
#: rest to test_operator_policy_keys_are_accepted_by_rabbitmq, which names the bug
#: instead of every isolation test erroring on it.
OPERATOR_POLICY_KEYS = frozenset(
    {
        "expires",
        "message-ttl",
        "max-length",
        "max-length-bytes",
        "max-in-memory-length",
        "max-in-memory-bytes",
        "delivery-limit",
    }
)

PG_ORDER = (
    "role:Role",
    "grantRole:GrantRole",
    "database:Database",
    "schema:Schema",
    "grant:Grant",
    "defaultPrivileges:DefaultPrivileges",
)
RMQ_ORDER = (
    "vHost:VHost",
    "user:User",
    "permissions:Permissions",
    "operatorPolicy:OperatorPolicy",
    "policy:Policy",
)


# ------------------------------------------------------------------ tenants


@dataclass
class Tenant:
    """One provisioned tenant service and the connections document verify reads."""

    tenant: str
    product: str
    isolation: str
    plan: Plan
    passwords: dict[str, str] = field(repr=False)
    document: dict[str, Any] = field(repr=False)

    @property
    def role(self) -> str:
        return str(self.document["postgresql"]["user"])

    @property
    def database(self) -> str:
        return str(self.document["postgresql"]["database"])

    @property
    def schema(self) -> str:
        return str(self.document["postgresql"]["schema"])

    @property
    def vhost(self) -> str:
        return str(self.document["rabbitmq"]["vhost"])

    def pg(self, database: str | None = None) -> dict[str, Any]:
        """libpq parameters of the tenant's own role."""
        pg = self.document["postgresql"]
        return {
            "host": pg["host"],
            "port": pg["port"],
            "dbname": database or pg["database"],
            "user": pg["user"],
            "password": pg["password"],
            "sslmode": "disable",
            "connect_timeout": 10,
        }

    @property
    def amqp_user(self) -> tuple[str, str]:
        return self.document["rabbitmq"]["user"], self.document["rabbitmq"]["password"]


def seed_data(tenant: Tenant) -> None:
    """Tenant data, written by the tenant role itself, for others to (fail to) read."""
    with psycopg.connect(**tenant.pg(), autocommit=True) as conn:
        table = sql.Identifier(tenant.schema, "accounts")
        conn.execute(sql.SQL("CREATE TABLE {} (id int PRIMARY KEY, holder text)").format(table))
        conn.execute(sql.SQL("INSERT INTO {} VALUES (1, %s)").format(table), (tenant.tenant,))


class Provisioner:
    """Creates tenants from plans and remembers everything it created."""

    def __init__(self, shared: str) -> None:
        self.shared = shared
        self.roles: list[str] = []
        self.databases: list[str] = []
        self.vhosts: list[str] = []
        self.users: list[str] = []

    def tenant(self, isolation: str, label: str, product: str = PRODUCT) -> Tenant:
        tenant = f"tv{secrets.token_hex(3)}-{label}"
        plan = commands.plan(tenant, [f"{product}:{isolation}"], DEV_STACK)
        passwords = {
            r.name: secrets.token_urlsafe(24)
            for r in plan.resources
            if r.type in (PG + "role:Role", RMQ + "user:User")
        }
        applied = [r for r in plan.resources if r.custom]
        for r in applied:
            if not (
                r.type.startswith((PG, RMQ, "pulumi:providers:")) or r.type.startswith(NOT_APPLIED)
            ):
                raise AssertionError(f"fixture does not know resource type {r.type}")
        for kind in PG_ORDER:
            # An owner before the logins that are its members.
            of_kind = sorted(
                (r for r in applied if r.type == PG + kind), key=lambda r: bool(r.inputs.get("roles"))
            )
            for r in of_kind:
                self._apply_pg(r, passwords)
        unknown_pg = {r.type for r in applied if r.type.startswith(PG)} - {PG + k for k in PG_ORDER}
        assert not unknown_pg, f"fixture does not know {sorted(unknown_pg)}"
        for kind in RMQ_ORDER:
            for r in (r for r in applied if r.type == RMQ + kind):
                if kind == "vHost:VHost":
                    self.vhosts.append(r.inputs["name"])
                if kind == "user:User":
                    self.users.append(r.inputs["name"])
                apply_rabbitmq(r, passwords)
        unknown_rmq = {r.type for r in applied if r.type.startswith(RMQ)} - {
            RMQ + k for k in RMQ_ORDER
        }
        assert not unknown_rmq, f"fixture does not know {sorted(unknown_rmq)}"
        provisioned = Tenant(
            tenant,
            product,
            isolation,
            plan,
            passwords,
            self._document(tenant, product, isolation, plan, passwords),
        )
        seed_data(provisioned)
        return provisioned

    def _apply_pg(self, r: PlannedResource, passwords: dict[str, str]) -> None:
        kind = r.type.removeprefix(PG)
        if kind == "role:Role":
            self.roles.append(r.inputs["name"])
            apply_role(r, passwords[r.name])
        elif kind == "database:Database":
            self.databases.append(r.inputs["name"])
            apply_database(r)
        elif kind == "schema:Schema":
            apply_schema(r)
        elif kind == "grant:Grant":
            apply_grant(r)
        elif kind == "defaultPrivileges:DefaultPrivileges":
            apply_default_privileges(r)
        elif kind == "grantRole:GrantRole":
            admin_sql(
                sql.SQL("GRANT {} TO {}").format(
                    ident(r.inputs["grantRole"]), ident(r.inputs["role"])
                )
            )

    @staticmethod
    def _document(
        tenant: str, product: str, isolation: str, plan: Plan, passwords: dict[str, str]
    ) -> dict[str, Any]:
        """The connections document, from the plan's resources and the fixture's passwords."""
        # The login the document names: the one role that logs in (the owner never does).
        (role,) = [r for r in plan.of_type(PG + "role:Role") if r.inputs.get("login")]
        (schema,) = plan.of_type(PG + "schema:Schema")
        (user,) = plan.of_type(RMQ + "user:User")
        (permission,) = plan.of_type(RMQ + "permissions:Permissions")
        from tenant_infra.catalog import Store, load_catalog

        document = {
            "tenant": tenant,
            "product": product,
            "isolation": isolation,
            "postgresql": {
                "host": ADMIN_PG.get("host", "127.0.0.1"),
                "port": int(ADMIN_PG.get("port", 5432)),
                "database": schema.inputs["database"],
                "schema": schema.inputs["name"],
                "user": role.inputs["name"],
                "password": passwords[role.name],
                "sslmode": "disable",
            },
            "rabbitmq": {
                "host": "127.0.0.1",
                "port": 5672,
                "vhost": permission.inputs["vhost"],
                "user": user.inputs["name"],
                "password": passwords[user.name],
            },
        }
        if load_catalog().product(product).needs(Store.MONGODB):
            # Its section is there, as the program writes it (its checks skip when no
            # server answers).
            document["mongodb"] = {
                "host": "127.0.0.1",
                "port": 27017,
                "database": tenant,
                "user": user.inputs["name"],
                "password": passwords[user.name],
            }
        return document

    def _drop_role(self, role: str) -> None:
        """DROP OWNED where the role has objects or grants, then the role itself."""
        if not admin_sql("SELECT 1 FROM pg_roles WHERE rolname = %s", None, (role,)):
            return
        for database in (self.shared, None):  # None: shared objects (database grants)
            admin_sql(sql.SQL("DROP OWNED BY {} CASCADE").format(ident(role)), database)
        admin_sql(sql.SQL("DROP ROLE {}").format(ident(role)))

    def cleanup(self) -> None:
        """Drop what this provisioner created; every step is tried, errors reported last."""
        errors: list[str] = []

        def attempt(what: str, action: Callable[[], Any]) -> None:
            try:
                action()
            except Exception as exc:  # keep cleaning, report at the end
                errors.append(f"{what}: {exc}")

        for database in reversed(self.databases):
            attempt(
                f"drop database {database}",
                lambda d=database: admin_sql(
                    sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(ident(d))
                ),
            )
        for role in reversed(self.roles):
            attempt(f"drop role {role}", lambda r=role: self._drop_role(r))
        for vhost in self.vhosts:
            attempt(f"delete vhost {vhost}", lambda v=vhost: rabbit("DELETE", f"vhosts/{vh(v)}"))
        for user in self.users:
            attempt(
                f"delete user {user}", lambda u=user: rabbit("DELETE", f"users/{quote(u, safe='')}")
            )
        self.roles, self.databases, self.vhosts, self.users = [], [], [], []
        if errors:
            raise AssertionError("cleanup failed: " + "; ".join(errors))


# ------------------------------------------------------------------ fixtures


@pytest.fixture(scope="session")
def shared_database() -> Iterator[str]:
    """The product's shared database from the platform plan; dropped only if ours."""
    values = read_stack_file(ROOT / "platform" / "Pulumi.dev.yaml")
    values["tenant-infra:products"] = [PRODUCT]
    values.pop("tenant-infra:registry", None)  # only the product's shared database
    plan = plan_platform(PlatformConfig.from_pulumi_values(values), "dev")
    (database,) = plan.of_type(PG + "database:Database")
    name = database.inputs["name"]
    created = not admin_sql("SELECT 1 FROM pg_database WHERE datname = %s", None, (name,))
    if created:
        apply_database(database)
    try:
        for grant in plan.of_type(PG + "grant:Grant"):
            apply_grant(grant)  # the platform's hardening, idempotent REVOKEs
        yield name
    finally:
        if created:
            left = admin_sql(
                "SELECT count(*) FROM pg_namespace WHERE nspname LIKE 'tenant\\_%%'", name
            )
            if left[0][0] == 0:
                admin_sql(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(ident(name)))


@pytest.fixture(scope="session")
def fleet(shared_database: str) -> Iterator[dict[str, Tenant]]:
    """Two SCHEMA-mode and two DATABASE-mode tenants of ``ledger``, provisioned correctly."""
    provisioner = Provisioner(shared_database)
    try:
        yield {
            "s1": provisioner.tenant("SCHEMA", "s1"),
            "s2": provisioner.tenant("SCHEMA", "s2"),
            "d1": provisioner.tenant("DATABASE", "d1"),
            "d2": provisioner.tenant("DATABASE", "d2"),
        }
    finally:
        provisioner.cleanup()


@pytest.fixture
def provision(shared_database: str) -> Iterator[Provisioner]:
    """Throwaway tenants for one test (to be broken on purpose), dropped after it."""
    provisioner = Provisioner(shared_database)
    try:
        yield provisioner
    finally:
        provisioner.cleanup()


@pytest.fixture(scope="session")
def admin() -> AdminAccess:
    return AdminAccess(rabbitmq=RabbitmqAdmin(MANAGEMENT, *RABBIT_ADMIN))


@pytest.fixture
def write_document(tmp_path: Path) -> Callable[[dict[str, Any]], Path]:
    def write(document: dict[str, Any]) -> Path:
        path = tmp_path / f"{document['tenant']}-{document['product']}.json"
        path.write_text(json.dumps(document))
        return path

    return write


@pytest.fixture(scope="session")
def sql_as_admin() -> Callable[..., list[tuple[Any, ...]]]:
    return admin_sql


@pytest.fixture(scope="session")
def management() -> Callable[..., requests.Response]:
    return rabbit

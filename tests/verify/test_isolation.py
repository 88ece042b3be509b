"""Every cross-tenant attempt, made for real on PostgreSQL and RabbitMQ, is refused.

The tenants come from the offline plan (conftest.py): two SCHEMA-mode tenants share
the ``ledger`` database, two DATABASE-mode tenants have their own. These tests make
the attempts directly, not through ``verify``, so a bug in the verifier cannot hide
a leak; test_verify_passes_* then checks the verifier agrees.
"""

from __future__ import annotations

import pika
import pika.exceptions
import psycopg
import pytest
import requests
from psycopg import errors, sql

from tenant_infra.verify import verify_tenant
from tenant_infra.verify.broker import RABBITMQ_CHECKS
from tenant_infra.verify.checks import PG_CHECKS


def amqp(tenant, vhost: str | None = None) -> pika.BlockingConnection:
    user, password = tenant.amqp_user
    return pika.BlockingConnection(
        pika.ConnectionParameters(
            "127.0.0.1",
            5672,
            vhost or tenant.vhost,
            pika.PlainCredentials(user, password),
            connection_attempts=1,
            socket_timeout=5,
        )
    )


@pytest.mark.parametrize("key", ["s1", "s2", "d1", "d2"])
def test_verify_passes_on_correctly_provisioned_tenants(fleet, admin, key) -> None:
    tenant = fleet[key]
    report = verify_tenant(tenant.tenant, connections=[tenant.document], admin=admin)
    (service,) = report.services
    assert report.ok, [c for c in service.checks if not c.ok]
    ran = {c.name for c in service.checks if not c.skipped}
    assert ran >= set(PG_CHECKS) | set(RABBITMQ_CHECKS)


@pytest.mark.parametrize("key", ["s1", "d1"])
def test_limits_in_force_are_reported(fleet, admin, key) -> None:
    tenant = fleet[key]
    (service,) = verify_tenant(tenant.tenant, connections=[tenant.document], admin=admin).services
    role = tenant.plan.of_type("postgresql:index/role:Role")[0].inputs
    vhost = tenant.plan.of_type("rabbitmq:index/vHost:VHost")[0].inputs
    expected = {
        "pg_connection_limit": role["connectionLimit"],
        "pg_statement_timeout_ms": role["statementTimeout"],
        "broker_max_connections": int(vhost["maxConnections"]),
        "broker_max_queues": int(vhost["maxQueues"]),
    }
    if tenant.isolation == "DATABASE":
        database = tenant.plan.of_type("postgresql:index/database:Database")[0].inputs
        expected["pg_database_connection_limit"] = database["connectionLimit"]
    assert {k: service.limits[k] for k in expected} == expected
    assert service.limits["broker_queue_max_length"] > 0
    assert service.limits["broker_queue_max_bytes"] > 0


def test_service_reads_and_writes_its_own_schema(fleet) -> None:
    tenant = fleet["s1"]
    with psycopg.connect(**tenant.pg()) as conn:
        (holder,) = conn.execute(
            sql.SQL("SELECT holder FROM {}").format(sql.Identifier(tenant.schema, "accounts"))
        ).fetchone()
    assert holder == tenant.tenant


@pytest.mark.parametrize(("reader", "owner"), [("s1", "s2"), ("s2", "s1")])
def test_schema_tenant_cannot_read_write_or_see_the_other_schema(fleet, reader, owner) -> None:
    me, other = fleet[reader], fleet[owner]
    assert me.database == other.database == "ledger"
    table = sql.Identifier(other.schema, "accounts")
    with psycopg.connect(**me.pg(), autocommit=True) as conn:
        for statement in (
            sql.SQL("SELECT * FROM {}").format(table),
            sql.SQL("INSERT INTO {} VALUES (2, 'x')").format(table),
            sql.SQL("CREATE TABLE {} (id int)").format(sql.Identifier(other.schema, "planted")),
            sql.SQL("ALTER SCHEMA {} RENAME TO stolen").format(sql.Identifier(other.schema)),
        ):
            with pytest.raises(errors.InsufficientPrivilege):
                conn.execute(statement)
        (visible,) = conn.execute(
            "SELECT count(*) FROM information_schema.tables WHERE table_schema = %s",
            (other.schema,),
        ).fetchone()
    assert visible == 0


@pytest.mark.parametrize(
    ("who", "target"),
    [("s1", "d1"), ("d1", "d2"), ("d2", "d1"), ("d1", "shared")],
)
def test_cannot_connect_to_another_tenants_database(fleet, who, target) -> None:
    me = fleet[who]
    database = "ledger" if target == "shared" else fleet[target].database
    with pytest.raises(psycopg.OperationalError, match="permission denied for database"):
        psycopg.connect(**me.pg(database)).close()


@pytest.mark.parametrize("key", ["s1", "d1"])
def test_cannot_create_in_public_or_create_schemas(fleet, key) -> None:
    tenant = fleet[key]
    with psycopg.connect(**tenant.pg(), autocommit=True) as conn:
        with pytest.raises(errors.InsufficientPrivilege):
            conn.execute("CREATE TABLE public.planted (id int)")
        with pytest.raises(errors.InsufficientPrivilege):
            conn.execute("CREATE SCHEMA planted")


@pytest.mark.parametrize("key", ["d1", "d2"])
def test_public_has_no_connect_on_a_dedicated_database(fleet, sql_as_admin, key) -> None:
    database = fleet[key].database
    ((connect, temp),) = sql_as_admin(
        "SELECT has_database_privilege('public', %s, 'CONNECT'),"
        " has_database_privilege('public', %s, 'TEMPORARY')",
        None,
        (database, database),
    )
    assert (connect, temp) == (False, False)


def test_the_shared_database_is_closed_to_public(fleet, sql_as_admin) -> None:
    ((connect, usage),) = sql_as_admin(
        "SELECT has_database_privilege('public', 'ledger', 'CONNECT'),"
        " has_schema_privilege('public', 'public', 'USAGE')",
        "ledger",
    )
    assert (connect, usage) == (False, False)


def test_no_other_tenant_role_holds_privileges_on_a_tenants_objects(fleet, sql_as_admin) -> None:
    roles = [t.role for t in fleet.values()]
    for tenant in fleet.values():
        others = [r for r in roles if r != tenant.role]
        rows = sql_as_admin(
            "SELECT r, has_schema_privilege(r, %s, 'USAGE'),"
            " has_table_privilege(r, %s, 'SELECT'), pg_has_role(r, %s, 'MEMBER')"
            " FROM unnest(%s::text[]) r",
            tenant.database,
            (tenant.schema, f"{tenant.schema}.accounts", tenant.role, others),
        )
        assert [row for row in rows if any(row[1:])] == []


@pytest.mark.parametrize(("who", "target"), [("s1", "s2"), ("d1", "s1"), ("s1", "/")])
def test_cannot_open_another_vhost(fleet, who, target) -> None:
    vhost = target if target == "/" else fleet[target].vhost
    with pytest.raises(pika.exceptions.ProbableAccessDeniedError, match="refused"):
        amqp(fleet[who], vhost)


def test_publishes_and_consumes_on_its_own_vhost(fleet) -> None:
    connection = amqp(fleet["d1"])
    try:
        channel = connection.channel()
        queue = channel.queue_declare("", exclusive=True).method.queue
        channel.basic_publish("", queue, b"hello")
        assert channel.basic_get(queue, auto_ack=True)[2] == b"hello"
    finally:
        connection.close()


@pytest.mark.parametrize("path", ["overview", "vhosts", "users", "whoami"])
def test_service_user_has_no_management_rights(fleet, path) -> None:
    response = requests.get(
        f"http://127.0.0.1:15672/api/{path}", auth=fleet["s1"].amqp_user, timeout=10
    )
    assert response.status_code == 401


def test_the_declared_operator_policy_is_accepted_by_rabbitmq(fleet, management) -> None:
    """``pulumi up`` sends the plan's definition as is; the broker must accept all of it
    (``management`` raises with the broker's reason on a refusal)."""
    tenant = fleet["s1"]
    (declared,) = tenant.plan.of_type("rabbitmq:index/operatorPolicy:OperatorPolicy")
    policy = declared.inputs["policy"]
    definition = {k: int(v) if str(v).isdigit() else v for k, v in policy["definition"].items()}
    response = management(
        "PUT",
        f"operator-policies/{tenant.vhost}/{declared.inputs['name']}",
        {
            "pattern": policy["pattern"],
            "priority": policy["priority"],
            "apply-to": policy["applyTo"],
            "definition": definition,
        },
    )
    assert response.status_code in (201, 204)

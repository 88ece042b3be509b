"""A hostile tenant, logged in as its own role, tries to hide what it did from verify.

Issue 16, rows 1 and 2: the acts are the tenant's own (no admin involved), and verify
must still see them, with the tenant's own connection and its catalog look-alikes.
"""

from __future__ import annotations

import psycopg
from psycopg import sql

from tenant_infra.verify import verify_tenant
from tests.verify.test_broken import failing


def as_tenant(tenant, *statements: str | sql.Composable) -> None:
    """The tenant's own session. Its login acts as the owner from the first statement;
    to change its own settings it first drops back to itself (``SET ROLE NONE``), as
    any tenant may."""
    with psycopg.connect(**tenant.pg(), autocommit=True) as conn:
        for statement in statements:
            text = statement if isinstance(statement, str) else statement.as_string(conn)
            if text.startswith("ALTER ROLE"):
                conn.execute("SET ROLE NONE")
            conn.execute(statement)
            conn.execute("RESET ROLE")


def test_catalog_look_alikes_and_a_shadowing_search_path_fool_nothing(provision, admin) -> None:
    victim = provision.tenant("SCHEMA", "shd")
    neighbour = provision.tenant("SCHEMA", "nbr")
    schema, role = sql.Identifier(victim.schema), sql.Identifier(victim.role)
    as_tenant(
        victim,
        sql.SQL("CREATE TABLE {}.secrets (v text)").format(schema),
        sql.SQL("GRANT USAGE ON SCHEMA {} TO PUBLIC").format(schema),
        sql.SQL("GRANT SELECT ON {}.secrets TO PUBLIC").format(schema),
        # Look-alikes of what verify reads, ahead of pg_catalog for the role's sessions.
        sql.SQL(
            "CREATE FUNCTION {}.aclexplode(aclitem[], OUT grantor oid, OUT grantee oid,"
            " OUT privilege_type text, OUT is_grantable boolean) RETURNS SETOF record"
            " LANGUAGE sql AS 'SELECT NULL::oid, NULL::oid, NULL::text, NULL::boolean WHERE false'"
        ).format(schema),
        sql.SQL(
            "CREATE VIEW {}.pg_settings AS SELECT 'statement_timeout'::text AS name,"
            " '30000'::text AS setting"
        ).format(schema),
        sql.SQL("ALTER ROLE {} SET search_path = {}, pg_catalog").format(role, schema),
        sql.SQL("ALTER ROLE {} SET statement_timeout = 0").format(role),
    )
    # The leak is real: the neighbour reads the victim's table.
    with psycopg.connect(**neighbour.pg(), autocommit=True) as conn:
        conn.execute(sql.SQL("SELECT * FROM {}.secrets").format(schema))

    found = failing(verify_tenant(victim.tenant, connections=[victim.document], admin=admin))
    assert "PUBLIC has USAGE on schema" in found["pg.no_foreign_privileges"]
    assert "PUBLIC has SELECT on" in found["pg.no_foreign_privileges"]
    assert "no statement timeout" in found["pg.limits"]
    assert "search_path is" in found["pg.role_settings"]


def test_every_setting_a_tenant_gives_its_role_is_seen(provision, admin) -> None:
    tenant = provision.tenant("DATABASE", "set")
    bystander = provision.tenant("DATABASE", "bys")
    role = sql.Identifier(tenant.role)
    as_tenant(
        tenant,
        sql.SQL("ALTER ROLE {} SET work_mem = '1GB'").format(role),
        sql.SQL("ALTER ROLE {} SET idle_in_transaction_session_timeout = 0").format(role),
    )
    found = failing(verify_tenant(tenant.tenant, connections=[tenant.document], admin=admin))
    assert "work_mem is set" in found["pg.role_settings"]
    assert "no idle-in-transaction timeout" in found["pg.limits"]
    # Its own acts fail its own checks only.
    assert failing(verify_tenant(bystander.tenant, connections=[bystander.document], admin=admin)) == {}


def test_notifications_cross_a_shared_database_and_verify_warns(provision, admin) -> None:
    """Issue 16, row 3: PostgreSQL has no privilege on LISTEN/NOTIFY channels."""
    listener = provision.tenant("SCHEMA", "lis")
    sender = provision.tenant("SCHEMA", "snd")
    with psycopg.connect(**listener.pg(), autocommit=True) as conn:
        conn.execute("LISTEN orders")
        as_tenant(sender, "NOTIFY orders, 'from a neighbour'")
        received = [n.payload for n in conn.notifies(timeout=2, stop_after=1)]
    assert received == ["from a neighbour"]  # the exposure is real
    report = verify_tenant(listener.tenant, connections=[listener.document], admin=admin)
    (service,) = report.services
    visibility = next(c for c in service.checks if c.name == "pg.neighbour_visibility")
    assert visibility.to_json()["status"] == "warn" and "LISTEN/NOTIFY" in visibility.reason


def test_grants_on_types_functions_and_large_objects_are_seen(provision, admin) -> None:
    tenant = provision.tenant("SCHEMA", "obj")
    schema = sql.Identifier(tenant.schema)
    with psycopg.connect(**tenant.pg(), autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE TYPE {}.mood AS ENUM ('ok')").format(schema))
        conn.execute(sql.SQL("GRANT USAGE ON TYPE {}.mood TO PUBLIC").format(schema))
        conn.execute(sql.SQL("CREATE FUNCTION {}.f() RETURNS int LANGUAGE sql AS 'SELECT 1'").format(schema))
        conn.execute(sql.SQL("REVOKE ALL ON FUNCTION {}.f() FROM PUBLIC").format(schema))
        conn.execute(sql.SQL("GRANT EXECUTE ON FUNCTION {}.f() TO PUBLIC").format(schema))
        (lo,) = conn.execute("SELECT lo_create(0)").fetchone()  # type: ignore[misc]
        conn.execute(sql.SQL("GRANT SELECT ON LARGE OBJECT {} TO PUBLIC").format(sql.Literal(lo)))
    reason = failing(verify_tenant(tenant.tenant, connections=[tenant.document], admin=admin))[
        "pg.no_foreign_privileges"
    ]
    assert f"PUBLIC has USAGE on type {tenant.schema}.mood" in reason
    assert f"PUBLIC has EXECUTE on {tenant.schema}.f()" in reason
    assert f"PUBLIC has SELECT on large object {lo}" in reason


def test_schema_mode_exposure_is_a_warning_never_a_pass(provision, admin) -> None:
    """Issue 16, row 5: in a shared database a neighbour reads the tenant's catalog
    entries and function sources (not its data); verify says so."""
    shared = provision.tenant("SCHEMA", "exp")
    neighbour = provision.tenant("SCHEMA", "nb2")
    dedicated = provision.tenant("DATABASE", "ded")
    as_tenant(
        shared,
        sql.SQL("CREATE FUNCTION {}.pricing() RETURNS int LANGUAGE sql AS 'SELECT 42 /* secret sauce */'").format(
            sql.Identifier(shared.schema)
        ),
    )
    with psycopg.connect(**neighbour.pg(), autocommit=True) as conn:
        (source,) = conn.execute(
            "SELECT prosrc FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace"
            " WHERE n.nspname = %s", (shared.schema,),
        ).fetchone()  # type: ignore[misc]
    assert "secret sauce" in source  # the exposure is real

    def status(tenant) -> dict[str, str]:
        report = verify_tenant(tenant.tenant, connections=[tenant.document], admin=admin)
        (service,) = report.services
        return {c.name: c.to_json()["status"] for c in service.checks}

    shared_status = status(shared)
    assert shared_status["pg.neighbour_visibility"] == "warn"
    assert "fail" not in shared_status.values()
    assert status(dedicated)["pg.neighbour_visibility"] == "pass"


def test_the_fleets_connection_budget_is_checked_on_the_live_server(provision, admin, tmp_path) -> None:
    """Issue 16, row 7: within its tier, each tenant; over the server, the fleet."""
    import yaml

    from tests.verify.test_broken import DEV_PLATFORM

    tenant = provision.tenant("DATABASE", "bud")
    stack = yaml.safe_load(DEV_PLATFORM.read_text())
    server = stack["config"]["tenant-infra:platform"]["postgres"]["default"]
    server["maxConnections"] = 20  # less superusers (3) and 10 reserved: room for 7
    stack["config"]["tenant-infra:platform"]["rabbitmq"]["maxConnections"] = 15  # room for 5
    path = tmp_path / "Pulumi.platform.yaml"
    path.write_text(yaml.safe_dump(stack))
    report = verify_tenant(tenant.tenant, connections=[tenant.document], stack_config=path, admin=admin)
    declared = failing(report)
    assert "over 7" in declared["pg.connection_budget"]
    assert "the node's vhosts may open" in declared["rabbitmq.limits"] and "over 5" in declared["rabbitmq.limits"]

    report = verify_tenant(tenant.tenant, connections=[tenant.document], admin=admin)
    (service,) = report.services
    budget = next(c for c in service.checks if c.name == "pg.connection_budget")
    assert budget.to_json()["status"] in ("pass", "warn")  # not declared: said, never failed


def test_a_stream_lifts_the_queue_caps_and_verify_says_so(provision, admin) -> None:
    """Issue 16, row 6: operator policies do not reach streams on this broker."""
    import pika

    tenant = provision.tenant("SCHEMA", "strm")
    user, password = tenant.amqp_user
    connection = pika.BlockingConnection(
        pika.ConnectionParameters("127.0.0.1", 5672, tenant.vhost, pika.PlainCredentials(user, password))
    )
    try:
        connection.channel().queue_declare("unbounded", durable=True, arguments={"x-queue-type": "stream"})
    finally:
        connection.close()
    found = failing(verify_tenant(tenant.tenant, connections=[tenant.document], admin=admin))
    assert "uncapped: unbounded (stream)" in found["rabbitmq.limits"]


def test_what_a_tenant_leaves_outside_its_database_is_seen(provision, admin) -> None:
    """Review of issue 16: a large object in postgres or template1 needs no privilege
    (and template1's is copied into every database made from it)."""
    tenant = provision.tenant("SCHEMA", "lo")
    for database in ("postgres", "template1"):
        with psycopg.connect(**tenant.pg(database), autocommit=True) as conn:
            conn.execute("SELECT lo_from_bytea(0, 'tenant secret')")
    as_tenant(tenant, sql.SQL("ALTER ROLE {} SET client_encoding = 'SQL_ASCII'").format(sql.Identifier(tenant.role)))
    found = failing(verify_tenant(tenant.tenant, connections=[tenant.document], admin=admin))
    assert "outside its database: postgres (1), template1 (1)" in found["pg.maintenance_database"]
    assert "client_encoding is set" in found["pg.role_settings"]  # and verify still ran
    owner = tenant.role.split("__")[0]  # what the login made as the owner it acts as
    with psycopg.connect(host="127.0.0.1", user="postgres", dbname="template1", autocommit=True) as conn:
        conn.execute(sql.SQL("DROP OWNED BY {}, {}").format(sql.Identifier(tenant.role), sql.Identifier(owner)))


def test_column_grants_are_seen(provision, admin) -> None:
    tenant = provision.tenant("SCHEMA", "col")
    schema = sql.Identifier(tenant.schema)
    as_tenant(
        tenant,
        sql.SQL("CREATE TABLE {}.t (holder text)").format(schema),
        sql.SQL("GRANT SELECT (holder) ON {}.t TO PUBLIC").format(schema),
    )
    found = failing(verify_tenant(tenant.tenant, connections=[tenant.document], admin=admin))
    assert f"PUBLIC has SELECT on {tenant.schema}.t(holder)" in found["pg.no_foreign_privileges"]


def test_a_neighbours_session_from_before_the_revoke_of_public_is_seen(provision, admin) -> None:
    """A new database lets PUBLIC connect until the provider's revoke runs; CONNECT is
    checked at login only, so a neighbour that got in keeps its session. Verify fails
    on it, for the tenant whose database it is in and no other."""
    from tests.verify.conftest import admin_sql

    tenant = provision.tenant("DATABASE", "win")
    neighbour = provision.tenant("DATABASE", "nbw")
    database = sql.Identifier(tenant.database)
    # The window, for the neighbour alone (PUBLIC would reach other tests' verifies).
    role = sql.Identifier(neighbour.role)
    admin_sql(sql.SQL("GRANT CONNECT ON DATABASE {} TO {}").format(database, role))
    with psycopg.connect(**neighbour.pg(tenant.database), autocommit=True) as conn:
        admin_sql(sql.SQL("REVOKE CONNECT ON DATABASE {} FROM {}").format(database, role))
        conn.execute("SELECT 1")  # still there
        found = failing(verify_tenant(tenant.tenant, connections=[tenant.document], admin=admin))
        assert list(found) == ["pg.no_refused_sessions"]
        assert found["pg.no_refused_sessions"].startswith(f"{neighbour.role} may not connect")
        assert failing(verify_tenant(neighbour.tenant, connections=[neighbour.document], admin=admin)) == {}
        # What the session leaves outlives it: a large object of its own in the database.
        (planted,) = conn.execute("SELECT lo_create(0)").fetchone()  # type: ignore[misc]
    try:
        found = failing(verify_tenant(tenant.tenant, connections=[tenant.document], admin=admin))
        assert list(found) == ["pg.no_foreign_privileges"]
        assert f"has OWNERSHIP on pg_largeobject {planted} in {tenant.database}" in found["pg.no_foreign_privileges"]
    finally:
        admin_sql(sql.SQL("SELECT lo_unlink({})").format(sql.Literal(planted)), tenant.database)
    assert failing(verify_tenant(tenant.tenant, connections=[tenant.document], admin=admin)) == {}

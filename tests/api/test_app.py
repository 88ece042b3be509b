"""The multi-tenancy API held to the seed platform client's decoding rules, on tenants
the replay backend provisioned on the real PostgreSQL and RabbitMQ."""

from __future__ import annotations

import uuid

import pika
import psycopg
import pytest

from tenant_infra import commands
from tests.api.conftest import Served
from tests.support.api import decode_active, decode_connections, decode_denied
from tests.support.world import DEV_STACK

LEDGER_MODULES = {"onboarding", "transaction", "crm-api", "plugin-fees"}


def connect_postgres(pg: dict[str, object], schema_mode: bool) -> list[tuple[object, ...]]:
    """What a product does with the served PostgreSQL: connect, set search_path in
    SCHEMA mode, and use the tenant's own tables."""
    options = f"-csearch_path={pg['schema']}" if schema_mode else ""
    with psycopg.connect(
        host=pg["host"], port=pg["port"], dbname=pg["database"], user=pg["username"],
        password=pg["password"], options=options, connect_timeout=5,
    ) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS api_probe (n int)")
        conn.execute("INSERT INTO api_probe VALUES (1)")
        return conn.execute(
            "SELECT current_schema(), session_user, count(*) FROM api_probe GROUP BY 1, 2"
        ).fetchall()


def connect_rabbitmq(rabbit: dict[str, object]) -> None:
    credentials = pika.PlainCredentials(str(rabbit["username"]), str(rabbit["password"]))
    connection = pika.BlockingConnection(
        pika.ConnectionParameters(
            str(rabbit["host"]), int(str(rabbit["port"])), str(rabbit["vhost"]), credentials,
            connection_attempts=1,
        )
    )
    try:
        channel = connection.channel()
        channel.queue_declare("api-probe", auto_delete=True)
    finally:
        connection.close()


@pytest.mark.parametrize("mode", ["SCHEMA", "DATABASE"])
def test_connections_decode_by_the_client_rules_and_connect_for_real(served: Served, mode: str) -> None:
    tenant = served.world.new_tenant("api")
    served.world.onboard(tenant, f"ledger:{mode}")
    key = served.key("ledger")

    response = served.connections(tenant, "ledger", key)
    assert response.status_code == 200, response.text
    assert response.headers["cache-control"] == "no-store"
    body = decode_connections(response.json())
    assert body["id"] == tenant and body["tenantSlug"] == tenant and body["service"] == "ledger"
    assert body["status"] == "active"
    assert body["isolationMode"] == ("schema" if mode == "SCHEMA" else "isolated")
    assert set(body["databases"]) == LEDGER_MODULES
    onboarding = body["databases"]["onboarding"]
    pg = onboarding["postgresql"]
    assert pg == body["databases"]["transaction"]["postgresql"]  # one database or schema
    assert pg["schema"] == f"tenant_{tenant.replace('-', '_')}"
    assert "postgresql" not in body["databases"]["crm-api"]
    assert onboarding["connectionSettings"]["statementTimeout"] == "30s"  # the standard tier
    rows = connect_postgres(pg, mode == "SCHEMA")
    assert rows == [(pg["schema"], pg["username"], 1)]
    rabbit = body["rabbitmq"]["ledger"]
    assert rabbit["vhost"] == tenant and rabbit["tls"] is False
    connect_rabbitmq(rabbit)


def test_a_uuid_tenant_is_one_tenant_in_every_spelling(served: Served) -> None:
    tenant = str(uuid.uuid4())  # onboarded dashed: that spelling names its resources
    served.world.tenants.append(tenant)
    served.world.onboard(tenant, "tracer:SCHEMA")
    key = served.key("tracer")
    dashless = tenant.replace("-", "")
    for spelling in (tenant, dashless, tenant.upper(), dashless.upper()):
        response = served.connections(spelling, "tracer", key)
        assert response.status_code == 200, (spelling, response.text)
        body = decode_connections(response.json())
        assert (body["id"], body["tenantSlug"]) == (dashless, tenant)
        assert body["databases"]["tracer"]["postgresql"]["username"] == f"tracer_{tenant.replace('-', '_')}__0a"
    active = decode_active(served.get("/v1/tenants/active?service=tracer", key).json())
    assert {"id": dashless, "name": tenant, "status": "active"} in active
    with pytest.raises(Exception, match="spelled otherwise"):
        commands.onboard(dashless, ["tracer:SCHEMA"], DEV_STACK, **served.world.kwargs(), verify=None)


def test_keys_serve_their_own_product_only(served: Served) -> None:
    tenant = served.world.new_tenant("keys")
    served.world.onboard(tenant, "ledger:SCHEMA", "tracer:SCHEMA")
    ledger, tracer, operator = served.key("ledger"), served.key("tracer"), served.key()

    assert served.connections(tenant, "ledger", ledger).status_code == 200
    assert served.connections(tenant, "tracer", tracer).status_code == 200
    # Another product's key, or an operator's: 403 without a status (access denied).
    for key, product in ((ledger, "tracer"), (tracer, "ledger"), (operator, "ledger")):
        response = served.connections(tenant, product, key)
        assert response.status_code == 403 and decode_denied(response) is None
        assert "password" not in response.text
    assert served.get("/v1/tenants/active?service=tracer", ledger).status_code == 403
    # Missing, malformed, unknown and revoked keys: 401.
    forged = ledger[:-4] + ("AAAA" if not ledger.endswith("AAAA") else "BBBB")
    for key in (None, "", "ledger", forged, "ti_0000000000000000_" + "A" * 43):
        assert served.connections(tenant, "ledger", key).status_code == 401, key  # type: ignore[arg-type]
        assert served.get("/v1/tenants/active?service=ledger", key).status_code == 401
    commands.revoke_api_key(ledger.split("_")[1], **served.world.kwargs())
    assert served.connections(tenant, "ledger", ledger).status_code == 401
    listed = commands.api_keys(**served.world.kwargs())
    assert {k["scope"] for k in listed} == {"product", "operator"}
    assert all("hash" not in k for k in listed)
    assert not any(ledger in str(k) or tracer in str(k) for k in listed)


def test_what_does_not_exist_is_404(served: Served) -> None:
    tenant = served.world.new_tenant("nf")
    served.world.onboard(tenant, "ledger:SCHEMA")
    key = served.key("tracer")
    assert served.connections(tenant, "tracer", key).status_code == 404  # not registered
    assert served.connections("nobody-here", "tracer", key).status_code == 404
    assert served.connections(str(uuid.uuid4()), "tracer", key).status_code == 404
    for hostile in ("UPPER-case", "a_b", "x" * 300, "%2e%2e", "-lead"):
        assert served.connections(hostile, "tracer", key).status_code == 404, hostile
    unknown_product = served.key("ledger")
    assert served.connections(tenant, "nosuch", unknown_product).status_code == 403


def test_suspension_is_403_suspended_and_removal_403_purged(served: Served) -> None:
    world = served.world
    tenant = world.new_tenant("sus")
    world.onboard(tenant, "ledger:SCHEMA", "tracer:DATABASE")
    ledger, tracer = served.key("ledger"), served.key("tracer")

    def active(key: str, product: str) -> set[str]:
        response = served.get(f"/v1/tenants/active?service={product}", key)
        assert response.status_code == 200
        return {entry["id"] for entry in decode_active(response.json())}

    assert tenant in active(ledger, "ledger")
    commands.suspend(tenant, ["ledger"], **world.kwargs())
    response = served.connections(tenant, "ledger", ledger)
    assert decode_denied(response) == "suspended"
    assert set(response.json()) == {"code", "error", "status"}
    assert tenant not in active(ledger, "ledger")
    assert served.connections(tenant, "tracer", tracer).status_code == 200  # untouched

    commands.resume(tenant, ["ledger"], **world.kwargs(), verify=None)
    response = served.connections(tenant, "ledger", ledger)
    assert response.status_code == 200
    connect_postgres(decode_connections(response.json())["databases"]["onboarding"]["postgresql"], True)
    assert tenant in active(ledger, "ledger")

    commands.deregister(tenant, "tracer", retain_data=True, **world.kwargs())
    assert decode_denied(served.connections(tenant, "tracer", tracer)) == "purged"
    assert tenant not in active(tracer, "tracer")


def test_after_a_rotation_the_new_credentials_are_served_before_the_event(served: Served) -> None:
    """A product re-fetches when it sees ``tenant.credentials.rotated``: what it gets
    then must already be the new credentials, though the old ones were cached."""
    from psycopg import sql

    from tests.support.registry import Subscriber
    from tests.support.world import admin_sql

    world = served.world
    tenant = world.new_tenant("rot")
    world.onboard(tenant, "tracer:SCHEMA")
    key = served.key("tracer")
    before = served.connections(tenant, "tracer", key).json()
    served.connections(tenant, "tracer", key)
    assert served.reads.count((tenant, "tracer")) == 1  # the second answer came from the cache

    # The rotation's own steps: a new password on the role, the new document in the
    # credential store, then the transition recorded (and announced).
    document = dict(world.backend.document(tenant, "tracer"))
    role = document["postgresql"]["user"]
    new_password = "rotated-" + uuid.uuid4().hex
    admin_sql(sql.SQL("ALTER ROLE {} PASSWORD {}").format(sql.Identifier(role), sql.Literal(new_password)))
    served.overrides[(tenant, "tracer")] = {**document, "postgresql": {**document["postgresql"], "password": new_password}}
    subscriber = Subscriber(world.plane.channel)
    try:
        from tenant_infra.registry import Registry

        Registry.from_platform(world.root, {**world.backend.environ}).record_rotation(tenant, "tracer", "postgresql")
        seen = [e for e in subscriber.received() if e["event_type"] == "tenant.credentials.rotated"]
    finally:
        subscriber.close()
    assert [e["payload"]["service_name"] for e in seen] == ["tracer"]
    after = decode_connections(served.connections(tenant, "tracer", key).json())
    pg = after["databases"]["tracer"]["postgresql"]
    assert pg["password"] == new_password != before["databases"]["tracer"]["postgresql"]["password"]
    connect_postgres(pg, True)


def test_the_api_reads_the_registry_as_its_read_only_role(served: Served) -> None:
    key = served.key("ledger")
    assert served.get("/v1/tenants/active?service=ledger", key).status_code == 200
    plane = served.world.plane
    users = {
        row["usename"]
        for row in plane.rows(
            "SELECT usename FROM pg_stat_activity WHERE datname = current_database()"
            " AND application_name = 'tenant-infra-registry'"
        )
    }
    assert users == {plane.reader}
    privileges = plane.rows(
        "SELECT DISTINCT privilege_type FROM information_schema.role_table_grants"
        " WHERE grantee = %s", (plane.reader,),
    )
    assert privileges == [{"privilege_type": "SELECT"}]


def test_a_bad_document_fails_its_tenant_alone_and_a_source_outage_is_503(served: Served) -> None:
    world = served.world
    tenant = world.new_tenant("bad")
    world.onboard(tenant, "tracer:SCHEMA")
    key = served.key("tracer")
    served.overrides[(tenant, "tracer")] = {"tenant": tenant, "product": "tracer", "postgresql": "oops"}
    assert served.connections(tenant, "tracer", key).status_code == 404  # never a 5xx

    served.overrides.clear()
    original = served.documents

    def unreachable(t: str, p: str) -> None:
        raise ConnectionError("the credential store is unreachable")

    served.documents = unreachable  # type: ignore[method-assign]
    try:
        other = world.new_tenant("out")
        world.onboard(other, "tracer:SCHEMA")
        response = served.connections(other, "tracer", key)
        assert response.status_code == 503 and "unreachable" not in response.text
    finally:
        served.documents = original  # type: ignore[method-assign]

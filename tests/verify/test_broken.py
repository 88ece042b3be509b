"""Deliberately broken tenants: verify names the failing check, and the CLI exits 1.

Each test provisions its own throwaway tenants from the plan, breaks one thing the
way an operator's stray command would, and is cleaned up afterwards.
"""

from __future__ import annotations

import json
from pathlib import Path
from urllib.parse import quote

import psycopg
import pytest
import typer
from psycopg import sql

from tenant_infra.errors import InvalidInput
from tenant_infra.verify import verify_tenant
from tenant_infra.verify.cli import verify

#: Any stack file of another tenant lends only its platform block (local services).
DEV_PLATFORM = Path(__file__).resolve().parents[2] / "stacks" / "Pulumi.dev.yaml"


def failing(report) -> dict[str, str]:
    (service,) = report.services
    return {c.name: c.reason for c in service.checks if not c.ok}


def test_public_left_with_connect_on_a_dedicated_database(provision, admin, sql_as_admin) -> None:
    victim = provision.tenant("DATABASE", "pub")
    neighbour = provision.tenant("SCHEMA", "nb")
    sql_as_admin(
        sql.SQL("GRANT CONNECT ON DATABASE {} TO PUBLIC").format(sql.Identifier(victim.database))
    )

    mine = failing(verify_tenant(victim.tenant, connections=[victim.document], admin=admin))
    assert "PUBLIC has CONNECT" in mine.pop("pg.public_cannot_connect")
    assert "PUBLIC has CONNECT" in mine.pop("pg.no_foreign_privileges")
    assert mine == {}

    # ...and from the neighbour's side, the leak is real and named.
    theirs = failing(verify_tenant(neighbour.tenant, connections=[neighbour.document], admin=admin))
    assert victim.database in theirs.pop("pg.cannot_connect_other_databases")
    assert theirs == {}
    psycopg.connect(**neighbour.pg(victim.database)).close()  # it does get in


def test_stray_grant_on_another_tenants_schema(provision, admin, sql_as_admin) -> None:
    victim = provision.tenant("SCHEMA", "vic")
    intruder = provision.tenant("SCHEMA", "int")
    sql_as_admin(
        sql.SQL("GRANT USAGE ON SCHEMA {} TO {}").format(
            sql.Identifier(victim.schema), sql.Identifier(intruder.role)
        ),
        "ledger",
    )

    mine = failing(verify_tenant(victim.tenant, connections=[victim.document], admin=admin))
    assert mine == {
        "pg.no_foreign_privileges": f"{intruder.role} has USAGE on schema {victim.schema}"
    }
    theirs = failing(verify_tenant(intruder.tenant, connections=[intruder.document], admin=admin))
    assert list(theirs) == ["pg.cannot_use_other_schemas"]
    assert f"has USAGE on {victim.schema}" in theirs["pg.cannot_use_other_schemas"]


def test_broker_user_with_permissions_on_two_vhosts(provision, admin, management) -> None:
    owner = provision.tenant("SCHEMA", "own")
    straddler = provision.tenant("DATABASE", "str")
    user = straddler.document["rabbitmq"]["user"]
    management(
        "PUT",
        f"permissions/{quote(owner.vhost, safe='')}/{user}",
        {"configure": ".*", "write": ".*", "read": ".*"},
    )

    theirs = failing(verify_tenant(straddler.tenant, connections=[straddler.document], admin=admin))
    assert owner.vhost in theirs.pop("rabbitmq.permissions_only_own_vhost")
    assert owner.vhost in theirs.pop("rabbitmq.cannot_open_other_vhosts")
    assert theirs == {}
    mine = failing(verify_tenant(owner.tenant, connections=[owner.document], admin=admin))
    assert mine == {
        "rabbitmq.no_foreign_permissions": f"vhost {owner.vhost} is open to user(s) of others: {user}"
    }


def test_tenant_role_with_createrole(provision, admin, sql_as_admin) -> None:
    tenant = provision.tenant("SCHEMA", "cr")
    sql_as_admin(sql.SQL("ALTER ROLE {} CREATEROLE").format(sql.Identifier(tenant.role)))
    found = failing(verify_tenant(tenant.tenant, connections=[tenant.document], admin=admin))
    assert found == {"pg.role_attributes": f"role {tenant.role} has CREATEROLE"}


def test_a_missing_limit_is_a_failing_check(provision, admin, sql_as_admin) -> None:
    tenant = provision.tenant("DATABASE", "lim")
    sql_as_admin(
        sql.SQL("ALTER DATABASE {} CONNECTION LIMIT -1").format(sql.Identifier(tenant.database))
    )
    found = failing(verify_tenant(tenant.tenant, connections=[tenant.document], admin=admin))
    assert list(found) == ["pg.limits"]
    assert f"database {tenant.database} has no connection limit" in found["pg.limits"]


def test_cli_exits_1_naming_the_check_and_never_prints_a_password(
    provision, sql_as_admin, write_document, monkeypatch, capsys
) -> None:
    tenant = provision.tenant("SCHEMA", "cli")
    sql_as_admin(sql.SQL("ALTER ROLE {} CREATEDB").format(sql.Identifier(tenant.role)))
    path = write_document(tenant.document)
    monkeypatch.setenv("TENANT_INFRA_RABBITMQ_PASSWORD", "guest")
    with pytest.raises(typer.Exit) as exit_info:
        verify(tenant.tenant, connections=[path], stack_config=DEV_PLATFORM, format="json")
    assert exit_info.value.exit_code == 1
    out = capsys.readouterr().out
    document = json.loads(out)
    (service,) = document["services"]
    assert [c["name"] for c in service["checks"] if c["status"] == "fail"] == ["pg.role_attributes"]
    for password in tenant.passwords.values():
        assert password not in out


def test_cli_passes_on_a_good_tenant_from_a_connections_file(
    fleet, write_document, monkeypatch, capsys
) -> None:
    tenant = fleet["s2"]
    monkeypatch.setenv("TENANT_INFRA_RABBITMQ_PASSWORD", "guest")
    # The platform (admin endpoints) from the dev stack file; the documents from the file.
    verify(tenant.tenant, connections=[write_document(tenant.document)], stack_config=DEV_PLATFORM)
    out = capsys.readouterr().out
    assert "pg.cannot_use_other_schemas" in out and "verified" in out
    assert tenant.document["postgresql"]["password"] not in out


def test_cli_refuses_a_document_of_another_tenant(fleet, write_document) -> None:
    with pytest.raises(InvalidInput, match="is for tenant"):
        verify("someone-else", connections=[write_document(fleet["s1"].document)])


def test_management_rights_unread_are_a_skip_never_a_pass(provision, admin) -> None:
    """Without the admin, a refused ``whoami`` proves nothing (an unknown user is
    refused too), and the tags were not read; with it, a user that does not exist fails."""
    tenant = provision.tenant("SCHEMA", "mgmt")
    (service,) = verify_tenant(tenant.tenant, connections=[tenant.document], admin=None).services
    check = next(c for c in service.checks if c.name == "rabbitmq.no_management_rights")
    assert check.to_json()["status"] == "skip" and "tags not read" in check.reason
    import requests

    user = tenant.document["rabbitmq"]["user"]
    gone = requests.delete(f"http://127.0.0.1:15672/api/users/{quote(user, safe='')}", auth=("guest", "guest"), timeout=10)
    assert gone.ok
    (service,) = verify_tenant(tenant.tenant, connections=[tenant.document], admin=None).services
    check = next(c for c in service.checks if c.name == "rabbitmq.no_management_rights")
    assert check.to_json()["status"] == "skip"  # refused as any unknown user is: no pass
    found = failing(verify_tenant(tenant.tenant, connections=[tenant.document], admin=admin))
    assert "HTTP 404" in found["rabbitmq.no_management_rights"]

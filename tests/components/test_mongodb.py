"""MongoUser under mocks (Atlas and self-hosted) and the self-hosted provider's logic."""

from __future__ import annotations

import os

import pytest

from tenant_infra.components.mongodb import SelfHostedUserProvider

ATLAS_USER = "mongodbatlas:index/databaseUser:DatabaseUser"
SELF_HOSTED_USER = "pulumi-python:dynamic/tenant:MongoUser"


def test_atlas_user_reaches_only_the_tenant_database_on_one_cluster(plan_for) -> None:
    plan = plan_for("acme", ["ledger:DATABASE"])
    (user,) = plan.of_type(ATLAS_USER)
    assert user.inputs["username"] == "ledger_acme__a"
    assert user.inputs["authDatabaseName"] == "admin"
    assert user.inputs["roles"] == [{"roleName": "readWrite", "databaseName": "acme"}]
    # Without scopes Atlas grants the user every cluster in the project.
    assert user.inputs["scopes"] == [{"name": "tenants-eu", "type": "CLUSTER"}]
    assert user.inputs["password"] == "[secret]"
    atlas = plan.by_name("acme-atlas-admin")
    assert atlas.inputs["privateKey"] == "[secret]" and atlas.inputs["publicKey"] == "[secret]"


def test_self_hosted_user_is_created_in_the_tenant_database(plan_for) -> None:
    plan = plan_for("globex", ["ledger:SCHEMA"])
    (user,) = plan.of_type(SELF_HOSTED_USER)
    assert (user.inputs["database"], user.inputs["username"]) == ("globex", "ledger_globex__a")
    assert user.inputs["password"] == "[secret]"
    assert "__provider" in user.secret_inputs
    assert "admin_password" not in user.inputs  # read from the environment at run time


def test_products_without_mongodb_get_no_user(plan_for) -> None:
    plan = plan_for("globex", ["tracer:SCHEMA"])
    assert not plan.of_type(SELF_HOSTED_USER) and not plan.of_type(ATLAS_USER)


def test_diff_replaces_when_identity_changes_and_updates_password_in_place() -> None:
    provider = SelfHostedUserProvider()
    old = {
        "host": "m",
        "port": 27017,
        "database": "acme",
        "username": "ledger_acme",
        "password": "a",
    }
    assert provider.diff("id", old, dict(old)).changes is False
    rotated = provider.diff("id", old, old | {"password": "b"})
    assert rotated.changes and not rotated.replaces
    moved = provider.diff("id", old, old | {"database": "acme2"})
    assert moved.replaces == ["database"]


@pytest.mark.skipif(not os.environ.get("MONGODB_URL"), reason="MONGODB_URL is not set")
def test_self_hosted_user_against_a_real_server() -> None:  # pragma: no cover - needs MongoDB
    import uuid
    from urllib.parse import urlsplit

    from pymongo import MongoClient

    url = urlsplit(os.environ["MONGODB_URL"])
    os.environ.setdefault("TENANT_INFRA_MONGODB_PASSWORD", url.password or "")
    tenant = f"t{uuid.uuid4().hex[:10]}"
    props = {
        "host": url.hostname,
        "port": url.port or 27017,
        "admin_user": url.username or "admin",
        "auth_source": "admin",
        "tls": False,
        "database": tenant,
        "username": f"ledger_{tenant}",
        "password": uuid.uuid4().hex,
    }
    provider = SelfHostedUserProvider()
    provider.create(props)
    try:
        with MongoClient(
            host=props["host"],
            port=props["port"],
            username=props["username"],
            password=props["password"],
            authSource=tenant,
        ) as client:
            client[tenant]["probe"].insert_one({"ok": 1})
            with pytest.raises(Exception, match="not authorized"):
                client["other-tenant"]["probe"].insert_one({"ok": 1})
    finally:
        provider.delete("id", props)

"""MongoDB and Vault checks against real servers: run when MONGODB_URL / VAULT_ADDR
(+ VAULT_TOKEN) are set, skipped otherwise (the deciding logic is in test_command.py)."""

from __future__ import annotations

import os
import secrets

import pytest
import requests

from tenant_infra.verify.connections import VaultAccess, load_connections
from tenant_infra.verify.mongodb import mongodb_checks
from tenant_infra.verify.vault import vault_checks


def _doc(tenant: str, mongodb: dict | None = None) -> dict:
    key = tenant.replace("-", "_")
    doc = {
        "tenant": tenant,
        "product": "reporter",
        "isolation": "SCHEMA",
        "postgresql": {
            "host": "127.0.0.1",
            "port": 5432,
            "database": "reporter",
            "schema": f"tenant_{key}",
            "user": f"reporter_{key}",
            "password": "x",
        },
    }
    if mongodb:
        doc["mongodb"] = mongodb
    return doc


@pytest.mark.skipif(not os.environ.get("MONGODB_URL"), reason="MONGODB_URL is not set")
def test_mongodb_user_reaches_only_its_database() -> None:
    from pymongo import MongoClient, uri_parser

    url = os.environ["MONGODB_URL"]
    tenant = f"tv{secrets.token_hex(3)}-mongo"
    user, password = f"reporter_{tenant.replace('-', '_')}", secrets.token_urlsafe(18)
    parsed = uri_parser.parse_uri(url)
    host, port = parsed["nodelist"][0]
    with MongoClient(url) as admin:
        admin[tenant].command(
            "createUser", user, pwd=password, roles=[{"role": "readWrite", "db": tenant}]
        )
        try:
            doc = load_connections(
                _doc(
                    tenant,
                    {
                        "host": host,
                        "port": port,
                        "database": tenant,
                        "user": user,
                        "password": password,
                        "authSource": tenant,
                    },
                )
            )[0]
            results = {r.name: r for r in mongodb_checks(doc)}
            assert all(r.ok and not r.skipped for r in results.values()), results
            admin[tenant].command("grantRolesToUser", user, roles=[{"role": "read", "db": "admin"}])
            results = {r.name: r for r in mongodb_checks(doc)}
            assert not results["mongodb.only_own_database"].ok
        finally:
            admin[tenant].command("dropUser", user)
            admin.drop_database(tenant)


@pytest.mark.skipif(
    not (os.environ.get("VAULT_ADDR") and os.environ.get("VAULT_TOKEN")),
    reason="VAULT_ADDR/VAULT_TOKEN are not set",
)
def test_vault_policy_reads_only_its_own_path() -> None:
    from tenant_infra.components.vault import read_policy

    access = VaultAccess(
        os.environ["VAULT_ADDR"].rstrip("/"),
        os.environ["VAULT_TOKEN"],
        os.environ.get("TENANT_INFRA_VAULT_MOUNT", "secret"),
    )
    tenant = f"tv{secrets.token_hex(3)}-vault"
    secret, policy = f"tenants/{tenant}/reporter", f"tenant-{tenant}-reporter"

    def call(method: str, path: str, body: dict | None = None) -> requests.Response:
        return requests.request(
            method,
            f"{access.address}/v1/{path}",
            json=body,
            timeout=10,
            headers={"X-Vault-Token": access.token},
        )

    call("POST", f"{access.mount}/data/{secret}", {"data": {"k": "v"}})
    call("PUT", f"sys/policies/acl/{policy}", {"policy": read_policy(access.mount, secret)})
    try:
        doc = load_connections(_doc(tenant))[0]
        results = {r.name: r for r in vault_checks(doc, access)}
        assert all(r.ok and not r.skipped for r in results.values()), results
        wide = (
            read_policy(access.mount, secret)
            + f'path "{access.mount}/data/tenants/*" {{ capabilities = ["read"] }}\n'
        )
        call("PUT", f"sys/policies/acl/{policy}", {"policy": wide})
        results = {r.name: r for r in vault_checks(doc, access)}
        assert not results["vault.policy_reads_only_own_path"].ok
    finally:
        call("DELETE", f"sys/policies/acl/{policy}")
        call("DELETE", f"{access.mount}/metadata/{secret}")

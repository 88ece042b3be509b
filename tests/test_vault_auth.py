"""A product instance's login to the real Vault with its service's AppRole: it reads its
own secret and is refused every other. Runs when ``VAULT_ADDR`` and ``VAULT_TOKEN`` (a
token that may mount, write policies and manage roles) are set; skipped otherwise.

The policies and roles applied are the offline plan's own inputs, so a role that grants
another service's policy, or a policy reaching further, fails here; the Vault calls are
the ones README's "How a product instance logs in to Vault" shows, made with
:mod:`tenant_infra.vaultclient` (no proxy, no redirect).
"""

from __future__ import annotations

import copy
import os
import re
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from tenant_infra.config import TenantConfig, read_stack_file
from tenant_infra.errors import BackendUnavailable
from tenant_infra.plan import Plan, plan
from tenant_infra.tenant import TenantNames
from tenant_infra.vaultclient import VaultAccess, read_secret, session

pytestmark = pytest.mark.skipif(
    not (os.environ.get("VAULT_ADDR") and os.environ.get("VAULT_TOKEN")),
    reason="VAULT_ADDR/VAULT_TOKEN are not set",
)

DEV = Path(__file__).resolve().parent.parent / "stacks" / "Pulumi.dev.yaml"
ROLE_TYPE = "vault:appRole/authBackendRole:AuthBackendRole"


def call(
    token: str,
    method: str,
    path: str,
    body: dict[str, Any] | None = None,
    headers: dict[str, str] | None = None,
) -> requests.Response:
    return session().request(
        method,
        f"{os.environ['VAULT_ADDR'].rstrip('/')}/v1/{path}",
        headers={"X-Vault-Token": token, **(headers or {})},
        json=body,
        timeout=10,
        allow_redirects=False,
    )


def admin(method: str, path: str, body: dict[str, Any] | None = None) -> requests.Response:
    response = call(os.environ["VAULT_TOKEN"], method, path, body)
    assert response.status_code < 400, (method, path, response.status_code, response.text)
    return response


def tenant_plan(tenant: str, kv: str, approle: str) -> Plan:
    """The dev stack's platform, on this test's own mounts."""
    values = copy.deepcopy(read_stack_file(DEV))
    vault = values["tenant-infra:platform"]["vault"]
    vault |= {
        "kvMount": kv,
        "auth": {"method": "approle", "mount": approle, "secretIdTtl": 600},
    }
    values["tenant-infra:tenant"] = tenant
    values["tenant-infra:services"] = [
        {"product": "ledger", "isolation": "SCHEMA"},
        {"product": "tracer", "isolation": "SCHEMA"},
    ]
    return plan(TenantConfig.from_pulumi_values(values))


def apply_vault(planned: Plan) -> None:
    """The plan's policies and roles as the upstream provider writes them; each secret
    holds a marker naming it."""
    for policy in planned.of_type("vault:index/policy:Policy"):
        admin(
            "PUT", f"sys/policies/acl/{policy.inputs['name']}", {"policy": policy.inputs["policy"]}
        )
    for secret in planned.of_type("vault:kv/secretV2:SecretV2"):
        name, mount = secret.inputs["name"], secret.inputs["mount"]
        admin("POST", f"{mount}/data/{name}", {"data": {"marker": name}})
    for role in planned.of_type(ROLE_TYPE):
        inputs = dict(role.inputs)
        path = f"auth/{inputs.pop('backend')}/role/{inputs.pop('roleName')}"
        admin(
            "POST", path, {re.sub(r"(?<!^)(?=[A-Z])", "_", k).lower(): v for k, v in inputs.items()}
        )


@pytest.fixture
def vault() -> Iterator[tuple[str, str, list[Plan]]]:
    token = secrets.token_hex(3)
    kv, approle = f"kv-auth-{token}", f"approle-{token}"
    admin("POST", f"sys/mounts/{kv}", {"type": "kv", "options": {"version": "2"}})
    admin("POST", f"sys/auth/{approle}", {"type": "approle"})
    plans = [tenant_plan(f"va{token}-{side}", kv, approle) for side in ("a", "b")]
    try:
        for planned in plans:
            apply_vault(planned)
        yield kv, approle, plans
    finally:
        call(os.environ["VAULT_TOKEN"], "DELETE", f"sys/auth/{approle}")
        call(os.environ["VAULT_TOKEN"], "DELETE", f"sys/mounts/{kv}")
        for planned in plans:
            for policy in planned.of_type("vault:index/policy:Policy"):
                call(
                    os.environ["VAULT_TOKEN"], "DELETE", f"sys/policies/acl/{policy.inputs['name']}"
                )


def login(approle: str, role: str) -> dict[str, Any]:
    """What the pipeline and the instance do: the RoleID read, a SecretID issued wrapped,
    unwrapped by the instance (once only), and the login."""
    role_id = admin("GET", f"auth/{approle}/role/{role}/role-id").json()["data"]["role_id"]
    wrapped = call(
        os.environ["VAULT_TOKEN"],
        "POST",
        f"auth/{approle}/role/{role}/secret-id",
        headers={"X-Vault-Wrap-TTL": "60s"},
    )
    assert wrapped.status_code == 200, wrapped.text
    wrapping_token = wrapped.json()["wrap_info"]["token"]
    assert "data" not in wrapped.json() or not wrapped.json()["data"]  # nothing in the clear
    unwrapped = call(wrapping_token, "POST", "sys/wrapping/unwrap")
    assert unwrapped.status_code == 200, unwrapped.text
    secret_id = unwrapped.json()["data"]["secret_id"]
    # A wrapping token opens once: an interceptor who used it first shows up here.
    assert call(wrapping_token, "POST", "sys/wrapping/unwrap").status_code >= 400
    answer = session().post(
        f"{os.environ['VAULT_ADDR'].rstrip('/')}/v1/auth/{approle}/login",
        json={"role_id": role_id, "secret_id": secret_id},
        timeout=10,
        allow_redirects=False,
    )
    assert answer.status_code == 200, answer.text
    return dict(answer.json()["auth"])


def test_a_services_role_reads_its_own_secret_and_is_refused_every_other(vault) -> None:
    kv, approle, (mine, theirs) = vault
    names = TenantNames(mine.tenant).service("ledger")
    auth = login(approle, names.vault_auth_role)
    assert auth["token_policies"] == [names.vault_policy]  # no default policy either
    starter = 900  # the dev stack's tier: vault_token_ttl_s
    assert auth["lease_duration"] == starter
    access = VaultAccess(os.environ["VAULT_ADDR"].rstrip("/"), auth["client_token"], kv)
    assert read_secret(access, names.vault_secret) == {"marker": names.vault_secret}
    others = [
        TenantNames(mine.tenant).service("tracer").vault_secret,  # its tenant's other service
        TenantNames(theirs.tenant).service("ledger").vault_secret,  # another tenant's, same product
    ]
    for other in others:
        with pytest.raises(BackendUnavailable, match="HTTP 403"):
            read_secret(access, other)
    token = auth["client_token"]
    assert (
        call(token, "POST", f"auth/{approle}/role/{names.vault_auth_role}/secret-id").status_code
        == 403
    )
    assert call(token, "GET", "sys/policies/acl").status_code == 403
    # The token holds itself (renew, look up) in place of the default policy, never past its max.
    assert call(token, "POST", "auth/token/renew-self", {"increment": "999999s"}).status_code == 200
    ttl = call(token, "GET", "auth/token/lookup-self").json()["data"]["ttl"]
    assert 0 < ttl <= 3600  # the starter tier's vault_token_max_ttl_s
    assert call(token, "POST", "auth/token/revoke-self").status_code == 204
    with pytest.raises(BackendUnavailable, match="HTTP 403"):
        read_secret(access, names.vault_secret)


def test_no_role_of_one_tenant_logs_in_as_another(vault) -> None:
    """A RoleID is per role: one tenant's RoleID with another's SecretID is refused."""
    _kv, approle, (mine, theirs) = vault
    own = TenantNames(mine.tenant).service("ledger").vault_auth_role
    other = TenantNames(theirs.tenant).service("ledger").vault_auth_role
    role_id = admin("GET", f"auth/{approle}/role/{own}/role-id").json()["data"]["role_id"]
    secret_id = admin("POST", f"auth/{approle}/role/{other}/secret-id").json()["data"]["secret_id"]
    answer = session().post(
        f"{os.environ['VAULT_ADDR'].rstrip('/')}/v1/auth/{approle}/login",
        json={"role_id": role_id, "secret_id": secret_id},
        timeout=10,
        allow_redirects=False,
    )
    assert answer.status_code >= 400

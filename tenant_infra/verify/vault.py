"""Vault checks: the service's policy reads its own secret path and nothing else.

They run when ``VAULT_ADDR`` and ``VAULT_TOKEN`` are set. The policy text is read
and parsed (only ``<mount>/data|metadata/tenants/<tenant>/<product>``, read only, and
the token's hold on itself that stands in for the ``default`` policy: look itself up,
renew and revoke itself),
then enforced for real: a short-lived token holding only that policy reads its own
secret and is refused another tenant's (or a canary path no tenant can own).
"""

from __future__ import annotations

from typing import Any, Final

import requests

from tenant_infra.guardrails import TOKEN_SELF, parse_policy
from tenant_infra.tenant import TenantNames
from tenant_infra.vaultclient import VaultAccess, session
from tenant_infra.verify.checks import MAX_PROBES, CheckResult, failed, passed, skipped
from tenant_infra.verify.connections import ConnectionsDocument

#: A tenant segment no tenant can have (``_`` is outside the id grammar).
CANARY_TENANT: Final = "tenantctl_verify_canary"

VAULT_CHECKS: Final = ("vault.policy_reads_only_own_path", "vault.policy_enforced")


def policy_problems(hcl: str, mount: str, secret: str) -> list[str]:
    """What in the policy reaches beyond reading the service's own secret."""
    allowed = {
        f"{mount}/data/{secret}": frozenset({"read"}),
        f"{mount}/metadata/{secret}": frozenset({"read"}),
        **TOKEN_SELF,
    }
    rules = parse_policy(hcl)
    problems = [
        f"grants {sorted(caps)} on {path}" for path, caps in rules.items() if path not in allowed
    ]
    problems += [
        f"grants {sorted(caps - allowed[path])} on {path}"
        for path, caps in rules.items()
        if path in allowed and caps - allowed[path]
    ]
    if f"{mount}/data/{secret}" not in rules:
        problems.append(f"does not grant read on {mount}/data/{secret}")
    return problems


class _Vault:
    def __init__(self, access: VaultAccess, token: str | None = None) -> None:
        self.access, self.token = access, token or access.token

    def call(self, method: str, path: str, json: dict[str, Any] | None = None) -> requests.Response:
        return session().request(
            method,
            f"{self.access.address}/v1/{path}",
            headers={"X-Vault-Token": self.token},
            json=json,
            timeout=10,
            allow_redirects=False,  # a redirect would carry the token to another host
        )


def vault_checks(
    document: ConnectionsDocument, access: VaultAccess | None, max_probes: int = MAX_PROBES
) -> list[CheckResult]:
    if access is None:
        return [
            skipped(VAULT_CHECKS[0], "VAULT_ADDR and VAULT_TOKEN not set: Vault checks skipped")
        ]
    names = TenantNames(document.tenant).service(document.product)
    mount, secret, policy = access.mount, names.vault_secret, names.vault_policy
    admin = _Vault(access)
    try:
        response = admin.call("GET", f"sys/policies/acl/{policy}")
    except requests.RequestException as exc:
        return [failed(VAULT_CHECKS[0], f"Vault unreachable: {type(exc).__name__}")]
    if response.status_code != 200:
        return [failed(VAULT_CHECKS[0], f"reading policy {policy}: HTTP {response.status_code}")]
    problems = policy_problems(response.json()["data"]["policy"], mount, secret)
    results = [
        failed(VAULT_CHECKS[0], f"policy {policy} " + "; ".join(problems))
        if problems
        else passed(VAULT_CHECKS[0], f"policy {policy} reads {mount}/data/{secret} only")
    ]
    try:
        results.append(_enforced(admin, document, policy, max_probes))
    except requests.RequestException as exc:
        results.append(failed(VAULT_CHECKS[1], f"Vault unreachable: {type(exc).__name__}"))
    return results


def _enforced(
    admin: _Vault, document: ConnectionsDocument, policy: str, max_probes: int
) -> CheckResult:
    name, mount = VAULT_CHECKS[1], admin.access.mount
    own = TenantNames(document.tenant).service(document.product).vault_secret
    listing = admin.call("LIST", f"{mount}/metadata/tenants")
    others = [
        k.rstrip("/")
        for k in (
            listing.json().get("data", {}).get("keys", []) if listing.status_code == 200 else []
        )
    ]
    others = [t for t in others if t != document.tenant][:max_probes] or [CANARY_TENANT]
    created = admin.call(
        "POST",
        "auth/token/create",
        {
            "policies": [policy],
            "no_default_policy": True,
            "ttl": "2m",
            "renewable": False,
        },
    )
    if created.status_code != 200:
        return failed(
            name, f"cannot create a token with policy {policy}: HTTP {created.status_code}"
        )
    child = _Vault(admin.access, created.json()["auth"]["client_token"])
    try:
        problems = []
        status = child.call("GET", f"{mount}/data/{own}").status_code
        if status != 200:
            problems.append(f"reading its own secret gave HTTP {status}")
        for tenant in others:
            path = f"{mount}/data/tenants/{tenant}/{document.product}"
            status = child.call("GET", path).status_code
            if status != 403:
                problems.append(f"reading {path} gave HTTP {status}, not 403")
    finally:
        child.call("POST", "auth/token/revoke-self")
    if problems:
        return failed(name, "; ".join(problems))
    return passed(
        name,
        f"a token with only {policy} read its secret and was refused {len(others)} other path(s)",
    )

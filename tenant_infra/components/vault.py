"""Vault: each service's credentials in one KV v2 secret, readable by one policy,
which the service's auth role puts, alone, on the tokens its instances log in for.

The secret's JSON is the service's *connections document* (documented in README.md):
the same shape ``tenantctl verify --connections FILE`` reads, so what the service
gets from Vault is exactly what an operator can check by hand.

The auth role lives on a mount the platform program enables once per Vault
(``platform.vault.auth.mount``); a tenant stack only declares roles on it:

- **AppRole** (the default). The stack declares the role and exports its RoleID, an
  identifier rather than a credential (``services.<product>.vault.auth.roleId``). It
  declares no SecretID: a SecretID is a credential, and one made by the stack would sit
  in its state and pass through every preview. The deployment pipeline issues one per
  product instance, response-wrapped, so that only the instance ever sees it unwrapped
  and a wrapping token used twice shows the interception (README, "How a product
  instance logs in to Vault").
- **Kubernetes**. The role admits one service account of one namespace (the platform's
  binding for the product); the pod's own service account token is its credential.

Either way the token carries the service's policy and nothing else: no ``default``
policy (``token_no_default_policy``), whose content the platform may edit; the service's
policy grants what the default one would have been needed for (looking up, renewing
and revoking the token itself). Its TTL and max TTL are the tier's
(``vault_token_ttl_s``, ``vault_token_max_ttl_s``). A suspended service has no role:
no instance can log in, every SecretID issued for it is gone with it, and a token
already out lasts its TTL at most, unrenewable past its max TTL.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, Final

import pulumi
import pulumi_vault as vault

from tenant_infra.catalog import Limits
from tenant_infra.components import PACKAGE
from tenant_infra.config import AppRoleAuth, KubernetesAuth
from tenant_infra.tenant import ServiceNames

#: What a token may do to itself, in place of the ``default`` policy it does not carry:
#: look itself up, renew itself (never past its max TTL) and revoke itself.
TOKEN_SELF: Final[Mapping[str, str]] = {
    "auth/token/lookup-self": "read",
    "auth/token/renew-self": "update",
    "auth/token/revoke-self": "update",
}


def read_policy(mount: str, secret: str) -> str:
    """HCL granting read on one KV v2 secret (its data and its metadata) and a token's
    hold on itself (:data:`TOKEN_SELF`), nothing else."""
    paths = {f"{mount}/data/{secret}": "read", f"{mount}/metadata/{secret}": "read"}
    return "".join(
        f'path "{path}" {{\n  capabilities = ["{cap}"]\n}}\n'
        for path, cap in (paths | dict(TOKEN_SELF)).items()
    )


def auth_role(
    name: str,
    names: ServiceNames,
    policy: pulumi.Input[str],
    auth: AppRoleAuth | KubernetesAuth,
    limits: Limits,
    opts: pulumi.ResourceOptions,
) -> vault.approle.AuthBackendRole | vault.kubernetes.AuthBackendRole:
    """The service's role on the platform's auth mount: tokens with ``policy`` only, for
    the tier's TTLs."""
    token: dict[str, Any] = {
        "backend": auth.mount,
        "role_name": names.vault_auth_role,
        "token_policies": [policy],
        "token_no_default_policy": True,
        "token_type": "service",
        "token_ttl": limits.vault_token_ttl_s,
        "token_max_ttl": limits.vault_token_max_ttl_s,
        "token_bound_cidrs": list(auth.token_bound_cidrs) or None,
    }
    if isinstance(auth, AppRoleAuth):
        return vault.approle.AuthBackendRole(
            f"{name}-approle-role",
            bind_secret_id=True,
            secret_id_ttl=auth.secret_id_ttl,
            secret_id_num_uses=auth.secret_id_num_uses,
            secret_id_bound_cidrs=list(auth.secret_id_bound_cidrs) or None,
            opts=opts,
            **token,
        )
    namespace, account = auth.binding_for(names.product).render(names)
    return vault.kubernetes.AuthBackendRole(
        f"{name}-kubernetes-role",
        bound_service_account_names=[account],
        bound_service_account_namespaces=[namespace],
        audience=auth.audience,
        opts=opts,
        **token,
    )


class ServiceCredentials(pulumi.ComponentResource):
    """The service's secret at ``<mount>/tenants/<tenant>/<product>``, its read policy,
    and its auth role (none while the service is suspended)."""

    path: pulumi.Output[str]
    policy_name: pulumi.Output[str]
    #: Non-secret facts: ``path``, ``policy``, and ``auth`` (``method``, ``mount``,
    #: ``role``, and for AppRole ``roleId``) when the service has a role.
    info: pulumi.Output[dict[str, Any]]

    def __init__(
        self,
        name: str,
        names: ServiceNames,
        mount: str,
        document: pulumi.Output[dict[str, Any]],
        provider: vault.Provider,
        opts: pulumi.ResourceOptions | None = None,
        *,
        auth: AppRoleAuth | KubernetesAuth,
        limits: Limits,
        suspended: bool = False,
    ) -> None:
        super().__init__(f"{PACKAGE}:vault:ServiceCredentials", name, None, opts)
        child = pulumi.ResourceOptions(parent=self, provider=provider)
        secret = vault.kv.SecretV2(
            f"{name}-secret",
            mount=mount,
            name=names.vault_secret,
            # On destroy, every version goes: old versions hold old credentials.
            delete_all_versions=True,
            data_json=pulumi.Output.secret(document.apply(json.dumps)),  # type: ignore[arg-type]
            custom_metadata=vault.kv.SecretV2CustomMetadataArgs(
                max_versions=10,
                data={"tenant": names.tenant, "product": names.product},
            ),
            opts=child,
        )
        policy = vault.Policy(
            f"{name}-policy",
            name=names.vault_policy,
            policy=read_policy(mount, names.vault_secret),
            opts=child,
        )
        self.path = pulumi.Output.concat(mount, "/", secret.name)
        self.policy_name = policy.name
        info: dict[str, Any] = {"path": self.path, "policy": self.policy_name}
        if not suspended:
            role = auth_role(name, names, policy.name, auth, limits, child)
            info["auth"] = {"method": auth.method, "mount": auth.mount, "role": role.role_name}
            if isinstance(role, vault.approle.AuthBackendRole):
                info["auth"]["roleId"] = role.role_id
        self.info = pulumi.Output.from_input(info)
        self.register_outputs({"path": self.path, "policy": self.policy_name, "info": self.info})

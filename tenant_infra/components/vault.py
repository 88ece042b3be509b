"""Vault: each service's credentials in one KV v2 secret, readable by one policy.

The secret's JSON is the service's *connections document* (documented in README.md):
the same shape ``tenantctl verify --connections FILE`` reads, so what the service
gets from Vault is exactly what an operator can check by hand.
"""

from __future__ import annotations

import json
from typing import Any

import pulumi
import pulumi_vault as vault

from tenant_infra.components import PACKAGE
from tenant_infra.tenant import ServiceNames


def read_policy(mount: str, secret: str) -> str:
    """HCL granting read on one KV v2 secret: its data and its metadata, nothing else."""
    return (
        f'path "{mount}/data/{secret}" {{\n  capabilities = ["read"]\n}}\n'
        f'path "{mount}/metadata/{secret}" {{\n  capabilities = ["read"]\n}}\n'
    )


class ServiceCredentials(pulumi.ComponentResource):
    """The service's secret at ``<mount>/tenants/<tenant>/<product>`` and its read policy."""

    path: pulumi.Output[str]
    policy_name: pulumi.Output[str]

    def __init__(
        self,
        name: str,
        names: ServiceNames,
        mount: str,
        document: pulumi.Output[dict[str, Any]],
        provider: vault.Provider,
        opts: pulumi.ResourceOptions | None = None,
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
        self.register_outputs({"path": self.path, "policy": self.policy_name})

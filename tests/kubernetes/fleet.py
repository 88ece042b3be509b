"""Generated fleets of stack files for the render tests and the bench: long and odd ids,
every tier and product, both MongoDB backends, protected, unprotected and retained data."""

from __future__ import annotations

import hashlib
import random
import uuid
from pathlib import Path
from typing import Any

import yaml

PRODUCTS = ("ledger", "tracer", "reporter")
TIERS = ("starter", "standard", "enterprise")
#: Sentinel values the tests put in the platform-secret variables and then look for.
SECRET_VALUES = {
    "VAULT_TOKEN": "hvs.SENTINEL-vault-token-7f3a",
    "TENANT_INFRA_PG_PASSWORD": "SENTINEL-pg-password-91c2",
    "TENANT_INFRA_PG_PASSWORD_LEDGER": "SENTINEL-pg-ledger-4410",
    "TENANT_INFRA_RABBITMQ_PASSWORD": "SENTINEL-rabbit-password-0b7e",
    "TENANT_INFRA_MONGODB_PASSWORD": "SENTINEL-mongo-password-55aa",
    "MONGODB_ATLAS_PUBLIC_KEY": "SENTINELatlaspublic",
    "MONGODB_ATLAS_PRIVATE_KEY": "SENTINEL-atlas-private-1d9e",
    "PULUMI_CONFIG_PASSPHRASE": "SENTINEL-passphrase-c0ffee",
    "PULUMI_ACCESS_TOKEN": "pul-SENTINEL-access-token",
    "PGPASSWORD": "SENTINEL-state-pg-password",
    "TENANT_INFRA_REGISTRY_PASSWORD": "SENTINEL-registry-password",
}


def tenant_id(index: int) -> str:
    """Ids of every shape: short slugs, 40-character ones sharing long prefixes, UUIDs."""
    match index % 5:
        case 0:
            return f"t{index}"
        case 1:  # 40 characters, the first 30 shared by every such id: only the end differs
            return f"{'long-tenant-prefix-shared-by-all'[:30]}-{index:09d}"
        case 2:
            return str(uuid.UUID(hashlib.md5(str(index).encode()).hexdigest()))
        case 3:  # 35 characters: the first length that needs a hash
            return f"x{index:034d}"
        case _:
            return f"a-{index}-b-{index % 7}"


def platform(atlas: bool) -> dict[str, Any]:
    mongo: dict[str, Any] = (
        {
            "backend": "atlas",
            "projectId": "65a1f0c2e4b0a1b2c3d4e5f6",
            "clusterName": "tenants-eu",
            "host": "tenants-eu.abcde.mongodb.net",
        }
        if atlas
        else {"backend": "self-hosted", "host": "mongo.internal"}
    )
    return {
        "postgres": {"default": {"host": "pg.internal", "adminUser": "tenant_admin"}},
        "rabbitmq": {
            "managementUrl": "https://rabbitmq.internal:15671",
            "adminUser": "tenant-provisioner",
            "amqpHost": "rabbitmq.internal",
        },
        "vault": {"address": "https://vault.internal:8200"},
        "mongodb": mongo,
    }


def stack_config(tenant: str, index: int) -> dict[str, Any]:
    """One tenant's stack file: choices spread by ``index``, reproducibly."""
    rng = random.Random(index)
    products = rng.sample(PRODUCTS, rng.randint(0, len(PRODUCTS)))
    services = [
        {"product": p, "isolation": rng.choice(["SCHEMA", "DATABASE"])}
        | ({"removal": "retain"} if rng.random() < 0.1 else {})
        for p in products
    ]
    config: dict[str, Any] = {
        "tenant-infra:tenant": tenant,
        "tenant-infra:tier": TIERS[index % len(TIERS)],
        "tenant-infra:metadata": {"name": f"Tenant {index}"},
        "tenant-infra:services": services,
        "tenant-infra:platform": platform(atlas=index % 2 == 0),
    }
    if rng.random() < 0.5:
        config["tenant-infra:protectData"] = False
    return {"config": config}


def write_fleet(root: Path, count: int) -> list[str]:
    """``count`` tenants' stack files under ``root/stacks`` (and a Pulumi.yaml)."""
    stacks = root / "stacks"
    stacks.mkdir(parents=True, exist_ok=True)
    (root / "Pulumi.yaml").write_text("name: tenant-infra\nruntime: python\n")
    dumper = getattr(yaml, "CSafeDumper", yaml.SafeDumper)
    tenants = []
    for index in range(count):
        tenant = tenant_id(index)
        text = yaml.dump(stack_config(tenant, index), Dumper=dumper, sort_keys=False)
        (stacks / f"Pulumi.{tenant}.yaml").write_text(text)
        tenants.append(tenant)
    return tenants

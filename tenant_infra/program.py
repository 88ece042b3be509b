"""The one Pulumi program of a tenant stack.

``pulumi up`` runs it through ``__main__.py``, the Automation API passes it as the
inline program, and ``tenantctl plan`` evaluates it under the mock runtime. All
three read the same stack config through :func:`read_config`.
"""

from __future__ import annotations

import difflib
from typing import Any

import pulumi

from tenant_infra.components.platform import (
    AuthMount,
    CredentialsMount,
    ProductDatabase,
    close_maintenance_databases,
)
from tenant_infra.components.providers import Providers
from tenant_infra.components.registry import RegistryDatabase
from tenant_infra.components.tenant import Tenant
from tenant_infra.config import NAMESPACE, PlatformConfig, TenantConfig
from tenant_infra.credentials import PlatformCredentials
from tenant_infra.errors import InvalidInput

#: Keys of the ``tenant-infra`` config namespace, as written in stack files.
CONFIG_KEYS = (
    "tenant",
    "tier",
    "metadata",
    "services",
    "limits",
    "protectData",
    "platform",
    "products",
    "registry",
    "events",
)
SCALAR_KEYS = frozenset({"tenant", "tier"})


def _present_keys() -> set[str]:
    """Every ``tenant-infra:*`` key the engine passed, set or not by this program: the
    CLI passes them in ``PULUMI_CONFIG``, the Automation API and the mocks set them."""
    from pulumi.runtime import config as runtime

    passed = set(runtime.get_config_env()) | set(runtime.CONFIG.get() or {})
    return {key.split(":", 1)[1] for key in passed if key.startswith(NAMESPACE + ":")}


def _refuse_unknown_keys() -> None:
    """A typo'd key (``limit``, ``protectdata``) would otherwise be dropped without a
    word, and an operator would believe an override is in force."""
    unknown = sorted(_present_keys() - set(CONFIG_KEYS))
    if unknown:
        close = difflib.get_close_matches(unknown[0], CONFIG_KEYS, n=1)
        hint = f" (did you mean {NAMESPACE}:{close[0]}?)" if close else ""
        raise InvalidInput(
            f"config: unknown key {NAMESPACE}:{unknown[0]}{hint}; known: {', '.join(CONFIG_KEYS)}"
        )


def _config_values() -> dict[str, Any]:
    """The stack's ``tenant-infra:*`` config, objects decoded, scalars kept as strings."""
    _refuse_unknown_keys()
    config = pulumi.Config(NAMESPACE)
    values: dict[str, Any] = {}
    for key in CONFIG_KEYS:
        raw = config.get(key)
        if raw is None:
            continue
        # Scalars stay strings: a tenant id such as "0042" must not become the number 42.
        values[f"{NAMESPACE}:{key}"] = raw if key in SCALAR_KEYS else config.get_object(key)
    return values


def read_config() -> TenantConfig:
    """The stack's config as a validated model (raises InvalidInput on the first problem)."""
    data = TenantConfig.from_pulumi_values(_config_values())
    if data.tenant != pulumi.get_stack():
        raise InvalidInput(
            f"config tenant {data.tenant!r} does not match stack {pulumi.get_stack()!r} "
            "(one stack per tenant, named after the tenant id)"
        )
    return data


def tenant_program(credentials: PlatformCredentials | None = None) -> Tenant:
    """Declare the tenant's resources and export their non-secret outputs."""
    try:
        config = read_config()
        tenant = Tenant(config, credentials or PlatformCredentials())
    except InvalidInput as exc:
        raise pulumi.RunError(str(exc)) from None
    pulumi.export("tenant", config.tenant)
    pulumi.export("metadata", config.metadata)
    pulumi.export("services", tenant.outputs())
    return tenant


def platform_program(credentials: PlatformCredentials | None = None) -> dict[str, Any]:
    """Declare the shared pieces every tenant relies on (the ``platform/`` project)."""
    try:
        config = PlatformConfig.from_pulumi_values(_config_values())
        providers = Providers("platform", config.platform, credentials or PlatformCredentials())
        databases = {
            product: ProductDatabase(product, providers, config.protect_data).name
            for product in config.products
        }
        for server, endpoint in config.platform.postgres.items():
            if endpoint.close_maintenance_databases:
                close_maintenance_databases(providers, server)
        mount = CredentialsMount(config.platform.vault.kv_mount, providers, config.protect_data)
        auth = AuthMount(config.platform.vault.auth, providers, config.protect_data)
        registry = (
            RegistryDatabase(config.registry, providers, config.protect_data)
            if config.registry is not None
            else None
        )
    except InvalidInput as exc:
        raise pulumi.RunError(str(exc)) from None
    outputs: dict[str, Any] = {
        "sharedDatabases": databases,
        "kvMount": mount.path,
        "vaultAuthMount": auth.path,
    }
    if registry is not None:
        outputs["registryDatabase"] = registry.database
    for key, value in outputs.items():
        pulumi.export(key, value)
    return outputs

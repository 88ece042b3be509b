"""One Pulumi Kubernetes Operator ``Stack`` and its config ``ConfigMap`` per tenant.

Operator facts used here, from ``pulumi/pulumi-kubernetes-operator`` (v2, the Stack CRD
in ``deploy/helm/pulumi-operator/crds/pulumi.com_stacks.yaml``, kept as a test fixture):

- ``metadata.name`` is at most 42 characters (the CRD's ``x-kubernetes-validations``);
  :attr:`tenant_infra.tenant.TenantNames.k8s_stack` derives it.
- ``spec.configRef`` maps a config key to ``{name, key, json}`` of a ConfigMap in the
  Stack's namespace; ``json: true`` sets a structured value (operator v2.3.0+, Pulumi CLI
  3.202+ in the workspace image; ``examples/structured-config``).
- ``spec.envRefs`` maps an environment variable to a ResourceRef: ``type: Secret`` with
  ``secret: {name, key}`` (a Secret of the same namespace) or ``type: Literal``.
  ``spec.secretsRef`` would set *config* secrets; the program reads no secret config (a
  stack file holding one is refused, :func:`tenant_infra.config.read_stack_file`), so
  every platform credential is an ``envRefs`` entry, as :mod:`tenant_infra.credentials`
  reads them.
- The program is baked into the workspace image and named by
  ``spec.workspaceTemplate.spec.local.dir`` (``examples/custom-source``): no git, no
  Flux, nothing installed when a pod starts (the repository's ``Dockerfile``).
- ``workspaceTemplate.spec.resources`` requests ``ephemeral-storage``: without it the
  kubelet evicts workspace pods under disk pressure (operator issue #1308).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Mapping
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final
from urllib.parse import urlsplit

from tenant_infra.catalog import Store, load_catalog
from tenant_infra.config import AtlasMongo, TenantConfig
from tenant_infra.errors import InvalidInput
from tenant_infra.tenant import TenantNames

API_VERSION: Final = "pulumi.com/v1"
#: Where the Dockerfile puts the project (``Pulumi.yaml``) inside the workspace image.
PROGRAM_DIR: Final = "/home/pulumi/tenant-infra"
#: Label keys. Selectors in the README use them: keep them stable.
LABEL_TENANT: Final = "tenant-infra/tenant"
LABEL_TIER: Final = "tenant-infra/tier"
LABEL_WAVE: Final = "tenant-infra/wave"
LABEL_PRODUCT_PREFIX: Final = "tenant-infra/product-"
LABEL_COMPONENT: Final = "app.kubernetes.io/component"
#: ``spec.workspaceTemplate.metadata.annotations``: a config change changes the Stack's
#: spec, so the operator runs the update when the Stack is applied (its wave), not when
#: the ConfigMap alone changes.
ANNOTATION_CONFIG_HASH: Final = "tenant-infra/config-sha256"
DEFAULT_SERVICE_ACCOUNT: Final = "tenant-infra"
DEFAULT_WAVE_SIZE: Final = 10
#: A failed update is retried with exponential backoff up to this (the operator's default
#: is a day; an hour keeps a fixed platform outage from leaving tenants stale that long).
RETRY_MAX_BACKOFF_SECONDS: Final = 3600
#: The workspace pod's container (the Pulumi program and its providers).
RESOURCES: Final[Mapping[str, Mapping[str, str]]] = {
    "requests": {"cpu": "500m", "memory": "1Gi", "ephemeral-storage": "2Gi"},
    "limits": {"memory": "2Gi", "ephemeral-storage": "4Gi"},
}


@dataclass(frozen=True)
class SecretRef:
    """One key of a Secret the platform team creates in the Stacks' namespace."""

    secret: str
    key: str


#: Every platform secret a tenant stack may need, by the environment variable the program
#: reads (:mod:`tenant_infra.credentials`): the one list of Secrets the README names.
PLATFORM_SECRETS: Final[Mapping[str, SecretRef]] = {
    "VAULT_TOKEN": SecretRef("tenant-infra-vault", "VAULT_TOKEN"),
    "TENANT_INFRA_PG_PASSWORD": SecretRef("tenant-infra-postgres", "TENANT_INFRA_PG_PASSWORD"),
    "TENANT_INFRA_RABBITMQ_PASSWORD": SecretRef(
        "tenant-infra-rabbitmq", "TENANT_INFRA_RABBITMQ_PASSWORD"
    ),
    "TENANT_INFRA_MONGODB_PASSWORD": SecretRef(
        "tenant-infra-mongodb", "TENANT_INFRA_MONGODB_PASSWORD"
    ),
    "MONGODB_ATLAS_PUBLIC_KEY": SecretRef("tenant-infra-mongodb", "MONGODB_ATLAS_PUBLIC_KEY"),
    "MONGODB_ATLAS_PRIVATE_KEY": SecretRef("tenant-infra-mongodb", "MONGODB_ATLAS_PRIVATE_KEY"),
    # The state backend's and the secrets provider's own credentials, when not from the
    # service account's cloud identity.
    "PULUMI_CONFIG_PASSPHRASE": SecretRef("tenant-infra-state", "PULUMI_CONFIG_PASSPHRASE"),
    "PULUMI_ACCESS_TOKEN": SecretRef("tenant-infra-state", "PULUMI_ACCESS_TOKEN"),
    "PGPASSWORD": SecretRef("tenant-infra-state", "PGPASSWORD"),
}

#: Config keys whose value is a plain string (``json: false``): a tenant id such as
#: ``0042`` must stay a string, as :func:`tenant_infra.program._config_values` reads it.
_SCALAR_KEYS: Final = frozenset({"tenant", "tier"})
_NAMESPACE: Final = "tenant-infra"

_DNS_LABEL: Final = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")
_DNS_SUBDOMAIN: Final = re.compile(
    r"(?=.{1,253}\Z)[a-z0-9](?:[a-z0-9-]*[a-z0-9])?(?:\.[a-z0-9](?:[a-z0-9-]*[a-z0-9])?)*"
)
_LABEL_VALUE: Final = re.compile(r"(?:[A-Za-z0-9](?:[A-Za-z0-9_.-]{0,61}[A-Za-z0-9])?)?")
#: An image reference as ``distribution/reference`` reads one (lowercase repository path,
#: optional registry host and port, tag and/or sha256 digest).
_IMAGE: Final = re.compile(
    r"(?:(?P<host>[a-zA-Z0-9](?:[a-zA-Z0-9.-]*[a-zA-Z0-9])?(?::[0-9]+)?)/)?"
    r"(?P<path>[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*)"
    r"(?::(?P<tag>[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}))?"
    r"(?:@(?P<digest>sha256:[0-9a-f]{64}))?"
)
#: Backends the operator's workspace can reach from a pod: not ``file://`` (a pod's disk
#: goes with it).
BACKEND_SCHEMES: Final = frozenset({"s3", "gs", "azblob", "postgres", "https"})
SECRETS_PROVIDERS: Final = frozenset(
    {"passphrase", "awskms", "gcpkms", "azurekeyvault", "hashivault"}
)


@dataclass(frozen=True)
class Target:
    """Where and how every Stack of one render runs: validated once, for the whole fleet."""

    image: str
    backend: str
    secrets_provider: str
    namespace: str
    service_account: str = DEFAULT_SERVICE_ACCOUNT

    def __post_init__(self) -> None:
        check_image(self.image)
        check_backend(self.backend)
        check_secrets_provider(self.secrets_provider)
        if not _DNS_LABEL.fullmatch(self.namespace):
            raise InvalidInput(
                f"--namespace {self.namespace!a} is not a namespace name "
                "(1..63 of a-z, 0-9 and '-', starting and ending with a letter or digit)"
            )
        if not _DNS_SUBDOMAIN.fullmatch(self.service_account):
            raise InvalidInput(
                f"--service-account {self.service_account!a} is not a service account name "
                "(a DNS subdomain: a-z, 0-9, '-' and '.')"
            )

    def state_env(self) -> list[str]:
        """The state backend's and secrets provider's variables that come from a Secret."""
        names = []
        if self.secrets_provider == "passphrase":
            names.append("PULUMI_CONFIG_PASSPHRASE")
        scheme = urlsplit(self.backend).scheme
        if scheme == "https":
            names.append("PULUMI_ACCESS_TOKEN")
        if scheme == "postgres":
            names.append("PGPASSWORD")
        return names


def check_image(image: str) -> str:
    """A pinned image: a rollout bumps its tag (or digest), so a floating one is refused."""
    match = _IMAGE.fullmatch(image) if len(image) <= 512 else None
    if match is None:
        raise InvalidInput(f"--image {image[:80]!a} is not an image reference (REPO:TAG)")
    if match["tag"] is None and match["digest"] is None:
        raise InvalidInput(f"--image {image!a} names no tag or digest: pin one (REPO:TAG)")
    if match["tag"] == "latest" and match["digest"] is None:
        raise InvalidInput(
            f"--image {image!a}: 'latest' floats, so a new program would never roll out; pin a tag"
        )
    return image


def check_backend(url: str) -> str:
    """A shared state backend, with no credential in the URL (it is written to every Stack)."""
    parts = urlsplit(url)
    if parts.scheme not in BACKEND_SCHEMES or not (parts.netloc or parts.path.strip("/")):
        known = ", ".join(f"{s}://" for s in sorted(BACKEND_SCHEMES))
        raise InvalidInput(f"--backend must be a shared state backend URL ({known})")
    if parts.password is not None or (parts.scheme != "postgres" and "@" in parts.netloc):
        raise InvalidInput(
            "--backend must not carry credentials: they come from the Secret "
            f"{PLATFORM_SECRETS['PGPASSWORD'].secret!r} (README, 'Beyond one machine')"
        )
    if "password=" in (parts.query or "").lower():
        raise InvalidInput("--backend must not carry a password")
    return url


def check_secrets_provider(url: str) -> str:
    scheme = "passphrase" if url == "passphrase" else urlsplit(url).scheme
    if scheme not in SECRETS_PROVIDERS or (url != "passphrase" and "://" not in url):
        known = ", ".join(sorted(SECRETS_PROVIDERS))
        raise InvalidInput(f"--secrets-provider must be passphrase or a KMS URL ({known}://...)")
    return url


def platform_env(config: TenantConfig) -> list[str]:
    """The platform credentials the tenant's program reads, by the stores its services use
    (:class:`tenant_infra.components.providers.Providers`): a Secret the tenant does not
    need is not referenced, so a platform without MongoDB never creates its Secret."""
    catalog = load_catalog()
    stores: set[Store] = set()
    for spec in config.services:
        stores |= catalog.product(spec.product).stores
    names = ["VAULT_TOKEN"]
    if Store.POSTGRESQL in stores:
        names.append("TENANT_INFRA_PG_PASSWORD")
    if Store.RABBITMQ in stores:
        names.append("TENANT_INFRA_RABBITMQ_PASSWORD")
    if Store.MONGODB in stores:
        if isinstance(config.platform.mongodb, AtlasMongo):
            names += ["MONGODB_ATLAS_PUBLIC_KEY", "MONGODB_ATLAS_PRIVATE_KEY"]
        else:
            names.append("TENANT_INFRA_MONGODB_PASSWORD")
    return names


def config_data(config: TenantConfig) -> dict[str, str]:
    """The validated config as ConfigMap data: one key per ``tenant-infra:`` key set,
    objects as compact JSON (sorted: the same config always gives the same bytes)."""
    # Defaults left out, as a stack file leaves them out: the program fills them in again.
    values = {"tenant": config.tenant} | config.model_dump(
        by_alias=True, mode="json", exclude_defaults=True
    )
    return {
        key: value
        if key in _SCALAR_KEYS
        else json.dumps(value, sort_keys=True, separators=(",", ":"))
        for key, value in values.items()
    }


def labels_for(config: TenantConfig, wave: int) -> dict[str, str]:
    labels = {
        "app.kubernetes.io/managed-by": "tenantctl",
        "app.kubernetes.io/part-of": "tenant-infra",
        LABEL_TENANT: config.tenant,
        LABEL_TIER: _label_value(config.tier, "tier"),
        LABEL_WAVE: str(wave),
    }
    for spec in config.services:
        labels[LABEL_PRODUCT_PREFIX + spec.product] = "true"
    return labels


def _label_value(value: str, what: str) -> str:
    if not _LABEL_VALUE.fullmatch(value) or len(value) > 63:
        raise InvalidInput(f"{what} {value!a} cannot be a Kubernetes label value")
    return value


def may_destroy(config: TenantConfig) -> bool:
    """Whether deleting the Stack may destroy the tenant's resources (``destroyOnFinalize``).

    Only when the data policy gives the data up: ``protectData: false`` and no service
    retained. A protected or retained tenant's data must outlive its Stack object.
    """
    return not config.protect_data and all(s.removal != "retain" for s in config.services)


def manifests_for(
    config: TenantConfig, target: Target, wave: int
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The tenant's ConfigMap and Stack, as Kubernetes objects."""
    names = TenantNames(config.tenant)
    labels = labels_for(config, wave)
    data = config_data(config)
    digest = hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()
    config_labels = {k: v for k, v in labels.items() if k != LABEL_WAVE}
    config_map: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": names.k8s_config_map,
            "namespace": target.namespace,
            "labels": config_labels | {LABEL_COMPONENT: "stack-config"},
        },
        "data": data,
    }
    env_refs: dict[str, Any] = {
        # Not a secret: the program sends the token only to this address, which must be
        # the stack's own platform.vault.address (credentials.vault_address).
        "VAULT_ADDR": {"type": "Literal", "literal": {"value": config.platform.vault.address}},
    }
    for variable in [*platform_env(config), *target.state_env()]:
        ref = PLATFORM_SECRETS[variable]
        env_refs[variable] = {"type": "Secret", "secret": {"name": ref.secret, "key": ref.key}}
    spec: dict[str, Any] = {
        "stack": names.stack,
        "backend": target.backend,
        "secretsProvider": target.secrets_provider,
        "serviceAccountName": target.service_account,
        "configRef": {
            f"{_NAMESPACE}:{key}": {
                "name": names.k8s_config_map,
                "key": key,
                "json": key not in _SCALAR_KEYS,
            }
            for key in data
        },
        "envRefs": env_refs,
        "workspaceReclaimPolicy": "Delete",
        "retryMaxBackoffDurationSeconds": RETRY_MAX_BACKOFF_SECONDS,
        "workspaceTemplate": {
            "metadata": {"annotations": {ANNOTATION_CONFIG_HASH: digest}},
            "spec": {
                "image": target.image,
                # The operator's default, written out: the pod runs as RUN_AS, non-root.
                "securityProfile": "restricted",
                "local": {"dir": PROGRAM_DIR},
                "resources": {k: dict(v) for k, v in RESOURCES.items()},
            },
        },
    }
    if may_destroy(config):
        spec["destroyOnFinalize"] = True
    stack: dict[str, Any] = {
        "apiVersion": API_VERSION,
        "kind": "Stack",
        "metadata": {
            "name": names.k8s_stack,
            "namespace": target.namespace,
            "labels": labels | {LABEL_COMPONENT: "stack"},
        },
        "spec": spec,
    }
    return config_map, stack


def waves(tenants: Iterable[str], wave_size: int) -> dict[str, int]:
    """Each tenant's rollout wave: tenants ordered by the SHA-256 of their id, wave 0 the
    first ``wave_size`` (the canary), then waves doubling (2K, 4K, ...).

    The order depends only on the ids, so a tenant keeps its place whoever renders the
    fleet, and the canary is a spread of tiers and products, not the alphabet's start.
    """
    if wave_size < 1:
        raise InvalidInput("--wave-size must be at least 1")
    ordered = sorted(tenants, key=lambda t: (hashlib.sha256(t.encode()).digest(), t))
    result: dict[str, int] = {}
    wave, size, start = 0, wave_size, 0
    for index, tenant in enumerate(ordered):
        if index - start >= size:
            wave, start, size = wave + 1, index, wave_size * 2 ** (wave + 1)
        result[tenant] = wave
    return result


#: Characters JSON leaves raw that a YAML reader does not read back as themselves: line
#: breaks YAML folds (NEL, LS, PS), and characters outside YAML's printable set (DEL, C1
#: controls, BOM, U+FFFE/U+FFFF, lone surrogates). JSON already escapes C0 controls.
_NOT_YAML_SAFE: Final = re.compile("[\x7f-\x9f\u2028\u2029\ufeff\ufffe\uffff\ud800-\udfff]")


def _escaped(text: str) -> str:
    if text.isascii():
        return text
    return _NOT_YAML_SAFE.sub(lambda m: f"\\u{ord(m.group()):04x}", text)


def dump(objects: Iterable[Mapping[str, Any]]) -> str:
    """A multi-document YAML stream whose documents are JSON (JSON is YAML: kubectl and
    every YAML parser read it). Indented and key-ordered for people; written by the C
    JSON encoder, which a 10,000-tenant render needs (PyYAML's emitter is ~20x slower).
    Other text stays readable; what YAML would misread is escaped (:data:`_NOT_YAML_SAFE`)."""
    return "".join(
        f"---\n{_escaped(json.dumps(obj, indent=2, ensure_ascii=False))}\n" for obj in objects
    )


@dataclass(frozen=True)
class Rendered:
    """One render's outcome: every tenant's manifests (YAML), and the tenants that failed
    with their one-line reason. One tenant's bad stack file never stops the others."""

    manifests: dict[str, str]
    failed: dict[str, str]
    waves: dict[str, int]
    names: dict[str, str]


#: Below this many tenants a render stays in one process (a worker's start costs more).
PARALLEL_FROM: Final = 1000

#: One tenant's outcome: ``(tenant, Stack name, manifests)``, or ``(tenant, None, reason)``.
Outcome = tuple[str, str | None, str]


def render_one(tenant: str, path: Path, target: Target, wave: int) -> Outcome:
    """The tenant's manifests from its stack file (read once), or its one-line reason."""
    from tenant_infra.config import read_stack_file

    try:
        config = TenantConfig.from_pulumi_values(read_stack_file(path, libyaml=True))
        if config.tenant != tenant:
            raise InvalidInput(f"its stack file declares tenant {config.tenant!r}")
        config_map, stack = manifests_for(config, target, wave)
    except InvalidInput as exc:
        return tenant, None, " ".join(str(exc).split())
    return tenant, stack["metadata"]["name"], dump([config_map, stack])


def _render_chunk(items: list[tuple[str, Path, int]], target: Target) -> list[Outcome]:
    return [render_one(tenant, path, target, wave) for tenant, path, wave in items]


def render_fleet(
    stack_files: Mapping[str, Path],
    chosen: Iterable[str],
    target: Target,
    wave_size: int,
    workers: int = 1,
) -> Rendered:
    """Render ``chosen`` tenants, each from its stack file (read once), in ``workers``
    processes when the fleet is large enough to gain from it.

    ``stack_files`` maps every tenant of the fleet to its file: waves are placed over the
    whole fleet, so rendering one tenant gives it the wave a full render does.
    """
    placed = waves(stack_files, wave_size)
    items = [(t, stack_files[t], placed[t]) for t in chosen]
    if workers > 1 and len(items) >= PARALLEL_FROM:
        # Interleaved slices, a few per worker, so a slow one does not hold the end.
        slices = [items[i :: workers * 4] for i in range(workers * 4)]
        with ProcessPoolExecutor(max_workers=workers) as pool:
            parts = pool.map(_render_chunk, slices, [target] * len(slices))
            done = {outcome[0]: outcome for part in parts for outcome in part}
        outcomes = [done[tenant] for tenant, _path, _wave in items]
    else:
        outcomes = _render_chunk(items, target)
    manifests: dict[str, str] = {}
    failed: dict[str, str] = {}
    names: dict[str, str] = {}
    owner: dict[str, str] = {}
    for tenant, name, text in outcomes:
        if name is None:
            failed[tenant] = text
        elif name in owner:  # never one Stack overwriting another: both fail, loudly
            failed[tenant] = f"Stack name {name} is also {owner[name]}'s"
            failed.setdefault(owner[name], f"Stack name {name} is also {tenant}'s")
            manifests.pop(owner[name], None)
            names.pop(owner[name], None)
        else:
            owner[name] = tenant
            names[tenant] = name
            manifests[tenant] = text
    return Rendered(manifests, failed, placed, names)

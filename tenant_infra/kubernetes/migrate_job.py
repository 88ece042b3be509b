"""A fleet migration as a Kubernetes Indexed Job: a targets snapshot and the Job.

``tenantctl render migrate-job`` writes two objects:

- a ConfigMap holding the product's targets snapshot (:mod:`tenant_infra.migrate.
  snapshot`: tenant ids and isolation modes from the registry, no credential), so all
  ``K`` pods shard one fixed list;
- a ``batch/v1`` Job, ``completionMode: Indexed``: pod ``i`` runs
  ``tenantctl migrate --product P --shards K --targets /snapshot/targets.json`` with
  ``JOB_COMPLETION_INDEX=i``, and so migrates shard ``i`` (:mod:`tenant_infra.migrate.
  shards`). Each index is retried on its own (``backoffLimitPerIndex``), except after
  exit code 2, "not worth retrying", which fails the index at once (``FailIndex``);
  a node drain or preemption (``DisruptionTarget``) is not counted as a failure.

Both objects are named after a digest of what they contain, so re-applying the same
render changes nothing, and a new snapshot or image is a new Job (a Job's pod
template cannot be changed in place). Credentials come from Secrets the platform team
creates in the namespace (:data:`SECRETS`); no manifest holds a secret value.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import yaml

from tenant_infra.errors import EXIT_INVALID, InvalidInput
from tenant_infra.kubernetes import RUN_AS
from tenant_infra.migrate.shards import MAX_SHARDS
from tenant_infra.migrate.snapshot import Snapshot

#: The Secrets the Job's pods read their environment from, by name: each key of a
#: Secret is the variable it sets. Created by the platform team in the Job's namespace
#: (README "The migration Job"); ``optional`` ones may be absent.
SECRETS: Final[Mapping[str, tuple[tuple[str, ...], bool]]] = {
    # The discovery login (CONNECT only): lists which snapshot tenants the server has.
    "tenant-infra-migrate-admin": (("TENANT_INFRA_ADMIN_DSN",), False),
    # Each tenant's own credentials come from Vault (its connections document).
    "tenant-infra-migrate-vault": (("VAULT_ADDR", "VAULT_TOKEN"), False),
    # The registry, where each shard records its tenants' revisions, when there is one.
    "tenant-infra-migrate-registry": (
        ("TENANT_INFRA_PLATFORM_STACK", "TENANT_INFRA_REGISTRY_PASSWORD"),
        True,
    ),
}
CONTAINER: Final = "migrate"
SNAPSHOT_DIR: Final = "/snapshot"
SNAPSHOT_KEY: Final = "targets.json"
#: Kubernetes refuses a ConfigMap over 1 MiB (data and metadata together).
CONFIGMAP_MAX_BYTES: Final = 1_000_000
#: One pod's needs: the runner, plus one sandboxed child per tenant at a time.
RESOURCES: Final = {
    "requests": {"cpu": "250m", "memory": "256Mi", "ephemeral-storage": "256Mi"},
    "limits": {"memory": "1Gi", "ephemeral-storage": "1Gi"},
}
_DNS_LABEL: Final = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")


@dataclass(frozen=True)
class MigrateJobSpec:
    """What ``render migrate-job`` was asked for; defaults are gentle on the database:
    at most 4 shards at once, two retries per shard, and the Job stops once a tenth
    of its shards (at least one) failed for good."""

    product: str
    shards: int
    image: str
    namespace: str = "default"
    parallelism: int | None = None
    backoff_limit_per_index: int = 2
    max_failed_indexes: int | None = None

    def __post_init__(self) -> None:
        if not 1 <= self.shards <= MAX_SHARDS:
            raise InvalidInput(f"--shards must be 1..{MAX_SHARDS}, not {self.shards}")
        if not self.image or any(c.isspace() for c in self.image):
            raise InvalidInput(f"--image {self.image!r} is not an image reference")
        if not _DNS_LABEL.fullmatch(self.namespace):
            raise InvalidInput(f"--namespace {self.namespace!r} is not a DNS-1123 label")
        if self.parallelism is not None and self.parallelism < 1:
            raise InvalidInput("--parallelism must be at least 1")
        if not 0 <= self.backoff_limit_per_index <= 10:
            raise InvalidInput("--backoff-limit-per-index must be 0..10")
        if self.max_failed_indexes is not None and not (
            0 <= self.max_failed_indexes <= self.shards
        ):
            raise InvalidInput(f"--max-failed-indexes must be 0..{self.shards} (the shards)")

    @property
    def pods_at_once(self) -> int:
        return min(self.parallelism or 4, self.shards)

    @property
    def failed_indexes_allowed(self) -> int:
        if self.max_failed_indexes is not None:
            return self.max_failed_indexes
        return min(self.shards, max(1, self.shards // 10))


@dataclass(frozen=True)
class MigrateJob:
    """The rendered objects, as plain dicts (what ``kubectl apply -f`` takes)."""

    name: str
    config_map: dict[str, Any]
    job: dict[str, Any]
    tenants: int
    #: Suspended tenants left out of the snapshot (``tenantctl resume`` migrates them).
    suspended: tuple[str, ...] = ()

    @property
    def documents(self) -> list[dict[str, Any]]:
        return [self.config_map, self.job]

    def yaml(self) -> str:
        """Both objects as one multi-document YAML stream, ConfigMap first."""
        return yaml.safe_dump_all(self.documents, sort_keys=False, width=100)

    def write(self, directory: Path) -> list[Path]:
        """``<name>.configmap.yaml`` and ``<name>.job.yaml`` in ``directory``."""
        directory.mkdir(parents=True, exist_ok=True)
        written = []
        for kind, document in (("configmap", self.config_map), ("job", self.job)):
            path = directory / f"{self.name}.{kind}.yaml"
            path.write_text(yaml.safe_dump(document, sort_keys=False, width=100))
            written.append(path)
        return written


def command(product: str, shards: int) -> list[str]:
    """What each pod runs; the index comes from ``JOB_COMPLETION_INDEX``."""
    targets = f"{SNAPSHOT_DIR}/{SNAPSHOT_KEY}"
    return [
        "tenantctl",
        "migrate",
        "--product",
        product,
        "--shards",
        str(shards),
        "--targets",
        targets,
    ]


def _env() -> list[dict[str, Any]]:
    return [
        {
            "name": variable,
            "valueFrom": {"secretKeyRef": {"name": secret, "key": variable, "optional": optional}},
        }
        for secret, (variables, optional) in SECRETS.items()
        for variable in variables
    ]


def render_migrate_job(spec: MigrateJobSpec, snapshot: Snapshot) -> MigrateJob:
    """The ConfigMap and the Indexed Job migrating ``snapshot`` in ``spec.shards`` shards."""
    if snapshot.product != spec.product:
        raise InvalidInput(f"snapshot of {snapshot.product!r} for a Job of {spec.product!r}")
    targets = snapshot.to_json()
    if len(targets.encode()) > CONFIGMAP_MAX_BYTES:
        raise InvalidInput(
            f"the targets snapshot of {spec.product} ({len(snapshot.entries)} tenants) is "
            f"over {CONFIGMAP_MAX_BYTES} bytes, more than one ConfigMap holds"
        )
    # Everything rendered goes into the name: a Job's template cannot be changed in place.
    digest = hashlib.sha256(json.dumps([targets, repr(spec)]).encode()).hexdigest()[:10]
    name = f"migrate-{spec.product}-{digest}"
    labels = {
        "app.kubernetes.io/name": "tenant-infra-migrate",
        "app.kubernetes.io/managed-by": "tenantctl",
        "tenant-infra/product": spec.product,
    }
    config_map = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": name, "namespace": spec.namespace, "labels": labels},
        "data": {SNAPSHOT_KEY: targets},
    }
    container = {
        "name": CONTAINER,
        "image": spec.image,
        "command": command(spec.product, spec.shards),
        "env": _env(),
        "resources": RESOURCES,
        "volumeMounts": [{"name": "targets", "mountPath": SNAPSHOT_DIR, "readOnly": True}],
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "capabilities": {"drop": ["ALL"]},
        },
    }
    job = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": name,
            "namespace": spec.namespace,
            "labels": labels,
            "annotations": {"tenant-infra/tenants": str(len(snapshot.entries))},
        },
        "spec": {
            "completionMode": "Indexed",
            "completions": spec.shards,
            "parallelism": spec.pods_at_once,
            "backoffLimitPerIndex": spec.backoff_limit_per_index,
            "maxFailedIndexes": spec.failed_indexes_allowed,
            "podFailurePolicy": {
                "rules": [
                    {
                        "action": "FailIndex",
                        "onExitCodes": {
                            "containerName": CONTAINER,
                            "operator": "In",
                            "values": [EXIT_INVALID],
                        },
                    },
                    {
                        "action": "Ignore",
                        "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}],
                    },
                ]
            },
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "restartPolicy": "Never",
                    "automountServiceAccountToken": False,
                    "securityContext": {
                        "runAsNonRoot": True,
                        "runAsUser": RUN_AS,
                        "runAsGroup": RUN_AS,
                        "seccompProfile": {"type": "RuntimeDefault"},
                    },
                    "containers": [container],
                    "volumes": [
                        {
                            "name": "targets",
                            "configMap": {
                                "name": name,
                                "items": [{"key": SNAPSHOT_KEY, "path": SNAPSHOT_KEY}],
                            },
                        }
                    ],
                },
            },
        },
    }
    return MigrateJob(name, config_map, job, len(snapshot.entries), snapshot.suspended)

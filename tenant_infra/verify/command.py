"""``verify_tenant``: the Python API behind ``tenantctl verify``.

Onboarding pipelines and the post-deploy step call :func:`verify_document` with the
document they already hold; the CLI resolves documents from a connections file or
from Vault and the expected limits from the stack config.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tenant_infra.catalog import Limits, load_catalog
from tenant_infra.config import Platform, TenantConfig, platform_from_stack_file, read_stack_file
from tenant_infra.errors import InvalidInput
from tenant_infra.project import project_root
from tenant_infra.tenant import validate_tenant_id
from tenant_infra.vaultclient import operator_vault
from tenant_infra.verify.broker import BrokerVerifier
from tenant_infra.verify.checks import CheckResult, PgVerifier, failed
from tenant_infra.verify.connections import (
    AdminAccess,
    ConnectionsDocument,
    load_connections,
    read_from_vault,
)
from tenant_infra.verify.mongodb import mongodb_checks
from tenant_infra.verify.vault import vault_checks
from tenant_infra.workspace import Workspace


@dataclass(frozen=True)
class ServiceReport:
    tenant: str
    product: str
    isolation: str
    checks: tuple[CheckResult, ...]
    #: Limits in force, read from the servers (not from config).
    limits: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks)

    def check(self, name: str) -> CheckResult:
        return next(c for c in self.checks if c.name == name)

    def failed(self) -> list[CheckResult]:
        return [c for c in self.checks if not c.ok]

    def to_json(self) -> dict[str, Any]:
        return {
            "product": self.product,
            "isolation": self.isolation,
            "ok": self.ok,
            "limits": self.limits,
            "checks": [c.to_json() for c in self.checks],
        }


@dataclass(frozen=True)
class VerifyReport:
    tenant: str
    services: tuple[ServiceReport, ...]

    @property
    def ok(self) -> bool:
        return all(s.ok for s in self.services)

    def service(self, product: str) -> ServiceReport:
        return next(s for s in self.services if s.product == product)

    def strict(self) -> VerifyReport:
        """The same report with every skipped check counted as a failure."""
        return VerifyReport(
            self.tenant,
            tuple(
                ServiceReport(
                    s.tenant,
                    s.product,
                    s.isolation,
                    tuple(
                        CheckResult(c.name, False, "skipped (--strict): " + c.reason)
                        if c.skipped
                        else c
                        for c in s.checks
                    ),
                    s.limits,
                )
                for s in self.services
            ),
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "tenant": self.tenant,
            "ok": self.ok,
            "services": [s.to_json() for s in self.services],
        }


def verify_document(
    document: ConnectionsDocument,
    admin: AdminAccess,
    expected_limits: Limits | None = None,
    platform: Platform | None = None,
) -> ServiceReport:
    """Every check of one service, on real connections. Never raises for a failed check."""
    # The connection budget is enforced where the platform declared the server's.
    endpoint = platform.postgres_for(document.product) if platform is not None else None
    budget = (
        (endpoint.max_connections, endpoint.reserved_connections)
        if endpoint is not None and endpoint.max_connections is not None
        else None
    )
    postgres = PgVerifier(document, expected_limits, budget=budget)
    checks = postgres.run()
    limits = dict(postgres.limits)
    # A store the product uses with no section in its document fails, never skips.
    checks += [
        failed(f"{store}.section", f"product {document.product} uses {store}: no {store} section")
        for store in document.missing()
    ]
    if document.rabbitmq is not None:
        rabbit = platform.rabbitmq if platform is not None else None
        broker = BrokerVerifier(
            document,
            admin.rabbitmq,
            expected_limits,
            budget=(rabbit.max_connections, rabbit.reserved_connections)
            if rabbit is not None and rabbit.max_connections is not None
            else None,
        )
        checks += broker.run()
        limits |= broker.limits
    checks += mongodb_checks(document)
    checks += vault_checks(document, admin.vault)
    return ServiceReport(
        document.tenant, document.product, document.isolation.value, tuple(checks), limits
    )


def verify_tenant(
    tenant: str,
    *,
    services: Sequence[str] = (),
    connections: Sequence[Path | str | Mapping[str, Any]] = (),
    stack_config: Path | None = None,
    admin: AdminAccess | None = None,
    environ: Mapping[str, str] | None = None,
    root: Path | None = None,
) -> VerifyReport:
    """Verify ``tenant``'s services (all, or those named in ``services``).

    Documents come from ``connections`` (files or dicts in the documented shape) or,
    without them, from Vault (``VAULT_ADDR``/``VAULT_TOKEN``) for the services of the
    tenant's stack config. The stack config, when there is one, also gives the
    platform admin users and the expected limits. ``root``: the project (default: the
    checkout around the working directory), where the platform definition is.
    """
    import os

    validate_tenant_id(tenant)
    env = os.environ if environ is None else environ
    for product in services:
        load_catalog().product(product)
    root = root or project_root()
    platform, config = _stack(tenant, stack_config, root)
    documents = [doc for source in connections for doc in load_connections(source)]
    if not documents:
        vault = operator_vault(env, root=root, mount=platform.vault.kv_mount if platform else None)
        if vault is None:
            raise InvalidInput(
                "no connections: pass --connections FILE, or set VAULT_ADDR and VAULT_TOKEN "
                "to read them from Vault"
            )
        products = list(services) or (
            [s.product for s in config.services] if config is not None else []
        )
        if not products:
            raise InvalidInput(f"no services for tenant {tenant!r}: pass --service PRODUCT")
        documents = read_from_vault(vault, tenant, products)
    for doc in documents:
        if doc.tenant != tenant:
            raise InvalidInput(f"connections document is for tenant {doc.tenant!r}, not {tenant!r}")
    if services:
        documents = [d for d in documents if d.product in services]
        missing = sorted(set(services) - {d.product for d in documents})
        if missing:
            raise InvalidInput(f"no connections document for service {missing[0]!r}")
    if len({d.product for d in documents}) != len(documents):
        raise InvalidInput("two connections documents for the same service")
    expected = config.effective_limits() if config is not None else None
    reports = tuple(
        verify_document(
            doc,
            admin or AdminAccess.from_environment(doc, platform, env, root),
            expected,
            platform,
        )
        for doc in documents
    )
    return VerifyReport(tenant, reports)


def _stack(
    tenant: str, path: Path | None, root: Path
) -> tuple[Platform | None, TenantConfig | None]:
    """The platform block and, if the file is the tenant's own, its config."""
    if path is None:
        path = Workspace(root).stack_file(tenant)
        if not path.is_file():
            return None, None
    platform = platform_from_stack_file(path)
    values = read_stack_file(path)
    if values.get("tenant-infra:tenant") != tenant:
        return platform, None
    return platform, TenantConfig.from_pulumi_values(values)


class VerificationFailed(RuntimeError):
    """A service failed verification; the message names each failing check."""


def require_verified(
    tenant: str,
    product: str,
    *,
    stack_config: Path | None = None,
    environ: Mapping[str, str] | None = None,
    connections: Sequence[Mapping[str, Any]] = (),
    root: Path | None = None,
) -> None:
    """The post-deploy gate (``lifecycle.deploy(verify=...)``): raise unless verified.

    Reads the service's document from Vault, as the service itself would, unless the
    caller holds it (``connections``).
    """
    report = verify_tenant(
        tenant,
        services=[product],
        connections=connections,
        stack_config=stack_config,
        environ=environ,
        root=root,
    )
    failures = [c for s in report.services for c in s.failed()]
    if failures:
        raise VerificationFailed("; ".join(f"{c.name}: {c.reason}" for c in failures))

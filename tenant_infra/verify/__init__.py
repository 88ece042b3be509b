"""``tenantctl verify``: prove a tenant service's isolation on real connections.

Declaring least-privilege resources is not proof. This package connects *as the
tenant service* (with the credentials of its connections document) and shows what
it can and cannot reach, then asks the platform, as admin, what *others* can do to
the tenant. Each check is a named :class:`~tenant_infra.verify.checks.CheckResult`.
"""

from tenant_infra.verify.checks import CheckResult
from tenant_infra.verify.command import ServiceReport, VerifyReport, verify_document, verify_tenant
from tenant_infra.verify.connections import AdminAccess, ConnectionsDocument, load_connections

__all__ = [
    "AdminAccess",
    "CheckResult",
    "ConnectionsDocument",
    "ServiceReport",
    "VerifyReport",
    "load_connections",
    "verify_document",
    "verify_tenant",
]

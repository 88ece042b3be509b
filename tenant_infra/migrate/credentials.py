"""Each tenant's own credentials for ``tenantctl migrate --product``.

A tenant schema is migrated by a connection AS THE TENANT ROLE, never under an admin
session (see :mod:`tenant_infra.migrate.engine`). Its credentials are the service's
connections document (README "The connections document"), read with
:mod:`tenant_infra.verify.connections`, per tenant, in this order:

1. ``--connections FILE`` (repeatable; one document or a JSON list): the document
   whose ``tenant`` and ``product`` match;
2. Vault, ``<kvMount>/data/tenants/<tenant>/<product>``, on the operator's Vault
   (:func:`tenant_infra.vaultclient.operator_vault`: ``VAULT_ADDR`` or the platform
   definition, never an address from a tenant's stack file; the mount may come from
   that file); token ``VAULT_TOKEN``.

A tenant with neither is not attempted: it is reported as failed with the reason,
and the rest of the fleet goes on. The password goes into the target's ``params``
only (not in its ``repr``), which reaches a worker inside the pickled target.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path

from tenant_infra.config import platform_from_stack_file
from tenant_infra.errors import BackendUnavailable, InvalidInput
from tenant_infra.migrate.connection import ConnParams
from tenant_infra.migrate.targets import MigrationTarget
from tenant_infra.project import project_root
from tenant_infra.tenant import TenantNames
from tenant_infra.vaultclient import VaultAccess, operator_vault
from tenant_infra.verify.connections import ConnectionsDocument, load_connections, read_from_vault
from tenant_infra.workspace import Workspace

Documents = dict[tuple[str, str], ConnectionsDocument]


def load_documents(files: Iterable[Path | str]) -> Documents:
    """The documents of every ``--connections`` file by (tenant, product).

    An unreadable or invalid file, or two documents for one service, is invalid input
    (exit 2, nothing run): messages name the file and field, never a value.
    """
    documents: Documents = {}
    for path in files:
        for doc in load_connections(path):
            key = (doc.tenant, doc.product)
            if key in documents:
                raise InvalidInput(
                    f"two connections documents for tenant {doc.tenant!r} product {doc.product!r}"
                )
            documents[key] = doc
    return documents


def tenant_params(document: ConnectionsDocument) -> ConnParams:
    """libpq keywords of the service's own role, from its document."""
    params = {k: str(v) for k, v in document.postgresql.params().items()}
    params["application_name"] = "tenantctl-migrate"
    return params


def no_credentials(tenant: str, product: str) -> str:
    return (
        f"no credentials for tenant {tenant} product {product}: pass --connections FILE "
        "or set VAULT_ADDR and VAULT_TOKEN"
    )


def vault_for(tenant: str, environ: Mapping[str, str], workspace: Workspace) -> VaultAccess | None:
    """The operator's Vault, with the mount the tenant's stack file names (if any)."""
    mount = None
    stack = workspace.stack_file(tenant)
    if stack.is_file():
        platform = platform_from_stack_file(stack)
        mount = platform.vault.kv_mount if platform is not None else None
    return operator_vault(environ, root=workspace.root, mount=mount)


def _document(
    target: MigrationTarget,
    documents: Documents,
    environ: Mapping[str, str],
    workspace: Workspace,
) -> ConnectionsDocument:
    tenant, product = target.tenant or "", target.product or ""
    found = documents.get((tenant, product))
    if found is not None:
        return found
    vault = vault_for(tenant, environ, workspace)
    if vault is None:
        raise LookupError(no_credentials(tenant, product))
    (doc,) = read_from_vault(vault, tenant, [product])
    return doc


def _check(document: ConnectionsDocument, target: MigrationTarget) -> MigrationTarget:
    """The document must describe the storage discovery found (same isolation mode);
    the target then names the document's login, whatever its generation (a promoted
    service's is not its first)."""
    pg = document.postgresql
    logins = TenantNames(target.tenant or "").service(target.product or "").pg_logins()
    if (pg.database, pg.schema_name) != (target.database, target.schema) or pg.user not in logins:
        raise LookupError(
            f"connections document of tenant {target.tenant} product {target.product} is for "
            f"{document.isolation.value} mode (database {pg.database}), but its schema "
            f"{target.schema} was found in database {target.database}"
        )
    return replace(target, role=pg.user)


def attach_credentials(
    targets: Sequence[MigrationTarget],
    documents: Documents,
    *,
    environ: Mapping[str, str] | None = None,
    workspace: Workspace | None = None,
) -> list[MigrationTarget]:
    """Each tenant target with its own role's ``params``, or ``unavailable`` set to why
    there are none (then it fails alone; the fleet goes on).

    ``workspace`` (default: this checkout's) is where tenants' stack files are looked up
    for the Vault address.
    """
    env = os.environ if environ is None else environ
    if workspace is None:
        workspace = Workspace(project_root())
    if any((t.tenant, t.product) not in documents for t in targets if not t.unavailable):
        operator_vault(env, root=workspace.root)  # a bad VAULT_ADDR: exit 2, nothing run
    out: list[MigrationTarget] = []
    for target in targets:
        tenant, product = target.tenant or target.label, target.product or "?"
        if target.unavailable:  # not on the server: no credentials to look for
            out.append(target)
            continue
        try:
            document = _document(target, documents, env, workspace)
            target = _check(document, target)
        except LookupError as exc:  # no document, or one for other storage: recurs
            out.append(replace(target, unavailable=str(exc), permanent=True))
        except InvalidInput as exc:  # a stack file or a stored document is invalid
            reason = f"no credentials for tenant {tenant} product {product}: {exc}"
            out.append(replace(target, unavailable=reason, permanent=True))
        except BackendUnavailable as exc:  # Vault unreachable or refusing: may pass
            reason = f"no credentials for tenant {tenant} product {product}: {exc}"
            out.append(replace(target, unavailable=reason))
        else:
            out.append(replace(target, params=tenant_params(document)))
    return out

"""The operator's Vault: where its token may be sent, and reading one secret safely.

Rules (README "Security model"), for every reader (migrate, verify, lifecycle):

- The token goes only to the operator's Vault: ``VAULT_ADDR``, else the address of the
  platform definition (``platform/Pulumi.<stack>.yaml``, the stack named by
  ``TENANT_INFRA_PLATFORM_STACK``). Never to an address taken from one tenant's
  stack file: whoever edits a tenant file must not be able to collect the token.
- Never over plain http, except to a loopback address.
- An address with credentials in it (``https://user:pw@vault…``) is refused with one
  line that does not repeat it.
- Straight there: no proxy from the environment, no redirect followed.
- A reply that is not the expected JSON fails that one read (that tenant), with one
  line; the caller's fleet goes on.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final
from urllib.parse import urlsplit

import requests

from tenant_infra.errors import BackendUnavailable, InvalidInput

#: Names the platform stack whose ``platform.vault`` is the operator's Vault.
PLATFORM_STACK_ENV: Final = "TENANT_INFRA_PLATFORM_STACK"
MOUNT_ENV: Final = "TENANT_INFRA_VAULT_MOUNT"


@dataclass(frozen=True)
class VaultAccess:
    address: str
    token: str = field(repr=False)
    mount: str = "secret"


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def address_problem(address: str) -> str | None:
    """Why a token must not be sent to ``address`` (never quoting it), or ``None``."""
    try:
        parts = urlsplit(address.strip())
        host = parts.hostname or ""
        parts.port  # noqa: B018 - raises on a malformed port
    except ValueError:
        return "is not a valid URL"
    if parts.scheme not in ("http", "https") or not host:
        return "must be an http(s) URL with a host"
    if "@" in parts.netloc:
        return "must not carry credentials (user:password@): the token goes in VAULT_TOKEN"
    if parts.scheme == "http" and not _loopback(host):
        return (
            f"is plain http to {host}: the Vault token is sent over https only "
            "(plain http only to a loopback address)"
        )
    return None


def checked_address(address: str, where: str = "VAULT_ADDR") -> str:
    """``address`` if a token may be sent there, else :class:`InvalidInput` (one line)."""
    problem = address_problem(address)
    if problem:
        raise InvalidInput(f"{where} {problem}")
    return address.strip().rstrip("/")


def platform_definition(root: Path, environ: Mapping[str, str]) -> Path | None:
    """The platform stack file named by ``TENANT_INFRA_PLATFORM_STACK``, if set."""
    stack = environ.get(PLATFORM_STACK_ENV)
    if not stack:
        return None
    path = root / "platform" / f"Pulumi.{stack}.yaml"
    if not path.is_file():
        raise InvalidInput(f"{PLATFORM_STACK_ENV}={stack}: no platform stack file {path}")
    return path


def operator_address(
    environ: Mapping[str, str], root: Path | None = None
) -> tuple[str | None, str | None]:
    """The operator's Vault address, checked: ``VAULT_ADDR``, else the platform
    definition (and then its mount too); ``(None, None)`` if neither names one."""
    from tenant_infra.config import platform_from_stack_file
    from tenant_infra.project import project_root

    address, where = environ.get("VAULT_ADDR"), "VAULT_ADDR"
    defined_mount = None
    definition = None if address else platform_definition(root or project_root(), environ)
    if definition is not None:
        platform = platform_from_stack_file(definition)
        if platform is not None:
            defined_mount = platform.vault.kv_mount
            if not address:
                address, where = str(platform.vault.address), f"{definition.name}: vault.address"
    return (checked_address(address, where) if address else None), defined_mount


def operator_vault(
    environ: Mapping[str, str] | None = None,
    *,
    root: Path | None = None,
    mount: str | None = None,
) -> VaultAccess | None:
    """The operator's Vault and token, or ``None`` if there is no token or no address.

    ``mount`` (a path on that Vault, e.g. a tenant's ``kvMount``) may come from anywhere;
    the address never comes from a tenant.
    """
    env = os.environ if environ is None else environ
    address, defined_mount = operator_address(env, root)
    token = env.get("VAULT_TOKEN")
    if not (address and token):
        return None
    return VaultAccess(address, token, mount or env.get(MOUNT_ENV) or defined_mount or "secret")


def session() -> requests.Session:
    """HTTP for Vault: the environment's proxies and netrc are ignored, so the token
    goes straight to the address checked above, never to a proxy in between."""
    http = requests.Session()
    http.trust_env = False
    return http


def read_secret(vault: VaultAccess, path: str, timeout: float = 10.0) -> dict[str, Any]:
    """The data of KV v2 secret ``<mount>/data/<path>``.

    Every failure is one line naming the path, never the token or a value:
    :class:`InvalidInput` when there is no such secret, :class:`BackendUnavailable`
    otherwise (unreachable, refused, or a reply that is not KV v2 JSON).
    """
    where = f"{vault.mount}/{path}"
    url = f"{vault.address}/v1/{vault.mount}/data/{path}"
    try:
        response = session().get(
            url, headers={"X-Vault-Token": vault.token}, timeout=timeout, allow_redirects=False
        )
    except requests.RequestException as exc:
        raise BackendUnavailable(f"Vault at {vault.address}: {type(exc).__name__}") from None
    if response.status_code == 404:
        raise InvalidInput(f"no secret at {where} in Vault")
    if response.status_code != 200:
        raise BackendUnavailable(f"Vault refused reading {where}: HTTP {response.status_code}")
    try:
        body = response.json()
    except ValueError:
        raise BackendUnavailable(f"Vault's reply for {where} is not JSON") from None
    data = body.get("data") if isinstance(body, dict) else None
    secret = data.get("data") if isinstance(data, dict) else None
    if not isinstance(secret, dict):
        raise BackendUnavailable(f"Vault's reply for {where} is not a KV v2 secret")
    return secret

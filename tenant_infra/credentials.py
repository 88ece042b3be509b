"""Platform credentials: read from the environment, never from a tenant's stack config.

A platform has thousands of tenant stacks; copying an admin password into each one
would multiply the places it leaks from. The program asks this module instead, and
the offline plan hands it a placeholder so it needs no credentials at all.

=================================  ==============================================
variable                           used for
=================================  ==============================================
``TENANT_INFRA_PG_PASSWORD``       PostgreSQL admin password (all products)
``TENANT_INFRA_PG_PASSWORD_<P>``   ... for product ``<P>`` (upper case), overrides
``TENANT_INFRA_RABBITMQ_PASSWORD`` RabbitMQ management password
``VAULT_TOKEN``                    Vault token (the Vault CLI's own variable)
``TENANT_INFRA_MONGODB_PASSWORD``  self-hosted MongoDB admin password
``TENANT_INFRA_REGISTRY_PASSWORD`` the registry's control-plane role (``…_OWNER_…``,
                                   ``…_READER_…``: its owner and reader)
``TENANT_INFRA_REDIS_PASSWORD``    the Redis user that publishes lifecycle events
``MONGODB_ATLAS_PUBLIC_KEY`` /     Atlas API keys (the Atlas provider's own
``MONGODB_ATLAS_PRIVATE_KEY``      variables)
=================================  ==============================================

An unset PostgreSQL password means "none" (trust or peer auth, as on a dev machine).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field

import pulumi

from tenant_infra.errors import InvalidInput

PLACEHOLDER = "[secret]"


@dataclass(frozen=True)
class PlatformCredentials:
    """Where platform secrets come from. ``environ`` is injectable for tests and plans."""

    #: Never in the repr: it holds every secret of the environment.
    environ: Mapping[str, str] = field(default_factory=lambda: os.environ, repr=False)
    placeholder: bool = False

    @classmethod
    def for_plan(cls) -> PlatformCredentials:
        """Credentials for the offline plan: every value is a placeholder secret."""
        return cls(environ={}, placeholder=True)

    def _value(self, *names: str) -> str | None:
        return next((self.environ[n] for n in names if self.environ.get(n)), None)

    def _get(self, *names: str, required: bool) -> pulumi.Output[str] | None:
        if self.placeholder:
            return pulumi.Output.secret(PLACEHOLDER)
        value = self._value(*names)
        if value is not None:
            return pulumi.Output.secret(value)
        if required:
            raise InvalidInput(f"environment variable {names[-1]} is not set")
        return None

    @staticmethod
    def _postgres_names(product: str) -> tuple[str, str]:
        return f"TENANT_INFRA_PG_PASSWORD_{product.upper()}", "TENANT_INFRA_PG_PASSWORD"

    def postgres_password(self, product: str) -> pulumi.Output[str] | None:
        return self._get(*self._postgres_names(product), required=False)

    def postgres_password_value(self, product: str) -> str | None:
        """The same password as a plain value, for the operator's own admin sessions
        (closing a suspended service's sessions); ``None``: no password."""
        return self._value(*self._postgres_names(product))

    def rabbitmq_password(self) -> pulumi.Output[str]:
        value = self._get("TENANT_INFRA_RABBITMQ_PASSWORD", required=True)
        assert value is not None
        return value

    def rabbitmq_password_value(self) -> str:
        value = self._value("TENANT_INFRA_RABBITMQ_PASSWORD")
        if value is None:
            raise InvalidInput("environment variable TENANT_INFRA_RABBITMQ_PASSWORD is not set")
        return value

    def registry_password(self, role: str = "user") -> pulumi.Output[str]:
        """A registry role's password: ``owner``, ``user`` (the control plane) or
        ``reader`` (the multi-tenancy API)."""
        which = {"owner": "OWNER_PASSWORD", "user": "PASSWORD", "reader": "READER_PASSWORD"}
        value = self._get(f"TENANT_INFRA_REGISTRY_{which[role]}", required=True)
        assert value is not None
        return value

    def vault_address(self, declared: str) -> str:
        """Where the program sends the Vault token: the operator's Vault
        (:func:`tenant_infra.vaultclient.operator_address`), which the stack's
        ``platform.vault.address`` must name. A stack file alone never decides it."""
        if self.placeholder:
            return declared
        from tenant_infra.vaultclient import operator_address

        operator, _mount = operator_address(self.environ)
        if operator is None:
            raise InvalidInput(
                "set VAULT_ADDR to the operator's Vault (or TENANT_INFRA_PLATFORM_STACK): the "
                "token is never sent to an address only a tenant's stack file names"
            )
        if operator != declared.rstrip("/"):
            raise InvalidInput(
                "this stack's platform.vault.address is not the operator's Vault (VAULT_ADDR): "
                "the token is not sent there"
            )
        return operator

    def vault_token(self) -> pulumi.Output[str]:
        value = self._get("VAULT_TOKEN", required=True)
        assert value is not None
        return value

    def atlas_keys(self) -> tuple[pulumi.Output[str], pulumi.Output[str]]:
        public = self._get("MONGODB_ATLAS_PUBLIC_KEY", required=True)
        private = self._get("MONGODB_ATLAS_PRIVATE_KEY", required=True)
        assert public is not None and private is not None
        return public, private

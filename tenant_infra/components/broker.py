"""RabbitMQ: one virtual host per tenant, one user per service scoped to it.

The vhost is named after the tenant id (seed 000) and shared by the tenant's
services; its connection and queue limits and a queue-length operator policy come
from the tenant's limits. Service users carry no tags (no management, policymaker,
monitoring or administrator rights) and hold permissions on that vhost alone.
"""

from __future__ import annotations

import pulumi
import pulumi_rabbitmq as rabbitmq

from tenant_infra.catalog import Limits
from tenant_infra.components import PACKAGE
from tenant_infra.components.secrets import generated_password
from tenant_infra.config import StoreLogins
from tenant_infra.tenant import ServiceNames, TenantNames


class TenantVhost(pulumi.ComponentResource):
    """The tenant's virtual host and the limits on it."""

    name: pulumi.Output[str]

    def __init__(
        self,
        name: str,
        tenant: TenantNames,
        limits: Limits,
        protect_data: bool,
        provider: rabbitmq.Provider,
        opts: pulumi.ResourceOptions | None = None,
    ) -> None:
        super().__init__(f"{PACKAGE}:rabbitmq:TenantVhost", name, None, opts)
        child = pulumi.ResourceOptions(parent=self, provider=provider)
        vhost = rabbitmq.VHost(
            f"{name}-vhost",
            name=tenant.vhost,
            description=f"tenant {tenant.tenant}",
            # The provider types these as strings.
            max_connections=str(limits.broker_max_connections),
            max_queues=str(limits.broker_max_queues),
            opts=pulumi.ResourceOptions.merge(child, pulumi.ResourceOptions(protect=protect_data)),
        )
        # An operator policy, not a policy: tenant users cannot override the cap.
        rabbitmq.OperatorPolicy(
            f"{name}-queue-limits",
            name="tenant-queue-limits",
            vhost=vhost.name,
            policy=rabbitmq.OperatorPolicyPolicyArgs(
                pattern=".*",
                priority=0,
                apply_to="queues",
                definition={
                    "max-length": str(limits.broker_queue_max_length),
                    "max-length-bytes": str(limits.broker_queue_max_bytes),
                },
            ),
            opts=pulumi.ResourceOptions.merge(child, pulumi.ResourceOptions(deleted_with=vhost)),
        )
        # RabbitMQ accepts no `overflow` in operator policies; a regular policy can set
        # it, and tenant users (no policymaker tag) cannot change it: publishers past the
        # cap get nacks instead of silently dropped messages.
        rabbitmq.Policy(
            f"{name}-queue-overflow",
            name="tenant-queue-overflow",
            vhost=vhost.name,
            policy=rabbitmq.PolicyPolicyArgs(
                pattern=".*",
                priority=0,
                apply_to="queues",
                definition={"overflow": "reject-publish"},
            ),
            opts=pulumi.ResourceOptions.merge(child, pulumi.ResourceOptions(deleted_with=vhost)),
        )
        self.vhost = vhost
        self.name = vhost.name
        self.register_outputs({"name": self.name})


class BrokerUser(pulumi.ComponentResource):
    """A service's user with permissions on its tenant's vhost only.

    Under rotation (``logins``), two alternating users with identical permissions,
    ``<principal>__a`` and ``__b``; the legacy user ``<principal>`` until the first
    rotation replaces it. A revoked previous user keeps no permissions, so the vhost
    refuses it before it is deleted.
    """

    username: pulumi.Output[str]
    password: pulumi.Output[str]

    def __init__(
        self,
        name: str,
        names: ServiceNames,
        vhost: TenantVhost,
        provider: rabbitmq.Provider,
        suspended: bool = False,
        opts: pulumi.ResourceOptions | None = None,
        logins: StoreLogins | None = None,
    ) -> None:
        super().__init__(f"{PACKAGE}:rabbitmq:BrokerUser", name, None, opts)
        child = pulumi.ResourceOptions(parent=self, provider=provider)
        slots: tuple[str | None, ...] = logins.slots() if logins else (None,)
        for slot in slots:
            # The legacy user keeps the resource names it had before rotation existed.
            suffix = f"-{slot}" if slot else ""
            password = generated_password(f"{name}-password{suffix}", self)
            user = rabbitmq.User(
                f"{name}-user{suffix}",
                name=names.broker_login(slot),
                password=password,
                tags=[],
                opts=child,
            )
            if not (suspended or (logins is not None and logins.revoked_slot(slot))):
                # Suspended or revoked: no permissions at all, so the vhost refuses the
                # user outright (an empty pattern would still match the default
                # exchange, named "").
                rabbitmq.Permissions(
                    f"{name}-permissions{suffix}",
                    user=user.name,
                    vhost=vhost.name,
                    permissions=rabbitmq.PermissionsPermissionsArgs(
                        configure=".*", write=".*", read=".*"
                    ),
                    opts=child,
                )
            if slot == (logins.current if logins else None):
                self.username, self.password = user.name, password
        self.register_outputs({"username": self.username})

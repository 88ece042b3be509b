"""MongoDB: one user per service, scoped to the tenant's database.

The tenant's database is named after the tenant id (seed 000) and appears on first
write, so there is nothing to create for it; what isolates it is the user's roles.

- Atlas: a ``DatabaseUser`` in ``admin`` whose only role is ``readWrite@<tenant>``
  and whose scope is the named cluster (without ``scopes`` Atlas grants the user
  every cluster of the project).
- Self-hosted: no Pulumi provider exists, so a dynamic resource creates the user
  with pymongo inside the tenant's own database. The admin password is read from the
  environment when the provider runs, so it is never serialized into the state.
"""

from __future__ import annotations

import os
from typing import Any

import pulumi
import pulumi_mongodbatlas as atlas
from pulumi import dynamic

from tenant_infra.components import PACKAGE, stale_provider
from tenant_infra.components.secrets import generated_password
from tenant_infra.config import AtlasMongo, SelfHostedMongo, StoreLogins
from tenant_infra.mongodb import client_options
from tenant_infra.tenant import ServiceNames

READ_WRITE = "readWrite"


def user_roles(database: str, suspended: bool = False) -> list[dict[str, str]]:
    """The one role a service user holds: read/write on its tenant database (none while
    the service is suspended)."""
    return [] if suspended else [{"role": READ_WRITE, "db": database}]


class SelfHostedUserProvider(dynamic.ResourceProvider):
    """Creates, updates and drops a user in the tenant database with pymongo."""

    #: Inputs whose change means a different user, not an edited one.
    REPLACE_ON = ("host", "port", "database", "username")

    def _client(self, props: dict[str, Any]) -> Any:
        from pymongo import MongoClient

        password = os.environ.get("TENANT_INFRA_MONGODB_PASSWORD")
        if not password:
            raise RuntimeError("environment variable TENANT_INFRA_MONGODB_PASSWORD is not set")
        return MongoClient(
            **client_options(
                host=props["host"],
                port=int(props["port"]),
                user=props["admin_user"],
                password=password,
                auth_source=props["auth_source"],
                tls=bool(props["tls"]),
            )
        )

    def create(self, props: dict[str, Any]) -> dynamic.CreateResult:
        with self._client(props) as client:
            db = client[props["database"]]
            db.command(
                "createUser",
                props["username"],
                pwd=props["password"],
                roles=user_roles(props["database"], bool(props.get("suspended"))),
            )
        return dynamic.CreateResult(id_=f"{props['database']}.{props['username']}", outs=props)

    def diff(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> dynamic.DiffResult:
        changed = [k for k in news if k != "__provider" and olds.get(k) != news.get(k)]
        replaces = [k for k in changed if k in self.REPLACE_ON]
        return dynamic.DiffResult(
            changes=bool(changed) or stale_provider(olds),
            replaces=replaces,
            delete_before_replace=True,
        )

    def update(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> dynamic.UpdateResult:
        with self._client(news) as client:
            client[news["database"]].command(
                "updateUser",
                news["username"],
                pwd=news["password"],
                roles=user_roles(news["database"], bool(news.get("suspended"))),
            )
        return dynamic.UpdateResult(outs=news)

    def delete(self, _id: str, props: dict[str, Any]) -> None:
        with self._client(props) as client:
            client[props["database"]].command("dropUser", props["username"])


class SelfHostedUser(dynamic.Resource, module="tenant", name="MongoUser"):
    """A MongoDB user defined in, and limited to, one tenant database."""

    def __init__(
        self,
        name: str,
        props: dict[str, pulumi.Input[Any]],
        opts: pulumi.ResourceOptions | None = None,
    ) -> None:
        super().__init__(
            SelfHostedUserProvider(),
            name,
            props,
            pulumi.ResourceOptions.merge(
                opts, pulumi.ResourceOptions(additional_secret_outputs=["password"])
            ),
        )


class MongoUser(pulumi.ComponentResource):
    """A service's MongoDB user on either backend; under rotation (``logins``), two
    alternating users with the same role, as in :class:`~tenant_infra.components.
    broker.BrokerUser`."""

    username: pulumi.Output[str]
    password: pulumi.Output[str]

    def __init__(
        self,
        name: str,
        names: ServiceNames,
        backend: AtlasMongo | SelfHostedMongo,
        atlas_provider: atlas.Provider | None,
        suspended: bool = False,
        opts: pulumi.ResourceOptions | None = None,
        logins: StoreLogins | None = None,
    ) -> None:
        super().__init__(f"{PACKAGE}:mongodb:ServiceUser", name, None, opts)
        slots: tuple[str | None, ...] = logins.slots() if logins else (None,)
        for slot in slots:
            # The legacy user keeps the resource names it had before rotation existed.
            suffix = f"-{slot}" if slot else ""
            refused = suspended or (logins is not None and logins.revoked_slot(slot))
            password = generated_password(f"{name}-password{suffix}", self)
            self._user(
                f"{name}-user{suffix}",
                names.mongo_login(slot),
                password,
                backend,
                atlas_provider,
                refused,
                names,
            )
            if slot == (logins.current if logins else None):
                self.username = pulumi.Output.from_input(names.mongo_login(slot))
                self.password = password
        self.register_outputs({"username": self.username})

    def _user(
        self,
        name: str,
        username: str,
        password: pulumi.Output[str],
        backend: AtlasMongo | SelfHostedMongo,
        atlas_provider: atlas.Provider | None,
        refused: bool,
        names: ServiceNames,
    ) -> None:
        database = names.tenant_names.mongo_database
        if isinstance(backend, AtlasMongo):
            if refused:
                # Atlas wants at least one role: a suspended service has no user at all;
                # resuming recreates it with the same password.
                return
            atlas.DatabaseUser(
                name,
                project_id=backend.project_id,
                username=username,
                password=password,
                auth_database_name="admin",
                roles=[atlas.DatabaseUserRoleArgs(role_name=READ_WRITE, database_name=database)],
                scopes=[atlas.DatabaseUserScopeArgs(name=backend.cluster_name, type="CLUSTER")],
                opts=pulumi.ResourceOptions(parent=self, provider=atlas_provider),
            )
            return
        SelfHostedUser(
            name,
            {
                "host": backend.host,
                "port": backend.port,
                "admin_user": backend.admin_user,
                "auth_source": backend.auth_source,
                "tls": backend.tls,
                "database": database,
                "username": username,
                "password": password,
                "suspended": refused,
            },
            opts=pulumi.ResourceOptions(parent=self),
        )

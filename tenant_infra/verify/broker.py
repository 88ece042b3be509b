"""RabbitMQ isolation checks.

Publish/consume and "cannot open another vhost" are proven over AMQP with the
service's own credentials (pika): a service user carries no tags, so the HTTP API
refuses it outright ("Not management user") and could not show that the user can
actually use its vhost. That refusal is itself the "no management rights" proof.

What the user is *allowed* (its permissions on every vhost, its tags), who else
may use the tenant's vhost, and the limits in force are read from the management
API as the platform admin: only an administrator can list them.
"""

from __future__ import annotations

import logging
import secrets
import ssl
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any, Final
from urllib.parse import quote

import pika  # type: ignore[import-untyped]
import pika.exceptions  # type: ignore[import-untyped]
import requests

from tenant_infra.catalog import Limits, load_catalog
from tenant_infra.tenant import TenantNames
from tenant_infra.verify.checks import (
    MAX_PROBES,
    CheckResult,
    describe,
    failed,
    passed,
    skipped,
)
from tenant_infra.verify.connections import (
    ConnectionsDocument,
    RabbitmqAdmin,
    RabbitmqConnection,
)

DEFAULT_VHOST: Final = "/"
NO_ADMIN: Final = "needs the RabbitMQ admin: set TENANT_INFRA_RABBITMQ_PASSWORD"

RABBITMQ_CHECKS: Final = (
    "rabbitmq.publish_consume_own",
    "rabbitmq.cannot_open_other_vhosts",
    "rabbitmq.permissions_only_own_vhost",
    "rabbitmq.no_management_rights",
    "rabbitmq.no_foreign_permissions",
    "rabbitmq.limits",
)


class ManagementError(Exception):
    """The management API could not answer (status or transport error)."""


class Management:
    """Minimal management-API client, as admin."""

    def __init__(self, admin: RabbitmqAdmin, timeout: float = 10.0) -> None:
        self.admin, self.timeout = admin, timeout

    def get(self, path: str) -> Any:
        url = f"{self.admin.management_url}/api/{path}"
        try:
            response = requests.get(
                url, auth=(self.admin.user, self.admin.password), timeout=self.timeout
            )
        except requests.RequestException as exc:
            raise ManagementError(f"{type(exc).__name__} on GET /api/{path}") from None
        if response.status_code != 200:
            raise ManagementError(f"GET /api/{path}: HTTP {response.status_code}")
        return response.json()


def _vhost_path(vhost: str) -> str:
    return quote(vhost, safe="")


class BrokerVerifier:
    """The RabbitMQ checks of one service."""

    def __init__(
        self,
        document: ConnectionsDocument,
        admin: RabbitmqAdmin | None,
        expected_limits: Limits | None = None,
        max_probes: int = MAX_PROBES,
        budget: tuple[int, int] | None = None,
    ) -> None:
        assert document.rabbitmq is not None
        #: The node's declared ``maxConnections`` and ``reservedConnections``, if any.
        self.budget = budget
        self.doc = document
        self.rabbit: RabbitmqConnection = document.rabbitmq
        self.admin = admin
        self.api = Management(admin) if admin else None
        self.expected = expected_limits
        self.max_probes = max_probes
        self.limits: dict[str, Any] = {}
        self._hide = (self.rabbit.password.get_secret_value(),)

    def run(self) -> list[CheckResult]:
        with _quiet_pika():
            return self._run()

    def _run(self) -> list[CheckResult]:
        checks = (
            self.publish_consume_own,
            self.cannot_open_other_vhosts,
            self.permissions_only_own_vhost,
            self.no_management_rights,
            self.no_foreign_permissions,
            self.limits_in_force,
        )
        results = []
        for check, name in zip(checks, RABBITMQ_CHECKS, strict=True):
            try:
                results.append(check())
            except ManagementError as exc:
                results.append(failed(name, f"management API: {exc}"))
        return results

    # ---------------------------------------------------------------- AMQP

    def _parameters(self, vhost: str) -> Any:
        conn = self.rabbit
        ssl_options = None
        if conn.tls:
            ssl_options = pika.SSLOptions(ssl.create_default_context(), conn.host)
        return pika.ConnectionParameters(
            host=conn.host,
            port=conn.port,
            virtual_host=vhost,
            credentials=pika.PlainCredentials(conn.user, conn.password.get_secret_value()),
            ssl_options=ssl_options,
            connection_attempts=1,
            socket_timeout=5,
            stack_timeout=10,
            blocked_connection_timeout=5,
            client_properties={"connection_name": "tenantctl-verify"},
        )

    def _d(self, exc: BaseException) -> str:
        return describe(exc, self._hide)

    def publish_consume_own(self) -> CheckResult:
        name, vhost = RABBITMQ_CHECKS[0], self.rabbit.vhost
        body = secrets.token_hex(8).encode()
        try:
            connection = pika.BlockingConnection(self._parameters(vhost))
        except pika.exceptions.AMQPError as exc:
            return failed(name, f"cannot open vhost {vhost} as {self.rabbit.user}: {self._d(exc)}")
        try:
            channel = connection.channel()
            channel.confirm_delivery()
            queue = channel.queue_declare("", exclusive=True, auto_delete=True).method.queue
            channel.basic_publish("", queue, body, mandatory=True)
            _method, _props, received = channel.basic_get(queue, auto_ack=True)
        except pika.exceptions.AMQPError as exc:
            return failed(name, f"on vhost {vhost}: {self._d(exc)}")
        finally:
            if connection.is_open:
                connection.close()
        if received != body:
            return failed(name, f"the message published on {vhost} was not consumed back")
        return passed(
            name,
            f"published and consumed a message on vhost {vhost} (exclusive server-named queue)",
        )

    def _try_open(self, vhost: str) -> str | None:
        """``None`` if the broker refuses the user ``vhost`` (or it no longer exists)."""
        try:
            connection = pika.BlockingConnection(self._parameters(vhost))
        except pika.exceptions.ProbableAccessDeniedError:
            return None
        except pika.exceptions.AMQPError as exc:
            return f"failed for another reason: {self._d(exc)}"
        connection.close()
        return "succeeded"

    def cannot_open_other_vhosts(self) -> CheckResult:
        name, own = RABBITMQ_CHECKS[1], self.rabbit.vhost
        others: list[str] = []
        if self.api is not None:
            others = sorted(v["name"] for v in self.api.get("vhosts") if v["name"] != own)
        # The default vhost first, always: it exists on every broker.
        targets = [DEFAULT_VHOST] + [v for v in others if v != DEFAULT_VHOST]
        leaks = []
        for vhost in targets[: self.max_probes + 1]:
            outcome = self._try_open(vhost)
            if outcome is not None:
                leaks.append(f"opening vhost {vhost!r} {outcome}")
        if leaks:
            return failed(name, "; ".join(leaks))
        probed = min(len(targets), self.max_probes + 1)
        if self.api is None:
            return passed(
                name, f"vhost '/' refused; no other tenant vhost to probe ({NO_ADMIN} to list them)"
            )
        tenants = len(targets) - 1
        if tenants == 0:
            return passed(name, "vhost '/' refused; no other tenant vhost to probe")
        return passed(
            name,
            f"{probed} of {len(targets)} other vhost(s) opened and refused "
            "(all are covered by rabbitmq.permissions_only_own_vhost)",
        )

    # ---------------------------------------------------------------- admin

    def permissions_only_own_vhost(self) -> CheckResult:
        name = RABBITMQ_CHECKS[2]
        if self.api is None:
            return failed(name, NO_ADMIN)
        user, own = self.rabbit.user, self.rabbit.vhost
        vhosts = sorted(
            {p["vhost"] for p in self.api.get(f"users/{quote(user, safe='')}/permissions")}
        )
        topic = sorted(
            {p["vhost"] for p in self.api.get(f"users/{quote(user, safe='')}/topic-permissions")}
        )
        extra = [v for v in vhosts if v != own] + [f"{v} (topic)" for v in topic if v != own]
        if extra:
            return failed(
                name, f"user {user} has permissions on other vhost(s): {', '.join(extra)}"
            )
        if own not in vhosts:
            return failed(name, f"user {user} has no permissions on its vhost {own}")
        return passed(name, f"user {user} has permissions on vhost {own} only")

    def no_management_rights(self) -> CheckResult:
        name, user = RABBITMQ_CHECKS[3], self.rabbit.user
        problems = []
        if self.api is not None:
            tags = self.api.get(f"users/{quote(user, safe='')}").get("tags") or []
            if isinstance(tags, str):  # RabbitMQ < 3.9 returns "a,b"
                tags = [t for t in tags.split(",") if t]
            if tags:
                problems.append(f"user {user} carries tag(s) {', '.join(tags)}")
        url = self.admin.management_url if self.admin else f"http://{self.rabbit.host}:15672"
        try:
            response = requests.get(
                f"{url}/api/whoami",
                auth=(user, self.rabbit.password.get_secret_value()),
                timeout=10,
            )
        except requests.RequestException as exc:
            if self.api is None:
                return failed(
                    name, f"cannot reach the management API: {type(exc).__name__}; " + NO_ADMIN
                )
            status = None
        else:
            status = response.status_code
        if status is not None and status not in (401, 403):
            problems.append(f"the management API answered {user} with HTTP {status}")
        if problems:
            return failed(name, "; ".join(problems))
        shown = f"HTTP {status}" if status else "unreachable"
        if self.api is None:
            # A refusal proves nothing alone (an unknown user is refused too), and the
            # tags were not read: a skip, never a pass.
            return skipped(
                name, f"its tags not read: {NO_ADMIN}; management API as {user}: {shown}"
            )
        return passed(name, f"user {user} has no tags; management API as {user}: {shown}")

    def _own_users(self) -> set[str]:
        names = TenantNames(self.doc.tenant)
        return {
            user
            for product in load_catalog().products
            for user in names.service(product).broker_logins()
        }

    def no_foreign_permissions(self) -> CheckResult:
        name = RABBITMQ_CHECKS[4]
        if self.api is None or self.admin is None:
            return failed(name, NO_ADMIN)
        vhost = self.rabbit.vhost
        users = {p["user"] for p in self.api.get(f"vhosts/{_vhost_path(vhost)}/permissions")}
        users |= {p["user"] for p in self.api.get(f"vhosts/{_vhost_path(vhost)}/topic-permissions")}
        allowed = self._own_users() | {self.admin.user}
        strangers = sorted(users - allowed)
        foreign = [u for u in strangers if not _is_administrator(self.api, u)]
        if foreign:
            return failed(name, f"vhost {vhost} is open to user(s) of others: {', '.join(foreign)}")
        return passed(
            name,
            f"only tenant {self.doc.tenant}'s users and administrators "
            f"have permissions on vhost {vhost}",
        )

    def limits_in_force(self) -> CheckResult:
        name = RABBITMQ_CHECKS[5]
        if self.api is None:
            return failed(name, NO_ADMIN)
        vhost = self.rabbit.vhost
        values: dict[str, Any] = {}
        for entry in self.api.get(f"vhost-limits/{_vhost_path(vhost)}"):
            values.update(entry.get("value", {}))
        policies = self.api.get(f"operator-policies/{_vhost_path(vhost)}")
        self.limits = {
            "broker_max_connections": values.get("max-connections"),
            "broker_max_queues": values.get("max-queues"),
            "broker_queue_max_length": _queue_cap(policies, "max-length"),
            "broker_queue_max_bytes": _queue_cap(policies, "max-length-bytes"),
        }
        problems = [
            f"{key} is not set on vhost {vhost}"
            for key, value in self.limits.items()
            if value is None or int(value) < 0
        ]
        if self.expected is not None:
            for key, value in self.limits.items():
                want = getattr(self.expected, key)
                if value is not None and int(value) != want:
                    problems.append(f"{key} is {value}, the stack config says {want}")
        # Operator policies reach classic and quorum queues only: a stream the tenant
        # declared holds what it likes (README "Security model").
        uncapped = [
            f"{q.get('name')} ({q.get('type', 'classic')})"
            for q in self.api.get(
                f"queues/{_vhost_path(vhost)}?columns=name,type,operator_policy"
            )
            if not q.get("operator_policy") and q.get("type") not in ("classic", "quorum")
        ]
        if uncapped:
            problems.append(
                f"{len(uncapped)} queue(s) under no operator policy, uncapped: "
                + ", ".join(sorted(uncapped)[:10])
            )
        if self.budget is not None:  # the fleet's vhosts against the node's budget
            maximum, reserved = self.budget
            fleet = [
                int(entry.get("value", {}).get("max-connections", -1))
                for entry in self.api.get("vhost-limits")
                if entry.get("vhost") != DEFAULT_VHOST
            ]
            used = sum(v for v in fleet if v > 0)
            if any(v < 0 for v in fleet) or used > maximum - reserved:
                problems.append(
                    f"the node's vhosts may open {used} connections"
                    f"{' (some unlimited)' if any(v < 0 for v in fleet) else ''}, over "
                    f"{maximum - reserved} ({maximum} less {reserved} reserved)"
                )
        shown = ", ".join(f"{k}={v}" for k, v in self.limits.items())
        if problems:
            return failed(name, "; ".join(problems) + f" ({shown})")
        return passed(name, shown)


@contextmanager
def _quiet_pika() -> Iterator[None]:
    """pika logs every refused connection at ERROR; here a refusal is the expected
    answer, reported as a check, so its log lines would only mislead."""
    logger = logging.getLogger("pika")
    level = logger.level
    logger.setLevel(logging.CRITICAL + 1)
    try:
        yield
    finally:
        logger.setLevel(level)


def _is_administrator(api: Management, user: str) -> bool:
    tags = api.get(f"users/{quote(user, safe='')}").get("tags") or []
    if isinstance(tags, str):
        tags = tags.split(",")
    return "administrator" in tags


def _queue_cap(policies: Iterable[dict[str, Any]], key: str) -> int | None:
    """The tightest ``key`` (``max-length``, ``max-length-bytes``) an operator policy
    applies to every queue."""
    caps = [
        int(p["definition"][key])
        for p in policies
        if p.get("pattern") == ".*"
        and p.get("apply-to") in ("queues", "all")
        and key in p.get("definition", {})
    ]
    return min(caps) if caps else None

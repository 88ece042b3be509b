"""The management-API calls cyrilgdn/terraform-provider-rabbitmq makes, per resource.

Paths are escaped as the rabbit-hole client does (``/`` becomes ``%2F``); a 404 on
delete is accepted, as upstream accepts it. ``provider`` holds the provider's inputs
(``endpoint``, ``username``, ``password`` resolved).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from urllib.parse import quote

import requests

#: Inputs whose change replaces the resource (``ForceNew`` in the upstream schemas).
FORCE_NEW: dict[str, frozenset[str]] = {
    "vHost:VHost": frozenset({"name"}),  # resource_vhost.go
    "user:User": frozenset({"name"}),  # resource_user.go
    "permissions:Permissions": frozenset({"user", "vhost"}),  # resource_permissions.go
    "policy:Policy": frozenset({"name", "vhost"}),  # resource_policy.go
    "operatorPolicy:OperatorPolicy": frozenset({"name", "vhost"}),  # resource_operator_policy.go
}

_LIMITS = (("maxConnections", "max-connections"), ("maxQueues", "max-queues"))


def _segment(value: str) -> str:
    return quote(value, safe="")


def call(
    provider: Mapping[str, Any], method: str, path: str, body: Any = None
) -> requests.Response:
    response = requests.request(
        method,
        f"{str(provider['endpoint']).rstrip('/')}/api/{path}",
        auth=(provider.get("username", "guest"), provider.get("password") or ""),
        json=body,
        timeout=15,
    )
    if response.status_code == 404 and method == "DELETE":
        return response
    if response.status_code >= 400:
        # The body names the rule broken; it never holds the request's password.
        raise RuntimeError(f"{method} /api/{path}: HTTP {response.status_code} {response.text}")
    return response


# rabbitmq/resource_vhost.go @ 4239e413d8053c1d5922193b267fbf1ec19d6ecf


def _limit_value(value: Any) -> int:
    return int(value)


def _put_vhost(provider: Mapping[str, Any], values: Mapping[str, Any]) -> str:
    name = _segment(values["name"])
    body: dict[str, Any] = {"description": values.get("description", ""), "tracing": False}
    if values.get("defaultQueueType"):
        body["default_queue_type"] = values["defaultQueueType"]
    call(provider, "PUT", f"vhosts/{name}", body)
    return name


def _put_limits(provider: Mapping[str, Any], name: str, values: Mapping[str, Any]) -> None:
    """One ``PUT /api/vhost-limits`` per limit set (0 is never sent: upstream treats it
    as unset)."""
    for key, limit in _LIMITS:
        if values.get(key) and _limit_value(values[key]):
            call(provider, "PUT", f"vhost-limits/{name}/{limit}", {"value": _limit_value(values[key])})


def vhost_create(provider: Mapping[str, Any], values: Mapping[str, Any]) -> None:
    """``CreateVhost``: ``PUT /api/vhosts/{name}``, then its limits."""
    _put_limits(provider, _put_vhost(provider, values), values)


def vhost_update(
    provider: Mapping[str, Any], _old: Mapping[str, Any], values: Mapping[str, Any]
) -> None:
    """``UpdateVhost``: the vhost again, then every limit deleted and re-set."""
    name = _put_vhost(provider, values)
    for _key, limit in _LIMITS:
        call(provider, "DELETE", f"vhost-limits/{name}/{limit}")
    _put_limits(provider, name, values)


def vhost_delete(provider: Mapping[str, Any], values: Mapping[str, Any]) -> None:
    """``DeleteVhost``: ``DELETE /api/vhosts/{name}``."""
    call(provider, "DELETE", f"vhosts/{_segment(values['name'])}")


# rabbitmq/resource_user.go @ 654dd0588adb530a7532e09da0d3a305640dea8d


def user_create(provider: Mapping[str, Any], values: Mapping[str, Any]) -> None:
    """``CreateUser``: ``PUT /api/users/{name}`` with the password and tags joined by commas."""
    call(
        provider,
        "PUT",
        f"users/{_segment(values['name'])}",
        {"password": values["password"], "tags": ",".join(values.get("tags") or [])},
    )


def user_update(
    provider: Mapping[str, Any], _old: Mapping[str, Any], values: Mapping[str, Any]
) -> None:
    """``UpdateUser``: the same ``PUT``, always with both password and tags."""
    user_create(provider, values)


def user_delete(provider: Mapping[str, Any], values: Mapping[str, Any]) -> None:
    call(provider, "DELETE", f"users/{_segment(values['name'])}")


# rabbitmq/resource_permissions.go @ 8abd848e02ff632db60f484de467e208891d7626


def _permissions_path(values: Mapping[str, Any]) -> str:
    return f"permissions/{_segment(values.get('vhost', '/'))}/{_segment(values['user'])}"


def permissions_create(provider: Mapping[str, Any], values: Mapping[str, Any]) -> None:
    """``CreatePermissions``: ``PUT /api/permissions/{vhost}/{user}``."""
    permissions = values["permissions"]
    call(
        provider,
        "PUT",
        _permissions_path(values),
        {k: permissions.get(k, "") for k in ("configure", "write", "read")},
    )


def permissions_update(
    provider: Mapping[str, Any], _old: Mapping[str, Any], values: Mapping[str, Any]
) -> None:
    permissions_create(provider, values)


def permissions_delete(provider: Mapping[str, Any], values: Mapping[str, Any]) -> None:
    call(provider, "DELETE", _permissions_path(values))


# rabbitmq/resource_policy.go @ f006ee58d6a2e0ff6f48f3be2cbe6fdbbdc560a6 and
# rabbitmq/resource_operator_policy.go @ 3ac79c6d9f2047df404c4c3c3905bc9d12df6dac


def _number(value: Any) -> Any:
    """Upstream sends definition values that parse as integers as numbers."""
    if isinstance(value, str):
        try:
            return int(value)
        except ValueError:
            return value
    return value


def _policy_path(kind: str, values: Mapping[str, Any]) -> str:
    collection = "operator-policies" if kind.startswith("operator") else "policies"
    return f"{collection}/{_segment(values['vhost'])}/{_segment(values['name'])}"


def policy_create(kind: str, provider: Mapping[str, Any], values: Mapping[str, Any]) -> None:
    """``CreatePolicy`` / ``CreateOperatorPolicy``: ``PUT`` of the whole policy."""
    policy = values["policy"]
    call(
        provider,
        "PUT",
        _policy_path(kind, values),
        {
            "vhost": values["vhost"],
            "name": values["name"],
            "pattern": policy["pattern"],
            "priority": int(policy.get("priority", 0)),
            "apply-to": policy.get("applyTo", "all"),
            "definition": {k: _number(v) for k, v in (policy.get("definition") or {}).items()},
        },
    )


def policy_delete(kind: str, provider: Mapping[str, Any], values: Mapping[str, Any]) -> None:
    call(provider, "DELETE", _policy_path(kind, values))


# Refresh: each resource's Read (ReadVhost, ReadUser, ReadPermissions, ReadPolicy,
# ReadOperatorPolicy) GETs the object and, on a 404, calls ``checkDeleted``, which
# clears the resource's id: ``pulumi refresh`` then drops it from the state, and the
# next update creates it again (rabbitmq/resource_vhost.go and util.go @ 2b57d706).


def _read_path(kind: str, values: Mapping[str, Any]) -> str:
    if kind == "vHost:VHost":
        return f"vhosts/{_segment(values['name'])}"
    if kind == "user:User":
        return f"users/{_segment(values['name'])}"
    if kind == "permissions:Permissions":
        return _permissions_path(values)
    return _policy_path(kind, values)


def exists(kind: str, provider: Mapping[str, Any], values: Mapping[str, Any]) -> bool:
    response = requests.get(
        f"{str(provider['endpoint']).rstrip('/')}/api/{_read_path(kind, values)}",
        auth=(provider.get("username", "guest"), provider.get("password") or ""),
        timeout=15,
    )
    if response.status_code == 404:
        return False
    if response.status_code >= 400:
        raise RuntimeError(f"GET /api/{_read_path(kind, values)}: HTTP {response.status_code}")
    return True

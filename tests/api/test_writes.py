"""The write calls, with an operator key, mapped onto the lifecycle commands (replay)."""

from __future__ import annotations

import time
from typing import Any

import requests

from tenant_infra import commands
from tests.api.conftest import Served
from tests.support.api import decode_connections, decode_denied


def call(served: Served, method: str, path: str, key: str | None, body: Any = None) -> requests.Response:
    headers = {"X-API-Key": served.key("ledger")} if key is None else {"Authorization": f"Bearer {key}"}
    return requests.request(method, served.url + path, json=body, headers=headers, timeout=30)


def until(check: Any, seconds: float = 90) -> Any:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError("timed out")


def test_write_calls_onboard_register_suspend_and_reactivate(served: Served) -> None:
    operator, ledger = served.key(), served.key("ledger")
    tenant = served.world.new_tenant("w")

    # Only an operator key, as a Bearer token, may write.
    body = {"name": "Write Co", "slug": tenant, "environment": "staging", "isolation": "schema", "metadata": {"plan": "gold"}}
    assert call(served, "POST", "/v1/tenants", None, body).status_code == 401
    assert call(served, "POST", "/v1/tenants", ledger, body).status_code == 403
    created = call(served, "POST", "/v1/tenants", operator, body)
    assert created.status_code == 201, created.text
    assert created.json() == {"id": tenant, "slug": tenant, "status": "active"}
    assert call(served, "POST", "/v1/tenants", operator, body).status_code == 200  # idempotent
    described = served.get(f"/v1/tenants/{tenant}", operator)
    assert described.status_code == 200
    assert described.json()["metadata"] == {"name": "Write Co", "plan": "gold"}

    path = f"/v1/tenants/{tenant}/associations/ledger"
    associated = call(served, "POST", path, operator, {"isolationMode": "schema"})
    assert associated.status_code == 201, associated.text
    assert associated.json() == {"serviceName": "ledger", "status": "provisioning"}
    ready = until(lambda: served.connections(tenant, "ledger", ledger).status_code == 200)
    assert ready
    repeat = call(served, "POST", path, operator, {"isolationMode": "schema"})
    assert repeat.status_code == 200 and repeat.json()["status"] == "ready"
    assert call(served, "POST", path, operator, {"isolationMode": "isolated"}).status_code == 409
    assert call(served, "POST", path, operator, {"isolationMode": "sideways"}).status_code == 400

    suspended = call(served, "PUT", f"{path}/suspend", operator)
    assert suspended.status_code == 200, suspended.text
    assert decode_denied(served.connections(tenant, "ledger", ledger)) == "suspended"
    assert call(served, "PUT", f"{path}/suspend", operator).status_code == 409  # already

    reactivated = call(served, "PUT", f"/v1/tenants/{tenant}/reactivate", operator)
    assert reactivated.status_code == 200, reactivated.text
    decode_connections(served.connections(tenant, "ledger", ledger).json())
    assert call(served, "PUT", f"/v1/tenants/{tenant}/reactivate", operator).status_code == 409


def test_write_calls_refuse_bad_input_before_anything_runs(served: Served) -> None:
    operator = served.key()
    for body in ({"slug": "Bad_Slug"}, {"slug": 7}, {"metadata": {"k": 1}}, [1, 2]):
        assert call(served, "POST", "/v1/tenants", operator, body).status_code == 400, body
    response = requests.post(
        served.url + "/v1/tenants", data=b"{" * 70_000, timeout=30,
        headers={"Authorization": f"Bearer {operator}"},
    )
    assert response.status_code == 413
    missing = "/v1/tenants/nobody-here/associations/ledger"
    assert call(served, "POST", missing, operator, {"isolationMode": "schema"}).status_code == 404
    assert call(served, "PUT", f"{missing}/suspend", operator).status_code == 404
    assert served.world.plane.rows("SELECT id FROM registry.tenants") == []


def test_a_failed_command_is_never_answered_as_done(served: Served, monkeypatch: Any) -> None:
    from tests.support.registry import Subscriber

    operator, ledger = served.key(), served.key("ledger")
    world = served.world
    tenant = world.new_tenant("wf")
    world.onboard(tenant, "ledger:SCHEMA", "tracer:SCHEMA")
    path = f"/v1/tenants/{tenant}/associations/ledger"

    real_up = world.backend.up

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("the update failed on purpose")

    monkeypatch.setattr(world.backend, "up", broken)
    response = call(served, "PUT", f"{path}/suspend", operator)
    assert response.status_code == 500 and "on purpose" in response.json()["error"]
    monkeypatch.setattr(world.backend, "up", real_up)
    assert served.connections(tenant, "ledger", ledger).status_code == 200  # still served

    assert call(served, "PUT", f"{path}/suspend", operator).status_code == 200
    subscriber = Subscriber(world.plane.channel)
    try:
        reactivated = call(served, "PUT", f"/v1/tenants/{tenant}/reactivate", operator)
        assert reactivated.status_code == 200, reactivated.text
        events = [(e["event_type"], e["payload"].get("service_name")) for e in subscriber.received()]
    finally:
        subscriber.close()
    # Products dropped the tenant's ledger on its suspension: only this re-adds it.
    assert events == [("tenant.service.reactivated", "ledger")]

    commands.deregister(tenant, "tracer", retain_data=True, **world.kwargs())
    retained = call(served, "POST", f"/v1/tenants/{tenant}/associations/tracer", operator, {"isolationMode": "schema"})
    assert retained.status_code == 409


def test_a_product_reads_only_its_own_tenants_metadata(served: Served) -> None:
    tenant = served.world.new_tenant("md")
    served.world.onboard(tenant, "tracer:SCHEMA")
    tracer, ledger, operator = served.key("tracer"), served.key("ledger"), served.key()
    assert served.get(f"/v1/tenants/{tenant}", tracer).json() == {
        "id": tenant, "slug": tenant, "name": tenant, "status": "active", "metadata": {},
    }
    assert served.get(f"/v1/tenants/{tenant}", operator).status_code == 200
    # The same answer as for a tenant that does not exist: nothing leaks.
    assert served.get(f"/v1/tenants/{tenant}", ledger).status_code == 404
    assert served.get("/v1/tenants/nobody-here", ledger).status_code == 404


def test_malformed_requests_get_json_refusals_and_no_redirect(served: Served) -> None:
    operator = served.key()
    nested = requests.post(
        served.url + "/v1/tenants", data=b"[" * 60_000, timeout=30,
        headers={"Authorization": f"Bearer {operator}"},
    )
    assert nested.status_code == 400
    for path in ("/v1/nothing", "/v1/tenants/active/", "/v1/tenants/x/associations/ledger/connections/"):
        response = requests.get(served.url + path, headers={"Host": "evil.example"}, allow_redirects=False, timeout=30)
        assert response.status_code == 404, path
        assert response.headers["cache-control"] == "no-store"
        assert response.json()["code"] == "NOT_FOUND"
    wrong_method = requests.delete(served.url + "/v1/tenants/active", timeout=30)
    assert wrong_method.status_code == 405 and wrong_method.headers["cache-control"] == "no-store"


def test_a_new_tenant_never_borrows_a_platform(served: Served) -> None:
    """Without ``serve --platform FILE`` nothing says where a new tenant's stores are:
    the call is refused, and nothing is created."""
    from tests.support.api import running

    app = commands.api(documents=served.documents, writes=True, verify=None, **served.world.kwargs())
    with running(app) as url:
        response = requests.post(
            url + "/v1/tenants", json={"slug": "nowhere"}, timeout=30,
            headers={"Authorization": f"Bearer {served.key()}"},
        )
    assert response.status_code == 409 and response.json()["code"] == "NO_PLATFORM"
    assert served.world.plane.rows("SELECT id FROM registry.tenants") == []

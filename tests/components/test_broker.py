"""TenantVhost and BrokerUser under mocks: one vhost per tenant, users scoped to it."""

from __future__ import annotations

VHOST = "rabbitmq:index/vHost:VHost"
USER = "rabbitmq:index/user:User"
PERMISSIONS = "rabbitmq:index/permissions:Permissions"
OPERATOR_POLICY = "rabbitmq:index/operatorPolicy:OperatorPolicy"


def test_one_vhost_named_after_the_tenant_with_limits(plan_for) -> None:
    plan = plan_for("globex")
    (vhost,) = plan.of_type(VHOST)
    assert vhost.inputs["name"] == "globex"
    assert (vhost.inputs["maxConnections"], vhost.inputs["maxQueues"]) == ("100", "200")
    assert vhost.protect
    (policy,) = plan.of_type(OPERATOR_POLICY)
    assert policy.inputs["vhost"] == "globex"
    assert policy.inputs["policy"]["definition"] == {
        "max-length": "100000",
        "max-length-bytes": str(1 << 30),
    }
    assert policy.deleted_with == vhost.name
    (overflow,) = plan.of_type("rabbitmq:index/policy:Policy")
    assert overflow.inputs["vhost"] == "globex"
    assert overflow.inputs["policy"]["definition"] == {"overflow": "reject-publish"}
    assert overflow.deleted_with == vhost.name


def test_each_service_has_its_own_untagged_user_on_the_tenant_vhost_only(plan_for) -> None:
    plan = plan_for("globex")  # ledger and tracer both use RabbitMQ
    users = {u.inputs["name"]: u for u in plan.of_type(USER)}
    assert set(users) == {"ledger_globex", "tracer_globex"}
    for user in users.values():
        assert user.inputs["tags"] == []
        assert user.inputs["password"] == "[secret]"
    permissions = plan.of_type(PERMISSIONS)
    assert sorted(p.inputs["user"] for p in permissions) == sorted(users)
    for permission in permissions:
        assert permission.inputs["vhost"] == "globex"


def test_products_without_rabbitmq_get_no_broker_resources(plan_for) -> None:
    plan = plan_for("acme", ["reporter:SCHEMA"])
    assert not [r for r in plan.resources if r.type.startswith("rabbitmq:")]
    assert not plan.of_type("pulumi:providers:rabbitmq")


def test_management_password_is_secret(plan_for) -> None:
    """The RabbitMQ SDK does not mark the provider password secret by itself."""
    provider = plan_for("globex").by_name("globex-rabbitmq-admin")
    assert "password" in provider.secret_inputs

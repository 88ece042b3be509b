"""ServicePostgres under mocks: the right objects in each isolation mode, least privilege."""

from __future__ import annotations

from pathlib import Path

import pytest

from tenant_infra.plan import Plan

ROLE = "postgresql:index/role:Role"
DATABASE = "postgresql:index/database:Database"
SCHEMA = "postgresql:index/schema:Schema"
GRANT = "postgresql:index/grant:Grant"


def pg_resources(plan: Plan) -> list[str]:
    return sorted(r.name for r in plan.resources if r.type.startswith("postgresql:"))


def test_database_mode_declares_owner_login_database_schema_and_grants(plan_for) -> None:
    plan = plan_for("acme", ["ledger:DATABASE"])
    assert pg_resources(plan) == [
        "acme-ledger-postgres-dedicated-connect-a",
        "acme-ledger-postgres-dedicated-db",
        "acme-ledger-postgres-dedicated-revoke-public",
        "acme-ledger-postgres-dedicated-schema",
        "acme-ledger-postgres-login-a",
        "acme-ledger-postgres-role",
    ]
    db = plan.by_name("acme-ledger-postgres-dedicated-db")
    assert db.inputs["name"] == "ledger_acme"
    assert "owner" not in db.inputs  # owned by the platform admin, not the tenant
    schema = plan.by_name("acme-ledger-postgres-dedicated-schema")
    assert (schema.inputs["name"], schema.inputs["database"], schema.inputs["owner"]) == (
        "tenant_acme",
        "ledger_acme",
        "ledger_acme",
    )


def test_a_legacy_service_keeps_its_one_owner_login(plan_for) -> None:
    """A stack file from before rotation: the owner logs in, as it always did."""
    plan = plan_for("acme")  # stacks/Pulumi.acme.yaml: ledger DATABASE, no credentials
    assert pg_resources(plan) == [
        "acme-ledger-postgres-dedicated-connect",
        "acme-ledger-postgres-dedicated-db",
        "acme-ledger-postgres-dedicated-revoke-public",
        "acme-ledger-postgres-dedicated-schema",
        "acme-ledger-postgres-role",
    ]
    role = plan.by_name("acme-ledger-postgres-role")
    assert role.inputs["login"] is True and "password" in role.secret_inputs
    assert plan.by_name("acme-ledger-postgres-dedicated-connect").inputs["role"] == "ledger_acme"


def test_database_mode_revokes_public_and_grants_only_connect(plan_for) -> None:
    plan = plan_for("acme", ["ledger:DATABASE"])
    revoke = plan.by_name("acme-ledger-postgres-dedicated-revoke-public")
    assert (revoke.inputs["role"], revoke.inputs["database"], revoke.inputs["objectType"]) == (
        "public",
        "ledger_acme",
        "database",
    )
    assert revoke.inputs["privileges"] == []  # an empty privilege list revokes all
    connect = plan.by_name("acme-ledger-postgres-dedicated-connect-a")
    assert connect.inputs["role"] == "ledger_acme__0a"
    assert connect.inputs["privileges"] == ["CONNECT"]


def test_schema_mode_uses_the_shared_database(plan_for) -> None:
    plan = plan_for("globex", ["ledger:SCHEMA"])
    assert pg_resources(plan) == [
        "globex-ledger-postgres-login-a",
        "globex-ledger-postgres-role",
        "globex-ledger-postgres-shared-connect-a",
        "globex-ledger-postgres-shared-schema",
    ]
    assert not plan.of_type(DATABASE)
    schema = plan.by_name("globex-ledger-postgres-shared-schema")
    assert (schema.inputs["name"], schema.inputs["database"], schema.inputs["owner"]) == (
        "tenant_globex",
        "ledger",
        "ledger_globex",
    )
    assert schema.inputs["dropCascade"] is False


PLAIN = ("superuser", "createDatabase", "createRole", "replication", "bypassRowLevelSecurity")


@pytest.mark.parametrize("mode", ["DATABASE", "SCHEMA"])
def test_the_owner_never_logs_in_and_its_login_acts_as_it(plan_for, mode: str) -> None:
    plan = plan_for("acme", [f"ledger:{mode}"])
    owner = plan.by_name("acme-ledger-postgres-role")
    assert owner.inputs["name"] == "ledger_acme"
    assert owner.inputs["login"] is False and "password" not in owner.inputs
    login = plan.by_name("acme-ledger-postgres-login-a")
    assert login.inputs["name"] == "ledger_acme__0a"
    assert login.inputs["login"] is True
    # A NOINHERIT member that becomes the owner at login: what it creates is the owner's.
    assert login.inputs["roles"] == ["ledger_acme"]
    assert login.inputs["assumeRole"] == "ledger_acme"
    for role in (owner, login):
        for flag in (*PLAIN, "inherit"):
            assert role.inputs[flag] is False, (role.name, flag)
        assert role.inputs["connectionLimit"] == 150
        assert role.inputs["statementTimeout"] == 60000
        assert role.inputs["searchPaths"] == ["tenant_acme"]
    assert login.inputs["password"] == "[secret]"
    assert "password" in login.secret_inputs


@pytest.mark.parametrize("mode", ["DATABASE", "SCHEMA"])
def test_data_holding_resources_are_protected(plan_for, mode: str) -> None:
    plan = plan_for("acme", [f"ledger:{mode}"])
    for resource in plan.of_type(SCHEMA) + plan.of_type(DATABASE):
        assert resource.protect, resource.name


def test_dev_stack_can_opt_out_of_protection(plan_for) -> None:
    plan = plan_for("dev")
    assert plan.of_type(SCHEMA) and not any(r.protect for r in plan.of_type(SCHEMA))


def test_objects_inside_a_dedicated_database_are_deleted_with_it(plan_for) -> None:
    plan = plan_for("acme", ["ledger:DATABASE"])
    inside = [r for r in plan.resources if r.type in (SCHEMA, GRANT)]
    assert inside
    for resource in inside:
        assert resource.deleted_with == "acme-ledger-postgres-dedicated-db", resource.name
    assert (
        plan.by_name("acme-ledger-postgres-dedicated-schema").provider == "acme-ledger-pg-dedicated"
    )


@pytest.mark.parametrize(
    ("mode", "provider"),
    [("DATABASE", "acme-ledger-pg-admin"), ("SCHEMA", "acme-ledger-pg-shared")],
)
def test_role_is_dropped_through_the_database_holding_its_objects(
    plan_for, mode: str, provider: str
) -> None:
    """DROP OWNED runs only in the provider's database (cyrilgdn#203)."""
    plan = plan_for("acme", [f"ledger:{mode}"])
    assert plan.by_name("acme-ledger-postgres-role").provider == provider
    assert plan.by_name("acme-ledger-postgres-login-a").provider == provider
    pg_provider = plan.by_name(provider)
    expected_db = "postgres" if mode == "DATABASE" else "ledger"
    assert pg_provider.inputs["database"] == expected_db
    assert pg_provider.inputs["password"] == "[secret]"


def test_store_names_never_collide_between_modes(plan_for) -> None:
    schema_mode = plan_for("acme", ["ledger:SCHEMA"])
    database_mode = plan_for("acme", ["ledger:DATABASE"])
    store_s = {r.name for r in schema_mode.resources if "-shared-" in r.name}
    store_d = {r.name for r in database_mode.resources if "-dedicated-" in r.name}
    assert store_s and store_d and not store_s & store_d


def _promoting(tmp_path: Path, promotion: dict[str, object], **service: object) -> Path:
    import yaml

    source = Path(__file__).resolve().parents[2] / "stacks" / "Pulumi.acme.yaml"
    values = yaml.safe_load(source.read_text())
    values["config"]["tenant-infra:services"] = [
        {"product": "ledger", "isolation": "SCHEMA", **service, "promotion": promotion}
    ]
    path = tmp_path / "Pulumi.acme.yaml"
    path.write_text(yaml.safe_dump(values))
    return path


def test_a_promotion_declares_the_dedicated_store_beside_with_credentials_of_its_own(
    tmp_path,
) -> None:
    from tenant_infra import commands

    plan = commands.plan("acme", (), _promoting(tmp_path, {"revision": "0002"}))
    old, new = plan.by_name("acme-ledger-postgres-role"), plan.by_name("acme-ledger-postgres-role-g1")
    assert (old.inputs["name"], new.inputs["name"]) == ("ledger_acme", "ledger_acme__g1")
    assert old.secret_fingerprints["password"] != new.secret_fingerprints["password"]
    assert plan.by_name("acme-ledger-postgres-shared-schema").inputs["owner"] == "ledger_acme"
    dedicated = plan.by_name("acme-ledger-postgres-dedicated-schema")
    assert dedicated.inputs["owner"] == "ledger_acme__g1"
    # Nothing of record lives there yet: an aborted promotion can drop it.
    assert not plan.by_name("acme-ledger-postgres-dedicated-db").protect
    assert plan.by_name("acme-ledger-postgres-shared-schema").protect
    # Migrated to the source's revision, as its own login; the live store to head.
    target = plan.by_name("acme-ledger-promotion-target")
    assert (target.inputs["head"], target.inputs["user"]) == ("0002", "ledger_acme__g1")
    assert plan.by_name("acme-ledger-migration").inputs["user"] == "ledger_acme"
    assert plan.outputs["services"]["ledger"]["postgresql"]["user"] == "ledger_acme"


def test_once_repointed_the_old_schema_is_aside_and_its_login_refused(tmp_path) -> None:
    from tenant_infra import commands

    path = _promoting(
        tmp_path,
        {"revision": "0003", "repointed": True, "keepSourceUntil": "2030-01-01T00:00:00Z"},
        isolation="DATABASE",
        generation=1,
    )
    plan = commands.plan("acme", (), path)
    old = plan.by_name("acme-ledger-postgres-role")
    assert old.inputs["login"] is False
    retired = plan.by_name("acme-ledger-postgres-shared-schema")
    assert retired.inputs["name"] == "retired_tenant_acme" and retired.protect
    assert plan.by_name("acme-ledger-postgres-dedicated-db").protect
    assert plan.outputs["services"]["ledger"]["postgresql"]["user"] == "ledger_acme__g1"
    assert plan.outputs["services"]["ledger"]["isolation"] == "DATABASE"
    names = {r.name for r in plan.resources}
    assert "acme-ledger-promotion-target" not in names


@pytest.mark.parametrize(
    ("service", "promotion", "message"),
    [
        ({"isolation": "DATABASE"}, {"revision": "0003"}, "keeps the service in SCHEMA mode"),
        ({}, {"revision": "0003", "repointed": True}, "keeps the service in DATABASE mode"),
        ({"isolation": "DATABASE"}, {"revision": "0003", "repointed": True}, "generation"),
        ({}, {"revision": "0003; DROP"}, "revision"),
        ({"generation": 10}, {"revision": "0003"}, "generation"),
    ],
)
def test_an_impossible_promotion_is_refused(tmp_path, service, promotion, message) -> None:
    from tenant_infra import commands
    from tenant_infra.errors import InvalidInput

    with pytest.raises(InvalidInput, match=message):
        commands.plan("acme", (), _promoting(tmp_path, promotion, **service))


def _with_removal(tmp_path: Path, removal: str) -> Path:
    import yaml

    source = Path(__file__).resolve().parents[2] / "stacks" / "Pulumi.acme.yaml"
    values = yaml.safe_load(source.read_text())
    for service in values["config"]["tenant-infra:services"]:
        service["removal"] = removal
    path = tmp_path / "Pulumi.acme.yaml"
    path.write_text(yaml.safe_dump(values))
    return path


def test_a_retained_service_keeps_only_its_protected_data_and_no_login(tmp_path) -> None:
    from tenant_infra import commands

    plan = commands.plan("acme", (), _with_removal(tmp_path, "retain"))
    assert plan.by_name("acme-ledger-postgres-role").inputs["login"] is False
    for name in (
        "acme-ledger-postgres-dedicated-db",
        "acme-ledger-postgres-dedicated-schema",
        "acme-rabbitmq-vhost",
    ):
        assert plan.by_name(name).protect
    declared = {r.name for r in plan.resources}
    for credential in ("acme-ledger-rabbitmq-user", "acme-ledger-vault-secret", "acme-ledger-migration"):
        assert credential not in declared  # credentials and migrations go


def test_a_purge_lifts_protection_and_cascades_the_schema(tmp_path) -> None:
    from tenant_infra import commands

    plan = commands.plan("acme", (), _with_removal(tmp_path, "purge"))
    schema = plan.by_name("acme-ledger-postgres-dedicated-schema")
    assert schema.inputs["dropCascade"] is True and not schema.protect
    assert not plan.by_name("acme-ledger-postgres-dedicated-db").protect
    assert not plan.by_name("acme-rabbitmq-vhost").protect


def test_a_dedicated_database_is_dropped_before_its_role(plan_for) -> None:
    """DROP ROLE fails while the role owns the schema inside an undropped database."""
    plan = plan_for("acme", ["ledger:DATABASE"])
    assert (
        "acme-ledger-postgres-role" in plan.by_name("acme-ledger-postgres-dedicated-db").depends_on
    )

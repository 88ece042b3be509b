"""The fleet's connection budget per shared server, from tenant configs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from tenant_infra import budget
from tenant_infra.config import TenantConfig

DEV = yaml.safe_load((Path(__file__).resolve().parents[1] / "stacks" / "Pulumi.dev.yaml").read_text())["config"]


def config(tenant: str, tier: str = "starter", pg_max: int | None = None, mq_max: int | None = None, **extra: Any) -> TenantConfig:
    platform = yaml.safe_load(yaml.safe_dump(DEV["tenant-infra:platform"]))
    if pg_max is not None:
        platform["postgres"]["default"]["maxConnections"] = pg_max
    if mq_max is not None:
        platform["rabbitmq"]["maxConnections"] = mq_max
    values = dict(DEV) | {"tenant-infra:tenant": tenant, "tenant-infra:tier": tier, "tenant-infra:platform": platform}
    return TenantConfig.from_pulumi_values(values | extra)


def test_limits_add_up_per_server_and_node() -> None:
    fleet = [config(f"t{i}", pg_max=100, mq_max=100) for i in range(3)]  # starter: 2 roles x 10, vhost 20
    by_where = {s.where: s for s in budget.servers(fleet)}
    assert by_where["PostgreSQL 127.0.0.1:5432"].used == 60
    assert by_where["RabbitMQ 127.0.0.1:5672"].used == 60
    assert budget.problems(fleet) == []
    fleet.append(config("t3", tier="standard", pg_max=100, mq_max=100))  # +50 roles, +100 vhost
    found = budget.problems(fleet)
    assert len(found) == 2 and "add up to 110, over 90" in found[0] and "add up to 160, over 90" in found[1]


def test_undeclared_servers_are_not_judged_and_disagreeing_files_get_the_strictest() -> None:
    assert budget.problems([config(f"u{i}", tier="enterprise") for i in range(20)]) == []
    fleet = [config("aa", pg_max=1000), config("bb", pg_max=50)]  # 2 x 20 = 40 used
    assert budget.problems(fleet) == []
    fleet.append(config("cc", pg_max=1000))
    assert "over 40 (50 less 10 reserved)" in budget.problems(fleet)[0]


def test_removed_services_use_nothing() -> None:
    gone = config("gg", pg_max=15)
    gone = gone.with_services([s.model_copy(update={"removal": "retain"}) for s in gone.services])
    assert budget.problems([gone]) == []


def test_a_plan_reads_the_fleet_only_where_its_own_file_declares_a_budget() -> None:
    assert not budget.declared(config("nn"))
    assert budget.declared(config("pp", pg_max=100))
    assert budget.declared(config("mq", mq_max=100))

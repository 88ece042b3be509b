"""``tenantctl render migrate-job``: the ConfigMap snapshot and the Indexed Job.

No cluster exists here: the objects are validated against the Kubernetes schema
(``kubernetes-validate``, strict: unknown fields are refused) of a version that knows
``backoffLimitPerIndex`` (beta from 1.29, on by default; GA in 1.33).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from tenant_infra.cli import main
from tenant_infra.config import TenantConfig
from tenant_infra.errors import EXIT_INVALID, InvalidInput
from tenant_infra.kubernetes.migrate_job import (
    CONTAINER,
    SECRETS,
    MigrateJobSpec,
    render_migrate_job,
)
from tenant_infra.migrate.snapshot import KIND, Snapshot, SnapshotEntry
from tests.support.registry import ControlPlane, control_plane

ROOT = Path(__file__).resolve().parents[2]
DEV = yaml.safe_load((ROOT / "stacks" / "Pulumi.dev.yaml").read_text())["config"]
#: Versions whose schema knows every field rendered; the newest too, to catch removals.
K8S_VERSIONS = ("1.30.0", kubernetes_validate.latest_version())


def snapshot(n: int = 5) -> Snapshot:
    return Snapshot(
        "ledger",
        tuple(SnapshotEntry(f"t{i:03d}", "DATABASE" if i % 3 else "SCHEMA") for i in range(n)),
    )


def validate(document: dict[str, Any]) -> None:
    for version in K8S_VERSIONS:
        kubernetes_validate.validate(document, version, strict=True)


def test_job_and_configmap_validate_and_say_what_the_issue_asks() -> None:
    spec = MigrateJobSpec("ledger", 5, "registry.example/tenant-infra:1.2.3", "fleet")
    rendered = render_migrate_job(spec, snapshot(12))
    for document in rendered.documents:
        validate(document)
    cm, job = rendered.config_map, rendered.job
    assert cm["metadata"]["name"] == job["metadata"]["name"] == rendered.name
    assert cm["metadata"]["namespace"] == job["metadata"]["namespace"] == "fleet"
    targets = json.loads(cm["data"]["targets.json"])
    assert targets["kind"] == KIND and targets["product"] == "ledger"
    assert len(targets["tenants"]) == 12 and set(targets["tenants"][0]) == {"tenant", "isolation"}

    s = job["spec"]
    assert s["completionMode"] == "Indexed" and s["completions"] == 5
    assert (s["parallelism"], s["backoffLimitPerIndex"], s["maxFailedIndexes"]) == (4, 2, 1)
    fail_index, ignore = s["podFailurePolicy"]["rules"]
    assert fail_index == {
        "action": "FailIndex",
        "onExitCodes": {"containerName": CONTAINER, "operator": "In", "values": [EXIT_INVALID]},
    }
    assert ignore == {
        "action": "Ignore",
        "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}],
    }
    pod = s["template"]["spec"]
    assert pod["restartPolicy"] == "Never"
    (container,) = pod["containers"]
    assert container["command"] == [
        "tenantctl",
        "migrate",
        "--product",
        "ledger",
        "--shards",
        "5",
        "--targets",
        "/snapshot/targets.json",
    ]
    assert container["image"] == spec.image
    assert {"cpu", "memory", "ephemeral-storage"} <= set(container["resources"]["requests"])
    assert container["volumeMounts"] == [
        {"name": "targets", "mountPath": "/snapshot", "readOnly": True}
    ]
    assert pod["volumes"][0]["configMap"]["name"] == cm["metadata"]["name"]
    refs = {(e["valueFrom"]["secretKeyRef"]["name"], e["name"]) for e in container["env"]}
    assert refs == {(name, var) for name, (variables, _) in SECRETS.items() for var in variables}
    assert all("value" not in e for e in container["env"])  # from Secrets, never inline


def test_names_follow_the_content_and_options_override_defaults(tmp_path: Path) -> None:
    spec = MigrateJobSpec("ledger", 3, "img:1")
    one, again = render_migrate_job(spec, snapshot()), render_migrate_job(spec, snapshot())
    assert one.name == again.name and one.yaml() == again.yaml()  # re-applying changes nothing
    assert render_migrate_job(MigrateJobSpec("ledger", 3, "img:2"), snapshot()).name != one.name
    assert render_migrate_job(spec, snapshot(6)).name != one.name
    assert len(one.name) <= 63
    tuned = render_migrate_job(
        MigrateJobSpec(
            "ledger", 40, "img:1", parallelism=8, backoff_limit_per_index=0, max_failed_indexes=0
        ),
        snapshot(),
    ).job["spec"]
    assert (tuned["parallelism"], tuned["backoffLimitPerIndex"], tuned["maxFailedIndexes"]) == (
        8,
        0,
        0,
    )
    assert (
        render_migrate_job(MigrateJobSpec("ledger", 40, "i"), snapshot()).job["spec"][
            "maxFailedIndexes"
        ]
        == 4
    )
    assert [d["kind"] for d in yaml.safe_load_all(one.yaml())] == ["ConfigMap", "Job"]
    paths = one.write(tmp_path / "out")
    assert [yaml.safe_load(p.read_text())["kind"] for p in paths] == ["ConfigMap", "Job"]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"shards": 0}, "--shards"),
        ({"image": "bad image"}, "--image"),
        ({"image": ""}, "--image"),
        ({"namespace": "Not_A_Label"}, "--namespace"),
        ({"parallelism": 0}, "--parallelism"),
        ({"backoff_limit_per_index": -1}, "--backoff-limit-per-index"),
        ({"max_failed_indexes": 4}, "--max-failed-indexes"),
    ],
)
def test_spec_refusals(kwargs: dict[str, Any], message: str) -> None:
    base: dict[str, Any] = {"product": "ledger", "shards": 3, "image": "img:1"}
    with pytest.raises(InvalidInput, match=message):
        MigrateJobSpec(**(base | kwargs))


def test_a_snapshot_too_big_for_a_configmap_is_refused() -> None:
    big = Snapshot("ledger", tuple(SnapshotEntry(f"t{i}", "SCHEMA") for i in range(25_000)))
    with pytest.raises(InvalidInput, match="more than one ConfigMap holds"):
        render_migrate_job(MigrateJobSpec("ledger", 3, "img:1"), big)


# -- from the registry, through the CLI --------------------------------------------------


def config(tenant: str, *services: str) -> TenantConfig:
    return TenantConfig.model_validate(
        {
            "tenant": tenant,
            "services": [
                {"product": s.split(":")[0], "isolation": s.split(":")[1]} for s in services
            ],
            "platform": DEV["tenant-infra:platform"],
        }
    )


@pytest.fixture
def plane(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[ControlPlane]:
    with control_plane(tmp_path) as plane:
        monkeypatch.chdir(tmp_path)  # the project folder: its platform/ names the registry
        for name, value in plane.environ.items():
            monkeypatch.setenv(name, value)
        yield plane


SECRET_VALUES = {
    "TENANT_INFRA_ADMIN_DSN": "postgresql://discovery:dsn-s3cret-9f2@db.internal/ledger",
    "VAULT_TOKEN": "hvs.vault-s3cret-77aa",
    "TENANT_INFRA_REGISTRY_PASSWORD": "registry-s3cret-41",
}


def test_render_takes_the_registry_s_tenants_and_writes_no_secret(
    plane: ControlPlane,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from tenant_infra.registry import Change, Registry, ServiceChange

    registry = Registry.from_platform(plane.root, plane.environ).open()
    registered = {"acme": "SCHEMA", "globex": "DATABASE", "initech": "SCHEMA"}
    for tenant, mode in registered.items():
        cfg = config(tenant, f"ledger:{mode}", "tracer:SCHEMA")
        services = [
            ServiceChange("ledger", mode, "ready"),
            ServiceChange("tracer", "SCHEMA", "ready"),
        ]
        registry.record(Change(tenant, "onboard", cfg, services))
    gone = config("hooli", "ledger:SCHEMA")
    registry.record(Change("hooli", "onboard", gone, [ServiceChange("ledger", "SCHEMA", "ready")]))
    registry.record(
        Change("hooli", "offboard", gone, [ServiceChange("ledger", "SCHEMA", "retained")])
    )
    other = config("umbrella", "tracer:DATABASE")
    registry.record(
        Change("umbrella", "onboard", other, [ServiceChange("tracer", "DATABASE", "ready")])
    )
    resting = config("dunder", "ledger:DATABASE")
    registry.record(
        Change("dunder", "onboard", resting, [ServiceChange("ledger", "DATABASE", "ready")])
    )
    registry.record(
        Change("dunder", "suspend", resting, [ServiceChange("ledger", "DATABASE", "suspended")])
    )
    for name, value in SECRET_VALUES.items():
        monkeypatch.setenv(name, value)

    args = ["render", "migrate-job", "--product", "ledger", "--shards", "2", "--image", "img:1"]
    with pytest.raises(SystemExit) as info:
        main([*args, "--namespace", "fleet"])
    out, err = capsys.readouterr()
    assert info.value.code == 0, err
    cm, job = yaml.safe_load_all(out)
    validate(cm)
    validate(job)
    tenants = json.loads(cm["data"]["targets.json"])["tenants"]
    # Retained (no login left), suspended (NOLOGIN until resumed, which migrates) and
    # other products' tenants are not targets; the suspended ones are named.
    assert {t["tenant"]: t["isolation"] for t in tenants} == registered
    assert "3 tenant(s) of ledger in 2 shard(s)" in err
    assert "1 suspended tenant(s) left out (tenantctl resume migrates them): dunder" in err

    with pytest.raises(SystemExit) as info:
        main([*args, "--out", str(tmp_path / "manifests")])
    written, _ = capsys.readouterr()
    assert info.value.code == 0
    files = [Path(line) for line in written.splitlines()]
    assert len(files) == 2 and all(f.is_file() for f in files)
    everything = out + err + "".join(f.read_text() for f in files)
    for value in SECRET_VALUES.values():
        assert value not in everything
    assert "s3cret" not in everything

    with pytest.raises(SystemExit) as info:
        main([*args[:-2], "--image", "has space"])
    _, err = capsys.readouterr()
    assert info.value.code == EXIT_INVALID and err.count("\n") == 1

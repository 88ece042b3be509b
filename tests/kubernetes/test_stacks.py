"""``render kubernetes``: every Stack valid against the operator's CRD (unknown fields
refused), every ConfigMap against Kubernetes' schema, no secret in any manifest, no
destroy for a retained tenant, and one bad stack file failing alone."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from tenant_infra import commands
from tenant_infra.config import TenantConfig
from tenant_infra.errors import InvalidInput
from tenant_infra.kubernetes import stacks
from tenant_infra.tenant import TenantNames

from .fleet import SECRET_VALUES, platform, stack_config, write_fleet
from .schemas import CRD, K8S_VERSION, manifest_errors, validators

ARGS: dict[str, Any] = {
    "image": "registry.example.com/platform/tenant-infra:0.2.0",
    "backend": "s3://tenant-state?region=eu-west-1",
    "secrets_provider": "awskms://alias/tenant-infra?region=eu-west-1",
    "namespace": "tenants",
}


def render(root: Path, *tenants: str, **extra: Any) -> commands.KubernetesRender:
    return commands.render_kubernetes(
        tenants, all_tenants=not tenants, root=root, out=root / "k8s", **(ARGS | extra)
    )


def documents(result: commands.KubernetesRender) -> dict[str, list[dict[str, Any]]]:
    return {p.name: list(yaml.safe_load_all(p.read_text())) for p in result.written}


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, commands.KubernetesRender]:
    root = tmp_path_factory.mktemp("fleet")
    write_fleet(root, 60)
    with pytest.MonkeyPatch.context() as patch:
        for name, value in SECRET_VALUES.items():
            patch.setenv(name, value)
        result = render(root, wave_size=4, secrets_provider="passphrase")
    return root, result


def test_crd_fixture_is_the_operators_stack_crd() -> None:
    crd = yaml.safe_load(CRD.read_text())
    assert (
        crd["kind"] == "CustomResourceDefinition" and crd["metadata"]["name"] == "stacks.pulumi.com"
    )
    assert "0d34c847fba14ca4abacd3c2b89869ebca3e0398" in CRD.read_text()
    stack_schema, builtin = validators()
    assert stack_schema.rules == ["size(self.metadata.name) <= 42"]
    assert builtin.version == K8S_VERSION


def test_every_manifest_validates(fleet: tuple[Path, commands.KubernetesRender]) -> None:
    _root, result = fleet
    assert result.ok, result.failed
    assert len(result.written) == 60
    names = []
    for name, objects in documents(result).items():
        assert [o["kind"] for o in objects] == ["ConfigMap", "Stack"], name
        assert manifest_errors(objects) == [], name
        names.append(objects[1]["metadata"]["name"])
    assert len(set(names)) == len(names) and max(map(len, names)) == 42


def test_unknown_fields_are_refused(fleet: tuple[Path, commands.KubernetesRender]) -> None:
    config_map, stack = next(iter(documents(fleet[1]).values()))
    for path in (
        ["spec"],
        ["spec", "workspaceTemplate", "spec"],
        ["spec", "workspaceTemplate", "spec", "resources"],
        ["spec", "configRef", "tenant-infra:tenant"],
        ["spec", "envRefs", "VAULT_TOKEN", "secret"],
        [],
    ):
        bad = copy.deepcopy(stack)
        where = bad
        for key in path:
            where = where[key]
        where["typo"] = "x"
        assert manifest_errors([bad]), path
    for field, value in (("podTemplate", {}), ("env", [])):  # elided subtrees refuse anything
        bad = copy.deepcopy(stack)
        bad["spec"]["workspaceTemplate"]["spec"][field] = value
        assert manifest_errors([bad]), field
    assert manifest_errors([config_map | {"spec": {}}])
    assert manifest_errors([config_map | {"data": {"k": 1}}])


def test_the_crd_name_rule_and_dns_names_are_checked(
    fleet: tuple[Path, commands.KubernetesRender],
) -> None:
    _config_map, stack = next(iter(documents(fleet[1]).values()))
    for name in ("t" * 43, "Tenant-A", "tenant.a"):
        bad = copy.deepcopy(stack)
        bad["metadata"]["name"] = name
        assert manifest_errors([bad]), name
    bad = copy.deepcopy(stack)
    bad["metadata"]["labels"]["tenant-infra/wave"] = 0
    assert manifest_errors([bad])


def test_no_manifest_holds_a_secret_value(fleet: tuple[Path, commands.KubernetesRender]) -> None:
    _root, result = fleet
    text = "".join(p.read_text() for p in result.written)
    for name, value in SECRET_VALUES.items():
        assert value not in text, name
    # ...while every platform secret the fleet needs is referenced by name.
    refs = {
        variable
        for objects in documents(result).values()
        for variable in objects[1]["spec"]["envRefs"]
    }
    assert refs == set(stacks.PLATFORM_SECRETS) - {"PULUMI_ACCESS_TOKEN", "PGPASSWORD"} | {
        "VAULT_ADDR"
    }


def test_secret_refs_point_at_the_named_secrets(
    fleet: tuple[Path, commands.KubernetesRender],
) -> None:
    for objects in documents(fleet[1]).values():
        for variable, ref in objects[1]["spec"]["envRefs"].items():
            if variable == "VAULT_ADDR":
                assert ref["type"] == "Literal"
                continue
            assert ref == {
                "type": "Secret",
                "secret": {
                    "name": stacks.PLATFORM_SECRETS[variable].secret,
                    "key": stacks.PLATFORM_SECRETS[variable].key,
                },
            }


def test_config_map_round_trips_to_the_same_config(
    fleet: tuple[Path, commands.KubernetesRender],
) -> None:
    for objects in documents(fleet[1]).values():
        config_map, stack = objects
        values = {}
        for key, ref in stack["spec"]["configRef"].items():
            assert ref["name"] == config_map["metadata"]["name"]
            raw = config_map["data"][ref["key"]]
            values[key] = json.loads(raw) if ref["json"] else raw
        config = TenantConfig.from_pulumi_values(values)
        assert config.names.stack == stack["spec"]["stack"]
        assert TenantNames(config.tenant).k8s_stack == stack["metadata"]["name"]


def test_waves_canary_then_doubling(fleet: tuple[Path, commands.KubernetesRender]) -> None:
    root, result = fleet
    sizes: dict[int, int] = {}
    for wave in result.waves.values():
        sizes[wave] = sizes.get(wave, 0) + 1
    assert sizes == {0: 4, 1: 8, 2: 16, 3: 32 - 0}  # 60 = 4 + 8 + 16 + 32
    for objects in documents(result).values():
        tenant = objects[1]["metadata"]["labels"][stacks.LABEL_TENANT]
        assert objects[1]["metadata"]["labels"][stacks.LABEL_WAVE] == str(result.waves[tenant])
        assert stacks.LABEL_WAVE not in objects[0]["metadata"]["labels"]
    # One tenant rendered alone keeps the wave the whole fleet gave it.
    some = sorted(result.waves)[7]
    alone = commands.render_kubernetes(
        [some], root=root, out=None, wave_size=4, **(ARGS | {"secrets_provider": "passphrase"})
    )
    assert alone.waves == {some: result.waves[some]}


def test_one_invalid_stack_file_fails_only_its_tenant(tmp_path: Path) -> None:
    tenants = write_fleet(tmp_path, 6)
    broken, odd = tenants[2], tenants[4]
    path = tmp_path / "stacks" / f"Pulumi.{broken}.yaml"
    doc = yaml.safe_load(path.read_text())
    doc["config"]["tenant-infra:tier"] = "platinum"
    path.write_text(yaml.safe_dump(doc))
    (tmp_path / "stacks" / f"Pulumi.{odd}.yaml").write_text("config: [unclosed\n")
    (tmp_path / "stacks" / "Pulumi.Not_An_Id.yaml").write_text("config: {}\n")
    result = render(tmp_path)
    assert set(result.failed) == {broken, odd, "Not_An_Id"}
    assert "unknown tier 'platinum'" in result.failed[broken]
    assert all("\n" not in reason for reason in result.failed.values())
    assert len(result.written) == 4
    assert {p.name for p in result.written} == {
        f"{TenantNames(t).k8s_stack}.yaml" for t in tenants if t not in (broken, odd)
    }


@settings(max_examples=60, deadline=None)
@given(
    protect=st.booleans(),
    removals=st.lists(st.sampled_from([None, "retain", "purge"]), min_size=0, max_size=3),
)
def test_a_retained_or_protected_tenant_never_gets_destroy_on_finalize(
    protect: bool, removals: list[str | None]
) -> None:
    services = [
        {"product": product, "isolation": "SCHEMA"} | ({"removal": r} if r else {})
        for product, r in zip(("ledger", "tracer", "reporter"), removals, strict=False)
    ]
    config = TenantConfig.from_pulumi_values(
        {
            "tenant-infra:tenant": "acme",
            "tenant-infra:services": services,
            "tenant-infra:protectData": protect,
            "tenant-infra:platform": platform(atlas=True),
        }
    )
    _config_map, stack = stacks.manifests_for(config, stacks.Target(**ARGS), 0)
    retained = protect or any(r == "retain" for r in removals)
    assert ("destroyOnFinalize" in stack["spec"]) is not retained
    if not retained:
        assert stack["spec"]["destroyOnFinalize"] is True


def test_stack_spec_runs_the_baked_program_with_requests() -> None:
    config = TenantConfig.from_pulumi_values(stack_config("acme", 0)["config"])
    _config_map, stack = stacks.manifests_for(config, stacks.Target(**ARGS), 3)
    spec = stack["spec"]
    assert spec["workspaceReclaimPolicy"] == "Delete"
    assert spec["retryMaxBackoffDurationSeconds"] == stacks.RETRY_MAX_BACKOFF_SECONDS
    assert (
        spec["backend"] == ARGS["backend"] and spec["secretsProvider"] == ARGS["secrets_provider"]
    )
    assert spec["serviceAccountName"] == stacks.DEFAULT_SERVICE_ACCOUNT
    workspace = spec["workspaceTemplate"]["spec"]
    assert workspace["image"] == ARGS["image"]
    assert workspace["local"] == {"dir": stacks.PROGRAM_DIR}
    assert "ephemeral-storage" in workspace["resources"]["requests"]
    assert "PULUMI_CONFIG_PASSPHRASE" not in spec["envRefs"]  # a KMS provider needs none
    assert spec["configRef"]["tenant-infra:tenant"]["json"] is False


def test_a_config_change_changes_the_stack_spec() -> None:
    base = stack_config("acme", 0)["config"]
    changed = base | {"tenant-infra:limits": {"pg_connection_limit": 7}}
    target = stacks.Target(**ARGS)
    specs = [
        stacks.manifests_for(TenantConfig.from_pulumi_values(c), target, 0)[1]["spec"]
        for c in (base, changed)
    ]
    assert specs[0]["workspaceTemplate"]["metadata"] != specs[1]["workspaceTemplate"]["metadata"]


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("image", "tenant-infra", "no tag or digest"),
        ("image", "tenant-infra:latest", "latest"),
        ("image", "Registry/Tenant:1", "not an image reference"),
        ("image", "reg.example/ti:1 --privileged", "not an image reference"),
        ("backend", "file:///tmp/state", "shared state backend"),
        ("backend", "postgres://user:hunter2@db/state", "credentials"),
        ("backend", "s3://user@bucket", "credentials"),
        ("secrets_provider", "default", "passphrase or a KMS URL"),
        ("namespace", "Tenants", "not a namespace name"),
        ("namespace", "t" * 64, "not a namespace name"),
        ("service_account", "sa_1", "not a service account name"),
    ],
)
def test_fleet_arguments_are_checked_first(
    tmp_path: Path, field: str, value: str, message: str
) -> None:
    write_fleet(tmp_path, 2)
    with pytest.raises(InvalidInput, match=message) as info:
        render(tmp_path, **{field: value})
    assert "hunter2" not in str(info.value)
    assert not (tmp_path / "k8s").exists()


def test_digest_pinned_images_and_passphrase_are_accepted(tmp_path: Path) -> None:
    write_fleet(tmp_path, 1)
    image = "reg.example:5000/ti@sha256:" + "a" * 64
    result = render(
        tmp_path, image=image, secrets_provider="passphrase", backend="https://api.pulumi.com"
    )
    (objects,) = documents(result).values()
    assert objects[1]["spec"]["workspaceTemplate"]["spec"]["image"] == image
    assert {"PULUMI_CONFIG_PASSPHRASE", "PULUMI_ACCESS_TOKEN"} <= set(objects[1]["spec"]["envRefs"])


def test_two_tenants_given_one_stack_name_both_fail(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Astronomically unlikely (a 40-bit hash collision on a 23-character prefix), and
    then neither Stack may overwrite the other."""
    first, second, third = write_fleet(tmp_path, 3)
    real = TenantNames.k8s_stack.fget
    assert real is not None
    monkeypatch.setattr(
        TenantNames,
        "k8s_stack",
        property(lambda n: "tenant-same" if n.tenant in (first, second) else real(n)),
    )
    result = render(tmp_path)
    assert result.failed == {
        second: f"Stack name tenant-same is also {first}'s",
        first: f"Stack name tenant-same is also {second}'s",
    }
    assert [p.name for p in result.written] == [f"{TenantNames(third).k8s_stack}.yaml"]


def test_dump_reads_back_exactly_whatever_the_text() -> None:
    """Line breaks YAML folds (NEL, LS, PS) and characters outside its printable set are
    escaped; the rest stays readable."""
    tricky = "a\u2028b\x85c\x7fd\u2029e\ufeff\x9ff\ufffe é 😀 \t\n\r\x00"
    objects = [{"kind": "ConfigMap", "data": {"note": tricky, tricky: "key"}}, {"n": 1}]
    text = stacks.dump(objects)
    assert list(yaml.safe_load_all(text)) == objects
    assert (
        list(yaml.load_all(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))) == objects
    )
    assert "é 😀" in text and "\u2028" not in text and "\x85" not in text

"""The workspace image's Dockerfile holds what the rendered Stacks rely on (no Docker here:
a parse of its instructions, not a build)."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from tenant_infra.config import TenantConfig
from tenant_infra.kubernetes import RUN_AS, stacks
from tenant_infra.kubernetes.migrate_job import MigrateJobSpec, render_migrate_job
from tenant_infra.migrate.snapshot import Snapshot, SnapshotEntry

from .fleet import stack_config

ROOT = Path(__file__).resolve().parents[2]


def instructions() -> list[tuple[str, str]]:
    text = re.sub(r"\\\n\s*", " ", (ROOT / "Dockerfile").read_text())
    return [
        (line.split(None, 1)[0].upper(), line.split(None, 1)[1] if " " in line else "")
        for line in (raw.strip() for raw in text.splitlines())
        if line and not line.startswith("#")
    ]


def test_multi_stage_from_a_pulumi_python_base() -> None:
    froms = [arg for op, arg in instructions() if op == "FROM"]
    assert len(froms) == 2 and froms[0].endswith(" AS build")
    args = dict(arg.split("=", 1) for op, arg in instructions() if op == "ARG")
    assert args["BASE"].startswith("pulumi/pulumi-python")
    major, minor, _patch = map(int, args["PULUMI_VERSION"].split("."))
    assert (major, minor) >= (3, 202)  # JSON config from configRef


def test_wheel_and_dependencies_are_installed_at_build_time() -> None:
    runs = " ".join(arg for op, arg in instructions() if op == "RUN")
    assert "pip wheel" in runs and "/wheels/*.whl" in runs and "pulumi install" in runs
    copies = [arg for op, arg in instructions() if op == "COPY"]
    assert any("--from=build /opt/venv /opt/venv" in c for c in copies)
    assert any(c.endswith(f"{stacks.PROGRAM_DIR}/") for c in copies)


def test_runs_as_a_numeric_user_from_the_program_directory() -> None:
    ops = dict(instructions())
    # runAsNonRoot needs a numeric USER: the kubelet cannot resolve a name to check it.
    assert ops["USER"] == f"{RUN_AS}:{RUN_AS}"
    assert ops["WORKDIR"] == stacks.PROGRAM_DIR
    copies = [arg for op, arg in instructions() if op == "COPY" and "--chown" in arg]
    assert copies and all(f"--chown={RUN_AS}:{RUN_AS} " in c for c in copies)


def test_every_pod_runs_as_the_image_s_user() -> None:
    """The Job's pods name the ids; the Stacks ask for the operator's ``restricted``
    profile, which runs workspace pods as 1000:1000 (workspace_controller.go)."""
    job = render_migrate_job(
        MigrateJobSpec("ledger", 2, "img:1"),
        Snapshot("ledger", (SnapshotEntry("t1", "SCHEMA"),)),
    ).job
    pod = job["spec"]["template"]["spec"]["securityContext"]
    assert pod["runAsNonRoot"] is True
    assert (pod["runAsUser"], pod["runAsGroup"]) == (RUN_AS, RUN_AS) == (1000, 1000)
    config = TenantConfig.from_pulumi_values(stack_config("acme", 0)["config"])
    target = stacks.Target(
        image="img:1",
        backend="s3://state?region=eu-west-1",
        secrets_provider="awskms://alias/ti?region=eu-west-1",
        namespace="tenants",
    )
    _config_map, stack = stacks.manifests_for(config, target, 0)
    assert stack["spec"]["workspaceTemplate"]["spec"]["securityProfile"] == "restricted"


def test_the_image_project_uses_the_prebuilt_virtualenv() -> None:
    project = yaml.safe_load((ROOT / "deploy" / "workspace" / "Pulumi.yaml").read_text())
    ours = yaml.safe_load((ROOT / "Pulumi.yaml").read_text())
    assert project["name"] == ours["name"]
    assert project["runtime"]["options"]["virtualenv"] == "/opt/venv"

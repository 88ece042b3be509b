"""The fleet-wide offline diff (issue 18, part 3): a real git repository holding a copy
of the tool and a few tenants' stack files; each test changes its working tree and
diffs it against HEAD (the base's program planned with the base's own code)."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from tenant_infra import commands, plandiff, render
from tenant_infra.cli import main
from tenant_infra.errors import InvalidInput
from tenant_infra.planset import PlanSet

ROOT = Path(__file__).resolve().parents[1]
DEV = yaml.safe_load((ROOT / "stacks" / "Pulumi.dev.yaml").read_text())["config"]

#: tenant: (tier, services). ledger and tracer use RabbitMQ; reporter does not.
TENANTS = {
    "alpha": ("standard", [("ledger", "SCHEMA")]),
    "bravo": ("starter", [("reporter", "SCHEMA")]),
    "charlie-eu": ("enterprise", [("tracer", "DATABASE")]),
    "delta": ("standard", [("reporter", "DATABASE")]),
    "echo": ("starter", [("ledger", "DATABASE"), ("reporter", "SCHEMA")]),
}
BROKERED = {"alpha", "charlie-eu", "echo"}


def stack_file(tenant: str, tier: str, services: list[tuple[str, str]]) -> str:
    config = {
        "tenant-infra:tenant": tenant,
        "tenant-infra:tier": tier,
        "tenant-infra:services": [{"product": p, "isolation": i} for p, i in services],
        "tenant-infra:platform": DEV["tenant-infra:platform"],
    }
    return yaml.safe_dump({"config": config}, sort_keys=False)


def git(repo: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "-C", str(repo), *args], check=True, capture_output=True, text=True
    ).stdout


@pytest.fixture(autouse=True)
def _project_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TENANT_INFRA_PROJECT", "")  # --project sets it: restored after


@pytest.fixture(scope="module")
def origin(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A repository whose one commit holds the tool's package and five stack files."""
    repo = tmp_path_factory.mktemp("origin")
    shutil.copytree(
        ROOT / "tenant_infra", repo / "tenant_infra", ignore=shutil.ignore_patterns("__pycache__")
    )
    shutil.copy(ROOT / "Pulumi.yaml", repo / "Pulumi.yaml")
    (repo / "stacks").mkdir()
    for tenant, (tier, services) in TENANTS.items():
        (repo / "stacks" / f"Pulumi.{tenant}.yaml").write_text(stack_file(tenant, tier, services))
    git(repo, "init", "-q")
    git(repo, "add", "-A")
    git(repo, "-c", "user.name=t", "-c", "user.email=t@example.com", "commit", "-qm", "base")
    return repo


@pytest.fixture
def repo(origin: Path, tmp_path: Path) -> Path:
    """A clone to change: its HEAD is the base."""
    clone = tmp_path / "repo"
    subprocess.run(["git", "clone", "-q", str(origin), str(clone)], check=True)
    return clone


Edit = Callable[[str], str]


def edit(path: Path, change: Edit) -> None:
    before = path.read_text()
    after = change(before)
    assert after != before, f"the edit of {path.name} changed nothing"
    path.write_text(after)


def changed_tenants(diff: plandiff.FleetDiff) -> set[str]:
    return {t.tenant for t in diff.tenants if t.status != "unchanged"}


def test_a_program_that_plans_the_same_reports_no_change(repo: Path) -> None:
    # A changed file of the program (so both sides are planned), the same resources.
    edit(repo / "tenant_infra/components/broker.py", lambda s: s + "\n# a comment\n")
    diff = commands.plan_diff("HEAD", root=repo, workers=2)
    assert [t.tenant for t in diff.tenants] == sorted(TENANTS)
    assert changed_tenants(diff) == set() and not diff.changed
    assert diff.summary()["unchanged"] == len(TENANTS)
    assert "No tenant's resources change." in render.plan_diff_markdown(diff)


def test_an_untouched_checkout_is_unchanged_without_planning(repo: Path) -> None:
    diff = commands.plan_diff("HEAD", root=repo, workers=2)
    assert changed_tenants(diff) == set() and len(diff.tenants) == len(TENANTS)


def test_a_component_change_shows_for_exactly_the_tenants_using_it(repo: Path) -> None:
    """The base is planned with the base's code: only RabbitMQ tenants have a vhost."""
    edit(
        repo / "tenant_infra/components/broker.py",
        lambda s: s.replace(
            'description=f"tenant {tenant.tenant}"',
            'description=f"tenant {tenant.tenant}, brokered"',
        ),
    )
    diff = commands.plan_diff("HEAD", root=repo, workers=2)
    assert changed_tenants(diff) == BROKERED
    for tenant in diff.tenants:
        if tenant.tenant in BROKERED:
            assert tenant.status == "changed" and not tenant.added and not tenant.removed
            [resource] = tenant.changed
            assert resource.type == "rabbitmq:index/vHost:VHost"
            assert resource.name == f"{tenant.tenant}-rabbitmq-vhost"
            [change] = resource.changes
            assert (change.key, change.old, change.new) == (
                "description",
                f"tenant {tenant.tenant}",
                f"tenant {tenant.tenant}, brokered",
            )
    # One change, three tenants: one group, named with <tenant>.
    [group] = diff.groups()
    assert group.tenants == tuple(sorted(BROKERED))
    assert group.diff.changed[0].name == "<tenant>-rabbitmq-vhost"
    markdown = render.plan_diff_markdown(diff)
    assert markdown.count("<details>") == 1 and "**3 changed**" in markdown
    assert '"tenant <tenant>" → "tenant <tenant>, brokered"' in markdown


def test_a_tier_change_shows_only_for_that_tiers_tenants(repo: Path) -> None:
    edit(
        repo / "tenant_infra/catalog.toml",
        lambda s: s.replace(
            "[tiers.starter]\npg_connection_limit = 10", "[tiers.starter]\npg_connection_limit = 12"
        ),
    )
    diff = commands.plan_diff("HEAD", root=repo, workers=2)
    starters = {t for t, (tier, _) in TENANTS.items() if tier == "starter"}
    assert changed_tenants(diff) == starters == {"bravo", "echo"}
    for tenant in diff.tenants:
        for resource in tenant.changed:
            # The role's limit, and a dedicated database's own (DATABASE mode).
            assert resource.type in (
                "postgresql:index/role:Role",
                "postgresql:index/database:Database",
            )
            assert [(c.key, c.old, c.new) for c in resource.changes] == [
                ("connectionLimit", 10, 12)
            ]


def test_a_stack_file_change_added_and_removed_tenants(repo: Path) -> None:
    stacks = repo / "stacks"
    (stacks / "Pulumi.delta.yaml").write_text(
        stack_file("delta", "standard", [("reporter", "DATABASE"), ("tracer", "SCHEMA")])
    )
    (stacks / "Pulumi.bravo.yaml").unlink()
    (stacks / "Pulumi.foxtrot.yaml").write_text(
        stack_file("foxtrot", "starter", [("tracer", "SCHEMA")])
    )
    git(repo, "add", "stacks")  # a new file git knows (an untracked one is the same on both sides)
    diff = commands.plan_diff("HEAD", root=repo, workers=2)
    by = {t.tenant: t for t in diff.tenants}
    assert changed_tenants(diff) == {"bravo", "delta", "foxtrot"}
    assert by["bravo"].status == "gone" and by["bravo"].removed and not by["bravo"].added
    assert by["foxtrot"].status == "new" and by["foxtrot"].added and not by["foxtrot"].removed
    added = {name for _, name in by["delta"].added}
    assert "delta-tracer" in added and "delta-rabbitmq-vhost" in added and not by["delta"].removed


def test_stack_files_git_does_not_track_are_the_same_on_both_sides(repo: Path) -> None:
    """As `git diff` leaves untracked files out: a fleet whose stack files are generated
    (untracked, or ignored) shows what the program's change does to it."""
    (repo / "stacks" / "Pulumi.golf.yaml").write_text(
        stack_file("golf", "standard", [("ledger", "SCHEMA")])
    )
    (repo / "stacks" / "Pulumi.hotel.yaml").write_text(
        stack_file("hotel", "standard", [("reporter", "SCHEMA")])
    )
    (repo / ".gitignore").write_text("stacks/Pulumi.hotel.yaml\n")
    edit(
        repo / "tenant_infra/components/broker.py",
        lambda s: s.replace(
            'description=f"tenant {tenant.tenant}"',
            'description=f"tenant {tenant.tenant}, brokered"',
        ),
    )
    diff = commands.plan_diff("HEAD", root=repo, workers=2)
    assert changed_tenants(diff) == BROKERED | {"golf"}
    assert {t.status for t in diff.tenants if t.tenant in ("golf", "hotel")} == {
        "changed",
        "unchanged",
    }


def test_a_project_in_a_folder_of_its_repository(origin: Path, tmp_path: Path) -> None:
    top = tmp_path / "mono"
    shutil.copytree(origin, top / "infra", ignore=shutil.ignore_patterns(".git", ".pulumi-work"))
    (top / "README.md").write_text("a monorepo\n")
    git(top, "init", "-q")
    git(top, "add", "-A")
    git(top, "-c", "user.name=t", "-c", "user.email=t@example.com", "commit", "-qm", "base")
    edit(
        top / "infra/tenant_infra/catalog.toml",
        lambda s: s.replace(
            "[tiers.starter]\npg_connection_limit = 10", "[tiers.starter]\npg_connection_limit = 12"
        ),
    )
    diff = commands.plan_diff("HEAD", root=top / "infra", workers=2)
    assert changed_tenants(diff) == {"bravo", "echo"}


def test_an_invalid_stack_file_fails_alone(repo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    edit(repo / "stacks/Pulumi.delta.yaml", lambda s: s.replace("tier: standard", "tier: platinum"))
    edit(repo / "tenant_infra/components/broker.py", lambda s: s + "\n# a comment\n")
    with pytest.raises(SystemExit) as info:
        main(
            [
                "--project",
                str(repo),
                "plan",
                "--all",
                "--diff",
                "HEAD",
                "--format",
                "json",
                "-j",
                "2",
            ]
        )
    out, err = capsys.readouterr()
    document = json.loads(out)
    assert info.value.code == 1
    [failed] = document["tenants"]
    assert failed["tenant"] == "delta" and failed["status"] == "failed"
    assert "platinum" in failed["errors"]["head"] and "base" not in failed["errors"]
    assert sorted(document["unchanged"]) == sorted(set(TENANTS) - {"delta"})
    assert "delta" in err and err.count("\n") == 1


def test_secrets_never_show_and_a_changed_one_is_said(
    repo: Path, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """The mocks' generated passwords of the base and of the checkout are planted
    values; neither appears anywhere, and the change of each is said."""
    planted = "PLANTED-0f9e8d7c"
    edit(
        repo / "tenant_infra/plan.py",
        lambda s: s.replace(
            'state["result"] = hashlib.sha256(args.name.encode()).hexdigest()[:32]',
            f'state["result"] = "{planted}-" + args.name',
        ),
    )
    saved = tmp_path / "plans"
    outputs = []
    for format in ("json", "markdown", "table"):
        with pytest.raises(SystemExit) as info:
            main(
                [
                    "--project",
                    str(repo),
                    "plan",
                    "--all",
                    "--diff",
                    "HEAD",
                    "-f",
                    format,
                    "--save",
                    str(saved),
                ]
            )
        assert info.value.code == 0
        outputs.append(capsys.readouterr().out)
    document = json.loads(outputs[0])
    assert {t["tenant"] for t in document["tenants"]} == set(TENANTS)
    secret_changes = [
        c
        for t in document["tenants"]
        for r in t["changed"]
        for c in r["changes"]
        if c.get("secret")
    ]
    assert secret_changes and all(c["old"] == c["new"] == "[secret]" for c in secret_changes)
    assert {c["key"] for c in secret_changes} >= {"password", "dataJson"}
    assert "password: [secret] changed" in outputs[1] and "password: [secret] changed" in outputs[2]
    passwords = [
        r["name"]
        for path in saved.glob("*.json")
        if path.name != "manifest.json"
        for r in json.loads(path.read_text())["resources"]
        if r["type"] == "random:index/randomPassword:RandomPassword"
    ]
    assert len(passwords) >= len(TENANTS)
    # The base's generated passwords (the mocks' own fakes), the checkout's planted ones.
    fakes = [hashlib.sha256(name.encode()).hexdigest()[:32] for name in passwords]
    texts = [*outputs, *(p.read_text() for p in saved.iterdir())]
    for text in texts:
        assert planted not in text
        assert not any(fake in text for fake in fakes)


def test_a_saved_plan_set_is_a_base(repo: Path, tmp_path: Path) -> None:
    base = tmp_path / "base-plans"
    plans = commands.plan_all(save=base, workers=2, root=repo)
    assert sorted(plans.tenants) == sorted(TENANTS) and all(
        e.error is None for e in plans.tenants.values()
    )
    assert PlanSet.open(base).tenants.keys() == plans.tenants.keys()
    # Saved again (from the cache): its own files go, nothing else; a folder of other
    # files is refused.
    (base / "notes.txt").write_text("mine")
    commands.plan_all(save=base, workers=2, root=repo)
    assert (base / "notes.txt").read_text() == "mine" and PlanSet.open(
        base
    ).tenants.keys() == plans.tenants.keys()
    with pytest.raises(InvalidInput, match="not an empty folder nor a plan set"):
        commands.plan_all(save=repo / "stacks", root=repo)
    edit(
        repo / "tenant_infra/catalog.toml",
        lambda s: s.replace("broker_max_queues = 1000", "broker_max_queues = 1200"),
    )
    diff = commands.plan_diff(str(base), root=repo, workers=2)
    assert changed_tenants(diff) == {"charlie-eu"}  # the one enterprise tenant
    [resource] = diff.tenants[[t.tenant for t in diff.tenants].index("charlie-eu")].changed
    assert [(c.key, c.old, c.new) for c in resource.changes] == [("maxQueues", "1000", "1200")]


def test_compare_masks_secrets_even_when_a_key_turns_secret() -> None:
    """A value a base plan held in plain text is not shown once the checkout says it
    is secret: it may be the very secret."""
    base = {
        "resources": [
            {
                "type": "t",
                "name": "n",
                "parent": None,
                "inputs": {"k": "hunter2", "v": 1},
                "secrets": {},
            }
        ]
    }
    head = {
        "resources": [
            {
                "type": "t",
                "name": "n",
                "parent": None,
                "inputs": {"k": "[secret]", "v": {"a": 2}},
                "secrets": {"k": "x"},
            }
        ]
    }
    diff = plandiff.compare("t1", base, head)
    [resource] = diff.changed
    assert [c.to_json() for c in resource.changes] == [
        {"key": "k", "secret": True, "old": "[secret]", "new": "[secret]"},
        {"key": "v", "old": 1, "new": {"a": 2}},
    ]
    assert "hunter2" not in json.dumps(diff.to_json())


def test_unknown_base_is_one_line(repo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["--project", str(repo), "plan", "--all", "--diff", "no-such-ref"])
    out, err = capsys.readouterr()
    assert info.value.code == 2 and out == "" and "no-such-ref" in err and err.count("\n") == 1


def test_plans_made_once_under_a_program_are_not_made_again(
    repo: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    edit(repo / "tenant_infra/components/broker.py", lambda s: s + "\n# a comment\n")
    first = commands.plan_diff("HEAD", root=repo, workers=2)
    planned: list[str] = []
    real = plandiff.plan_sets

    def watched(jobs, workers=None):  # type: ignore[no-untyped-def]
        planned.extend(t for job in jobs for t in job.tenants)
        real(jobs, workers)

    monkeypatch.setattr(plandiff, "plan_sets", watched)
    second = commands.plan_diff("HEAD", root=repo, workers=2)
    assert planned == [] and second.to_json() == first.to_json()
    # A changed stack file is planned again, on the checkout's side only.
    edit(
        repo / "stacks/Pulumi.alpha.yaml", lambda s: s.replace("tier: standard", "tier: enterprise")
    )
    third = commands.plan_diff("HEAD", root=repo, workers=2)
    assert planned == ["alpha"] and changed_tenants(third) == {"alpha"}
    # Without the cache, everything is planned.
    commands.plan_diff("HEAD", root=repo, workers=2, cache=False)
    assert len(planned) == 1 + 2 * len(TENANTS)


def test_a_stack_file_naming_another_tenant_fails_instead_of_going(repo: Path) -> None:
    """Review: a file that names nobody, or another tenant, is its tenant's error (as
    ``plan TENANT`` says), never a tenant gone with every resource to remove."""
    edit(repo / "stacks/Pulumi.bravo.yaml", lambda s: s.replace("tenant: bravo", "tenant: alpha"))
    diff = commands.plan_diff("HEAD", root=repo, workers=2)
    statuses = {t.tenant: t.status for t in diff.tenants}
    assert statuses["bravo"] == "failed", statuses
    assert "gone" not in statuses.values()


def test_the_two_spellings_of_an_id_stay_apart_in_a_group() -> None:
    """Review: a rename from ``charlie-eu`` to ``charlie_eu`` is a change, never
    ``<tenant> → <tenant>``."""
    change = plandiff.Change("name", "charlie-eu", "charlie_eu")
    resource = plandiff.ResourceChange("postgresql:index/database:Database", "db", (change,))
    diff = plandiff.TenantDiff("charlie-eu", "changed", (), (), (resource,))
    (anonymous,) = diff.anonymous().changed[0].changes
    assert (anonymous.old, anonymous.new) == ("<tenant>", "<tenant_key>")

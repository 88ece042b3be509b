"""Benchmark of ``tenantctl plan --all --diff BASE`` (issue 18, part 3).

Builds a git repository in a temporary folder holding a copy of this checkout's
``tenant_infra`` package, ``Pulumi.yaml`` and N generated stack files (tiers, products,
isolation modes and MongoDB backends varied), commits it as the base, changes the
program in the working tree, and times the whole command end to end, as a separate
process: start-up, both trees' plan sets, the comparison and the Markdown. Peak RSS
is the largest one process reached (the command or one of its workers).

    .venv/bin/python bench/plan_diff/run.py --tenants 1000 [--jobs 2] [--change component]

Two runs: ``cold`` (nothing cached: both trees planned) and ``warm`` (the change
pushed again with one more comment, so the checkout's program is new: BASE's plans
come from ``.pulumi-work/plan_cache``, the checkout's are made).

Changes: ``component`` (the RabbitMQ vhost's description: every tenant with ledger or
tracer), ``tier`` (the starter tier's connection limit), ``none`` (a comment in a
component: both sides planned, nothing changes), ``stacks`` (ten stack files' tiers,
the program untouched: only they are planned; one run).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
TENANTCTL = Path(sys.executable).with_name("tenantctl")
PRODUCTS = ("ledger", "tracer", "reporter")
TIERS = ("starter", "standard", "enterprise")


def platform(rng: random.Random) -> dict[str, object]:
    dev = yaml.safe_load((ROOT / "stacks" / "Pulumi.dev.yaml").read_text())["config"]
    block = dev["tenant-infra:platform"]
    if rng.random() < 0.3:
        block = dict(block)
        block["mongodb"] = {
            "backend": "atlas",
            "projectId": "65a1f0c2e4b0a1b2c3d4e5f6",
            "clusterName": "tenants-eu",
            "host": "tenants-eu.abcde.mongodb.net",
        }
    return block


def generate(stacks: Path, count: int, seed: int = 18) -> dict[str, list[str]]:
    rng = random.Random(seed)
    products: dict[str, list[str]] = {}
    for i in range(count):
        tenant = f"t{i:04d}" if i % 3 else f"tenant-{i:04d}-eu"
        chosen = rng.sample(PRODUCTS, rng.randint(1, 3))
        products[tenant] = chosen
        config = {
            "tenant-infra:tenant": tenant,
            "tenant-infra:tier": TIERS[i % 3],
            "tenant-infra:metadata": {"name": f"Tenant {i}"},
            "tenant-infra:services": [
                {"product": p, "isolation": rng.choice(("SCHEMA", "DATABASE"))} for p in chosen
            ],
            "tenant-infra:platform": platform(rng),
        }
        (stacks / f"Pulumi.{tenant}.yaml").write_text(yaml.safe_dump({"config": config}))
    return products


def git(repo: Path, *args: str) -> None:
    subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True)


def change(repo: Path, what: str) -> None:
    if what in ("component", "none"):
        path = repo / "tenant_infra/components/broker.py"
        text = path.read_text()
        if what == "component":
            text = text.replace(
                'description=f"tenant {tenant.tenant}"',
                'description=f"tenant {tenant.tenant} (vhost)"',
            )
        path.write_text(text + "\n# changed\n")
    elif what == "tier":
        path = repo / "tenant_infra/catalog.toml"
        path.write_text(
            path.read_text().replace("pg_connection_limit = 10", "pg_connection_limit = 12")
        )
    elif what == "stacks":
        swap = {"starter": "standard", "standard": "enterprise", "enterprise": "starter"}
        for path in sorted((repo / "stacks").glob("Pulumi.*.yaml"))[:10]:
            doc = yaml.safe_load(path.read_text())
            doc["config"]["tenant-infra:tier"] = swap[doc["config"]["tenant-infra:tier"]]
            path.write_text(yaml.safe_dump(doc))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tenants", type=int, default=1000)
    parser.add_argument("--jobs", type=int, default=None)
    parser.add_argument(
        "--change", default="component", choices=("component", "tier", "none", "stacks")
    )
    parser.add_argument("--keep", action="store_true", help="Keep the repository and output.")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="plan-diff-bench-"))
    repo = work / "repo"
    shutil.copytree(
        ROOT / "tenant_infra", repo / "tenant_infra", ignore=shutil.ignore_patterns("__pycache__")
    )
    shutil.copy(ROOT / "Pulumi.yaml", repo / "Pulumi.yaml")
    (repo / "stacks").mkdir()
    products = generate(repo / "stacks", args.tenants)
    git(repo, "init", "-q")
    git(repo, "add", "-A")
    git(
        repo, "-c", "user.name=bench", "-c", "user.email=bench@example.com", "commit", "-qm", "base"
    )
    change(repo, args.change)

    runs = []
    # Cold: an empty cache, both trees planned. Then the pull request's next push (the
    # same change and one more comment): BASE's plans come from the cache.
    for run in ("cold", "warm") if args.change != "stacks" else ("cold",):
        if run == "warm":
            path = repo / "tenant_infra/components/broker.py"
            path.write_text(path.read_text() + "# pushed again\n")
        runs.append(timed(repo, run, args, products))
    print(json.dumps(runs, indent=1))
    if args.keep:
        print(f"kept: {work}", file=sys.stderr)
    else:
        shutil.rmtree(work)


def timed(
    repo: Path, run: str, args: argparse.Namespace, products: dict[str, list[str]]
) -> dict[str, object]:
    command = [str(TENANTCTL), "--project", str(repo), "plan", "--all", "--diff", "HEAD"]
    command += ["-f", "json", *(["--jobs", str(args.jobs)] if args.jobs else [])]
    load = os.getloadavg()[0]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - started
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        sys.exit(f"exit {done.returncode}: {done.stderr[-2000:]}")
    document = json.loads(done.stdout)
    summary = document["summary"]
    changed = {t["tenant"] for t in document["tenants"]}
    if args.change == "component":
        expected = {t for t, p in products.items() if {"ledger", "tracer"} & set(p)}
        assert changed == expected, (len(changed), len(expected))
    if args.change == "none":
        assert not changed, changed
    if args.change == "stacks":
        assert len(changed) == 10, changed
    if args.keep:
        (repo.parent / f"diff-{run}.json").write_text(done.stdout)
    cpu = usage.ru_utime + usage.ru_stime - before.ru_utime - before.ru_stime
    return {
        "run": run,
        "tenants": args.tenants,
        "change": args.change,
        "jobs": args.jobs or os.cpu_count(),
        "wall_s": round(wall, 1),
        "cpu_s": round(cpu, 1),
        # The largest one process reached (the command, or one worker), over the runs.
        "peak_rss_mb": round(usage.ru_maxrss / 1024),
        "changed": summary["changed"],
        "unchanged": summary["unchanged"],
        "failed": summary["failed"],
        "resources_changed": summary["resourcesChanged"],
        "load_before": round(load, 2),
        "load_after": round(os.getloadavg()[0], 2),
    }


if __name__ == "__main__":
    main()

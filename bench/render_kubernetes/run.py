"""Render and validate N tenants' Kubernetes manifests (issue 19: 10,000 in <= 30 s).

Generates N stack files in a temporary folder (tests/kubernetes/fleet.py: long and odd
ids, every tier and product, both MongoDB backends), then times, in this one process:

1. ``commands.render_kubernetes(all_tenants=True)``: each stack file read and validated
   once, a ConfigMap and a Stack per tenant, a file each;
2. validation of every written file: each Stack against the operator's CRD (closed
   against unknown fields, tests/kubernetes/schemas.py), each ConfigMap against
   Kubernetes' strict schema (kubernetes-validate), schemas compiled once.

Both steps use ``--workers`` processes (default: the cores; 1 for a single process).

    .venv/bin/python bench/render_kubernetes/run.py --tenants 10000
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from tenant_infra import commands  # noqa: E402
from tests.kubernetes.fleet import write_fleet  # noqa: E402
from tests.kubernetes.schemas import manifest_errors, validators  # noqa: E402


def invalid_objects(paths: list[str]) -> int:
    """How many objects of these files fail validation. Each document is JSON
    (tenant_infra.kubernetes.stacks.dump); the tests read the same files as YAML."""
    problems = 0
    for path in paths:
        objects = [json.loads(doc) for doc in Path(path).read_text().split("---\n") if doc]
        problems += len(manifest_errors(objects))
    return problems


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tenants", type=int, default=10_000)
    parser.add_argument("--workers", type=int, default=commands._cores(), help="processes")
    parser.add_argument("--budget", type=float, default=30.0, help="seconds (exit 1 past it)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="render-k8s-") as tmp:
        root = Path(tmp)
        started = time.perf_counter()
        write_fleet(root, args.tenants)
        generated = time.perf_counter() - started

        load = os.getloadavg()[0]
        started = time.perf_counter()
        result = commands.render_kubernetes(
            all_tenants=True,
            image="registry.example.com/tenant-infra:0.2.0",
            backend="s3://tenant-state?region=eu-west-1",
            secrets_provider="awskms://alias/tenant-infra?region=eu-west-1",
            namespace="tenants",
            root=root,
            out=root / "k8s",
            workers=args.workers,
        )
        rendered = time.perf_counter() - started

        started = time.perf_counter()
        validators()  # compiled once, before the workers fork: it counts
        paths = [str(p) for p in result.written]
        if args.workers == 1:
            problems = invalid_objects(paths)
        else:
            slices = [paths[i :: args.workers * 4] for i in range(args.workers * 4)]
            with ProcessPoolExecutor(max_workers=args.workers) as pool:
                problems = sum(pool.map(invalid_objects, slices))
        validated = time.perf_counter() - started

    total = rendered + validated
    print(f"tenants            {args.tenants}, {args.workers} processes")
    print(f"generate files     {generated:6.1f} s  (not counted)")
    print(f"render + write     {rendered:6.1f} s  ({len(result.written)} files)")
    print(f"validate           {validated:6.1f} s  ({2 * len(result.written)} objects)")
    print(f"total              {total:6.1f} s  (budget {args.budget:.0f} s)")
    print(f"failed tenants     {len(result.failed)}, invalid objects {problems}")
    print(f"1-min load before  {load:.2f}, after {os.getloadavg()[0]:.2f}")
    ok = not result.failed and problems == 0 and total <= args.budget
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

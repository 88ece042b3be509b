"""A plan-set worker: plans tenants one after the other under one tree's program.

Run as a script (``python -P planworker.py``), never imported by the process it works
for: :mod:`tenant_infra.planset` starts it with ``PYTHONPATH`` naming the tree whose
``tenant_infra`` package is to be planned (a git ref's, say), so the program, the
catalog and the migrations' heads are that tree's, while this file is the current
tool's. It relies only on what every tree has: ``Workspace(root).read_config(tenant)``
and ``plan.plan(config)``.

Protocol, one JSON document a line: the first line on stdin is the job
(``{"project", "out", "salt"}``); the worker answers ``{"ready": true, "package": …}``
once its imports are done, then reads one tenant id a line and answers
``{"tenant", "error", "resources"}`` after writing ``<out>/<tenant>.json``. The
program's own prints go to stderr: stdout carries only the protocol. Secret values
are never written; a secret input is carried as an HMAC (keyed by the set's salt) of
the plan's fingerprint of it, enough to see that it changed.
"""

from __future__ import annotations

import functools
import gc
import hashlib
import hmac
import json
import os
import sys
import traceback
from pathlib import Path
from typing import Any, TextIO

#: The per-tenant document's format; :mod:`tenant_infra.planset` checks it.
FORMAT = 1


def _speed_up() -> None:
    """The mock runtime's costs that the plan does not need, for a long-lived worker.

    Source positions (a stack walk per resource) are for the engine's diagnostics;
    the tree's heads are read from files that do not change while it is planned.
    """
    try:
        from pulumi.runtime import resource as runtime_resource
        from pulumi.runtime.proto import source_pb2

        runtime_resource._get_stack_trace = source_pb2.StackTrace
    except (ImportError, AttributeError):  # another SDK: only slower
        pass
    for module, name in (
        ("tenant_infra.migrate.revisions", "declared_head"),
        ("tenant_infra.migrate.mongo", "load_spec"),
    ):
        try:
            found = __import__(module, fromlist=[name])
            setattr(found, name, functools.cache(getattr(found, name)))
        except (ImportError, AttributeError):
            pass


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    first = text[0] if text else ""
    name = type(exc).__name__
    if name in ("InvalidInput", "ValidationError"):
        return first or name
    return f"{name}: {first}" if first else name


def _document(tenant: str, plan: Any, salt: bytes) -> dict[str, Any]:
    resources = []
    for r in plan.resources:
        fingerprints = getattr(r, "secret_fingerprints", None) or {}
        secret = set(getattr(r, "secret_inputs", ()) or ()) | set(fingerprints)
        resources.append(
            {
                "type": r.type,
                "name": r.name,
                "parent": r.parent,
                "inputs": r.inputs,
                "options": {
                    "protect": bool(getattr(r, "protect", False)),
                    "retainOnDelete": bool(getattr(r, "retain_on_delete", False)),
                    "deletedWith": getattr(r, "deleted_with", None),
                    "provider": getattr(r, "provider", None),
                    "dependsOn": list(getattr(r, "depends_on", ())),
                },
                # Only keyed digests of the plan's own digests: never a value.
                "secrets": {
                    key: hmac.new(
                        salt, str(fingerprints.get(key, "")).encode(), hashlib.sha256
                    ).hexdigest()
                    for key in sorted(secret)
                },
            }
        )
    resources.sort(key=lambda r: (r["type"], r["name"], r["parent"] or ""))
    return {"format": FORMAT, "tenant": tenant, "resources": resources}


def _serve(job: dict[str, Any], requests: TextIO, replies: TextIO) -> None:
    project, out = Path(job["project"]), Path(job["out"])
    salt = bytes.fromhex(job["salt"])
    os.environ["TENANT_INFRA_PROJECT"] = str(project)

    import tenant_infra
    from tenant_infra import plan as offline
    from tenant_infra.workspace import Workspace

    _speed_up()
    workspace = Workspace(project)
    replies.write(json.dumps({"ready": True, "package": tenant_infra.__file__}) + "\n")
    replies.flush()
    warm = False
    for line in requests:
        tenant = line.strip()
        if not tenant:
            continue
        error, count = None, 0
        try:
            config = workspace.read_config(tenant)
            if config is None:
                raise FileNotFoundError(f"no stack file for tenant {tenant!r}")
            document = _document(tenant, offline.plan(config), salt)
            count = len(document["resources"])
            path = out / f"{tenant}.json"
            tmp = path.with_suffix(".tmp")
            tmp.write_text(json.dumps(document, sort_keys=True, separators=(",", ":")))
            os.replace(tmp, path)
        except Exception as exc:  # any failure is this tenant's alone
            error = _one_line(exc)
            if type(exc).__name__ not in ("InvalidInput", "ValidationError"):
                traceback.print_exc(file=sys.stderr)
        replies.write(json.dumps({"tenant": tenant, "error": error, "resources": count}) + "\n")
        replies.flush()
        if not warm:
            # What the imports and the first plan made lives as long as the worker:
            # out of the collector's way, every later plan's garbage is cheaper.
            gc.collect()
            gc.freeze()
            warm = True


def main() -> None:
    # stdout is the protocol's: the program's prints (and Pulumi's) go to stderr.
    replies = os.fdopen(os.dup(1), "w", encoding="utf-8")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    job = json.loads(sys.stdin.readline())
    _serve(job, sys.stdin, replies)


if __name__ == "__main__":
    main()

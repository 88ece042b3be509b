"""``python -m tests.support.killed_restore ROOT TENANT SET POINT``: a restore (with
``--swap``) in a process of its own that SIGKILLs itself at ``POINT``: ``load``
(after the first table is loaded), ``swap`` (inside the swap step, just after its
transaction committed, before the step is recorded), or a step's name (once done).

A fresh interpreter, not a fork: the parent's Pulumi runtime holds gRPC threads that a
forked child would deadlock on.
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path
from typing import Any

from tenant_infra import commands
from tenant_infra.operations.restore import Restorer
from tests.support.replay import ReplayBackend


def main(root: Path, tenant: str, source: str, point: str) -> None:
    def die() -> None:
        os.kill(os.getpid(), signal.SIGKILL)

    def steps(step: str, event: str) -> None:
        if event == "done" and step == point:
            die()

    def loaded(done: int, _total: int, _table: str) -> None:
        if point == "load" and done == 1:
            die()

    if point == "swap":
        swap = Restorer._swap

        def committed_then_killed(self: Restorer, *args: Any) -> int:
            swap(self, *args)
            die()
            return 0

        Restorer._swap = committed_then_killed  # type: ignore[method-assign]

    backend = ReplayBackend(root / "state", root=root)
    commands.restore(
        tenant,
        "ledger",
        source=source,
        swap=True,
        backups=root / "backups",
        backend=backend,
        root=root,
        step_progress=steps,
        copy_progress=loaded,
    )
    sys.exit(3)  # not killed: the point was never reached


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4])

"""``python -m tests.support.killed_promotion ROOT TENANT POINT``: a promotion in a
process of its own that SIGKILLs itself at ``POINT`` (a step, once done, or ``copy``
after the first table), as an operator's pipeline killed mid-way.

A fresh interpreter, not a fork: the parent's Pulumi runtime holds gRPC threads that a
forked child would deadlock on. It works on the parent's project folder and replay
state, so the replay's generated passwords it needs are generated anew (a rotation).
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

from tenant_infra import commands
from tests.support.replay import ReplayBackend


def main(root: Path, tenant: str, point: str) -> None:
    def die() -> None:
        os.kill(os.getpid(), signal.SIGKILL)

    def steps(step: str, event: str) -> None:
        if event == "done" and step == point:
            die()

    def copied(done: int, _total: int, _table: str) -> None:
        if point == "copy" and done == 1:
            die()

    backend = ReplayBackend(root / "state", root=root)
    commands.promote(
        tenant, "ledger", backend=backend, root=root, step_progress=steps, copy_progress=copied
    )
    sys.exit(3)  # not killed: the point was never reached


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2], sys.argv[3])

"""``python -m tests.support.killed_rotation ROOT TENANT PHASE POINT``: a rotation in a
process of its own that SIGKILLs itself once step ``POINT`` is done (or, with
``POINT`` ``inside-STEP``, as soon as ``STEP`` has started), as an operator's pipeline
killed mid-way. A fresh interpreter, not a fork (see ``killed_promotion``).
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

from tenant_infra import commands
from tests.support.replay import ReplayBackend


def main(root: Path, tenant: str, phase: str, point: str) -> None:
    def steps(step: str, event: str) -> None:
        if (event == "done" and step == point) or (
            event == "started" and point == f"inside-{step}"
        ):
            os.kill(os.getpid(), signal.SIGKILL)

    backend = ReplayBackend(root / "state", root=root)
    commands.rotate(
        [tenant],
        product="ledger",
        phase=phase,  # type: ignore[arg-type]
        drain=0,
        backend=backend,
        root=root,
        step_progress=steps,
    )
    sys.exit(3)  # not killed: the point was never reached


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4])

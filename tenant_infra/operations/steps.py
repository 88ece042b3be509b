"""The one step machine of day-2 operations (promotion today; rotation and restore next).

An operation is a list of named steps. Each step is idempotent: it looks at the
servers and the stack, and does only what is missing. The machine records each
step in the registry before and after it runs (:mod:`tenant_infra.registry.
operations`), so a killed operation is run again with ``resume`` and goes on from
its last finished step. A step that must wait (a retention period, say) raises
:class:`Pending`: the operation stays open and the run ends without an error.
Aborting runs the operation's undo steps under the same lock and the same record.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from tenant_infra.errors import InvalidInput, OperationFailed, scrub
from tenant_infra.registry.operations import ABORTED, DONE, Operation, Operations

#: What steps share: non-secret facts, saved with each finished step.
Detail = dict[str, Any]
#: ``(step, event)`` with event ``started``, ``done``, ``pending``, ``refused`` or
#: ``failed``.
StepProgress = Callable[[str, str], None]


class Mismatch(OperationFailed):
    """A copy is not what it was made from (a promotion's source, a restore's backup):
    the operation aborts itself, and this says where."""


class Pending(Exception):
    """The step cannot finish yet; the message says until when, and what then."""


@dataclass(frozen=True)
class Step:
    name: str
    run: Callable[[Detail], None]


@dataclass
class Outcome:
    operation: Operation
    ran: list[str] = field(default_factory=list)
    #: Why the operation stopped before its end, still open (see :class:`Pending`).
    pending: str | None = None


#: Undo steps are named so: an operation with one of them started is being aborted.
ABORT_PREFIX = "abort-"


def _aborting(operation: Operation) -> bool:
    return any(
        step.startswith(ABORT_PREFIX) for step in (*operation.steps_done, operation.step or "")
    )


def _quiet(_step: str, _event: str) -> None:
    return None


class Machine:
    """Runs one kind of operation on one service; ``held()`` first.

    A step raises :class:`InvalidInput` only to refuse before it changed anything.
    """

    def __init__(
        self,
        operations: Operations,
        tenant: str,
        product: str,
        kind: str,
        progress: StepProgress = _quiet,
    ) -> None:
        self.operations, self.tenant, self.product, self.kind = operations, tenant, product, kind
        self.progress = progress
        self._held = False

    @contextlib.contextmanager
    def held(self) -> Iterator[Machine]:
        """The service's operation lock: a second runner is refused at once."""
        with self.operations.running(self.tenant, self.product, self.kind):
            self._held = True
            try:
                yield self
            finally:
                self._held = False

    def current(self) -> Operation | None:
        """The service's open operation, refused if it is of another kind."""
        found = self.operations.open_one(self.tenant, self.product)
        if found is not None and found.kind != self.kind:
            raise InvalidInput(
                f"tenant {self.tenant!r} service {self.product!r} has an unfinished "
                f"{found.kind}: finish or abort it first"
            )
        return found

    def run(self, steps: Sequence[Step], *, resume: bool, detail: Detail) -> Outcome:
        """Start the operation (``resume`` False) or go on with the open one."""
        assert self._held, "run under held()"
        found = self.current()
        if found is None and resume:
            raise InvalidInput(
                f"tenant {self.tenant!r} service {self.product!r}: no {self.kind} to resume"
            )
        if found is not None and _aborting(found):
            raise InvalidInput(
                f"the {self.kind} of tenant {self.tenant!r} service {self.product!r} is being "
                "aborted: run it again with --abort"
            )
        if found is not None and not resume:
            where = f"in step {found.step}" if found.step else "between steps"
            raise InvalidInput(
                f"a {self.kind} of tenant {self.tenant!r} service {self.product!r} stopped "
                f"{where}: run it again with --resume, or --abort"
            )
        operation = found or self.operations.start(self.tenant, self.product, self.kind, detail)
        return self._steps(operation, steps, DONE)

    def abort(self, steps: Sequence[Step]) -> Outcome:
        """Run the open operation's undo steps (named ``abort-…``); it ends ``aborted``.
        Once one has started, the operation can only be aborted."""
        assert self._held, "run under held()"
        assert all(step.name.startswith(ABORT_PREFIX) for step in steps)
        found = self.current()
        if found is None:
            raise InvalidInput(
                f"tenant {self.tenant!r} service {self.product!r}: no {self.kind} to abort"
            )
        return self._steps(found, steps, ABORTED)

    def _steps(self, operation: Operation, steps: Sequence[Step], end: str) -> Outcome:
        detail: Detail = dict(operation.detail)
        outcome = Outcome(operation)
        for step in steps:
            if step.name in operation.steps_done:
                continue
            self.operations.still_held()
            operation = self.operations.step_started(operation, step.name)
            self.progress(step.name, "started")
            try:
                step.run(detail)
            except Pending as waiting:
                self.progress(step.name, "pending")
                operation = self.operations.step_failed(operation, step.name, f"waiting: {waiting}")
                outcome.operation, outcome.pending = operation, str(waiting)
                return outcome
            except InvalidInput as refused:
                # A step refuses only before it changes anything: the operation is where
                # it was, not in that step (an abort refused is not an abort begun).
                self.progress(step.name, "refused")
                with contextlib.suppress(Exception):
                    self.operations.step_refused(operation, step.name, str(refused))
                raise
            except BaseException as exc:
                # The first line only: a server's DETAIL line may quote the tenant's rows.
                text = str(exc).strip()
                reason = scrub(text.splitlines()[0])[:500] if text else type(exc).__name__
                self.progress(step.name, "failed")
                # Recorded when the registry can take it; the step's own error wins.
                with contextlib.suppress(Exception):
                    self.operations.step_failed(operation, step.name, reason)
                raise
            operation = self.operations.step_done(operation, step.name, detail)
            outcome.ran.append(step.name)
            self.progress(step.name, "done")
        outcome.operation = self.operations.finish(operation, end, detail)
        return outcome

"""The newer clients' write calls, mapped onto the command functions ``tenantctl`` uses.

Only an operator key (``Authorization: Bearer``), which no product is given, may call
them, and only when ``tenantctl serve --writes`` enables them. Each runs the command
in a worker thread and answers once the registry has recorded its transition (a new
tenant, a service ``provisioning``), or once it is done: a deployment may take
minutes, and the client waits 30 s. What follows is in the registry and the events.

- ``POST /v1/tenants``: ``onboard``, identity only. 201 ``{id, slug, status}``, or
  200 if it exists.
- ``POST …/associations/{service}``: ``register``. 201 ``{serviceName, status}``, 200
  if registered in that mode, 409 in another.
- ``PUT …/associations/{service}/suspend``: ``suspend``. 200 once done, 409 if already
  suspended.
- ``PUT /v1/tenants/{id}/reactivate``: ``resume`` of the suspended services. 200 once
  done, 409 if nothing is suspended.

A command that fails answers 500 with its one-line reason; one still running and not
yet recorded after :data:`ANSWER_WITHIN` answers 503 with ``Retry-After`` (the call is
idempotent: repeated, it answers 200 or 409 once the work is done).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from starlette.requests import Request
from starlette.responses import Response

from tenant_infra import commands
from tenant_infra.api import keys
from tenant_infra.api.app import NOT_FOUND, Endpoint, answer, error
from tenant_infra.api.reader import CONNECTIONS_SQL, TENANT_SQL, RegistryReader
from tenant_infra.catalog import IsolationMode, load_catalog
from tenant_infra.errors import BackendUnavailable, InvalidInput, OperationFailed
from tenant_infra.lifecycle import ServiceState, TenantStatus
from tenant_infra.tenant import canonical_id, requested_id, validate_tenant_id
from tenant_infra.workspace import InProgress

if TYPE_CHECKING:
    from tenant_infra.lifecycle import StackBackend

log = logging.getLogger("tenant_infra.api")

#: How long a call waits for its transition to be recorded (the client waits 30 s).
ANSWER_WITHIN: Final = 20.0
OPERATOR_KEY: Final = (401, "UNAUTHORIZED", "write calls need Authorization: Bearer <operator key>")
#: Request bodies are small JSON objects.
MAX_BODY: Final = 64 * 1024
_MODES: Final = {
    "schema": IsolationMode.SCHEMA,
    "isolated": IsolationMode.DATABASE,
    "database": IsolationMode.DATABASE,
    "": IsolationMode.DATABASE,
}


class Writes:
    """Write calls over the lifecycle commands (``backend``: as for the commands)."""

    def __init__(
        self,
        reader: RegistryReader,
        *,
        root: Path | None = None,
        backend: StackBackend | None = None,
        verify: commands.Gate = commands.ISOLATION,
        answer_within: float = ANSWER_WITHIN,
        platform: Path | None = None,
    ) -> None:
        self.reader, self.root, self.backend, self.verify = reader, root, backend, verify
        #: The stack file whose platform new tenants get (``serve --platform``).
        self.platform = platform
        self.answer_within = answer_within
        self.pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="tenant-write")

    def endpoints(self) -> list[Endpoint]:
        return [
            ("/v1/tenants", self.create_tenant, "POST"),
            ("/v1/tenants/{tenant}/associations/{service}", self.associate, "POST"),
            ("/v1/tenants/{tenant}/associations/{service}/suspend", self.suspend, "PUT"),
            ("/v1/tenants/{tenant}/reactivate", self.reactivate, "PUT"),
        ]

    # ------------------------------------------------------------- the calls

    async def create_tenant(self, request: Request) -> Response:
        body = await self._operator_body(request)
        if isinstance(body, Response):
            return body
        name, slug, metadata = body.get("name", ""), body.get("slug") or "", body.get("metadata")
        if not isinstance(name, str) or not isinstance(slug, str):
            return error(400, "INVALID", "name and slug must be strings")
        if metadata is not None and not (
            isinstance(metadata, dict) and all(isinstance(v, str) for v in metadata.values())
        ):
            return error(400, "INVALID", "metadata must be an object of strings")
        tenant = slug or uuid.uuid4().hex
        try:
            validate_tenant_id(tenant)
        except InvalidInput as exc:
            return error(400, "INVALID", str(exc))
        row = await self._tenant(canonical_id(tenant))
        if row["id"] is not None:
            return answer(200, {"id": row["canonical"], "slug": row["id"], "status": "active"})
        if self.platform is None:  # never a borrowed (development) platform
            return error(409, "NO_PLATFORM", "new tenants need tenantctl serve --platform FILE")
        labels = {**(metadata or {}), **({"name": name} if name else {})}
        platform = self.platform

        def onboard() -> Any:
            return commands.onboard(
                tenant,
                (),
                platform,
                metadata=labels,
                **self._command_options(),
                verify=self.verify,
            )

        async def recorded() -> bool:
            return (await self._tenant(canonical_id(tenant)))["id"] is not None

        refused = _failed(await self._run(onboard, recorded))
        if refused is not None:
            return refused
        return answer(201, {"id": canonical_id(tenant), "slug": tenant, "status": "active"})

    async def associate(self, request: Request) -> Response:
        body = await self._operator_body(request)
        if isinstance(body, Response):
            return body
        product = request.path_params["service"]
        mode = _MODES.get(str(body.get("isolationMode", "")).lower())
        if mode is None:
            return error(400, "INVALID", "isolationMode must be schema or isolated")
        if product not in load_catalog().products:
            return error(404, "NOT_FOUND", "no such service in the catalog")
        row = await self._service(request, product)
        if row is None or row["id"] is None:
            return error(*NOT_FOUND)
        tenant = str(row["id"])
        if row["state"] == "retained":
            return error(409, "CONFLICT", f"{product} was removed with its data kept")
        if row["product"] is not None and row["state"] != "purged":
            if row["isolation"] != mode.value:
                return error(409, "CONFLICT", f"{product} is registered in another mode")
            return answer(200, {"serviceName": product, "status": row["state"]})

        def register() -> Any:
            return commands.register(
                tenant, [f"{product}:{mode.value}"], **self._command_options(), verify=self.verify
            )

        async def recorded() -> bool:
            again = await self.reader.one(
                CONNECTIONS_SQL, {"key": "", "tenant": row["canonical"], "product": product}
            )
            return again["state"] not in (None, "retained", "purged")

        outcome = await self._run(register, recorded)
        refused = _failed(outcome, product, ServiceState.READY)
        if refused is not None:
            return refused
        status = "provisioning" if outcome is RECORDED else ServiceState.READY.value
        return answer(201, {"serviceName": product, "status": status})

    async def suspend(self, request: Request) -> Response:
        denied = await self._operator(request)
        if denied is not None:
            return denied
        product = request.path_params["service"]
        row = await self._service(request, product)
        if row is None or row["id"] is None or row["product"] is None:
            return error(*NOT_FOUND)
        if row["state"] == "suspended":
            return error(409, "CONFLICT", "the service is already suspended")
        if row["state"] != "ready":
            return error(409, "CONFLICT", f"the service is {row['state']}, not ready")
        tenant = str(row["id"])

        def suspend() -> Any:
            return commands.suspend(tenant, [product], **self._command_options())

        refused = _failed(await self._run(suspend, None), product, ServiceState.SUSPENDED)
        if refused is not None:
            return refused
        return answer(200, {"serviceName": product, "status": "suspended"})

    async def reactivate(self, request: Request) -> Response:
        denied = await self._operator(request)
        if denied is not None:
            return denied
        tenant_id = requested_id(request.path_params["tenant"])
        row = await self._tenant(tenant_id)
        if tenant_id is None or row["id"] is None:
            return error(*NOT_FOUND)
        suspended = sorted(p for p, s in dict(row["services"] or {}).items() if s == "suspended")
        if not suspended:
            return error(409, "CONFLICT", "no service of the tenant is suspended")
        tenant = str(row["id"])

        def resume() -> Any:
            # By name: each service is announced reactivated (what makes products
            # re-add the tenant), not only the tenant activated.
            return commands.resume(tenant, suspended, **self._command_options(), verify=self.verify)

        outcome = await self._run(resume, None)
        for product in suspended:
            refused = _failed(outcome, product, ServiceState.READY)
            if refused is not None:
                return refused
        return answer(200, {"id": row["canonical"], "status": "active"})

    # ------------------------------------------------------------ internals

    def _command_options(self) -> dict[str, Any]:
        return {"backend": self.backend, "root": self.root}

    async def _operator(self, request: Request) -> Response | None:
        """``None`` for an operator key in ``Authorization: Bearer``, else the refusal."""
        scheme, _, presented = request.headers.get("authorization", "").partition(" ")
        key_id = keys.key_id(presented.strip()) if scheme.lower() == "bearer" else None
        if key_id is None:
            return error(*OPERATOR_KEY)
        row = await self.reader.one(TENANT_SQL, {"key": key_id, "tenant": None})
        if row["hash"] is None or not keys.matches(presented.strip(), row["hash"]):
            return error(*OPERATOR_KEY)
        if row["scope"] != "operator":
            return error(403, "FORBIDDEN", "write calls take an operator key")
        return None

    async def _operator_body(self, request: Request) -> dict[str, Any] | Response:
        """The JSON object an operator sent, or the refusal."""
        denied = await self._operator(request)
        return denied if denied is not None else await _body(request)

    async def _tenant(self, canonical: str | None) -> dict[str, Any]:
        return await self.reader.one(TENANT_SQL, {"key": "", "tenant": canonical})

    async def _service(self, request: Request, product: str) -> dict[str, Any] | None:
        tenant = requested_id(request.path_params["tenant"])
        if tenant is None:
            return None
        return await self.reader.one(
            CONNECTIONS_SQL, {"key": "", "tenant": tenant, "product": product}
        )

    async def _run(
        self, command: Callable[[], Any], recorded: Callable[[], Awaitable[bool]] | None
    ) -> Any:
        """Start ``command``; its result once done, :data:`RECORDED` once ``recorded()``
        holds first, :data:`PENDING` if neither within :attr:`answer_within`, or the
        refusal its error maps to."""
        future: Future[Any] = self.pool.submit(command)
        future.add_done_callback(_log_failure)
        deadline = time.monotonic() + self.answer_within
        while time.monotonic() < deadline:
            if future.done():
                exc = future.exception()
                return _refusal(exc) if exc is not None else future.result()
            if recorded is not None and await recorded():
                return RECORDED
            await asyncio.sleep(0.1)
        return PENDING


#: What :meth:`Writes._run` answers while the command goes on.
RECORDED, PENDING = object(), object()


def _failed(
    outcome: Any, product: str | None = None, wanted: ServiceState | None = None
) -> Response | None:
    """The refusal an outcome calls for: an error, a command that reports failure, a
    service that did not reach ``wanted``, or one still running unrecorded."""
    if isinstance(outcome, Response):
        return outcome
    if outcome is PENDING:
        response = error(503, "IN_PROGRESS", "still running and not yet recorded; call again")
        response.headers["Retry-After"] = "10"
        return response
    if outcome is RECORDED or not isinstance(outcome, TenantStatus):
        return None
    service = next((s for s in outcome.services if s.product == product), None)
    reached = service is None or wanted is None or service.state is wanted
    if outcome.error or not reached:
        reason = outcome.error or (service.reason if service else "") or "failed"
        log.warning("write call on %s failed: %s", outcome.tenant, reason)
        return error(500, "FAILED", reason)
    return None


async def _body(request: Request) -> dict[str, Any] | Response:
    raw = b""
    async for chunk in request.stream():
        raw += chunk
        if len(raw) > MAX_BODY:
            return error(413, "TOO_LARGE", f"request bodies are at most {MAX_BODY} bytes")
    try:
        body = json.loads(raw or b"{}")
    except (ValueError, RecursionError):
        return error(400, "INVALID", "the body is not JSON (or nested too deep)")
    if not isinstance(body, dict):
        return error(400, "INVALID", "the body must be a JSON object")
    return body


def _refusal(exc: BaseException) -> Response:
    """A command's error as the client's status codes (one line, no value)."""
    if isinstance(exc, InvalidInput):
        return error(409 if "spelled otherwise" in str(exc) else 400, "INVALID", str(exc))
    if isinstance(exc, InProgress):
        return error(409, "CONFLICT", "another operation holds the tenant; try again")
    if isinstance(exc, BackendUnavailable):
        return error(503, "UNAVAILABLE", str(exc))
    if isinstance(exc, OperationFailed):
        return error(500, "FAILED", str(exc))
    return error(500, "INTERNAL", type(exc).__name__)


def _log_failure(future: Future[Any]) -> None:
    exc = future.exception()
    if exc is not None:
        log.warning(
            "write call failed: %s",
            str(exc)
            if isinstance(exc, InvalidInput | InProgress | BackendUnavailable | OperationFailed)
            else type(exc).__name__,
        )

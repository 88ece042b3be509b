"""The multi-tenancy API's routes: the seed platform client's paths and answers.

Reads come from the registry (read-only role, one query a request) and each
service's connections document; write calls, when enabled, hand over to the same
command functions as ``tenantctl`` (:mod:`tenant_infra.api.writes`). Every answer
carries ``Cache-Control: no-store``; no credential is ever logged.
"""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any, Final

from anyio import to_thread
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from tenant_infra.api import contract, keys
from tenant_infra.api.documents import Cached, DocumentSource, Entry
from tenant_infra.api.reader import ACTIVE_SQL, CONNECTIONS_SQL, TENANT_SQL, RegistryReader
from tenant_infra.catalog import load_catalog
from tenant_infra.errors import BackendUnavailable
from tenant_infra.tenant import requested_id

if TYPE_CHECKING:
    from tenant_infra.api.writes import Writes

log = logging.getLogger("tenant_infra.api")

HEADERS: Final = {"Cache-Control": "no-store"}


def answer(status: int, body: Any) -> Response:
    text = body if isinstance(body, str) else json.dumps(body, separators=(",", ":"))
    return Response(text, status, HEADERS, "application/json")


def error(status: int, code: str, message: str, state: str | None = None) -> Response:
    return answer(status, contract.denied(state, message, code))


UNAUTHORIZED: Final = (401, "UNAUTHORIZED", "a valid X-API-Key is required")
NOT_FOUND: Final = (404, "NOT_FOUND", "tenant or association not found")


class Api:
    """The handlers, over a registry reader and a source of connections documents."""

    def __init__(
        self,
        reader: RegistryReader,
        documents: DocumentSource,
        writes: Writes | None = None,
    ) -> None:
        self.reader, self.documents, self.writes = reader, Cached(documents), writes
        #: A source that blocks (Vault over HTTP) is read off the event loop.
        self.blocking = bool(getattr(documents, "blocking", True))

    # ------------------------------------------------------------- the routes

    async def connections(self, request: Request) -> Response:
        """``GET /v1/tenants/{tenantID}/associations/{service}/connections``."""
        product = request.path_params["service"]
        tenant = requested_id(request.path_params["tenant"])
        row = await self._keyed(request, CONNECTIONS_SQL, tenant=tenant, product=product)
        if isinstance(row, Response):
            return row
        if row["scope"] != "product" or row["key_product"] != product:
            return error(403, "FORBIDDEN", "this API key does not serve that product")
        if tenant is None or row["id"] is None or row["product"] is None:
            return error(*NOT_FOUND)
        state = row["state"]
        if state == contract.SUSPENDED:
            return error(403, "SERVICE_SUSPENDED", "the service is suspended", "suspended")
        if state in contract.PURGED:
            return error(403, "SERVICE_PURGED", "the service was removed", "purged")
        if state != contract.SERVED:
            return error(404, "NOT_READY", f"the service is {state}, not ready")
        entry = await self._document(row["id"], product, row["version"])
        if entry is None:
            log.error("no connections document for %s/%s", row["id"], product)
            return error(*NOT_FOUND)
        if entry.body is None:
            try:
                decoded = _decoded(row)
                body = contract.connections(decoded, decoded, entry.document)
            except Exception as exc:  # a malformed document: this tenant's problem alone
                # Only a mismatch's message is logged: it names fields, never values.
                why = exc if isinstance(exc, contract.DocumentMismatch) else type(exc).__name__
                log.error("connections document of %s/%s refused: %s", row["id"], product, why)
                return error(*NOT_FOUND)
            entry.body = json.dumps(body, separators=(",", ":")).encode()
        return Response(entry.body, 200, HEADERS, "application/json")

    async def active(self, request: Request) -> Response:
        """``GET /v1/tenants/active?service=PRODUCT``: a bare array, ready services only."""
        product = request.query_params.get("service", "")
        row = await self._keyed(request, ACTIVE_SQL, product=product)
        if isinstance(row, Response):
            return row
        if row["scope"] == "product" and row["key_product"] != product:
            return error(403, "FORBIDDEN", "this API key does not serve that product")
        if product not in load_catalog().products:
            return error(400, "UNKNOWN_SERVICE", "service must name a product of the catalog")
        return answer(200, row["tenants"])

    async def tenant(self, request: Request) -> Response:
        """``GET /v1/tenants/{id}``: the tenant's metadata (no credential), for an operator
        key or the key of a product the tenant has."""
        tenant = requested_id(request.path_params["tenant"])
        row = await self._keyed(request, TENANT_SQL, tenant=tenant)
        if isinstance(row, Response):
            return row
        if tenant is None or row["id"] is None:
            return error(*NOT_FOUND)
        if row["scope"] == "product" and row["key_product"] not in (row["services"] or {}):
            return error(*NOT_FOUND)  # a product sees only its own tenants
        return answer(200, describe(row))

    # ------------------------------------------------------------ internals

    async def _keyed(self, request: Request, sql: str, **params: Any) -> dict[str, Any] | Response:
        """The query's row, its ``X-API-Key`` checked against the key row it joins
        (a malformed key is never looked up); else the 401."""
        presented = request.headers.get("x-api-key", "")
        key_id = keys.key_id(presented)
        if key_id is None:
            return error(*UNAUTHORIZED)
        row = await self.reader.one(sql, {**params, "key": key_id})
        if row["hash"] is None or not keys.matches(presented, row["hash"]):
            return error(*UNAUTHORIZED)
        return row

    async def _document(self, tenant: str, product: str, version: str) -> Entry | None:
        entry = self.documents.cached(tenant, product, version)
        if entry is not None:
            return entry
        try:
            if not self.blocking:
                return self.documents.read(tenant, product, version)
            return await to_thread.run_sync(self.documents.read, tenant, product, version)
        except BackendUnavailable:
            raise
        except Exception as exc:  # the source's outage, not a defect of ours
            raise BackendUnavailable(f"credential source: {type(exc).__name__}") from None


def _decoded(row: Mapping[str, Any]) -> dict[str, Any]:
    """The connections row with its JSON columns (fetched as text) decoded."""
    return {
        **row,
        **{k: json.loads(row[k]) for k in ("metadata", "modules", "connection_settings")},
    }


def describe(row: Mapping[str, Any]) -> dict[str, Any]:
    """A tenant as ``GET /v1/tenants/{id}`` answers it."""
    metadata = {str(k): str(v) for k, v in dict(row["metadata"] or {}).items()}
    return {
        "id": row["canonical"],
        "slug": row["id"],
        "name": contract.tenant_name(row),
        "status": row["tenant_state"],
        "metadata": metadata,
    }


def create_app(api: Api) -> Starlette:
    """The ASGI application; the registry pool opens and closes with it."""

    @asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        await api.reader.open()
        try:
            yield
        finally:
            await api.reader.close()

    reads: list[Endpoint] = [
        ("/v1/tenants/active", api.active, "GET"),
        ("/v1/tenants/{tenant}/associations/{service}/connections", api.connections, "GET"),
        ("/v1/tenants/{tenant}", api.tenant, "GET"),
    ]
    endpoints = reads + (api.writes.endpoints() if api.writes is not None else [])
    routes = [
        Route(path, guarded(handler), methods=[method]) for path, handler, method in endpoints
    ]

    async def refused(_request: Request, exc: Exception) -> Response:
        """Unknown paths and methods, in JSON like every other answer."""
        status = exc.status_code if isinstance(exc, HTTPException) else 500
        return error(status, "NOT_FOUND" if status == 404 else "REFUSED", "no such call")

    app = Starlette(routes=routes, lifespan=lifespan, exception_handlers={HTTPException: refused})
    # A redirect would be built from the request's Host header, and clients resend
    # X-API-Key to wherever it points: no redirects at all.
    app.router.redirect_slashes = False
    return app


Handler = Callable[[Request], Awaitable[Response]]
#: A route: path, handler, method.
Endpoint = tuple[str, Handler, str]


def guarded(handler: Handler) -> Handler:
    """Every failure answered in one line: 503 when the registry or the credential
    source is unreachable (a real outage, which products' breakers should see), else
    500 naming the error's type only (its message may hold a value). Starlette would
    log a traceback with the message."""

    @functools.wraps(handler)
    async def run(request: Request) -> Response:
        try:
            return await handler(request)
        except BackendUnavailable as exc:
            log.warning("%s", exc)
            return error(503, "UNAVAILABLE", "the registry or Vault is unavailable; try again")
        except Exception as exc:
            log.error("%s %s failed: %s", request.method, request.url.path, type(exc).__name__)
            return error(500, "INTERNAL", "internal error")

    return run

"""MongoDB checks: the service user reaches its tenant database and nothing else.

They run when the document has a ``mongodb`` section and its server answers; a
server that cannot be reached yields one *skipped* result (``--strict`` fails it),
so a machine without MongoDB can still verify the other stores.
"""

from __future__ import annotations

import secrets
import socket
from collections.abc import Callable
from typing import Any, Final

from tenant_infra.mongodb import client_options
from tenant_infra.verify.checks import CheckResult, describe, failed, passed, skipped
from tenant_infra.verify.connections import ConnectionsDocument, MongodbConnection

#: A database no tenant can own: ``_`` is outside the tenant id grammar.
CANARY_DATABASE: Final = "tenantctl_verify_canary"
UNAUTHORIZED: Final = 13
DEFAULT_PORT: Final = 27017

MONGODB_CHECKS: Final = (
    "mongodb.reachable",
    "mongodb.read_write_own",
    "mongodb.only_own_database",
)


def tcp_reachable(host: str, port: int, timeout: float = 2.0) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def mongodb_gate(
    document: ConnectionsDocument,
    reachable: Callable[[str, int], bool] = tcp_reachable,
) -> CheckResult | None:
    """Why MongoDB is not checked (``None``: check it). SRV hosts (Atlas, no port)
    are left to the driver's own server selection."""
    mongo = document.mongodb
    if mongo is None:  # (a product that uses MongoDB fails mongodb.section instead)
        return skipped(MONGODB_CHECKS[0], f"no MongoDB section for product {document.product}")
    if mongo.port is not None and not reachable(mongo.host, mongo.port):
        return skipped(
            MONGODB_CHECKS[0], f"{mongo.host}:{mongo.port} not reachable: MongoDB checks skipped"
        )
    return None


def _client(mongo: MongodbConnection) -> Any:
    from pymongo import MongoClient

    return MongoClient(
        **client_options(
            host=mongo.host,
            port=mongo.port,
            user=mongo.user,
            password=mongo.password.get_secret_value(),
            auth_source=mongo.auth_source,
            tls=bool(mongo.tls),
            timeout_ms=5000,
        )
    )


def mongodb_checks(
    document: ConnectionsDocument,
    reachable: Callable[[str, int], bool] = tcp_reachable,
) -> list[CheckResult]:
    gate = mongodb_gate(document, reachable)
    if gate is not None:
        return [gate] if document.mongodb is not None else []
    from pymongo.errors import OperationFailure, PyMongoError

    mongo = document.mongodb
    assert mongo is not None
    hide = (mongo.password.get_secret_value(),)
    own = mongo.database
    try:
        client = _client(mongo)
        client[own].command("ping")
    except PyMongoError as exc:
        return [
            failed(MONGODB_CHECKS[0], f"cannot authenticate as {mongo.user}: {describe(exc, hide)}")
        ]
    results = [passed(MONGODB_CHECKS[0], f"authenticated as {mongo.user} on {mongo.host}")]
    with client:
        marker = secrets.token_hex(8)
        collection = client[own]["tenantctl_verify"]
        try:
            inserted = collection.insert_one({"marker": marker}).inserted_id
            found = collection.find_one({"_id": inserted})
            collection.delete_one({"_id": inserted})
        except PyMongoError as exc:
            results.append(failed(MONGODB_CHECKS[1], f"in {own}: {describe(exc, hide)}"))
        else:
            ok = found is not None and found.get("marker") == marker
            results.append(
                passed(MONGODB_CHECKS[1], f"wrote, read and deleted a document in {own}")
                if ok
                else failed(MONGODB_CHECKS[1], f"the document written in {own} was not read back")
            )
        problems: list[str] = []
        try:
            status = client[own].command("connectionStatus", showPrivileges=True)
            roles = status.get("authInfo", {}).get("authenticatedUserRoles", [])
            foreign_roles = [
                f"{r['role']}@{r['db']}"
                for r in roles
                if (r.get("role"), r.get("db")) != ("readWrite", own)
            ]
            if foreign_roles:
                problems.append(f"holds role(s) {', '.join(foreign_roles)}")
            listed = client.admin.command("listDatabases", nameOnly=True, authorizedDatabases=True)
            visible = sorted(d["name"] for d in listed.get("databases", []) if d["name"] != own)
            if visible:
                problems.append(f"sees database(s) {', '.join(visible)}")
        except PyMongoError as exc:
            problems.append(f"could not read its privileges: {describe(exc, hide)}")
        for database in ("admin", CANARY_DATABASE):
            try:
                client[database]["tenantctl_verify"].find_one({})
            except OperationFailure as exc:
                if exc.code != UNAUTHORIZED:
                    problems.append(f"reading {database} failed: {describe(exc, hide)}")
            except PyMongoError as exc:
                problems.append(f"reading {database} failed: {describe(exc, hide)}")
            else:
                problems.append(f"read from database {database} succeeded")
        results.append(
            failed(MONGODB_CHECKS[2], "; ".join(problems))
            if problems
            else passed(
                MONGODB_CHECKS[2],
                f"only readWrite@{own}; reads of admin and another database refused",
            )
        )
    return results

"""Conflicts between concurrent writers of one catalog row, retried rather than failed.

PostgreSQL keeps a database's privileges in one ``pg_database`` row. Two
transactions that both change it (two tenants' stacks granting ``CONNECT`` on a
product's shared database, or a rotation's ``DROP OWNED BY`` next to a neighbour's
grant) make the later one fail with ``tuple concurrently updated`` once the first
commits. The provider serializes its own grants within one process only
(cyrilgdn/terraform-provider-postgresql#169), and every tenant's stack runs its own
provider, so the conflict is an everyday event in a fleet (#178, pulumi-postgresql
#126, #831). Running the statement, or the update, again succeeds.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from typing import TypeVar

import psycopg

#: PostgreSQL's words (internal error XX000) when a concurrent transaction changed or
#: removed the catalog row a statement was about to change.
CONCURRENT_CHANGES = frozenset({"tuple concurrently updated", "tuple concurrently deleted"})
#: Catalog keys two concurrent first grants can both insert: a parameter's privileges
#: get their row with the first grant and lose it with the last revoke.
CATALOG_KEYS = frozenset({"pg_parameter_acl_parname_index"})
#: First backoff delay (seconds) when retrying a transient conflict.
RETRY_BASE_DELAY = 1.0

T = TypeVar("T")


class TransientConflict(RuntimeError):
    """An operation failed in a way that succeeds when retried: a stack update whose
    PostgreSQL provider met a concurrent change (the backends decide, from the failed
    resource, never from text a migration may carry)."""


def transient(error: BaseException) -> bool:
    """Whether running ``error``'s operation again succeeds: judged from the server's
    SQLSTATE and primary message, never from a DETAIL line or other text a tenant's
    values can reach."""
    if isinstance(error, TransientConflict):
        return True
    if not isinstance(error, psycopg.Error):
        return False
    if error.sqlstate == "XX000":
        return error.diag.message_primary in CONCURRENT_CHANGES
    return error.sqlstate == "23505" and error.diag.constraint_name in CATALOG_KEYS


def with_retries(
    action: Callable[[], T],
    attempts: int = 5,
    base_delay: float | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> T:
    """Run ``action``, again after a jittered exponential backoff when it fails with a
    transient conflict; ``action`` must be idempotent (an update, ``DROP OWNED``)."""
    base_delay = RETRY_BASE_DELAY if base_delay is None else base_delay
    for attempt in range(1, attempts + 1):
        try:
            return action()
        except Exception as exc:
            if attempt == attempts or not transient(exc):
                raise
            sleep(base_delay * 2 ** (attempt - 1) * (1 + random.random()))
    raise AssertionError("unreachable")

"""API keys of the multi-tenancy API: made, checked, listed and revoked.

A key is ``ti_<id>_<secret>``: the id finds its row, the secret (256 random bits)
proves it. Only the SHA-256 of the whole key is stored (a key is random, so a slow
hash would add nothing), and a presented key is compared with it in constant time.
A ``product`` key reads its own product's connections and nothing else; an
``operator`` key, which no product is given, may also call the write endpoints.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from typing import Any, Final, Literal

import psycopg

from tenant_infra.catalog import load_catalog
from tenant_infra.errors import InvalidInput
from tenant_infra.registry.store import SCHEMA, Registry, _reported

Scope = Literal["product", "operator"]

_KEY_RE: Final = re.compile(r"ti_([0-9a-f]{16})_[A-Za-z0-9_-]{43}")


def new_key() -> tuple[str, str]:
    """A fresh ``(id, key)``."""
    key_id = secrets.token_hex(8)
    return key_id, f"ti_{key_id}_{secrets.token_urlsafe(32)}"


def key_id(presented: str) -> str | None:
    """The id of a well-formed key, else ``None`` (never looked up)."""
    match = _KEY_RE.fullmatch(presented)
    return match.group(1) if match else None


def digest(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


def matches(presented: str, stored: bytes) -> bool:
    """Whether ``presented`` is the key ``stored`` is the hash of, in constant time."""
    return hmac.compare_digest(digest(presented), bytes(stored))


def create(registry: Registry, scope: Scope, product: str | None = None, note: str = "") -> str:
    """Store a new key's hash and return the key: the only time it exists in clear."""
    if scope == "product":
        if product is None:
            raise InvalidInput("a product key needs --service PRODUCT")
        load_catalog().product(product)
    elif product is not None:
        raise InvalidInput("an operator key serves every product: drop --service")
    if len(note) > 200 or not note.isprintable():
        raise InvalidInput("--note must be printable and at most 200 characters")
    key_id_, key = new_key()
    try:
        with registry.connect() as conn:
            conn.execute(
                f"INSERT INTO {SCHEMA}.api_keys (id, scope, product, hash, note, created_by)"
                " VALUES (%s, %s, %s, %s, %s, %s)",
                (key_id_, scope, product, digest(key), note, registry.actor),
            )
    except psycopg.Error as exc:
        raise _reported("storing an API key", exc) from None
    return key


def listed(registry: Registry) -> list[dict[str, Any]]:
    """Every key's id, scope, product, note and who made or revoked it: never a hash."""
    try:
        with registry.connect() as conn:
            return conn.execute(
                f"SELECT id, scope, product, note, created_at, created_by, revoked_at,"
                f" revoked_by FROM {SCHEMA}.api_keys ORDER BY created_at, id"
            ).fetchall()
    except psycopg.Error as exc:
        raise _reported("reading API keys", exc) from None


def revoke(registry: Registry, key: str) -> None:
    """Revoke a key named by its id; refused keys answer 401 at once."""
    if key_id(key) is not None:  # a key on a command line is in `ps` and shell history
        raise InvalidInput("name the key by its id (tenantctl api-key list), not the key")
    wanted = key
    if not re.fullmatch(r"[0-9a-f]{16}", wanted):
        raise InvalidInput(f"{wanted[:20]!a} is not an API key id (16 hex digits)")
    try:
        with registry.connect() as conn:
            row = conn.execute(
                f"UPDATE {SCHEMA}.api_keys SET revoked_at = coalesce(revoked_at, now()),"
                " revoked_by = coalesce(revoked_by, %s)"
                " WHERE id = %s RETURNING revoked_at",
                (registry.actor, wanted),
            ).fetchone()
    except psycopg.Error as exc:
        raise _reported("revoking an API key", exc) from None
    if row is None:
        raise InvalidInput(f"no API key {wanted!r}")

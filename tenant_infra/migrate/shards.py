"""Which shard of a fleet migration a tenant belongs to: the one place that decides.

A Kubernetes Indexed Job runs ``K`` pods, each with ``JOB_COMPLETION_INDEX`` set to
``0..K-1``; each migrates the tenants of its shard. The shard of a tenant is a stable
hash (SHA-256, never Python's salted ``hash``) of its product and canonical id, modulo
``K``: it depends on nothing but the tenant, so every pod of a Job agrees on it whatever
order the snapshot or discovery lists tenants in, and every tenant lands in exactly one
shard.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Final, TypeVar

from tenant_infra.errors import InvalidInput
from tenant_infra.tenant import canonical_id

#: Set by Kubernetes in each pod of an Indexed Job: the pod's index, 0-based.
INDEX_ENV: Final = "JOB_COMPLETION_INDEX"
T = TypeVar("T")
#: Kubernetes refuses an Indexed Job with more completions than this (with
#: ``backoffLimitPerIndex``): more shards than pods could run is a typo.
MAX_SHARDS: Final = 100_000


@dataclass(frozen=True, slots=True)
class Shard:
    """Shard ``index`` of ``count`` (0-based, like ``JOB_COMPLETION_INDEX``)."""

    index: int
    count: int

    def __post_init__(self) -> None:
        if not 1 <= self.count <= MAX_SHARDS:
            raise InvalidInput(f"the number of shards must be 1..{MAX_SHARDS}, not {self.count}")
        if not 0 <= self.index < self.count:
            raise InvalidInput(
                f"shard index {self.index} is out of range 0..{self.count - 1} (0-based)"
            )

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"

    def holds(self, tenant: str, product: str) -> bool:
        return shard_of(tenant, product, self.count) == self.index


def shard_of(tenant: str, product: str, count: int) -> int:
    """The shard (``0..count-1``) of one tenant's service of ``product``.

    The canonical id is hashed, so a UUID's two spellings are one tenant here as in
    the registry.
    """
    key = f"{product}\0{canonical_id(tenant)}".encode()
    return int.from_bytes(hashlib.sha256(key).digest()[:8], "big") % count


def select(items: Iterable[T], shard: Shard | None, key: Callable[[T], tuple[str, str]]) -> list[T]:
    """The items of ``shard`` (all of them for ``None``), in their given order;
    ``key`` gives an item's (tenant, product)."""
    if shard is None:
        return list(items)
    return [item for item in items if shard.holds(*key(item))]


def _int(value: str, what: str) -> int:
    text = value.strip()
    if not text.isascii() or not text.isdigit():
        raise InvalidInput(f"{what} must be a non-negative integer, not {value!r}")
    return int(text)


def parse_shard(value: str) -> Shard:
    """``I/K`` as :class:`Shard`; anything else is invalid input."""
    index, sep, count = value.partition("/")
    if not sep:
        raise InvalidInput(f"--shard takes I/K (shard I of K, 0-based), not {value!r}")
    return Shard(_int(index, "--shard's index"), _int(count, "--shard's count"))


def resolve_shard(
    shard: str | None, shards: int | None, environ: Mapping[str, str]
) -> Shard | None:
    """The shard a run migrates: ``--shard I/K``, or ``--shards K`` with
    ``JOB_COMPLETION_INDEX``; ``None`` (the whole fleet) without either option.

    Refused as invalid input, before any connection: both options, ``--shard`` inside
    an Indexed Job's pod (two sources for one index), ``--shards`` without the variable,
    and any value out of range. Without ``--shards`` the variable is ignored: a pod
    that names no shard count migrates what its other options say.
    """
    in_pod = environ.get(INDEX_ENV)
    if shard is not None and shards is not None:
        raise InvalidInput("give --shard I/K, or --shards K with JOB_COMPLETION_INDEX, not both")
    if shard is not None:
        if in_pod is not None:
            raise InvalidInput(
                f"--shard {shard} and {INDEX_ENV}={in_pod} both name the shard: give one"
            )
        return parse_shard(shard)
    if shards is None:
        return None
    if in_pod is None:
        raise InvalidInput(f"--shards {shards} needs {INDEX_ENV} (or give --shard I/K)")
    return Shard(_int(in_pod, INDEX_ENV), shards)

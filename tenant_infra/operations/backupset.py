"""A backup set: where it lives, what its manifest says, and how it is proved intact.

One set per tenant service and backup, ``<root>/<tenant>/<product>/<UTC timestamp>/``:

- ``postgresql.dump``: ``pg_dump --format=custom`` of the tenant schema;
- ``rabbitmq-definitions.json``: the tenant vhost's queues, exchanges, bindings and
  policies (never its users or parameters, which may hold credentials);
- ``mongodb.archive``: ``mongodump --archive`` of the tenant database, when taken;
- ``manifest.json``, written last: tool versions, isolation mode, the Alembic
  revision, every table's shape, row count and seeded checksum, sequences, and every
  file's size and sha256. No secret.

Storage is the small :class:`BackupStorage` interface. A set is written into a
staging place and published whole, so a killed backup never leaves something that
looks like a set. :class:`LocalDirectory` is the one implementation; see the README
for what an S3-compatible one needs.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from tenant_infra.errors import InvalidInput
from tenant_infra.pgdata.checksum import Checksum
from tenant_infra.pgdata.inventory import Inventory, SequenceValue, Table

FORMAT = 1
MANIFEST = "manifest.json"
POSTGRES_DUMP = "postgresql.dump"
RABBITMQ_DEFINITIONS = "rabbitmq-definitions.json"
MONGODB_ARCHIVE = "mongodb.archive"
_STAMP = re.compile(r"\d{8}T\d{6}(?:\d{6})?Z")


def new_stamp(now: datetime | None = None) -> str:
    """The set's name: its UTC time, sortable (microseconds: two backups a second)."""
    return (now or datetime.now(UTC)).strftime("%Y%m%dT%H%M%S%fZ")


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class FileEntry(_Model):
    bytes: int
    sha256: str


class TableEntry(_Model):
    name: str
    columns: list[tuple[str, str]]
    generated: list[str] = Field(default_factory=list)
    builtin_types: bool = Field(alias="builtinTypes")
    hashed_as: list[str] = Field(alias="hashedAs")
    rows: int
    digest: str
    bytes: int

    def table(self) -> Table:
        return Table(
            name=self.name,
            columns=tuple((c, t) for c, t in self.columns),
            generated=frozenset(self.generated),
            builtin_types=self.builtin_types,
            hashed_as=tuple(self.hashed_as),
            rows_estimate=self.rows,
            bytes=self.bytes,
        )


class SequenceEntry(_Model):
    name: str
    last_value: int = Field(alias="lastValue")
    is_called: bool = Field(alias="isCalled")


class PostgresPart(_Model):
    database: str
    schema_: str = Field(alias="schema")
    revision: str | None
    #: The checksums' seed: a tenant cannot craft rows that collide under a seed it
    #: never sees.
    seed: int
    tables: list[TableEntry]
    sequences: list[SequenceEntry]
    large_objects: int = Field(0, alias="largeObjects")

    def inventory(self) -> Inventory:
        return Inventory(
            self.schema_,
            tuple(t.table() for t in self.tables),
            tuple(SequenceValue(s.name, s.last_value, s.is_called) for s in self.sequences),
            self.revision,
        )

    def checksums(self) -> dict[str, Checksum]:
        return {t.name: Checksum(t.rows, t.digest) for t in self.tables}

    @classmethod
    def of(
        cls,
        database: str,
        inventory: Inventory,
        seed: int,
        sums: dict[str, Checksum],
        large_objects: int,
    ) -> PostgresPart:
        return cls(
            database=database,
            schema=inventory.schema,
            revision=inventory.revision,
            seed=seed,
            tables=[
                TableEntry(
                    name=t.name,
                    columns=list(t.columns),
                    generated=sorted(t.generated),
                    builtinTypes=t.builtin_types,
                    hashedAs=list(t.hashed_as),
                    rows=sums[t.name].rows,
                    digest=sums[t.name].digest,
                    bytes=t.bytes,
                )
                for t in inventory.tables
            ],
            sequences=[
                SequenceEntry(name=s.name, lastValue=s.last_value, isCalled=s.is_called)
                for s in inventory.sequences
            ],
            largeObjects=large_objects,
        )


class StorePart(_Model):
    """A store other than PostgreSQL: what was saved, or why it was skipped."""

    skipped: str | None = None
    vhost: str | None = None
    database: str | None = None
    counts: dict[str, int] = Field(default_factory=dict)


class Manifest(_Model):
    format: int = FORMAT
    tenant: str
    product: str
    isolation: str
    stamp: str
    created_at: datetime = Field(alias="createdAt")
    tools: dict[str, str]
    postgresql: PostgresPart | None = None
    rabbitmq: StorePart | None = None
    mongodb: StorePart | None = None
    files: dict[str, FileEntry]

    def to_json(self) -> dict[str, Any]:
        return self.model_dump(mode="json", by_alias=True)


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        while chunk := stream.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def file_entries(directory: Path, names: list[str]) -> dict[str, FileEntry]:
    return {
        name: FileEntry(bytes=(directory / name).stat().st_size, sha256=sha256_of(directory / name))
        for name in names
    }


def write_manifest(directory: Path, manifest: Manifest) -> None:
    path = directory / MANIFEST
    path.write_text(json.dumps(manifest.to_json(), indent=2, sort_keys=True) + "\n")
    path.chmod(0o600)


def read_manifest(directory: Path, tenant: str, product: str) -> Manifest:
    """The set's manifest, if it is one, of ``tenant``'s ``product``: refused in one
    line otherwise. Its files are not checked (:func:`read_set`)."""
    path = directory / MANIFEST
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError:
        raise InvalidInput(f"{directory} is not a backup set: it has no {MANIFEST}") from None
    except (OSError, ValueError) as exc:
        raise InvalidInput(f"{path} cannot be read: {exc}") from None
    try:
        manifest = Manifest.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise InvalidInput(f"{path} is not a valid manifest: {where}: {first['msg']}") from None
    if manifest.format != FORMAT:
        raise InvalidInput(f"{path}: format {manifest.format} is not {FORMAT}")
    if (manifest.tenant, manifest.product) != (tenant, product):
        raise InvalidInput(
            f"{directory} is the backup of {manifest.tenant}/{manifest.product}, "
            f"not of {tenant}/{product}"
        )
    return manifest


def read_set(directory: Path, tenant: str, product: str) -> Manifest:
    """:func:`read_manifest`, once every file it lists is there with its size and
    sha256: a damaged set is refused before anything is restored from it."""
    manifest = read_manifest(directory, tenant, product)
    expected = {
        POSTGRES_DUMP: manifest.postgresql is not None,
        RABBITMQ_DEFINITIONS: manifest.rabbitmq is not None and not manifest.rabbitmq.skipped,
        MONGODB_ARCHIVE: manifest.mongodb is not None and not manifest.mongodb.skipped,
    }
    unlisted = [name for name, needed in expected.items() if needed and name not in manifest.files]
    if unlisted:
        raise InvalidInput(f"{directory / MANIFEST} does not list {unlisted[0]}")
    for name, entry in sorted(manifest.files.items()):
        if "/" in name or name.startswith("."):
            raise InvalidInput(f"{directory / MANIFEST} names a file outside its set: {name!r}")
        file = directory / name
        if not file.is_file():
            raise InvalidInput(f"backup set {directory} is missing {name}")
        if file.stat().st_size != entry.bytes or sha256_of(file) != entry.sha256:
            raise InvalidInput(
                f"backup set {directory}: {name} is damaged (its sha256 is not the manifest's)"
            )
    return manifest


class BackupStorage(Protocol):
    """Where sets are kept. A set is written to :meth:`staging` (a local directory),
    then :meth:`publish`\\ ed whole; :meth:`fetch` gives a local directory to read."""

    def staging(self, tenant: str, product: str, stamp: str) -> Path: ...

    def publish(self, tenant: str, product: str, stamp: str) -> str: ...

    def discard(self, tenant: str, product: str, stamp: str) -> None: ...

    def fetch(self, reference: str) -> Path: ...

    def sets(self, tenant: str, product: str) -> list[str]: ...


class LocalDirectory:
    """Sets under a local (or mounted) directory; publishing is one ``rename``."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def _service(self, tenant: str, product: str) -> Path:
        return self.root / tenant / product

    def staging(self, tenant: str, product: str, stamp: str) -> Path:
        place = self._service(tenant, product) / f".{stamp}.partial"
        if place.exists():
            shutil.rmtree(place)
        place.mkdir(parents=True, mode=0o700)
        return place

    def publish(self, tenant: str, product: str, stamp: str) -> str:
        final = self._service(tenant, product) / stamp
        staged = self._service(tenant, product) / f".{stamp}.partial"
        if staged.exists():
            os.replace(staged, final)
        if not (final / MANIFEST).is_file():
            raise InvalidInput(f"backup set {final} was never written")
        return str(final)

    def discard(self, tenant: str, product: str, stamp: str) -> None:
        staged = self._service(tenant, product) / f".{stamp}.partial"
        if staged.exists():
            shutil.rmtree(staged)

    def fetch(self, reference: str) -> Path:
        return Path(reference)

    def sets(self, tenant: str, product: str) -> list[str]:
        place = self._service(tenant, product)
        if not place.is_dir():
            return []
        return [str(p) for p in sorted(place.iterdir()) if _STAMP.fullmatch(p.name) and p.is_dir()]

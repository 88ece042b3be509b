"""Restore of one tenant service from a backup set: aside, verified, then swapped.

Nothing is written over live data. Five steps on the step machine
(:mod:`tenant_infra.operations.steps`):

1. ``restore-aside``: a schema ``restoring_tenant_<key>`` is made beside the live one,
   in the same database (both isolation modes), owned by a login that exists for this
   restore only (:func:`tenant_infra.pgdata.copy.create_login`). The product's own
   migrations, run as that login in a sandbox, build the set's revision there; then
   each table's rows are streamed out of the archive (``pg_restore --data-only
   --table``, several at once) into it, the indexes rebuilt and the sequences set.
   Neither the migrations nor the rows run with more than that login's rights: it
   owns the aside schema and nothing else, and its password reaches only the
   migrations' sandbox (over a socket, as a tenant's credentials do).
2. ``verify``: the aside schema against the manifest: revision, tables and columns,
   row counts and seeded checksums per table, sequences. A difference aborts the
   restore (the aside is dropped; the live data was never touched) and names the
   table.
3. ``catch-up``: a copy at an older revision than the live schema is migrated to
   the live one (as the same login): the service stays at the revision its stack
   records, with the backup's rows.
4. ``swap`` (``--swap``; with ``--aside`` the restore waits here, open, for an
   operator to look): in one transaction, once every live table is locked, the live
   schema becomes ``pre_restore_tenant_<key>``, the aside takes the live name, and
   the service's login becomes the owner of all of it. The login, its password and
   its ``search_path`` are untouched, so the credentials keep working; its sessions
   are ended, since their cached plans still point at the replaced tables. The
   registry records it and announces ``tenant.cache.invalidate``.
5. ``rabbitmq``: the vhost is reprovisioned from the stack if it is gone (a refresh,
   then an update), and the saved topology declared in it. Messages are not restored.

``--drop-previous`` drops the kept ``pre_restore`` schema. Killed anywhere, the
restore is run again with ``--resume`` (or ``--abort`` before the swap).
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from tenant_infra.catalog import load_catalog
from tenant_infra.config import ServiceSpec, TenantConfig
from tenant_infra.errors import InvalidInput, OperationFailed, first_line
from tenant_infra.lifecycle import (
    Progress,
    StackBackend,
    deploy_step,
    known_config,
    known_service,
)
from tenant_infra.migrate.executors import migrate_one
from tenant_infra.migrate.revisions import declared_head
from tenant_infra.migrate.targets import MigrationTarget
from tenant_infra.operations import vhost
from tenant_infra.operations.backup import service_database
from tenant_infra.operations.backupset import (
    POSTGRES_DUMP,
    RABBITMQ_DEFINITIONS,
    BackupStorage,
    Manifest,
    PostgresPart,
    read_set,
)
from tenant_infra.operations.steps import (
    Detail,
    Machine,
    Mismatch,
    Outcome,
    Pending,
    Step,
    StepProgress,
)
from tenant_infra.pgdata.checksum import checksums, mismatches
from tenant_infra.pgdata.copy import (
    CopyProgress,
    Sessions,
    add_keys,
    build_indexes,
    copy_sequences,
    create_login,
    drop_keys,
    drop_login,
    empty_tables,
    login_again,
    parallel,
    secondary_indexes,
    writer,
)
from tenant_infra.pgdata.dump import load_table
from tenant_infra.pgdata.inventory import (
    Inventory,
    differences,
    qualified,
    read_inventory,
    stabilize,
)
from tenant_infra.registry import Registry
from tenant_infra.registry.operations import Operations
from tenant_infra.sessions import admin_params, connect, end_sessions
from tenant_infra.workspace import Workspace

KIND = "restore"
#: How long the swap waits for the tenant's transactions before ending them.
SWAP_LOCK_WAIT = "5s"
SWAP_ATTEMPTS = 4
#: How long dropping a copy waits on a session holding it (then fails, to be re-run).
DROP_LOCK_WAIT = "30s"


def restorer_name(login: str) -> str:
    """The restore's own login for the service ``login``: one at a time per service."""
    return "tenant_infra__restore_" + hashlib.sha256(login.encode()).hexdigest()[:12]


@dataclass
class Restorer:
    """Everything the steps need; one per ``restore`` call."""

    tenant: str
    product: str
    backend: StackBackend
    workspace: Workspace
    registry: Registry
    storage: BackupStorage
    environ: Mapping[str, str]
    reference: str | None = None
    swap: bool = False
    progress: Progress | None = None
    copy_progress: CopyProgress | None = None
    workers: int = 2

    # ---------------------------------------------------------------- reading

    def config(self) -> TenantConfig:
        return known_config(self.workspace, self.tenant)

    def spec(self, config: TenantConfig) -> ServiceSpec:
        return known_service(config, self.product)

    def read(self, reference: str) -> tuple[Path, Manifest]:
        """The set, proved intact (every file's sha256)."""
        directory = self.storage.fetch(reference)
        return directory, read_set(directory, self.tenant, self.product)

    def manifest(self, detail: Mapping[str, Any]) -> Manifest:
        """The manifest ``restore-aside`` kept in the operation: the steps after it
        need nothing of the set, which may be moved or pruned meanwhile."""
        return Manifest.model_validate(detail["manifest"])

    def admin(self, config: TenantConfig) -> dict[str, Any]:
        database = service_database(config, self.spec(config))
        return admin_params(config, self.product, self.environ, database, KIND)

    def schemas(self, config: TenantConfig) -> set[str]:
        """Which of the live, aside and kept schemas exist."""
        names = config.names.service(self.product)
        wanted = [names.pg_schema, names.pg_restore_schema, names.pg_pre_restore_schema]
        with connect(self.admin(config)) as conn:
            rows = conn.execute(
                "SELECT nspname FROM pg_catalog.pg_namespace WHERE nspname = ANY(%s)", (wanted,)
            ).fetchall()
        return {str(r[0]) for r in rows}

    def owner(self, config: TenantConfig) -> str:
        """Who owns the live data, and so the restored data once swapped in."""
        return config.pg_owner(self.product)

    # ------------------------------------------------------------------ steps

    def restore_aside(self, detail: Detail) -> None:
        config = self.config()
        directory, manifest = self.read(str(detail["set"]))
        part = _postgres(manifest)
        names = config.names.service(self.product)
        aside, admin = names.pg_restore_schema, self.admin(config)
        restorer = restorer_name(self.owner(config))
        # Whatever a killed run left is the restore's own, never live data: dropped.
        params = create_login(admin, restorer)
        with connect(admin, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(aside)))
            conn.execute(
                sql.SQL("CREATE SCHEMA {} AUTHORIZATION {}").format(
                    sql.Identifier(aside), sql.Identifier(restorer)
                )
            )
        self._migrate(params, aside, restorer, part.revision)
        expected = part.inventory()
        with connect(admin) as conn:
            built = read_inventory(conn, aside)
        problems = differences(expected, built)
        if problems:
            raise Mismatch(
                f"the product's migrations at revision {part.revision or 'base'} do not "
                f"rebuild the backup's tables: {problems[0]}"
            )
        started = time.monotonic()
        self._load(params, restorer, aside, directory / POSTGRES_DUMP, part, expected)
        _seal(admin, restorer)
        detail["manifest"] = manifest.to_json()
        if manifest.rabbitmq is not None and not manifest.rabbitmq.skipped:
            detail["definitions"] = json.loads((directory / RABBITMQ_DEFINITIONS).read_text())
        detail["loadSeconds"] = round(time.monotonic() - started, 3)

    def _migrate(
        self, params: Mapping[str, Any], aside: str, restorer: str, revision: str | None
    ) -> None:
        if revision is None:
            return
        location = load_catalog().product(self.product).script_location
        if location is None:
            raise InvalidInput(f"product {self.product!r} has no migrations to rebuild its tables")
        target = MigrationTarget(
            schema=aside,
            database=str(params["dbname"]),
            tenant=self.tenant,
            product=self.product,
            role=restorer,
            params={k: str(v) for k, v in params.items() if v is not None},
        )
        result = migrate_one(str(location), target, revision)
        if result.status == "failed":
            raise OperationFailed(
                f"migrating the restore's schema to revision {revision} failed: {result.error}"
            )

    def _load(
        self,
        params: Mapping[str, Any],
        restorer: str,
        aside: str,
        archive: Path,
        part: PostgresPart,
        expected: Inventory,
    ) -> None:
        tables = sorted(expected.data_tables, key=lambda t: t.bytes, reverse=True)
        with writer(params, restorer) as target:
            indexes = secondary_indexes(target, aside)
            empty_tables(target, aside, tables)
            # As pg_restore does: keys too are added once the rows are in (a random
            # uuid key maintained row by row costs more than the whole load).
            keys = drop_keys(target, aside)
        done: list[str] = []
        with Sessions(target=lambda: writer(params, restorer)) as session:

            def load(table: Any) -> None:
                load_table(archive, part.schema_, table, session("target"), aside)
                done.append(table.name)
                if self.copy_progress is not None:
                    self.copy_progress(len(done), len(tables), table.name)

            parallel(tables, self.workers, load)
            add_keys(lambda: session("target"), aside, keys, self.workers)
            build_indexes(lambda: session("target"), indexes, self.workers)
        copy_sequences(params, aside, expected.sequences, restorer)

    def verify(self, detail: Detail) -> None:
        config = self.config()
        part = _postgres(self.manifest(detail))
        names = config.names.service(self.product)
        if names.pg_restore_schema not in self.schemas(config):
            raise OperationFailed(
                f"the restore's schema {names.pg_restore_schema} is gone; run --abort and "
                "restore again"
            )
        started = time.monotonic()
        problems = self.differences(config, part)
        if problems:
            raise Mismatch(f"the restored copy is not the backup: {problems[0]}")
        detail["verifySeconds"] = round(time.monotonic() - started, 3)
        detail["rows"] = sum(t.rows for t in part.tables)

    def catch_up(self, detail: Detail) -> None:
        """The verified copy migrated to the product's head, as the restore's login:
        the revision the stack records and the next ``up`` migrates from (the live
        schema's version table is the tenant's to write, so it decides nothing)."""
        config = self.config()
        names = config.names.service(self.product)
        admin, head = self.admin(config), self.head()
        with connect(admin) as conn:
            aside = read_inventory(conn, names.pg_restore_schema).revision
        detail["headRevision"] = head
        if head is None or aside == head:
            return
        restorer = restorer_name(self.owner(config))
        params = login_again(admin, restorer)
        try:
            self._migrate(params, names.pg_restore_schema, restorer, head)
        finally:
            _seal(admin, restorer)
        detail["migratedFrom"] = aside

    def head(self) -> str | None:
        location = load_catalog().product(self.product).script_location
        return None if location is None else declared_head(location)

    def differences(self, config: TenantConfig, part: PostgresPart) -> list[str]:
        """Where the aside schema differs from the manifest, one line each."""
        aside = config.names.service(self.product).pg_restore_schema
        expected = part.inventory()
        with connect(self.admin(config)) as conn:
            stabilize(conn)
            conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
            found = read_inventory(conn, aside)
            problems = differences(expected, found)
            if problems:
                return problems
            theirs = {s.name: (s.last_value, s.is_called) for s in found.sequences}
            problems = [
                f"sequence {s.name}: not the backup's value"
                for s in expected.sequences
                if theirs.get(s.name) != (s.last_value, s.is_called)
            ]
            sums = checksums(conn, aside, expected.tables, part.seed)
        return problems + mismatches(part.checksums(), sums, ("backup", "restored copy"))

    def swap_step(self, detail: Detail) -> None:
        config = self.config()
        names = config.names.service(self.product)
        live, aside, kept = names.pg_schema, names.pg_restore_schema, names.pg_pre_restore_schema
        owner, admin = self.owner(config), self.admin(config)
        logins = config.pg_logins(self.product)
        present = self.schemas(config)
        if aside in present:
            self.catch_up(detail)  # the product's head may have moved since (an --aside)
            if not self.swap:
                raise Pending(
                    f"restored and verified beside the live data, as schema {aside} of "
                    f"database {admin['dbname']}: run restore --resume --swap to put it "
                    "live, or --abort to drop it"
                )
            if kept in present:
                raise InvalidInput(
                    f"schema {kept} holds the data a previous restore replaced: drop it "
                    "with restore --drop-previous first"
                )
            detail["sessionsEnded"] = self._swap(admin, (live, aside, kept), owner, logins, detail)
        elif live not in present:
            raise OperationFailed(f"neither {aside} nor {live} is there: the swap cannot go on")
        # Swapped (now or by a run killed after its commit): its plans are stale.
        ended = end_sessions(admin, logins, here_only=True)
        detail["sessionsEnded"] = int(detail.get("sessionsEnded") or 0) + ended
        drop_login(admin, restorer_name(owner))
        if "swappedAt" not in detail:
            detail["swappedAt"] = datetime.now(UTC).isoformat()
            self.registry.record_data_replaced(
                self.tenant,
                self.product,
                KIND,
                f"data restored from backup {detail.get('stamp')}; the replaced data is "
                f"kept as {kept}",
            )

    def _swap(
        self,
        admin: Mapping[str, Any],
        schemas: tuple[str, str, str],
        owner: str,
        logins: list[str],
        detail: Detail,
    ) -> int:
        """The one transaction; the tenant's sessions holding a table are ended when
        they keep it past the wait. Returns how many were ended."""
        live, aside, kept = schemas
        ended = 0
        restorer = restorer_name(owner)
        for attempt in range(SWAP_ATTEMPTS):
            with connect(admin) as conn:
                try:
                    conn.execute(f"SET LOCAL lock_timeout = '{SWAP_LOCK_WAIT}'")
                    there = conn.execute(
                        "SELECT 1 FROM pg_catalog.pg_namespace WHERE nspname = %s", (live,)
                    ).fetchone()
                    tables = [
                        str(r[0])
                        for r in conn.execute(
                            "SELECT c.relname FROM pg_catalog.pg_class c"
                            " JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace"
                            " WHERE n.nspname = %s AND c.relkind IN ('r', 'p') ORDER BY 1",
                            (live,),
                        )
                    ]
                    if tables:
                        conn.execute(
                            sql.SQL("LOCK TABLE {} IN ACCESS EXCLUSIVE MODE").format(
                                sql.SQL(", ").join(qualified(live, t) for t in tables)
                            )
                        )
                    if there:  # (a live schema dropped by accident has nothing to keep)
                        conn.execute(
                            sql.SQL("ALTER SCHEMA {} RENAME TO {}").format(
                                sql.Identifier(live), sql.Identifier(kept)
                            )
                        )
                    conn.execute(
                        sql.SQL("ALTER SCHEMA {} RENAME TO {}").format(
                            sql.Identifier(aside), sql.Identifier(live)
                        )
                    )
                    conn.execute(
                        sql.SQL("REASSIGN OWNED BY {} TO {}").format(
                            sql.Identifier(restorer), sql.Identifier(owner)
                        )
                    )
                    if there:
                        conn.execute(
                            sql.SQL("COMMENT ON SCHEMA {} IS {}").format(
                                sql.Identifier(kept),
                                sql.Literal(
                                    f"tenant-infra: the data replaced by the restore of backup "
                                    f"{detail.get('stamp')} on {datetime.now(UTC).isoformat()}"
                                ),
                            )
                        )
                    conn.commit()
                    return ended
                except psycopg.errors.LockNotAvailable:
                    conn.rollback()
                    if attempt == SWAP_ATTEMPTS - 1:
                        break
            ended += end_sessions(admin, logins, here_only=True)  # one of them holds a table
        raise OperationFailed(
            f"the swap could not lock {live}'s tables; run restore --resume --swap again"
        )

    def rabbitmq(self, detail: Detail) -> None:
        definitions = detail.get("definitions")
        if not isinstance(definitions, dict):
            return
        config = self.config()
        if config.platform.rabbitmq is None:
            detail["rabbitmq"] = "skipped: the platform declares no RabbitMQ"
            return
        if not vhost.exists(config, self.environ):
            self.backend.refresh(config.tenant, _no_event)
            deploy_step(
                config,
                self.product,
                f"reprovisioning vhost {config.names.vhost}",
                self.backend,
                self.workspace,
                progress=self.progress,
            )
            detail["vhostReprovisioned"] = True
        vhost.apply(config, definitions, self.environ)
        detail["rabbitmq"] = vhost.counts(definitions, vhost.APPLIED)

    # ------------------------------------------------------------------ abort

    def abort_drop_aside(self, detail: Detail) -> None:
        config = self.config()
        names = config.names.service(self.product)
        present = self.schemas(config)
        # A kept schema is this restore's own: none may exist when a restore starts.
        if names.pg_restore_schema not in present and names.pg_pre_restore_schema in present:
            raise InvalidInput(
                f"the restore of {self.tenant}/{self.product} is swapped already: the data "
                f"it replaced is kept as {names.pg_pre_restore_schema}; run --resume to finish"
            )
        admin = self.admin(config)
        drop_login(admin, restorer_name(self.owner(config)))
        with connect(admin, autocommit=True) as conn:
            conn.execute(f"SET lock_timeout = '{DROP_LOCK_WAIT}'")
            conn.execute(
                sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(
                    sql.Identifier(names.pg_restore_schema)
                )
            )
        detail["abortedAt"] = datetime.now(UTC).isoformat()

    def drop_previous(self, detail: Detail) -> None:
        config = self.config()
        kept = config.names.service(self.product).pg_pre_restore_schema
        with connect(self.admin(config), autocommit=True) as conn:
            conn.execute(f"SET lock_timeout = '{DROP_LOCK_WAIT}'")
            conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(kept)))
        detail["dropped"] = kept

    def forward(self) -> list[Step]:
        return [
            Step("restore-aside", self.restore_aside),
            Step("verify", self.verify),
            Step("catch-up", self.catch_up),
            Step("swap", self.swap_step),
            Step("rabbitmq", self.rabbitmq),
        ]

    def backward(self) -> list[Step]:
        return [Step("abort-drop-aside", self.abort_drop_aside)]

    # -------------------------------------------------------------- the verb

    def check_start(self) -> Manifest:
        """Refuse, before anything is created, what cannot be restored."""
        config = self.config()
        spec = self.spec(config)
        if self.reference is None:
            raise InvalidInput("name the backup set to restore: --from SET")
        _directory, manifest = self.read(self.reference)
        if _postgres(manifest).revision is not None and self.head() is None:
            raise InvalidInput(f"product {self.product!r} has no migrations to rebuild its tables")
        if spec.promotion is not None:
            raise InvalidInput(
                f"service {self.product!r} of tenant {self.tenant!r} is being promoted: "
                "finish or abort the promotion first"
            )
        names = config.names.service(self.product)
        if names.pg_pre_restore_schema in self.schemas(config):
            raise InvalidInput(
                f"schema {names.pg_pre_restore_schema} still holds the data a previous "
                "restore replaced: drop it with restore --drop-previous first"
            )
        return manifest

    def run(self, *, resume: bool, abort: bool, step_progress: StepProgress) -> Outcome:
        operations = Operations(self.registry)
        machine = Machine(operations, self.tenant, self.product, KIND, step_progress)
        detail: Detail = {}
        if not (resume or abort or operations.open_one(self.tenant, self.product)):
            # (An open operation: the machine says to resume or abort it.)
            manifest = self.check_start()
            detail = {"set": self.reference, "stamp": manifest.stamp}
        with machine.held():
            if abort:
                return self._stopped(lambda: machine.abort(self.backward()), "aborting")
            try:
                return self._stopped(
                    lambda: machine.run(self.forward(), resume=resume, detail=detail), "restore"
                )
            except Mismatch as exc:
                machine.abort(self.backward())
                raise OperationFailed(
                    f"restore of {self.tenant}/{self.product} refused, live data untouched: {exc}"
                ) from None

    def run_drop_previous(self, step_progress: StepProgress) -> Outcome:
        machine = Machine(Operations(self.registry), self.tenant, self.product, KIND, step_progress)
        with machine.held():
            return machine.run([Step("drop-previous", self.drop_previous)], resume=False, detail={})

    def _stopped(self, action: Any, what: str) -> Outcome:
        try:
            outcome: Outcome = action()
        except psycopg.Error as exc:
            raise OperationFailed(
                f"{what} of {self.tenant}/{self.product} stopped: {first_line(exc)}; run it "
                "again with --resume, or --abort"
            ) from None
        return outcome


def _seal(admin: Mapping[str, Any], restorer: str) -> None:
    """The restore's login refused and its sessions ended: nothing changes the copy
    between the steps."""
    with connect(admin, autocommit=True) as conn:
        conn.execute(sql.SQL("ALTER ROLE {} NOLOGIN").format(sql.Identifier(restorer)))
        conn.execute(
            "SELECT pg_catalog.pg_terminate_backend(pid) FROM pg_catalog.pg_stat_activity"
            " WHERE usename = %s",
            (restorer,),
        )


def _postgres(manifest: Manifest) -> PostgresPart:
    if manifest.postgresql is None:
        raise InvalidInput(f"backup {manifest.stamp} holds no PostgreSQL data")
    return manifest.postgresql


def _no_event(_event: Any) -> None:
    return None


# -------------------------------------------------------------------- preview


@dataclass(frozen=True)
class RestorePlan:
    tenant: str
    product: str
    set: str
    stamp: str
    revision: str | None
    database: str
    schemas: dict[str, str]
    tables: tuple[dict[str, Any], ...]
    stores: dict[str, str]

    def to_json(self) -> dict[str, Any]:
        return {
            "tenant": self.tenant,
            "product": self.product,
            "set": self.set,
            "stamp": self.stamp,
            "revision": self.revision,
            "database": self.database,
            "schemas": self.schemas,
            "tables": list(self.tables),
            "stores": self.stores,
        }


def preview(restorer: Restorer) -> RestorePlan:
    """What a restore would do, changing nothing: the set is proved intact, and the
    live row counts are shown beside the backup's."""
    manifest = restorer.check_start()
    part = _postgres(manifest)
    config = restorer.config()
    names = config.names.service(restorer.product)
    live: dict[str, int] = {}
    with connect(restorer.admin(config)) as conn:
        stabilize(conn)
        found = read_inventory(conn, names.pg_schema)
        for table in found.data_tables:
            live[table.name] = table.rows_estimate
    stores = {"postgresql": "restored aside, verified, then swapped with --swap"}
    if manifest.rabbitmq is not None:
        stores["rabbitmq"] = manifest.rabbitmq.skipped or "topology declared again"
    if manifest.mongodb is not None:
        stores["mongodb"] = manifest.mongodb.skipped or "not restored: mongorestore --archive"
    return RestorePlan(
        restorer.tenant,
        restorer.product,
        str(restorer.reference),
        manifest.stamp,
        part.revision,
        str(restorer.admin(config)["dbname"]),
        {
            "live": names.pg_schema,
            "aside": names.pg_restore_schema,
            "kept": names.pg_pre_restore_schema,
        },
        tuple(
            {"name": t.name, "rows": t.rows, "liveRowsEstimate": live.get(t.name)}
            for t in part.tables
        ),
        stores,
    )

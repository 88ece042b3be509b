"""Promotion of a service from SCHEMA to DATABASE mode: the same tenant, a new store.

Four steps on the step machine (:mod:`tenant_infra.operations.steps`):

1. ``provision``: the dedicated store is declared beside the shared one, in the same
   stack, with a login of the next generation, and migrated to exactly the source's
   revision (an update of the stack).
2. ``move``: writes on the source are frozen (reads go on), every table is copied in
   one snapshot, then verified (same tables and columns, row counts and a content
   checksum per table, sequences, revision). Only then is the source sealed: its
   login refused and its sessions ended, so nothing can reach it any more.
3. ``repoint``: the service becomes DATABASE mode (an update): its connections
   document, at the same Vault path, now names the dedicated store and its login;
   the old schema is renamed aside. The registry records it and tells the products
   (``tenant.credentials.rotated`` and ``tenant.cache.invalidate``).
4. ``retire``: after ``keep_source`` (or at once with ``drop_source``), the retired
   schema and its login are dropped (two updates: protection lifted, then removed).

A mismatch in ``move`` aborts: the source is unsealed and the dedicated store
dropped. ``abort`` before ``retire`` goes back to SCHEMA mode, provided nothing was
written to the dedicated store since (its checksums still equal the source's).
Killed anywhere, ``resume`` converges: ``move`` runs again whole (its freeze died
with the process), and the source is never dropped before verification passed.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
from psycopg import sql

from tenant_infra.catalog import IsolationMode
from tenant_infra.config import Promotion, ServiceSpec, TenantConfig
from tenant_infra.errors import InvalidInput, OperationFailed, first_line
from tenant_infra.lifecycle import (
    Journal,
    Progress,
    StackBackend,
    deploy_step,
    known_config,
    known_service,
    refuse_inactive,
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
from tenant_infra.pgdata.checksum import Checksum, checksums, mismatches, new_seed
from tenant_infra.pgdata.copy import (
    CopyProgress,
    copier,
    copy_schema,
    copy_sequences,
    drop_copier,
    reader,
    secondary_indexes,
)
from tenant_infra.pgdata.freeze import WriteFreeze
from tenant_infra.pgdata.inventory import (
    Inventory,
    differences,
    guard_table,
    large_objects,
    read_inventory,
    stabilize,
)
from tenant_infra.registry import Registry
from tenant_infra.registry.operations import Operations
from tenant_infra.sessions import (
    admin_params,
    connect,
    drop_strays,
    evict_refused,
    release_logins,
)
from tenant_infra.tenant import pg_shared_database
from tenant_infra.workspace import Workspace

KIND = "promote"
DEFAULT_KEEP_SOURCE = timedelta(hours=24)
#: Throughputs measured by ``bench/promotion`` on the reference machine (2 cores),
#: used only to estimate the write freeze of a ``--dry-run``.
COPY_BYTES_PER_SECOND = 39e6
VERIFY_BYTES_PER_SECOND = 165e6
REPOINT_SECONDS = 2.0


@dataclass
class Promoter:
    """Everything the steps need; one per ``promote`` call."""

    tenant: str
    product: str
    backend: StackBackend
    workspace: Workspace
    registry: Registry
    environ: Mapping[str, str]
    keep_source: timedelta = DEFAULT_KEEP_SOURCE
    drop_source: bool = False
    progress: Progress | None = None
    verify: Callable[[str, str], None] | None = None
    copy_progress: CopyProgress | None = None
    workers: int = 2
    #: Between the copy and its verification (tests plant a difference here).
    after_copy: Callable[[], None] | None = None
    journal: Journal | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        self.journal = self.registry.journal(KIND, whole_tenant=False)

    # ---------------------------------------------------------------- reading

    def config(self) -> TenantConfig:
        return known_config(self.workspace, self.tenant)

    def spec(self, config: TenantConfig | None = None) -> ServiceSpec:
        return known_service(config or self.config(), self.product)

    def admin(self, config: TenantConfig, database: str) -> dict[str, Any]:
        return admin_params(config, self.product, self.environ, database, KIND)

    def shared(self, config: TenantConfig) -> dict[str, Any]:
        return self.admin(config, pg_shared_database(self.product))

    def dedicated(self, config: TenantConfig) -> dict[str, Any]:
        return self.admin(config, config.names.service(self.product).pg_dedicated_database)

    def inventory(self, params: Mapping[str, Any], schema: str) -> Inventory:
        with connect(params) as conn:
            return read_inventory(conn, schema)

    def source_generation(self, config: TenantConfig) -> int:
        spec = self.spec(config)
        return spec.generation - 1 if _repointed(spec) else spec.generation

    def target_generation(self, config: TenantConfig) -> int:
        spec = self.spec(config)
        return spec.generation if _repointed(spec) else spec.generation + 1

    def source_owner(self, config: TenantConfig) -> str:
        """The owner of the shared store (its login too, in the legacy model)."""
        return config.names.service(self.product).pg_owner(self.source_generation(config))

    def target_owner(self, config: TenantConfig) -> str:
        """The owner of the dedicated store: the copy creates everything as it."""
        return config.names.service(self.product).pg_owner(self.target_generation(config))

    # --------------------------------------------------------------- updating

    def update(self, config: TenantConfig, what: str) -> None:
        """Write ``config`` and bring the stack to it; a failure fails the step."""
        deploy_step(
            config,
            self.product,
            f"promotion of {self.tenant}/{self.product}: {what}",
            self.backend,
            self.workspace,
            progress=self.progress,
            verify=self.verify,
            journal=self.journal,
            # The first update creates the dedicated store: what got in before its
            # privileges were set goes before the copy starts.
            evict=lambda config, product: evict_refused(config, product, self.environ),
        )

    def record_seal(self, sealed: bool) -> TenantConfig:
        """The seal in the stack file, so that any later update declares it too."""
        with self.workspace.lock(self.tenant):
            config = self.config()
            spec = self.spec(config)
            if spec.promotion is not None and spec.promotion.sealed != sealed:
                promotion = spec.promotion.model_copy(update={"sealed": sealed})
                config = config.with_service(spec.model_copy(update={"promotion": promotion}))
                self.workspace.write_config(config)
            return config

    def release(self, config: TenantConfig, generation: int, store: str) -> None:
        """Before the store of ``generation`` is dropped: its slot logins' objects and
        grants, wherever they are (:func:`release_logins`; the provider drops a login
        without them), and what its owner holds outside its store."""
        roles = config.pg_store_roles(self.product, generation)
        owner, logins = roles[0], roles[1:]
        if logins:
            release_logins(config, self.product, self.environ, logins, owner, [store])
        drop_strays(config, [self.product], self.environ, logins=[owner])

    def set_login(self, config: TenantConfig, generation: int, allowed: bool) -> None:
        """Seal (or unseal) the store of ``generation`` at once, outside the stack: each
        of its logins; the stack file says the same (:meth:`record_seal`), so the next
        update declares it."""
        logins = config.pg_store_logins(self.product, generation)
        with connect(self.admin(config, "postgres"), autocommit=True) as conn:
            for login in logins:
                conn.execute(
                    sql.SQL("ALTER ROLE {} {}").format(
                        sql.Identifier(login), sql.SQL("LOGIN" if allowed else "NOLOGIN")
                    )
                )
            if not allowed:
                conn.execute(
                    "SELECT pg_catalog.pg_terminate_backend(pid) FROM pg_catalog.pg_stat_activity"
                    " WHERE usename = ANY(%s)",
                    (config.pg_store_roles(self.product, generation),),
                )

    # ------------------------------------------------------------------ steps

    def provision(self, detail: Detail) -> None:
        config = self.config()
        spec = self.spec(config)
        if spec.promotion is None:
            names = config.names.service(self.product)
            source = self.inventory(self.shared(config), names.pg_schema)
            promotion = Promotion(revision=source.revision)
            spec = spec.model_copy(update={"promotion": promotion})
            config = config.with_service(spec)
        assert spec.promotion is not None
        detail["revision"] = spec.promotion.revision
        detail["targetLogin"] = self.target_owner(config)
        self.update(config, "provisioning the dedicated store")
        # The update's own eviction only warns when it cannot run; the data goes into
        # this store next, so here it must have run, and left no session behind.
        eviction = evict_refused(config, self.product, self.environ)
        if eviction.left:
            raise OperationFailed(
                f"promotion of {self.tenant}/{self.product}: sessions of roles that may not "
                f"connect are still in the dedicated store: {', '.join(eviction.left)}"
            )
        # The indexes the product's migrations made: the copy drops and rebuilds these.
        with connect(self.dedicated(config)) as conn:
            detail["indexes"] = secondary_indexes(
                conn, config.names.service(self.product).pg_schema
            )

    def move(self, detail: Detail) -> None:
        config = self.config()
        spec = self.spec(config)
        if _repointed(spec):
            return  # moved and repointed already (a resumed run)
        names = config.names.service(self.product)
        schema, source_login = names.pg_schema, self.source_owner(config)
        target_login = self.target_owner(config)
        source_params, target_params = self.shared(config), self.dedicated(config)
        listed = self.inventory(source_params, schema)
        _refuse_large_objects(source_params, source_login)
        seed = new_seed()
        started = time.time()
        with (
            WriteFreeze(
                source_params,
                schema,
                [t.name for t in listed.tables],
                config.pg_store_roles(self.product, self.source_generation(config)),
            ) as freeze,
            copier(target_params, target_login) as writing,
        ):
            detail["freezeStartedAt"] = started
            detail["writersEnded"] = freeze.ended_writers
            with reader(source_params, freeze.snapshot) as snap:
                source = read_inventory(snap, schema)
            target = self.inventory(target_params, schema)
            problems = differences(source, target)
            if problems:
                raise Mismatch(f"the dedicated store does not match the source: {problems[0]}")
            report = copy_schema(
                source_params,
                writing,
                schema,
                source.data_tables,
                freeze.snapshot,
                target_login,
                self._indexes(detail, target_params, schema),
                self.workers,
                self.copy_progress,
            )
            copy_sequences(writing, schema, source.sequences, target_login)
            if self.after_copy is not None:
                self.after_copy()
            verify_started = time.monotonic()
            ours, theirs = _both(
                lambda: _sums(source_params, schema, source, freeze.snapshot, seed),
                lambda: _sums(target_params, schema, source, None, seed),
            )
            found = mismatches(ours, theirs)
            if found:
                raise Mismatch(f"the copy differs from the source: {found[0]}")
            verified = time.monotonic() - verify_started
            # Sealed: from here nothing reaches the source, so what was verified stays
            # the truth once the freeze ends; the stack file says so first.
            config = self.record_seal(True)
            self.set_login(config, self.source_generation(config), allowed=False)
            detail["sessionsEvicted"] = freeze.evict()
            sealed = self.inventory(source_params, schema)
            added = sorted({t.name for t in sealed.tables} - {t.name for t in source.tables})
            if added:
                raise Mismatch(f"table {added[0]} appeared in the source during the copy")
            # Sequences are not frozen by table locks: their final values, after the seal.
            copy_sequences(writing, schema, sealed.sequences, target_login)
            lagging = _lagging(sealed, self.inventory(target_params, schema))
            if lagging:
                raise Mismatch(f"sequence {lagging[0]} is behind its source")
        detail["copy"] = report.to_json()
        detail["verifySeconds"] = round(verified, 3)
        detail["tables"] = {
            name: {
                "rows": sum_.rows,
                "bytes": next(t.bytes for t in source.tables if t.name == name),
            }
            for name, sum_ in ours.items()
        }

    def _indexes(self, detail: Detail, target: Mapping[str, Any], schema: str) -> dict[str, str]:
        """The definitions kept at provision (read now only for an operation begun
        before they were kept, when no copy can have dropped them yet)."""
        kept = detail.get("indexes")
        if isinstance(kept, dict):
            return {str(k): str(v) for k, v in kept.items()}
        with connect(target) as conn:
            detail["indexes"] = secondary_indexes(conn, schema)
        return dict(detail["indexes"])

    def repoint(self, detail: Detail) -> None:
        config = self.config()
        spec = self.spec(config)
        if not _repointed(spec):
            assert spec.promotion is not None
            until = datetime.now(UTC) + self.keep_source
            spec = spec.model_copy(
                update={
                    "isolation": IsolationMode.DATABASE,
                    "generation": spec.generation + 1,
                    "promotion": spec.promotion.model_copy(
                        update={"repointed": True, "keep_source_until": until}
                    ),
                }
            )
            config = config.with_service(spec)
        self.update(config, "repointing the service to its dedicated store")
        self.registry.record_new_credentials(
            self.tenant,
            self.product,
            KIND,
            "isolation SCHEMA -> DATABASE: new store, new PostgreSQL login",
            "postgresql",
            invalidate="promoted to DATABASE isolation",
        )
        started = detail.get("freezeStartedAt")
        if isinstance(started, int | float) and "writeFreezeSeconds" not in detail:
            detail["writeFreezeSeconds"] = round(time.time() - started, 3)
        assert spec.promotion is not None and spec.promotion.keep_source_until is not None
        detail["keepSourceUntil"] = spec.promotion.keep_source_until.isoformat()

    def retire(self, detail: Detail) -> None:
        config = self.config()
        spec = self.spec(config)
        promotion = spec.promotion
        if promotion is None:
            return  # dropped already
        until = promotion.keep_source_until
        if not self.drop_source and until is not None and datetime.now(UTC) < until:
            raise Pending(
                f"the retired schema is kept until {until.isoformat(timespec='seconds')}; "
                "run promote --resume then, or --resume --drop-source to drop it now"
            )
        if not promotion.drop_source:
            released = spec.model_copy(
                update={"promotion": promotion.model_copy(update={"drop_source": True})}
            )
            self.update(config.with_service(released), "lifting the retired schema's protection")
            config = self.config()
        self.release(config, self.source_generation(config), pg_shared_database(self.product))
        self.update(
            config.with_service(self.spec(config).model_copy(update={"promotion": None})),
            "dropping the retired schema and its login",
        )
        detail["retiredAt"] = datetime.now(UTC).isoformat()

    # ------------------------------------------------------------------ abort

    def abort_check(self, detail: Detail) -> None:
        """After repoint: refuse unless the dedicated store still holds exactly the
        source's rows, checked with its login sealed so that nothing writes meanwhile."""
        config = self.config()
        spec = self.spec(config)
        if not _repointed(spec):
            return
        assert spec.promotion is not None
        if spec.promotion.drop_source:
            raise InvalidInput(
                f"cannot abort the promotion of {self.tenant}/{self.product}: its retired "
                "schema is being dropped; run promote --resume to finish"
            )
        owner, generation = self.target_owner(config), self.target_generation(config)
        self.set_login(config, generation, allowed=False)
        try:
            found = self._written_since(config, owner)
        except BaseException:
            if not spec.suspended:
                self.set_login(config, generation, allowed=True)
            raise
        if found:
            if not spec.suspended:
                self.set_login(config, generation, allowed=True)
            raise InvalidInput(
                f"cannot abort the promotion of {self.tenant}/{self.product}: the dedicated "
                f"database was written to since it was repointed ({found[0]}); going back "
                "would lose those writes"
            )
        detail["abortChecked"] = True

    def _written_since(self, config: TenantConfig, login: str) -> list[str]:
        """What the dedicated store holds that its retired source does not: other or
        reshaped tables, other rows, moved sequences, objects outside the schema."""
        names = config.names.service(self.product)
        shared, dedicated = self.shared(config), self.dedicated(config)
        source = self.inventory(shared, names.pg_retired_schema)
        target = self.inventory(dedicated, names.pg_schema)
        found = differences(source, target)
        theirs = {s.name: s for s in target.sequences}
        found += [
            f"sequence {s.name} moved"
            for s in source.sequences
            if s.name in theirs
            and (theirs[s.name].last_value, theirs[s.name].is_called) != (s.last_value, s.is_called)
        ]
        with connect(dedicated) as conn:
            owned = conn.execute(
                "SELECT count(*) FROM pg_catalog.pg_namespace n"
                " JOIN pg_catalog.pg_roles r ON r.oid = n.nspowner"
                " WHERE r.rolname = %s AND n.nspname <> %s",
                (login, names.pg_schema),
            ).fetchone()
        if owned and owned[0]:
            found.append("a schema was created beside the tenant's")
        if large_objects(dedicated, [login]):
            found.append("large objects were created")
        if found:
            return found
        seed = new_seed()
        ours, theirs_sums = _both(
            lambda: _sums(shared, names.pg_retired_schema, source, None, seed),
            lambda: _sums(dedicated, names.pg_schema, source, None, seed),
        )
        return mismatches(ours, theirs_sums)

    def abort_repoint(self, detail: Detail) -> None:
        config = self.config()
        spec = self.spec(config)
        if not _repointed(spec):
            return
        assert spec.promotion is not None
        back = spec.model_copy(
            update={
                "isolation": IsolationMode.SCHEMA,
                "generation": spec.generation - 1,
                "promotion": Promotion(revision=spec.promotion.revision, aborted=True),
            }
        )
        self.update(config.with_service(back), "repointing the service back to its schema")
        self.registry.record_new_credentials(
            self.tenant,
            self.product,
            KIND,
            "promotion aborted: isolation DATABASE -> SCHEMA, the previous login again",
            "postgresql",
            invalidate="promotion aborted, back to SCHEMA isolation",
        )

    def abort_unseal(self, detail: Detail) -> None:
        config = self.config()
        spec = self.spec(config)
        config = self.record_seal(False)
        if spec.suspended or spec.removal is not None:
            return
        self.set_login(config, self.source_generation(config), allowed=True)

    def abort_drop_target(self, detail: Detail) -> None:
        config = self.config()
        spec = self.spec(config)
        if spec.promotion is None:
            return
        self.release(
            config,
            self.target_generation(config),
            config.names.service(self.product).pg_dedicated_database,
        )
        self.update(
            config.with_service(spec.model_copy(update={"promotion": None})),
            "dropping the dedicated store",
        )
        drop_copier(self.admin(config, "postgres"), self.target_owner(config))
        detail["abortedAt"] = datetime.now(UTC).isoformat()

    def forward(self) -> list[Step]:
        return [
            Step("provision", self.provision),
            Step("move", self.move),
            Step("repoint", self.repoint),
            Step("retire", self.retire),
        ]

    def backward(self) -> list[Step]:
        return [
            Step("abort-check", self.abort_check),
            Step("abort-repoint", self.abort_repoint),
            Step("abort-unseal", self.abort_unseal),
            Step("abort-drop-target", self.abort_drop_target),
        ]

    # -------------------------------------------------------------- the verb

    def check_start(self) -> None:
        """Refuse, before anything is created, what cannot be promoted."""
        spec = self.spec()
        if spec.promotion is not None:
            return  # an operation under way: the machine decides (resume or abort)
        if spec.isolation is not IsolationMode.SCHEMA:
            raise InvalidInput(
                f"service {self.product!r} of tenant {self.tenant!r} is in "
                f"{spec.isolation.value} mode already"
            )
        refuse_inactive(self.config(), spec)
        if spec.credentials.rotating_now():
            raise InvalidInput(
                f"the credentials of {self.tenant}/{self.product} are being rotated: finish "
                "the rotation first (tenantctl rotate --finish)"
            )
        config = self.config()
        _refuse_large_objects(self.shared(config), self.source_owner(config))

    def run(self, *, resume: bool, abort: bool, step_progress: StepProgress) -> Outcome:
        operations = Operations(self.registry)
        machine = Machine(operations, self.tenant, self.product, KIND, step_progress)
        if not (resume or abort):
            self.check_start()
        with machine.held():
            if abort:
                try:
                    return machine.abort(self.backward())
                except psycopg.Error as exc:
                    raise OperationFailed(
                        f"aborting the promotion of {self.tenant}/{self.product} stopped: "
                        f"{first_line(exc)}; run --abort again"
                    ) from None
            try:
                return machine.run(self.forward(), resume=resume, detail={})
            except psycopg.Error as exc:
                # The first line only: a DETAIL line may quote the tenant's rows.
                raise OperationFailed(
                    f"promotion of {self.tenant}/{self.product} stopped: "
                    f"{first_line(exc)}; run it again with --resume, or --abort"
                ) from None
            except Mismatch as exc:
                # Unfreeze (the freeze ended with its session), unseal, drop the copy.
                machine.abort(self.backward())
                raise OperationFailed(
                    f"promotion of {self.tenant}/{self.product} aborted, nothing lost: {exc}"
                ) from None


# -------------------------------------------------------------------- preview


@dataclass(frozen=True)
class PromotionPlan:
    tenant: str
    product: str
    revision: str | None
    added: tuple[str, ...]
    removed: tuple[str, ...]
    tables: tuple[dict[str, Any], ...]
    bytes: int
    freeze_seconds: float

    def to_json(self) -> dict[str, Any]:
        return {
            "tenant": self.tenant,
            "product": self.product,
            "revision": self.revision,
            "resources": {"added": list(self.added), "removed": list(self.removed)},
            "tables": list(self.tables),
            "bytes": self.bytes,
            "estimatedWriteFreezeSeconds": round(self.freeze_seconds, 1),
        }


def preview(promoter: Promoter) -> PromotionPlan:
    """What a promotion would do, changing nothing: resources, revision, tables, freeze."""
    from tenant_infra import plan as offline_plan

    promoter.check_start()
    config = promoter.config()
    spec = promoter.spec(config)
    names = config.names.service(promoter.product)
    params = promoter.shared(config)
    with connect(params) as conn:
        source = read_inventory(conn, names.pg_schema)
        tables = []
        for table in source.tables:
            guard_table(conn, names.pg_schema, table.name)
            row = conn.execute(
                sql.SQL("SELECT count(*) FROM {}.{}").format(
                    sql.Identifier(names.pg_schema), sql.Identifier(table.name)
                )
            ).fetchone()
            tables.append(
                {"name": table.name, "rows": int(row[0]) if row else 0, "bytes": table.bytes}
            )
    final = config.with_service(
        spec.model_copy(
            update={"isolation": IsolationMode.DATABASE, "generation": spec.generation + 1}
        )
    )
    now = {(r.type, r.name) for r in offline_plan.plan(config).resources if r.custom}
    then = {(r.type, r.name) for r in offline_plan.plan(final).resources if r.custom}
    size = source.bytes
    freeze = size / COPY_BYTES_PER_SECOND + size / VERIFY_BYTES_PER_SECOND + REPOINT_SECONDS
    return PromotionPlan(
        promoter.tenant,
        promoter.product,
        source.revision,
        tuple(f"{t.split(':')[-1]} {n}" for t, n in sorted(then - now, key=lambda x: x[1])),
        tuple(f"{t.split(':')[-1]} {n}" for t, n in sorted(now - then, key=lambda x: x[1])),
        tuple(tables),
        size,
        freeze,
    )


# -------------------------------------------------------------------- helpers


def _repointed(spec: ServiceSpec) -> bool:
    return spec.promotion is not None and spec.promotion.repointed


def _sums(
    params: Mapping[str, Any], schema: str, source: Inventory, snapshot: str | None, seed: int
) -> dict[str, Checksum]:
    """Checksums of the source's tables in ``schema``, in ``snapshot`` if given."""
    conn = reader(params, snapshot) if snapshot else connect(params)
    with conn:
        stabilize(conn)
        return checksums(conn, schema, source.tables, seed)


def _refuse_large_objects(params: Mapping[str, Any], login: str) -> None:
    """Large objects live outside the schema: a copy of its tables would lose them."""
    count = large_objects(params, [login])
    if count:
        raise InvalidInput(
            f"{login} owns {count} large objects in the shared database; promotion moves "
            "tables and sequences only: move them into a table (bytea) first"
        )


def _both(
    first: Callable[[], dict[str, Checksum]], second: Callable[[], dict[str, Checksum]]
) -> tuple[dict[str, Checksum], dict[str, Checksum]]:
    """Both sides at once: two sessions, two cores."""
    results: dict[int, dict[str, Checksum]] = {}
    errors: list[BaseException] = []

    def run(index: int, action: Callable[[], dict[str, Checksum]]) -> None:
        try:
            results[index] = action()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i, a)) for i, a in ((0, first), (1, second))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]
    return results[0], results[1]


def _lagging(source: Inventory, target: Inventory) -> list[str]:
    theirs = {s.name: s for s in target.sequences}

    def position(value: Any) -> int:  # the next value nextval() would hand out
        return int(value.last_value) + (1 if value.is_called else 0)

    return [
        s.name
        for s in source.sequences
        if s.name not in theirs or position(theirs[s.name]) < position(s)
    ]

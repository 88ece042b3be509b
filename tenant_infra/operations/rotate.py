"""Two-phase credential rotation of a service (``tenantctl rotate``).

A password change alone would cut off every consumer until it refetched (PostgreSQL
keeps one password per role), so each store has two alternating logins (slots ``a``
and ``b``; see :mod:`tenant_infra.components.postgres`) and a rotation moves from
one to the other, as two operations of the step machine
(:mod:`tenant_infra.operations.steps`), each resumable:

- **begin** (``--begin``): ``begin`` declares the other slot's login beside the
  current one, with a new password, and the connections document (same Vault path,
  a new version) names it: an update of the stack; ``announce`` records it in the
  registry and publishes ``tenant.credentials.rotated`` per store. Both work now.
  The operation ends there: between the phases the rotation lives in the stack file
  alone, so backups and restores of the service go on meanwhile.
- **finish** (``--finish``; ``--auto GRACE`` first waits until the old login has no
  session, at most GRACE): ``revoke`` refuses the old login (PostgreSQL NOLOGIN,
  RabbitMQ and MongoDB without permissions: an update); ``drain`` gives its sessions
  ``drain`` to end, then ends them; ``drop`` hands whatever the old login owns to the
  service's owner (never to the platform admin), clears its grants in every database,
  and drops it (an update); ``check`` proves it gone.

A legacy store (one login, the PostgreSQL owner itself) is moved to the two-login
model by its first rotation: its old login is the owner, which finish refuses but
never drops (it owns the data). Every phase writes the stack file, then updates the
stack, so the state never drifts; killed anywhere, the same command converges, and at
no moment is there no valid credential. A rotation cannot be aborted once begun
(consumers may hold the new credential): it is finished.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal
from urllib.parse import quote

import psycopg
import requests

from tenant_infra.catalog import IsolationMode, load_catalog
from tenant_infra.config import (
    CREDENTIAL_STORES,
    LEGACY,
    STORE_OF,
    Credentials,
    CredentialStore,
    ServiceSpec,
    StoreLogins,
    TenantConfig,
)
from tenant_infra.credentials import PlatformCredentials
from tenant_infra.errors import BackendUnavailable, InvalidInput, OperationFailed, first_line
from tenant_infra.lifecycle import (
    Journal,
    Progress,
    StackBackend,
    deploy_step,
    known_config,
    known_service,
    refuse_inactive,
)
from tenant_infra.operations.steps import Detail, Machine, Step, StepProgress
from tenant_infra.registry import Registry
from tenant_infra.registry.operations import Operations
from tenant_infra.sessions import (
    admin_params,
    close_broker_connections,
    connect,
    end_sessions,
    release_logins,
)
from tenant_infra.tenant import pg_shared_database
from tenant_infra.workspace import Workspace

KIND = "rotate"
#: What ``rotate`` does after ``begin``: stop, go on, or wait for the old sessions.
Phase = Literal["begin", "finish", "auto"]
DEFAULT_DRAIN_SECONDS = 30.0
#: How often ``--auto`` looks at the old login's sessions.
POLL_SECONDS = 1.0


def next_logins(logins: StoreLogins | None) -> StoreLogins:
    """A store's logins once a rotation has begun: the other slot current, the
    current one (or the legacy login) kept as previous."""
    if logins is None:
        return StoreLogins(current="a", previous=LEGACY)
    return StoreLogins(current=logins.other(), previous=logins.current)


@dataclass
class Rotator:
    """Everything the steps need; one per ``rotate`` call of one service."""

    tenant: str
    product: str
    backend: StackBackend
    workspace: Workspace
    registry: Registry
    environ: Mapping[str, str]
    #: The stores to rotate (those the product uses, when not named).
    stores: Sequence[CredentialStore] = CREDENTIAL_STORES
    phase: Phase = "begin"
    #: ``auto``: how long to wait for the old login's sessions to end by themselves.
    grace: float = 0.0
    #: How long the old login's sessions get after it is refused, before being ended.
    drain: float = DEFAULT_DRAIN_SECONDS
    progress: Progress | None = None
    verify: Callable[[str, str], None] | None = None
    sleep: Callable[[float], None] = time.sleep
    journal: Journal | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        self.journal = self.registry.journal(KIND, whole_tenant=False)

    # ---------------------------------------------------------------- reading

    def config(self) -> TenantConfig:
        return known_config(self.workspace, self.tenant)

    def spec(self, config: TenantConfig | None = None) -> ServiceSpec:
        return known_service(config or self.config(), self.product)

    def chosen(self) -> list[CredentialStore]:
        """The requested stores the product uses; refused when it uses none of them."""
        needs = load_catalog().product(self.product).stores
        chosen = [s for s in self.stores if STORE_OF[s] in needs]
        if not chosen:
            raise InvalidInput(
                f"product {self.product!r} uses none of {', '.join(self.stores)}: nothing to rotate"
            )
        return chosen

    def old_logins(self, config: TenantConfig, store: CredentialStore) -> list[str]:
        """The logins a rotation under way replaces (empty outside one)."""
        logins = config.credentials(self.product).of(store)
        if logins is None or logins.previous is None:
            return []
        slot = None if logins.previous == LEGACY else logins.previous
        names = config.names.service(self.product)
        if store == "postgres":
            spec = self.spec(config)
            return [names.pg_login(spec.generation, slot)]
        return [names.broker_login(slot) if store == "rabbitmq" else names.mongo_login(slot)]

    def sessions(self, config: TenantConfig, store: CredentialStore) -> int:
        """Open sessions of the old login in ``store`` (MongoDB's are not counted)."""
        old = self.old_logins(config, store)
        if not old:
            return 0
        if store == "postgres":
            with connect(self._admin(config)) as conn:
                row = conn.execute(
                    "SELECT count(*) FROM pg_catalog.pg_stat_activity WHERE usename = ANY(%s)",
                    (old,),
                ).fetchone()
            return int(row[0]) if row else 0
        if store == "rabbitmq":
            return sum(len(self._broker_connections(config, user)) for user in old)
        return 0

    def _admin(self, config: TenantConfig) -> dict[str, Any]:
        return admin_params(config, self.product, self.environ, "postgres", KIND)

    def _broker_auth(self, config: TenantConfig) -> tuple[str, str]:
        rabbit = config.platform.rabbitmq
        assert rabbit is not None
        return rabbit.admin_user, PlatformCredentials(self.environ).rabbitmq_password_value()

    def _broker_connections(self, config: TenantConfig, user: str) -> list[Any]:
        rabbit = config.platform.rabbitmq
        assert rabbit is not None
        try:
            response = requests.get(
                f"{rabbit.management_url}/api/connections",
                params={"columns": "user"},
                auth=self._broker_auth(config),
                timeout=15,
            )
            response.raise_for_status()
            found: list[Any] = response.json()
        except (requests.RequestException, ValueError) as exc:
            raise BackendUnavailable(f"RabbitMQ management API: {type(exc).__name__}") from None
        return [c for c in found if isinstance(c, dict) and c.get("user") == user]

    # --------------------------------------------------------------- updating

    def write(
        self,
        change: Callable[[StoreLogins | None], StoreLogins | None],
        stores: Sequence[CredentialStore],
    ) -> TenantConfig:
        """Apply ``change`` to each rotated store's logins in the stack file."""
        with self.workspace.lock(self.tenant):
            config = self.config()
            spec = self.spec(config)
            credentials = spec.credentials.model_copy(
                update={store: change(spec.credentials.of(store)) for store in stores}
            )
            if credentials != spec.credentials:
                config = config.with_service(spec.model_copy(update={"credentials": credentials}))
                self.workspace.write_config(config)
            return config

    def update(self, config: TenantConfig, what: str, gate: bool = True) -> None:
        """Bring the stack to ``config``; a failure fails the step (a re-run retries).
        ``gate`` False: no isolation check after it (refusing the old login changes
        nothing the check reads; it runs after the drop, on the final state)."""
        deploy_step(
            config,
            self.product,
            f"rotation of {self.tenant}/{self.product}: {what}",
            self.backend,
            self.workspace,
            progress=self.progress,
            verify=self.verify if gate else None,
            journal=self.journal,
        )

    # ------------------------------------------------------------------ steps

    def begin(self, detail: Detail) -> None:
        stores = self.chosen()

        def begun(logins: StoreLogins | None) -> StoreLogins:
            # Begun already (a killed run): the same rotation, not a second one.
            if logins is not None and logins.previous is not None:
                return logins
            return next_logins(logins)

        config = self.write(begun, stores)
        detail["stores"] = list(stores)
        detail["current"] = {s: config.credentials(self.product).current(s) for s in stores}
        self.update(config, "declaring the new credentials beside the old ones")

    def announce(self, detail: Detail) -> None:
        for store in detail["stores"]:
            self.registry.record_rotation(self.tenant, self.product, store)
        detail["announcedAt"] = datetime.now(UTC).isoformat()

    def wait_for_sessions(self, stores: Sequence[CredentialStore]) -> int:
        """``--auto``: until the old logins have no session, at most ``grace``; how
        many are left."""
        config, deadline = self.config(), time.monotonic() + self.grace
        while True:
            left = sum(self.sessions(config, store) for store in stores)
            if left == 0 or time.monotonic() >= deadline:
                return left
            self.sleep(min(POLL_SECONDS, max(0.0, deadline - time.monotonic())))

    def revoke(self, detail: Detail) -> None:
        def refused(logins: StoreLogins | None) -> StoreLogins | None:
            if logins is None or logins.previous is None:
                return logins
            return logins.model_copy(update={"revoked": True})

        config = self.config()
        # The logins this finish replaces, kept before the stack file forgets them.
        detail.setdefault("old", {s: self.old_logins(config, s) for s in detail["stores"]})
        self.update(
            self.write(refused, detail["stores"]), "refusing the old credentials", gate=False
        )
        detail.setdefault("revokedAt", time.time())

    def drain_step(self, detail: Detail) -> None:
        left = float(detail["revokedAt"]) + self.drain - time.time()
        if left > 0:
            self.sleep(left)
        config = self.config()
        forced: dict[str, int] = {}
        for store in detail["stores"]:
            forced[store] = self._end(config, store, detail["old"].get(store, []))
        detail["sessionsForcedOff"] = forced

    def _end(self, config: TenantConfig, store: CredentialStore, old: list[str]) -> int:
        if not old:
            return 0
        if store == "postgres":
            return end_sessions(self._admin(config), old)
        if store == "rabbitmq":
            rabbit = config.platform.rabbitmq
            assert rabbit is not None
            count = 0
            for user in old:
                count += len(self._broker_connections(config, user))
                close_broker_connections(rabbit.management_url, self._broker_auth(config), user)
            return count
        return 0  # MongoDB: the dropped user's connections fail on their next command

    def drop(self, detail: Detail) -> None:
        config = self.config()
        old: dict[str, list[str]] = detail["old"]
        self._release(config, old.get("postgres", []))

        def dropped(logins: StoreLogins | None) -> StoreLogins | None:
            if logins is None or logins.previous is None:
                return logins
            return StoreLogins(current=logins.current)

        self.update(self.write(dropped, detail["stores"]), "dropping the old credentials")

    def _release(self, config: TenantConfig, old: list[str]) -> None:
        """Nothing may keep the old PostgreSQL logins (the legacy owner aside) from
        being dropped, nor go to the platform admin when they are
        (:func:`~tenant_infra.sessions.release_logins`)."""
        owner = config.pg_owner(self.product)
        logins = [login for login in old if login != owner]
        if not logins:
            return
        names = config.names.service(self.product)
        store = (
            names.pg_dedicated_database
            if self.spec(config).isolation is IsolationMode.DATABASE
            else pg_shared_database(self.product)
        )
        release_logins(config, self.product, self.environ, logins, owner, [store])

    def check(self, detail: Detail) -> None:
        """The old logins are gone (a legacy owner: refused), the current ones there."""
        config = self.config()
        dropped: dict[str, list[str]] = detail["old"]
        for store, logins in dropped.items():
            if store == "postgres":
                self._check_postgres(config, logins)
            elif store == "rabbitmq":
                self._check_rabbitmq(config, logins)
        detail["finishedAt"] = datetime.now(UTC).isoformat()

    def _check_postgres(self, config: TenantConfig, old: list[str]) -> None:
        current = config.pg_login(self.product)
        with connect(self._admin(config)) as conn:
            rows = dict(
                conn.execute(
                    "SELECT rolname, rolcanlogin FROM pg_catalog.pg_roles WHERE rolname = ANY(%s)",
                    ([*old, current],),
                ).fetchall()
            )
        if not rows.get(current) and not self.spec(config).suspended:
            raise OperationFailed(f"the new login {current} cannot log in")
        still = [login for login in old if rows.get(login)]
        if still:
            raise OperationFailed(f"the old login {still[0]} can still log in")

    def _check_rabbitmq(self, config: TenantConfig, old: list[str]) -> None:
        rabbit = config.platform.rabbitmq
        assert rabbit is not None
        for user in old:
            try:
                response = requests.get(
                    f"{rabbit.management_url}/api/users/{quote(user, safe='')}",
                    auth=self._broker_auth(config),
                    timeout=15,
                )
            except requests.RequestException as exc:
                raise BackendUnavailable(f"RabbitMQ management API: {type(exc).__name__}") from None
            if response.status_code != 404:
                raise OperationFailed(f"the old RabbitMQ user {user} is still there")

    def begin_steps(self) -> list[Step]:
        return [Step("begin", self.begin), Step("announce", self.announce)]

    def finish_steps(self) -> list[Step]:
        return [
            Step("revoke", self.revoke),
            Step("drain", self.drain_step),
            Step("drop", self.drop),
            Step("check", self.check),
        ]

    # -------------------------------------------------------------- the verb

    def refuse(self) -> None:
        """What cannot begin a rotation: a suspended, retained or promoted service."""
        spec = self.spec()
        refuse_inactive(self.config(), spec)
        if spec.promotion is not None:
            raise InvalidInput(
                f"service {self.product!r} of tenant {self.tenant!r} is being promoted: "
                "finish the promotion first"
            )

    def run(self, step_progress: StepProgress) -> RotationResult:
        """Begin, finish, or both: an open phase is always resumed first, so running the
        same command again after a kill converges."""
        machine = Machine(Operations(self.registry), self.tenant, self.product, KIND, step_progress)
        with machine.held():
            try:
                open_one = machine.current()
                if open_one is not None:
                    phase = open_one.detail.get("phase")
                    steps = self.begin_steps() if phase == "begin" else self.finish_steps()
                    machine.run(steps, resume=True, detail={})
                rotating = self.spec().credentials.rotating_now()
                if rotating:
                    self._same_stores(rotating)
                else:
                    if open_one is not None:  # the finish just resumed
                        return self._result("finished", forced=open_one.detail)
                    if self.phase == "finish":
                        raise InvalidInput(
                            f"no rotation of {self.tenant}/{self.product} to finish: begin "
                            "one with rotate --begin (or --auto GRACE)"
                        )
                    self.refuse()
                    stores = self.chosen()
                    machine.run(self.begin_steps(), resume=False, detail={"phase": "begin"})
                    rotating = stores
                if self.phase == "begin":
                    return self._result(
                        "begun",
                        "both credentials are valid: once the consumers have moved (they "
                        "refetch on tenant.credentials.rotated), run rotate --finish",
                    )
                left = self.wait_for_sessions(rotating) if self.phase == "auto" else None
                outcome = machine.run(
                    self.finish_steps(),
                    resume=False,
                    detail={"phase": "finish", "stores": list(rotating)}
                    | ({} if left is None else {"sessionsLeftAfterGrace": left}),
                )
                return self._result("finished", forced=outcome.operation.detail)
            except psycopg.Error as exc:
                raise OperationFailed(
                    f"rotation of {self.tenant}/{self.product} stopped: {first_line(exc)}; "
                    "run it again"
                ) from None

    def _same_stores(self, rotating: Sequence[CredentialStore]) -> None:
        """A rotation under way goes on with its own stores: another ``--store`` is
        refused rather than silently ignored."""
        asked = set(self.chosen())
        if self.stores != CREDENTIAL_STORES and asked != set(rotating):
            raise InvalidInput(
                f"a rotation of {', '.join(rotating)} of {self.tenant}/{self.product} is under "
                "way: finish it before rotating other stores"
            )

    def _result(
        self, status: str, pending: str | None = None, forced: Mapping[str, Any] | None = None
    ) -> RotationResult:
        counts = (forced or {}).get("sessionsForcedOff") or {}
        return RotationResult(
            self.tenant,
            self.product,
            status,
            {k: int(v) for k, v in counts.items()},
            pending=pending,
        )


# -------------------------------------------------------------------- preview


@dataclass(frozen=True)
class RotationPlan:
    """What ``rotate --dry-run`` shows: the logins each phase adds and removes."""

    tenant: str
    product: str
    stores: tuple[str, ...]
    begin: dict[str, list[str]]
    finish: dict[str, list[str]]

    def to_json(self) -> dict[str, Any]:
        return {
            "tenant": self.tenant,
            "product": self.product,
            "stores": list(self.stores),
            "begin": self.begin,
            "finish": self.finish,
        }


def _resources(config: TenantConfig) -> set[tuple[str, str]]:
    from tenant_infra import plan as offline_plan

    return {(r.type, r.name) for r in offline_plan.plan(config).resources if r.custom}


def _changes(before: set[tuple[str, str]], after: set[tuple[str, str]]) -> dict[str, list[str]]:
    return {
        "added": sorted(f"{t} {n}" for t, n in after - before),
        "removed": sorted(f"{t} {n}" for t, n in before - after),
    }


def preview(rotator: Rotator) -> RotationPlan:
    """The resources each phase would add and remove, changing nothing."""
    config = rotator.config()
    spec = rotator.spec(config)
    stores = rotator.chosen()
    rotating = bool(spec.credentials.rotating_now())
    begun_creds = spec.credentials
    if not rotating:
        begun_creds = spec.credentials.model_copy(
            update={s: next_logins(spec.credentials.of(s)) for s in stores}
        )
    finished_creds = Credentials(
        **{
            s: (StoreLogins(current=x.current) if (x := begun_creds.of(s)) else None)
            for s in CREDENTIAL_STORES
        }
    )
    now = _resources(config)
    begun = _resources(config.with_service(spec.model_copy(update={"credentials": begun_creds})))
    finished = _resources(
        config.with_service(spec.model_copy(update={"credentials": finished_creds}))
    )
    return RotationPlan(
        rotator.tenant,
        rotator.product,
        tuple(stores),
        {} if rotating else _changes(now, begun),
        _changes(begun, finished),
    )


# ---------------------------------------------------------------------- fleet


@dataclass(frozen=True)
class RotationResult:
    """One service's rotation in a fleet run: ``finished``, ``begun`` (waiting for
    ``--finish``) or ``failed``, with the sessions forced off."""

    tenant: str
    product: str
    status: str
    forced: dict[str, int] = field(default_factory=dict)
    #: For ``begun``: what to do next.
    pending: str | None = None
    error: str | None = None

    def to_json(self) -> dict[str, Any]:
        found: dict[str, Any] = {
            "tenant": self.tenant,
            "product": self.product,
            "status": self.status,
            "sessionsForcedOff": self.forced,
        }
        if self.pending:
            found["pending"] = self.pending
        if self.error:
            found["error"] = self.error
        return found


def rotate_fleet(
    jobs: Sequence[tuple[str, Callable[[], Rotator]]],
    concurrency: int,
    step_progress: StepProgress,
) -> list[RotationResult]:
    """Every tenant's rotation, ``concurrency`` at a time; one failure stops no other."""

    def one(job: tuple[str, Callable[[], Rotator]]) -> RotationResult:
        tenant, make = job
        rotator: Rotator | None = None
        try:
            rotator = make()
            return rotator.run(step_progress)
        except Exception as exc:
            product = rotator.product if rotator else "?"
            return RotationResult(tenant, product, "failed", error=first_line(exc))

    with ThreadPoolExecutor(max_workers=max(1, concurrency)) as pool:
        return list(pool.map(one, jobs))

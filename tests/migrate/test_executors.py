"""The sandbox executor: K lanes, a fresh child per tenant, shared children for generic
targets, every mode; passwords never in a repr."""

from __future__ import annotations

import os

from conftest import LEDGER
from pgsandbox import ADMIN, PgSandbox, version

from tenant_infra.migrate.connection import with_database
from tenant_infra.migrate.executors import Job, SandboxExecutor
from tenant_infra.migrate.targets import MigrationTarget


def test_each_tenant_target_gets_a_process_of_its_own(pg: PgSandbox, product: str) -> None:
    svcs = [pg.schema_tenant(product) for _ in range(3)] + [pg.database_tenant(product)]
    job = Job(str(LEDGER), {})  # children hold no admin credentials: targets bring their own
    with SandboxExecutor(job, 2) as ex:
        results = list(ex.map(enumerate(s.own_target for s in svcs)))
        again = list(ex.map(enumerate(s.own_target for s in svcs)))  # a second wave
    assert sorted(r.index for r in results) == [0, 1, 2, 3]
    assert {r.status for r in results} == {"migrated"}
    assert {r.status for r in again} == {"current"}
    workers = [r.worker for r in results + again]
    assert len(set(workers)) == 8 and os.getpid() not in workers
    assert all(version(s) == "0003" for s in svcs)


def test_generic_targets_share_a_child_per_lane(pg: PgSandbox, product: str) -> None:
    svcs = [pg.schema_tenant(product) for _ in range(3)]
    targets = [MigrationTarget(schema=s.schema) for s in svcs]  # no role: generic mode
    with SandboxExecutor(Job(str(LEDGER), with_database(ADMIN, product)), 1) as ex:
        results = list(ex.map(enumerate(targets)))
    assert [r.status for r in results] == ["migrated"] * 3
    assert len({r.worker for r in results}) == 1  # one child, one connection, three schemas


def test_pending_and_sql_modes_change_nothing(pg: PgSandbox, product: str) -> None:
    svc = pg.schema_tenant(product)
    with SandboxExecutor(Job(str(LEDGER), {}, mode="pending"), 1) as ex:
        (r,) = ex.map([(0, svc.own_target)])
    assert (r.status, r.revisions) == ("pending", ("0001", "0002", "0003"))
    with SandboxExecutor(Job(str(LEDGER), {}, mode="sql"), 1) as ex:
        (r,) = ex.map([(0, svc.own_target)])
    assert r.sql and "CREATE TABLE accounts" in r.sql
    assert version(svc) is None


def test_a_target_without_credentials_fails_without_a_process(pg: PgSandbox, product: str) -> None:
    svc = pg.schema_tenant(product)
    from dataclasses import replace

    target = replace(svc.target, unavailable="no credentials for this one")
    with SandboxExecutor(Job(str(LEDGER), {}), 1) as ex:
        (r,) = ex.map([(0, target)])
    assert (r.status, r.error, r.worker) == ("failed", "no credentials for this one", os.getpid())


def test_passwords_stay_out_of_reprs(pg: PgSandbox, product: str) -> None:
    svc = pg.schema_tenant(product)
    job = Job(str(LEDGER), svc.params())
    for shown in (repr(job), repr(svc.own_target), str(svc.own_target)):
        assert svc.password not in shown

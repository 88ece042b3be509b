"""Executors: processes (one connection and script dir per worker) and serial."""

from __future__ import annotations

import os
import pickle

from conftest import LEDGER
from pgsandbox import ADMIN, PgSandbox, version

from tenant_infra.migrate.executors import Job, ProcessExecutor, SerialExecutor, make_executor


def test_processes_spread_targets_over_k_workers(pg: PgSandbox, product: str) -> None:
    svcs = [pg.schema_tenant(product) for _ in range(3)] + [pg.database_tenant(product)]
    job = Job(str(LEDGER), {})  # workers hold no admin credentials: targets bring their own
    with ProcessExecutor(job, 2) as ex:
        results = list(ex.map(enumerate(s.own_target for s in svcs)))
        again = list(ex.map(enumerate(s.own_target for s in svcs)))  # a second wave, same pool
    assert sorted(r.index for r in results) == [0, 1, 2, 3]
    assert {r.status for r in results} == {"migrated"}
    assert {r.status for r in again} == {"current"}
    workers = {r.worker for r in results + again}
    assert 1 <= len(workers) <= 2 and os.getpid() not in workers
    assert all(version(s) == "0003" for s in svcs)


def test_serial_runs_in_process_and_modes(pg: PgSandbox, product: str) -> None:
    svc = pg.schema_tenant(product)
    assert isinstance(make_executor(Job(str(LEDGER), ADMIN), 1), SerialExecutor)
    with make_executor(Job(str(LEDGER), {}, mode="pending"), 1) as ex:
        (r,) = ex.map([(0, svc.own_target)])
    assert (r.status, r.worker, r.revisions) == ("pending", os.getpid(), ("0001", "0002", "0003"))
    with make_executor(Job(str(LEDGER), {}, mode="sql"), 1) as ex:
        (r,) = ex.map([(0, svc.own_target)])
    assert r.sql and "CREATE TABLE accounts" in r.sql
    assert version(svc) is None


def test_passwords_stay_out_of_reprs(pg: PgSandbox, product: str) -> None:
    svc = pg.schema_tenant(product)
    job = Job(str(LEDGER), svc.params())
    for shown in (repr(job), repr(svc.own_target), str(svc.own_target)):
        assert svc.password not in shown
    assert svc.own_target.params is not None  # the pickled target is what carries it
    assert pickle.loads(pickle.dumps(svc.own_target)).params == svc.params()
